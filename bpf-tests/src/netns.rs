//! A network namespace of the test's own, for addresses the shared machine must never see
//! traffic to (IPv6 `fd00::/64` VIPs and backends live only in here).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;

use anyhow::{bail, Context, Result};

use crate::resource_name;

/// `ip netns add sockmesh-test-<pid>-<name>`, with `lo` up; `ip netns del` on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        let name = resource_name(name);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Adds `cidr` (e.g. `fd00::2/64`) to `dev` inside the namespace. IPv6 addresses skip
    /// duplicate address detection so they are usable at once rather than "tentative".
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(|_| ())
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec NS program`).
    /// Combine with [`crate::Cgroup2::enter`] to run it in a cgroup too.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a short-lived thread that has joined the namespace, and returns what it
    /// returns. Sockets created in `f` belong to the namespace for their whole life, so a
    /// listener bound here can be accepted from on any thread afterwards.
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        run_in(&self.path(), f)
    }

    /// `/run/netns/<name>`: the namespace's handle, for `setns(2)`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Makes `cmd`'s child join the namespace between fork and exec, without the new mount
    /// namespace and `/sys` remount `ip netns exec` brings (which would hide the cgroup2,
    /// bpffs and tracefs mounts an agent needs). Fails the spawn if the namespace cannot be
    /// joined.
    pub fn enter<'a>(&self, cmd: &'a mut Command) -> Result<&'a mut Command> {
        enter_path(&self.path(), cmd)
    }
}

/// [`Netns::enter`] by the namespace's handle path.
pub fn enter_path<'a>(path: &Path, cmd: &'a mut Command) -> Result<&'a mut Command> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the closure runs in the forked child before exec and only calls setns on an fd
    // opened before fork (kept by the closure, closed at exec by O_CLOEXEC).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    Ok(cmd)
}

/// Runs `f` on a short-lived thread that has joined the network namespace at `path` (an
/// `ip netns` handle or `/proc/<pid>/ns/net`); see [`Netns::run_inside`].
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    thread::spawn(move || {
        // SAFETY: setns on a valid fd; CLONE_NEWNET changes only this thread's namespace,
        // and the thread ends right after `f`.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns into the test netns");
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread inside netns panicked"))?
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("bpf-tests: {e:#}");
        }
    }
}

fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2 is required)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Deletes stale test namespaces (see [`crate::sweep_stale`]).
pub(crate) fn sweep_stale(is_stale: &dyn Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale(&name) {
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("bpf-tests: stale netns {name}: {e:#}");
            }
        }
    }
}
