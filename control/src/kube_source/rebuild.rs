//! One rebuild of the Kubernetes source: the watches' objects at one moment (or the Services
//! and EndpointSlices that changed since the last rebuild) in, the events for the hub out.
//! Synchronous and free of API calls, so it is timed on its own (`examples/kube_rebuild.rs`)
//! and [`KubeSource`](super::KubeSource) only adds the waiting.

use std::collections::HashSet;

use tracing::{debug, warn};

use super::map::{self, MapOptions, Outcome, ServiceCache, ServiceChange, Snapshot};
use crate::source::{Patch, SourceEvent};

/// What a rebuild keeps from one call to the next.
#[derive(Debug, Default)]
pub struct Rebuild {
    memory: map::PolicyMemory,
    /// Also the last valid config, which is the last one reported as desired.
    cache: ServiceCache,
    /// The refusals of the last build: a refusal is reported when it appears, not again
    /// while it stays.
    refused: HashSet<String>,
}

impl Rebuild {
    /// Maps the whole cluster `snap` and returns what is new: the config when it differs
    /// from the last one reported (first), then each refusal that was not there last time.
    pub fn run(&mut self, snap: &Snapshot, opts: &MapOptions) -> Vec<SourceEvent> {
        let outcome = self.cache.build(snap, opts, &mut self.memory);
        report(outcome, &mut self.refused)
    }

    /// [`Rebuild::run`] after only Services, EndpointSlices, Pods or Nodes changed: maps
    /// the Services they touch again, nothing else (`workloads_from` when a Pod or Node
    /// changed: [`ServiceCache::update`]). `None` before the first [`Rebuild::run`], which
    /// must come first.
    pub fn run_changes(
        &mut self,
        changes: Vec<ServiceChange>,
        workloads_from: Option<&Snapshot>,
        opts: &MapOptions,
    ) -> Option<Vec<SourceEvent>> {
        if !self.cache.is_built() {
            return None;
        }
        let outcome = self
            .cache
            .update(changes, workloads_from.map(|snap| (snap, opts)));
        Some(report(outcome, &mut self.refused))
    }
}

/// The events of `outcome`: the config when it changed (first), then each refusal not in
/// `refused` (which becomes this outcome's refusals).
fn report(outcome: Outcome<'_>, refused: &mut HashSet<String>) -> Vec<SourceEvent> {
    let mut events = Vec::new();
    let rejections = match outcome.built {
        Ok(b) => {
            for w in &b.warnings {
                warn!("kubernetes source: {w}");
            }
            if !b.without_backends.is_empty() {
                debug!(services = ?b.without_backends, "kubernetes source: no ready endpoint yet");
            }
            // The config first: a policy refused at start-up must not be the first event,
            // which the server would take for an initial state that cannot be served.
            if outcome.changed {
                events.push(match outcome.patched {
                    Some((services, workloads)) => SourceEvent::Patched(Patch {
                        config: b.config.clone(),
                        services,
                        workloads,
                    }),
                    None => SourceEvent::Desired(b.config.clone()),
                });
            }
            b.rejections.clone()
        }
        Err(e) => vec![e],
    };
    let mut now_refused = HashSet::new();
    for r in rejections {
        if !refused.contains(&r.message) {
            events.push(SourceEvent::Rejected(r.clone()));
        }
        now_refused.insert(r.message);
    }
    *refused = now_refused;
    events
}
