//! Service SLOs: the YAML shape, round trips, the unchanged fingerprint of configs without
//! SLOs, and one rejection per rule with its field path.

use super::*;
use crate::{SliKind, SloSpec, Span, MAX_SLOS_PER_SERVICE};

const WITH_SLOS: &str = "
services:
  - name: web
    vip: 127.100.0.1
    port: 80
    backends:
      - addr: 127.0.0.2:8081
    slos:
      - name: availability
        sli: connect_success
        objective: 0.999
        window: 30d
      - name: handshake
        sli: connect_latency
        threshold: 5ms
        objective: 0.99
        window: 30d
      - name: rtt
        sli: srtt
        threshold: 2ms
        objective: 0.95
        window: 7d
";

fn slo(name: &str, sli: SliKind, threshold: Option<Span>) -> SloSpec {
    SloSpec {
        name: name.to_owned(),
        sli,
        objective: 0.99,
        window: Span::secs(30 * 86_400),
        threshold,
    }
}

#[test]
fn slos_parse_as_written() {
    let cfg = parse_config(WITH_SLOS).unwrap();
    let slos = &cfg.services[0].slos;
    assert_eq!(slos.len(), 3);
    assert_eq!(slos[0].name, "availability");
    assert_eq!(slos[0].sli, SliKind::ConnectSuccess);
    assert_eq!(slos[0].objective, 0.999);
    assert_eq!(slos[0].window, Span::secs(30 * 86_400));
    assert_eq!(slos[0].threshold, None);
    assert_eq!(slos[1].sli, SliKind::ConnectLatency);
    assert_eq!(slos[1].threshold, Some(Span::millis(5)));
    assert_eq!(slos[2].sli, SliKind::Srtt);
    assert_eq!(slos[2].window, Span::secs(7 * 86_400));
    for (sli, text) in [
        (SliKind::ConnectSuccess, "connect_success"),
        (SliKind::ConnectLatency, "connect_latency"),
        (SliKind::Srtt, "srtt"),
    ] {
        assert_eq!(sli.as_str(), text);
        assert_eq!(serde_yaml::to_string(&sli).unwrap().trim(), text);
    }
}

#[test]
fn slos_round_trip_through_yaml_and_json() {
    let cfg = parse_config(WITH_SLOS).unwrap();
    let yaml = serde_yaml::to_string(&cfg).unwrap();
    assert_eq!(parse_config(&yaml).unwrap(), cfg);
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<MeshConfig>(&json).unwrap(), cfg);
}

#[test]
fn no_slos_means_no_slos_key_and_the_same_fingerprint() {
    let plain = parse_config(ONE_SERVICE).unwrap();
    assert!(plain.services[0].slos.is_empty());
    assert!(!serde_json::to_string(&plain).unwrap().contains("slos"));
    let empty = parse_config(&format!("{ONE_SERVICE}    slos: []\n")).unwrap();
    assert_eq!(plain.fingerprint(), empty.fingerprint());
    let with = parse_config(WITH_SLOS).unwrap();
    let mut without = with.clone();
    without.services[0].slos.clear();
    assert_ne!(with.fingerprint(), without.fingerprint());
}

fn with_slos(slos: Vec<SloSpec>) -> MeshConfig {
    let mut web = service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]);
    web.slos = slos;
    mesh(vec![web])
}

#[test]
fn valid_slos_pass() {
    let cfg = with_slos(vec![
        slo("availability", SliKind::ConnectSuccess, None),
        slo("handshake", SliKind::ConnectLatency, Some(Span::millis(5))),
        slo("rtt", SliKind::Srtt, Some(Span::millis(1))),
    ]);
    cfg.validate().unwrap();
}

#[test]
fn duplicate_slo_name_within_a_service() {
    let cfg = with_slos(vec![
        slo("availability", SliKind::ConnectSuccess, None),
        slo(
            "availability",
            SliKind::ConnectLatency,
            Some(Span::millis(5)),
        ),
    ]);
    assert_invalid(&cfg, "services[0].slos[1].name", "already used by slos[0]");
}

#[test]
fn same_slo_name_in_two_services_is_fine() {
    let mut cfg = with_slos(vec![slo("availability", SliKind::ConnectSuccess, None)]);
    let mut api = service("api", "127.100.0.2", 80, &[("127.0.0.4:8081", 1)]);
    api.slos = cfg.services[0].slos.clone();
    cfg.services.push(api);
    cfg.validate().unwrap();
}

#[test]
fn bad_slo_names() {
    for (name, fragment) in [
        ("", "must not be empty"),
        ("Availability", "invalid SLO name"),
        ("-avail", "invalid SLO name"),
        ("a b", "invalid SLO name"),
    ] {
        let cfg = with_slos(vec![
            slo("ok", SliKind::ConnectSuccess, None),
            slo(name, SliKind::ConnectSuccess, None),
        ]);
        assert_invalid(&cfg, "services[0].slos[1].name", fragment);
    }
    let long = "a".repeat(64);
    let cfg = with_slos(vec![slo(&long, SliKind::ConnectSuccess, None)]);
    assert_invalid(&cfg, "services[0].slos[0].name", "more than the limit");
}

#[test]
fn objective_must_be_strictly_between_0_and_1() {
    for objective in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        let mut bad = slo("handshake", SliKind::ConnectLatency, Some(Span::millis(5)));
        bad.objective = objective;
        let cfg = with_slos(vec![
            slo("availability", SliKind::ConnectSuccess, None),
            bad,
        ]);
        assert_invalid(&cfg, "services[0].slos[1].objective", "between 0 and 1");
    }
    for objective in [f64::MIN_POSITIVE, 0.5, 0.99999] {
        let mut fine = slo("availability", SliKind::ConnectSuccess, None);
        fine.objective = objective;
        with_slos(vec![fine]).validate().unwrap();
    }
}

#[test]
fn zero_window_is_rejected() {
    let mut bad = slo("availability", SliKind::ConnectSuccess, None);
    bad.window = Span::secs(0);
    assert_invalid(
        &with_slos(vec![bad]),
        "services[0].slos[0].window",
        "longer than 0",
    );
}

#[test]
fn latency_slis_need_a_threshold() {
    for sli in [SliKind::ConnectLatency, SliKind::Srtt] {
        let cfg = with_slos(vec![slo("latency", sli, None)]);
        assert_invalid(&cfg, "services[0].slos[0].threshold", "needs a threshold");
        let cfg = with_slos(vec![slo("latency", sli, Some(Span::millis(0)))]);
        assert_invalid(&cfg, "services[0].slos[0].threshold", "longer than 0");
    }
}

#[test]
fn connect_success_takes_no_threshold() {
    let cfg = with_slos(vec![slo(
        "availability",
        SliKind::ConnectSuccess,
        Some(Span::millis(5)),
    )]);
    assert_invalid(&cfg, "services[0].slos[0].threshold", "takes no threshold");
}

#[test]
fn too_many_slos() {
    let slos = (0..=MAX_SLOS_PER_SERVICE)
        .map(|i| slo(&format!("s{i}"), SliKind::ConnectSuccess, None))
        .collect();
    assert_invalid(&with_slos(slos), "services[0].slos", "more than the limit");
}

#[test]
fn slo_errors_name_the_service_they_belong_to() {
    let mut cfg = with_slos(Vec::new());
    let mut api = service("api", "127.100.0.2", 80, &[("127.0.0.4:8081", 1)]);
    let mut bad = slo("availability", SliKind::ConnectSuccess, None);
    bad.objective = 1.0;
    api.slos = vec![slo("ok", SliKind::ConnectSuccess, None), bad];
    cfg.services.push(api);
    assert_invalid(&cfg, "services[1].slos[1].objective", "between 0 and 1");
}

#[test]
fn decode_errors_in_slos_have_a_path() {
    let bad_sli = WITH_SLOS.replace("sli: srtt", "sli: rtt");
    assert_rejected(&bad_sli, "services[0].slos[2].sli", "unknown variant");
    let bad_window = WITH_SLOS.replace("window: 7d", "window: 7w");
    assert_rejected(&bad_window, "services[0].slos[2].window", "unknown unit");
    let typo = WITH_SLOS.replace("objective: 0.95", "objectiv: 0.95");
    assert_rejected(&typo, "services[0].slos[2].objectiv", "unknown field");
    let missing = WITH_SLOS.replace("        objective: 0.95\n", "");
    assert_rejected(&missing, "services[0].slos[2]", "missing field `objective`");
}

#[test]
fn request_slis_belong_to_http_services() {
    for sli in [SliKind::RequestSuccess, SliKind::RequestLatency] {
        let threshold = sli.needs_threshold().then(|| Span::millis(200));
        let tcp = with_slos(vec![slo("req", sli, threshold)]);
        assert_invalid(
            &tcp,
            "services[0].slos[0].sli",
            "only a `protocol: http` service",
        );
        let mut http = with_slos(vec![slo("req", sli, threshold)]);
        http.services[0].protocol = crate::Protocol::Http;
        let yaml = serde_yaml::to_string(&http).unwrap();
        let parsed = parse_config(&yaml).expect("valid on an http service");
        assert_eq!(parsed.services[0].slos[0].sli, sli);
        assert_eq!(serde_yaml::to_string(&sli).unwrap().trim(), sli.as_str());
    }
    let mut http = with_slos(vec![slo("lat", SliKind::RequestLatency, None)]);
    http.services[0].protocol = crate::Protocol::Http;
    let yaml = serde_yaml::to_string(&http).unwrap();
    assert!(parse_config(&yaml)
        .unwrap_err()
        .to_string()
        .contains("needs a threshold"));
    assert_eq!(SliKind::RequestSuccess.as_str(), "request_success");
    assert_eq!(SliKind::RequestLatency.as_str(), "request_latency");
}
