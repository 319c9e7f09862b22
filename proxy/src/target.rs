//! What the proxy serves a connection for: one http service ([`ServiceTarget`]) with its
//! request policy and its backends, and the [`Resolve`] seam that says which service an
//! accepted connection belongs to.
//!
//! The kernel answers [`Resolve`] from the socket's origin record ([`crate::node`]), never by
//! guessing from addresses; tests answer it with a fixed service ([`Fixed`]).
//!
//! A service's live state outlives the agent's snapshots: [`ServiceTarget::from_target`]
//! builds the next version of a service around the previous one's backend counters and
//! retry budget, so a new set of targets neither forgets the requests under way (which the
//! pick balances on) nor refills the budget.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sockmesh_model::{BackendSpec, HttpSpec};

use crate::link::TargetService;
use crate::pick::Candidate;
use crate::retry::{RetryBudget, DEFAULT_MIN_RETRIES_PER_SECOND};

/// Which service an accepted connection is for.
pub trait Resolve: Send + Sync + 'static {
    /// The service of the connection from `peer` accepted on `local`; `None` closes it.
    fn service(&self, peer: SocketAddr, local: SocketAddr) -> Option<Arc<ServiceTarget>>;

    /// The calling workload's name (the `caller` label of the request metrics), read from
    /// the same stamp; `None` when it is not known (reported as `unknown`).
    fn caller(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<Arc<str>> {
        None
    }

    /// Service and caller at once (one lookup where both come from the same record).
    fn resolve(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<(Arc<ServiceTarget>, Option<Arc<str>>)> {
        let service = self.service(peer, local)?;
        Some((service, self.caller(peer, local)))
    }

    /// The version of `service` the next request of a connection resolved earlier should
    /// use (its config, backends and routes may have changed since), for `caller` (the
    /// workload [`Resolve::resolve`] named at accept); `None` keeps `service`.
    fn current(
        &self,
        _service: &Arc<ServiceTarget>,
        _caller: Option<&str>,
    ) -> Option<Arc<ServiceTarget>> {
        None
    }
}

/// Every connection is for the same service (single-service tests and tools).
#[derive(Debug, Clone)]
pub struct Fixed(pub Arc<ServiceTarget>);

impl Resolve for Fixed {
    fn service(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<Arc<ServiceTarget>> {
        Some(self.0.clone())
    }
}

/// One http service as the proxy serves it: the model's `http:` block, the backends, and
/// the service's retry budget (shared by all its requests).
#[derive(Debug)]
pub struct ServiceTarget {
    pub name: Arc<str>,
    pub http: HttpSpec,
    pub backends: Vec<Backend>,
    /// The caller class this version weighs the backends for (the kernel's workload
    /// number; 0: every caller, or the callers without a class of their own).
    pub class: u32,
    /// Shared with the service's next versions while its `http:` block stays the same.
    budget: Arc<Mutex<RetryBudget>>,
}

impl ServiceTarget {
    /// A service with these backends, all eligible, none outstanding.
    pub fn new(name: &str, http: HttpSpec, backends: &[BackendSpec]) -> Self {
        let budget = RetryBudget::new(
            http.retries.budget_percent,
            DEFAULT_MIN_RETRIES_PER_SECOND,
            Instant::now(),
        );
        Self {
            name: name.into(),
            backends: backends
                .iter()
                .map(|b| Backend::new(b.addr, b.weight, b.labels.clone(), true))
                .collect(),
            http,
            class: 0,
            budget: Arc::new(Mutex::new(budget)),
        }
    }

    /// This service as caller class `class` sees it: the backends weighed by `weights` (one
    /// per backend, in order; 0: never picked for these callers), sharing everything live
    /// (outstanding tries, eligibility, the retry budget) with `self`.
    pub fn for_class(&self, class: u32, weights: &[u32]) -> Self {
        Self {
            name: self.name.clone(),
            http: self.http.clone(),
            backends: self
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| Backend {
                    addr: b.addr,
                    weight: weights.get(i).copied().unwrap_or(0),
                    labels: b.labels.clone(),
                    live: b.live.clone(),
                })
                .collect(),
            class,
            budget: self.budget.clone(),
        }
    }

    /// The service as the agent's snapshot describes it, taking over from `previous` (the
    /// same service in the last snapshot): the live state of each backend at the same
    /// address (outstanding tries; eligibility is the snapshot's), and the retry budget if
    /// the `http:` block did not change.
    pub fn from_target(target: &TargetService, previous: Option<&ServiceTarget>) -> Self {
        let backends = target
            .backends
            .iter()
            .map(|b| {
                let backend = match previous.and_then(|p| p.backend(b.addr)) {
                    Some(old) => Backend {
                        addr: b.addr,
                        weight: b.weight,
                        labels: b.labels.clone(),
                        live: old.live.clone(),
                    },
                    None => Backend::new(b.addr, b.weight, b.labels.clone(), b.eligible),
                };
                backend.set_eligible(b.eligible);
                backend
            })
            .collect();
        let budget = match previous {
            Some(p) if p.http == target.http => p.budget.clone(),
            _ => Arc::new(Mutex::new(RetryBudget::new(
                target.http.retries.budget_percent,
                DEFAULT_MIN_RETRIES_PER_SECOND,
                Instant::now(),
            ))),
        };
        Self {
            name: target.name.as_str().into(),
            http: target.http.clone(),
            backends,
            class: 0,
            budget,
        }
    }

    /// Whether `target` describes this service with the same name, `http:` block and
    /// backends (address, weight, labels, in order): only eligibility may differ, so this
    /// version can stay (its flags are the live ones).
    pub fn same_shape(&self, target: &TargetService) -> bool {
        *self.name == *target.name
            && self.http == target.http
            && self.backends.len() == target.backends.len()
            && self
                .backends
                .iter()
                .zip(&target.backends)
                .all(|(b, t)| b.addr == t.addr && b.weight == t.weight && b.labels == t.labels)
    }

    /// The backend at `addr`, if the service has it.
    pub fn backend(&self, addr: SocketAddr) -> Option<&Backend> {
        self.backends.iter().find(|b| b.addr == addr)
    }

    /// Whether both versions draw on one retry budget.
    pub fn shares_budget(&self, other: &ServiceTarget) -> bool {
        Arc::ptr_eq(&self.budget, &other.budget)
    }

    /// Runs `f` on the service's retry budget.
    pub(crate) fn with_budget<T>(&self, f: impl FnOnce(&mut RetryBudget) -> T) -> T {
        // A panic while holding the lock cannot leave the budget inconsistent: keep going.
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut budget)
    }

    /// The pick's view of the backends: those outside `subset` (a route's labels), not
    /// eligible, or in `tried` are excluded.
    pub(crate) fn candidates(
        &self,
        subset: Option<&BTreeMap<String, String>>,
        tried: &[usize],
    ) -> Vec<Candidate> {
        self.backends
            .iter()
            .enumerate()
            .map(|(i, b)| Candidate {
                weight: b.weight,
                outstanding: b.outstanding(),
                excluded: !b.is_eligible() || tried.contains(&i) || !b.carries(subset),
            })
            .collect()
    }
}

/// One backend of a service, with the live state requests read and change.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    /// Shared by every version of the service that has this backend.
    live: Arc<Live>,
}

/// A backend's state that requests read and change.
#[derive(Debug)]
struct Live {
    /// False while banned or its circuit is open (the agent's engine decides).
    eligible: AtomicBool,
    /// Tries sent to it whose response has not ended.
    outstanding: AtomicU32,
}

impl Backend {
    fn new(
        addr: SocketAddr,
        weight: u32,
        labels: BTreeMap<String, String>,
        eligible: bool,
    ) -> Self {
        Self {
            addr,
            weight,
            labels,
            live: Arc::new(Live {
                eligible: AtomicBool::new(eligible),
                outstanding: AtomicU32::new(0),
            }),
        }
    }

    /// Bans or unbans the backend for new tries (tries under way finish).
    pub fn set_eligible(&self, eligible: bool) {
        self.live.eligible.store(eligible, Ordering::Relaxed);
    }

    pub fn is_eligible(&self) -> bool {
        self.live.eligible.load(Ordering::Relaxed)
    }

    /// Tries under way on this backend, what the pick balances on.
    pub fn outstanding(&self) -> u32 {
        self.live.outstanding.load(Ordering::Relaxed)
    }

    /// Whether the backend carries every label of `subset` (`None`: the whole service).
    fn carries(&self, subset: Option<&BTreeMap<String, String>>) -> bool {
        subset.is_none_or(|want| want.iter().all(|(k, v)| self.labels.get(k) == Some(v)))
    }
}

/// One outstanding try on a backend, counted from creation to drop.
#[derive(Debug)]
pub(crate) struct Outstanding {
    service: Arc<ServiceTarget>,
    index: usize,
}

impl Outstanding {
    pub(crate) fn start(service: Arc<ServiceTarget>, index: usize) -> Self {
        service.backends[index]
            .live
            .outstanding
            .fetch_add(1, Ordering::Relaxed);
        Self { service, index }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.service.backends[self.index]
            .live
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
    }
}
