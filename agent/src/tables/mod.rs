//! Tables: desired state -> kernel maps.
//!
//! The config is compiled into slot tables (weights, Maglev; per caller class for routes and
//! locality, [`route`]) and planned into an ordered list
//! of map writes ([`plan`]); [`kernel::KernelMaps`] applies them to the pinned maps. Everything
//! but `kernel` is pure and tested natively.

pub mod addr;
pub mod kernel;
pub mod maglev;
pub mod overlay;
pub mod plan;
pub mod policy;
pub mod route;
pub mod slots;

#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod route_tests;

pub use overlay::{CircuitFlag, Overlay, ServiceOverlay};
pub use plan::{plan, plan_for, KernelState, ServiceView};
pub use route::Node;
