//! Exposition formats: the agent and the control plane answer scrapes alike, so the helpers
//! live in `sockmesh_model::exposition` (tested there).

pub(crate) use sockmesh_model::exposition::{to_classic, wants_openmetrics, CLASSIC, OPENMETRICS};
