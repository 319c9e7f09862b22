//! Topology and diagnosis: the caller x service "line" view, the `top` ranking of services,
//! and `diagnose SERVICE`, which ranks the likely causes of a service's trouble with evidence
//! from the kernel signals (docs/slo.md, "Diagnosis").
//!
//! Pure and clocked from outside, like the SLO tracker: the signals folder feeds connect
//! outcomes and kernel counters into a [`Recorder`] (10 s buckets over ten minutes,
//! [`periods`]); [`lines`] and [`input`] read it at `now`; [`score::diagnose`] is a pure
//! function of a plain [`score::DiagnoseInput`], so each cause is tested on hand-made numbers.
//! [`api`] is what the admin API serves.

pub mod api;
mod causes;
pub mod input;
pub mod lines;
pub mod listeners;
pub mod periods;
pub mod record;
pub mod score;
mod tally;

pub use record::Recorder;
