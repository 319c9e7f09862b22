use proptest::prelude::*;

use super::*;
use crate::history::{Commit, History};
use sockmesh_model::{parse_config, MeshConfig};

fn mesh(weights: &[u32], reversed: bool) -> MeshConfig {
    let mut y = String::from("services:\n");
    let mut order: Vec<usize> = (0..weights.len()).collect();
    if reversed {
        order.reverse();
    }
    for i in order {
        y.push_str(&format!(
            "  - name: s{i}\n    vip: 127.100.0.{}\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n        weight: {}\n",
            i + 1,
            weights[i]
        ));
    }
    parse_config(&y).unwrap()
}

fn source() -> Origin {
    Origin::Source { source: "t".into() }
}

/// Saves a commit as the hub does.
fn save(store: &Store, history: &History, commit: &Commit) {
    if let Commit::New { revision, .. } = commit {
        let previous = history.get(revision.version.wrapping_sub(1));
        let oldest = history.oldest().unwrap().version;
        store
            .save(revision, previous.map(|p| &**p), oldest)
            .unwrap();
    }
}

/// Every kept revision, as comparable JSON (the config and everything recorded of it).
fn kept(history: &History) -> Vec<serde_json::Value> {
    history
        .entries()
        .iter()
        .rev()
        .map(|e| serde_json::to_value(&**history.get(e.version).unwrap()).unwrap())
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join(REVISIONS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[derive(Debug, Clone)]
enum Step {
    Edit(Vec<u32>, bool),
    Rollback(usize),
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (prop::collection::vec(1u32..4, 1..6), prop::bool::weighted(0.1))
            .prop_map(|(w, r)| Step::Edit(w, r)),
        1 => (0usize..8).prop_map(Step::Rollback),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the edits, rollbacks and restarts, reading the store back gives exactly the
    /// kept revisions (configs, fingerprints, per-service versions, changes, origins), and
    /// the files on disk stay bounded by the kept window plus one checkpoint interval.
    #[test]
    fn the_store_reads_back_the_kept_history(
        keep in 1usize..6,
        steps in prop::collection::vec(step(), 1..90),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut history = History::new(keep);
        for step in steps {
            match step {
                Step::Edit(w, r) => {
                    let commit = history.commit(mesh(&w, r), source(), 7);
                    save(&store, &history, &commit);
                }
                Step::Rollback(back) => {
                    let Some(head) = history.head() else { continue };
                    let target = head.version.saturating_sub(back as u64);
                    if let Ok(commit) = history.rollback(target, 9) {
                        save(&store, &history, &commit);
                    }
                }
                Step::Restart => {
                    store = Store::open(dir.path()).unwrap();
                    let restored = History::restore(keep, store.load().unwrap().revisions).unwrap();
                    prop_assert_eq!(kept(&restored), kept(&history));
                    history = restored;
                }
            }
            let on_disk = files(dir.path()).len();
            prop_assert!(on_disk <= keep + CHECKPOINT_EVERY + 1, "{} files", on_disk);
        }
        let restored = History::restore(keep, Store::open(dir.path()).unwrap().load().unwrap().revisions).unwrap();
        prop_assert_eq!(kept(&restored), kept(&history));
    }
}

#[test]
fn a_one_service_change_is_stored_as_a_delta_and_checkpoints_recur() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut history = History::new(100);
    let mut weights = vec![1u32; 50];
    for i in 0..=CHECKPOINT_EVERY + 1 {
        weights[i % 50] = weights[i % 50] % 3 + 1;
        let commit = history.commit(mesh(&weights, false), source(), 7);
        save(&store, &history, &commit);
    }
    let names = files(dir.path());
    let checkpoints: Vec<&String> = names.iter().filter(|n| n.ends_with(".json")).collect();
    // Version 1, then the one after CHECKPOINT_EVERY deltas.
    assert_eq!(
        checkpoints,
        [
            &format!("{:020}.json", 1),
            &format!("{:020}.json", CHECKPOINT_EVERY + 2)
        ]
    );
    let delta = fs::read(
        dir.path()
            .join(REVISIONS_DIR)
            .join(format!("{:020}.delta", 2)),
    )
    .unwrap();
    let full = fs::read(
        dir.path()
            .join(REVISIONS_DIR)
            .join(format!("{:020}.json", 1)),
    )
    .unwrap();
    assert!(
        delta.len() * 4 < full.len(),
        "a one-service delta ({} bytes) is far smaller than the whole revision ({})",
        delta.len(),
        full.len()
    );
}

#[test]
fn a_delta_without_its_base_or_with_a_wrong_fingerprint_is_a_loud_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut history = History::new(10);
    for w in 1u32..=3 {
        let commit = history.commit(mesh(&[w, 1], false), source(), 7);
        save(&store, &history, &commit);
    }
    let revisions = dir.path().join(REVISIONS_DIR);
    let delta3 = revisions.join(format!("{:020}.delta", 3));
    let good = fs::read(&delta3).unwrap();

    let tampered =
        String::from_utf8(good.clone())
            .unwrap()
            .replacen("\"weight\":3", "\"weight\":2", 1);
    assert_ne!(tampered.as_bytes(), good.as_slice());
    fs::write(&delta3, tampered).unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(err.contains("replayed, it gives fingerprint"), "{err}");

    fs::write(&delta3, &good).unwrap();
    fs::remove_file(revisions.join(format!("{:020}.delta", 2))).unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(
        err.contains("a delta from version 2, which is not the stored revision before it"),
        "{err}"
    );
}

#[test]
fn revisions_and_source_fingerprint_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.load().unwrap().revisions.is_empty());
    let mut h = History::new(2);
    for w in 1u32..=3 {
        let commit = h.commit(mesh(&[w], false), source(), w.into());
        save(&store, &h, &commit);
    }
    store.save_source_fingerprint("abc").unwrap();
    let stored = store.load().unwrap();
    assert_eq!(stored.source_fingerprint.as_deref(), Some("abc"));
    let restored = History::restore(2, stored.revisions).unwrap();
    assert_eq!(kept(&restored), kept(&h));
}

#[test]
fn a_corrupt_revision_is_a_loud_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    fs::write(dir.path().join("revisions/00000000000000000001.json"), "{").unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(err.contains("not a stored revision"), "{err}");
}
