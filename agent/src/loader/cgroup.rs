//! Finding the cgroup v2 hierarchy and checking for bpffs, from /proc/mounts and statfs.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path, path::PathBuf};

use anyhow::{bail, Context, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The mount point of the cgroup v2 hierarchy (e.g. /sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on hybrid hosts), from /proc/mounts. Never assumed.
pub(crate) fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    find_cgroup2(&mounts).context("no cgroup2 filesystem in /proc/mounts")
}

fn find_cgroup2(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Whether `path` is on a bpf filesystem. A missing path is not an error: it is just not
/// bpffs (yet).
pub(crate) fn is_bpffs(path: &Path) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let c = CString::new(path.as_os_str().as_bytes()).context("path contains NUL")?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a zeroed out-struct of the right type.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            find_cgroup2(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(find_cgroup2(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(find_cgroup2("proc /proc proc rw 0 0\n"), None);
    }
}
