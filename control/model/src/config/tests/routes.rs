//! Caller routes, backend labels and zones, locality: the YAML shape, defaults, the unchanged
//! fingerprint of configs without them, and one rejection per rule with its field path.

use super::*;
use crate::{Fallback, LocalitySpec, SplitSpec, MAX_ROUTES_PER_SERVICE};

const WITH_ROUTES: &str = "
services:
  - name: shop
    vip: 127.100.0.1
    port: 80
    backends:
      - addr: 127.0.0.2:8081
        labels: {track: stable}
        zone: zone-a
      - addr: 127.0.0.3:8081
        labels: {track: stable}
        zone: zone-b
      - addr: 127.0.0.4:8081
        labels: {track: canary, tier: 1}
        zone: zone-a
    routes:
      - match: {lane: canary}
        to: {track: canary}
        fallback: none
      - match: {lane: beta}
        weight_split:
          - {to: {track: stable}, percent: 90}
          - {to: {track: canary}, percent: 10}
      - to: {track: stable}
    locality: {min_healthy_percent: 60}
workloads:
  - name: front
    cgroup: demo/front
    labels: {lane: canary}
    zone: zone-a
";

fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn routes_zones_and_locality_parse_with_their_defaults() {
    let cfg = parse_config(WITH_ROUTES).unwrap();
    let s = &cfg.services[0];
    assert_eq!(s.backends[0].labels, labels(&[("track", "stable")]));
    assert_eq!(s.backends[2].labels["tier"], "1", "numbers are label text");
    assert_eq!(s.backends[1].zone.as_deref(), Some("zone-b"));
    assert_eq!(s.routes.len(), 3);
    let canary = &s.routes[0];
    assert_eq!(canary.matches, labels(&[("lane", "canary")]));
    assert_eq!(canary.to, Some(labels(&[("track", "canary")])));
    assert_eq!(canary.fallback, Fallback::None);
    let beta = &s.routes[1];
    assert_eq!(beta.to, None);
    assert_eq!(
        beta.weight_split,
        [
            SplitSpec {
                to: labels(&[("track", "stable")]),
                percent: 90
            },
            SplitSpec {
                to: labels(&[("track", "canary")]),
                percent: 10
            },
        ]
    );
    assert_eq!(beta.fallback, Fallback::All, "the default");
    assert!(s.routes[2].matches.is_empty(), "no match: every caller");
    assert_eq!(
        s.locality,
        Some(LocalitySpec {
            prefer_zone: true,
            min_healthy_percent: 60
        })
    );
    assert_eq!(cfg.workloads[0].zone.as_deref(), Some("zone-a"));
    // Matching and selection.
    assert!(canary.matches_caller(&labels(&[("lane", "canary"), ("team", "x")])));
    assert!(!canary.matches_caller(&labels(&[("lane", "beta")])));
    assert!(s.routes[2].matches_caller(&labels(&[])));
    assert!(s.backends[2].selected_by(&labels(&[("track", "canary")])));
    assert!(!s.backends[0].selected_by(&labels(&[("track", "canary")])));
    assert!(s.backends[0].selected_by(&labels(&[])));
    assert_eq!(beta.parts().len(), 2);
    assert_eq!(s.routes[2].parts()[0].1, 100);
}

#[test]
fn routes_round_trip_through_yaml_and_json_with_match_spelled_match() {
    let cfg = parse_config(WITH_ROUTES).unwrap();
    let yaml = serde_yaml::to_string(&cfg).unwrap();
    assert!(yaml.contains("match:"), "{yaml}");
    assert_eq!(parse_config(&yaml).unwrap(), cfg);
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<MeshConfig>(&json).unwrap(), cfg);
}

#[test]
fn configs_without_routes_labels_or_zones_keep_their_fingerprint() {
    let plain = parse_config(ONE_SERVICE).unwrap();
    let explicit = ONE_SERVICE.replace(
        "      - addr: 127.0.0.2:8081\n",
        "      - addr: 127.0.0.2:8081\n        labels: {}\n",
    ) + "    routes: []\n";
    assert_eq!(
        parse_config(&explicit).unwrap().fingerprint(),
        plain.fingerprint()
    );
    // The pre-routes value of this config's fingerprint, pinned.
    let json = serde_json::to_string(&plain).unwrap();
    assert!(!json.contains("routes") && !json.contains("zone") && !json.contains("labels"));
    let with_zone = ONE_SERVICE.replace(
        "      - addr: 127.0.0.3:8081\n",
        "      - addr: 127.0.0.3:8081\n        zone: a\n",
    );
    assert_ne!(
        parse_config(&with_zone).unwrap().fingerprint(),
        plain.fingerprint()
    );
}

#[test]
fn a_route_needs_exactly_one_of_to_and_weight_split() {
    let both = WITH_ROUTES.replace(
        "        to: {track: canary}\n        fallback: none\n",
        "        to: {track: canary}\n        weight_split: [{to: {}, percent: 100}]\n",
    );
    assert_rejected(
        &both,
        "services[0].routes[0]",
        "either `to` or `weight_split`, not both",
    );
    let neither = WITH_ROUTES.replace("        to: {track: canary}\n", "");
    assert_rejected(&neither, "services[0].routes[0]", "needs `to`");
}

#[test]
fn split_percents_must_sum_to_100_and_each_be_at_most_100() {
    let short = WITH_ROUTES.replace("percent: 10}", "percent: 5}");
    assert_rejected(
        &short,
        "services[0].routes[1].weight_split",
        "percents sum to 95, not 100",
    );
    let over = WITH_ROUTES
        .replace("percent: 90}", "percent: 110}")
        .replace("percent: 10}", "percent: 0}");
    assert_rejected(
        &over,
        "services[0].routes[1].weight_split[0].percent",
        "percent 110 is above 100",
    );
    let zero = WITH_ROUTES
        .replace("percent: 90}", "percent: 100}")
        .replace("percent: 10}", "percent: 0}");
    assert!(
        parse_config(&zero).is_ok(),
        "a 0 % subset is allowed (staged rollout)"
    );
}

#[test]
fn selectors_and_matches_follow_the_label_rules() {
    let bad_key = WITH_ROUTES.replace("match: {lane: canary}", "match: {\"la ne\": canary}");
    assert_rejected(
        &bad_key,
        "services[0].routes[0].match",
        "invalid label key \"la ne\"",
    );
    let long = "v".repeat(64);
    let long_value =
        WITH_ROUTES.replace("to: {track: canary}\n", &format!("to: {{track: {long}}}\n"));
    assert_rejected(
        &long_value,
        "services[0].routes[0].to.track",
        "label value is 64 characters",
    );
    let split_key = WITH_ROUTES.replace(
        "{to: {track: stable}, percent: 90}",
        "{to: {\"\": x}, percent: 90}",
    );
    assert_rejected(
        &split_key,
        "services[0].routes[1].weight_split[0].to",
        "label key must not be empty",
    );
    let dup = WITH_ROUTES.replace("match: {lane: canary}", "match: {lane: canary, lane: beta}");
    assert_rejected(
        &dup,
        "services[0].routes[0].match",
        "duplicate label key \"lane\"",
    );
}

#[test]
fn backend_labels_and_zones_are_checked() {
    let bad_label = WITH_ROUTES.replace("labels: {track: canary, tier: 1}", "labels: {\"t?\": x}");
    assert_rejected(
        &bad_label,
        "services[0].backends[2].labels",
        "invalid label key",
    );
    let bad_zone = WITH_ROUTES.replace("zone: zone-b", "zone: \"zone b\"");
    assert_rejected(
        &bad_zone,
        "services[0].backends[1].zone",
        "invalid zone \"zone b\"",
    );
    let empty_zone = WITH_ROUTES.replace("zone: zone-b", "zone: \"\"");
    assert_rejected(
        &empty_zone,
        "services[0].backends[1].zone",
        "zone must not be empty",
    );
    let long_zone = WITH_ROUTES.replace(
        "labels: {lane: canary}\n    zone: zone-a",
        &format!("labels: {{lane: canary}}\n    zone: {}", "z".repeat(64)),
    );
    assert_rejected(&long_zone, "workloads[0].zone", "more than the limit of 63");
    assert!(crate::check_zone("europe-west1-b").is_ok());
    assert!(crate::check_zone("us/east").is_err());
}

#[test]
fn unknown_route_fields_and_fallbacks_are_rejected_by_name() {
    let typo = WITH_ROUTES.replace("        fallback: none\n", "        falback: none\n");
    assert_rejected(
        &typo,
        "services[0].routes[0].falback",
        "unknown field `falback`",
    );
    let bad = WITH_ROUTES.replace("fallback: none", "fallback: some");
    assert_rejected(
        &bad,
        "services[0].routes[0].fallback",
        "unknown variant `some`",
    );
    let loc = WITH_ROUTES.replace("locality: {min_healthy_percent: 60}", "locality: {zone: a}");
    assert_rejected(&loc, "services[0].locality.zone", "unknown field `zone`");
}

#[test]
fn locality_threshold_is_a_percent() {
    let yaml = WITH_ROUTES.replace("min_healthy_percent: 60", "min_healthy_percent: 101");
    assert_rejected(
        &yaml,
        "services[0].locality.min_healthy_percent",
        "min_healthy_percent 101 is above 100",
    );
}

#[test]
fn route_count_is_limited() {
    let mut cfg = parse_config(WITH_ROUTES).unwrap();
    let route = cfg.services[0].routes[2].clone();
    cfg.services[0].routes = vec![route; MAX_ROUTES_PER_SERVICE + 1];
    assert_invalid(
        &cfg,
        "services[0].routes",
        "17 routes, more than the limit of 16",
    );
    cfg.services[0].routes.pop();
    assert!(cfg.validate().is_ok());
}

#[test]
fn a_selector_naming_no_backend_is_accepted() {
    // Pods come and go with a dynamic source: an empty subset is a moment, not an error;
    // `fallback` decides what its callers get.
    let yaml = WITH_ROUTES.replace("to: {track: canary}\n", "to: {track: nightly}\n");
    assert!(parse_config(&yaml).is_ok());
}
