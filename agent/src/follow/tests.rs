//! The follower against the real control plane (the `sockmesh-control` binary, on a unix
//! socket), with a stand-in for the runtime that applies (or refuses) what it is offered. No
//! kernel: the kernel side is bpf-tests/tests/control_follow.rs.
//!
//! The agent does not depend on the control plane's crate, so the binary is found next to
//! this test's own (`cargo test --workspace` builds it) or at `SOCKMESH_CONTROL_BIN`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use sockmesh_model::protocol::{AgentReport, AGENTS_PATH};
use sockmesh_model::{parse_config, MeshConfig};
use tokio::sync::mpsc;

use super::*;

pub(super) const WAIT: Duration = Duration::from_secs(10);

pub(super) fn mesh(weight: u32, name: &str) -> String {
    format!(
        "services:\n  - name: {name}\n    vip: 127.100.0.1\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n        weight: {weight}\n"
    )
}

pub(super) fn write(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn options(dir: &Path) -> FollowOptions {
    FollowOptions {
        address: ControlAddress::Unix(dir.join("control.sock")),
        token: None,
        tls: None,
        node: "node-a".into(),
        state_dir: dir.join("state"),
        watch_timeout: Duration::from_secs(1),
    }
}

/// The `sockmesh-control` binary: `SOCKMESH_CONTROL_BIN`, or the one cargo built beside this
/// test binary (`target/<profile>/deps/<test>` -> `target/<profile>/sockmesh-control`).
pub(super) fn control_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SOCKMESH_CONTROL_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("sockmesh-control"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: these tests run the real control plane; build it first \
         (`cargo build -p sockmesh-control`, or `cargo test --workspace`) or set \
         SOCKMESH_CONTROL_BIN",
        bin.display()
    );
    bin
}

/// The control plane process; killed when the test ends, also on panic.
pub(super) struct ControlProcess(pub(super) Child);

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_control(dir: &Path) -> ControlProcess {
    let socket = dir.join("control.sock");
    let child = Command::new(control_bin())
        .arg("--config")
        .arg(dir.join("mesh.yaml"))
        .arg("--listen-unix")
        .arg(&socket)
        .args(["--metrics-addr", "127.0.0.1:0", "--watch-interval-ms", "20"])
        .env_remove("SOCKMESH_CONTROL_TOKEN")
        .env_remove("SOCKMESH_CONTROL_TOKEN_FILE")
        .spawn()
        .expect("start sockmesh-control");
    let control = ControlProcess(child);
    wait_for_socket(&socket).await;
    control
}

async fn agents(dir: &Path) -> Vec<AgentReport> {
    let client = Client::new(ControlAddress::Unix(dir.join("control.sock")), None, None);
    let reply = client.get(AGENTS_PATH, WAIT).await.unwrap();
    serde_json::from_slice(&reply.body).unwrap()
}

pub(super) async fn wait_agent(
    dir: &Path,
    what: &str,
    pred: impl Fn(&AgentReport) -> bool,
) -> AgentReport {
    for _ in 0..500 {
        if let Some(a) = agents(dir).await.into_iter().find(|a| a.agent == "node-a") {
            if pred(&a) {
                return a;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("agent never {what}: {:?}", agents(dir).await);
}

/// Answers offers like the runtime: a config with a service named `refused` fails.
pub(super) fn runtime(
    mut offers: mpsc::Receiver<Offer>,
) -> mpsc::UnboundedReceiver<Arc<MeshConfig>> {
    let (applied, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(offer) = offers.recv().await {
            let verdict = match offer.config {
                Ok(cfg) if cfg.services.iter().any(|s| s.name == "refused") => {
                    Err("services[0]: no room in the kernel".to_owned())
                }
                Ok(cfg) => {
                    let _ = applied.send(cfg);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            let _ = offer.reply.send(verdict);
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_versions_acks_them_and_persists_what_it_applied() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("mesh.yaml"), &mesh(1, "web"));
    let _control = start_control(dir.path()).await;
    let opts = options(dir.path());

    let start = start(&opts).await.unwrap();
    assert!(!start.from_disk);
    assert_eq!(start.snapshot.version, 1);
    assert_eq!(
        *start.snapshot.config,
        parse_config(&mesh(1, "web")).unwrap()
    );
    let mut applied = runtime(spawn(opts.clone(), start));
    wait_agent(dir.path(), "acked version 1", |a| {
        a.applied_version == Some(1)
    })
    .await;
    wait_persisted(&opts.state_dir, 1).await;

    // A new version: offered, applied, persisted, acked. Watches that time out (1 s) in
    // between are fine.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write(&dir.path().join("mesh.yaml"), &mesh(5, "web"));
    let cfg = tokio::time::timeout(WAIT, applied.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cfg.services[0].backends[0].weight, 5);
    let a = wait_agent(dir.path(), "acked version 2", |a| {
        a.applied_version == Some(2)
    })
    .await;
    assert!(a.ok && a.in_sync, "{a:?}");
    let saved = wait_persisted(&opts.state_dir, 2).await;
    assert_eq!(saved.config, cfg);

    // A version the runtime refuses: acked with the error, the applied one stays.
    write(&dir.path().join("mesh.yaml"), &mesh(1, "refused"));
    let a = wait_agent(dir.path(), "refused version 3", |a| a.version == 3).await;
    assert!(!a.ok, "{a:?}");
    assert_eq!(a.applied_version, Some(2));
    assert_eq!(
        a.error.as_deref(),
        Some("services[0]: no room in the kernel")
    );
    // Out of sync since version 3 was written (not since version 1 or 2): at most the
    // time this test waited for the agent to report it.
    assert!(!a.in_sync, "{a:?}");
    assert!(a.sync_age_seconds <= WAIT.as_secs_f64(), "{a:?}");
    assert_eq!(persist::load(&opts.state_dir).unwrap().unwrap().version, 2);
}

/// The persisted snapshot once it is `version` (it is written in the background).
async fn wait_persisted(dir: &std::path::Path, version: u64) -> Persisted {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(p)) = persist::load(dir) {
            if p.version == version {
                return p;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "version {version} not persisted in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn starts_from_the_persisted_snapshot_when_control_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let snapshot = Persisted {
        version: 9,
        fingerprint: "f".into(),
        config: Arc::new(parse_config(&mesh(3, "web")).unwrap()),
    };
    persist::save(&opts.state_dir, &snapshot, "unix:x").unwrap();
    let start = start(&opts).await.unwrap();
    assert!(start.from_disk);
    assert_eq!(start.snapshot, snapshot);
}

/// Waits (up to [`WAIT`]) until the control plane has created its socket.
pub(super) async fn wait_for_socket(socket: &Path) {
    tokio::time::timeout(WAIT, async {
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("control socket");
}
