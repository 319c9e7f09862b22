//! Topology and diagnosis: the caller x service "line" view, the `top` ranking of services,
//! and `diagnose SERVICE`, which ranks the likely causes of a service's trouble with evidence
//! from the kernel signals (docs/slo.md, "Diagnosis").
//!
//! Pure and clocked from outside, like the SLO tracker: the signals folder feeds connect
//! outcomes and kernel counters into a [`Recorder`] (10 s buckets over ten minutes,
//! [`periods`]); [`lines`] and [`input`] read it at `now`; [`score::diagnose`] is a pure
//! function of a plain [`score::DiagnoseInput`], so each cause is tested on hand-made numbers.
//! [`api`] is what the admin API serves.

pub(crate) mod api;
mod backend_errors;
mod causes;
pub(crate) mod input;
pub(crate) mod lines;
pub(crate) mod listeners;
pub(crate) mod periods;
pub(crate) mod record;
pub(crate) mod score;
mod tally;

pub(crate) use record::Recorder;
