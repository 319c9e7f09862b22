//! Which programs the kernel has attached to a socket map, asked with `BPF_PROG_QUERY` on
//! the map itself (kernel >= 5.19). An sk_msg program attached to a sockhash has no link, so
//! bpftool's link list cannot show it; this is the kernel's own answer.

use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Result};

use sockmesh_common::syscall::{bpf, BPF_PROG_QUERY};

use crate::pressure_fill::open_pinned;
/// `enum bpf_attach_type`: `BPF_SK_MSG_VERDICT`.
pub const BPF_SK_MSG_VERDICT: u32 = 7;

/// `union bpf_attr` for `BPF_PROG_QUERY`: the fields up to `prog_cnt`, then zeros (no
/// attach flags, link ids or revision asked for).
#[repr(C)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _rest: [u32; 21],
}

/// The ids of the programs attached to the pinned map at `pin` for `attach_type`.
pub fn attached_programs(pin: &Path, attach_type: u32) -> Result<Vec<u32>> {
    let map = open_pinned(pin)?;
    let mut ids = [0u32; 8];
    let mut query = ProgQuery {
        target_fd: map.as_raw_fd() as u32,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _rest: [0; 21],
    };
    // SAFETY: BPF_PROG_QUERY writes at most `prog_cnt` ids into `ids`, alive for the call.
    if let Err(e) = unsafe { bpf(BPF_PROG_QUERY, &mut query) } {
        bail!(
            "BPF_PROG_QUERY on the map {} failed: {e} (querying a socket map's programs \
             needs kernel >= 5.19)",
            pin.display()
        );
    }
    let n = (query.prog_cnt as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}
