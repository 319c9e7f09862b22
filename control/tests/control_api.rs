//! `sockmesh-control` as a process: auth, versions from file edits, long-poll watch,
//! rejected edits, rollback, restart with a state dir, metrics. No kernel and no root: the
//! agent side is in bpf-tests/tests/control_follow.rs.

mod control_process;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use control_process::{fingerprint, mesh, Control, TOKEN};
use serde_json::json;
use sockmesh_cli::control::ControlError;
use sockmesh_model::protocol::{Snapshot, Update};

const PATHS: [&str; 6] = [
    "/v1/snapshot",
    "/v1/watch?after=0&timeout=1s",
    "/v1/agents",
    "/v1/history",
    "/v1/status",
    "/v1/nope",
];

#[test]
fn tcp_requests_without_the_token_get_401_and_the_socket_is_private() {
    let control = Control::start(&mesh(&[("web", 1, 1)]));
    for path in PATHS {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some(TOKEN),
            Some("Basic dGVzdA=="),
        ] {
            let r = control.raw_get(path, auth);
            assert_eq!(r.status, 401, "GET {path} with {auth:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"sockmesh-control\"")
            );
        }
    }
    let r = control.raw_get("/v1/status", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(r.status, 200);
    // POSTs too, and nothing they carry is acted on.
    let client = sockmesh_cli::control::ControlClient::new(sockmesh_model::ControlAddress::Tcp {
        authority: control.tcp.clone().unwrap(),
        tls: false,
    });
    let err = client
        .post_json("/v1/rollback", &json!({"version": 1}))
        .unwrap_err();
    assert!(
        matches!(err, ControlError::Unauthorized { token_sent: false }),
        "{err}"
    );
    let err = client
        .post_json(
            "/v1/ack",
            &json!({"agent": "intruder", "version": 1, "ok": true}),
        )
        .unwrap_err();
    assert!(matches!(err, ControlError::Unauthorized { .. }), "{err}");
    assert_eq!(control.get("/v1/agents"), json!([]));

    // The unix socket needs no token; its mode is the guard.
    let mode = std::fs::metadata(control.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        control.unix().get_json("/v1/status").unwrap().value["version"],
        1
    );
}

#[test]
fn file_edits_make_versions_and_wake_a_watch_at_once() {
    let v1 = mesh(&[("web", 1, 1), ("api", 2, 1)]);
    let control = Control::start(&v1);
    let snap: Snapshot = serde_json::from_value(control.get("/v1/snapshot")).unwrap();
    assert_eq!(snap.version, 1);
    assert_eq!(snap.fingerprint, fingerprint(&v1));
    assert_eq!(snap.config, sockmesh_model::parse_config(&v1).unwrap());
    assert_eq!(snap.service_versions["web"], 1);

    // A watch at the head waits; an edit answers it at once.
    let watcher = {
        let client = control.tcp();
        std::thread::spawn(move || {
            let started = Instant::now();
            let reply = client
                .get_json("/v1/watch?after=1&timeout=20s&agent=node-w")
                .unwrap();
            (reply.value, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let v2 = mesh(&[("web", 1, 5), ("api", 2, 1)]);
    control.write_config(&v2);
    let (reply, waited) = watcher.join().unwrap();
    assert!(waited < Duration::from_secs(5), "watch took {waited:?}");
    let snap: Snapshot = serde_json::from_value(reply).unwrap();
    assert_eq!(snap.version, 2);
    assert_eq!(snap.fingerprint, fingerprint(&v2));
    // Only the changed service takes the new version.
    assert_eq!(snap.service_versions["web"], 2);
    assert_eq!(snap.service_versions["api"], 1);

    // Behind: answered at once. At the head: 204 after the timeout.
    let behind = control.get("/v1/watch?after=1&timeout=30s");
    assert_eq!(behind["version"], 2);
    let started = Instant::now();
    let r = control.raw_get(
        "/v1/watch?after=2&timeout=300ms",
        Some(&format!("Bearer {TOKEN}")),
    );
    assert_eq!(r.status, 204);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The watcher that named itself is known.
    let agents = control.get("/v1/agents");
    assert_eq!(agents[0]["agent"], "node-w");
    assert_eq!(agents[0]["applied_version"], json!(null));

    // Saving the same content again (or the same config reformatted) is no new version.
    control.write_config(&format!("# reformatted\n{v2}"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(control.get("/v1/status")["version"], 2);

    // Bad requests are 400 with a reason, unknown paths 404, wrong methods 405.
    for (path, status) in [
        ("/v1/watch", 400),
        ("/v1/watch?after=x", 400),
        ("/v1/watch?after=1&timeout=10m", 400),
        ("/v1/snapshot?agent=bad%20name", 400),
        ("/v1/snapshot?version=99", 404),
        ("/v1/nope", 404),
        ("/v1/rollback", 405),
    ] {
        let r = control.raw_get(path, Some(&format!("Bearer {TOKEN}")));
        assert_eq!(
            r.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}

#[test]
fn an_invalid_edit_is_rejected_with_its_field_path_and_never_served() {
    let v1 = mesh(&[("web", 1, 1)]);
    let control = Control::start(&v1);
    let bad = v1.replace("127.0.0.2:18800", "127.0.0.300:18800");
    let err = sockmesh_model::parse_config(&bad).unwrap_err();
    assert_eq!(err.path(), Some("services[0].backends[0].addr"));
    control.write_config(&bad);
    let status = control.wait_json("/v1/status", "a rejection", |s| s["rejected"] == 1);
    assert_eq!(status["version"], 1);
    assert_eq!(
        status["last_rejection"]["path"],
        "services[0].backends[0].addr"
    );
    assert!(status["last_rejection"]["error"]
        .as_str()
        .unwrap()
        .starts_with("services[0].backends[0].addr: "));
    assert!(control.log().contains("services[0].backends[0].addr"));
    let history = control.get("/v1/history");
    assert_eq!(history["versions"].as_array().unwrap().len(), 1);
    assert_eq!(control.get("/v1/snapshot")["fingerprint"], fingerprint(&v1));
    let metrics = control.metrics_text();
    assert!(
        metrics.contains("sockmesh_control_rejected_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sockmesh_control_config_version 1\n"),
        "{metrics}"
    );

    // Still one rejection several polls later, and a fixed file is the next version.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(control.get("/v1/status")["rejected"], 1);
    control.write_config(&mesh(&[("web", 1, 2)]));
    control.wait_version(2);
}

#[test]
fn rollback_makes_an_old_config_the_head_as_a_new_version() {
    let configs = [
        mesh(&[("web", 1, 1)]),
        mesh(&[("web", 1, 2)]),
        mesh(&[("web", 1, 3), ("api", 2, 1)]),
    ];
    let control = Control::start(&configs[0]);
    for (i, yaml) in configs.iter().enumerate().skip(1) {
        control.write_config(yaml);
        control.wait_version(i as u64 + 1);
    }
    let reply = control
        .post("/v1/rollback", &json!({"version": 1}))
        .unwrap();
    assert_eq!(
        reply,
        json!({"version": 4, "rolled_back_to": 1, "fingerprint": fingerprint(&configs[0]), "changed": true})
    );
    let snap = control.get("/v1/snapshot");
    assert_eq!(snap["version"], 4);
    assert_eq!(snap["fingerprint"], fingerprint(&configs[0]));
    let history = control.get("/v1/history");
    assert_eq!(history["head"], 4);
    assert_eq!(
        history["versions"][0]["origin"],
        json!({"kind": "rollback", "of": 1})
    );
    assert_eq!(history["versions"][0]["changes"]["removed"], json!(["api"]));
    // The old revision itself is still there to read.
    assert_eq!(control.get("/v1/snapshot?version=2")["version"], 2);
    // To the head's own config: nothing changes.
    let same = control
        .post("/v1/rollback", &json!({"version": 4}))
        .unwrap();
    assert_eq!(same["changed"], false);
    assert_eq!(same["version"], 4);
    match control.post("/v1/rollback", &json!({"version": 99})) {
        Err(ControlError::Api { status, message }) => {
            assert_eq!(status, 404);
            assert_eq!(message, "version 99 is not kept (kept: 1 to 4)");
        }
        other => panic!("{other:?}"),
    }
    match control.post("/v1/rollback", &json!({"to": 1})) {
        Err(ControlError::Api { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn versions_history_and_rollbacks_survive_a_restart() {
    let a = mesh(&[("web", 1, 1)]);
    let b = mesh(&[("web", 1, 2)]);
    let mut control = Control::start_with(&a, &["--keep", "3"]);
    control.write_config(&b);
    control.wait_version(2);
    control
        .post("/v1/rollback", &json!({"version": 1}))
        .unwrap();
    control.wait_version(3);

    // The file still says b; a restart must not undo the rollback.
    control.restart();
    let status = control.get("/v1/status");
    assert_eq!(status["version"], 3, "{status:#}");
    assert_eq!(status["fingerprint"], fingerprint(&a));
    assert_eq!(
        control.get("/v1/history")["versions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Numbering carries on, and only --keep revisions stay, also on disk.
    for (i, w) in [7, 8].iter().enumerate() {
        control.write_config(&mesh(&[("web", 1, *w)]));
        control.wait_version(4 + i as u64);
    }
    let versions: Vec<u64> = control.get("/v1/history")["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [5, 4, 3]);
    // On disk: what the kept ones need (deltas back to a checkpoint), bounded by one
    // checkpoint interval; a second restart reads back exactly the kept ones.
    let stored = std::fs::read_dir(control.path("state/revisions"))
        .unwrap()
        .count();
    assert!(
        (3..=3 + sockmesh_control::store::CHECKPOINT_EVERY + 1).contains(&stored),
        "{stored} files"
    );
    control.restart();
    let history = control.get("/v1/history");
    let again: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(again, [5, 4, 3], "{history:#}");
    assert_eq!(
        control.get("/v1/status")["fingerprint"],
        fingerprint(&mesh(&[("web", 1, 8)]))
    );
}

#[test]
fn acks_show_per_agent_versions_and_sync_age_in_metrics() {
    let control = Control::start(&mesh(&[("web", 1, 1)]));
    let ack = |agent: &str, version: u64, ok: bool| {
        control
            .post(
                "/v1/ack",
                &json!({"agent": agent, "version": version, "ok": ok,
                        "error": if ok { None } else { Some("services[0]: no room") }}),
            )
            .unwrap();
    };
    ack("node-a", 1, true);
    ack("node-b", 1, true);
    control.write_config(&mesh(&[("web", 1, 2)]));
    control.wait_version(2);
    ack("node-a", 2, true);
    ack("node-b", 2, false);
    std::thread::sleep(Duration::from_millis(1100));
    let agents = control.get("/v1/agents");
    assert_eq!(agents[0]["agent"], "node-a");
    assert_eq!(agents[0]["in_sync"], true);
    assert_eq!(agents[1]["applied_version"], 1);
    assert_eq!(agents[1]["error"], "services[0]: no room");
    assert!(
        agents[1]["sync_age_seconds"].as_f64().unwrap() >= 1.0,
        "{agents:#}"
    );
    let metrics = control.metrics_text();
    for line in [
        "sockmesh_control_config_version 2\n",
        "sockmesh_control_agent_version{agent=\"node-a\"} 2\n",
        "sockmesh_control_agent_version{agent=\"node-b\"} 1\n",
        "sockmesh_control_agent_sync_age_seconds{agent=\"node-a\"} 0.0\n",
        "# TYPE sockmesh_control_rejected_total counter\n",
    ] {
        assert!(metrics.contains(line), "{line:?} missing:\n{metrics}");
    }
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sockmesh_control_agent_sync_age_seconds{agent=\"node-b\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age >= 1.0, "{metrics}");
    // Bad acks are refused.
    for bad in [
        json!({"agent": "", "version": 1, "ok": true}),
        json!({"agent": "a b", "version": 1, "ok": true}),
        json!({"agent": "a", "version": 1}),
    ] {
        assert!(
            matches!(
                control.post("/v1/ack", &bad),
                Err(ControlError::Api { status: 400, .. })
            ),
            "{bad}"
        );
    }
}

/// `delta=1`: a version the agent can reach from its own comes as the services that changed;
/// one it cannot (its version is not kept, or only the order changed) as a snapshot.
#[test]
fn watches_that_read_deltas_get_the_changed_services_only() {
    let v1 = mesh(&[("web", 1, 1), ("api", 2, 1), ("db", 3, 1)]);
    let control = Control::start(&v1);
    let v2 = mesh(&[("web", 1, 1), ("api", 2, 7), ("db", 3, 1)]);
    control.write_config(&v2);
    control.wait_version(2);

    let r = control.raw_get(
        "/v1/watch?after=1&timeout=1s&delta=1",
        Some(&format!("Bearer {TOKEN}")),
    );
    assert_eq!(r.status, 200);
    let update: Update = serde_json::from_slice(&r.body).unwrap();
    let Update::Delta(d) = update else {
        panic!("expected a delta: {}", String::from_utf8_lossy(&r.body))
    };
    assert_eq!((d.from, d.version), (1, 2));
    assert_eq!(d.fingerprint, fingerprint(&v2));
    let changed: Vec<&str> = d.delta.changed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(changed, ["api"]);
    assert!(d.delta.added.is_empty() && d.delta.removed.is_empty());
    let base = sockmesh_model::parse_config(&v1).unwrap();
    assert_eq!(
        d.delta.apply(base).unwrap(),
        sockmesh_model::parse_config(&v2).unwrap()
    );
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());

    // Not kept (version 0 never existed): the head, whole.
    let r = control.raw_get(
        "/v1/watch?after=0&timeout=1s&delta=1",
        Some(&format!("Bearer {TOKEN}")),
    );
    let Update::Snapshot(snap) = serde_json::from_slice::<Update>(&r.body).unwrap() else {
        panic!("expected a snapshot")
    };
    assert_eq!(snap.version, 2);
    // Only the order changed: a snapshot too.
    control.write_config(&mesh(&[("db", 3, 1), ("web", 1, 1), ("api", 2, 7)]));
    control.wait_version(3);
    let r = control.raw_get(
        "/v1/watch?after=2&timeout=1s&delta=1",
        Some(&format!("Bearer {TOKEN}")),
    );
    assert!(matches!(
        serde_json::from_slice::<Update>(&r.body).unwrap(),
        Update::Snapshot(_)
    ));
    let metrics = control.metrics_text();
    for line in [
        "sockmesh_control_updates_served_total{kind=\"delta\"} 1\n",
        "sockmesh_control_updates_served_total{kind=\"snapshot\"} 2\n",
    ] {
        assert!(metrics.contains(line), "{line:?} missing:\n{metrics}");
    }
}

#[test]
fn start_up_refuses_what_it_cannot_serve() {
    let control = Control::start(&mesh(&[("web", 1, 1)]));
    // An invalid file with nothing stored: exit 1, naming the field.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "services:\n  - name: web\n    lb: fastest\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sockmesh-control"))
        .arg("--config")
        .arg(dir.path().join("mesh.yaml"))
        .arg("--listen-unix")
        .arg(dir.path().join("c.sock"))
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("services[0]"), "{stderr}");

    // TCP without a token: refused before binding anything.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sockmesh-control"))
        .arg("--config")
        .arg(control.path("mesh.yaml"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"));

    // TCP with a token but neither TLS nor --insecure-plaintext: refused the same way.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sockmesh-control"))
        .arg("--config")
        .arg(control.path("mesh.yaml"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--token-file")
        .arg(control.path("token"))
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--listen needs TLS: give --tls-cert FILE and --tls-key FILE"),
        "{stderr}"
    );

    // /ready on the metrics address.
    let stream = std::net::TcpStream::connect(control.metrics.as_deref().unwrap()).unwrap();
    let r = sockmesh_cli::http::get(stream, "x", "/ready", None).unwrap();
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).trim()),
        (200, "ready: version 1")
    );
}
