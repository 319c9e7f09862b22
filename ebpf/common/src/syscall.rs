//! The bpf(2) commands userspace needs beyond what aya 0.14 wraps (batch lookups and updates,
//! key walks of socket hashes, opening pins by path, program queries on a map), with the
//! `union bpf_attr` members they read (include/uapi/linux/bpf.h). Feature `user` only: the
//! agent counts the maps the kernel fills with these, and the bpf-tests fill and inspect maps.

extern crate std;

use std::io;

pub const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
pub const BPF_OBJ_GET: libc::c_long = 7;
pub const BPF_PROG_QUERY: libc::c_long = 16;
pub const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`'s `batch` member, for `BPF_MAP_*_BATCH`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// `union bpf_attr` for `BPF_MAP_LOOKUP_ELEM` (and the other single-element commands).
#[repr(C)]
#[derive(Debug, Default)]
pub struct ElemAttr {
    pub map_fd: u32,
    pub _pad: u32,
    pub key: u64,
    pub value: u64,
    pub flags: u64,
}

/// `union bpf_attr` for `BPF_MAP_GET_NEXT_KEY`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct NextKeyAttr {
    pub map_fd: u32,
    pub _pad: u32,
    pub key: u64,
    pub next_key: u64,
}

/// `union bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ObjGetAttr {
    pub pathname: u64,
    pub bpf_fd: u32,
    pub file_flags: u32,
    pub path_fd: i32,
    pub _pad: u32,
}

/// `bpf(cmd, attr, size_of::<A>())`: the call's non-negative result, or the OS error.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member that `cmd` reads, and every pointer in it must
/// be valid for what `cmd` reads or writes through it for the duration of the call.
pub unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: the caller vouches for `attr` (see above); the kernel reads and writes back
    // only within `size_of::<A>()` bytes of it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
