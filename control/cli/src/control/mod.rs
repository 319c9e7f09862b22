//! `sockmesh config history|rollback|agents`: the CLI's side of the control plane
//! (`sockmesh-control`, docs/control-plane.md). The same blocking HTTP as the agent's
//! admin client ([`super::http`]), with the control plane's address, token and wording.

mod client;
mod render;

pub use client::{ControlClient, ControlError, DEFAULT_CONTROL_URL};
pub use render::{agents, history, rollback};
