//! The per-identity cap on long-polls. A watch holds a connection and a task for up to its
//! timeout, so a client that opens watch after watch without waiting for replies could hold
//! as many as the API's connection cap; one agent needs one at a time (two for a moment
//! when it restarts while its old connection has not died yet). A watch over the cap is
//! answered 429 with the reason and counted (`sockmesh_control_watches_refused_total`).
//!
//! The identity is the node of a node credential (`crate::credentials`), whatever `agent=`
//! the watch gives, so a node cannot spread its watches over made-up names. The operator's
//! watches key on the `agent=` they name (the operator may speak for any agent); those
//! without one share one identity, `-`. The API's connection cap (sockmesh-serve) bounds
//! everything else.

use std::collections::HashMap;
use std::sync::Mutex;

/// Watches one identity may hold at once.
pub const DEFAULT_WATCHES_PER_IDENTITY: usize = 4;

/// The identity of watches that name no agent.
pub const UNNAMED: &str = "-";

/// Watches held per identity; an identity is present only while it holds one, so the map
/// is bounded by the open watches.
#[derive(Debug)]
pub struct WatchCap {
    per_identity: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One held watch; dropping it (the reply sent, or the connection gone) gives it back.
#[derive(Debug)]
pub struct WatchSlot<'a> {
    cap: &'a WatchCap,
    identity: String,
}

impl WatchCap {
    pub fn new(per_identity: usize) -> Self {
        WatchCap {
            per_identity: per_identity.max(1),
            held: Mutex::new(HashMap::new()),
        }
    }

    pub fn per_identity(&self) -> usize {
        self.per_identity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `identity` (an agent name, or `None`), or `None` when it holds the cap.
    pub fn enter(&self, identity: Option<&str>) -> Option<WatchSlot<'_>> {
        let identity = identity.unwrap_or(UNNAMED);
        let mut held = self.lock();
        let n = held.entry(identity.to_owned()).or_default();
        if *n >= self.per_identity {
            return None;
        }
        *n += 1;
        Some(WatchSlot {
            cap: self,
            identity: identity.to_owned(),
        })
    }

    /// Watches `identity` holds now.
    pub fn held(&self, identity: Option<&str>) -> usize {
        let held = self.lock();
        held.get(identity.unwrap_or(UNNAMED)).copied().unwrap_or(0)
    }
}

impl Default for WatchCap {
    fn default() -> Self {
        WatchCap::new(DEFAULT_WATCHES_PER_IDENTITY)
    }
}

impl Drop for WatchSlot<'_> {
    fn drop(&mut self) {
        let mut held = self.cap.lock();
        if let Some(n) = held.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_identity_holds_at_most_the_cap_and_gets_slots_back() {
        let cap = WatchCap::new(2);
        let a1 = cap.enter(Some("node-a")).unwrap();
        let _a2 = cap.enter(Some("node-a")).unwrap();
        assert!(cap.enter(Some("node-a")).is_none());
        // Other identities are not affected, the unnamed one included.
        let _b = cap.enter(Some("node-b")).unwrap();
        let _u1 = cap.enter(None).unwrap();
        let _u2 = cap.enter(None).unwrap();
        assert!(cap.enter(None).is_none());
        assert_eq!(cap.held(None), 2);
        drop(a1);
        assert_eq!(cap.held(Some("node-a")), 1);
        assert!(cap.enter(Some("node-a")).is_some());
    }

    #[test]
    fn identities_without_a_watch_leave_the_map() {
        let cap = WatchCap::new(1);
        for i in 0..100 {
            let _slot = cap.enter(Some(&format!("node-{i}"))).unwrap();
        }
        assert!(cap.lock().is_empty());
    }
}
