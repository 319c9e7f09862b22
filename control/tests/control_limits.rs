//! `sockmesh-control`'s endpoint limits as a process: the per-agent cap on long-polls (429
//! with the reason, counted) and the connection counters of the API and metrics endpoints.
//! The accept loop itself is tested in sockmesh-serve; 2,000 held connections in
//! bpf-tests/tests/slowloris.rs.

mod control_process;

use std::thread;
use std::time::Duration;

use control_process::{mesh, Control, TOKEN};
use sockmesh_control::watch_cap::DEFAULT_WATCHES_PER_IDENTITY;

#[test]
fn watches_over_the_per_agent_cap_get_429_with_the_reason_and_are_counted() {
    let control = Control::start(&mesh(&[("web", 1, 1)]));
    let bearer = format!("Bearer {TOKEN}");
    // The head is version 1: `after=1` waits (here up to 3 s) instead of answering at once.
    let watch = |agent: &str| format!("/v1/watch?after=1&timeout=3s&agent={agent}");
    let held: Vec<_> = thread::scope(|s| {
        let held: Vec<_> = (0..DEFAULT_WATCHES_PER_IDENTITY)
            .map(|_| s.spawn(|| control.raw_get(&watch("greedy"), Some(&bearer))))
            .collect();
        // Let them all reach the handler.
        thread::sleep(Duration::from_millis(500));
        let over = control.raw_get(&watch("greedy"), Some(&bearer));
        assert_eq!(over.status, 429, "{over:?}");
        let body = String::from_utf8_lossy(&over.body);
        assert!(
            body.contains("greedy") && body.contains("watches"),
            "{body}"
        );
        // Another agent is not affected: its watch waits and ends with 204.
        let other = control.raw_get(&watch("modest"), Some(&bearer));
        assert_eq!(other.status, 204);
        held.into_iter().map(|h| h.join().unwrap().status).collect()
    });
    assert_eq!(held, vec![204; DEFAULT_WATCHES_PER_IDENTITY]);
    // The slots are given back with the replies.
    assert_eq!(
        control
            .raw_get(&watch("greedy").replace("3s", "100ms"), Some(&bearer))
            .status,
        204
    );
    let metrics = control.metrics_text();
    assert!(
        metrics.contains("sockmesh_control_watches_refused_total 1\n"),
        "{metrics}"
    );
    for line in [
        "sockmesh_control_http_connections_total{endpoint=\"api\",event=\"accepted\"}",
        "sockmesh_control_http_connections_total{endpoint=\"metrics\",event=\"header_timeout\"} 0",
        "sockmesh_control_http_connections_open{endpoint=\"api\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

/// A body sent too slowly is cut off with 408 (the body timeout, 10 s), not held for as long
/// as its sender keeps trickling.
#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    use std::io::{BufReader, Write};
    let control = Control::start(&mesh(&[("web", 1, 1)]));
    let mut stream = std::net::TcpStream::connect(control.tcp.as_deref().unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST /v1/rollback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let reply = sockmesh_cli::http::read_response(BufReader::new(stream)).unwrap();
    assert_eq!(reply.status, 408, "{reply:?}");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("did not arrive within 10 s"), "{body}");
    // Nothing was rolled back.
    assert_eq!(
        control.get("/v1/history")["head"],
        1,
        "{}",
        control.get("/v1/history")
    );
}
