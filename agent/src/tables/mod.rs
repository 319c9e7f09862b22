//! Tables: desired state -> kernel maps.
//!
//! The config is compiled into slot tables (weights, Maglev; per caller class for routes and
//! locality, [`route`]) and planned into an ordered list
//! of map writes ([`plan`]); [`kernel::KernelMaps`] applies them to the pinned maps. Everything
//! but `kernel` is pure and tested natively.

pub(crate) mod addr;
pub(crate) mod kernel;
pub(crate) mod maglev;
pub(crate) mod overlay;
pub(crate) mod plan;
pub(crate) mod policy;
pub(crate) mod route;
pub(crate) mod slots;

#[cfg(test)]
mod acl_tests;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod route_tests;

pub(crate) use overlay::{CircuitFlag, Overlay, ServiceOverlay};
pub(crate) use plan::{plan, plan_for, plan_services, KernelState, ServiceView};
pub(crate) use route::Node;
