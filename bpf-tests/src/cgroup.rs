//! A child cgroup v2 of the test's own: the only place programs get attached to, and where
//! the clients whose connects should be routed run.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::resource_name;

/// The cgroup v2 mount point, read from `/proc/mounts` (hybrid hosts mount it at
/// `/sys/fs/cgroup/unified`, pure v2 hosts at `/sys/fs/cgroup`: never assume one).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .context("no cgroup2 filesystem in /proc/mounts: the kernel's cgroup v2 is required")
}

/// One program attached to a cgroup, as `bpftool -j cgroup show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AttachedProgram {
    /// Kernel program id.
    pub id: u64,
    /// e.g. `cgroup_inet4_connect`, `cgroup_inet6_getpeername`.
    pub attach_type: String,
    /// The program's name (truncated by the kernel to 15 bytes).
    #[serde(default)]
    pub name: String,
}

/// A cgroup `<cgroup2>/sockmesh-test-<pid>-<name>`, removed on drop after killing whatever
/// still runs in it.
#[derive(Debug)]
pub struct Cgroup2 {
    path: PathBuf,
}

impl Cgroup2 {
    /// Creates the child cgroup `sockmesh-test-<pid>-<name>` under the cgroup v2 mount.
    pub fn create(name: &str) -> Result<Self> {
        let path = cgroup2_mount()?.join(resource_name(name));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup2 { path })
    }

    /// Creates the child cgroup `<this cgroup>/<name>`: a workload of the test (the agent's
    /// programs, attached to the parent, apply to it too). Removed on drop; the parent's
    /// drop also removes children still there.
    pub fn child(&self, name: &str) -> Result<Self> {
        let path = self.path.join(name);
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup2 { path })
    }

    /// Creates `path` and any missing parents, all below a cgroup of this run (a testbed
    /// node's kubelet hierarchy). Only `path` itself is removed on drop; its parents go with
    /// the run's top cgroup.
    pub fn create_all(path: &Path) -> Result<Self> {
        let mount = cgroup2_mount()?;
        let below_ours = path
            .strip_prefix(&mount)
            .ok()
            .and_then(|rel| rel.iter().next())
            .is_some_and(|top| top.to_string_lossy().starts_with(&resource_name("")));
        if !below_ours {
            bail!(
                "{} is not below a cgroup of this run ({}/{}*)",
                path.display(),
                mount.display(),
                resource_name("")
            );
        }
        fs::create_dir_all(path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup2 {
            path: path.to_owned(),
        })
    }

    /// The cgroup's directory, as passed to the agent's `--cgroup`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path relative to the cgroup2 mount, as a config's `workloads[].cgroup` names it.
    pub fn relative_path(&self) -> Result<String> {
        let mount = cgroup2_mount()?;
        let rel = self
            .path
            .strip_prefix(&mount)
            .with_context(|| format!("{} is not below {}", self.path.display(), mount.display()))?;
        Ok(rel.display().to_string())
    }

    /// The cgroup id (its directory's inode number), what `bpf_get_current_cgroup_id()`
    /// returns for processes in it.
    pub fn id(&self) -> Result<u64> {
        Ok(fs::metadata(&self.path)?.ino())
    }

    /// A `Command` for `program` that starts inside this cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.enter(&mut cmd);
        cmd
    }

    /// Makes `cmd` start inside this cgroup. The child moves itself between fork and exec,
    /// so it is in the cgroup before its first instruction: no connect can slip out unrouted
    /// the way it could if the parent moved the pid after spawn.
    pub fn enter<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        join_before_exec(cmd, &self.path.join("cgroup.procs"))
    }

    /// The eBPF programs attached to this cgroup, from `bpftool -j cgroup show`, sorted.
    pub fn attached_programs(&self) -> Result<Vec<AttachedProgram>> {
        let out = Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(&self.path)
            .output()
            .context("running bpftool")?;
        if !out.status.success() {
            bail!(
                "bpftool cgroup show {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // bpftool prints nothing at all (not `[]`) for a cgroup with no programs.
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        let mut progs: Vec<AttachedProgram> = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("bpftool output: {}", String::from_utf8_lossy(&out.stdout)))?;
        progs.sort_by(|a, b| (&a.attach_type, &a.name, a.id).cmp(&(&b.attach_type, &b.name, b.id)));
        Ok(progs)
    }

    /// Waits up to `bound` for no program to be attached here; the programs still attached
    /// at the end (empty on success). Unlinking a link's last pin detaches it a moment later
    /// (the kernel frees the pin's inode after an RCU grace period, then puts the link from
    /// a work queue), so a check right after `cleanup` can still see it.
    pub fn wait_detached(&self, bound: std::time::Duration) -> Result<Vec<AttachedProgram>> {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let left = self.attached_programs()?;
            if left.is_empty() || std::time::Instant::now() >= deadline {
                return Ok(left);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Pids currently in the cgroup.
    pub fn procs(&self) -> Result<Vec<i32>> {
        read_procs(&self.path)
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.path) {
            eprintln!("bpf-tests: {e:#}");
        }
    }
}

/// Makes `cmd`'s child write itself into `procs` (a `cgroup.procs` file of any hierarchy,
/// v1 or v2) between fork and exec. Several calls add up: a child can join a v2 cgroup and a
/// v1 cpu cgroup before its first instruction.
pub(crate) fn join_before_exec<'a>(cmd: &'a mut Command, procs: &Path) -> &'a mut Command {
    let procs = CString::new(procs.as_os_str().as_bytes()).expect("cgroup paths have no NUL bytes");
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (open, write, close) on memory allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" means "the writing process", in v1 and v2 alike.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        })
    };
    cmd
}

fn read_procs(path: &Path) -> Result<Vec<i32>> {
    let text = fs::read_to_string(path.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", path.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Child cgroup directories of `path`.
fn children(path: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(path) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Kills what is left in the cgroup and its children and removes them, children first.
/// Every pid in them descends from a process this harness started there (the cgroup's name
/// is unique to this run, and nothing else moves processes into it), so SIGKILL by pid
/// stays within what we own.
pub(crate) fn remove(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for child in children(path) {
        remove(&child)?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = read_procs(path).unwrap_or_default();
        for pid in &pids {
            // SAFETY: kill has no memory-safety preconditions; a pid that exited meanwhile
            // just yields ESRCH.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        // rmdir fails with EBUSY until the killed processes are fully gone.
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "could not remove cgroup {} (pids left {pids:?}): {e}",
                    path.display()
                )
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes stale test cgroups (see [`crate::sweep_stale`]); only empty ones, since their
/// processes are not ours to kill.
pub(crate) fn sweep_stale(is_stale: &dyn Fn(&str) -> bool) {
    let Ok(root) = cgroup2_mount() else { return };
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale(&name) {
            if let Err(e) = remove_if_empty(&entry.path()) {
                eprintln!("bpf-tests: stale cgroup {name}: {e:#}");
            }
        }
    }
}

/// Removes a cgroup and its children, children first, unless a process is left in any of
/// them (those are not ours to kill): then it is left alone and `false` returned.
pub(crate) fn remove_if_empty(path: &Path) -> Result<bool> {
    let mut empty = true;
    for child in children(path) {
        empty &= remove_if_empty(&child)?;
    }
    if !empty || !read_procs(path)?.is_empty() {
        return Ok(false);
    }
    fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(true)
}
