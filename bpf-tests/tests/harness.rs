//! Self-tests of the harness pieces that need no agent: cgroup guard, backends, the python
//! client, netns, admin HTTP. If these fail, the routing tests' verdicts mean nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use sockmesh_bpf_tests::{
    http_get, require_root, BackendMode, Cgroup2, ConnectClient, Netns, TcpBackendSet,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn cgroup_guard_runs_children_inside_and_removes_itself() {
    require_root();
    let cg = Cgroup2::create("harness-cg").unwrap();
    let path = cg.path().to_path_buf();
    assert!(path.starts_with(sockmesh_bpf_tests::cgroup2_mount().unwrap()));
    assert_ne!(path, sockmesh_bpf_tests::cgroup2_mount().unwrap());

    let mut child = cg.command("sleep").arg("30").spawn().unwrap();
    let pid = child.id() as i32;
    assert_eq!(cg.procs().unwrap(), vec![pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(own.contains(name), "child's /proc/pid/cgroup: {own}");

    drop(cg);
    assert!(!path.exists(), "cgroup {} still exists", path.display());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "child was not killed");
}

#[test]
fn backends_identify_themselves_and_count_accepts() {
    require_root();
    let addrs = [addr("127.0.0.2:18100"), addr("127.0.0.3:18100")];
    let set = TcpBackendSet::start(&addrs, BackendMode::Identify).unwrap();
    let cg = Cgroup2::create("harness-client").unwrap();
    for (i, a) in addrs.iter().enumerate() {
        let report = ConnectClient::new(*a, 5).run(Some(&cg), None).unwrap();
        report.assert_all_ok("direct connects");
        for r in &report.results {
            assert_eq!(r.backend.as_deref(), Some(a.to_string().as_str()));
            assert_eq!(r.peer.as_deref(), Some(a.to_string().as_str()));
        }
        assert_eq!(set.backends()[i].accepts(), 5);
    }
    assert_eq!(set.total_accepts(), 10);

    // Bound source addresses are callers of their own; they must work on loopback.
    let report = ConnectClient::new(addrs[0], 4)
        .sources(["127.0.1.1".parse().unwrap(), "127.0.2.1".parse().unwrap()])
        .run(Some(&cg), None)
        .unwrap();
    report.assert_all_ok("bound sources");
    assert_eq!(report.results[1].src.as_deref(), Some("127.0.2.1"));

    // curl, the other stock client, sees the same identity.
    let out = cg
        .command("curl")
        .args(["-sS", "--max-time", "5", "http://127.0.0.3:18100/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "127.0.0.3:18100\n");
}

#[test]
fn client_reports_refused_connects_with_errno() {
    require_root();
    // 127.100.99.1:18109 is loopback and nothing listens there.
    let report = ConnectClient::new(addr("127.100.99.1:18109"), 3)
        .run(None, None)
        .unwrap();
    assert_eq!(report.failures().len(), 3);
    for r in &report.results {
        assert_eq!(r.errno, Some(libc::ECONNREFUSED), "{r:?}");
    }
}

#[test]
fn echo_backend_names_itself_then_echoes() {
    require_root();
    let a = addr("127.0.0.5:18101");
    let set = TcpBackendSet::start(&[a], BackendMode::Echo).unwrap();
    let mut stream = TcpStream::connect(a).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "127.0.0.5:18101\n");
    stream.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(set.backends()[0].open_connections(), 1);
}

#[test]
fn netns_backends_and_client_over_ipv6() {
    require_root();
    let ns = Netns::create("harness-ns").unwrap();
    ns.add_addr("lo", "fd00::2/64").unwrap();
    let a = addr("[fd00::2]:18102");
    let set = TcpBackendSet::start_in_netns(&ns, &[a], BackendMode::Identify).unwrap();
    let cg = Cgroup2::create("harness-ns").unwrap();
    let report = ConnectClient::new(a, 3).run(Some(&cg), Some(&ns)).unwrap();
    report.assert_all_ok("IPv6 in netns");
    assert_eq!(
        report.results[0].backend.as_deref(),
        Some("[fd00::2]:18102")
    );
    assert_eq!(report.results[0].peer.as_deref(), Some("[fd00::2]:18102"));
    assert_eq!(set.total_accepts(), 3);
    // The host namespace has no fd00:: address: the netns really is separate.
    assert!(TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_err());
    let name = ns.name().to_string();
    drop(ns);
    assert!(!std::path::Path::new("/run/netns").join(name).exists());
}

#[test]
fn admin_http_get_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // Read the whole request head: a client may write it in more than one piece, and
        // closing with unread bytes would reset the connection under the client's read.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed before the end of its request head");
            head.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8_lossy(&head).to_string();
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
            .unwrap();
        req
    });
    let r = http_get(&sock, "/status", Duration::from_secs(5)).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    assert!(server
        .join()
        .unwrap()
        .starts_with("GET /status HTTP/1.1\r\n"));
}
