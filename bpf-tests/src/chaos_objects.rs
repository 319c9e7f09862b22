//! Counting sockmesh's kernel objects with `bpftool`, to show an agent leaks none: programs
//! named `sockmesh_*` (the kernel keeps 15 bytes of a name), maps named `SM_*` plus the maps
//! those programs use (`.rodata`), and links to those programs.
//!
//! The machine is shared (other test runs, CI, demos load the same programs), so a
//! before/after comparison of the global counts alone could blame a leak on someone else's
//! run. [`Snapshot::owned_by`] is the subset one pin directory accounts for (pinned there,
//! used by a program pinned there, or linking one), and [`LeakCheck`] compares both: the
//! owned subset must be exactly the same objects (same ids), and every object new in the
//! global count must belong to some other pin directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sockmesh_common::maps::SAME_NODE_SOCKS_MAP;

use crate::map_attach::{attached_programs, BPF_SK_MSG_VERDICT};

/// One kernel object as bpftool lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfObject {
    pub id: u64,
    pub name: String,
    /// Pin paths (`bpftool -f`).
    pub pinned: Vec<String>,
    /// Programs: the maps they use. Links: the program they attach.
    pub refs: Vec<u64>,
}

/// The sockmesh objects on the machine at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub progs: BTreeMap<u64, BpfObject>,
    pub maps: BTreeMap<u64, BpfObject>,
    pub links: BTreeMap<u64, BpfObject>,
}

/// `(programs, maps, links)`.
pub type Counts = (usize, usize, usize);

fn bpftool(args: &[&str]) -> Result<Vec<Value>> {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .context("running bpftool (needed to count programs, maps and links)")?;
    if !out.status.success() {
        bail!(
            "bpftool {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool {} printed no JSON list", args.join(" ")))
}

fn object(v: &Value, refs: Vec<u64>) -> Option<BpfObject> {
    Some(BpfObject {
        id: v["id"].as_u64()?,
        name: v["name"].as_str().unwrap_or("").to_string(),
        pinned: v["pinned"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        refs,
    })
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

impl Snapshot {
    /// Lists every sockmesh program, map and link (`bpftool -j -f prog|map|link show`).
    pub fn scan() -> Result<Self> {
        let mut snap = Snapshot::default();
        for p in bpftool(&["-j", "-f", "prog", "show"])? {
            if p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("sockmesh"))
            {
                if let Some(o) = object(&p, ids(&p["map_ids"])) {
                    snap.progs.insert(o.id, o);
                }
            }
        }
        let used: BTreeSet<u64> = snap.progs.values().flat_map(|p| p.refs.clone()).collect();
        for m in bpftool(&["-j", "-f", "map", "show"])? {
            let named = m["name"].as_str().is_some_and(|n| n.starts_with("SM_"));
            let id = m["id"].as_u64().unwrap_or(0);
            if named || used.contains(&id) {
                if let Some(o) = object(&m, Vec::new()) {
                    snap.maps.insert(o.id, o);
                }
            }
        }
        for l in bpftool(&["-j", "-f", "link", "show"])? {
            let prog = l["prog_id"].as_u64().unwrap_or(0);
            if snap.progs.contains_key(&prog) {
                if let Some(o) = object(&l, vec![prog]) {
                    snap.links.insert(o.id, o);
                }
            }
        }
        Ok(snap)
    }

    pub fn counts(&self) -> Counts {
        (self.progs.len(), self.maps.len(), self.links.len())
    }

    /// What the pin directory `dir` accounts for: objects pinned under it, maps its pinned
    /// programs use, and links to those programs. Objects held only by a process are not in
    /// it (an agent's open map fds, a program loaded but not yet pinned).
    pub fn owned_by(&self, dir: &Path) -> Snapshot {
        let under = |o: &BpfObject| o.pinned.iter().any(|p| Path::new(p).starts_with(dir));
        self.select(under)
    }

    /// Objects owned by some pin directory other than `dir` (other runs on the machine).
    fn owned_elsewhere(&self, dir: &Path) -> Snapshot {
        let elsewhere = |o: &BpfObject| o.pinned.iter().any(|p| !Path::new(p).starts_with(dir));
        self.select(elsewhere)
    }

    fn select(&self, pinned: impl Fn(&BpfObject) -> bool) -> Snapshot {
        let progs: BTreeMap<u64, BpfObject> = self
            .progs
            .iter()
            .filter(|(_, p)| pinned(p))
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        // A program pinned here and linked from here: the link belongs here even unpinned.
        let links: BTreeMap<u64, BpfObject> = self
            .links
            .iter()
            .filter(|(_, l)| pinned(l) || l.refs.iter().any(|p| progs.contains_key(p)))
            .map(|(id, l)| (*id, l.clone()))
            .collect();
        let linked: BTreeSet<u64> = links.values().flat_map(|l| l.refs.clone()).collect();
        let mut used: BTreeSet<u64> = progs.values().flat_map(|p| p.refs.clone()).collect();
        // Programs attached through a link pinned here (their own pin may be missing).
        let progs: BTreeMap<u64, BpfObject> = self
            .progs
            .iter()
            .filter(|(id, p)| pinned(p) || linked.contains(id))
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        used.extend(progs.values().flat_map(|p| p.refs.clone()));
        let maps = self
            .maps
            .iter()
            .filter(|(id, m)| pinned(m) || used.contains(id))
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        Snapshot { progs, maps, links }
    }

    /// Objects in `self` that are not in `other` (by id).
    pub fn minus(&self, other: &Snapshot) -> Snapshot {
        let diff = |a: &BTreeMap<u64, BpfObject>, b: &BTreeMap<u64, BpfObject>| {
            a.iter()
                .filter(|(id, _)| !b.contains_key(id))
                .map(|(id, o)| (*id, o.clone()))
                .collect()
        };
        Snapshot {
            progs: diff(&self.progs, &other.progs),
            maps: diff(&self.maps, &other.maps),
            links: diff(&self.links, &other.links),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts() == (0, 0, 0)
    }

    /// Every id in the snapshot.
    pub fn all_ids(&self) -> BTreeSet<(char, u64)> {
        let tag = |c: char, m: &BTreeMap<u64, BpfObject>| {
            m.keys().map(move |id| (c, *id)).collect::<Vec<_>>()
        };
        tag('p', &self.progs)
            .into_iter()
            .chain(tag('m', &self.maps))
            .chain(tag('l', &self.links))
            .collect()
    }

    /// One line per object, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (kind, m) in [
            ("prog", &self.progs),
            ("map", &self.maps),
            ("link", &self.links),
        ] {
            for o in m.values() {
                out.push_str(&format!(
                    "  {kind} {} {:?} pinned {:?} refs {:?}\n",
                    o.id, o.name, o.pinned, o.refs
                ));
            }
        }
        out
    }
}

/// The result of comparing two snapshots for one pin directory.
#[derive(Debug, Clone)]
pub struct LeakCheck {
    /// Global sockmesh object counts, before and after.
    pub global_before: Counts,
    pub global_after: Counts,
    /// What the pin directory accounted for, before and after.
    pub owned_before: Counts,
    pub owned_after: Counts,
    /// Owned objects that changed identity (present only before or only after).
    pub owned_changed: Snapshot,
    /// Objects new in the global count that no other pin directory accounts for.
    pub unexplained: Snapshot,
    /// Objects new in the global count that belong to other runs on the machine.
    pub foreign_new: Counts,
}

impl LeakCheck {
    /// Compares `before` with a fresh scan. Retries the scan for up to `settle` while the
    /// comparison fails, since another run's agent may be between loading a program and
    /// pinning it at the moment of a scan.
    pub fn against(before: &Snapshot, dir: &Path, settle: Duration) -> Result<LeakCheck> {
        let deadline = Instant::now() + settle;
        loop {
            let check = Self::compare(before, &Snapshot::scan()?, dir);
            if check.is_clean() || Instant::now() >= deadline {
                return Ok(check);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn compare(before: &Snapshot, after: &Snapshot, dir: &Path) -> LeakCheck {
        let (ob, oa) = (before.owned_by(dir), after.owned_by(dir));
        let changed_ids: BTreeSet<(char, u64)> = ob
            .all_ids()
            .symmetric_difference(&oa.all_ids())
            .copied()
            .collect();
        let union = Snapshot {
            progs: ob
                .progs
                .iter()
                .chain(&oa.progs)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            maps: ob
                .maps
                .iter()
                .chain(&oa.maps)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            links: ob
                .links
                .iter()
                .chain(&oa.links)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        };
        let keep = |c: char, m: &BTreeMap<u64, BpfObject>| {
            m.iter()
                .filter(|(id, _)| changed_ids.contains(&(c, **id)))
                .map(|(id, o)| (*id, o.clone()))
                .collect()
        };
        let owned_changed = Snapshot {
            progs: keep('p', &union.progs),
            maps: keep('m', &union.maps),
            links: keep('l', &union.links),
        };
        let new = after.minus(before);
        let foreign = after.owned_elsewhere(dir);
        let unexplained = new.minus(&foreign).minus(&oa);
        let foreign_new = new.minus(&new.minus(&foreign)).counts();
        LeakCheck {
            global_before: before.counts(),
            global_after: after.counts(),
            owned_before: ob.counts(),
            owned_after: oa.counts(),
            owned_changed,
            unexplained,
            foreign_new,
        }
    }

    /// The pin directory accounts for the very same objects, and nothing new is orphaned.
    pub fn is_clean(&self) -> bool {
        self.owned_changed.is_empty() && self.unexplained.is_empty()
    }

    /// One-paragraph summary.
    pub fn summary(&self) -> String {
        let c = |(p, m, l): Counts| format!("{p} programs, {m} maps, {l} links");
        let mut s = format!(
            "sockmesh objects on the machine: before {}, after {}; owned by the pin directory: \
             before {}, after {}; changed {}; new and unexplained {}",
            c(self.global_before),
            c(self.global_after),
            c(self.owned_before),
            c(self.owned_after),
            c(self.owned_changed.counts()),
            c(self.unexplained.counts()),
        );
        if self.foreign_new != (0, 0, 0) {
            s.push_str(&format!(
                " (new objects of other runs on this machine: {})",
                c(self.foreign_new)
            ));
        }
        if !self.owned_changed.is_empty() {
            s.push_str(&format!("\nchanged:\n{}", self.owned_changed.describe()));
        }
        if !self.unexplained.is_empty() {
            s.push_str(&format!("\nunexplained:\n{}", self.unexplained.describe()));
        }
        s
    }
}

/// Checks that the pins under `dir` form one consistent attachment: every pinned program is
/// the program of a pinned link (or the one attached to the pinned socket hash) and the reverse, and no unpinned sockmesh program uses the
/// pinned maps (an orphan of an interrupted start). Returns the owned counts.
pub fn check_pins_consistent(dir: &Path) -> Result<Counts> {
    let snap = Snapshot::scan()?;
    let owned = snap.owned_by(dir);
    let pinned_progs: BTreeSet<u64> = owned
        .progs
        .values()
        .filter(|p| p.pinned.iter().any(|x| Path::new(x).starts_with(dir)))
        .map(|p| p.id)
        .collect();
    let linked: BTreeSet<u64> = owned
        .links
        .values()
        .filter(|l| l.pinned.iter().any(|x| Path::new(x).starts_with(dir)))
        .flat_map(|l| l.refs.clone())
        .collect();
    // The sk_msg program has no link: it is attached to the pinned socket hash, and the
    // kernel says which program that is.
    let mut attached = linked.clone();
    for m in owned
        .maps
        .values()
        .filter(|m| m.name == SAME_NODE_SOCKS_MAP)
    {
        for pin in m
            .pinned
            .iter()
            .map(Path::new)
            .filter(|p| p.starts_with(dir))
        {
            let ids = attached_programs(pin, BPF_SK_MSG_VERDICT)?;
            attached.extend(ids.into_iter().map(u64::from));
        }
    }
    if pinned_progs != attached {
        bail!(
            "pinned programs {pinned_progs:?} are not the programs attached by the pinned \
             links and socket hash {attached:?} under {}:\n{}",
            dir.display(),
            owned.describe()
        );
    }
    let pinned_maps: BTreeSet<u64> = owned
        .maps
        .values()
        .filter(|m| m.pinned.iter().any(|x| Path::new(x).starts_with(dir)))
        .map(|m| m.id)
        .collect();
    let orphans: Vec<&BpfObject> = snap
        .progs
        .values()
        .filter(|p| !pinned_progs.contains(&p.id))
        .filter(|p| p.refs.iter().any(|m| pinned_maps.contains(m)))
        .collect();
    if !orphans.is_empty() {
        bail!(
            "programs using the maps pinned under {} but not pinned there: {orphans:#?}",
            dir.display()
        );
    }
    Ok(owned.counts())
}
