//! What the proxy serves a connection for: one http service ([`ServiceTarget`]) with its
//! request policy and its backends, and the [`Resolve`] seam that says which service an
//! accepted connection belongs to.
//!
//! The kernel will answer [`Resolve`] from the socket's stamp (cookie or 4-tuple), never by
//! guessing from addresses; tests answer it with a fixed service ([`Fixed`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sockmesh_model::{BackendSpec, HttpSpec};

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
    budget: Mutex<RetryBudget>,
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
            backends: backends.iter().map(Backend::new).collect(),
            http,
            budget: Mutex::new(budget),
        }
    }

    /// The backend at `addr`, if the service has it.
    pub fn backend(&self, addr: SocketAddr) -> Option<&Backend> {
        self.backends.iter().find(|b| b.addr == addr)
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
    /// False while banned or its circuit is open (the agent's engine decides).
    eligible: AtomicBool,
    /// Tries sent to it whose response has not ended.
    outstanding: AtomicU32,
}

impl Backend {
    fn new(spec: &BackendSpec) -> Self {
        Self {
            addr: spec.addr,
            weight: spec.weight,
            labels: spec.labels.clone(),
            eligible: AtomicBool::new(true),
            outstanding: AtomicU32::new(0),
        }
    }

    /// Bans or unbans the backend for new tries (tries under way finish).
    pub fn set_eligible(&self, eligible: bool) {
        self.eligible.store(eligible, Ordering::Relaxed);
    }

    pub fn is_eligible(&self) -> bool {
        self.eligible.load(Ordering::Relaxed)
    }

    /// Tries under way on this backend, what the pick balances on.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
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
            .outstanding
            .fetch_add(1, Ordering::Relaxed);
        Self { service, index }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.service.backends[self.index]
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
    }
}
