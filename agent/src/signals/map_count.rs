//! Counting the entries of a map the kernel fills (the agent keeps no mirror of those).
//!
//! The kernel has no "number of elements" query for hash maps on the kernels we support, so
//! the keys are walked. `BPF_MAP_LOOKUP_BATCH` (Linux 5.6) walks a chunk of buckets per
//! system call instead of one key per `BPF_MAP_GET_NEXT_KEY`, which is what makes counting a
//! full 262,144-entry map affordable; the cost is bounded by the map's capacity (the walk
//! stops after `max_entries` entries or a bounded number of calls, whichever comes first).
//! The count is a snapshot of a map that changes while it is read: good for a gauge.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::maps::MapData;
use sockmesh_common::syscall::{
    bpf, BatchAttr, NextKeyAttr, BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_BATCH,
};

/// Entries asked for per call: 4,096 keys and values (256 KiB for a 64-byte value).
const CHUNK: u32 = 4096;
/// Largest chunk tried when a hash bucket holds more entries than a chunk (`ENOSPC`).
const MAX_CHUNK: u32 = 1 << 16;

/// The maps the kernel fills that get a pressure gauge.
pub(crate) struct CountedMaps {
    pub stamps: CountedMap,
    pub caller_conns: CountedMap,
    pub same_node_pending: CountedMap,
    pub same_node_tcp: CountedMap,
    pub same_node_socks: CountedMap,
    pub proxy_origins: CountedMap,
}

/// A kernel-written (non per-CPU) hash map whose entries are counted.
pub(crate) struct CountedMap {
    map: MapData,
    key_size: usize,
    value_size: usize,
    max_entries: u64,
    /// Socket hashes have no batch lookup: their keys are walked one call per key.
    key_walk: bool,
}

impl CountedMap {
    pub(crate) fn new(map: MapData) -> io::Result<Self> {
        let info = map.info().map_err(io::Error::other)?;
        Ok(Self {
            key_size: info.key_size() as usize,
            value_size: info.value_size() as usize,
            max_entries: u64::from(info.max_entries()),
            key_walk: matches!(info.map_type(), Ok(aya::maps::MapType::SockHash)),
            map,
        })
    }

    /// Entries in the map now (at most `max_entries`).
    pub(crate) fn count(&self) -> io::Result<u64> {
        if self.key_walk {
            return self.count_keys();
        }
        walk_batch(
            self.map.fd().as_fd(),
            self.key_size,
            self.value_size,
            self.max_entries,
            |_, _, _| {},
        )
    }

    /// [`Self::count`] by `BPF_MAP_GET_NEXT_KEY`, one key per call, at most `max_entries`
    /// calls. A key deleted while it is the cursor restarts the walk at the first key, so
    /// under churn the count can be high; it is capped at the capacity.
    fn count_keys(&self) -> io::Result<u64> {
        let mut key = vec![0u8; self.key_size];
        let mut next = vec![0u8; self.key_size];
        let mut total = 0u64;
        while total < self.max_entries {
            let mut attr = NextKeyAttr {
                map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
                _pad: 0,
                key: if total == 0 { 0 } else { key.as_ptr() as u64 },
                next_key: next.as_mut_ptr() as u64,
            };
            // SAFETY: BPF_MAP_GET_NEXT_KEY reads one key from `key` (or none: null) and
            // writes one into `next`, both sized like this map's keys and alive for the call.
            if let Err(err) = unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
                return match err.raw_os_error() {
                    Some(libc::ENOENT) => Ok(total),
                    _ => Err(err),
                };
            }
            total += 1;
            std::mem::swap(&mut key, &mut next);
        }
        Ok(total)
    }
}

/// Walks the (non per-CPU, or per-CPU with `value_size` = the rounded value size times the
/// possible CPUs) hash map `fd` with `BPF_MAP_LOOKUP_BATCH`, a chunk of buckets per system
/// call, handing each chunk to `f` as `(keys, values, n)`: `n` entries of `key_size` and
/// `value_size` bytes. Stops after `max_entries` entries or a bounded number of calls;
/// returns the entries seen (at most `max_entries`).
pub(crate) fn walk_batch(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    max_entries: u64,
    mut f: impl FnMut(&[u8], &[u8], usize),
) -> io::Result<u64> {
    let mut chunk = CHUNK;
    let mut keys = vec![0u8; chunk as usize * key_size];
    let mut values = vec![0u8; chunk as usize * value_size];
    // The resume token: a bucket index (u32) for hash maps; sized like a key to be safe.
    let token_len = key_size.max(8);
    let mut token_in = vec![0u8; token_len];
    let mut token_out = vec![0u8; token_len];
    let mut first = true;
    let mut total = 0u64;
    // Every successful call returns at least one entry or ends the walk; bound it anyway.
    let max_calls = max_entries / u64::from(CHUNK) + 64;
    for _ in 0..max_calls {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: BPF_MAP_LOOKUP_BATCH writes at most `count` keys and values into the
        // buffers, sized for `chunk` entries of this map's key and value sizes, and one
        // token into `token_out`, sized at least like a key; all outlive the call.
        let rc = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let got = (attr.count as usize).min(chunk as usize);
        let err = match rc {
            Ok(_) => {
                f(&keys[..got * key_size], &values[..got * value_size], got);
                total += got as u64;
                token_in.copy_from_slice(&token_out);
                first = false;
                if total >= max_entries {
                    break;
                }
                continue;
            }
            Err(err) => err,
        };
        match err.raw_os_error() {
            // The walk is over; the last call may still have returned entries.
            Some(libc::ENOENT) => {
                f(&keys[..got * key_size], &values[..got * value_size], got);
                total += got as u64;
                break;
            }
            // One bucket holds more than a chunk: retry the same position with more room.
            Some(libc::ENOSPC) if chunk < MAX_CHUNK => {
                chunk *= 2;
                keys.resize(chunk as usize * key_size, 0);
                values.resize(chunk as usize * value_size, 0);
            }
            _ => return Err(err),
        }
    }
    Ok(total.min(max_entries))
}
