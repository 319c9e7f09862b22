//! Same-node fast path: with `same_node: true`, a connection whose two ends are
//! sockets under the agent's cgroup moves its bytes socket to socket (sk_msg redirect on the
//! SM_SAME_NODE socket hash) instead of through loopback TCP. A stock python3 peer (client
//! and server in the test cgroup) sends a large randomized transfer in both directions at
//! once, in random write and read sizes, and checks every byte (sha256), orderly close (EOF
//! after the data) and a reset after a partial send (a prefix, then EOF or ECONNRESET). The
//! kernel's counters must say the bytes really took the fast path: redirected bytes equal the
//! bytes moved, every connection joined, no fallback. Then a server outside the cgroup: the
//! client falls back to TCP once, for good, and the transfer is still byte-exact.

use std::{net::SocketAddr, process::Command};

use serde_json::Value;
use sockmesh_bpf_tests::route_mesh::{route_mesh, RouteBackend, RouteService};
use sockmesh_bpf_tests::same_node_py::SAME_NODE_PY;
use sockmesh_bpf_tests::{sum_metric, TestBed, SIGNAL_TIMEOUT};

const PAIRS: &str = "sockmesh_same_node_pairs_total";
const FALLBACKS: &str = "sockmesh_same_node_fallbacks_total";
const BYTES: &str = "sockmesh_same_node_bytes_total";
const CONNS: u64 = 6;
const BYTES_PER_DIRECTION: u64 = 4 << 20;

fn json_line(out: &std::process::Output, who: &str) -> Value {
    assert!(
        out.status.success(),
        "{who} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{who} printed no JSON ({e}): {text}"))
}

#[test]
fn same_node_connections_move_bytes_socket_to_socket_and_exactly() {
    let backend: SocketAddr = "127.0.0.1:18960".parse().unwrap();
    let outside: SocketAddr = "127.0.0.1:18961".parse().unwrap();
    let vip: SocketAddr = "127.100.96.1:18962".parse().unwrap();
    let vip_out: SocketAddr = "127.100.96.2:18963".parse().unwrap();
    let services = [
        RouteService::new(
            "local",
            vip,
            "round_robin",
            vec![RouteBackend::new(backend)],
        )
        .with("same_node", "true"),
        RouteService::new(
            "remote",
            vip_out,
            "round_robin",
            vec![RouteBackend::new(outside)],
        )
        .with("same_node", "true"),
    ];
    let mut bed = TestBed::new("same-node", &route_mesh(&services, &[])).unwrap();
    bed.start_agent().unwrap();

    // Both ends in the agent's cgroup.
    let out = bed
        .cgroup()
        .command("python3")
        .arg("-c")
        .arg(SAME_NODE_PY)
        .args(["pair", &backend.to_string(), &vip.to_string()])
        .args([
            CONNS.to_string(),
            BYTES_PER_DIRECTION.to_string(),
            "7".into(),
        ])
        .output()
        .expect("running python3");
    let pair = json_line(&out, "the same-node peer");
    eprintln!("same-node pair: {pair}");
    assert_eq!(
        pair["directions_exact"], pair["directions"],
        "every direction of every connection arrives byte-exact and ends in EOF: {pair}"
    );
    assert_eq!(
        pair["reset_prefix"], true,
        "a reset loses at most a suffix: {pair}"
    );
    assert!(
        matches!(pair["reset_end"].as_str(), Some("eof" | "reset")),
        "the reset is seen: {pair}"
    );
    let moved = pair["bytes_moved"].as_u64().unwrap();
    let reset_sent = pair["reset_sent"].as_u64().unwrap();
    let text = bed
        .agent()
        .wait_metrics("same-node counters", SIGNAL_TIMEOUT, |t| {
            sum_metric(t, PAIRS, &[]) >= (CONNS + 1) as f64
                && sum_metric(t, BYTES, &[]) >= (moved + reset_sent) as f64
        })
        .unwrap();
    eprintln!(
        "same-node counters: pairs {}, bytes {} (moved {} + reset {}), fallbacks {}",
        sum_metric(&text, PAIRS, &[]),
        sum_metric(&text, BYTES, &[]),
        moved,
        reset_sent,
        sum_metric(&text, FALLBACKS, &[])
    );
    assert_eq!(sum_metric(&text, PAIRS, &[]), (CONNS + 1) as f64);
    assert_eq!(
        sum_metric(&text, BYTES, &[]),
        (moved + reset_sent) as f64,
        "every byte written took the fast path"
    );
    assert_eq!(sum_metric(&text, FALLBACKS, &[]), 0.0);

    // The server end outside the agent's cgroup: no peer socket, so TCP.
    let mut sink = Command::new("python3")
        .arg("-c")
        .arg(SAME_NODE_PY)
        .args(["sink", &outside.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning the sink");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sink.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let out = bed
        .cgroup()
        .command("python3")
        .arg("-c")
        .arg(SAME_NODE_PY)
        .args([
            "send",
            &vip_out.to_string(),
            &(1u64 << 20).to_string(),
            "11",
        ])
        .output()
        .expect("running python3");
    let sent = json_line(&out, "the sender");
    let _ = sink.wait();
    assert_eq!(
        sent["exact"], true,
        "the fallback transfer is byte-exact: {sent}"
    );
    let text = bed
        .agent()
        .wait_metrics("a fallback counted", SIGNAL_TIMEOUT, |t| {
            sum_metric(t, FALLBACKS, &[]) >= 1.0
        })
        .unwrap();
    assert_eq!(
        sum_metric(&text, FALLBACKS, &[]),
        1.0,
        "one fallback, then TCP for good"
    );
    assert_eq!(sum_metric(&text, PAIRS, &[]), (CONNS + 1) as f64);
    assert_eq!(
        sum_metric(&text, BYTES, &[]),
        (moved + reset_sent) as f64,
        "nothing of the fallback connection was redirected"
    );
}
