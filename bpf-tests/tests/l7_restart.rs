//! Proxy restarts under load in the real kernel (issue 19): the agent (`--proxy spawn`)
//! serves an HTTP/1.1 service on two python `ok` backends and an HTTP/2 (h2c) service on
//! two hyper backends; while workload clients keep requests going over kept-alive
//! connections (4 python `http.client` processes) and h2load runs over h2c (many streams
//! in flight on each connection), the test restarts the proxy 3 times through the admin API (`POST /v1/proxy/restart`: the successor starts, links, then the old one
//! drains). Every request must get a 200: no reset, no EOF, no error; the proxy's pid
//! changes 3 times and the agent counts 4 starts.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::http_py::{HttpBackends, HttpClient, HttpReport};
use sockmesh_bpf_tests::l7::start_agent_with_proxy;
use sockmesh_bpf_tests::{sum_metric, Cgroup2, TestBed};

const TIMEOUT: Duration = Duration::from_secs(60);
const H1_CLIENTS: usize = 4;
/// Enough that the load outlasts the restarts (1.5 s apart) on a fast machine; bounded.
const H1_REQUESTS: usize = 10_000;
const RESTARTS: usize = 3;
/// h2load runs (nghttp2-client) until the restarts are done, each `H2_REQUESTS` GETs over
/// `H2_CONNECTIONS` h2c connections with up to `H2_STREAMS` in flight on each: a drain's
/// GOAWAY meets many open streams.
const H2_REQUESTS: usize = 2000;
const H2_CONNECTIONS: usize = 2;
const H2_STREAMS: usize = 10;
const H2_MAX_RUNS: usize = 500;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// h2c (and HTTP/1.1) backends in this process: 200, the body naming the backend.
fn start_h2_backends(addrs: &[SocketAddr]) -> Arc<AtomicU64> {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let hits = Arc::new(AtomicU64::new(0));
    let listeners: Vec<_> = addrs
        .iter()
        .map(|a| {
            let l = std::net::TcpListener::bind(a).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let counted = hits.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            for listener in listeners {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let name = bytes::Bytes::from(listener.local_addr().unwrap().to_string());
                let hits = counted.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let (name, hits) = (name.clone(), hits.clone());
                        tokio::spawn(async move {
                            let handler = service_fn(move |_req| {
                                hits.fetch_add(1, Ordering::Relaxed);
                                let body = http_body_util::Full::new(name.clone());
                                async move {
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                                }
                            });
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(stream), handler)
                                    .await;
                        });
                    }
                });
            }
            std::future::pending::<()>().await
        });
    });
    hits
}

/// `POST path` (no body) on the admin socket; a restart waits for the successor to link.
fn post_admin(socket: &Path, path: &str) -> (u16, serde_json::Value) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: sockmesh-agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// What the h2load runs saw, summed.
///
/// h2load does not open a new connection after a GOAWAY: the requests of its run it had
/// not yet started on a drained connection count as `failed` in its summary although they
/// were never sent. So a request fails here only when it was started and did not succeed.
#[derive(Debug, Default)]
struct H2Tally {
    runs: usize,
    /// requests: total, started (sent), succeeded (a response), 2xx.
    total: u64,
    started: u64,
    succeeded: u64,
    ok_2xx: u64,
    /// Runs cut short by a drain's GOAWAY (some requests never started).
    cut_runs: usize,
    /// Runs with a started request that did not succeed, or a timeout, or no summary.
    bad_runs: Vec<String>,
}

/// The number before `label` in h2load's summary line (`200 succeeded,`).
fn h2load_count(line: &str, label: &str) -> Option<u64> {
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let at = words.iter().position(|w| *w == label)?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

/// One h2load run: `H2_REQUESTS` GETs over `H2_CONNECTIONS` h2c connections, up to
/// `H2_STREAMS` streams in flight on each.
fn h2load_run(web: &Cgroup2, vip: SocketAddr, tally: &mut H2Tally) {
    let out = web
        .command("h2load")
        .args([
            "-n",
            &H2_REQUESTS.to_string(),
            "-c",
            &H2_CONNECTIONS.to_string(),
            "-m",
            &H2_STREAMS.to_string(),
            "-T",
            "30",
            &format!("http://{vip}/"),
        ])
        .output()
        .expect("h2load (nghttp2-client, installed by cargo xtask setup)");
    tally.runs += 1;
    let text = String::from_utf8_lossy(&out.stdout);
    let requests = text.lines().find(|l| l.starts_with("requests:"));
    let codes = text.lines().find(|l| l.starts_with("status codes:"));
    let (Some(requests), Some(codes)) = (requests, codes) else {
        tally.bad_runs.push(format!(
            "no summary ({}): {}{}",
            out.status,
            text.chars().take(300).collect::<String>(),
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(300)
                .collect::<String>()
        ));
        return;
    };
    let n = |l: &str, label: &str| h2load_count(l, label).unwrap_or(0);
    let (started, succeeded) = (n(requests, "started"), n(requests, "succeeded"));
    tally.total += n(requests, "total");
    tally.started += started;
    tally.succeeded += succeeded;
    tally.ok_2xx += n(codes, "2xx");
    if started < H2_REQUESTS as u64 {
        tally.cut_runs += 1;
    }
    if succeeded != started || n(requests, "done") != started || n(requests, "timeout") > 0 {
        tally.bad_runs.push(requests.to_owned());
    }
}

#[test]
fn proxy_restarts_under_load_fail_no_request() {
    let ok1 = addr("127.0.0.2:18986");
    let ok2 = addr("127.0.0.3:18986");
    let h2a = addr("127.0.0.4:18987");
    let h2b = addr("127.0.0.5:18987");
    let shop = addr("127.100.97.10:18984");
    let stream = addr("127.100.97.11:18985");
    let _http = HttpBackends::start(&[(ok1, "ok"), (ok2, "ok")]).unwrap();
    let h2_hits = start_h2_backends(&[h2a, h2b]);

    let mut bed = TestBed::new("l7-restart", "version: 1\nservices: []\n").unwrap();
    let web = bed.cgroup().child("web").unwrap();
    let yaml = format!(
        r#"version: 1
workloads:
  - {{name: web, cgroup: {web_cg}}}
services:
  - name: shop
    vip: {shop_ip}
    port: {shop_port}
    protocol: http
    backends: [{{addr: "{ok1}"}}, {{addr: "{ok2}"}}]
  - name: stream
    vip: {stream_ip}
    port: {stream_port}
    protocol: http
    backends: [{{addr: "{h2a}"}}, {{addr: "{h2b}"}}]
"#,
        web_cg = web.relative_path().unwrap(),
        shop_ip = shop.ip(),
        shop_port = shop.port(),
        stream_ip = stream.ip(),
        stream_port = stream.port(),
    );
    bed.write_config(&yaml).unwrap();
    start_agent_with_proxy(&mut bed, &["web"], TIMEOUT).unwrap();
    // The proxy serves once it has targets: one request each way proves it.
    let warm = HttpClient::get(shop, 1).run(&web).unwrap();
    assert_eq!(warm.code(200), 1, "{warm:?}");
    let mut tally = H2Tally::default();
    h2load_run(&web, stream, &mut tally);
    assert_eq!(tally.ok_2xx, H2_REQUESTS as u64, "{tally:?}");
    let starts = |bed: &mut TestBed| {
        sum_metric(
            &bed.agent().metrics_text().unwrap(),
            "sockmesh_proxy_starts_total",
            &[],
        )
    };
    assert_eq!(starts(&mut bed), 1.0);
    let admin = bed.agent().options().admin_socket();

    let restarts_done = AtomicBool::new(false);
    let h1_finished = AtomicU64::new(0);
    let began = Instant::now();
    let (h1_reports, h2_tally, restarted, h1_busy_at_last_restart) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..H1_CLIENTS)
            .map(|_| {
                let (web, h1_finished) = (&web, &h1_finished);
                s.spawn(move || {
                    let r = HttpClient::get(shop, H1_REQUESTS).run(web).unwrap();
                    h1_finished.fetch_add(1, Ordering::SeqCst);
                    r
                })
            })
            .collect();
        let (web, done) = (&web, &restarts_done);
        let h2 = s.spawn(move || {
            let mut tally = H2Tally::default();
            while !done.load(Ordering::SeqCst) && tally.runs < H2_MAX_RUNS {
                h2load_run(web, stream, &mut tally);
            }
            // One more run after the last restart: the successor serves h2 too.
            h2load_run(web, stream, &mut tally);
            tally
        });
        let mut restarted = Vec::new();
        let mut busy = true;
        for _ in 0..RESTARTS {
            std::thread::sleep(Duration::from_millis(1500));
            let t = Instant::now();
            let (status, body) = post_admin(&admin, "/v1/proxy/restart");
            assert_eq!(status, 200, "{body}");
            eprintln!(
                "restart after {:?}: {body} in {:?}",
                began.elapsed(),
                t.elapsed()
            );
            restarted.push((
                body["old_pid"].as_u64().unwrap(),
                body["new_pid"].as_u64().unwrap(),
            ));
            busy = h1_finished.load(Ordering::SeqCst) < H1_CLIENTS as u64;
        }
        restarts_done.store(true, Ordering::SeqCst);
        let reports: Vec<HttpReport> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        (reports, h2.join().unwrap(), restarted, busy)
    });
    eprintln!(
        "load done after {:?}; h2c backends got {} requests",
        began.elapsed(),
        h2_hits.load(Ordering::Relaxed)
    );

    for r in &h1_reports {
        eprintln!(
            "http/1.1 client: codes {:?}, {} connections, {} errors",
            r.codes,
            r.connections,
            r.errors.len()
        );
    }
    eprintln!("h2load: {h2_tally:?}");
    for r in &h1_reports {
        assert!(r.errors.is_empty(), "failed requests: {:?}", r.errors);
        assert_eq!(r.code(200), H1_REQUESTS as u64, "{:?}", r.codes);
    }
    assert!(
        h1_busy_at_last_restart,
        "the HTTP/1.1 load ended before the last restart: make it longer"
    );
    assert!(
        h2_tally.bad_runs.is_empty(),
        "h2load runs with a started request that failed: {:?}",
        h2_tally.bad_runs
    );
    assert_eq!(h2_tally.total, (h2_tally.runs * H2_REQUESTS) as u64);
    assert_eq!(h2_tally.succeeded, h2_tally.started, "{h2_tally:?}");
    assert_eq!(
        h2_tally.ok_2xx, h2_tally.started,
        "only 200s over HTTP/2: {h2_tally:?}"
    );
    // Only a drain cuts a run short (one run at a time: at most one per restart).
    assert!(h2_tally.cut_runs <= RESTARTS, "{h2_tally:?}");
    eprintln!(
        "HTTP/2: {} requests sent over {} h2load runs, all 200; {} never sent by h2load \
         after a GOAWAY in {} runs",
        h2_tally.started,
        h2_tally.runs,
        h2_tally.total - h2_tally.started,
        h2_tally.cut_runs
    );
    assert!(
        h2_tally.runs >= 3,
        "h2load ran through the restarts: {h2_tally:?}"
    );

    // Each restart replaced the proxy the one before started: 3 pid changes.
    for pair in restarted.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "{restarted:?}");
    }
    let mut pids: Vec<u64> = restarted.iter().flat_map(|(o, n)| [*o, *n]).collect();
    pids.dedup();
    assert_eq!(pids.len(), RESTARTS + 1, "{restarted:?}");
    assert_eq!(starts(&mut bed), (RESTARTS + 1) as f64);
    bed.agent()
        .wait_metrics("the replaced proxies gone", TIMEOUT, |t| {
            sum_metric(t, "sockmesh_proxy_connected", &[]) == 1.0
        })
        .unwrap();
}
