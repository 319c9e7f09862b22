use proptest::prelude::*;

use super::*;
use sockmesh_model::parse_config;

fn mesh(weights: &[u32]) -> MeshConfig {
    let mut y = String::from("services:\n");
    for (i, w) in weights.iter().enumerate() {
        y.push_str(&format!(
            "  - name: s{i}\n    vip: 127.100.0.{}\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n        weight: {w}\n",
            i + 1
        ));
    }
    parse_config(&y).unwrap()
}

fn source() -> Origin {
    Origin::Source {
        source: "file test.yaml".into(),
    }
}

fn new_version(commit: Commit) -> u64 {
    match commit {
        Commit::New { revision, .. } => revision.version,
        Commit::Unchanged(r) => panic!("expected a new version, head stayed {}", r.version),
    }
}

#[test]
fn versions_start_at_one_and_grow_by_one() {
    let mut h = History::new(5);
    assert!(h.head().is_none());
    assert_eq!(new_version(h.commit(mesh(&[1]), source(), 10)), 1);
    assert_eq!(new_version(h.commit(mesh(&[2]), source(), 20)), 2);
    assert_eq!(h.head().unwrap().created_unix_ms, 20);
    assert_eq!(h.head().unwrap().fingerprint, mesh(&[2]).fingerprint());
}

#[test]
fn the_same_config_makes_no_version() {
    let mut h = History::new(5);
    h.commit(mesh(&[1, 1]), source(), 1);
    match h.commit(mesh(&[1, 1]), source(), 2) {
        Commit::Unchanged(head) => assert_eq!(head.version, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.entries().len(), 1);
}

#[test]
fn only_the_last_keep_revisions_stay() {
    let mut h = History::new(3);
    for w in 1..=5 {
        h.commit(mesh(&[w]), source(), u64::from(w));
    }
    let versions: Vec<u64> = h.entries().iter().map(|e| e.version).collect();
    assert_eq!(versions, [5, 4, 3], "newest first");
    assert!(h.get(2).is_none());
    match h.commit(mesh(&[9]), source(), 9) {
        Commit::New { evicted, revision } => {
            assert_eq!(evicted, [3]);
            assert_eq!(revision.version, 6);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rollback_copies_an_old_config_into_a_new_version() {
    let mut h = History::new(10);
    h.commit(mesh(&[1, 1]), source(), 1);
    h.commit(mesh(&[1, 5]), source(), 2);
    h.commit(mesh(&[7, 5]), source(), 3);
    let commit = h.rollback(1, 4).unwrap();
    let head = commit.revision().clone();
    assert_eq!(
        head.version, 4,
        "a rollback is a new version, never an old number"
    );
    assert_eq!(head.config, mesh(&[1, 1]));
    assert_eq!(head.origin, Origin::Rollback { of: 1 });
    assert_eq!(head.changes.changed, ["s0", "s1"]);
    // Both services changed against version 3, so both take version 4.
    assert_eq!(head.service_versions["s0"], 4);
    assert_eq!(head.service_versions["s1"], 4);
    // Rolling back to the head's own config changes nothing.
    match h.rollback(1, 5).unwrap() {
        Commit::Unchanged(r) => assert_eq!(r.version, 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rollback_to_a_version_no_longer_kept_says_what_is() {
    let mut h = History::new(2);
    for w in 1..=4 {
        h.commit(mesh(&[w]), source(), 0);
    }
    let err = h.rollback(1, 0).unwrap_err();
    assert_eq!(err.to_string(), "version 1 is not kept (kept: 3 to 4)");
    assert!(History::new(2).rollback(1, 0).is_err());
}

#[test]
fn first_after_finds_the_first_missing_version() {
    let mut h = History::new(3);
    for w in 1..=5 {
        h.commit(mesh(&[w]), source(), u64::from(w) * 100);
    }
    assert_eq!(h.first_after(3).unwrap().version, 4);
    // Version 1 is evicted: the oldest kept is the best lower bound.
    assert_eq!(h.first_after(1).unwrap().version, 3);
    assert!(h.first_after(5).is_none());
}

#[test]
fn restore_orders_and_trims() {
    let mut h = History::new(10);
    for w in 1..=4 {
        h.commit(mesh(&[w]), source(), 0);
    }
    let stored: Vec<Revision> = h
        .entries()
        .iter()
        .map(|e| {
            serde_json::from_slice(&serde_json::to_vec(&**h.get(e.version).unwrap()).unwrap())
                .unwrap()
        })
        .collect();
    let restored = History::restore(2, stored).unwrap();
    assert_eq!(restored.head().unwrap().version, 4);
    assert_eq!(restored.entries().len(), 2);
    let mut restored = restored;
    assert_eq!(new_version(restored.commit(mesh(&[9]), source(), 0)), 5);
}

#[test]
fn snapshot_json_reads_back_as_the_config() {
    let mut h = History::new(2);
    let rev = h.commit(mesh(&[3, 4]), source(), 7).revision().clone();
    let snap: Snapshot = serde_json::from_slice(&rev.snapshot_json()).unwrap();
    assert_eq!(snap.version, 1);
    assert_eq!(snap.config, mesh(&[3, 4]));
    assert_eq!(snap.config.fingerprint(), snap.fingerprint);
    assert_eq!(snap.service_versions.len(), 2);
}

proptest! {
    /// Whatever sequence of edits and rollbacks: versions strictly grow, the head is the
    /// last commit, at most `keep` are kept, and each service's version is the last
    /// version at which its spec changed.
    #[test]
    fn versions_are_monotonic_and_service_versions_track_changes(
        keep in 1usize..6,
        steps in prop::collection::vec((prop::collection::vec(0u32..3, 1..4), any::<bool>(), 0u64..8), 1..30),
    ) {
        let mut h = History::new(keep);
        let mut last_spec: BTreeMap<String, (u32, u64)> = BTreeMap::new();
        let mut head = 0;
        for (weights, rollback, target) in steps {
            let weights: Vec<u32> = weights.iter().map(|w| w + 1).collect();
            let commit = if rollback && h.get(target).is_some() {
                h.rollback(target, 0).unwrap()
            } else {
                h.commit(mesh(&weights), source(), 0)
            };
            let rev = commit.revision().clone();
            if let Commit::New { .. } = commit {
                prop_assert_eq!(rev.version, head + 1);
                head = rev.version;
            }
            prop_assert_eq!(h.head().unwrap().version, head);
            prop_assert!(h.entries().len() <= keep);
            for svc in &rev.config.services {
                let w = svc.backends[0].weight;
                let v = rev.service_versions[&svc.name];
                match last_spec.get(&svc.name) {
                    Some(&(prev_w, prev_v)) if prev_w == w => prop_assert_eq!(v, prev_v),
                    _ => prop_assert_eq!(v, rev.version),
                }
                last_spec.insert(svc.name.clone(), (w, v));
            }
            last_spec.retain(|name, _| rev.service_versions.contains_key(name));
        }
    }
}
