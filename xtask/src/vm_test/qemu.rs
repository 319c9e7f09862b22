//! Booting one kernel under qemu-system-x86_64, bounded in time: KVM when /dev/kvm can
//! create a VM with a vCPU *and* a kernel actually boots with it (nested KVM inside another
//! VM may accept the ioctls and then hang before the kernel's first message), TCG
//! otherwise; the serial console goes to a log file whose `vm-test-guest:` lines are echoed
//! while it runs.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::initramfs::{RESULTS_TAG, ROOT_TAG};
use crate::{command, interrupt};

const QEMU: &str = "qemu-system-x86_64";

/// KVM ioctls (linux/kvm.h): `_IO(KVMIO, 0x00)`, `_IO(KVMIO, 0x01)`, `_IO(KVMIO, 0x41)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_API_VERSION: libc::c_int = 12;

/// Which accelerator qemu gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// With the reason KVM is not usable.
    Tcg(String),
}

/// How TCG runs the vCPUs. Multi-threaded TCG is faster, but on this host it wedged or
/// crashed guests right when the agent attached its programs (a soft lockup on 6.1, an
/// `Oops: int3` in the scheduler on 6.12): the kernel patches its own text then (static
/// keys, `text_poke_bp`), and cross-CPU code modification is where MTTCG is fragile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TcgThreads {
    Single,
    Multi,
}

/// Whether KVM works here: the API version answers 12 and a VM with one vCPU can be created
/// (a /dev/kvm without nested virtualization behind it fails one of these).
pub fn probe_kvm() -> Accel {
    let dev = match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(f) => f,
        Err(e) => return Accel::Tcg(format!("cannot open /dev/kvm: {e}")),
    };
    // SAFETY: plain KVM ioctls on an fd we own, with integer arguments; the fds they
    // return are closed below.
    unsafe {
        let version = libc::ioctl(dev.as_raw_fd(), KVM_GET_API_VERSION, 0);
        if version != KVM_API_VERSION {
            return Accel::Tcg(format!("KVM API version {version}, expected 12"));
        }
        let vm = libc::ioctl(dev.as_raw_fd(), KVM_CREATE_VM, 0);
        if vm < 0 {
            let e = std::io::Error::last_os_error();
            return Accel::Tcg(format!("KVM_CREATE_VM failed: {e}"));
        }
        let vcpu = libc::ioctl(vm, KVM_CREATE_VCPU, 0);
        let err = std::io::Error::last_os_error();
        if vcpu >= 0 {
            libc::close(vcpu);
        }
        libc::close(vm);
        if vcpu < 0 {
            return Accel::Tcg(format!("KVM_CREATE_VCPU failed: {err}"));
        }
    }
    Accel::Kvm
}

/// How long the KVM smoke boot may take to print the kernel banner.
const KVM_SMOKE_TIMEOUT: Duration = Duration::from_secs(20);

/// [`probe_kvm`], then a smoke boot of `vmlinuz` under KVM without an initramfs (it panics
/// at once for want of a root, which is fine): KVM only counts when the kernel's banner
/// reaches the console within [`KVM_SMOKE_TIMEOUT`].
pub fn choose_accel(vmlinuz: &Path, scratch: &Path) -> Result<Accel> {
    if let Accel::Tcg(why) = probe_kvm() {
        return Ok(Accel::Tcg(why));
    }
    fs::create_dir_all(scratch)?;
    let console = scratch.join("kvm-smoke.log");
    let _ = fs::remove_file(&console);
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", "kvm"])
        .args(KVM_CPU)
        .args(["-m", "512", "-smp", "1", "-nographic", "-no-reboot"])
        .args(["-nic", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("start {QEMU}"))?;
    let started = Instant::now();
    let banner = loop {
        let text = fs::read_to_string(&console).unwrap_or_default();
        if text.contains("Linux version") {
            break true;
        }
        if child.try_wait()?.is_some() || started.elapsed() >= KVM_SMOKE_TIMEOUT {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SAFETY: kill(2) on the smoke qemu this function spawned and has not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let out = child.wait_with_output()?;
    if banner {
        return Ok(Accel::Kvm);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detail = stderr
        .lines()
        .find(|l| !l.contains("terminating on signal"))
        .unwrap_or("no error from qemu");
    Ok(Accel::Tcg(format!(
        "/dev/kvm opens, but a kernel booted with it printed nothing in {} s ({})",
        KVM_SMOKE_TIMEOUT.as_secs(),
        detail.trim()
    )))
}

/// qemu's CPU model under KVM: the host's, without the IA32_ARCH_CAPABILITIES MSR, which
/// nested hypervisors (Firecracker here) refuse to let qemu set.
const KVM_CPU: [&str; 2] = ["-cpu", "host,-arch-capabilities"];

/// One VM run.
pub struct VmSpec<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub results: &'a Path,
    pub console_log: &'a Path,
    pub accel: &'a Accel,
    pub tcg_threads: TcgThreads,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// Killed earlier when the console stays silent this long: the guest prints a line at
    /// each test binary's start and end, and each binary has a timeout of its own, so a
    /// longer silence means the guest itself is wedged.
    pub stall_timeout: Duration,
}

/// The qemu command line for `spec`.
pub fn command(spec: &VmSpec<'_>) -> Command {
    let mut cmd = Command::new(QEMU);
    match spec.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm"]).args(KVM_CPU),
        Accel::Tcg(_) => cmd
            .arg("-accel")
            .arg(match spec.tcg_threads {
                TcgThreads::Single => "tcg,thread=single",
                TcgThreads::Multi => "tcg,thread=multi",
            })
            .args(["-cpu", "max"]),
    };
    cmd.arg("-m")
        .arg(spec.memory_mib.to_string())
        .arg("-smp")
        .arg(spec.cpus.to_string())
        .args([
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", spec.console_log.display()))
        .arg("-kernel")
        .arg(spec.vmlinuz)
        .arg("-initrd")
        .arg(spec.initrd)
        .arg("-append")
        // loglevel=5: warnings and the stack dumps of lockup reports reach the console.
        .arg("console=ttyS0 rdinit=/init panic=-1 loglevel=5 rw")
        .arg("-virtfs")
        .arg(format!(
            "local,path=/,mount_tag={ROOT_TAG},security_model=none,readonly=on,multidevs=remap"
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag={RESULTS_TAG},security_model=none",
            spec.results.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// How a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// qemu exited by itself (the guest powered off or panicked).
    Exited(String),
    /// Killed at the timeout.
    TimedOut,
    /// Killed because the console stayed silent for the stall timeout.
    Stalled,
}

/// Runs qemu until it exits or `spec.timeout` passes (then SIGKILLs it by pid), echoing
/// the guest's progress lines.
pub fn run(spec: &VmSpec<'_>) -> Result<VmEnd> {
    let mut cmd = command(spec);
    let qemu_log = spec.console_log.with_extension("qemu.log");
    cmd.stderr(File::create(&qemu_log)?);
    println!("vm-test: $ {}", command::describe(&cmd));
    let mut child = cmd.spawn().with_context(|| format!("start {QEMU}"))?;
    let pid = child.id();
    let started = Instant::now();
    let mut tail = ConsoleTail::new(spec.console_log.to_path_buf());
    let mut last_output = Instant::now();
    let end = loop {
        if tail.echo() {
            last_output = Instant::now();
        }
        if let Some(status) = child.try_wait()? {
            break VmEnd::Exited(status.to_string());
        }
        let interrupted = interrupt::check().is_err();
        let end = if started.elapsed() >= spec.timeout {
            Some(VmEnd::TimedOut)
        } else if last_output.elapsed() >= spec.stall_timeout {
            Some(VmEnd::Stalled)
        } else {
            None
        };
        if interrupted || end.is_some() {
            // SAFETY: kill(2) on the qemu process this function spawned and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
            if interrupted {
                anyhow::bail!("interrupted; killed qemu (pid {pid})");
            }
            match end {
                Some(VmEnd::Stalled) => println!(
                    "vm-test: console silent for {:?}, the guest is wedged; killed qemu \
                     (pid {pid})",
                    spec.stall_timeout
                ),
                _ => println!(
                    "vm-test: timeout after {:?}; killed qemu (pid {pid})",
                    spec.timeout
                ),
            }
            break end.unwrap_or(VmEnd::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    tail.echo();
    let stderr = fs::read_to_string(&qemu_log).unwrap_or_default();
    if !stderr.trim().is_empty() {
        println!("vm-test: qemu stderr: {}", stderr.trim());
    }
    Ok(end)
}

/// Follows the console log, printing new `vm-test-guest:` lines (and kernel panics).
struct ConsoleTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl ConsoleTail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// Prints what is new; true when the guest printed a progress line (kernel messages
    /// alone, such as repeated lockup reports, are not progress).
    fn echo(&mut self) -> bool {
        let Ok(mut file) = File::open(&self.path) else {
            return false;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        if file.read_to_end(&mut buf).is_err() || buf.is_empty() {
            return false;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut progressed = false;
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            if let Some(progress) = progress_part(&line) {
                println!("  {progress}");
                progressed |= progress.starts_with(GUEST_MARKER);
            }
        }
        progressed
    }
}

/// What the guest script prefixes its console lines with.
const GUEST_MARKER: &str = "vm-test-guest:";

/// Kernel messages that mean the guest kernel itself is in trouble.
const KERNEL_TROUBLE: &[&str] = &[
    "soft lockup",
    "hard LOCKUP",
    "self-detected stall",
    "BUG:",
    "Oops",
    "WARNING:",
    "Kernel panic",
    "Out of memory",
];

/// The first console line of each kind of kernel trouble, in order of appearance.
pub fn kernel_trouble(console: &str) -> Vec<String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for line in console.lines() {
        if let Some(kind) = KERNEL_TROUBLE.iter().find(|k| line.contains(*k)) {
            if !seen.contains(kind) {
                seen.push(kind);
                out.push(line.trim().to_owned());
            }
        }
    }
    out
}

/// The part of a console line worth echoing on the host while the VM runs: from the
/// guest's `vm-test-guest:` marker (firmware output may precede it on the line) or a
/// kernel panic on.
pub fn progress_part(line: &str) -> Option<&str> {
    [GUEST_MARKER, "Kernel panic"]
        .iter()
        .find_map(|marker| line.find(marker))
        .map(|at| line[at..].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_both_shares_and_the_accelerator() {
        let accel = Accel::Tcg("no kvm".into());
        let spec = VmSpec {
            vmlinuz: Path::new("/k/vmlinuz"),
            initrd: Path::new("/k/initrd"),
            results: Path::new("/r/out"),
            console_log: Path::new("/r/console.log"),
            accel: &accel,
            tcg_threads: TcgThreads::Multi,
            memory_mib: 3072,
            cpus: 2,
            timeout: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(1),
        };
        let line = command::describe(&command(&spec));
        assert!(line.contains("-accel tcg,thread=multi"), "{line}");
        assert!(line.contains("mount_tag=hostroot,security_model=none,readonly=on"));
        assert!(line.contains("local,path=/r/out,mount_tag=results"));
        assert!(line.contains("-serial file:/r/console.log"));
        assert_eq!(
            progress_part("ok\x1b[2Jvm-test-guest: START routing\n"),
            Some("vm-test-guest: START routing")
        );
        assert_eq!(progress_part("[    0.1] random kernel line"), None);
    }

    #[test]
    fn finds_each_kind_of_kernel_trouble_once() {
        let console = "[ 1.0] ok\n\
                       [ 564.8] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [agent:1]\n\
                       [ 592.8] watchdog: BUG: soft lockup - CPU#1 stuck for 71s! [agent:1]\n\
                       [ 601.0] rcu: INFO: rcu_preempt self-detected stall on CPU\n";
        assert_eq!(
            kernel_trouble(console),
            vec![
                "[ 564.8] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [agent:1]",
                "[ 601.0] rcu: INFO: rcu_preempt self-detected stall on CPU",
            ]
        );
    }
}
