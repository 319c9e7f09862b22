//! Service level objectives: which kernel signal a service is judged on, the share of good
//! events it promises, and over how long. The precise good/total definitions per SLI are the
//! contract in docs/slo.md; the agent computes error budgets and burn rates from them.

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::duration::Span;

/// Most SLOs one service may declare. Each SLO keeps its own bucketed history in the agent
/// and adds nine series to the metrics; a handful covers availability, latency
/// and RTT, and the bound stops a generated config from multiplying both.
pub const MAX_SLOS_PER_SERVICE: usize = 16;

/// One objective of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    /// Unique within the service; same shape as a service name (it becomes a label value).
    pub name: String,
    /// What is measured.
    pub sli: SliKind,
    /// Share of good events promised, strictly between 0 and 1 (`0.999`).
    pub objective: f64,
    /// The compliance period the error budget covers (`30d`).
    pub window: Span,
    /// Latency bound for `connect_latency` and `srtt`: at most this is good. Not allowed for
    /// `connect_success`, where it would mean nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Span>,
}

// `objective` is validated finite (NaN fails the range check), so equality is reflexive on
// every config that passes validation, as for the health policy types.
impl Eq for SloSpec {}

/// The service level indicator: what an SLO counts as good out of what total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliKind {
    /// Established connects out of every connect that reached the mesh's decision.
    ConnectSuccess,
    /// Handshakes within `threshold` out of established connects.
    ConnectLatency,
    /// Closed connections whose smoothed RTT was within `threshold` out of all closed ones.
    Srtt,
    /// `protocol: http` services only: requests answered without a 5xx (or a gRPC error
    /// status) out of every request the proxy took, including those it could not answer.
    RequestSuccess,
    /// `protocol: http` services only: requests whose whole duration (retries included) was
    /// within `threshold` out of every request.
    RequestLatency,
}

impl SliKind {
    /// The name used in config files, the admin API and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            SliKind::ConnectSuccess => "connect_success",
            SliKind::ConnectLatency => "connect_latency",
            SliKind::Srtt => "srtt",
            SliKind::RequestSuccess => "request_success",
            SliKind::RequestLatency => "request_latency",
        }
    }

    /// Whether the SLI compares a duration with a threshold.
    pub fn needs_threshold(&self) -> bool {
        !matches!(self, SliKind::ConnectSuccess | SliKind::RequestSuccess)
    }

    /// Whether the SLI counts requests (only the L7 proxy sees them: http services).
    pub fn is_request(&self) -> bool {
        matches!(self, SliKind::RequestSuccess | SliKind::RequestLatency)
    }
}

impl fmt::Display for SliKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rule checks for the SLOs of one service; `Err((field, reason))` with `field` relative to
/// the service (`slos[1].objective`).
pub(super) fn check(slos: &[SloSpec], http: bool) -> Result<(), (String, String)> {
    if slos.len() > MAX_SLOS_PER_SERVICE {
        return Err((
            "slos".to_owned(),
            format!(
                "{} SLOs, more than the limit of {MAX_SLOS_PER_SERVICE}",
                slos.len()
            ),
        ));
    }
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(slos.len());
    for (i, slo) in slos.iter().enumerate() {
        let fail = |field: &str, reason: String| Err((format!("slos[{i}].{field}"), reason));
        if let Err(reason) = super::validate::check_name("SLO", &slo.name) {
            return fail("name", reason);
        }
        match names.entry(slo.name.as_str()) {
            Entry::Occupied(first) => {
                return fail(
                    "name",
                    format!(
                        "duplicate SLO name {:?}, already used by slos[{}]",
                        slo.name,
                        first.get()
                    ),
                )
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        // Both ends open: an objective of 1 leaves no error budget to divide by, and 0
        // promises nothing. The negated form also rejects NaN.
        if !(slo.objective > 0.0 && slo.objective < 1.0) {
            return fail(
                "objective",
                format!(
                    "objective {} must be between 0 and 1, both excluded (like 0.999)",
                    slo.objective
                ),
            );
        }
        if slo.window.0.is_zero() {
            return fail("window", "must be longer than 0".to_owned());
        }
        if slo.sli.is_request() && !http {
            return fail(
                "sli",
                format!(
                    "sli {} counts requests, which only a `protocol: http` service has",
                    slo.sli
                ),
            );
        }
        match (slo.sli.needs_threshold(), slo.threshold) {
            (true, None) => {
                return fail(
                    "threshold",
                    format!("sli {} needs a threshold (like 5ms)", slo.sli),
                )
            }
            (true, Some(t)) if t.0.is_zero() => {
                return fail("threshold", "must be longer than 0".to_owned())
            }
            (false, Some(_)) => {
                return fail(
                    "threshold",
                    format!("sli {} takes no threshold (only latency SLIs do)", slo.sli),
                )
            }
            _ => {}
        }
    }
    Ok(())
}
