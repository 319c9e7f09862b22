//! What the checks and the fingerprint of a valid config need to know about it, kept
//! between versions, so that a delta to it is checked and fingerprinted from the services it
//! touches instead of by re-reading the whole mesh.
//!
//! At 10,000 services, [`MeshConfig::validate`] and [`MeshConfig::fingerprint`] each read
//! every service (tens of milliseconds); a one-service delta through [`ConfigIndex::step`]
//! reads that one service and looks the others up. The answers are the same, by
//! construction and by the property test in `index_tests.rs`: any rule the step cannot
//! decide from what it keeps, or that it finds broken, is left to the whole
//! [`MeshConfig::validate`], so an error is always the one (and worded as) the whole check
//! reports.

use std::net::SocketAddr;

use super::fingerprint::{FnvMap as HashMap, FnvSet as HashSet};
use super::validate::ServiceChecker;
use super::workload::check_workloads;
use super::{ConfigError, MeshConfig, MAX_BACKEND_PAIRS, MAX_SERVICES};
use crate::ConfigDelta;

/// The index of one valid config: per-service hashes and the mesh-wide address counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigIndex {
    /// Each service's [`ServiceSpec::content_hash`], by name.
    hashes: HashMap<String, u64>,
    /// How many services claim each VIP:port.
    vips: HashMap<SocketAddr, u32>,
    /// How many services list each backend address.
    backends: HashMap<SocketAddr, u32>,
    /// (service, backend) pairs, against [`MAX_BACKEND_PAIRS`].
    pairs: usize,
}

/// One delta's effect on an index: the later config's fingerprint, and what
/// [`ConfigIndex::commit`] makes of the index once that config is taken.
#[derive(Debug, Clone)]
pub struct IndexStep {
    fingerprint: String,
    /// Hashes of the services added or changed, and `None` for those removed.
    hashes: Vec<(String, Option<u64>)>,
    /// Changes of the address counts.
    vips: HashMap<SocketAddr, i64>,
    backends: HashMap<SocketAddr, i64>,
    pairs: usize,
    /// Positions in the later config of the services the checks must read: those added or
    /// changed, and, when the workloads changed, those whose callers may name workloads.
    recheck: Vec<usize>,
    /// The workloads changed (their own rules are checked whole).
    workloads: bool,
}

impl ConfigIndex {
    /// Reads every service of `config`.
    pub fn of(config: &MeshConfig) -> Self {
        let mut index = ConfigIndex {
            hashes: HashMap::with_capacity_and_hasher(config.services.len(), Default::default()),
            vips: HashMap::with_capacity_and_hasher(config.services.len(), Default::default()),
            ..Default::default()
        };
        for service in &config.services {
            index
                .hashes
                .insert(service.name.clone(), service.content_hash());
            *index.vips.entry(service.vip_port()).or_default() += 1;
            for backend in &service.backends {
                *index.backends.entry(backend.addr).or_default() += 1;
            }
            index.pairs += service.backends.len();
        }
        index
    }

    /// The fingerprint of the config this index was made of (or committed to).
    pub fn fingerprint(&self, config: &MeshConfig) -> String {
        config.fingerprint_with(|s| {
            self.hashes
                .get(&s.name)
                .copied()
                .unwrap_or_else(|| s.content_hash())
        })
    }

    /// What `delta` does to this index: `base` is the config the index describes and
    /// `after` is `delta.apply(base)`. Reads the services the delta names, and looks up
    /// the others.
    pub fn step(&self, base: &MeshConfig, delta: &ConfigDelta, after: &MeshConfig) -> IndexStep {
        self.step_touched(base, delta.services(), delta.workloads.is_some(), after)
    }

    /// [`step`](Self::step) from the names of the services that differ between `base` and
    /// `after` (at least those: a name more only costs its reading), and whether the
    /// workloads differ. Nothing else may differ.
    pub fn step_touched<'n>(
        &self,
        base: &MeshConfig,
        touched: impl IntoIterator<Item = &'n str>,
        workloads: bool,
        after: &MeshConfig,
    ) -> IndexStep {
        let touched: HashSet<&str> = touched.into_iter().collect();
        let mut hashes = Vec::with_capacity(touched.len());
        let mut vips = HashMap::default();
        let mut backends = HashMap::default();
        let mut pairs = self.pairs;
        for old in base
            .services
            .iter()
            .filter(|s| touched.contains(s.name.as_str()))
        {
            *vips.entry(old.vip_port()).or_default() -= 1;
            for backend in &old.backends {
                *backends.entry(backend.addr).or_default() -= 1;
            }
            pairs -= old.backends.len().min(pairs);
            hashes.push((old.name.clone(), None));
        }
        let mut recheck = Vec::new();
        let mut fresh: HashMap<&str, u64> =
            HashMap::with_capacity_and_hasher(touched.len(), Default::default());
        for (i, new) in after.services.iter().enumerate() {
            if touched.contains(new.name.as_str()) {
                *vips.entry(new.vip_port()).or_default() += 1;
                for backend in &new.backends {
                    *backends.entry(backend.addr).or_default() += 1;
                }
                pairs += new.backends.len();
                fresh.insert(&new.name, new.content_hash());
                recheck.push(i);
            } else if workloads && new.allowed_callers.is_some() {
                recheck.push(i);
            }
        }
        // The base's touched services get their new hash (or none: removed); the added
        // ones theirs.
        let had: HashSet<String> = hashes.iter().map(|(name, _)| name.clone()).collect();
        for (name, hash) in &mut hashes {
            *hash = fresh.get(name.as_str()).copied();
        }
        hashes.extend(
            fresh
                .iter()
                .filter(|(name, _)| !had.contains(**name))
                .map(|(name, hash)| ((*name).to_owned(), Some(*hash))),
        );
        let fingerprint = after.fingerprint_with(|s| match fresh.get(s.name.as_str()) {
            Some(hash) => *hash,
            None => self
                .hashes
                .get(&s.name)
                .copied()
                .unwrap_or_else(|| s.content_hash()),
        });
        IndexStep {
            fingerprint,
            hashes,
            vips,
            backends,
            pairs,
            recheck,
            workloads,
        }
    }

    /// Checks `after` (the config the step was made for) as [`MeshConfig::validate`] does,
    /// with the same result, reading only the services the step names.
    pub fn validate(&self, step: &IndexStep, after: &MeshConfig) -> Result<(), ConfigError> {
        if self.decides_valid(step, after) {
            Ok(())
        } else {
            // Broken, or not decidable here: the whole check finds the first error, in
            // document order, worded as always.
            after.validate()
        }
    }

    /// `true` only when `after` certainly passes every rule.
    fn decides_valid(&self, step: &IndexStep, after: &MeshConfig) -> bool {
        if after.version != super::CONFIG_VERSION
            || after.services.len() > MAX_SERVICES
            || step.pairs > MAX_BACKEND_PAIRS
        {
            return false;
        }
        let vips = |addr: SocketAddr| count(&self.vips, &step.vips, addr);
        for &i in &step.recheck {
            let service = &after.services[i];
            let own = service.vip_port();
            let checker = ServiceChecker {
                index: i,
                service,
                // Any other claim on an address fails the step; the whole check names it.
                other_owner: |addr: SocketAddr| {
                    let others = vips(addr) - i64::from(addr == own);
                    (others > 0).then_some((i, ""))
                },
            };
            if checker.check_alone(&after.workloads).is_err() {
                return false;
            }
        }
        // A VIP:port new to the mesh must not be a backend of a service the step did not
        // read (those it read were checked above).
        for (addr, change) in &step.vips {
            if *change > 0
                && self.vips.get(addr).copied().unwrap_or(0) == 0
                && count(&self.backends, &step.backends, *addr) > 0
            {
                return false;
            }
        }
        // Names stay unique: a delta that applies adds only names the base lacks, changes
        // only names it has, and names each service once.
        !step.workloads || check_workloads(&after.workloads).is_ok()
    }

    /// Makes the index describe the step's later config (once that config is taken).
    pub fn commit(&mut self, step: IndexStep) {
        for (name, hash) in step.hashes {
            match hash {
                Some(hash) => self.hashes.insert(name, hash),
                None => self.hashes.remove(&name),
            };
        }
        apply_counts(&mut self.vips, step.vips);
        apply_counts(&mut self.backends, step.backends);
        self.pairs = step.pairs;
    }
}

impl IndexStep {
    /// The later config's fingerprint, equal to its [`MeshConfig::fingerprint`].
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// An address's count after a step.
fn count(
    kept: &HashMap<SocketAddr, u32>,
    change: &HashMap<SocketAddr, i64>,
    addr: SocketAddr,
) -> i64 {
    i64::from(kept.get(&addr).copied().unwrap_or(0)) + change.get(&addr).copied().unwrap_or(0)
}

fn apply_counts(kept: &mut HashMap<SocketAddr, u32>, change: HashMap<SocketAddr, i64>) {
    for (addr, by) in change {
        let n = i64::from(kept.get(&addr).copied().unwrap_or(0)) + by;
        if n > 0 {
            kept.insert(addr, n as u32);
        } else {
            kept.remove(&addr);
        }
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
