//! The cgroup v2 hierarchy as xtask uses it: finding its mount, and placing spawned processes
//! into a child cgroup before they run any code of their own.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The cgroup v2 mount point, read from /proc/mounts: it is /sys/fs/cgroup/unified on these
/// hybrid machines and /sys/fs/cgroup on most others, so it is never hard-coded.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, ty) = (fields.next()?, fields.next()?, fields.next()?);
            (ty == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .context("no cgroup2 filesystem in /proc/mounts")
}

/// Makes `cmd`'s child join the cgroup whose `cgroup.procs` is `procs` before exec, so even
/// its first connect() runs under the programs attached there.
///
/// The file is opened here, in the parent: after fork only async-signal-safe calls are
/// allowed (xtask has threads), and a bare write(2) on an open fd is one.
pub fn spawn_into(cmd: &mut Command, procs: &File) -> Result<()> {
    let fd = procs.try_clone().context("dup cgroup.procs fd")?;
    // SAFETY: the closure only calls write(2) on an fd that stays open (it is moved into the
    // closure) and builds the error from errno; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            // "0" means "the writing process" in cgroup v2.
            let rc = libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1);
            if rc == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Opens `<cgroup>/cgroup.procs` for [`spawn_into`].
pub fn open_procs(cgroup: &Path) -> Result<File> {
    let path = cgroup.join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))
}

/// A child cgroup this process created for its own workload, removed on drop together with
/// every process still in it (all of them were started by this process).
pub struct ChildCgroup {
    path: PathBuf,
    procs: File,
}

impl ChildCgroup {
    /// Creates `<cgroup2 mount>/<name>`; `name` must be unique to this run (include the pid).
    pub fn create(name: &str) -> Result<Self> {
        let path = cgroup2_mount()?.join(name);
        fs::create_dir(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        let procs = match open_procs(&path) {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(e);
            }
        };
        Ok(Self { path, procs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s child start inside this cgroup.
    pub fn spawn_into(&self, cmd: &mut Command) -> Result<()> {
        spawn_into(cmd, &self.procs)
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on a member of our own cgroup; a pid that already exited just
            // fails with ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Err(e) = remove_dir_when_empty(&self.path) {
            eprintln!("xtask: cleanup: {e:#}");
        }
    }
}

/// Removes a leftover cgroup of an earlier run if nothing runs in it or its children any more;
/// returns false (and leaves it) when something does, since it may belong to a run that is
/// still going (other people test on the same machine).
pub fn remove_if_unused(path: &Path) -> Result<bool> {
    for entry in fs::read_dir(path).with_context(|| format!("read {}", path.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && !remove_if_unused(&entry.path())? {
            return Ok(false);
        }
    }
    let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    if !procs.trim().is_empty() {
        return Ok(false);
    }
    fs::remove_dir(path).with_context(|| format!("rmdir {}", path.display()))?;
    Ok(true)
}

fn remove_dir_when_empty(path: &Path) -> Result<()> {
    // A killed process leaves the cgroup a moment after the signal; rmdir says EBUSY until
    // then.
    for _ in 0..50 {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => bail!("rmdir {}: {e}", path.display()),
        }
    }
    bail!("rmdir {}: still busy after 5 s", path.display())
}
