//! Rejections by the rules of `MeshConfig::validate`, one test per rule.

use super::*;

fn web() -> ServiceSpec {
    service(
        "web",
        "127.100.0.1",
        80,
        &[("127.0.0.2:8081", 1), ("127.0.0.3:8081", 1)],
    )
}

#[test]
fn duplicate_vip_port_across_services() {
    let cfg = mesh(vec![
        web(),
        service("api", "127.100.0.2", 80, &[("127.0.0.4:8081", 1)]),
        service("web-copy", "127.100.0.1", 80, &[("127.0.0.5:8081", 1)]),
    ]);
    assert_invalid(
        &cfg,
        "services[2].port",
        "duplicate VIP 127.100.0.1:80, already used by services[0] (web)",
    );
    assert_eq!(
        cfg.validate().unwrap_err().to_string(),
        "services[2].port: duplicate VIP 127.100.0.1:80, already used by services[0] (web)"
    );
}

#[test]
fn duplicate_vip_port_is_found_through_yaml_too() {
    let yaml = format!(
        "{ONE_SERVICE}  - name: web2\n    vip: 127.100.0.1\n    port: 80\n    backends:\n      - addr: 127.0.0.9:8081\n"
    );
    assert_rejected(&yaml, "services[1].port", "duplicate VIP 127.100.0.1:80");
}

#[test]
fn zero_total_weight() {
    let cfg = mesh(vec![service(
        "web",
        "127.100.0.1",
        80,
        &[("127.0.0.2:8081", 0), ("127.0.0.3:8081", 0)],
    )]);
    assert_invalid(&cfg, "services[0].backends", "total weight is 0");
}

#[test]
fn empty_backends() {
    assert_invalid(
        &mesh(vec![service("web", "127.100.0.1", 80, &[])]),
        "services[0].backends",
        "no backends",
    );
    assert_rejected(
        &ONE_SERVICE
            .replace(
                "      - addr: 127.0.0.2:8081\n      - addr: 127.0.0.3:8081\n",
                "",
            )
            .replace("backends:", "backends: []"),
        "services[0].backends",
        "no backends",
    );
}

#[test]
fn backend_family_must_match_ipv4_vip() {
    let mut cfg = mesh(vec![web()]);
    cfg.services[0].backends[1].addr = "[fd00::3]:8081".parse().unwrap();
    assert_invalid(
        &cfg,
        "services[0].backends[1].addr",
        "IPv6 backend [fd00::3]:8081 for IPv4 VIP 127.100.0.1",
    );
}

#[test]
fn backend_family_must_match_ipv6_vip() {
    let cfg = mesh(vec![service(
        "web6",
        "fd00::100",
        80,
        &[("[fd00::2]:8081", 1), ("127.0.0.2:8081", 1)],
    )]);
    assert_invalid(
        &cfg,
        "services[0].backends[1].addr",
        "cannot change address family",
    );
}

#[test]
fn empty_service_name() {
    let mut cfg = mesh(vec![web()]);
    cfg.services[0].name.clear();
    assert_invalid(&cfg, "services[0].name", "must not be empty");
}

#[test]
fn invalid_service_names() {
    for bad in [
        "Web", "-web", "web-", "web.", "_web", "web_", "we b", "wéb", "web/api", "web:80",
    ] {
        let mut cfg = mesh(vec![web()]);
        cfg.services[0].name = bad.to_owned();
        assert_invalid(
            &cfg,
            "services[0].name",
            &format!("invalid service name {bad:?}"),
        );
    }
    for good in ["w", "7", "web-1", "web.prod", "web_v2", "a-.-_b"] {
        let mut cfg = mesh(vec![web()]);
        cfg.services[0].name = good.to_owned();
        cfg.validate()
            .unwrap_or_else(|e| panic!("{good:?} rejected: {e}"));
    }
}

#[test]
fn service_name_longer_than_63() {
    let mut cfg = mesh(vec![web()]);
    cfg.services[0].name = "a".repeat(crate::MAX_SERVICE_NAME_LEN);
    cfg.validate().unwrap();
    cfg.services[0].name.push('a');
    assert_invalid(
        &cfg,
        "services[0].name",
        "is 64 characters, more than the limit of 63",
    );
}

#[test]
fn duplicate_service_name() {
    let mut other = service("web", "127.100.0.2", 80, &[("127.0.0.4:8081", 1)]);
    other.lb = LbPolicy::RoundRobin;
    assert_invalid(
        &mesh(vec![web(), other]),
        "services[1].name",
        "duplicate service name \"web\", already used by services[0]",
    );
}

#[test]
fn vip_port_zero() {
    let mut cfg = mesh(vec![web()]);
    cfg.services[0].port = 0;
    assert_invalid(&cfg, "services[0].port", "port 0 cannot be a VIP port");
}

#[test]
fn backend_port_zero() {
    let mut cfg = mesh(vec![web()]);
    cfg.services[0].backends[1].addr.set_port(0);
    assert_invalid(
        &cfg,
        "services[0].backends[1].addr",
        "port 0 in backend address 127.0.0.3:0",
    );
}

#[test]
fn duplicate_backend_within_a_service() {
    let cfg = mesh(vec![service(
        "web",
        "127.100.0.1",
        80,
        &[
            ("127.0.0.2:8081", 1),
            ("127.0.0.3:8081", 1),
            ("127.0.0.2:8081", 5),
        ],
    )]);
    assert_invalid(
        &cfg,
        "services[0].backends[2].addr",
        "duplicate backend 127.0.0.2:8081, already listed as backends[0]",
    );
}

#[test]
fn same_backend_in_two_services_is_fine() {
    let cfg = mesh(vec![
        web(),
        service("api", "127.100.0.2", 80, &[("127.0.0.2:8081", 1)]),
    ]);
    cfg.validate().unwrap();
}

#[test]
fn unspecified_vip() {
    for vip in ["0.0.0.0", "::"] {
        let mut cfg = mesh(vec![web()]);
        cfg.services[0].vip = vip.parse().unwrap();
        assert_invalid(
            &cfg,
            "services[0].vip",
            &format!("unspecified address {vip} cannot be a VIP"),
        );
    }
}

#[test]
fn multicast_vip() {
    for vip in ["224.0.0.1", "239.1.2.3", "ff02::1"] {
        let mut cfg = mesh(vec![web()]);
        cfg.services[0].vip = vip.parse().unwrap();
        assert_invalid(
            &cfg,
            "services[0].vip",
            &format!("multicast address {vip} cannot be a VIP"),
        );
    }
}

#[test]
fn broadcast_vip() {
    let mut cfg = mesh(vec![web()]);
    cfg.services[0].vip = "255.255.255.255".parse().unwrap();
    assert_invalid(&cfg, "services[0].vip", "broadcast address");
}

#[test]
fn unspecified_or_multicast_backend() {
    for (addr, kind) in [
        ("0.0.0.0:8081", "unspecified address 0.0.0.0"),
        ("224.0.0.1:8081", "multicast address 224.0.0.1"),
        ("255.255.255.255:8081", "broadcast address 255.255.255.255"),
    ] {
        let mut cfg = mesh(vec![web()]);
        cfg.services[0].backends[0].addr = addr.parse().unwrap();
        assert_invalid(
            &cfg,
            "services[0].backends[0].addr",
            &format!("{kind} cannot be a backend"),
        );
    }
}

#[test]
fn backend_equal_to_own_vip_is_a_loop() {
    let mut cfg = mesh(vec![web()]);
    cfg.services[0].backends[1].addr = "127.100.0.1:80".parse().unwrap();
    assert_invalid(
        &cfg,
        "services[0].backends[1].addr",
        "routing loop: backend 127.100.0.1:80 is this service's own VIP:port",
    );
}

#[test]
fn backend_on_the_vip_address_but_another_port_is_fine() {
    let mut cfg = mesh(vec![web()]);
    cfg.services[0].backends[1].addr = "127.100.0.1:8081".parse().unwrap();
    cfg.validate().unwrap();
}

#[test]
fn backend_equal_to_a_later_services_vip() {
    let cfg = mesh(vec![
        service("web", "127.100.0.1", 80, &[("127.100.0.2:80", 1)]),
        service("api", "127.100.0.2", 80, &[("127.0.0.4:8081", 1)]),
    ]);
    assert_invalid(
        &cfg,
        "services[0].backends[0].addr",
        "is the VIP:port of services[1] (api)",
    );
}
