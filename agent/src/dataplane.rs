//! The dataplane as the reconcile loop sees it: pinned maps plus a mirror of what they hold,
//! and the one operation that matters, "make the kernel match this config".
//!
//! A change that touches a few services (a config delta, a ban) is planned for those
//! services only ([`plan_services`]); the first apply, a change of workloads or enrollment,
//! a reordered config, and the apply after a failed one are planned whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use sockmesh_model::{ConfigDelta, MeshConfig};
use tracing::{info, warn};

use crate::{
    loader::PinLayout,
    tables::{
        kernel::KernelMaps, plan::Plan, plan_for, plan_services, KernelState, Node, Overlay,
        ServiceView,
    },
};

pub(crate) struct Dataplane {
    maps: KernelMaps,
    mirror: KernelState,
    /// This node's zone (`--zone`), for services with `locality:`.
    node: Node,
    /// What the last apply made of every service, in config order.
    views: Arc<Vec<ServiceView>>,
    /// The overlay of the last apply; `None` until one succeeded (or after one failed):
    /// the next plan is then whole.
    overlay: Option<Overlay>,
}

impl Dataplane {
    pub(crate) fn open(layout: &PinLayout) -> Result<Self> {
        let maps = KernelMaps::open_pinned(&layout.maps)?;
        let mirror = maps.read_state().context("reading pinned state")?;
        info!(
            services = mirror.services.len(),
            backends = mirror.backends.len(),
            "opened pinned maps"
        );
        Ok(Self {
            maps,
            mirror,
            node: Node::default(),
            views: Arc::default(),
            overlay: None,
        })
    }

    /// Sets the node's zone: the zone of callers that are not a workload with a zone.
    pub(crate) fn with_zone(mut self, zone: Option<String>) -> Self {
        self.node.zone = zone;
        self
    }

    /// Makes the kernel maps match `config`. `previous` is the config the kernel holds (the
    /// last one applied): only the services that differ from it are planned, and on a
    /// failed write (the kernel then holds a consistent prefix of the plan) it is
    /// re-applied so the mesh keeps routing as before, and the error is returned.
    /// `touched`: the services that differ from `previous`, when the caller knows (a delta
    /// that kept the workloads and enrollment); else they are found by comparing.
    pub(crate) fn apply(
        &mut self,
        config: &MeshConfig,
        overlay: &Overlay,
        previous: Option<&MeshConfig>,
        touched: Option<&[String]>,
    ) -> Result<Arc<Vec<ServiceView>>> {
        self.apply_from(config, overlay, previous, previous, touched)
    }

    /// Makes the kernel maps match a new `overlay` (bans, circuits, shedding) for the
    /// config they hold: only the services whose overlay entry changed are planned.
    pub(crate) fn apply_overlay(
        &mut self,
        config: &MeshConfig,
        overlay: &Overlay,
    ) -> Result<Arc<Vec<ServiceView>>> {
        self.apply_from(config, overlay, Some(config), None, Some(&[]))
    }

    fn apply_from(
        &mut self,
        config: &MeshConfig,
        overlay: &Overlay,
        base: Option<&MeshConfig>,
        restore: Option<&MeshConfig>,
        touched: Option<&[String]>,
    ) -> Result<Arc<Vec<ServiceView>>> {
        let started = std::time::Instant::now();
        let (plan, planned) = self.plan(config, overlay, base, touched)?;
        let writes = plan.writes.len();
        // Until this one succeeds, the next plan is whole.
        let applied_overlay = self.overlay.take();
        if let Err(e) = self.maps.apply(&plan.writes, &mut self.mirror) {
            warn!(error = %e, "applying config failed; restoring the previous config");
            self.mirror = self.maps.read_state()?;
            if let Some(prev) = restore {
                let restore_overlay = applied_overlay.as_ref().unwrap_or(overlay);
                let restore = plan_for(prev, restore_overlay, &self.mirror, &self.node)?;
                self.maps.apply(&restore.writes, &mut self.mirror)?;
            }
            return Err(e.into());
        }
        self.views = Arc::new(match planned {
            None => plan.views,
            Some(_) => merge(config, &self.views, plan.views),
        });
        self.overlay = Some(overlay.clone());
        info!(
            services = config.services.len(),
            planned = planned.unwrap_or(config.services.len()),
            writes,
            elapsed_us = started.elapsed().as_micros() as u64,
            "config applied to kernel tables"
        );
        Ok(self.views.clone())
    }

    /// The plan from what the kernel holds (`base`, with the last overlay) to `config`
    /// with `overlay`, and how many services it planned when not all (`None`: whole).
    fn plan(
        &self,
        config: &MeshConfig,
        overlay: &Overlay,
        base: Option<&MeshConfig>,
        touched: Option<&[String]>,
    ) -> Result<(Plan, Option<usize>)> {
        if let (Some(base), Some(last)) = (base, &self.overlay) {
            let found;
            let changed: Option<Box<dyn Iterator<Item = &str>>> = match touched {
                Some(names) => Some(Box::new(names.iter().map(String::as_str))),
                None => {
                    found = ConfigDelta::between(base, config)
                        .filter(|d| d.workloads.is_none() && d.enrollment.is_none());
                    found
                        .as_ref()
                        .map(|d| Box::new(d.services()) as Box<dyn Iterator<Item = &str>>)
                }
            };
            if let Some(changed) = changed {
                let touched: HashSet<&str> =
                    changed.chain(overlay_changes(last, overlay)).collect();
                let plan =
                    plan_services(config, base, &touched, overlay, &self.mirror, &self.node)?;
                if let Some(plan) = plan {
                    return Ok((plan, Some(touched.len())));
                }
            }
        }
        Ok((plan_for(config, overlay, &self.mirror, &self.node)?, None))
    }
}

/// Names of services whose overlay entry differs between `a` and `b`.
fn overlay_changes<'a>(a: &'a Overlay, b: &'a Overlay) -> impl Iterator<Item = &'a str> {
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(String::as_str)
}

/// Every service's view in `config`'s order: the planned ones new, the others as they were
/// (a view's copy shares its backends). The services kept keep their order (a per-service
/// plan is only made then), so the old views are walked once beside the config, without
/// hashing 10,000 names; a view out of that order falls back to a lookup by name.
fn merge(config: &MeshConfig, old: &[ServiceView], planned: Vec<ServiceView>) -> Vec<ServiceView> {
    let mut planned: HashMap<String, ServiceView> =
        planned.into_iter().map(|v| (v.name.clone(), v)).collect();
    let mut by_name: Option<HashMap<&str, &ServiceView>> = None;
    let mut next_old = old.iter();
    let mut out = Vec::with_capacity(config.services.len());
    for s in &config.services {
        if let Some(v) = planned.remove(&s.name) {
            out.push(v);
            continue;
        }
        // Skip the old views of services the config no longer has (or that were planned).
        let mut found = None;
        for v in next_old.by_ref() {
            if v.name == s.name {
                found = Some(v);
                break;
            }
        }
        let found = found.or_else(|| {
            by_name
                .get_or_insert_with(|| old.iter().map(|v| (v.name.as_str(), v)).collect())
                .get(s.name.as_str())
                .copied()
        });
        if let Some(v) = found {
            out.push(v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, id: u32) -> ServiceView {
        ServiceView {
            name: name.into(),
            vip: "127.100.0.1".into(),
            port: 80,
            lb: "round_robin",
            id,
            slot_table_len: 0,
            backends: Arc::default(),
            classes: Arc::default(),
            class0_weights: None,
        }
    }

    fn config(names: &[&str]) -> MeshConfig {
        let mut y = String::from("services:\n");
        for (i, n) in names.iter().enumerate() {
            y.push_str(&format!(
                "  - name: {n}\n    vip: 127.100.0.{}\n    port: 80\n    backends: [{{addr: \"127.0.0.2:80\"}}]\n",
                i + 1
            ));
        }
        sockmesh_model::parse_config(&y).unwrap()
    }

    #[test]
    fn merge_keeps_the_config_order_with_planned_views_new_and_the_rest_as_they_were() {
        let old: Vec<ServiceView> = ["a", "b", "c", "d", "e"]
            .iter()
            .zip(1..)
            .map(|(n, i)| view(n, i))
            .collect();
        // In order: x new, c replanned, e removed.
        let merged = merge(
            &config(&["a", "x", "b", "c", "d"]),
            &old,
            vec![view("x", 9), view("c", 30)],
        );
        let got: Vec<(&str, u32)> = merged.iter().map(|v| (v.name.as_str(), v.id)).collect();
        assert_eq!(got, [("a", 1), ("x", 9), ("b", 2), ("c", 30), ("d", 4)]);
        // Out of order (b moved to the end): still every view, found by name.
        let merged = merge(&config(&["a", "c", "d", "b"]), &old, vec![]);
        let got: Vec<(&str, u32)> = merged.iter().map(|v| (v.name.as_str(), v.id)).collect();
        assert_eq!(got, [("a", 1), ("c", 3), ("d", 4), ("b", 2)]);
    }
}
