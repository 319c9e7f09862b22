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

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc};

    use sockmesh_proxy::link::{BackendTally, ServiceTally, MAX_TALLY_BACKENDS};

    use super::*;
    use crate::{
        diagnose::api,
        engine::task::EngineViews,
        tables::{plan, KernelState, Overlay},
    };

    const SHOP: &str = "
services:
  - name: shop
    vip: 127.100.0.2
    port: 80
    protocol: http
    backends: [{addr: 127.0.0.3:8081}, {addr: 127.0.0.4:8081}, {addr: 127.0.0.5:8081}]
    slos:
      - {name: success, sli: request_success, objective: 0.99, window: 1d}
      - {name: fast, sli: request_latency, threshold: 100ms, objective: 0.9, window: 1d}
";

    fn row(addr: &str, requests: u64, failed: u64) -> BackendTally {
        BackendTally {
            backend: addr.parse::<SocketAddr>().unwrap(),
            requests,
            failed,
            gateway: 0,
        }
    }

    /// The proxy's report, from the link to `/v1/diagnose` and `/v1/top`: one backend
    /// answering 500 is named, and backends outside the config are not kept.
    #[tokio::test]
    async fn a_proxy_report_reaches_diagnosis_and_top() {
        let cfg = sockmesh_model::parse_config(SHOP).unwrap();
        let views = plan(&cfg, &Overlay::new(), &KernelState::default())
            .unwrap()
            .views;
        let signals = Signals::without_kernel(&mut crate::metrics::registry());
        signals.set_config(&Arc::new(views), &cfg);
        let mut backends = vec![
            row("127.0.0.3:8081", 300, 0),
            row("127.0.0.4:8081", 300, 300),
            row("127.0.0.5:8081", 300, 0),
        ];
        // Rows past the bound and rows of backends the config does not have are ignored.
        backends
            .extend((0..MAX_TALLY_BACKENDS as u16).map(|p| row(&format!("127.0.9.1:{p}"), 1, 1)));
        signals.on_requests(&ServiceTally {
            service: "shop".into(),
            requests: 900,
            failed: 300,
            within: vec![(100_000, 850)],
            backends,
        });
        let unknown = signals.with_recorder(|rec, _, _| {
            let recent = crate::diagnose::record::RECENT;
            rec.backend_requests(Instant::now(), "shop", "127.0.9.1:0", recent)
        });
        assert_eq!(unknown.requests, 0, "not a configured backend");

        let engine = EngineViews::default();
        let d = api::diagnose_json(&signals, &engine, "shop").unwrap();
        assert_eq!(d["causes"][0]["cause"], "backend_errors", "{d:#}");
        assert_eq!(
            d["causes"][0]["evidence"][0],
            "127.0.0.4:8081: 300 of 300 requests failed in the last 60 s"
        );
        assert_eq!(d["slos"][0]["sli"], "request_success");
        let top = api::top_json(&signals);
        assert_eq!(top[0]["requests"]["failed"]["last"], 300);
        assert_eq!(top[0]["requests"]["latency"]["threshold_ms"], 100.0);
    }
}
