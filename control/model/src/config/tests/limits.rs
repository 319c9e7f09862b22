//! Schema version and size limits, each tested at the limit and one past it.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    CONFIG_VERSION, MAX_BACKENDS_PER_SERVICE, MAX_BACKEND_PAIRS, MAX_SERVICES, MAX_WEIGHT,
};

#[test]
fn unsupported_version() {
    for version in [0, 2, u32::MAX] {
        let mut cfg = mesh(vec![]);
        cfg.version = version;
        assert_invalid(
            &cfg,
            "version",
            &format!("unsupported version {version} (this build reads version 1)"),
        );
    }
    assert_rejected(
        &format!("version: 2\n{ONE_SERVICE}"),
        "version",
        "unsupported version 2",
    );
    assert_eq!(CONFIG_VERSION, 1);
}

#[test]
fn backend_count_limit() {
    // 127.0.x.y with y >= 2: distinct loopback backends, none of them the VIP.
    let backend = |i: usize| BackendSpec {
        addr: (
            Ipv4Addr::new(127, 0, (i / 200) as u8, (i % 200 + 2) as u8),
            8081,
        )
            .into(),
        weight: 1,
        labels: Default::default(),
        zone: None,
    };
    let mut cfg = mesh(vec![web_with_backends(vec![])]);
    cfg.services[0].backends = (0..MAX_BACKENDS_PER_SERVICE).map(backend).collect();
    cfg.validate().unwrap();
    cfg.services[0]
        .backends
        .push(backend(MAX_BACKENDS_PER_SERVICE));
    assert_invalid(
        &cfg,
        "services[0].backends",
        "257 backends, more than the limit of 256",
    );
}

/// The mesh-wide (service, backend) budget of the kernel's per-pair tables: a config at it is
/// valid, one backend more is refused at the first service that does not fit.
#[test]
fn backend_pair_limit_is_the_kernels() {
    assert_eq!(MAX_BACKEND_PAIRS, 131_072);
    assert!(MAX_BACKEND_PAIRS < sockmesh_common::MAX_BACKENDS as usize);
    // Services of 256 backends each on 127.x.y.z (distinct per service), VIPs 127.100.a.b.
    let service = |s: usize, n: usize| {
        let mut svc = web_with_backends(vec![]);
        svc.name = format!("s{s}");
        svc.vip = IpAddr::V4(Ipv4Addr::new(
            127,
            100,
            (s / 250) as u8,
            (s % 250 + 1) as u8,
        ));
        svc.backends = (0..n)
            .map(|i| BackendSpec {
                addr: (
                    Ipv4Addr::new(127, 1 + (s / 250) as u8, (s % 250) as u8, i as u8),
                    8081,
                )
                    .into(),
                weight: 1,
                labels: Default::default(),
                zone: None,
            })
            .collect();
        svc
    };
    let full = MAX_BACKEND_PAIRS / MAX_BACKENDS_PER_SERVICE;
    assert_eq!(full * MAX_BACKENDS_PER_SERVICE, MAX_BACKEND_PAIRS);
    let mut cfg = mesh(
        (0..full)
            .map(|s| service(s, MAX_BACKENDS_PER_SERVICE))
            .collect(),
    );
    cfg.validate().unwrap();
    cfg.services.push(service(full, 1));
    assert_invalid(
        &cfg,
        &format!("services[{full}].backends"),
        &format!(
            "services[0..={full}] list 131073 backends together, more than the 131072 (service, \
             backend) pairs the kernel's tables hold (MAX_BACKEND_PAIRS)"
        ),
    );
}

#[test]
fn weight_limit() {
    let mut cfg = mesh(vec![web_with_backends(vec![(
        "127.0.0.2:8081",
        MAX_WEIGHT,
    )])]);
    cfg.validate().unwrap();
    cfg.services[0].backends[0].weight = MAX_WEIGHT + 1;
    assert_invalid(
        &cfg,
        "services[0].backends[0].weight",
        "weight 10001 is above the limit of 10000",
    );
}

#[test]
fn service_count_limit() {
    // Distinct names and VIPs, so only the count can fail.
    let mut services: Vec<ServiceSpec> = (0..MAX_SERVICES)
        .map(|i| {
            let vip = IpAddr::V4(Ipv4Addr::new(127, 100, (i >> 8) as u8, i as u8));
            let mut s = web_with_backends(vec![("127.0.0.2:8081", 1)]);
            s.name = format!("svc-{i}");
            s.vip = vip;
            s
        })
        .collect();
    let mut cfg = mesh(services.clone());
    cfg.validate().unwrap();
    services.push(services[0].clone());
    cfg.services = services;
    assert_invalid(
        &cfg,
        "services",
        "65536 services, more than the limit of 65535",
    );
}

fn web_with_backends(backends: Vec<(&str, u32)>) -> ServiceSpec {
    service("web", "127.100.0.1", 80, &backends)
}
