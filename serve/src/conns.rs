//! The connection cap of one endpoint. Below it every connection is admitted. At it, the
//! new connection takes the place of the open one that has waited longest without a request
//! in the handler ([`pick_victim`]): a client holding half-sent requests keeps at most the
//! cap's worth of file descriptors and cannot lock out a client that sends its request at
//! once, which is busy (or done) before any of the held ones. Only when every open
//! connection has a request in the handler is the new one refused.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::time::Instant;

use crate::activity::ConnState;

pub(crate) struct ConnTable {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Arc<ConnState>>,
}

pub(crate) enum Admission {
    /// `evicted`: the idle connection told to close to make room. Its descriptor is
    /// still open until its task ends ([`ConnState::closed`]); the accept loop waits for
    /// that before it accepts again, so the endpoint never holds more than the cap + 1.
    Admitted {
        conn: Conn,
        evicted: Option<Arc<ConnState>>,
    },
    /// Every open connection is busy.
    Refused,
}

/// A connection's place in the table, given back on drop.
pub(crate) struct Conn {
    id: u64,
    state: Arc<ConnState>,
    table: Arc<ConnTable>,
}

impl Conn {
    pub(crate) fn state(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.table.lock().open.remove(&self.id);
        self.state.mark_closed();
    }
}

/// What [`pick_victim`] sees of an open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate<K> {
    pub(crate) key: K,
    pub(crate) busy: bool,
    pub(crate) last_io: Instant,
}

/// The connection to close for a new one: among those without a request in the handler,
/// the one whose bytes moved longest ago. `None` when all are busy.
pub(crate) fn pick_victim<K>(open: impl IntoIterator<Item = Candidate<K>>) -> Option<K> {
    open.into_iter()
        .filter(|c| !c.busy)
        .min_by_key(|c| c.last_io)
        .map(|c| c.key)
}

impl ConnTable {
    pub(crate) fn new(cap: usize) -> Self {
        ConnTable {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection, evicting an idle one when the table is full (a scan of
    /// the open connections, only then).
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let mut inner = self.lock();
        let mut evicted = None;
        if inner.open.len() >= self.cap {
            let victim = pick_victim(inner.open.iter().map(|(id, s)| Candidate {
                key: *id,
                busy: s.busy(),
                last_io: s.last_io(),
            }));
            match victim.and_then(|id| inner.open.remove(&id)) {
                Some(state) => {
                    state.evict();
                    evicted = Some(state);
                }
                None => return Admission::Refused,
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let state = Arc::new(ConnState::new(Instant::now()));
        inner.open.insert(id, state.clone());
        Admission::Admitted {
            conn: Conn {
                id,
                state,
                table: self.clone(),
            },
            evicted,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().open.len()
    }
}
