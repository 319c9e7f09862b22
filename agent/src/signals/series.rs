//! Per-backend metric series with a lifecycle and a budget: which (service, backend) label
//! sets the metrics may hold, and when the series of a backend that left the config go.
//!
//! On Kubernetes every rollout brings new pod IPs; without this, the families keyed by
//! backend would grow with every address ever seen. A pair is admitted when it is first
//! labelled (first traffic, or its kernel stats entry at config time), up to `max` pairs; the
//! excess folds into `backend="other"` of the same service (counted like callers folded by
//! `--max-callers`). When a pair leaves the config (its backend, or its whole service), it
//! is due for removal after its service's drain grace: connections to it may still close
//! meanwhile. [`BackendSeries::expire`] hands back the due pairs, which frees their budget;
//! the caller removes their series. Pure: time comes in as arguments.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use tokio::time::Instant;

use super::topology::{OTHER, UNKNOWN};
use crate::metrics::BackendLabels;

/// The default `--max-series`.
pub(crate) const DEFAULT_MAX_SERIES: usize = 50_000;

/// Backend label values that are not addresses: one per service at most, outside the budget.
fn reserved(backend: &str) -> bool {
    matches!(backend, OTHER | UNKNOWN | "none")
}

#[derive(Debug, Default)]
struct Pair {
    /// Caller label values this pair's connection series were written with.
    callers: BTreeSet<String>,
    /// When the pair's series go (it left the config); `None` while configured.
    due: Option<Instant>,
}

/// A pair whose series are to be removed, with the callers they were written for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Expired {
    pub(crate) labels: BackendLabels,
    pub(crate) callers: BTreeSet<String>,
}

#[derive(Debug)]
pub(crate) struct BackendSeries {
    max: usize,
    /// Admitted pairs, service -> backend label -> pair: nested so the per-event lookups
    /// borrow the event's strings instead of allocating a key, and a service's pairs are
    /// found without a scan. A service has an entry only while it has a pair.
    pairs: HashMap<String, HashMap<String, Pair>>,
    /// Admitted pairs with an address as backend (the ones the budget counts).
    budgeted: usize,
    /// Each configured service's drain grace; a service that left keeps its last one.
    graces: HashMap<String, Duration>,
    /// The earliest `due` of any pair, so [`BackendSeries::expire`] costs nothing until then.
    next_due: Option<Instant>,
    /// Label values folded into `other` so far.
    pub(crate) overflowed: u64,
}

impl BackendSeries {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            pairs: HashMap::new(),
            budgeted: 0,
            graces: HashMap::new(),
            next_due: None,
            overflowed: 0,
        }
    }

    /// The backend label value for a series of (service, backend): the backend if the pair
    /// is admitted (admitting it if the budget allows), else `other`, counted as folded.
    pub(crate) fn label<'a>(&mut self, service: &str, backend: &'a str) -> &'a str {
        if self.admit(service, backend) {
            backend
        } else {
            self.overflowed += 1;
            OTHER
        }
    }

    /// Admits (service, backend) if it is admitted already or the budget allows; `false`
    /// means its series fold into `other`. Nothing is counted (a scrape-time read, once a
    /// second, is not a folded value).
    pub(crate) fn admit(&mut self, service: &str, backend: &str) -> bool {
        if self
            .pairs
            .get(service)
            .is_some_and(|b| b.contains_key(backend))
        {
            return true;
        }
        let counts = !reserved(backend);
        if counts && self.budgeted >= self.max {
            return false;
        }
        self.budgeted += usize::from(counts);
        self.service_pairs(service)
            .insert(backend.to_owned(), Pair::default());
        true
    }

    /// A connection series of (service, `backend_label`) was written for `caller`.
    pub(crate) fn note_caller(&mut self, service: &str, backend_label: &str, caller: &str) {
        let known = self
            .pairs
            .get(service)
            .and_then(|b| b.get(backend_label))
            .is_some_and(|p| p.callers.contains(caller));
        if known {
            return;
        }
        let pair = self
            .service_pairs(service)
            .entry(backend_label.to_owned())
            .or_default();
        pair.callers.insert(caller.to_owned());
    }

    fn service_pairs(&mut self, service: &str) -> &mut HashMap<String, Pair> {
        if !self.pairs.contains_key(service) {
            self.pairs.insert(service.to_owned(), HashMap::new());
        }
        self.pairs.get_mut(service).expect("inserted above")
    }

    /// A new config: `configured` maps each service to its backends and drain grace. Pairs no
    /// longer configured are due at `now` + their service's grace; pairs configured again
    /// stay. A service's reserved rows (`other`...) go with the service.
    pub(crate) fn set_config(
        &mut self,
        now: Instant,
        configured: &BTreeMap<String, (BTreeSet<String>, Duration)>,
    ) {
        for (service, (_, grace)) in configured {
            self.graces.insert(service.clone(), *grace);
        }
        for (service, pairs) in &mut self.pairs {
            let backends = configured.get(service).map(|(b, _)| b);
            let grace = self.graces.get(service).copied().unwrap_or_default();
            for (backend, pair) in pairs {
                let kept = backends.is_some_and(|b| reserved(backend) || b.contains(backend));
                if kept {
                    pair.due = None;
                } else if pair.due.is_none() {
                    pair.due = Some(now + grace);
                }
            }
        }
        self.graces
            .retain(|s, _| configured.contains_key(s) || self.pairs.contains_key(s));
        self.next_due = self.earliest_due();
    }

    fn earliest_due(&self) -> Option<Instant> {
        self.pairs
            .values()
            .flat_map(HashMap::values)
            .filter_map(|p| p.due)
            .min()
    }

    /// The pairs due at `now`, forgotten (their budget freed); their series are to go.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Expired> {
        if self.next_due.is_none_or(|due| due > now) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (service, pairs) in &mut self.pairs {
            let due: Vec<String> = pairs
                .iter()
                .filter(|(_, p)| p.due.is_some_and(|d| d <= now))
                .map(|(b, _)| b.clone())
                .collect();
            for backend in due {
                let pair = pairs.remove(&backend).expect("listed above");
                self.budgeted -= usize::from(!reserved(&backend));
                out.push(Expired {
                    labels: BackendLabels {
                        service: service.clone(),
                        backend,
                    },
                    callers: pair.callers,
                });
            }
        }
        self.pairs.retain(|_, pairs| !pairs.is_empty());
        self.next_due = self.earliest_due();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Admitted pairs (reserved rows included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pairs.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &[(&str, &[&str])]) -> BTreeMap<String, (BTreeSet<String>, Duration)> {
        services
            .iter()
            .map(|(s, bs)| {
                let backends = bs.iter().map(|b| (*b).to_owned()).collect();
                ((*s).to_owned(), (backends, Duration::from_secs(10)))
            })
            .collect()
    }

    fn names(expired: &[Expired]) -> Vec<(String, String)> {
        expired
            .iter()
            .map(|e| (e.labels.service.clone(), e.labels.backend.clone()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn removed_backend_goes_after_the_grace_with_its_callers() {
        let mut s = BackendSeries::new(10);
        s.set_config(Instant::now(), &config(&[("web", &["a:1", "b:1"])]));
        assert_eq!(s.label("web", "a:1"), "a:1");
        s.note_caller("web", "a:1", "client");
        assert_eq!(s.label("web", "b:1"), "b:1");
        tokio::time::advance(Duration::from_secs(3)).await;
        s.set_config(Instant::now(), &config(&[("web", &["b:1", "c:1"])]));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(s.expire(Instant::now()).is_empty(), "still in its grace");
        tokio::time::advance(Duration::from_secs(1)).await;
        let gone = s.expire(Instant::now());
        assert_eq!(names(&gone), [("web".into(), "a:1".into())]);
        assert_eq!(gone[0].callers, BTreeSet::from(["client".to_owned()]));
        assert!(s.expire(Instant::now()).is_empty(), "expired once");
        assert_eq!(s.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_configured_again_within_its_grace_stays() {
        let mut s = BackendSeries::new(10);
        s.set_config(Instant::now(), &config(&[("web", &["a:1"])]));
        s.label("web", "a:1");
        s.set_config(Instant::now(), &config(&[("web", &[])]));
        tokio::time::advance(Duration::from_secs(5)).await;
        s.set_config(Instant::now(), &config(&[("web", &["a:1"])]));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(s.expire(Instant::now()).is_empty());
        assert_eq!(s.label("web", "a:1"), "a:1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_service_takes_its_other_row_and_uses_its_last_grace() {
        let mut s = BackendSeries::new(1);
        let mut cfg = config(&[("web", &["a:1", "b:1"])]);
        cfg.get_mut("web").unwrap().1 = Duration::from_secs(2);
        s.set_config(Instant::now(), &cfg);
        assert_eq!(s.label("web", "a:1"), "a:1");
        assert_eq!(s.label("web", "b:1"), OTHER, "over the budget of 1");
        s.note_caller("web", OTHER, "client");
        s.set_config(Instant::now(), &config(&[]));
        tokio::time::advance(Duration::from_secs(2)).await;
        let gone = s.expire(Instant::now());
        assert_eq!(
            names(&gone),
            [("web".into(), "a:1".into()), ("web".into(), OTHER.into())]
        );
        assert_eq!(s.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_folds_the_excess_and_frees_with_expiry() {
        let mut s = BackendSeries::new(2);
        s.set_config(Instant::now(), &config(&[("web", &["a:1", "b:1", "c:1"])]));
        assert_eq!(s.label("web", "a:1"), "a:1");
        assert_eq!(s.label("web", "b:1"), "b:1");
        assert_eq!(s.label("web", "c:1"), OTHER);
        assert_eq!(s.label("web", "c:1"), OTHER);
        assert!(!s.admit("web", "c:1"));
        assert_eq!(
            s.overflowed, 2,
            "each folded value counted, admit() counts none"
        );
        // Reserved values stay outside the budget.
        assert_eq!(s.label("web", UNKNOWN), UNKNOWN);
        s.set_config(Instant::now(), &config(&[("web", &["b:1", "c:1"])]));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            names(&s.expire(Instant::now())),
            [("web".into(), "a:1".into())]
        );
        assert_eq!(s.label("web", "c:1"), "c:1", "a:1's budget went to c:1");
    }

    /// A rollout loop: every config replaces the backend with a new address; the admitted
    /// pairs stay bounded by the backends configured within one grace.
    #[tokio::test(start_paused = true)]
    async fn a_thousand_replacements_leave_a_bounded_set() {
        let mut s = BackendSeries::new(50_000);
        for i in 0..1000u32 {
            let addr = format!("127.0.{}.{}:80", i / 250, i % 250 + 1);
            s.set_config(Instant::now(), &config(&[("web", &[&addr])]));
            assert_eq!(s.label("web", &addr), addr);
            tokio::time::advance(Duration::from_secs(1)).await;
            s.expire(Instant::now());
            assert!(s.len() <= 11, "{} pairs after {i} replacements", s.len());
        }
    }
}
