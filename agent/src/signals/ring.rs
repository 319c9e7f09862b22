//! Draining the lifecycle ring buffer: woken by the kernel when a batch has built up, and on
//! a short timer otherwise (the kernel posts events without wake-ups to save syscalls).

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, RingBuf};
use sockmesh_common::{decode_conn_event, ConnEvent, EVENTS_MAP};
use tokio::io::unix::AsyncFd;

pub(crate) struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub(crate) fn open(map_dir: &Path) -> Result<Self> {
        let data = MapData::from_pin(map_dir.join(EVENTS_MAP)).context("opening the event ring")?;
        let ring = RingBuf::try_from(Map::RingBuf(data))?;
        // SAFETY: the ring owns its fd for as long as the AsyncFd lives, and as_raw_fd always
        // returns that same fd.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("registering the event ring: {e}"))?;
        Ok(Self { ring })
    }

    /// Waits for a wake-up or `tick`, then hands every queued event to `f`. Returns how many.
    pub(crate) async fn drain(&mut self, tick: Duration, mut f: impl FnMut(ConnEvent)) -> usize {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(tick, self.ring.readable_mut()).await {
            guard.clear_ready();
        }
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            // A record of the wrong size (another layout version) is skipped, not misread.
            if let Some(ev) = decode_conn_event(&item) {
                f(ev);
                n += 1;
            }
        }
        n
    }
}
