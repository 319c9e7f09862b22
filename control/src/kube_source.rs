//! The Kubernetes source (`sockmesh-control --source kubernetes`, feature `kubernetes`):
//! watches Namespaces, Nodes, Services, EndpointSlices, Pods and MeshPolicies with kube-rs
//! (`watcher` + `reflector`: list, then watch from the list's resourceVersion, relist on
//! `410 Gone`, backoff on errors) and turns what they hold into a [`MeshConfig`](sockmesh_model::MeshConfig) with the
//! pure rules of [`map`] (docs/control-plane.md, "Kubernetes source").
//!
//! ```text
//! 6 watch tasks ──> reflector stores ──(change counter)──> KubeSource::next_event
//!      └──(which Services, EndpointSlices changed)──┘       debounce, then map
//!                                                           (only the Services touched, or the
//!                                                           whole cluster: map::ServiceCache),
//!                                                           validate
//!                                                           -> Rejected (each new refusal)
//!                                                           -> Desired (when the config changed)
//! ```
//!
//! The first event waits until every watch has listed once, so the first config is the
//! whole cluster, never a half-listed one. Later changes are debounced: a rollout that
//! touches a hundred endpoints becomes a few versions, not a hundred. When only Services,
//! EndpointSlices, Pods and Nodes changed, only the Services they touch are mapped again
//! (the workloads are made again from the pods), so a rebuild costs the change, not the
//! cluster; a Namespace or MeshPolicy change, or a relist, maps everything.

pub mod crd;
pub mod map;
pub mod rebuild;

#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod map_tests;
#[cfg(test)]
mod workload_tests;

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::source::{Source, SourceEvent};

pub use crd::MeshPolicy;
pub use map::{CgroupDriver, MapOptions, ServiceChange};
pub use rebuild::Rebuild;

/// How the source behaves; the binary fills it from flags.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Quiet time after a Service, EndpointSlice, Pod or Node change before the config is
    /// rebuilt (further changes restart it). Default 25 ms: such a rebuild maps only the
    /// Services touched (about 5 ms for one EndpointSlice at 10,000 Services, most of it the
    /// copy of the config handed to the hub), so the wait is for what arrives together (a
    /// dual-stack Service's IPv4 and IPv6 slices, a pod's readiness and its slice), not for
    /// the rebuild's cost; continuous churn costs at most one such rebuild per 25 ms.
    pub debounce: Duration,
    /// The quiet time when the changes need the whole cluster mapped again (a Namespace or
    /// MeshPolicy changed, or a watch relisted): about 100 ms at 10,000 Services, so it
    /// stays 200 ms. Never shorter than `debounce`.
    pub whole_debounce: Duration,
    /// A rebuild happens at the latest this long after the first change of a burst, even if
    /// changes keep coming.
    pub max_delay: Duration,
    pub map: MapOptions,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            debounce: Duration::from_millis(25),
            whole_debounce: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            map: MapOptions::default(),
        }
    }
}

impl KubeOptions {
    /// The quiet time before a rebuild, given whether the changes so far need the whole
    /// cluster mapped again.
    pub fn quiet_time(&self, whole: bool) -> Duration {
        if whole {
            self.whole_debounce.max(self.debounce)
        } else {
            self.debounce
        }
    }
}

/// The reflector stores the watches fill.
#[derive(Clone)]
struct Stores {
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    policies: Store<MeshPolicy>,
}

impl Stores {
    fn snapshot(&self) -> map::Snapshot {
        map::Snapshot {
            namespaces: self.namespaces.state(),
            nodes: self.nodes.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            pods: self.pods.state(),
            policies: self.policies.state(),
        }
    }

    /// What the workloads are made of: Namespaces, Nodes, Pods.
    fn workload_snapshot(&self) -> map::Snapshot {
        map::Snapshot {
            namespaces: self.namespaces.state(),
            nodes: self.nodes.state(),
            pods: self.pods.state(),
            ..map::Snapshot::default()
        }
    }

    /// Waits until every watch has listed once. Errs when a watch task ended.
    async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.namespaces.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.policies.wait_until_ready().await
    }
}

/// What changed since the last rebuild, as the watch tasks saw it.
#[derive(Debug, Default)]
struct Changed {
    /// Something only a whole build covers: a Namespace or MeshPolicy event, or a (re)list
    /// of any collection.
    whole: bool,
    /// `namespace/name` of the Services, EndpointSlices and Pods added, modified or deleted.
    services: BTreeSet<String>,
    slices: BTreeSet<String>,
    pods: BTreeSet<String>,
    /// A Node changed (its zone is its pods' workloads').
    nodes: bool,
}

/// Which part of [`Changed`] a watch's events go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Services,
    EndpointSlices,
    Pods,
    Nodes,
    /// Everything else: any event needs a whole build.
    Other,
}

/// A [`Source`] fed by the Kubernetes API.
pub struct KubeSource {
    name: String,
    opts: KubeOptions,
    stores: Stores,
    /// Bumped by the watch tasks on every event, after noting it in `changed`.
    changes: watch::Receiver<u64>,
    changed: Arc<Mutex<Changed>>,
    tasks: Vec<JoinHandle<()>>,
    rebuild: Rebuild,
    pending: VecDeque<SourceEvent>,
    started: bool,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("name", &self.name)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// Starts the watches (on the current tokio runtime) with `client`; `name` is what
    /// [`Source::describe`] says (`kubernetes https://127.100.200.1:443`). Cheap: the first
    /// [`Source::next_event`] waits for the first lists.
    pub fn start(client: Client, name: String, opts: KubeOptions) -> Self {
        let (tx, changes) = watch::channel(0u64);
        let changed = Arc::new(Mutex::new(Changed::default()));
        let tx = Watchers {
            changes: Arc::new(tx),
            changed: changed.clone(),
        };
        let mut tasks = Vec::new();
        let stores = Stores {
            namespaces: spawn_watch(Api::all(client.clone()), "namespaces", &tx, &mut tasks),
            // Only the zone label is read: status (images, conditions, heartbeats every 10 s
            // or so) is dropped before the store.
            nodes: spawn_watch_trimmed(
                Api::all(client.clone()),
                "nodes",
                Collection::Nodes,
                &tx,
                &mut tasks,
                |n: &mut Node| {
                    n.status = None;
                    n.spec = None;
                },
            ),
            services: spawn_watch_trimmed(
                Api::all(client.clone()),
                "services",
                Collection::Services,
                &tx,
                &mut tasks,
                |_| {},
            ),
            slices: spawn_watch_trimmed(
                Api::all(client.clone()),
                "endpointslices",
                Collection::EndpointSlices,
                &tx,
                &mut tasks,
                |_| {},
            ),
            pods: spawn_watch_trimmed(
                Api::all(client.clone()),
                "pods",
                Collection::Pods,
                &tx,
                &mut tasks,
                |_| {},
            ),
            policies: spawn_watch(Api::all(client), "meshpolicies", &tx, &mut tasks),
        };
        KubeSource {
            name,
            opts,
            stores,
            changes,
            changed,
            tasks,
            rebuild: Rebuild::default(),
            pending: VecDeque::new(),
            started: false,
        }
    }

    /// [`KubeSource::start`] with kube's default configuration: in a pod, its service
    /// account; elsewhere `KUBECONFIG` or `~/.kube/config` (what kubectl would use).
    pub async fn from_default_config(opts: KubeOptions) -> Result<Self, kube::Error> {
        let config = kube::Config::infer()
            .await
            .map_err(kube::Error::InferConfig)?;
        let name = format!("kubernetes {}", config.cluster_url);
        let client = Client::try_from(config)?;
        Ok(Self::start(client, name, opts))
    }

    /// Waits for the first lists, then for a change and the debounce.
    async fn wait_for_change(&mut self) {
        if !self.started {
            let waiting = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tokio::select! {
                    r = self.stores.ready() => {
                        if r.is_err() {
                            // Only when the tasks are gone (the runtime is shutting down).
                            std::future::pending::<()>().await;
                        }
                        break;
                    }
                    _ = tick.tick() => warn!(
                        waited_s = waiting.elapsed().as_secs(),
                        "kubernetes source: still waiting for the first lists (see the watch \
                         errors above: RBAC, the MeshPolicy CRD, the API server address)"
                    ),
                }
            }
            self.started = true;
            info!(
                namespaces = self.stores.namespaces.len(),
                services = self.stores.services.len(),
                endpointslices = self.stores.slices.len(),
                pods = self.stores.pods.len(),
                meshpolicies = self.stores.policies.len(),
                "kubernetes source: listed"
            );
            self.changes.borrow_and_update();
            return;
        }
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let latest = tokio::time::Instant::now() + self.opts.max_delay;
        loop {
            let whole = self
                .changed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .whole;
            let quiet = tokio::time::sleep(self.opts.quiet_time(whole));
            tokio::select! {
                r = self.changes.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
                _ = quiet => break,
                _ = tokio::time::sleep_until(latest) => break,
            }
        }
        self.changes.borrow_and_update();
    }

    /// Builds the config of the stores now (only the Services touched since the last time,
    /// when nothing else changed); queues what is new.
    fn rebuild(&mut self) {
        // Taken before the stores are read: an event after this is noted for the next
        // rebuild (its object may already be read now, which is harmless).
        let changed =
            std::mem::take(&mut *self.changed.lock().unwrap_or_else(PoisonError::into_inner));
        let events = if changed.whole {
            None
        } else {
            let services = changed.services.into_iter().map(|key| {
                let now = self.stores.services.get(&object_ref(&key));
                ServiceChange::Service(key, now)
            });
            let slices = changed.slices.into_iter().map(|key| {
                let now = self.stores.slices.get(&object_ref(&key));
                ServiceChange::EndpointSlice(key, now)
            });
            let workloads = !changed.pods.is_empty() || changed.nodes;
            let pods = changed.pods.into_iter().map(|key| {
                let now = self.stores.pods.get(&object_ref(&key));
                ServiceChange::Pod(key, now)
            });
            let changes = services.chain(slices).chain(pods).collect();
            let from = workloads.then(|| self.stores.workload_snapshot());
            self.rebuild
                .run_changes(changes, from.as_ref(), &self.opts.map)
        };
        let events =
            events.unwrap_or_else(|| self.rebuild.run(&self.stores.snapshot(), &self.opts.map));
        self.pending.extend(events);
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Source for KubeSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = SourceEvent> + Send + '_>> {
        Box::pin(async move {
            loop {
                if let Some(event) = self.pending.pop_front() {
                    return event;
                }
                self.wait_for_change().await;
                self.rebuild();
            }
        })
    }
}

/// The reference of a `namespace/name` key in a store.
fn object_ref<K: Resource<DynamicType = ()>>(key: &str) -> ObjectRef<K> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let r = ObjectRef::new(name);
    if ns.is_empty() {
        r
    } else {
        r.within(ns)
    }
}

/// Where the watch tasks report: which objects changed, then the counter that wakes the
/// source.
#[derive(Clone)]
struct Watchers {
    changes: Arc<watch::Sender<u64>>,
    changed: Arc<Mutex<Changed>>,
}

impl Watchers {
    fn note<K: Resource>(&self, collection: Collection, event: &watcher::Event<K>) {
        let key = match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                let meta = o.meta();
                Some(format!(
                    "{}/{}",
                    meta.namespace.as_deref().unwrap_or(""),
                    meta.name.as_deref().unwrap_or("")
                ))
            }
            watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => None,
        };
        let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
        changed.note(collection, key);
        drop(changed);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Changed {
    /// Notes one watch event of `collection`: the object's `namespace/name`, or `None` for
    /// a (re)list, which only a whole build covers.
    fn note(&mut self, collection: Collection, key: Option<String>) {
        match (collection, key) {
            (Collection::Services, Some(key)) => {
                self.services.insert(key);
            }
            (Collection::EndpointSlices, Some(key)) => {
                self.slices.insert(key);
            }
            (Collection::Pods, Some(key)) => {
                self.pods.insert(key);
            }
            (Collection::Nodes, Some(_)) => self.nodes = true,
            (Collection::Other, _) | (_, None) => self.whole = true,
        }
    }
}

/// Spawns a watch of `api` into a new store; every event is noted in `watchers`. Errors are
/// logged and retried with kube's default backoff (the watcher relists when it must).
fn spawn_watch<K>(
    api: Api<K>,
    what: &'static str,
    watchers: &Watchers,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    spawn_watch_trimmed(api, what, Collection::Other, watchers, tasks, |_| {})
}

/// [`spawn_watch`] that also drops what `trim` clears from each object before it is stored.
fn spawn_watch_trimmed<K>(
    api: Api<K>,
    what: &'static str,
    collection: Collection,
    watchers: &Watchers,
    tasks: &mut Vec<JoinHandle<()>>,
    trim: fn(&mut K),
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        // Nobody reads them, and on a busy cluster they are most of an object's bytes.
        .modify(move |o: &mut K| {
            o.managed_fields_mut().clear();
            trim(o);
        });
    let stream = reflector::reflector(writer, stream);
    let watchers = watchers.clone();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if failing {
                        info!(resource = what, "kubernetes source: watch recovered");
                        failing = false;
                    }
                    watchers.note(collection, &event);
                }
                Err(e) => {
                    warn!(resource = what, error = %e, "kubernetes source: watch failed, retrying");
                    failing = true;
                }
            }
        }
    }));
    reader
}

#[cfg(test)]
mod tests {
    use super::{Changed, Collection, KubeOptions};
    use std::time::Duration;

    #[test]
    fn events_are_noted_by_collection_and_relists_need_a_whole_build() {
        let mut changed = Changed::default();
        changed.note(Collection::Services, Some("a/web".into()));
        changed.note(Collection::EndpointSlices, Some("a/web-1".into()));
        changed.note(Collection::Pods, Some("a/web-0".into()));
        assert!(!changed.whole && !changed.nodes);
        changed.note(Collection::Nodes, Some("/node-a".into()));
        assert!(changed.nodes && !changed.whole);
        assert_eq!(changed.services.iter().collect::<Vec<_>>(), ["a/web"]);
        assert_eq!(changed.slices.iter().collect::<Vec<_>>(), ["a/web-1"]);
        assert_eq!(changed.pods.iter().collect::<Vec<_>>(), ["a/web-0"]);
        for (collection, key) in [
            (Collection::Other, Some("a".to_owned())),
            (Collection::Pods, None),
            (Collection::EndpointSlices, None),
        ] {
            let mut changed = Changed::default();
            changed.note(collection, key);
            assert!(changed.whole, "{collection:?}");
        }
    }

    #[test]
    fn only_a_whole_rebuild_waits_the_long_quiet_time() {
        let opts = KubeOptions::default();
        assert_eq!(opts.quiet_time(false), Duration::from_millis(25));
        assert_eq!(opts.quiet_time(true), Duration::from_millis(200));
        let slow = KubeOptions {
            debounce: Duration::from_millis(300),
            ..KubeOptions::default()
        };
        assert_eq!(slow.quiet_time(false), Duration::from_millis(300));
        assert_eq!(
            slow.quiet_time(true),
            Duration::from_millis(300),
            "never shorter"
        );
    }

    /// In a cluster the API server is https: the rustls (ring) stack must build a client and
    /// fail a connection cleanly (the fake API server of the tests is plain http).
    #[tokio::test]
    async fn an_https_client_builds_and_fails_cleanly() {
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).expect("a TLS client");
        let err = client.apiserver_version().await.unwrap_err();
        assert!(!err.to_string().is_empty());
    }
}
