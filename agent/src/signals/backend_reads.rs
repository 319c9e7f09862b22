//! Which per-backend TCP stats entries a refresh reads, and what a read changed.
//!
//! The kernel writes a (service, backend)'s counters only on that pair's traffic: at
//! establish and close (each followed by a lifecycle event naming the pair), on RTT,
//! retransmit and RTO callbacks of its open connections, and on RTOs and retransmitted SYNs
//! of connects in flight (which end in an established or failed event). So a refresh reads
//! the pairs named by events since the last read and the pairs with connections open at
//! their last read; every other pair's entry is what it was. A new config reads the pairs
//! of the services it added, removed or changed ([`pairs_after_config`]). Everything is
//! read at the first refresh, after a config that changed most of the mesh, when the ring
//! buffer lost events (their pairs are unknown), and at a scrape (so a connect still in
//! flight is exact there too). An idle mesh then reads nothing, whatever its size.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sockmesh_common::{BackendKey, BackendTcpStats};

use crate::tables::ServiceView;

/// One pair's counters at a read that found them changed (or at its first read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpChange {
    pub(crate) key: BackendKey,
    /// The counters at the pair's previous read; `None` when this is its first.
    pub(crate) before: Option<BackendTcpStats>,
    pub(crate) after: BackendTcpStats,
}

/// What the next refresh reads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Every entry of the map.
    All,
    /// These entries only (sorted, possibly none).
    Pairs(Vec<BackendKey>),
}

/// Decides what each refresh reads (pure: fed events and reads, asked for the next read).
#[derive(Debug)]
pub(crate) struct ReadSchedule {
    /// Pairs named by lifecycle events since the last read.
    touched: BTreeSet<BackendKey>,
    /// Pairs with connections open at their last read: their counters move without events.
    open: BTreeSet<BackendKey>,
    /// The next read is of every entry.
    all: bool,
    /// The kernel's lost-event counter at the last read.
    events_lost: u64,
}

impl Default for ReadSchedule {
    fn default() -> Self {
        Self {
            touched: BTreeSet::new(),
            open: BTreeSet::new(),
            all: true,
            events_lost: 0,
        }
    }
}

impl ReadSchedule {
    /// A lifecycle event named this pair: its counters may have moved.
    pub(crate) fn touched(&mut self, key: BackendKey) {
        if !self.all {
            self.touched.insert(key);
        }
    }

    /// The next read is of every entry (a new config, a scrape).
    pub(crate) fn read_all(&mut self) {
        self.all = true;
        self.touched.clear();
    }

    /// What to read now, given the kernel's lost-event counter now (if it was read). The
    /// touched pairs are taken: a pair touched from here on is read next time.
    pub(crate) fn next(&mut self, events_lost: Option<u64>) -> Read {
        if let Some(lost) = events_lost.filter(|l| *l != self.events_lost) {
            // Lost events named pairs nobody knows now.
            self.events_lost = lost;
            self.all = true;
        }
        if std::mem::take(&mut self.all) {
            self.touched.clear();
            return Read::All;
        }
        let mut pairs = std::mem::take(&mut self.touched);
        pairs.extend(self.open.iter().copied());
        Read::Pairs(pairs.into_iter().collect())
    }

    /// The read of `read` returned `stats` (a pair absent there has no entry): pairs with
    /// connections open are read again next time.
    pub(crate) fn read_done(&mut self, read: &Read, stats: &[(BackendKey, BackendTcpStats)]) {
        match read {
            Read::All => self.open.clear(),
            Read::Pairs(keys) => {
                for k in keys {
                    self.open.remove(k);
                }
            }
        }
        self.open.extend(
            stats
                .iter()
                .filter(|(_, s)| s.established > s.closed)
                .map(|(k, _)| *k),
        );
    }

    /// Pairs read at every refresh because they have connections open.
    #[cfg(test)]
    fn open_pairs(&self) -> usize {
        self.open.len()
    }
}

/// The pairs a new config (`new`, after `old`) asks to read: those of services that are
/// new, gone, or changed in id or backends (a new pair's first read is its baseline; a gone
/// pair read by key is found gone). `None`: read every entry (the first config, or so many
/// pairs that one batch read is cheaper). Services whose id and backends stayed keep their
/// entries, counters and ids, so they need no read: at 10,000 x 10, reading all 100,000
/// entries after every one-service change was 40% of a churning agent's CPU.
pub(crate) fn pairs_after_config(
    old: &[ServiceView],
    new: &[ServiceView],
) -> Option<Vec<BackendKey>> {
    if old.is_empty() {
        return None;
    }
    let mut before: HashMap<&str, &ServiceView> =
        old.iter().map(|v| (v.name.as_str(), v)).collect();
    let keys = |v: &ServiceView| {
        v.backends
            .iter()
            .map(|b| BackendKey {
                service_id: v.id,
                backend_id: b.id,
            })
            .collect::<Vec<_>>()
    };
    let same = |a: &ServiceView, b: &ServiceView| {
        a.id == b.id
            && a.backends
                .iter()
                .map(|x| (x.id, &x.addr))
                .eq(b.backends.iter().map(|x| (x.id, &x.addr)))
    };
    let mut read = Vec::new();
    for v in new {
        match before.remove(v.name.as_str()) {
            Some(o) if same(o, v) => {}
            Some(o) => {
                read.extend(keys(o));
                read.extend(keys(v));
            }
            None => read.extend(keys(v)),
        }
    }
    for gone in before.values() {
        read.extend(keys(gone));
    }
    let total: usize = new.iter().map(|v| v.backends.len()).sum();
    (read.len() <= total / 4).then_some(read)
}

/// Folds a read into the last known counters of every pair. Returns the pairs whose
/// counters changed or were read for the first time, and (after a read of every entry) the
/// pairs whose entry is gone.
pub(crate) fn fold_read(
    known: &mut BTreeMap<BackendKey, BackendTcpStats>,
    read: &Read,
    stats: Vec<(BackendKey, BackendTcpStats)>,
) -> (Vec<TcpChange>, Vec<BackendKey>) {
    let gone: Vec<BackendKey> = match read {
        Read::All => {
            let present: BTreeSet<BackendKey> = stats.iter().map(|(k, _)| *k).collect();
            known
                .keys()
                .filter(|k| !present.contains(k))
                .copied()
                .collect()
        }
        // A pair read by key and not found is gone too.
        Read::Pairs(keys) => {
            let present: BTreeSet<BackendKey> = stats.iter().map(|(k, _)| *k).collect();
            keys.iter()
                .filter(|k| !present.contains(k) && known.contains_key(k))
                .copied()
                .collect()
        }
    };
    for k in &gone {
        known.remove(k);
    }
    let mut changes = Vec::new();
    for (key, after) in stats {
        let before = known.insert(key, after);
        if before != Some(after) {
            changes.push(TcpChange { key, before, after });
        }
    }
    (changes, gone)
}

/// Merges `more` (later) into changes not yet taken: a pair keeps its earliest `before` and
/// its latest `after`.
pub(crate) fn merge_changes(pending: &mut BTreeMap<BackendKey, TcpChange>, more: &[TcpChange]) {
    for c in more {
        pending
            .entry(c.key)
            .and_modify(|p| p.after = c.after)
            .or_insert(*c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(service_id: u32, backend_id: u32) -> BackendKey {
        BackendKey {
            service_id,
            backend_id,
        }
    }

    fn stats(established: u64, closed: u64) -> BackendTcpStats {
        BackendTcpStats {
            established,
            closed,
            ..BackendTcpStats::ZERO
        }
    }

    fn view(name: &str, id: u32, backends: &[(u32, &str)]) -> ServiceView {
        ServiceView {
            name: name.into(),
            vip: "127.100.0.1".into(),
            port: 80,
            lb: "round_robin",
            id,
            slot_table_len: 0,
            backends: backends
                .iter()
                .map(|&(id, addr)| crate::tables::plan::BackendView {
                    addr: addr.into(),
                    weight: 1,
                    id,
                    slots: 0,
                })
                .collect(),
            classes: std::sync::Arc::default(),
            class0_weights: None,
        }
    }

    #[test]
    fn a_new_config_reads_the_pairs_of_the_services_it_changed() {
        let many: Vec<ServiceView> = (1..=40)
            .map(|i| view(&format!("s{i}"), i, &[(1, "a:1"), (2, "b:1")]))
            .collect();
        assert_eq!(pairs_after_config(&[], &many), None, "the first config");
        assert_eq!(pairs_after_config(&many, &many), Some(vec![]));
        let mut next = many.clone();
        let mut backends = next[2].backends.to_vec();
        backends[1] = crate::tables::plan::BackendView {
            addr: "c:1".into(),
            ..backends[1].clone()
        };
        next[2].backends = backends.into();
        next.remove(5);
        next.push(view("new", 41, &[(3, "d:1")]));
        let mut read = pairs_after_config(&many, &next).unwrap();
        read.sort();
        assert_eq!(
            read,
            [
                key(3, 1),
                key(3, 1),
                key(3, 2),
                key(3, 2),
                key(6, 1),
                key(6, 2),
                key(41, 3)
            ]
        );
        // A service that keeps its name under another id is read whole, old and new.
        let mut renumbered = many.clone();
        renumbered[0].id = 20;
        let read = pairs_after_config(&many, &renumbered).unwrap();
        assert_eq!(read, [key(1, 1), key(1, 2), key(20, 1), key(20, 2)]);
        // Most of the mesh changed: one batch read of everything.
        let other: Vec<ServiceView> = (1..=40)
            .map(|i| view(&format!("t{i}"), i, &[(1, "a:1")]))
            .collect();
        assert_eq!(pairs_after_config(&many, &other), None);
    }

    #[test]
    fn reads_everything_first_then_only_what_had_traffic() {
        let mut s = ReadSchedule::default();
        s.touched(key(1, 1));
        let read = s.next(Some(0));
        assert_eq!(read, Read::All, "the first read is of every entry");
        s.read_done(&read, &[(key(1, 1), stats(3, 3)), (key(1, 2), stats(5, 4))]);
        assert_eq!(
            s.next(Some(0)),
            Read::Pairs(vec![key(1, 2)]),
            "a pair with a connection open is read every time"
        );
        let read = s.next(Some(0));
        s.read_done(&read, &[(key(1, 2), stats(5, 5))]);
        assert_eq!(
            s.next(Some(0)),
            Read::Pairs(vec![]),
            "idle: nothing to read"
        );
        s.touched(key(7, 9));
        s.touched(key(1, 1));
        let read = s.next(Some(0));
        assert_eq!(read, Read::Pairs(vec![key(1, 1), key(7, 9)]));
        s.read_done(&read, &[(key(1, 1), stats(4, 3))]);
        assert_eq!(s.next(Some(0)), Read::Pairs(vec![key(1, 1)]));
        assert_eq!(s.open_pairs(), 1);
    }

    #[test]
    fn lost_events_a_new_config_or_a_scrape_read_everything() {
        let mut s = ReadSchedule::default();
        let read = s.next(Some(0));
        s.read_done(&read, &[]);
        assert_eq!(
            s.next(Some(2)),
            Read::All,
            "events were lost: their pairs are unknown"
        );
        assert_eq!(s.next(Some(2)), Read::Pairs(vec![]), "once per loss");
        s.read_all();
        s.touched(key(1, 1));
        assert_eq!(s.next(Some(2)), Read::All);
        assert_eq!(
            s.next(Some(2)),
            Read::Pairs(vec![]),
            "touched pairs were in that read"
        );
    }

    #[test]
    fn a_read_reports_changes_first_reads_and_gone_pairs() {
        let mut known = BTreeMap::new();
        let (changes, gone) = fold_read(
            &mut known,
            &Read::All,
            vec![(key(1, 1), stats(0, 0)), (key(1, 2), stats(2, 1))],
        );
        assert_eq!(changes.len(), 2, "first reads are reported");
        assert!(changes.iter().all(|c| c.before.is_none()) && gone.is_empty());

        let read = Read::Pairs(vec![key(1, 1), key(1, 2)]);
        let (changes, gone) = fold_read(&mut known, &read, vec![(key(1, 2), stats(2, 2))]);
        assert_eq!(
            changes,
            vec![TcpChange {
                key: key(1, 2),
                before: Some(stats(2, 1)),
                after: stats(2, 2)
            }]
        );
        assert_eq!(gone, vec![key(1, 1)], "read by key and not found");
        assert_eq!(known.len(), 1);

        let (changes, gone) = fold_read(&mut known, &Read::All, vec![(key(1, 2), stats(2, 2))]);
        assert!(changes.is_empty(), "unchanged counters are no change");
        assert!(gone.is_empty());
    }

    #[test]
    fn pending_changes_keep_the_first_before_and_the_last_after() {
        let mut pending = BTreeMap::new();
        let c = |before: Option<u64>, after| TcpChange {
            key: key(1, 1),
            before: before.map(|e| stats(e, 0)),
            after: stats(after, 0),
        };
        merge_changes(&mut pending, &[c(Some(1), 2)]);
        merge_changes(&mut pending, &[c(Some(2), 5)]);
        assert_eq!(pending[&key(1, 1)], c(Some(1), 5));
    }
}
