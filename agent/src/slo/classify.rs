//! Which kernel events an SLI counts, and as good or bad: docs/slo.md, "What counts".

use std::time::Duration;

use sockmesh_common::{
    ConnEvent, EVENT_CLOSED, EVENT_ESTABLISHED, EVENT_FAILED, RESULT_CIRCUIT_OPEN, RESULT_FAULT,
    RESULT_LIMITED, RESULT_NO_BACKEND, RESULT_OK, RESULT_REFUSED, RESULT_SHED, RESULT_TIMEOUT,
    RESULT_UNREACHABLE,
};
use sockmesh_model::SliKind;

/// `Some(true)`: a good event, `Some(false)`: a bad one, `None`: the SLI does not count it.
///
/// `threshold` is the SLO's latency bound; a latency SLI without one (a config that skipped
/// validation) counts nothing rather than guessing a bound.
pub(crate) fn classify(sli: SliKind, threshold: Option<Duration>, ev: &ConnEvent) -> Option<bool> {
    match sli {
        SliKind::ConnectSuccess => connect_success(ev),
        SliKind::ConnectLatency => {
            let threshold = threshold?;
            (ev.kind == EVENT_ESTABLISHED)
                .then(|| u128::from(ev.duration_ns) <= threshold.as_nanos())
        }
        // Counted from the L7 proxy's reports (`SloTracker::on_requests`), not from
        // connection events.
        SliKind::RequestSuccess | SliKind::RequestLatency => None,
        SliKind::Srtt => {
            let threshold = threshold?;
            // Every closed routed connection, reset or not: a reset is the connection's end,
            // and its RTT until then is still the network the caller saw.
            (ev.kind == EVENT_CLOSED)
                .then(|| u128::from(ev.srtt_us) * 1_000 <= threshold.as_nanos())
        }
    }
}

fn connect_success(ev: &ConnEvent) -> Option<bool> {
    match (ev.kind, ev.result) {
        (EVENT_ESTABLISHED, RESULT_OK) => Some(true),
        // The backend failed the caller.
        (EVENT_FAILED, RESULT_REFUSED | RESULT_TIMEOUT | RESULT_UNREACHABLE) => Some(false),
        // The mesh refused the caller: from its side the service was unavailable. A circuit
        // that protects the backends still spends the budget, or opening circuits would hide
        // outages.
        (
            EVENT_FAILED,
            RESULT_NO_BACKEND | RESULT_CIRCUIT_OPEN | RESULT_LIMITED | RESULT_SHED | RESULT_FAULT,
        ) => Some(false),
        // `denied` is access control, not availability; `reset` (a closed event) comes after
        // a connect that already counted as good; an unknown result is not guessed at.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use sockmesh_common::{EVENT_INBOUND, RESULT_DENIED, RESULT_RESET};

    use super::*;

    fn ev(kind: u32, result: u32) -> ConnEvent {
        ConnEvent {
            kind,
            result,
            service_id: 1,
            backend_id: 1,
            ..ConnEvent::ZERO
        }
    }

    #[test]
    fn connect_success_counts_every_decision_but_denied() {
        let c = |kind, result| classify(SliKind::ConnectSuccess, None, &ev(kind, result));
        assert_eq!(c(EVENT_ESTABLISHED, RESULT_OK), Some(true));
        for bad in [
            RESULT_REFUSED,
            RESULT_TIMEOUT,
            RESULT_UNREACHABLE,
            RESULT_NO_BACKEND,
            RESULT_CIRCUIT_OPEN,
            RESULT_LIMITED,
            RESULT_SHED,
            RESULT_FAULT,
        ] {
            assert_eq!(c(EVENT_FAILED, bad), Some(false), "result {bad}");
        }
        assert_eq!(c(EVENT_FAILED, RESULT_DENIED), None, "access control");
        assert_eq!(c(EVENT_CLOSED, RESULT_RESET), None, "after a good connect");
        assert_eq!(c(EVENT_CLOSED, RESULT_OK), None);
        assert_eq!(c(EVENT_INBOUND, RESULT_OK), None);
        assert_eq!(c(EVENT_FAILED, 99), None, "unknown result");
    }

    #[test]
    fn connect_latency_judges_established_handshakes_inclusively() {
        let t = Some(Duration::from_millis(5));
        let handshake = |ns| ConnEvent {
            duration_ns: ns,
            ..ev(EVENT_ESTABLISHED, RESULT_OK)
        };
        let c = |e: &ConnEvent| classify(SliKind::ConnectLatency, t, e);
        assert_eq!(c(&handshake(4_999_999)), Some(true));
        assert_eq!(
            c(&handshake(5_000_000)),
            Some(true),
            "at the threshold is good"
        );
        assert_eq!(c(&handshake(5_000_001)), Some(false));
        // Failed connects have no handshake: they belong to connect_success.
        let failed = ConnEvent {
            duration_ns: 1,
            ..ev(EVENT_FAILED, RESULT_REFUSED)
        };
        assert_eq!(c(&failed), None);
        assert_eq!(c(&ev(EVENT_CLOSED, RESULT_OK)), None);
        assert_eq!(
            classify(SliKind::ConnectLatency, None, &handshake(1)),
            None,
            "no threshold, no verdict"
        );
    }

    #[test]
    fn srtt_judges_every_closed_connection() {
        let t = Some(Duration::from_millis(2));
        let closed = |result, srtt_us| ConnEvent {
            srtt_us,
            ..ev(EVENT_CLOSED, result)
        };
        let c = |e: &ConnEvent| classify(SliKind::Srtt, t, e);
        assert_eq!(c(&closed(RESULT_OK, 2_000)), Some(true));
        assert_eq!(c(&closed(RESULT_OK, 2_001)), Some(false));
        assert_eq!(
            c(&closed(RESULT_RESET, 100)),
            Some(true),
            "resets close too"
        );
        let established = ConnEvent {
            srtt_us: 100,
            ..ev(EVENT_ESTABLISHED, RESULT_OK)
        };
        assert_eq!(c(&established), None, "judged once, at close");
        assert_eq!(c(&ev(EVENT_FAILED, RESULT_TIMEOUT)), None);
    }
}
