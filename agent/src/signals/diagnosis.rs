//! The signals' side of topology and diagnosis: read access to the [`Recorder`] the event
//! folder and the kernel refresh feed, and the periodic scan for the workloads that serve
//! backends ([`crate::diagnose::listeners`]).

use std::{collections::BTreeSet, net::SocketAddr, path::Path};

use tokio::time::Instant;

use super::{workloads::ResolvedWorkload, Signals};
use crate::{
    diagnose::{listeners, Recorder},
    tables::ServiceView,
};

impl Signals {
    /// Runs `f` on the recorder, the applied services and the names of the workloads found
    /// on this node, under the signals lock (keep `f` short: events wait meanwhile).
    pub(crate) fn with_recorder<R>(
        &self,
        f: impl FnOnce(&Recorder, &[ServiceView], &[String]) -> R,
    ) -> R {
        let inner = self.inner.lock().expect("signals lock");
        let names: Vec<String> = inner.workloads.iter().map(|w| w.name.clone()).collect();
        f(&inner.diag, &inner.views, &names)
    }

    /// Every [`listeners::SCAN_EVERY`], finds which workload listens on each backend. The
    /// /proc reading happens outside the signals lock.
    pub(super) fn scan_listeners(&self, now: Instant, resolved: &[ResolvedWorkload]) {
        let backends: BTreeSet<SocketAddr> = {
            let mut inner = self.inner.lock().expect("signals lock");
            if !inner.diag.listener_scan_due(now) {
                return;
            }
            inner
                .views
                .iter()
                .flat_map(|v| v.backends.iter().filter_map(|b| b.addr.parse().ok()))
                .collect()
        };
        let workloads: Vec<(String, &Path)> = resolved
            .iter()
            .map(|w| (w.name.clone(), w.cgroup.as_path()))
            .collect();
        let found = listeners::find(&backends, &workloads);
        self.inner
            .lock()
            .expect("signals lock")
            .diag
            .set_backend_workloads(found);
    }
}
