//! The per-service plan: the writes a change to a few services needs, found by planning
//! those services only, so a one-service change to a mesh of 10,000 costs one service's
//! work and not a re-plan of all of them.
//!
//! It must give exactly the whole plan's writes ([`super::plan_for`]), and it can: a service
//! whose spec and overlay are the same, in a mesh whose workloads, enrollment and node are
//! the same, needs no write (its ids, tables and entry are already what a plan would make).
//! What remains is to know, for the services that did change, what they no longer hold: a
//! backend is deleted only when no service of the new config names it. The unit tests hold
//! the two plans to the same writes over random changes (plan_tests.rs).

use std::collections::{BTreeSet, HashSet};

use sockmesh_common::{ServiceKey, MAX_SERVICES};
use sockmesh_model::{MeshConfig, ServiceSpec};

use super::builder::{acl_of, tables_of, Builder};
use super::{capacity, fits_switch, identity, KernelState, Plan, PlanError};
use crate::tables::{
    addr::{backend_entry, service_key},
    overlay::Overlay,
    route::Node,
};

/// The writes that take the kernel from `previous` (the config it holds, as `actual`) to
/// `config` with `overlay`, planning only the services named in `touched`: those added,
/// changed or removed, and those whose overlay entry changed. Every other service must be
/// the same in both configs and overlays, and the workloads and enrollment the same: the
/// caller checks that, or plans whole.
///
/// `Ok(None)`: a table is near its capacity, where only the whole plan can tell whether the
/// change fits; plan whole.
///
/// The views are the touched services' that `config` has, in its order.
pub(crate) fn plan_services(
    config: &MeshConfig,
    previous: &MeshConfig,
    touched: &HashSet<&str>,
    overlay: &Overlay,
    actual: &KernelState,
    node: &Node,
) -> Result<Option<Plan>, PlanError> {
    if config.services.len() >= MAX_SERVICES as usize {
        return Ok(None);
    }
    // An upper bound on (service, backend) pairs; only the whole plan counts them exactly.
    let pairs: usize = config.services.iter().map(|s| s.backends.len()).sum();
    if pairs > capacity::BACKEND_STATS {
        return Ok(None);
    }
    let is_touched = |s: &&ServiceSpec| touched.contains(s.name.as_str());
    let new: Vec<&ServiceSpec> = config.services.iter().filter(is_touched).collect();
    let old: Vec<&ServiceSpec> = previous.services.iter().filter(is_touched).collect();

    // The same switch checks as the whole plan's, counted from what the kernel holds: the
    // peak of a switch is everything held plus everything new.
    let new_keys = new
        .iter()
        .map(|s| service_key(s.vip, s.port))
        .filter(|k| !actual.services.contains_key(k))
        .collect::<BTreeSet<_>>()
        .len();
    fits_switch(
        "service",
        actual.services.len() + new_keys,
        capacity::SERVICES,
    )?;
    let new_backends = new
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| backend_entry(b.addr)))
        .filter(|e| actual.backend_id(e).is_none())
        .map(|e| identity(&e))
        .collect::<BTreeSet<_>>()
        .len();
    fits_switch(
        "backend",
        actual.backends.len() + new_backends,
        capacity::BACKENDS,
    )?;

    let mut b = Builder::new(config, overlay, actual, node);
    for spec in &new {
        b.service(spec)?;
    }
    let new_tables = b
        .wanted_tables
        .iter()
        .filter(|k| !actual.tables.contains_key(k))
        .count();
    fits_switch(
        "slot table",
        actual.tables.len() + new_tables,
        capacity::SLOT_TABLES,
    )?;
    let new_acl = b
        .wanted_acl
        .iter()
        .filter(|k| !actual.acl.contains(k))
        .count();
    fits_switch(
        "acl ((service, workload) pair)",
        actual.acl.len() + new_acl,
        capacity::ACL,
    )?;

    // What the touched services held before: their keys, ids and backends.
    let old_keys: BTreeSet<ServiceKey> = old.iter().map(|s| service_key(s.vip, s.port)).collect();
    let ids: BTreeSet<u32> = old_keys
        .iter()
        .filter_map(|k| actual.services.get(k).map(|e| e.id))
        .chain(b.views.iter().map(|v| v.id))
        .collect();
    let delete_acl = ids
        .iter()
        .flat_map(|id| acl_of(actual, *id))
        .filter(|k| !b.wanted_acl.contains(k))
        .copied()
        .collect();
    let delete_services = old_keys
        .into_iter()
        .filter(|k| actual.services.contains_key(k) && !b.wanted_services.contains(k))
        .collect();
    let delete_tables = ids
        .iter()
        .flat_map(|id| tables_of(actual, *id))
        .map(|(k, _)| *k)
        .filter(|k| !b.wanted_tables.contains(k))
        .collect();
    // Backends the touched services held and hold no more: deleted unless another service
    // of the new config still names them.
    let mut released: BTreeSet<u32> = old
        .iter()
        .flat_map(|s| s.backends.iter())
        .filter_map(|bk| actual.backend_id(&backend_entry(bk.addr)))
        .filter(|id| !b.wanted_backends.contains(id))
        .collect();
    if !released.is_empty() {
        for spec in config.services.iter().filter(|s| !is_touched(s)) {
            for bk in &spec.backends {
                if let Some(id) = actual.backend_id(&backend_entry(bk.addr)) {
                    released.remove(&id);
                }
            }
            if released.is_empty() {
                break;
            }
        }
    }
    Ok(Some(b.finish(
        delete_acl,
        delete_services,
        delete_tables,
        released.into_iter().collect(),
    )))
}

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;
