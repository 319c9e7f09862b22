//! A fake Kubernetes API server for the Kubernetes source's tests and the cluster testbed
//! (bpf-tests): the list and watch endpoints of Namespaces, Nodes, Pods, Services,
//! EndpointSlices and MeshPolicies, with the wire format of a real API server, so kube-rs
//! (the real client, through a kubeconfig) talks to it exactly as to a cluster.
//!
//! - `GET <collection>`: `{"kind": "XList", "apiVersion", "metadata": {"resourceVersion"},
//!   "items": [...]}`, every item with its own `metadata.resourceVersion`.
//! - `GET <collection>?watch=true&resourceVersion=R`: a chunked stream of newline-delimited
//!   `{"type": "ADDED|MODIFIED|DELETED", "object": {...}}`: every change after R, then the
//!   changes as the test makes them, the connection kept open. `R` absent or `0`: the
//!   current objects as ADDED first, as a real server does. `allowWatchBookmarks`,
//!   `timeoutSeconds`, `limit` and the rest are accepted and ignored.
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: a TokenReview of a token the test
//!   granted ([`FakeKube::grant_token`]): authenticated with its user and the audiences
//!   asked that it was minted for, as the API server answers; unknown tokens, or no
//!   audience in common, are `authenticated: false` with an error.
//! - A bearer token is required (401 otherwise), and every request is recorded (a token
//!   review's token never).
//!
//! Objects are hand-written JSON (this side is the fake); the server stamps `kind`,
//! `apiVersion`, `metadata.resourceVersion` and `metadata.uid`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

pub const TOKEN: &str = "fake-kube-token";

/// The collections served: (path, kind, apiVersion).
pub const RESOURCES: [(&str, &str, &str); 6] = [
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/nodes", "Node", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/services", "Service", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    (
        "/apis/sockmesh.io/v1alpha1/meshpolicies",
        "MeshPolicy",
        "sockmesh.io/v1alpha1",
    ),
];

#[derive(Clone, Debug)]
struct Change {
    kind: &'static str,
    rv: u64,
    kind_of_change: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    /// kind -> (namespace, name) -> object.
    objects: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    log: Vec<Change>,
    requests: Vec<String>,
    /// Token -> (user, audiences it was minted for).
    tokens: HashMap<String, (Value, Vec<String>)>,
    reviews: usize,
}

/// The TokenReview endpoint.
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

pub struct FakeKube {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKube {
    /// Starts the server on 127.0.0.1:0, on a runtime of its own (so sync and async tests
    /// alike can use it), and writes a kubeconfig pointing at it.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::start_on(listener)
    }

    /// [`FakeKube::start`] on a listener of the caller's (one bound inside a network namespace
    /// keeps serving there, whichever thread accepts).
    pub fn start_on(listener: std::net::TcpListener) -> Self {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let state = Arc::new(Mutex::new(State::default()));
        let (changes, _) = broadcast::channel(4096);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let (st, ch) = (state.clone(), changes.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        r = listener.accept() => r.unwrap(),
                        _ = &mut stop => break,
                    };
                    let (st, ch) = (st.clone(), ch.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let (st, ch) = (st.clone(), ch.clone());
                            async move {
                                if req.method() == hyper::Method::POST
                                    && req.uri().path() == TOKEN_REVIEWS
                                {
                                    return Ok::<_, Infallible>(review(req, &st).await);
                                }
                                Ok::<_, Infallible>(handle(req, &st, &ch))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            // Dropping the runtime ends the open watches.
        });
        let addr = addr_rx.recv().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
                 http://{addr}\nusers:\n- name: fake\n  user:\n    token: {TOKEN}\ncontexts:\n\
                 - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: \
                 default\ncurrent-context: fake\n"
            ),
        )
        .unwrap();
        FakeKube {
            addr,
            state,
            changes,
            dir,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Makes `token` one the API server knows: a TokenReview of it names `user` (a
    /// `UserInfo`: `username`, `uid`, `groups`, `extra`) when asked for one of `audiences`.
    pub fn grant_token(&self, token: &str, user: Value, audiences: &[&str]) {
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.to_owned(), (user, audiences));
    }

    /// Forgets a granted token (deleted pod, expired token).
    pub fn revoke_token(&self, token: &str) {
        self.state.lock().unwrap().tokens.remove(token);
    }

    /// How many TokenReviews were asked.
    pub fn token_reviews(&self) -> usize {
        self.state.lock().unwrap().reviews
    }

    /// A kubeconfig whose server is this fake (and a token it accepts).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates or replaces an object (ADDED or MODIFIED); `kind` is one of [`RESOURCES`]'.
    pub fn apply(&self, kind: &str, mut object: Value) {
        let (_, kind, api_version) = resource_by_kind(kind);
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let key = key_of(&object);
        let existing = st.objects.entry(kind).or_default().get(&key).cloned();
        object["kind"] = json!(kind);
        object["apiVersion"] = json!(api_version);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = match existing.as_ref() {
            Some(old) => old["metadata"]["uid"].clone(),
            None => match object["metadata"].get("uid") {
                Some(uid) => uid.clone(),
                None => {
                    st.uid += 1;
                    json!(format!("00000000-0000-0000-0000-{:012x}", st.uid))
                }
            },
        };
        object["metadata"]["uid"] = uid;
        let change = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects
            .entry(kind)
            .or_default()
            .insert(key, object.clone());
        self.record(&mut st, kind, rv, change, object);
    }

    /// Deletes an object (DELETED, with its last state).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let (_, kind, _) = resource_by_kind(kind);
        let mut st = self.state.lock().unwrap();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(mut object) = st.objects.entry(kind).or_default().remove(&key) else {
            panic!("no {kind} {namespace}/{name} to delete");
        };
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut st, kind, rv, "DELETED", object);
    }

    /// The object as stored, to edit and `apply` again.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Value {
        let (_, kind, _) = resource_by_kind(kind);
        let st = self.state.lock().unwrap();
        st.objects
            .get(kind)
            .and_then(|m| m.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"))
    }

    fn record(
        &self,
        st: &mut State,
        kind: &'static str,
        rv: u64,
        change: &'static str,
        object: Value,
    ) {
        let change = Change {
            kind,
            rv,
            kind_of_change: change,
            object,
        };
        st.log.push(change.clone());
        // Sent under the lock, so a watch that subscribes under it sees each change once.
        let _ = self.changes.send(change);
    }

    /// Every request's method, path and query, in order.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn resource_by_kind(kind: &str) -> (&'static str, &'static str, &'static str) {
    RESOURCES
        .iter()
        .copied()
        .find(|(_, k, _)| *k == kind)
        .unwrap_or_else(|| panic!("the fake serves no kind {kind}"))
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_owned(),
        meta["name"].as_str().expect("metadata.name").to_owned(),
    )
}

/// A body that is either whole or a stream of chunks (a watch).
enum FakeBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            FakeBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn reply(status: u16, body: Value) -> Response<FakeBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(FakeBody::Full(Some(Bytes::from(body.to_string()))))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<FakeBody> {
    reply(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// `POST` of a TokenReview: its status from the granted tokens.
async fn review(req: Request<Incoming>, state: &Arc<Mutex<State>>) -> Response<FakeBody> {
    use http_body_util::BodyExt;
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {TOKEN}").as_str());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status(400, "BadRequest", &e.to_string()),
    };
    let mut st = state.lock().unwrap();
    st.requests.push(format!("POST {TOKEN_REVIEWS}"));
    if !authorized {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let Ok(asked) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "not a TokenReview");
    };
    st.reviews += 1;
    let token = asked["spec"]["token"].as_str().unwrap_or("");
    let wanted: Vec<String> = asked["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let answer = match st.tokens.get(token) {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some((user, minted)) => {
            let common: Vec<&String> = wanted.iter().filter(|a| minted.contains(a)).collect();
            if common.is_empty() && !wanted.is_empty() {
                json!({"authenticated": false,
                       "error": "token audiences are invalid for the target audiences"})
            } else {
                json!({"authenticated": true, "user": user, "audiences": common})
            }
        }
    };
    reply(
        201,
        json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"creationTimestamp": null},
               "spec": {"audiences": wanted}, "status": answer}),
    )
}

fn handle(
    req: Request<Incoming>,
    state: &Arc<Mutex<State>>,
    changes: &broadcast::Sender<Change>,
) -> Response<FakeBody> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    state
        .lock()
        .unwrap()
        .requests
        .push(format!("{} {}", req.method(), req.uri()));
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {TOKEN}").as_str());
    if !authorized {
        return status(401, "Unauthorized", "Unauthorized");
    }
    if req.method() != hyper::Method::GET {
        return status(405, "MethodNotAllowed", "the fake only lists and watches");
    }
    let Some((_, kind, api_version)) = RESOURCES.iter().copied().find(|(p, _, _)| *p == path)
    else {
        return status(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
    };
    let st = state.lock().unwrap();
    if query.get("watch").map(String::as_str) != Some("true") {
        let items: Vec<Value> = st
            .objects
            .get(kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        return reply(
            200,
            json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                   "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        );
    }
    // A watch: the backlog after `resourceVersion`, then live changes. Subscribing and
    // reading the backlog under the lock that `record` sends under: nothing lost or doubled.
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut live = changes.subscribe();
    let backlog: Vec<(&'static str, Value)> = if since == 0 {
        st.objects
            .get(kind)
            .map(|m| m.values().map(|o| ("ADDED", o.clone())).collect())
            .unwrap_or_default()
    } else {
        st.log
            .iter()
            .filter(|c| c.kind == kind && c.rv > since)
            .map(|c| (c.kind_of_change, c.object.clone()))
            .collect()
    };
    drop(st);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let line = |change: &str, object: &Value| {
        let mut text = json!({"type": change, "object": object}).to_string();
        text.push('\n');
        Bytes::from(text)
    };
    tokio::spawn(async move {
        for (change, object) in backlog {
            if tx.send(line(change, &object)).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(c) if c.kind == kind => {
                    if tx.send(line(c.kind_of_change, &c.object)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Too slow to follow: end the watch; the client lists again.
                Err(_) => return,
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(FakeBody::Stream(rx))
        .unwrap()
}
