//! The tracker with paused time: routing events to their service's SLOs, samples as the
//! collector and admin API see them, and what a config change keeps or resets.

use std::time::Duration;

use sockmesh_common::{
    ConnEvent, EVENT_CLOSED, EVENT_ESTABLISHED, EVENT_FAILED, RESULT_CIRCUIT_OPEN, RESULT_DENIED,
    RESULT_OK, RESULT_REFUSED, RESULT_RESET,
};
use sockmesh_model::{parse_config, MeshConfig};
use tokio::time::{advance, Instant};

use super::*;
use crate::tables::{plan, KernelState, Overlay};

const MESH: &str = "
services:
  - name: web
    vip: 127.100.0.1
    port: 80
    backends:
      - addr: 127.0.0.2:8081
    slos:
      - name: availability
        sli: connect_success
        objective: 0.99
        window: 30d
      - name: handshake
        sli: connect_latency
        threshold: 5ms
        objective: 0.9
        window: 1d
  - name: api
    vip: 127.100.0.2
    port: 80
    backends:
      - addr: 127.0.0.3:8081
";

fn applied(yaml: &str) -> (MeshConfig, Vec<ServiceView>) {
    let cfg = parse_config(yaml).unwrap();
    let views = plan(&cfg, &Overlay::new(), &KernelState::default())
        .unwrap()
        .views;
    (cfg, views)
}

fn id(views: &[ServiceView], name: &str) -> u32 {
    views.iter().find(|v| v.name == name).unwrap().id
}

fn ev(service_id: u32, kind: u32, result: u32, handshake_ms: u64) -> ConnEvent {
    ConnEvent {
        kind,
        result,
        service_id,
        backend_id: 1,
        duration_ns: handshake_ms * 1_000_000,
        ..ConnEvent::ZERO
    }
}

fn sample<'a>(samples: &'a [SloSample], service: &str, slo: &str) -> &'a SloSample {
    samples
        .iter()
        .find(|s| s.service == service && s.slo == slo)
        .unwrap()
}

#[track_caller]
fn assert_close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-9, "got {got}, want {want}");
}

#[tokio::test(start_paused = true)]
async fn events_reach_the_slos_of_their_service_only() {
    let (cfg, views) = applied(MESH);
    let (web, api) = (id(&views, "web"), id(&views, "api"));
    let mut t = SloTracker::new(Instant::now(), &cfg, &views);
    let now = Instant::now();
    for _ in 0..97 {
        t.on_event(now, &ev(web, EVENT_ESTABLISHED, RESULT_OK, 1));
    }
    t.on_event(now, &ev(web, EVENT_ESTABLISHED, RESULT_OK, 9));
    t.on_event(now, &ev(web, EVENT_FAILED, RESULT_REFUSED, 0));
    t.on_event(now, &ev(web, EVENT_FAILED, RESULT_CIRCUIT_OPEN, 0));
    // Neither good nor bad for any SLO here: denied, a reset, another service, no service.
    t.on_event(now, &ev(web, EVENT_FAILED, RESULT_DENIED, 0));
    t.on_event(now, &ev(web, EVENT_CLOSED, RESULT_RESET, 0));
    t.on_event(now, &ev(api, EVENT_FAILED, RESULT_REFUSED, 0));
    t.on_event(now, &ev(0, EVENT_FAILED, RESULT_REFUSED, 0));

    advance(Duration::from_secs(60)).await;
    let samples = t.snapshot(Instant::now());
    assert_eq!(samples.len(), 2, "api has no SLOs");
    let avail = sample(&samples, "web", "availability");
    assert_eq!((avail.good_total, avail.total), (98, 100));
    assert_eq!(avail.sli, "connect_success");
    assert_eq!(avail.objective, 0.99);
    assert_eq!(avail.window_secs, 30.0 * 86_400.0);
    // 2 % bad against a 1 % budget: twice the budget spent, burning at 2x everywhere.
    assert_close(avail.budget_remaining, -1.0);
    for (i, (label, rate)) in avail.burn.iter().enumerate() {
        assert_eq!(*label, BURN_WINDOWS[i].0);
        assert_close(*rate, 2.0);
    }
    let handshake = sample(&samples, "web", "handshake");
    assert_eq!((handshake.good_total, handshake.total), (97, 98));
    assert_close(handshake.burn[0].1, (1.0 / 98.0) / 0.1);

    // Ten minutes on, the 5m window is empty: it burns nothing, the longer ones still do.
    advance(Duration::from_secs(600)).await;
    let samples = t.snapshot(Instant::now());
    let avail = sample(&samples, "web", "availability");
    assert_eq!(avail.burn[0], (BurnWindow::FiveMinutes, 0.0));
    assert_close(avail.burn[1].1, 2.0);
}

#[tokio::test(start_paused = true)]
async fn no_traffic_means_full_budget_and_no_burn() {
    let (cfg, views) = applied(MESH);
    let t = SloTracker::new(Instant::now(), &cfg, &views);
    for s in t.snapshot(Instant::now()) {
        assert_eq!((s.good_total, s.total), (0, 0));
        assert_eq!(s.budget_remaining, 1.0);
        assert!(s.burn.iter().all(|(_, rate)| *rate == 0.0));
    }
}

#[tokio::test(start_paused = true)]
async fn reconfigure_keeps_history_of_slos_that_persist() {
    let (cfg, views) = applied(MESH);
    let web = id(&views, "web");
    let mut t = SloTracker::new(Instant::now(), &cfg, &views);
    t.on_event(Instant::now(), &ev(web, EVENT_ESTABLISHED, RESULT_OK, 1));
    t.on_event(Instant::now(), &ev(web, EVENT_FAILED, RESULT_REFUSED, 0));
    advance(Duration::from_secs(5)).await;

    // New objective and window for availability; handshake's threshold changes; a new SLO.
    let edited = MESH
        .replace("objective: 0.99\n        window: 30d", "objective: 0.5\n        window: 7d")
        .replace("threshold: 5ms", "threshold: 2ms")
        .replace(
            "  - name: api\n",
            "      - name: rtt\n        sli: srtt\n        threshold: 1ms\n        objective: 0.9\n        window: 1d\n  - name: api\n",
        );
    let (cfg2, views2) = applied(&edited);
    t.reconfigure(Instant::now(), &cfg2, &views2);
    let samples = t.snapshot(Instant::now());
    let avail = sample(&samples, "web", "availability");
    assert_eq!(
        (avail.good_total, avail.total),
        (1, 2),
        "same events, new objective"
    );
    assert_eq!(avail.objective, 0.5);
    assert_eq!(avail.window_secs, 7.0 * 86_400.0);
    assert_close(avail.budget_remaining, 0.0);
    let handshake = sample(&samples, "web", "handshake");
    assert_eq!(
        handshake.total, 0,
        "a new threshold judges events differently"
    );
    assert_eq!(sample(&samples, "web", "rtt").total, 0);
    let names: Vec<&str> = samples.iter().map(|s| s.slo.as_str()).collect();
    assert_eq!(names, ["availability", "handshake", "rtt"], "config order");

    // Removing an SLO and adding it back starts its counters over (a reset to Prometheus).
    let (cfg3, views3) = applied(&edited.replace("name: availability", "name: avail"));
    t.reconfigure(Instant::now(), &cfg3, &views3);
    let (cfg4, views4) = applied(&edited);
    t.reconfigure(Instant::now(), &cfg4, &views4);
    let samples = t.snapshot(Instant::now());
    assert_eq!(sample(&samples, "web", "availability").total, 0);
}

#[tokio::test(start_paused = true)]
async fn events_follow_the_service_id_of_the_current_config() {
    let (cfg, views) = applied(MESH);
    let mut t = SloTracker::new(Instant::now(), &cfg, &views);
    let mut moved = views.clone();
    for v in &mut moved {
        v.id += 100;
    }
    t.reconfigure(Instant::now(), &cfg, &moved);
    let web_old = id(&views, "web");
    t.on_event(
        Instant::now(),
        &ev(web_old, EVENT_FAILED, RESULT_REFUSED, 0),
    );
    t.on_event(
        Instant::now(),
        &ev(web_old + 100, EVENT_FAILED, RESULT_REFUSED, 0),
    );
    let samples = t.snapshot(Instant::now());
    assert_eq!(sample(&samples, "web", "availability").total, 1);
}

#[test]
fn samples_serialize_with_burn_rates_by_window() {
    let s = SloSample {
        service: "web".into(),
        slo: "availability".into(),
        sli: "connect_success",
        objective: 0.999,
        window_secs: 2_592_000.0,
        good_total: 9,
        total: 10,
        budget_remaining: -99.0,
        burn: [
            (BurnWindow::FiveMinutes, 100.0),
            (BurnWindow::ThirtyMinutes, 100.0),
            (BurnWindow::OneHour, 100.0),
            (BurnWindow::SixHours, 0.0),
        ],
    };
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["burn"]["5m"], 100.0);
    assert_eq!(json["burn"]["6h"], 0.0);
    assert_eq!(json["good_total"], 9);
    assert_eq!(json["sli"], "connect_success");
}

const HTTP_MESH: &str = "
services:
  - name: shop
    vip: 127.100.0.9
    port: 80
    protocol: http
    backends: [{addr: 127.0.0.2:8081}]
    slos:
      - {name: ok, sli: request_success, objective: 0.99, window: 1d}
      - {name: fast, sli: request_latency, threshold: 250ms, objective: 0.9, window: 1d}
      - {name: conn, sli: connect_success, objective: 0.99, window: 1d}
";

#[tokio::test(start_paused = true)]
async fn request_slis_count_the_proxys_tallies() {
    let (cfg, views) = applied(HTTP_MESH);
    let mut t = SloTracker::new(Instant::now(), &cfg, &views);
    let within = [(50_000, 90), (250_000, 95)];
    let tally = RequestTally {
        requests: 100,
        failed: 4,
        within: &within,
    };
    t.on_requests(Instant::now(), "shop", tally);
    // Another service's tally, or a threshold nobody counted, moves nothing.
    t.on_requests(Instant::now(), "nope", tally);
    let samples = t.snapshot(Instant::now());
    let get = |name: &str| samples.iter().find(|s| s.slo == name).unwrap();
    assert_eq!((get("ok").good_total, get("ok").total), (96, 100));
    assert_eq!(get("ok").sli, "request_success");
    assert_eq!((get("fast").good_total, get("fast").total), (95, 100));
    assert_eq!((get("conn").good_total, get("conn").total), (0, 0));
    // 4% failed against a 1% budget: burning at 4x.
    let burn = get("ok").burn[0].1;
    assert!((burn - 4.0).abs() < 1e-9, "{burn}");
    let none = RequestTally {
        requests: 10,
        failed: 0,
        within: &[(1, 10)],
    };
    t.on_requests(Instant::now(), "shop", none);
    let samples = t.snapshot(Instant::now());
    let fast = samples.iter().find(|s| s.slo == "fast").unwrap();
    assert_eq!(
        fast.total, 100,
        "a report without the SLO's threshold is skipped"
    );
}
