//! Limits enforced in the kernel at connect():
//! - `max_connections: 5`: with five connections held open the sixth is refused at once
//!   (ECONNREFUSED, `result="limited"`), no backend sees it; closing one makes room again.
//! - `connect_rate: 20, connect_burst: 5` (a token bucket, GCRA): 50 back-to-back connects
//!   get the burst of 5 plus what the rate refills meanwhile, the rest are refused; paced at
//!   twice the rate for 2 s, about half get through.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{percentile, Caller, Connects};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::{loopback_addrs, sum_metric, wait_counter_settled, ServiceYaml, TestBed};

const CONNECTIONS: &str = "sockmesh_connections_total";
/// Closing a connection releases its unit when the socket reaches CLOSE (FIN exchanged: the
/// echo backend notices the EOF within 100 ms).
const RELEASE: Duration = Duration::from_millis(600);

fn count(text: &str, service: &str, result: &str) -> f64 {
    sum_metric(
        text,
        CONNECTIONS,
        &[("service", service), ("result", result)],
    ) + 0.0
}

#[test]
fn max_connections_refuses_the_sixth_and_admits_again_after_a_close() {
    let backends = loopback_addrs(2, 3, 18440);
    let vip: SocketAddr = "127.100.44.1:18441".parse().unwrap();
    let service = HealthService::new(
        ServiceYaml::new("capped", vip, "round_robin").backends(&backends, &[1; 3]),
    )
    .with("limits", "{max_connections: 5}");
    let set = SwitchBackends::start(&backends).unwrap();
    let mut bed = TestBed::start("health-maxconn", &health_mesh(&[service], &[])).unwrap();
    let mut holder = Caller::spawn("holder", bed.cgroup(), vip).unwrap();

    let five = holder.connect(&Connects::new(5).hold()).unwrap();
    assert_eq!(five.ok_count(), 5, "{:#?}", five.failures());
    assert_eq!(five.held, 5);
    let accepts = |set: &SwitchBackends| (0..3).map(|i| set.accepts(i)).sum::<usize>();
    let accepted = accepts(&set);

    let sixth = holder.connect(&Connects::new(1).hold()).unwrap();
    let refusal = &sixth.results[0];
    eprintln!(
        "6th connect: {:?} in {:.0} us",
        refusal.error,
        refusal.connect_us.unwrap_or(-1.0)
    );
    assert!(refusal.refused(), "the 6th connect: {refusal:#?}");
    assert!(
        refusal.connect_us.unwrap_or(f64::MAX) < 10_000.0,
        "refused at once, not after a timeout: {refusal:#?}"
    );
    // Several more, still refused while five are open.
    let more = holder.connect(&Connects::new(10).hold()).unwrap();
    assert_eq!(more.refused_count(), 10, "{:#?}", more.results);
    assert_eq!(
        accepts(&set),
        accepted,
        "no refused connect reached a backend"
    );
    assert_eq!(more.held, 5);

    assert_eq!(holder.close(1).unwrap(), 4);
    thread::sleep(RELEASE);
    let again = holder.connect(&Connects::new(1).hold()).unwrap();
    assert!(again.results[0].ok(), "after a close: {:#?}", again.results);
    let full = holder.connect(&Connects::new(1).hold()).unwrap();
    assert!(full.results[0].refused(), "at 5 again: {:#?}", full.results);

    // All five held ones are still alive: limits refuse new connects, never cut old ones.
    let held = holder.status().unwrap();
    assert_eq!(held.len(), 5);
    assert!(held.iter().all(|h| h.alive), "{held:#?}");

    // Close everything: the whole budget comes back.
    assert_eq!(holder.close(5).unwrap(), 0);
    thread::sleep(RELEASE);
    let refill = holder.connect(&Connects::new(5).hold()).unwrap();
    assert_eq!(refill.ok_count(), 5, "{:#?}", refill.failures());

    let limited = (1 + more.refused_count() + 1) as f64;
    let text = wait_counter_settled(bed.agent(), "limited connects", limited, |t| {
        count(t, "capped", "limited")
    })
    .unwrap();
    eprintln!(
        "metrics: limited {}, ok {}, refused {}",
        count(&text, "capped", "limited"),
        count(&text, "capped", "ok"),
        count(&text, "capped", "refused")
    );
    assert_eq!(count(&text, "capped", "limited"), limited);
    assert_eq!(count(&text, "capped", "ok"), (5 + 1 + 5) as f64);
    assert_eq!(count(&text, "capped", "refused"), 0.0);
    assert_eq!(sum_metric(&text, "sockmesh_backend_bans_total", &[]), 0.0);
}

#[test]
fn connect_rate_admits_the_burst_plus_the_refill_and_refuses_the_rest() {
    const RATE: f64 = 20.0;
    const BURST: usize = 5;
    let backends = loopback_addrs(2, 3, 18442);
    let vip: SocketAddr = "127.100.44.2:18443".parse().unwrap();
    let service = HealthService::new(
        ServiceYaml::new("metered", vip, "round_robin").backends(&backends, &[1; 3]),
    )
    .with("limits", "{connect_rate: 20, connect_burst: 5}");
    let _set = SwitchBackends::start(&backends).unwrap();
    let mut bed = TestBed::start("health-rate", &health_mesh(&[service], &[])).unwrap();
    let mut caller = Caller::spawn("caller", bed.cgroup(), vip).unwrap();

    // A burst: 50 back to back. The bucket starts full.
    let burst = caller.connect(&Connects::new(50)).unwrap();
    let elapsed = burst.elapsed_ms / 1000.0;
    let refill = (RATE * elapsed).ceil() as usize;
    let refused_us: Vec<f64> = burst
        .results
        .iter()
        .filter(|a| a.refused())
        .filter_map(|a| a.connect_us)
        .collect();
    eprintln!(
        "burst of 50 in {:.1} ms: {} ok, {} refused (refusal p50 {:.0} us, max {:.0} us); \
         allowed 5 + {refill}",
        burst.elapsed_ms,
        burst.ok_count(),
        burst.refused_count(),
        percentile(&refused_us, 50.0),
        percentile(&refused_us, 100.0)
    );
    assert_eq!(
        burst.ok_count() + burst.refused_count(),
        50,
        "{:#?}",
        burst.failures()
    );
    assert!(
        burst.ok_count() >= BURST && burst.ok_count() <= BURST + refill + 1,
        "burst: {} ok, expected 5..={}",
        burst.ok_count(),
        BURST + refill + 1
    );
    // The first five are the burst: admitted in a row.
    assert!(
        burst.results[..BURST].iter().all(|a| a.ok()),
        "{:#?}",
        &burst.results[..BURST]
    );

    // Sustained at twice the rate for 2 s: about the rate gets through.
    thread::sleep(Duration::from_millis(400));
    let paced = caller.connect(&Connects::new(80).rate(2.0 * RATE)).unwrap();
    let secs = paced.elapsed_ms / 1000.0;
    let expected = RATE * secs;
    eprintln!(
        "paced 80 at 40/s over {secs:.2} s: {} ok, {} refused (rate x time = {expected:.1})",
        paced.ok_count(),
        paced.refused_count()
    );
    assert_eq!(paced.ok_count() + paced.refused_count(), 80);
    // Bounds: the rate over the run, plus at most the bucket (5) that refilled during the
    // 400 ms pause, minus a few for pacing jitter.
    let ok = paced.ok_count() as f64;
    assert!(
        ok >= expected - 4.0 && ok <= expected + BURST as f64 + 2.0,
        "paced: {ok} ok, expected about {expected:.1}"
    );

    let limited = (burst.refused_count() + paced.refused_count()) as f64;
    let text = wait_counter_settled(bed.agent(), "limited connects", limited, |t| {
        count(t, "metered", "limited")
    })
    .unwrap();
    assert_eq!(count(&text, "metered", "limited"), limited);
    assert_eq!(
        count(&text, "metered", "ok"),
        (burst.ok_count() + paced.ok_count()) as f64
    );
}
