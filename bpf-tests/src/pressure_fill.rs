//! Map pressure: reading the agent's `sockmesh_map_entries` /
//! `sockmesh_map_capacity` gauges, and filling a pinned LRU map beyond its capacity from
//! user space, the way a flood of sockets or callers would fill it, but in a second instead
//! of opening 262,144 sockets.
//!
//! Filling writes made-up keys no real socket or caller has (socket cookies from
//! [`FAKE_COOKIE_BASE`], service ids from [`FAKE_SERVICE_BASE`]) with zeroed values into
//! the test's own pinned maps, with `BPF_MAP_UPDATE_BATCH`; the kernel's LRU evicts as it
//! would for real entries.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use sockmesh_common::syscall::{bpf, BatchAttr, ObjGetAttr, BPF_MAP_UPDATE_BATCH, BPF_OBJ_GET};

use crate::exposition::parse_exposition;

/// Socket cookies count up from 1 per boot; these are far above any real one.
pub const FAKE_COOKIE_BASE: u64 = 0xfeed_0000_0000_0000;
/// Service ids are below 65,536; these name no service.
pub const FAKE_SERVICE_BASE: u32 = 0xfeed_0000;

/// What `bpftool map show` says about a pinned map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// e.g. `lru_hash`, `hash`, `percpu_hash`.
    pub kind: String,
    pub key_size: usize,
    pub value_size: usize,
    pub max_entries: u64,
}

/// `bpftool -j map show pinned PATH`.
pub fn map_info(pin: &Path) -> Result<MapInfo> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin)
        .output()
        .context("running bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool map show pinned {}: {}",
        pin.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool map show: no JSON")?;
    let num = |k: &str| {
        v[k].as_u64()
            .with_context(|| format!("bpftool map show: no {k}: {v}"))
    };
    Ok(MapInfo {
        kind: v["type"].as_str().unwrap_or("").to_string(),
        key_size: num("bytes_key")? as usize,
        value_size: num("bytes_value")? as usize,
        max_entries: num("max_entries")?,
    })
}

/// `<pins>/v<N>/maps/<name>`: the pin of map `name` under an agent's `--bpffs`.
pub fn map_pin(pins: &Path, name: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(pins)
        .with_context(|| format!("listing {}", pins.display()))?
        .flatten()
        .map(|e| e.path().join("maps").join(name))
        .filter(|p| p.exists())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one pin of {name} under {}, found {found:?}",
            pins.display()
        ),
    }
}

/// Opens the pinned map at `pin`.
pub(crate) fn open_pinned(pin: &Path) -> Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    // SAFETY: BPF_OBJ_GET reads the NUL-terminated path, alive for the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr) }
        .with_context(|| format!("BPF_OBJ_GET {}", pin.display()))?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Writes `count` entries into the (non per-CPU) map pinned at `pin`: entry `i` has key
/// `key(i)` (exactly the map's key size) and a zeroed value. Returns the entries written.
pub fn fill(pin: &Path, count: u64, key: impl Fn(u64) -> Vec<u8>) -> Result<u64> {
    let info = map_info(pin)?;
    ensure!(
        !info.kind.starts_with("percpu"),
        "{} is per-CPU; fill only handles plain maps",
        pin.display()
    );
    let fd = open_pinned(pin)?;
    const CHUNK: u64 = 8192;
    let values = vec![0u8; CHUNK as usize * info.value_size];
    let mut written = 0u64;
    while written < count {
        let n = CHUNK.min(count - written);
        let mut keys = Vec::with_capacity(n as usize * info.key_size);
        for i in written..written + n {
            let k = key(i);
            ensure!(
                k.len() == info.key_size,
                "key of {} bytes, map wants {}",
                k.len(),
                info.key_size
            );
            keys.extend_from_slice(&k);
        }
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: BPF_MAP_UPDATE_BATCH reads `count` keys and values from the buffers, sized
        // for `n` entries of this map's key and value sizes and alive for the call.
        unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }.with_context(|| {
            format!(
                "BPF_MAP_UPDATE_BATCH on {} after {} entries ({} of this chunk)",
                pin.display(),
                written,
                attr.count
            )
        })?;
        written += n;
    }
    Ok(written)
}

/// `(entries, capacity)` per map, from the agent's `/metrics` text.
pub fn map_gauges(metrics: &str) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in parse_exposition(metrics)? {
        let Some(map) = s.labels.get("map") else {
            continue;
        };
        let slot = out.entry(map.clone()).or_default();
        match s.name.as_str() {
            "sockmesh_map_entries" => slot.0 = s.value as u64,
            "sockmesh_map_capacity" => slot.1 = s.value as u64,
            _ => {}
        }
    }
    Ok(out)
}
