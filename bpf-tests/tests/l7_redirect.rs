//! The L7 redirect's kernel half (issue 19), with the test playing the node's proxy: it
//! listens on 127.0.0.1 and [::1] (ephemeral ports) and writes that listener into the pinned
//! `SM_PROXY` itself, over the agent's own listeners (the agent runs `--proxy external`, so
//! it binds and publishes listeners but starts no proxy; the test waits for that entry
//! first, so the agent never overwrites the test's). A client in a workload cgroup that
//! dials an http service's VIP lands on the test's listener, never on the service's
//! backends; `sockmesh_proxy::origin::KernelOrigins` answers, for the accepted connection,
//! the VIP, the service id the agent gave it and the caller; the client's getpeername() is
//! still the VIP; the origin entry is gone once the client closed. A tcp service of the same
//! config still goes straight to its backend. Without a listener (SM_PROXY zeroed, or no
//! address of the dialed family) an http VIP is refused at once. IPv4, native IPv6 (VIP
//! `::1`) and a v4-mapped dial from an AF_INET6 socket.
//!
//! Ports 18260-18269, VIPs 127.100.17.x and [::1]:18265.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use serde_json::Value;
use sockmesh_bpf_tests::kernel_tables::{service_entry, wait_active_connections};
use sockmesh_bpf_tests::pressure_fill::map_pin;
use sockmesh_bpf_tests::route_mesh::{route_mesh, RouteBackend, RouteService, RouteWorkload};
use sockmesh_bpf_tests::{
    sum_metric, wait_workloads, BackendMode, Cgroup2, ConnectClient, TcpBackendSet, TestBed,
};
use sockmesh_common::{
    ProxyOrigin, ProxyTarget, FAMILY_INET, FAMILY_INET6, PROXY_MAP, PROXY_ORIGINS_MAP,
    SERVICE_HTTP, SERVICE_SAME_NODE,
};
use sockmesh_proxy::origin::{KernelOrigins, Origins};

const HTTP_VIP: &str = "127.100.17.1:18261";
const HTTP_BACKEND: &str = "127.0.0.1:18262";
const TCP_VIP: &str = "127.100.17.2:18263";
const TCP_BACKEND: &str = "127.0.0.1:18264";
const HTTP_VIP6: &str = "[::1]:18265";
const HTTP_BACKEND6: &str = "[::1]:18266";
/// How long anything the kernel does for one connection may take to show: generous, so
/// only a step that never happens fails.
const WAIT: Duration = Duration::from_secs(20);

/// Connects to argv[1] (AF_INET6 when it has a ':'), prints its own and its peer's address
/// as JSON, then waits for a line on stdin, closes and prints `closed`.
const HOLD_PY: &str = r#"
import json, socket, sys
host, port = sys.argv[1].rsplit(':', 1)
host = host.strip('[]')
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(5)
def fmt(a):
    return '[%s]:%d' % (a[0], a[1]) if ':' in a[0] else '%s:%d' % (a[0], a[1])
try:
    s.connect((host, int(port)))
    print(json.dumps({'sock': fmt(s.getsockname()), 'peer': fmt(s.getpeername())}), flush=True)
except OSError as e:
    print(json.dumps({'errno': e.errno, 'error': str(e)}), flush=True)
    sys.exit(0)
sys.stdin.readline()
s.close()
print('closed', flush=True)
"#;

/// A client holding one connection open until told to close.
struct HeldClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What the client printed after its connect.
    report: Value,
}

impl HeldClient {
    fn connect(cgroup: &Cgroup2, target: &str) -> HeldClient {
        let mut child = cgroup
            .command("python3")
            .arg("-c")
            .arg(HOLD_PY)
            .arg(target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning python3 (needed by the bpf-tests)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let report: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("client of {target} printed no JSON ({e}): {line:?}"));
        HeldClient {
            child,
            stdin,
            stdout,
            report,
        }
    }

    fn addr(&self, field: &str) -> SocketAddr {
        let s = self.report[field]
            .as_str()
            .unwrap_or_else(|| panic!("client report has no {field}: {}", self.report));
        s.parse().unwrap()
    }

    fn close(mut self) {
        self.stdin.write_all(b"close\n").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "closed");
        assert!(self.child.wait().unwrap().success());
    }
}

/// Accepts the next connection on `listener` (nonblocking), waiting at most [`WAIT`].
fn accept(listener: &TcpListener, what: &str) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: nothing accepted in {WAIT:?}"
                );
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{what}: accept: {e}"),
        }
    }
}

/// An address as the kernel's four network-order words (IPv4 in word 0).
fn words(ip: IpAddr) -> [u32; 4] {
    let w = |o: &[u8]| u32::from_ne_bytes([o[0], o[1], o[2], o[3]]);
    match ip {
        IpAddr::V4(v4) => [w(&v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [w(&o[0..4]), w(&o[4..8]), w(&o[8..12]), w(&o[12..16])]
        }
    }
}

/// The port in `SM_PROXY[0]` (0: no listener published).
fn proxy_port(pins: &std::path::Path) -> u16 {
    let Ok(pin) = map_pin(pins, PROXY_MAP) else {
        return 0;
    };
    let data = MapData::from_pin(&pin).unwrap();
    let map: Array<MapData, ProxyTarget> = Array::try_from(Map::Array(data)).unwrap();
    map.get(&0, 0).map_or(0, |t| t.port)
}

fn set_proxy(pins: &std::path::Path, target: ProxyTarget) {
    let pin = map_pin(pins, PROXY_MAP).unwrap();
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let mut map: Array<MapData, ProxyTarget> = Array::try_from(Map::Array(data)).unwrap();
    map.set(0, target, 0).unwrap();
}

/// What one proxied connection must show.
struct Expect<'a> {
    /// What the client dials (and what getpeername must answer).
    dial: &'a str,
    /// The service's VIP as configured (its kernel entry's key).
    vip: SocketAddr,
    /// The VIP as the origin records it: as dialed.
    origin_vip: IpAddr,
    origin_family: u16,
    listener: &'a TcpListener,
}

#[test]
fn http_vips_land_on_the_proxy_listener_with_their_origin_recorded() {
    // Fails (never skips) without root; TestBed::new checks the agent binary and bpffs.
    sockmesh_bpf_tests::require_root();
    let http_vip: SocketAddr = HTTP_VIP.parse().unwrap();
    let http_vip6: SocketAddr = HTTP_VIP6.parse().unwrap();
    let tcp_vip: SocketAddr = TCP_VIP.parse().unwrap();
    let http_backends: Vec<SocketAddr> = vec![
        HTTP_BACKEND.parse().unwrap(),
        HTTP_BACKEND6.parse().unwrap(),
    ];
    // Listening, so a connect wrongly sent to a backend would be accepted and counted.
    let never = TcpBackendSet::start(&http_backends, BackendMode::Identify).unwrap();
    let tcp_backend =
        TcpBackendSet::start(&[TCP_BACKEND.parse().unwrap()], BackendMode::Identify).unwrap();
    // SM_PROXY has one port for both families: [::1] listens on the IPv4 listener's port.
    let proxy4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let p4 = proxy4.local_addr().unwrap();
    let p6 = SocketAddr::new("::1".parse().unwrap(), p4.port());
    let proxy6 = TcpListener::bind(p6).unwrap_or_else(|e| panic!("binding {p6}: {e}"));
    for l in [&proxy4, &proxy6] {
        l.set_nonblocking(true).unwrap();
    }

    let mut bed = TestBed::new("l7-redirect", "services: []\n").unwrap();
    let caller = bed.cgroup().child("caller").unwrap();
    let caller_path = caller.relative_path().unwrap();
    let limits = "{max_connections: 100}";
    let services = [
        RouteService::new(
            "shop",
            http_vip,
            "round_robin",
            vec![RouteBackend::new(http_backends[0])],
        )
        .with("protocol", "http")
        // Asked for, but never given to an http service: the proxy is the peer.
        .with("same_node", "true")
        .with("limits", limits),
        RouteService::new(
            "shop6",
            http_vip6,
            "round_robin",
            vec![RouteBackend::new(http_backends[1])],
        )
        .with("protocol", "http")
        .with("limits", limits),
        RouteService::new(
            "db",
            tcp_vip,
            "round_robin",
            vec![RouteBackend::new(TCP_BACKEND.parse().unwrap())],
        ),
    ];
    let yaml = route_mesh(&services, &[RouteWorkload::new("caller", &caller_path)]);
    bed.write_config(&yaml).unwrap();
    bed.start_agent_with([
        "--proxy",
        "external",
        "--proxy-listen",
        "127.0.0.1:0,[::1]:0",
    ])
    .unwrap();
    wait_workloads(bed.agent(), &["caller"], WAIT).unwrap();
    let pins = bed.bpffs().path().to_path_buf();
    let deadline = Instant::now() + WAIT;
    while proxy_port(&pins) == 0 {
        assert!(
            Instant::now() < deadline,
            "the agent never published its proxy listeners in SM_PROXY\n{}",
            bed.agent().log_tail(40)
        );
        thread::sleep(Duration::from_millis(50));
    }
    let entry = |vip| {
        service_entry(&pins, vip)
            .unwrap()
            .unwrap_or_else(|| panic!("no kernel entry for {vip}"))
    };
    for vip in [http_vip, http_vip6] {
        let e = entry(vip);
        assert_ne!(e.flags & SERVICE_HTTP, 0, "{vip}: {e:?}");
        assert_eq!(e.flags & SERVICE_SAME_NODE, 0, "{vip}: {e:?}");
    }
    assert_eq!(entry(tcp_vip).flags & SERVICE_HTTP, 0);

    let target = ProxyTarget {
        addr4: words(p4.ip())[0],
        port: p4.port(),
        _pad: 0,
        addr6: words(p6.ip()),
    };
    set_proxy(&pins, target);
    let origins = KernelOrigins::open(&map_pin(&pins, PROXY_ORIGINS_MAP).unwrap())
        .expect("opening the pinned SM_PROXY_ORIGINS with the proxy's reader");
    let caller_id = caller.id().unwrap();

    let mapped: IpAddr = "::ffff:127.100.17.1".parse().unwrap();
    let cases = [
        Expect {
            dial: HTTP_VIP,
            vip: http_vip,
            origin_vip: http_vip.ip(),
            origin_family: FAMILY_INET,
            listener: &proxy4,
        },
        Expect {
            dial: "[::ffff:127.100.17.1]:18261",
            vip: http_vip,
            origin_vip: mapped,
            origin_family: FAMILY_INET6,
            listener: &proxy4,
        },
        Expect {
            dial: HTTP_VIP6,
            vip: http_vip6,
            origin_vip: http_vip6.ip(),
            origin_family: FAMILY_INET6,
            listener: &proxy6,
        },
    ];
    for case in &cases {
        let what = format!("dial {}", case.dial);
        let client = HeldClient::connect(&caller, case.dial);
        assert!(
            client.report.get("errno").is_none(),
            "{what}: {}",
            client.report
        );
        let accepted = accept(case.listener, &what);
        let (peer, local) = (
            accepted.peer_addr().unwrap(),
            accepted.local_addr().unwrap(),
        );
        let sock = client.addr("sock");
        assert_eq!(
            (peer.ip().to_canonical(), peer.port()),
            (sock.ip().to_canonical(), sock.port()),
            "{what}: the accepted connection is the client's"
        );
        assert_eq!(
            client.addr("peer"),
            case.dial.parse::<SocketAddr>().unwrap(),
            "{what}: getpeername answers the VIP as dialed"
        );
        let origin = origins
            .lookup(peer, local)
            .unwrap_or_else(|| panic!("{what}: no origin for peer {peer} local {local}"));
        let want = ProxyOrigin {
            vip: words(case.origin_vip),
            vip_port: case.vip.port(),
            family: case.origin_family,
            service_id: entry(case.vip).id,
            workload: 1,
            _pad: 0,
            cgroup_id: caller_id,
        };
        assert_eq!(origin, want, "{what}");
        wait_active_connections(&pins, case.vip, 1).unwrap();

        client.close();
        drop(accepted);
        let deadline = Instant::now() + WAIT;
        while origins.lookup(peer, local).is_some() {
            assert!(
                Instant::now() < deadline,
                "{what}: origin still there {WAIT:?} after the client closed"
            );
            thread::sleep(Duration::from_millis(10));
        }
        // The admission unit taken at connect came back at close.
        wait_active_connections(&pins, case.vip, 0).unwrap();
        eprintln!("{what}: proxied, origin {want:?}, removed at close");
    }
    assert_eq!(
        never.total_accepts(),
        0,
        "an http service's backend was dialed"
    );

    // The tcp service of the same config: straight to its backend, VIP as peer.
    let report = ConnectClient::new(tcp_vip, 5)
        .run(Some(&caller), None)
        .unwrap();
    report.assert_all_ok("tcp service beside http ones");
    assert!(report
        .results
        .iter()
        .all(|r| r.backend.as_deref() == Some(TCP_BACKEND) && r.peer.as_deref() == Some(TCP_VIP)));
    assert_eq!(tcp_backend.total_accepts(), 5);
    // Proxied sockets send no connection events (the agent would put them on a backend):
    // by the time the tcp service's later events are counted, the http services have none.
    let text = bed
        .agent()
        .wait_metrics("the tcp service's connects", WAIT, |t| {
            sum_metric(t, CONNECTIONS, &[("service", "db")]) >= 5.0
        })
        .unwrap();
    for name in ["shop", "shop6"] {
        assert_eq!(
            sum_metric(&text, CONNECTIONS, &[("service", name)]),
            0.0,
            "{name}: proxied connects were reported as connection events"
        );
    }

    // An IPv4 listener only: IPv6 VIPs are refused, IPv4 ones (plain or mapped) still land.
    set_proxy(
        &pins,
        ProxyTarget {
            addr6: [0; 4],
            ..target
        },
    );
    refused(&caller, http_vip6, "no IPv6 listener");
    let client = HeldClient::connect(&caller, "[::ffff:127.100.17.1]:18261");
    assert!(client.report.get("errno").is_none(), "{}", client.report);
    drop(accept(&proxy4, "mapped dial, IPv4 listener only"));
    client.close();

    // No proxy: every http VIP refused at once, nothing reaches any listener.
    set_proxy(&pins, ProxyTarget::default());
    for vip in [
        http_vip,
        http_vip6,
        "[::ffff:127.100.17.1]:18261".parse().unwrap(),
    ] {
        refused(&caller, vip, "SM_PROXY zeroed");
    }
    for (l, what) in [(&proxy4, "v4"), (&proxy6, "v6")] {
        match l.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("{what} listener got a connection after the refusals: {other:?}"),
        }
    }
    assert_eq!(never.total_accepts(), 0);
    for vip in [http_vip, http_vip6] {
        wait_active_connections(&pins, vip, 0).unwrap();
    }
    // The refusals are the mesh's own, counted as such: 3 + 3 for shop6, 3 + 3 for shop.
    let no_backend = |t: &str, name: &str| {
        sum_metric(
            t,
            CONNECTIONS,
            &[("service", name), ("result", "no_backend")],
        )
    };
    let text = bed
        .agent()
        .wait_metrics("the refusals counted", WAIT, |t| {
            no_backend(t, "shop") >= 6.0 && no_backend(t, "shop6") >= 6.0
        })
        .unwrap();
    assert_eq!(no_backend(&text, "shop") + no_backend(&text, "shop6"), 12.0);
    for name in ["shop", "shop6"] {
        assert_eq!(
            sum_metric(&text, CONNECTIONS, &[("service", name)]),
            6.0,
            "{name}: only the refusals"
        );
    }
}

const CONNECTIONS: &str = "sockmesh_connections_total";

/// Three connects to `vip` from the caller: each refused (ECONNREFUSED, the hook's answer;
/// a connect sent nowhere would end in the client's 5 s timeout instead, not in this errno).
fn refused(caller: &Cgroup2, vip: SocketAddr, why: &str) {
    let report = ConnectClient::new(vip, 3)
        .timeout(Duration::from_secs(5))
        .run(Some(caller), None)
        .unwrap();
    for r in &report.results {
        assert_eq!(r.errno, Some(libc::ECONNREFUSED), "{why}: {vip}: {r:?}");
    }
    eprintln!("{why}: {vip}: 3 refusals in {} ms", report.elapsed_ms);
}
