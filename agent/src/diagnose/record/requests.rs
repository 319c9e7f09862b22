//! The L7 proxy's request counts in the [`Recorder`]: per service (for `top` and the
//! `backend_errors` cause's severity) and per backend (which backends the failures come
//! from). The caller bounds the backends to the service's configured ones.

use tokio::time::Instant;

use super::{Recorder, RequestTally, Span};
use crate::diagnose::periods::Tally;

impl Recorder {
    /// One report's counts for `service`: the service's own, then each backend's.
    pub(crate) fn on_requests<'a>(
        &mut self,
        now: Instant,
        service: &str,
        total: &RequestTally,
        backends: impl Iterator<Item = (&'a str, RequestTally)>,
    ) {
        let epoch = self.clock.epoch(now);
        if total.requests > 0 {
            self.requests
                .entry(service.to_owned())
                .or_default()
                .record(epoch, |t| t.add(total));
        }
        for (backend, tally) in backends {
            if tally.requests == 0 {
                continue;
            }
            self.backend_requests
                .entry((service.to_owned(), backend.to_owned()))
                .or_default()
                .record(epoch, |t| t.add(&tally));
        }
        self.forget_stale(epoch);
    }

    /// The seconds of `span` the recorder saw (an agent that started 15 s ago saw 15 s of
    /// the last 5 min), at least one: a rate's divisor.
    pub(crate) fn observed_secs(&self, now: Instant, span: Span) -> f64 {
        self.clock.since(now).as_secs_f64().clamp(1.0, span.secs())
    }

    /// The service's requests in `span` (nothing for a tcp service).
    pub(crate) fn requests(&self, now: Instant, service: &str, span: Span) -> RequestTally {
        let epoch = self.clock.epoch(now);
        self.requests
            .get(service)
            .map(|p| p.sum(epoch, span.skip, span.n))
            .unwrap_or_default()
    }

    /// One backend's requests in `span`.
    pub(crate) fn backend_requests(
        &self,
        now: Instant,
        service: &str,
        backend: &str,
        span: Span,
    ) -> RequestTally {
        let epoch = self.clock.epoch(now);
        self.backend_requests
            .get(&(service.to_owned(), backend.to_owned()))
            .map(|p| p.sum(epoch, span.skip, span.n))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::diagnose::record::{BASELINE, LAST, RECENT};

    fn tally(requests: u64, failed: u64, gateway: u64) -> RequestTally {
        RequestTally {
            requests,
            failed,
            gateway,
            ..RequestTally::default()
        }
    }

    #[test]
    fn requests_add_up_per_service_and_backend_in_their_windows() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        let mut total = tally(10, 2, 0);
        total.within.insert(100_000, 9);
        r.on_requests(
            t0,
            "web",
            &total,
            [("127.0.0.2:80", tally(10, 2, 1))].into_iter(),
        );
        let now = t0 + Duration::from_secs(120);
        r.on_requests(
            now,
            "web",
            &total,
            [("127.0.0.2:80", tally(4, 0, 0))].into_iter(),
        );
        let none = tally(0, 0, 0);
        r.on_requests(
            now,
            "web",
            &none,
            [("127.0.0.3:80", none.clone())].into_iter(),
        );

        let recent = r.requests(now, "web", RECENT);
        assert_eq!((recent.requests, recent.failed), (10, 2));
        assert_eq!(recent.within.get(&100_000), Some(&9));
        assert_eq!(r.requests(now, "web", BASELINE).requests, 10);
        assert_eq!(
            r.backend_requests(now, "web", "127.0.0.2:80", BASELINE),
            tally(10, 2, 1)
        );
        assert_eq!(
            r.backend_requests(now, "web", "127.0.0.2:80", RECENT),
            tally(4, 0, 0)
        );
        assert_eq!(
            r.backend_requests.len(),
            1,
            "a backend with no requests is not kept"
        );
        assert_eq!(r.requests(now, "api", RECENT), RequestTally::default());
        assert_eq!(r.observed_secs(t0 + Duration::from_secs(15), LAST), 15.0);
        assert_eq!(r.observed_secs(t0, LAST), 1.0, "never zero");
        assert_eq!(r.observed_secs(now, RECENT), 60.0);
        // Ten minutes of silence: forgotten.
        r.on_requests(
            now + Duration::from_secs(700),
            "other",
            &tally(1, 0, 0),
            std::iter::empty(),
        );
        assert!(r.backend_requests.is_empty());
        assert_eq!(r.requests.len(), 1);
    }
}
