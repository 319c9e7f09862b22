//! Exposition formats: the agent and the control plane answer scrapes alike, so the helpers
//! live in `sockmesh_control::server::exposition` (tested there).

pub(super) use sockmesh_control::server::exposition::{
    to_classic, wants_openmetrics, CLASSIC, OPENMETRICS,
};
