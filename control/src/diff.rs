//! How one desired state differs from the one before it, and the per-service versions that
//! follow from that: a service keeps its version while its spec stays the same and takes
//! the new global version when it changes (or first appears).

use std::collections::{BTreeMap, HashMap, HashSet};

use sockmesh_model::protocol::Changes;
use sockmesh_model::{MeshConfig, ServiceSpec};

/// The changes from `old` to `new`, and the per-service versions of `new` made at global
/// version `version`. `old` is the previous revision's config and service versions, `None`
/// for the first revision (every service is then added, at `version`).
pub fn diff(
    old: Option<(&MeshConfig, &BTreeMap<String, u64>)>,
    new: &MeshConfig,
    version: u64,
) -> (Changes, BTreeMap<String, u64>) {
    let Some((old, old_versions)) = old else {
        let changes = Changes {
            added: new.services.iter().map(|s| s.name.clone()).collect(),
            workloads: !new.workloads.is_empty(),
            ..Changes::default()
        };
        let versions = new
            .services
            .iter()
            .map(|s| (s.name.clone(), version))
            .collect();
        return (changes, versions);
    };
    let before: HashMap<&str, &ServiceSpec> =
        old.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut changes = Changes::default();
    let mut versions = BTreeMap::new();
    for service in &new.services {
        let kept = match before.get(service.name.as_str()) {
            None => {
                changes.added.push(service.name.clone());
                None
            }
            Some(&previous) if previous != service => {
                changes.changed.push(service.name.clone());
                None
            }
            Some(_) => old_versions.get(&service.name).copied(),
        };
        versions.insert(service.name.clone(), kept.unwrap_or(version));
    }
    let after: HashMap<&str, ()> = new.services.iter().map(|s| (s.name.as_str(), ())).collect();
    changes.removed = old
        .services
        .iter()
        .filter(|s| !after.contains_key(s.name.as_str()))
        .map(|s| s.name.clone())
        .collect();
    changes.workloads = old.workloads != new.workloads;
    let same_set = changes.added.is_empty() && changes.removed.is_empty();
    let reordered = same_set
        && old
            .services
            .iter()
            .zip(&new.services)
            .any(|(a, b)| a.name != b.name);
    changes.other = reordered || top_level_differs(old, new);
    (changes, versions)
}

/// [`diff`] from a config the source patched: only the services in `touched` (at least
/// every service that differs) are compared, the others keep their versions; `workloads`:
/// the workloads may differ. Nothing else may differ (the source's [`Patch`] says so).
///
/// [`Patch`]: sockmesh_model::Patch
pub fn diff_touched(
    old: (&MeshConfig, &BTreeMap<String, u64>),
    new: &MeshConfig,
    touched: &[String],
    workloads: bool,
    version: u64,
) -> (Changes, BTreeMap<String, u64>) {
    let (old, old_versions) = old;
    let touched: HashSet<&str> = touched.iter().map(String::as_str).collect();
    let before: HashMap<&str, &ServiceSpec> = old
        .services
        .iter()
        .filter(|s| touched.contains(s.name.as_str()))
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut changes = Changes::default();
    let mut versions = old_versions.clone();
    let mut after = HashSet::new();
    for service in new
        .services
        .iter()
        .filter(|s| touched.contains(s.name.as_str()))
    {
        after.insert(service.name.as_str());
        match before.get(service.name.as_str()) {
            None => changes.added.push(service.name.clone()),
            Some(&previous) if previous != service => changes.changed.push(service.name.clone()),
            Some(_) => continue,
        }
        versions.insert(service.name.clone(), version);
    }
    for service in old
        .services
        .iter()
        .filter(|s| before.contains_key(s.name.as_str()) && !after.contains(s.name.as_str()))
    {
        changes.removed.push(service.name.clone());
        versions.remove(&service.name);
    }
    changes.workloads = workloads && old.workloads != new.workloads;
    (changes, versions)
}

/// Whether anything in the configs but their services and workloads differs. Every field
/// by name, so a new top-level field of the model does not compile until it is listed here
/// (a JSON comparison did that without a list, at the cost of serializing both whole
/// configs: 300 ms per version at 10,000 services).
fn top_level_differs(old: &MeshConfig, new: &MeshConfig) -> bool {
    let MeshConfig {
        version,
        services: _,
        workloads: _,
        enrollment,
    } = old;
    *version != new.version || *enrollment != new.enrollment
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmesh_model::parse_config;

    fn mesh(services: &[(&str, u8, u32)]) -> MeshConfig {
        let mut y = String::from("services:\n");
        for (name, vip, weight) in services {
            y.push_str(&format!(
                "  - name: {name}\n    vip: 127.100.0.{vip}\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n        weight: {weight}\n"
            ));
        }
        parse_config(&y).unwrap()
    }

    #[test]
    fn first_revision_adds_everything_at_its_version() {
        let cfg = mesh(&[("a", 1, 1), ("b", 2, 1)]);
        let (changes, versions) = diff(None, &cfg, 1);
        assert_eq!(changes.added, ["a", "b"]);
        assert!(changes.removed.is_empty() && changes.changed.is_empty());
        assert_eq!(versions, BTreeMap::from([("a".into(), 1), ("b".into(), 1)]));
    }

    #[test]
    fn only_changed_and_added_services_take_the_new_version() {
        let v1 = mesh(&[("a", 1, 1), ("b", 2, 1), ("c", 3, 1)]);
        let (_, s1) = diff(None, &v1, 1);
        let v2 = mesh(&[("a", 1, 1), ("b", 2, 5), ("d", 4, 1)]);
        let (changes, s2) = diff(Some((&v1, &s1)), &v2, 2);
        assert_eq!(changes.added, ["d"]);
        assert_eq!(changes.changed, ["b"]);
        assert_eq!(changes.removed, ["c"]);
        assert!(!changes.workloads && !changes.other);
        assert_eq!(
            s2,
            BTreeMap::from([("a".into(), 1), ("b".into(), 2), ("d".into(), 2)])
        );
        // Unchanged services keep their version across further revisions.
        let v3 = mesh(&[("a", 1, 1), ("b", 2, 6), ("d", 4, 1)]);
        let (_, s3) = diff(Some((&v2, &s2)), &v3, 3);
        assert_eq!(s3["a"], 1);
        assert_eq!(s3["b"], 3);
        assert_eq!(s3["d"], 2);
    }

    #[test]
    fn a_reorder_is_other_and_keeps_every_service_version() {
        let v1 = mesh(&[("a", 1, 1), ("b", 2, 1)]);
        let (_, s1) = diff(None, &v1, 1);
        let v2 = mesh(&[("b", 2, 1), ("a", 1, 1)]);
        let (changes, s2) = diff(Some((&v1, &s1)), &v2, 2);
        assert!(changes.added.is_empty() && changes.changed.is_empty());
        assert!(changes.other, "{changes:?}");
        assert_eq!(s2, s1);
    }

    /// For any patch, the touched-only diff is the whole diff.
    #[test]
    fn a_touched_diff_equals_the_whole_diff() {
        let v1 = mesh(&[("a", 1, 1), ("b", 2, 1), ("c", 3, 1), ("d", 4, 1)]);
        let (_, s1) = diff(None, &v1, 1);
        type Services<'a> = &'a [(&'a str, u8, u32)];
        let cases: [(Services, &[&str]); 5] = [
            (
                &[("a", 1, 1), ("b", 2, 5), ("c", 3, 1), ("d", 4, 1)],
                &["b"],
            ),
            (
                &[("a", 1, 1), ("b", 2, 5), ("c", 3, 1), ("d", 4, 1)],
                &["b", "c", "x"],
            ),
            (&[("a", 1, 1), ("c", 3, 1), ("d", 4, 1)], &["b"]),
            (
                &[
                    ("a", 1, 1),
                    ("b", 2, 1),
                    ("e", 5, 1),
                    ("c", 3, 1),
                    ("d", 4, 2),
                ],
                &["e", "d"],
            ),
            (
                &[("a", 1, 1), ("b", 2, 1), ("c", 3, 1), ("d", 4, 1)],
                &["a", "d"],
            ),
        ];
        for (services, touched) in cases {
            let v2 = mesh(services);
            let touched: Vec<String> = touched.iter().map(|s| s.to_string()).collect();
            let whole = diff(Some((&v1, &s1)), &v2, 2);
            let patched = diff_touched((&v1, &s1), &v2, &touched, false, 2);
            assert_eq!(patched.1, whole.1, "{touched:?}");
            let sorted = |mut v: Vec<String>| {
                v.sort();
                v
            };
            assert_eq!(
                sorted(patched.0.added.clone()),
                sorted(whole.0.added.clone())
            );
            assert_eq!(
                sorted(patched.0.changed.clone()),
                sorted(whole.0.changed.clone())
            );
            assert_eq!(
                sorted(patched.0.removed.clone()),
                sorted(whole.0.removed.clone())
            );
            assert_eq!(patched.0.other, whole.0.other);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// The delta made from a diff's names equals the delta found by comparing the
        /// whole configs: adds, removes, reweighs, reorders and workload edits at random.
        #[test]
        fn a_delta_from_the_diff_equals_the_whole_delta(
            old in proptest::collection::vec((0u8..12, 1u32..4), 0..10),
            new in proptest::collection::vec((0u8..12, 1u32..4), 0..10),
            old_workloads in proptest::prelude::any::<bool>(),
            new_workloads in proptest::prelude::any::<bool>(),
        ) {
            let config = |entries: &[(u8, u32)], workloads: bool| {
                let mut seen = std::collections::HashSet::new();
                let services: Vec<(String, u8, u32)> = entries
                    .iter()
                    .filter(|(i, _)| seen.insert(*i))
                    .map(|(i, w)| (format!("s{i}"), i + 1, *w))
                    .collect();
                let named: Vec<(&str, u8, u32)> =
                    services.iter().map(|(n, v, w)| (n.as_str(), *v, *w)).collect();
                let mut cfg = mesh(&named);
                if workloads {
                    cfg.workloads = parse_config("services: []\nworkloads:\n  - name: w\n    cgroup: x/w\n")
                        .unwrap()
                        .workloads;
                }
                cfg
            };
            let (a, b) = (config(&old, old_workloads), config(&new, new_workloads));
            let (_, versions) = diff(None, &a, 1);
            let (c, _) = diff(Some((&a, &versions)), &b, 2);
            let known = sockmesh_model::ConfigDelta::between_known(
                &a, &b, &c.added, &c.changed, &c.removed, c.workloads,
            );
            proptest::prop_assert_eq!(known, sockmesh_model::ConfigDelta::between(&a, &b));
        }
    }

    #[test]
    fn workloads_are_reported() {
        let v1 = mesh(&[("a", 1, 1)]);
        let (_, s1) = diff(None, &v1, 1);
        let mut v2 = v1.clone();
        v2.workloads = parse_config("services: []\nworkloads:\n  - name: w\n    cgroup: x/w\n")
            .unwrap()
            .workloads;
        let (changes, s2) = diff(Some((&v1, &s1)), &v2, 2);
        assert!(changes.workloads && !changes.other);
        assert_eq!(s2, s1);
    }
}
