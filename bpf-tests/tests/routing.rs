//! A routed socket's getpeername() is the VIP; a process outside the attached
//! cgroup is not routed (ECONNREFUSED: nothing listens on a VIP); destinations that are not
//! a VIP:port pass untouched.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sockmesh_bpf_tests::{
    loopback_addrs, BackendMode, ConnectClient, ServiceYaml, TcpBackendSet, TestBed,
};

#[test]
fn getpeername_on_routed_socket_returns_vip_and_port() {
    let backends = loopback_addrs(2, 2, 18120);
    let vip: SocketAddr = "127.100.2.1:18121".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("peer", vip, "weighted_random").backends(&backends, &[1, 1])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let bed = TestBed::start("getpeername", &yaml).unwrap();

    let report = ConnectClient::new(vip, 100)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("routed connects");
    for r in &report.results {
        assert_eq!(r.peer.as_deref(), Some("127.100.2.1:18121"), "{r:?}");
        let b = r.backend.as_deref().unwrap();
        assert!(
            backends.iter().any(|a| a.to_string() == b),
            "unknown backend {b}"
        );
    }
    assert_eq!(set.total_accepts(), 100);

    // curl, unmodified, reaches a backend through the VIP too.
    for _ in 0..10 {
        let out = bed
            .cgroup()
            .command("curl")
            .args(["-sS", "--max-time", "5", "http://127.100.2.1:18121/"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            backends.iter().any(|a| a.to_string() == body),
            "curl got {body:?}"
        );
    }
    assert_eq!(set.total_accepts(), 110);
}

#[test]
fn process_outside_cgroup_is_not_routed() {
    let backends = loopback_addrs(2, 2, 18123);
    let vip: SocketAddr = "127.100.2.2:18124".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("outside", vip, "round_robin").backends(&backends, &[1, 1])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let bed = TestBed::start("outside", &yaml).unwrap();

    // Prove the VIP is live for the cgroup first, so the refusals below mean "not routed"
    // and not "agent broken".
    ConnectClient::new(vip, 4)
        .run(Some(bed.cgroup()), None)
        .unwrap()
        .assert_all_ok("inside the cgroup");
    assert_eq!(set.total_accepts(), 4);

    // Another process outside the cgroup (the python client, no cgroup given).
    let outside = ConnectClient::new(vip, 5).run(None, None).unwrap();
    for r in &outside.results {
        assert_eq!(r.errno, Some(libc::ECONNREFUSED), "outside process: {r:?}");
    }
    // And the test process itself, also outside.
    let err = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(
        set.total_accepts(),
        4,
        "a connect from outside reached a backend"
    );
}

#[test]
fn non_vip_destinations_from_inside_pass_untouched() {
    let backends = loopback_addrs(2, 2, 18125);
    let vip: SocketAddr = "127.100.2.3:18126".parse().unwrap();
    let other: SocketAddr = "127.0.0.9:18127".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("untouched", vip, "weighted_random").backends(&backends, &[1, 1])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let unrelated = TcpBackendSet::start(&[other], BackendMode::Identify).unwrap();
    let bed = TestBed::start("non-vip", &yaml).unwrap();

    // A listener no service mentions.
    let report = ConnectClient::new(other, 20)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("unrelated listener");
    for r in &report.results {
        assert_eq!(r.backend.as_deref(), Some("127.0.0.9:18127"));
        assert_eq!(r.peer.as_deref(), Some("127.0.0.9:18127"));
    }
    assert_eq!(unrelated.total_accepts(), 20);

    // A backend dialed directly stays that backend: no rewrite of non-VIP destinations.
    let report = ConnectClient::new(backends[1], 20)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("direct to a backend");
    assert_eq!(set.accepts(), vec![0, 20]);
    assert!(report
        .results
        .iter()
        .all(|r| r.peer.as_deref() == Some("127.0.0.3:18125")));

    // The VIP's address on a port that is not the service's is not a VIP:port.
    let wrong_port: SocketAddr = "127.100.2.3:18128".parse().unwrap();
    let report = ConnectClient::new(wrong_port, 3)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    for r in &report.results {
        assert_eq!(
            r.errno,
            Some(libc::ECONNREFUSED),
            "VIP ip, other port: {r:?}"
        );
    }
    assert_eq!(set.accepts(), vec![0, 20]);
}
