//! Which programs the kernel has attached to a socket map, asked with `BPF_PROG_QUERY` on
//! the map itself (kernel >= 5.19). An sk_msg program attached to a sockhash has no link, so
//! bpftool's link list cannot show it; this is the kernel's own answer.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_QUERY: libc::c_long = 16;
/// `enum bpf_attach_type`: `BPF_SK_MSG_VERDICT`.
pub const BPF_SK_MSG_VERDICT: u32 = 7;

/// `union bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

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

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, initialised bpf_attr layout of its size; the kernel reads
    // and writes only within that size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The ids of the programs attached to the pinned map at `pin` for `attach_type`.
pub fn attached_programs(pin: &Path, attach_type: u32) -> Result<Vec<u32>> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut get = ObjGet {
        pathname: path.as_ptr() as u64,
        ..ObjGet::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut get).with_context(|| format!("opening {}", pin.display()))?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut ids = [0u32; 8];
    let mut query = ProgQuery {
        target_fd: std::os::fd::AsRawFd::as_raw_fd(&map) as u32,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _rest: [0; 21],
    };
    if let Err(e) = bpf(BPF_PROG_QUERY, &mut query) {
        bail!(
            "BPF_PROG_QUERY on the map {} failed: {e} (querying a socket map's programs \
             needs kernel >= 5.19)",
            pin.display()
        );
    }
    let n = (query.prog_cnt as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}
