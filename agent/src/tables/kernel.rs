//! The pinned kernel maps the tables are written to, opened by pin path so a freshly loaded
//! dataplane and an adopted one are handled by the same code.

use std::{
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::maps::{HashMap, Map, MapData, MapError};
use sockmesh_common::{
    BackendEntry, ServiceCaller, ServiceEntry, ServiceKey, SlotTable, SlotTableKey, ACL_MAP,
    BACKENDS_MAP, MAX_SLOTS, SERVICES_MAP, SLOT_TABLES_MAP,
};

use super::plan::{KernelState, TableState, Write};

#[derive(Debug, thiserror::Error)]
pub(crate) enum KernelError {
    #[error("opening pinned map {path}: {source}")]
    Open { path: String, source: MapError },
    #[error("reading map {map}: {source}")]
    Read { map: &'static str, source: MapError },
    #[error("writing {what}: {source}")]
    Write { what: String, source: MapError },
}

/// How many entries the agent-written tables hold, as the agent's own mirror of them says
/// (updated with every write it makes and every re-read): the map pressure gauges read these
/// instead of iterating the kernel maps. One dataplane per process, hence a static.
pub(crate) struct MirrorCounts {
    pub services: AtomicUsize,
    pub slot_tables: AtomicUsize,
    pub backends: AtomicUsize,
    pub acl: AtomicUsize,
}

pub(crate) static MIRROR_COUNTS: MirrorCounts = MirrorCounts {
    services: AtomicUsize::new(0),
    slot_tables: AtomicUsize::new(0),
    backends: AtomicUsize::new(0),
    acl: AtomicUsize::new(0),
};

fn publish(state: &KernelState) {
    let c = &MIRROR_COUNTS;
    c.services.store(state.services.len(), Ordering::Relaxed);
    c.slot_tables.store(state.tables.len(), Ordering::Relaxed);
    c.backends.store(state.backends.len(), Ordering::Relaxed);
    c.acl.store(state.acl.len(), Ordering::Relaxed);
}

pub(crate) struct KernelMaps {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    tables: HashMap<MapData, SlotTableKey, SlotTable>,
    backends: HashMap<MapData, u32, BackendEntry>,
    acl: HashMap<MapData, ServiceCaller, u32>,
}

fn open<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &str,
) -> Result<HashMap<MapData, K, V>, KernelError> {
    let path = dir.join(name);
    let err = |source| KernelError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    HashMap::try_from(Map::HashMap(data)).map_err(err)
}

impl KernelMaps {
    /// Opens the maps pinned in `map_dir`.
    pub(crate) fn open_pinned(map_dir: &Path) -> Result<Self, KernelError> {
        Ok(Self {
            services: open(map_dir, SERVICES_MAP)?,
            tables: open(map_dir, SLOT_TABLES_MAP)?,
            backends: open(map_dir, BACKENDS_MAP)?,
            acl: open(map_dir, ACL_MAP)?,
        })
    }

    /// Reads everything the maps hold; used once at start (adoption) and after a failed apply.
    pub(crate) fn read_state(&self) -> Result<KernelState, KernelError> {
        let mut state = KernelState::default();
        for item in self.services.iter() {
            let (k, v) = item.map_err(|source| KernelError::Read {
                map: SERVICES_MAP,
                source,
            })?;
            state.services.insert(k, v);
        }
        for item in self.tables.iter() {
            let (k, v) = item.map_err(|source| KernelError::Read {
                map: SLOT_TABLES_MAP,
                source,
            })?;
            let len = (v.len as usize).min(MAX_SLOTS);
            state.tables.insert(
                k,
                TableState {
                    generation: v.generation,
                    slots: v.slots[..len].to_vec(),
                },
            );
        }
        for item in self.acl.iter() {
            let (k, _) = item.map_err(|source| KernelError::Read {
                map: ACL_MAP,
                source,
            })?;
            state.acl.insert(k);
        }
        for item in self.backends.iter() {
            let (k, v) = item.map_err(|source| KernelError::Read {
                map: BACKENDS_MAP,
                source,
            })?;
            state.insert_backend(k, v);
        }
        publish(&state);
        Ok(state)
    }

    /// Applies `writes` in order, mirroring each accepted one into `mirror`. Stops at the first
    /// failure: the writes are ordered so any prefix is a consistent kernel state.
    pub(crate) fn apply(
        &mut self,
        writes: &[Write],
        mirror: &mut KernelState,
    ) -> Result<(), KernelError> {
        for w in writes {
            if let Err(e) = self.write(w) {
                publish(mirror);
                return Err(e);
            }
            mirror.apply(w);
        }
        publish(mirror);
        Ok(())
    }

    fn write(&mut self, w: &Write) -> Result<(), KernelError> {
        let what = || format!("{w:?}").chars().take(120).collect::<String>();
        let res = match w {
            Write::UpsertBackend(id, b) => self.backends.insert(id, b, 0),
            Write::UpsertTable(k, t) => {
                // Built on the heap: 4 KiB is too much for comfort on a tokio worker's stack
                // when many services are written in a burst.
                let mut table = Box::new(SlotTable::EMPTY);
                table.len = t.slots.len() as u32;
                table.generation = t.generation;
                table.slots[..t.slots.len()].copy_from_slice(&t.slots);
                self.tables.insert(k, table.as_ref(), 0)
            }
            Write::UpsertService(k, s) => self.services.insert(k, s, 0),
            Write::DeleteService(k) => ignore_missing(self.services.remove(k)),
            Write::DeleteTable(k) => ignore_missing(self.tables.remove(k)),
            Write::DeleteBackend(id) => ignore_missing(self.backends.remove(id)),
            Write::UpsertAcl(k) => self.acl.insert(k, 1, 0),
            Write::DeleteAcl(k) => ignore_missing(self.acl.remove(k)),
        };
        res.map_err(|source| KernelError::Write {
            what: what(),
            source,
        })
    }
}

/// Deleting something already gone is success: the goal state is reached.
fn ignore_missing(res: Result<(), MapError>) -> Result<(), MapError> {
    match res {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
