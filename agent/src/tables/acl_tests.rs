//! The kernel's access list (`SM_ACL`) from `allowed_callers`: names and identity selectors
//! resolve, through the model's `admitted_workloads`, to this node's workloads, keyed as the
//! caller map numbers them (workload index + 1 in the node's config).

use std::collections::BTreeSet;

use sockmesh_common::{ServiceCaller, SERVICE_ACL};
use sockmesh_model::{
    BackendSpec, CallerSelector, CallerSpec, LbPolicy, MeshConfig, ServiceSpec, WorkloadSpec,
    NAMESPACE_LABEL, SERVICE_ACCOUNT_LABEL,
};

use super::{
    overlay::Overlay,
    plan::{plan, KernelState, Write},
};

fn service(name: &str, vip: &str, callers: Option<Vec<CallerSpec>>) -> ServiceSpec {
    let mut s = ServiceSpec::new(
        name,
        vip.parse().unwrap(),
        80,
        LbPolicy::RoundRobin,
        vec![BackendSpec::new("127.0.0.2:81".parse().unwrap(), 1)],
    );
    s.allowed_callers = callers;
    s
}

/// A pod-like workload: namespace, service account, app label, node.
fn pod(name: &str, ns: &str, sa: &str, app: &str, node: Option<&str>) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        cgroup: format!("kubepods/{name}"),
        labels: [
            (NAMESPACE_LABEL, ns),
            (SERVICE_ACCOUNT_LABEL, sa),
            ("app", app),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        priority: Default::default(),
        zone: None,
        node: node.map(str::to_owned),
    }
}

fn selector(ns: Option<&str>, sa: Option<&str>, app: Option<&str>) -> CallerSpec {
    CallerSpec::Selector(CallerSelector {
        namespace: ns.map(str::to_owned),
        service_account: sa.map(str::to_owned),
        labels: app
            .map(|a| ("app".to_owned(), a.to_owned()))
            .into_iter()
            .collect(),
    })
}

fn mesh(services: Vec<ServiceSpec>, workloads: Vec<WorkloadSpec>) -> MeshConfig {
    let cfg = MeshConfig {
        version: 1,
        services,
        workloads,
        enrollment: Default::default(),
    };
    cfg.validate().unwrap();
    cfg
}

/// Plans `cfg` onto `state`, applies it, and returns the writes.
fn apply(cfg: &MeshConfig, state: &mut KernelState) -> Vec<Write> {
    let p = plan(cfg, &Overlay::new(), state).unwrap();
    for w in &p.writes {
        state.apply(w);
    }
    p.writes
}

/// The (service name, workload name) pairs the access list admits.
fn admitted(cfg: &MeshConfig, state: &KernelState) -> BTreeSet<(String, String)> {
    state
        .acl
        .iter()
        .map(|k| {
            let svc = cfg
                .services
                .iter()
                .find(|s| {
                    state
                        .services
                        .get(&super::addr::service_key(s.vip, s.port))
                        .is_some_and(|e| e.id == k.service_id)
                })
                .expect("ACL entry of a planned service");
            let w = &cfg.workloads[k.workload as usize - 1];
            (svc.name.clone(), w.name.clone())
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(s, w)| (s.to_string(), w.to_string()))
        .collect()
}

fn shop_pods() -> Vec<WorkloadSpec> {
    vec![
        pod("shop-front-1", "shop", "default", "frontend", None),
        pod("shop-web-1", "shop", "web", "web", None),
        pod("jobs-nightly-1", "jobs", "batch", "report", None),
        pod("jobs-adhoc-1", "jobs", "default", "report", None),
        pod("staging-front-1", "staging", "default", "frontend", None),
    ]
}

#[test]
fn names_and_selectors_compile_to_the_workloads_they_admit() {
    let cfg = mesh(
        vec![
            // Label + namespace, service account + namespace, and a name.
            service(
                "checkout",
                "127.100.0.1",
                Some(vec![
                    selector(Some("shop"), None, Some("frontend")),
                    selector(Some("jobs"), Some("batch"), None),
                    "shop-web-1".into(),
                ]),
            ),
            // A whole namespace.
            service(
                "jobs-api",
                "127.100.0.2",
                Some(vec![selector(Some("jobs"), None, None)]),
            ),
            // Nobody matches: enforced, and empty.
            service(
                "vault",
                "127.100.0.3",
                Some(vec![selector(None, Some("root"), None)]),
            ),
            service("open", "127.100.0.4", None),
        ],
        shop_pods(),
    );
    let mut state = KernelState::default();
    apply(&cfg, &mut state);
    assert_eq!(
        admitted(&cfg, &state),
        pairs(&[
            ("checkout", "shop-front-1"),
            ("checkout", "jobs-nightly-1"),
            ("checkout", "shop-web-1"),
            ("jobs-api", "jobs-nightly-1"),
            ("jobs-api", "jobs-adhoc-1"),
        ])
    );
    let flags = |name: &str| {
        let s = cfg.services.iter().find(|s| s.name == name).unwrap();
        state.services[&super::addr::service_key(s.vip, s.port)].flags & SERVICE_ACL
    };
    assert_eq!(
        flags("vault"),
        SERVICE_ACL,
        "a list that admits nobody still guards"
    );
    assert_eq!(flags("checkout"), SERVICE_ACL);
    assert_eq!(flags("open"), 0);
    // The same config again writes nothing.
    assert!(plan(&cfg, &Overlay::new(), &state)
        .unwrap()
        .writes
        .is_empty());
}

#[test]
fn a_pod_that_comes_or_goes_changes_only_its_own_entries() {
    let callers = Some(vec![selector(Some("shop"), None, Some("frontend"))]);
    let mut cfg = mesh(
        vec![service("checkout", "127.100.0.1", callers)],
        shop_pods(),
    );
    let mut state = KernelState::default();
    apply(&cfg, &mut state);
    assert_eq!(
        admitted(&cfg, &state),
        pairs(&[("checkout", "shop-front-1")])
    );

    // A second frontend pod appears (at the end, so the others keep their numbers).
    cfg.workloads
        .push(pod("shop-front-2", "shop", "default", "frontend", None));
    let writes = apply(&cfg, &mut state);
    assert_eq!(
        writes,
        [Write::UpsertAcl(ServiceCaller {
            service_id: state.acl.iter().next().unwrap().service_id,
            workload: 6,
        })]
    );
    assert_eq!(
        admitted(&cfg, &state),
        pairs(&[("checkout", "shop-front-1"), ("checkout", "shop-front-2")])
    );

    // Relabelled away from the selector: its entry goes, nothing else is written.
    cfg.workloads[5].labels.insert("app".into(), "debug".into());
    let writes = apply(&cfg, &mut state);
    assert!(
        writes
            .iter()
            .all(|w| matches!(w, Write::DeleteAcl(k) if k.workload == 6))
            && writes.len() == 1,
        "{writes:?}"
    );
    assert_eq!(
        admitted(&cfg, &state),
        pairs(&[("checkout", "shop-front-1")])
    );
}

#[test]
fn on_a_node_selectors_admit_its_own_workloads_only() {
    let workloads = vec![
        pod(
            "shop-front-a",
            "shop",
            "default",
            "frontend",
            Some("node-a"),
        ),
        pod(
            "shop-front-b",
            "shop",
            "default",
            "frontend",
            Some("node-b"),
        ),
        pod("jobs-batch-b", "jobs", "batch", "report", Some("node-b")),
        pod("jobs-batch-a", "jobs", "batch", "report", Some("node-a")),
    ];
    let cfg = mesh(
        vec![service(
            "checkout",
            "127.100.0.1",
            Some(vec![
                selector(Some("shop"), None, Some("frontend")),
                selector(None, Some("batch"), None),
                // A name of node-b's workload: dropped on node-a with it.
                "jobs-batch-b".into(),
            ]),
        )],
        workloads,
    );
    for (node, expected) in [
        ("node-a", ["shop-front-a", "jobs-batch-a"]),
        ("node-b", ["shop-front-b", "jobs-batch-b"]),
    ] {
        let local = cfg.clone().into_node(node);
        local.validate().unwrap();
        let mut state = KernelState::default();
        apply(&local, &mut state);
        // Numbered within the node's config, as its caller map is.
        assert!(state
            .acl
            .iter()
            .all(|k| (k.workload as usize) <= local.workloads.len()));
        let want: Vec<(&str, &str)> = expected.iter().map(|w| ("checkout", *w)).collect();
        assert_eq!(admitted(&local, &state), pairs(&want), "{node}");
    }
}
