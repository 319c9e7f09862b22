//! Configs that must parse, and what they parse to.

use super::*;

/// The example from the schema docs, verbatim.
const EXAMPLE: &str = r#"
services:
  - name: web
    vip: 127.100.0.1        # IPv4 or IPv6 literal
    port: 80
    lb: weighted_random
    backends:
      - addr: 127.0.0.2:8081
        weight: 1
      - addr: 127.0.0.3:8081
        weight: 3
  - name: web6
    vip: "fd00::100"
    port: 80
    lb: maglev
    backends:
      - addr: "[fd00::2]:8081"
        weight: 1
"#;

#[test]
fn example_parses_to_the_expected_model() {
    let cfg = parse_config(EXAMPLE).unwrap();
    let mut web6 = service("web6", "fd00::100", 80, &[("[fd00::2]:8081", 1)]);
    web6.lb = LbPolicy::Maglev;
    let expected = mesh(vec![
        service(
            "web",
            "127.100.0.1",
            80,
            &[("127.0.0.2:8081", 1), ("127.0.0.3:8081", 3)],
        ),
        web6,
    ]);
    assert_eq!(cfg, expected);
}

#[test]
fn omitted_fields_take_their_defaults() {
    let cfg = parse_config(ONE_SERVICE).unwrap();
    assert_eq!(cfg.version, 1);
    assert_eq!(cfg.services[0].lb, LbPolicy::WeightedRandom);
    assert!(cfg.services[0].backends.iter().all(|b| b.weight == 1));
    assert_eq!(LbPolicy::default(), LbPolicy::WeightedRandom);
}

#[test]
fn explicit_version_1_is_accepted() {
    let cfg = parse_config(&format!("version: 1\n{ONE_SERVICE}")).unwrap();
    assert_eq!(cfg.version, 1);
}

#[test]
fn ipv6_service_parses_quoted_and_unquoted() {
    let yaml = ONE_SERVICE
        .replace("127.100.0.1", "fd00::100")
        .replace("127.0.0.2:8081", "\"[fd00::2]:8081\"")
        .replace("127.0.0.3:8081", "'[::1]:8081'");
    let cfg = parse_config(&yaml).unwrap();
    let service = &cfg.services[0];
    assert!(service.vip.is_ipv6());
    assert_eq!(service.vip.to_string(), "fd00::100");
    assert_eq!(service.backends[0].addr.to_string(), "[fd00::2]:8081");
    assert_eq!(service.backends[1].addr.to_string(), "[::1]:8081");
}

#[test]
fn empty_mesh_is_valid_when_said_explicitly() {
    assert_eq!(parse_config("services: []\n").unwrap(), mesh(vec![]));
}

#[test]
fn one_vip_may_serve_several_ports() {
    let cfg = mesh(vec![
        service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]),
        service("web-tls", "127.100.0.1", 443, &[("127.0.0.2:8443", 1)]),
    ]);
    cfg.validate().unwrap();
}

#[test]
fn zero_weight_backend_is_allowed_beside_a_weighted_one() {
    let yaml = ONE_SERVICE.replace(
        "      - addr: 127.0.0.3:8081\n",
        "      - addr: 127.0.0.3:8081\n        weight: 0\n",
    );
    let cfg = parse_config(&yaml).unwrap();
    assert_eq!(cfg.services[0].backends[1].weight, 0);
}

#[test]
fn lb_names_match_between_serde_and_as_str() {
    for &lb in LbPolicy::ALL {
        let yaml = serde_yaml::to_string(&lb).unwrap();
        assert_eq!(yaml.trim(), lb.as_str());
        assert_eq!(lb.to_string(), lb.as_str());
        let parsed = parse_config(
            &ONE_SERVICE.replace("port: 80", &format!("port: 80\n    lb: {}", lb.as_str())),
        )
        .unwrap();
        assert_eq!(parsed.services[0].lb, lb);
    }
}

#[test]
fn fingerprint_is_stable_across_runs_and_builds() {
    // A pinned value: if this changes, every deployed agent sees a "new" config after an
    // upgrade. Change it only together with a deliberate change to the serialization.
    let fingerprint = parse_config(EXAMPLE).unwrap().fingerprint();
    assert_eq!(fingerprint.len(), 16);
    assert!(fingerprint
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(fingerprint, PINNED_EXAMPLE_FINGERPRINT);
}

/// Cross-checked outside Rust: FNV-1a-64 of `sockmesh config v`, the version as 4
/// little-endian bytes, then for each service `s` and the 8 little-endian bytes of the
/// FNV-1a-64 of its compact JSON (`{"name":"web","vip":"127.100.0.1","port":80,...}`).
const PINNED_EXAMPLE_FINGERPRINT: &str = "28010e0cec013ed8";

#[test]
fn fingerprint_ignores_formatting_and_explicit_defaults() {
    let plain = parse_config(ONE_SERVICE).unwrap();
    let spelled_out = parse_config(
        "# same mesh, every default written out\nversion: 1\nservices:\n- {name: web, vip: 127.100.0.1, port: 80, lb: weighted_random, backends: [{addr: '127.0.0.2:8081', weight: 1}, {addr: '127.0.0.3:8081', weight: 1}]}\n",
    )
    .unwrap();
    assert_eq!(plain, spelled_out);
    assert_eq!(plain.fingerprint(), spelled_out.fingerprint());
}

#[test]
fn fingerprint_changes_with_content() {
    let base = parse_config(ONE_SERVICE).unwrap();
    let mut reweighted = base.clone();
    reweighted.services[0].backends[0].weight = 2;
    let mut rebalanced = base.clone();
    rebalanced.services[0].lb = LbPolicy::Maglev;
    let mut reordered = base.clone();
    reordered.services[0].backends.reverse();
    for changed in [reweighted, rebalanced, reordered] {
        assert_ne!(base.fingerprint(), changed.fingerprint(), "{changed:?}");
    }
}
