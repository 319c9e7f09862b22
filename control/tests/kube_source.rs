//! The Kubernetes source against a fake API server on 127.0.0.1 (`fake_kube`): kube-rs, the
//! real client, lists and watches Namespaces, Pods, Services, EndpointSlices and
//! MeshPolicies through a kubeconfig, as it would a cluster. Shown twice: through
//! `KubeSource` itself, and through the `sockmesh-control --source kubernetes` process
//! (`GET /v1/snapshot` on its unix socket). No root, no kernel.
//!
//! - endpoint churn (an endpoint turns not ready, a new one appears, a slice goes away)
//!   changes the served backends;
//! - enrolment: a namespace's `sockmesh.io/mesh: enabled` label added or removed puts its
//!   services in or takes them out of the config (so agents route them or not); a pod's
//!   own label does the same for that pod (a workload) and the Service it backs;
//! - a MeshPolicy sets lb/outlier; a refused edit of it is a rejection with its field path
//!   and the service keeps the last valid policy.

#![cfg(feature = "kubernetes")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sockmesh_cli::control::ControlClient;
use sockmesh_control::kube_source::{KubeOptions, KubeSource};
use sockmesh_control::{Source, SourceEvent};
use sockmesh_fake_kube::{self as fake_kube, FakeKube};
use sockmesh_model::ControlAddress;
use sockmesh_model::{LbPolicy, MeshConfig};

const WAIT: Duration = Duration::from_secs(15);

// ---- objects, written as the API server would return them ----

fn namespace(name: &str, enrolled: bool) -> Value {
    let labels = if enrolled {
        json!({"kubernetes.io/metadata.name": name, "sockmesh.io/mesh": "enabled"})
    } else {
        json!({"kubernetes.io/metadata.name": name})
    };
    json!({"metadata": {"name": name, "labels": labels}, "spec": {"finalizers": ["kubernetes"]},
           "status": {"phase": "Active"}})
}

fn service(ns: &str, name: &str, ip: &str, port: u16) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ipFamilies": ["IPv4"], "selector": {"app": name},
                 "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"}]}
    })
}

/// An EndpointSlice of Service `svc`, port `http` = `port`, endpoints (ip, ready, pod).
fn slice(ns: &str, name: &str, svc: &str, port: u16, endpoints: &[(&str, bool, &str)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready, pod)| {
            json!({"addresses": [ip],
                   "conditions": {"ready": ready, "serving": ready, "terminating": false},
                   "targetRef": {"kind": "Pod", "namespace": ns, "name": pod},
                   "nodeName": "node-a", "zone": "zone-a"})
        })
        .collect();
    json!({
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn pod(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "qosClass": "BestEffort", "podIP": "127.0.10.1"}
    })
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "generation": 1}, "spec": spec})
}

/// Namespace `shop` (enrolled) with Service `web` (127.100.200.10:80 -> pods on 8080) and two
/// ready endpoints; namespace `batch` (not enrolled) with Service `jobs` and pod `jobs-0`.
fn seed(kube: &FakeKube) {
    kube.apply(
        "Node",
        json!({"metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
               "status": {"images": [{"names": ["app:1"], "sizeBytes": 1}]}}),
    );
    kube.apply("Namespace", namespace("shop", true));
    kube.apply("Namespace", namespace("batch", false));
    kube.apply("Service", service("shop", "web", "127.100.200.10", 80));
    kube.apply(
        "EndpointSlice",
        slice(
            "shop",
            "web-a1",
            "web",
            8080,
            &[("127.0.10.1", true, "web-1"), ("127.0.10.2", true, "web-2")],
        ),
    );
    kube.apply(
        "Pod",
        pod("shop", "web-1", json!({"app": "web", "track": "stable"})),
    );
    kube.apply(
        "Pod",
        pod("shop", "web-2", json!({"app": "web", "track": "canary"})),
    );
    kube.apply("Service", service("batch", "jobs", "127.100.200.20", 9000));
    kube.apply(
        "EndpointSlice",
        slice(
            "batch",
            "jobs-x",
            "jobs",
            9000,
            &[("127.0.11.1", true, "jobs-0")],
        ),
    );
    kube.apply("Pod", pod("batch", "jobs-0", json!({"app": "jobs"})));
}

fn backends(cfg: &MeshConfig, service: &str) -> Option<Vec<String>> {
    cfg.services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.backends.iter().map(|b| b.addr.to_string()).collect())
}

fn workloads(cfg: &MeshConfig) -> Vec<&str> {
    cfg.workloads.iter().map(|w| w.name.as_str()).collect()
}

// ---- KubeSource itself ----

/// Waits until kube-rs has listed every collection and then watched it from the list's
/// resourceVersion (the watch follows the list, a moment after the store is ready).
async fn wait_for_watches(kube: &FakeKube) {
    let collections = fake_kube::RESOURCES.map(|(path, _, _)| path);
    let deadline = Instant::now() + WAIT;
    loop {
        let requests = kube.requests();
        let missing: Vec<&str> = collections
            .iter()
            .copied()
            .filter(|path| {
                let of = |r: &&String| r.starts_with(&format!("GET {path}?"));
                let listed = requests
                    .iter()
                    .filter(of)
                    .any(|r| !r.contains("watch=true"));
                let watched = requests.iter().filter(of).any(|r| {
                    r.contains("watch=true")
                        && r.contains("allowWatchBookmarks=true")
                        && !r.contains("resourceVersion=0")
                });
                !(listed && watched)
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no list+watch of {missing:?}: {requests:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn source_for(kube: &FakeKube, debounce: Duration) -> KubeSource {
    let kubeconfig = kube::config::Kubeconfig::read_from(kube.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    KubeSource::start(
        client,
        format!("kubernetes http://{}/", kube.addr),
        KubeOptions {
            debounce,
            max_delay: Duration::from_secs(2),
            ..KubeOptions::default()
        },
    )
}

async fn next(source: &mut KubeSource) -> SourceEvent {
    tokio::time::timeout(WAIT, source.next_event())
        .await
        .expect("an event from the Kubernetes source")
}

/// Desired configs until one satisfies `pred` (a change may arrive in more than one
/// version); a rejection on the way fails the test.
async fn wait_config(
    source: &mut KubeSource,
    what: &str,
    pred: impl Fn(&MeshConfig) -> bool,
) -> MeshConfig {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        match next(source).await.into_desired() {
            Ok(cfg) if pred(&cfg) => return cfg,
            Ok(_) => {}
            Err(e) => panic!("unexpected rejection while waiting for {what}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_follows_endpoints_enrolment_and_policies() {
    let kube = FakeKube::start();
    seed(&kube);
    let mut source = source_for(&kube, Duration::from_millis(300)).await;
    assert_eq!(
        source.describe(),
        format!("kubernetes http://{}/", kube.addr)
    );

    // The first event is the whole listed cluster: only the enrolled namespace.
    let SourceEvent::Desired(cfg) = next(&mut source).await else {
        panic!("the first event must be a config");
    };
    cfg.validate().unwrap();
    assert_eq!(cfg.services.len(), 1, "{cfg:?}");
    let web = &cfg.services[0];
    assert_eq!(
        (web.name.as_str(), web.vip.to_string(), web.port),
        ("shop-web-80", "127.100.200.10".to_owned(), 80)
    );
    assert_eq!(
        backends(&cfg, "shop-web-80").unwrap(),
        ["127.0.10.1:8080", "127.0.10.2:8080"]
    );
    assert_eq!(web.backends[0].zone.as_deref(), Some("zone-a"));
    assert_eq!(web.backends[1].labels["track"], "canary");
    assert_eq!(workloads(&cfg), ["shop-web-1", "shop-web-2"]);
    // Pods take their node's zone.
    assert_eq!(cfg.workloads[0].zone.as_deref(), Some("zone-a"));
    assert!(cfg.workloads[0]
        .cgroup
        .starts_with("kubepods.slice/kubepods-besteffort.slice/"));
    // kube-rs listed, then watches from the list's version, with bookmarks.
    wait_for_watches(&kube).await;

    // Endpoint churn: one endpoint turns not ready and a new one appears.
    kube.apply(
        "EndpointSlice",
        slice(
            "shop",
            "web-a1",
            "web",
            8080,
            &[
                ("127.0.10.1", true, "web-1"),
                ("127.0.10.2", false, "web-2"),
                ("127.0.10.3", true, "web-3"),
            ],
        ),
    );
    let cfg = wait_config(&mut source, "127.0.10.2 out, 127.0.10.3 in", |c| {
        backends(c, "shop-web-80").as_deref()
            == Some(&["127.0.10.1:8080".to_owned(), "127.0.10.3:8080".to_owned()][..])
    })
    .await;
    assert_eq!(cfg.services.len(), 1);

    // A second slice adds its endpoints; deleting the first removes its own.
    kube.apply(
        "EndpointSlice",
        slice(
            "shop",
            "web-b2",
            "web",
            8080,
            &[("127.0.10.9", true, "web-9")],
        ),
    );
    wait_config(&mut source, "the second slice", |c| {
        backends(c, "shop-web-80").is_some_and(|b| b.len() == 3)
    })
    .await;
    kube.delete("EndpointSlice", "shop", "web-a1");
    wait_config(&mut source, "only the second slice", |c| {
        backends(c, "shop-web-80").as_deref() == Some(&["127.0.10.9:8080".to_owned()][..])
    })
    .await;

    // A burst of changes inside the debounce is one new config, the last state.
    for i in 10..15 {
        kube.apply(
            "EndpointSlice",
            slice(
                "shop",
                "web-b2",
                "web",
                8080,
                &[(&format!("127.0.10.{i}"), true, "web-9")],
            ),
        );
    }
    let Ok(cfg) = next(&mut source).await.into_desired() else {
        panic!("a config")
    };
    assert_eq!(backends(&cfg, "shop-web-80").unwrap(), ["127.0.10.14:8080"]);
    let quiet = tokio::time::timeout(Duration::from_millis(700), source.next_event()).await;
    assert!(
        quiet.is_err(),
        "one config for the burst, got another: {:?}",
        quiet.unwrap()
    );

    // Enrolment: unlabel the namespace -> its service and workloads leave the config.
    kube.apply("Namespace", namespace("shop", false));
    let cfg = wait_config(&mut source, "shop unenrolled", |c| c.services.is_empty()).await;
    assert!(cfg.workloads.is_empty(), "{:?}", workloads(&cfg));
    kube.apply("Namespace", namespace("shop", true));
    wait_config(&mut source, "shop enrolled again", |c| {
        backends(c, "shop-web-80").is_some()
    })
    .await;

    // A pod's own label enrols it in a namespace that is not: it becomes a workload, and
    // the Service it backs is in the mesh; removing the label takes both out.
    kube.apply(
        "Pod",
        pod(
            "batch",
            "jobs-0",
            json!({"app": "jobs", "sockmesh.io/mesh": "enabled"}),
        ),
    );
    let cfg = wait_config(&mut source, "jobs-0 enrolled", |c| {
        backends(c, "batch-jobs-9000").is_some()
    })
    .await;
    assert_eq!(
        backends(&cfg, "batch-jobs-9000").unwrap(),
        ["127.0.11.1:9000"]
    );
    assert!(
        workloads(&cfg).contains(&"batch-jobs-0"),
        "{:?}",
        workloads(&cfg)
    );
    kube.apply("Pod", pod("batch", "jobs-0", json!({"app": "jobs"})));
    let cfg = wait_config(&mut source, "jobs-0 out", |c| {
        backends(c, "batch-jobs-9000").is_none()
    })
    .await;
    assert!(!workloads(&cfg).contains(&"batch-jobs-0"));

    // A MeshPolicy sets lb and outlier.
    kube.apply(
        "MeshPolicy",
        policy("shop", "web", json!({"service": "web", "lb": "maglev", "outlier": {"consecutive_failures": 2, "base_ban": "1s"}})),
    );
    let cfg = wait_config(&mut source, "the policy", |c| {
        c.services.first().is_some_and(|s| s.lb == LbPolicy::Maglev)
    })
    .await;
    assert_eq!(cfg.services[0].outlier.consecutive_failures, 2);
    assert_eq!(cfg.services[0].outlier.base_ban.to_string(), "1s");

    // A refused edit: a rejection with the field path; the service keeps the last valid
    // policy, and endpoint changes keep flowing.
    kube.apply(
        "MeshPolicy",
        policy("shop", "web", json!({"service": "web", "lb": "maglev", "outlier": {"base_ban": "10s", "max_ban": "1s"}})),
    );
    match next(&mut source).await {
        SourceEvent::Rejected(e) => {
            assert_eq!(e.path.as_deref(), Some("spec.outlier.max_ban"), "{e}");
            assert!(
                e.message
                    .starts_with("MeshPolicy shop/web: spec.outlier.max_ban: "),
                "{e}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    kube.apply(
        "EndpointSlice",
        slice(
            "shop",
            "web-b2",
            "web",
            8080,
            &[("127.0.10.20", true, "web-9")],
        ),
    );
    let cfg = wait_config(&mut source, "churn after the refused policy", |c| {
        backends(c, "shop-web-80").as_deref() == Some(&["127.0.10.20:8080".to_owned()][..])
    })
    .await;
    assert_eq!(cfg.services[0].lb, LbPolicy::Maglev);
    assert_eq!(cfg.services[0].outlier.consecutive_failures, 2);

    // Deleting the policy: the defaults.
    kube.delete("MeshPolicy", "shop", "web");
    wait_config(&mut source, "policy gone", |c| {
        c.services
            .first()
            .is_some_and(|s| s.lb == LbPolicy::WeightedRandom)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refused_at_start_does_not_stop_the_first_config() {
    let kube = FakeKube::start();
    seed(&kube);
    kube.apply(
        "MeshPolicy",
        policy("shop", "web", json!({"service": "web", "lb": "fastest"})),
    );
    let mut source = source_for(&kube, Duration::from_millis(50)).await;
    let SourceEvent::Desired(cfg) = next(&mut source).await else {
        panic!("the first event must be the config, the rejection after it");
    };
    assert_eq!(
        cfg.services[0].lb,
        LbPolicy::WeightedRandom,
        "the default policy"
    );
    match next(&mut source).await {
        SourceEvent::Rejected(e) => assert_eq!(e.path.as_deref(), Some("spec.lb"), "{e}"),
        other => panic!("expected the rejection, got {other:?}"),
    }
    // Reported once: an unrelated change brings a config, not the rejection again.
    kube.apply("Pod", pod("shop", "web-7", json!({"app": "web"})));
    let cfg = wait_config(&mut source, "web-7", |c| {
        workloads(c).contains(&"shop-web-7")
    })
    .await;
    assert_eq!(cfg.services[0].lb, LbPolicy::WeightedRandom);
    // Fixed: applied.
    kube.apply(
        "MeshPolicy",
        policy("shop", "web", json!({"service": "web", "lb": "maglev"})),
    );
    wait_config(&mut source, "the fixed policy", |c| {
        c.services[0].lb == LbPolicy::Maglev
    })
    .await;
}

// ---- the sockmesh-control process ----

struct ControlProcess {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl ControlProcess {
    fn start(kube: &FakeKube) -> Self {
        let socket = kube.dir().join("control.sock");
        let log = kube.dir().join("control.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sockmesh-control"))
            .args([
                "--source",
                "kubernetes",
                "--metrics-addr",
                "127.0.0.1:0",
                "--kube-debounce-ms",
                "50",
            ])
            .arg("--listen-unix")
            .arg(&socket)
            .env("KUBECONFIG", kube.kubeconfig())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SOCKMESH_CONTROL_CONFIG")
            .env_remove("SOCKMESH_CONTROL_SOURCE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        ControlProcess { child, socket, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self) -> ControlClient {
        ControlClient::new(ControlAddress::Unix(self.socket.clone()))
    }

    /// Polls `path` until `pred` holds.
    fn wait(&mut self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last = Value::Null;
        loop {
            if let Some(code) = self.child.try_wait().unwrap() {
                panic!("sockmesh-control exited with {code}:\n{}", self.log());
            }
            if let Ok(reply) = self.client().get_json(path) {
                if pred(&reply.value) {
                    return reply.value;
                }
                last = reply.value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last {path}: {last:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn wait_snapshot(&mut self, what: &str, pred: impl Fn(&MeshConfig) -> bool) -> Value {
        self.wait("/v1/snapshot", what, |v| {
            serde_json::from_value::<MeshConfig>(v["config"].clone()).is_ok_and(|c| pred(&c))
        })
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- control log -----\n{}\n-----", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn snapshot_backends(v: &Value, service: &str) -> Option<Vec<String>> {
    v["config"]["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)
        .map(|s| {
            s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["addr"].as_str().unwrap().to_owned())
                .collect()
        })
}

#[test]
fn sockmesh_control_serves_the_cluster() {
    let kube = FakeKube::start();
    seed(&kube);
    let mut control = ControlProcess::start(&kube);

    let snap = control.wait_snapshot("the first config", |c| backends(c, "shop-web-80").is_some());
    assert_eq!(snap["version"], 1);
    assert_eq!(
        snapshot_backends(&snap, "shop-web-80").unwrap(),
        ["127.0.10.1:8080", "127.0.10.2:8080"]
    );
    assert!(
        snapshot_backends(&snap, "batch-jobs-9000").is_none(),
        "batch is not enrolled"
    );
    let status = control.wait("/v1/status", "status", |_| true);
    assert_eq!(
        status["source"],
        format!("kubernetes http://{}/", kube.addr)
    );

    // Endpoint churn reaches the served snapshot.
    kube.apply(
        "EndpointSlice",
        slice(
            "shop",
            "web-a1",
            "web",
            8080,
            &[
                ("127.0.10.1", false, "web-1"),
                ("127.0.10.2", true, "web-2"),
                ("127.0.10.5", true, "web-5"),
            ],
        ),
    );
    let snap = control.wait_snapshot("churn", |c| {
        backends(c, "shop-web-80").as_deref()
            == Some(&["127.0.10.2:8080".to_owned(), "127.0.10.5:8080".to_owned()][..])
    });
    assert!(snap["version"].as_u64().unwrap() >= 2);

    // Enrolment off and on again, by the namespace label.
    kube.apply("Namespace", namespace("shop", false));
    control.wait_snapshot("shop unenrolled", |c| {
        c.services.is_empty() && c.workloads.is_empty()
    });
    kube.apply("Namespace", namespace("shop", true));
    control.wait_snapshot("shop enrolled", |c| backends(c, "shop-web-80").is_some());
    // ... and a namespace enrolled for the first time.
    kube.apply("Namespace", namespace("batch", true));
    control.wait_snapshot("batch enrolled", |c| {
        backends(c, "batch-jobs-9000").is_some() && workloads(c).contains(&"batch-jobs-0")
    });

    // A MeshPolicy, and a refused edit of it in /v1/status.
    kube.apply(
        "MeshPolicy",
        policy(
            "shop",
            "web",
            json!({"service": "web", "lb": "round_robin", "outlier": {"consecutive_failures": 7}}),
        ),
    );
    let snap = control.wait_snapshot("the policy", |c| {
        c.services.iter().any(|s| {
            s.name == "shop-web-80"
                && s.lb == LbPolicy::RoundRobin
                && s.outlier.consecutive_failures == 7
        })
    });
    let version = snap["version"].as_u64().unwrap();
    kube.apply(
        "MeshPolicy",
        policy("shop", "web", json!({"service": "web", "lb": "fastest"})),
    );
    let status = control.wait("/v1/status", "the rejection", |s| s["rejected"] == 1);
    assert_eq!(status["last_rejection"]["path"], "spec.lb");
    assert_eq!(
        status["version"], version,
        "a refused policy makes no version"
    );
    let history = control.wait("/v1/history", "history", |_| true);
    assert_eq!(
        history["versions"][0]["origin"]["source"],
        format!("kubernetes http://{}/", kube.addr)
    );
}

#[test]
fn source_flags_are_checked() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sockmesh-control"))
            .args(args)
            .args(["--listen-unix", "/nonexistent/x.sock"])
            .env_remove("SOCKMESH_CONTROL_CONFIG")
            .env_remove("SOCKMESH_CONTROL_SOURCE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let err = run(&["--source", "kubernetes", "--config", "mesh.yaml"]);
    assert!(err.contains("--config is for the file source"), "{err}");
    let err = run(&[]);
    assert!(err.contains("--config FILE is required"), "{err}");
    let err = run(&["--source", "kubernetes", "--kube-cgroup-driver", "cgroupv3"]);
    assert!(err.contains("unknown cgroup driver"), "{err}");
    // No cluster to find: a clear error, not a hang.
    let err = {
        let out = Command::new(env!("CARGO_BIN_EXE_sockmesh-control"))
            .args([
                "--source",
                "kubernetes",
                "--listen-unix",
                "/nonexistent/x.sock",
            ])
            .env("KUBECONFIG", Path::new("/nonexistent/kubeconfig"))
            .env("HOME", "/nonexistent")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("SOCKMESH_CONTROL_SOURCE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(err.contains("connecting to Kubernetes"), "{err}");
}
