//! `cargo xtask vm-test`: the bpf-tests on other kernels than the host's, each in a
//! throwaway qemu VM (docs/vm-test.md).
//!
//! For each kernel series asked for (default Debian's 6.1 and 6.12): the newest Debian
//! `linux-image-<series>...-amd64-unsigned` is fetched with `apt-get download` and unpacked
//! into the cache (`target/vm-test`; nothing goes into the host's /boot), a small initramfs
//! is built ([`initramfs`]: busybox and the 9p/overlay modules), and qemu boots it with the
//! host's root shared read-only over 9p under a tmpfs overlay (so cgroups, bpffs and /tmp
//! are the VM's own) and a second, writable share for results. The guest ([`guest`]) runs
//! the same bpf-tests binaries `cargo xtask test` runs, with the same environment, one at a
//! time, then loads the agent once for verifier statistics ([`verifier`]), and powers off.
//! Each VM is bounded by `--timeout-mins` and killed by pid when it overruns.
//!
//! The host's own verifier numbers are taken the same way before the VMs start (a child
//! cgroup and pin directory of this process, removed again); the host's bpf-tests are not
//! run (that is `cargo xtask test`).

pub(crate) mod guest;
mod initramfs;
mod kernel;
mod qemu;
mod report;
mod verifier;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{agent_build, command, interrupt, setup, workspace};
use guest::{GuestPlan, TestBinary};
use qemu::{Accel, VmEnd, VmSpec};
use report::{BinaryOutcome, KernelReport};

pub use verifier::{guest as verifier_guest, GuestArgs as VerifierGuestArgs};

/// Debian packages vm-test needs beyond `cargo xtask setup`'s: the busybox the initramfs
/// is made of, depmod and modprobe (kmod; the guest kernel loads modules on demand with the
/// host's modprobe) and xz for the 6.12 kernel's compressed modules. qemu is separate
/// ([`QEMU_PACKAGE`]).
const APT_PACKAGES: &[&str] = &["busybox-static", "kmod", "xz-utils"];

/// qemu comes from bookworm-backports: the image carries `qemu-utils` 10.0 from there, and
/// bookworm's `qemu-system-x86` 7.2 conflicts with it. Installed only when no
/// `qemu-system-x86_64` is on the PATH.
const QEMU_PACKAGE: &str = "qemu-system-x86";
const QEMU_SUITE: &str = "bookworm-backports";

/// An apt source vm-test adds when no configured source names its suites: its own file in
/// sources.list.d and, if the suite's default priority is not already low, a pin.
struct AptSource {
    /// What it is for, for the log.
    purpose: &'static str,
    /// The suites it provides (all must be named by some source, or the file is written).
    suites: &'static [&'static str],
    path: &'static str,
    text: &'static str,
    /// (path, text) of an apt preferences file, written with the source.
    pin: Option<(&'static str, &'static str)>,
}

/// bookworm-backports: qemu and Debian's 6.12 kernels (Debian also ships 6.12 updates to
/// bookworm-security; whichever offers the newest wins). apt pins backports at 100 by its
/// Release file: nothing on the host is upgraded from it unless asked for.
static BACKPORTS: AptSource = AptSource {
    purpose: "qemu and Debian's 6.12 kernels",
    suites: &["bookworm-backports"],
    path: "/etc/apt/sources.list.d/sockmesh-vm-test-backports.sources",
    text: "\
# Added by `cargo xtask vm-test` for qemu and Debian's 6.12 kernels (apt pins backports low:
# nothing is upgraded from here unless asked for).
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
",
    pin: None,
};

/// bullseye (Debian 11) and its security suite, for the 5.10 kernels only. Unlike backports
/// its packages carry normal priority, so a pin keeps the host from ever installing or
/// upgrading anything from it: priority -1 for every package but the 5.10 kernel images,
/// which get 1 (a candidate for `apt-get download`, never chosen over an installed version).
static BULLSEYE: AptSource = AptSource {
    purpose: "Debian 11's 5.10 kernels",
    suites: &["bullseye", "bullseye-security"],
    path: "/etc/apt/sources.list.d/sockmesh-vm-test-bullseye.sources",
    text: "\
# Added by `cargo xtask vm-test` for Debian 11's 5.10 kernels, which it only downloads and
# unpacks into target/vm-test (never installs). Pinned in
# /etc/apt/preferences.d/sockmesh-vm-test-bullseye: nothing on the host comes from here.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bullseye-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
",
    pin: Some((
        "/etc/apt/preferences.d/sockmesh-vm-test-bullseye",
        "\
# Added by `cargo xtask vm-test`: bullseye is only there for `apt-get download` of the 5.10
# kernel images (sources.list.d/sockmesh-vm-test-bullseye.sources).
Package: linux-image-5.10*
Pin: release n=bullseye
Pin-Priority: 1

Package: linux-image-5.10*
Pin: release n=bullseye-security
Pin-Priority: 1

Package: *
Pin: release n=bullseye
Pin-Priority: -1

Package: *
Pin: release n=bullseye-security
Pin-Priority: -1
",
    )),
};

/// The extra apt source a kernel series comes from, if any (6.1 is bookworm's own).
fn kernel_source(series: &str) -> Option<&'static AptSource> {
    if series == "5.10" || series.starts_with("5.10.") {
        Some(&BULLSEYE)
    } else {
        None
    }
}

#[derive(Args, Debug)]
pub struct VmTestArgs {
    /// Kernel series to boot, comma separated (Debian packages linux-image-<series>.*); 5.10
    /// comes from bullseye, added as a pinned apt source.
    #[arg(long, value_delimiter = ',', default_value = "6.1,6.12")]
    kernels: Vec<String>,
    /// Run only test binaries whose name contains one of these (comma separated), e.g.
    /// `--filter routing,harness`.
    #[arg(long, value_delimiter = ',')]
    filter: Vec<String>,
    /// Leave out test binaries whose name contains one of these (comma separated).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Hard limit per kernel (boot, all tests, verifier stats); qemu is killed after it.
    #[arg(long, default_value_t = 25)]
    timeout_mins: u64,
    /// Limit per test binary inside the VM.
    #[arg(long, default_value_t = 8)]
    per_test_timeout_mins: u64,
    /// Guest memory.
    #[arg(long, default_value_t = 3072)]
    memory_mib: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Without KVM: one host thread for all vCPUs (slower, but the guests survive the
    /// kernel patching its text when programs attach) or one per vCPU.
    #[arg(long, value_enum, default_value_t = qemu::TcgThreads::Single)]
    tcg_threads: qemu::TcgThreads,
    /// Exit 0 even when tests failed (a kernel that does not boot still fails the command).
    #[arg(long)]
    allow_failures: bool,
    /// Only the host's verifier statistics; no VM.
    #[arg(long, conflicts_with = "no_host_stats")]
    host_only: bool,
    /// Skip the host's verifier statistics.
    #[arg(long)]
    no_host_stats: bool,
}

pub fn run(args: &VmTestArgs) -> Result<()> {
    if args.timeout_mins == 0 || args.per_test_timeout_mins == 0 {
        bail!("--timeout-mins and --per-test-timeout-mins must be at least 1");
    }
    setup::require_root()?;
    interrupt::install();
    setup::run()?;
    install_packages(!args.host_only, &args.kernels)?;
    if !args.host_only {
        // Only the guests need busybox and xz.
        initramfs::check_tools()?;
    }

    let agent = agent_build::run()?;
    let agent = fs::canonicalize(&agent).with_context(|| agent.display().to_string())?;

    let host = if args.no_host_stats {
        Err("skipped (--no-host-stats)".to_owned())
    } else {
        println!(
            "vm-test: verifier statistics on the host ({})",
            host_release()
        );
        verifier::collect(&agent).map_err(|e| format!("{e:#}"))
    };
    let host_column = format!("host {}", host_release());
    if args.host_only {
        println!();
        print!("{}", report::verifier_table(&[(host_column, &host)]));
        return host.map(|_| ()).map_err(anyhow::Error::msg);
    }

    let tests = test_binaries(&args.filter, &args.skip)?;
    if tests.is_empty() {
        bail!(
            "no bpf-tests binary matches --filter {}",
            args.filter.join(",")
        );
    }
    println!(
        "vm-test: {} test binaries: {}",
        tests.len(),
        tests
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );

    let cache = workspace::target_dir().join("vm-test");
    let xtask = std::env::current_exe().context("path of the xtask binary")?;
    // Decided once, on the first kernel that can be fetched (kernels fetched here are
    // reused from the cache below).
    let mut accel: Option<Accel> = None;
    let mut reports = Vec::new();
    for series in &args.kernels {
        interrupt::check()?;
        println!("vm-test: ===== kernel {series} =====");
        let ctx = RunContext {
            cache: &cache,
            agent: &agent,
            xtask: &xtask,
            tests: &tests,
            args,
        };
        let report = run_kernel(series, &ctx, &mut accel)?;
        if let Some(problem) = &report.problem {
            println!("vm-test: kernel {series}: {problem}");
        }
        reports.push(report);
    }

    summarize(&tests, &reports, &host_column, &host, accel.as_ref());

    let not_booted: Vec<&str> = reports
        .iter()
        .filter(|r| r.booted.is_none())
        .map(|r| r.series.as_str())
        .collect();
    if !not_booted.is_empty() {
        bail!("kernel(s) not booted: {}", not_booted.join(", "));
    }
    let all_passed = reports.iter().all(|r| r.all_passed(tests.len()));
    match (all_passed, args.allow_failures) {
        (true, _) => {
            println!("vm-test: everything passed");
            Ok(())
        }
        (false, true) => {
            println!("vm-test: some tests failed (exit 0: --allow-failures)");
            Ok(())
        }
        (false, false) => bail!("some tests failed or did not finish (see the table above)"),
    }
}

struct RunContext<'a> {
    cache: &'a Path,
    agent: &'a Path,
    xtask: &'a Path,
    tests: &'a [TestBinary],
    args: &'a VmTestArgs,
}

/// For `vms`: installs [`APT_PACKAGES`] and qemu (from bookworm-backports), and adds the
/// apt sources the kernels in `kernels` come from. Idempotent: with everything there it
/// neither writes a file nor runs apt-get.
fn install_packages(vms: bool, kernels: &[String]) -> Result<()> {
    if !vms {
        return Ok(());
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !setup::dpkg_installed(p))
        .collect();
    let need_qemu = command::probe(Command::new("qemu-system-x86_64").arg("--version")).is_none();
    let mut sources = vec![&BACKPORTS];
    for series in kernels {
        if let Some(source) = kernel_source(series) {
            if !sources.iter().any(|s| std::ptr::eq(*s, source)) {
                sources.push(source);
            }
        }
    }
    let mut update = false;
    for source in sources {
        if ensure_source(source)? {
            update = true;
        } else if !source.suites.iter().all(|s| apt_lists_have(s)) {
            // Configured, but its lists were never fetched (or an update failed).
            update = true;
        }
    }
    if missing.is_empty() && !need_qemu && !update {
        println!(
            "vm-test: apt packages already present ({} {QEMU_PACKAGE})",
            APT_PACKAGES.join(" ")
        );
        return Ok(());
    }
    // A failed update (one unreachable source) is not fatal: the kernel search then
    // reports what is missing for the kernel that needs it.
    if let Err(e) = command::run(Command::new("apt-get").args(["update", "-q"])) {
        println!("vm-test: apt-get update: {e:#} (continuing with the lists there are)");
    }
    if !missing.is_empty() {
        println!("vm-test: installing apt packages: {}", missing.join(" "));
        setup::apt_install(&missing)?;
    }
    if need_qemu {
        println!("vm-test: installing {QEMU_PACKAGE} from {QEMU_SUITE}");
        command::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "-t"])
                .arg(QEMU_SUITE)
                .arg(QEMU_PACKAGE)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

/// Writes `source` (and its pin) unless every one of its suites is already named by a
/// configured source. Returns whether it wrote anything.
fn ensure_source(source: &AptSource) -> Result<bool> {
    if source.suites.iter().all(|s| suite_configured(s)) {
        return Ok(false);
    }
    println!(
        "vm-test: adding {} as {} (for {})",
        source.suites.join(" "),
        source.path,
        source.purpose
    );
    if let Some((path, text)) = source.pin {
        // The pin first: the source must never be there without it.
        fs::write(path, text).with_context(|| format!("write {path}"))?;
    }
    fs::write(source.path, source.text).with_context(|| format!("write {}", source.path))?;
    Ok(true)
}

/// Whether a non-comment line of an apt source file names `suite` as a word (a one-line
/// `deb URI suite comp` or a deb822 `Suites:` field).
fn suite_configured(suite: &str) -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(entries.flatten().map(|e| e.path()).filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "list" || ext == "sources")
        }));
    }
    files
        .iter()
        .any(|f| fs::read_to_string(f).is_ok_and(|text| names_suite(&text, suite)))
}

fn names_suite(text: &str, suite: &str) -> bool {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.split_whitespace().any(|word| word == suite))
}

/// Whether apt has fetched a package list of `suite` (`..._dists_<suite>_..._Packages`).
fn apt_lists_have(suite: &str) -> bool {
    let needle = format!("_dists_{suite}_");
    fs::read_dir("/var/lib/apt/lists").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains(&needle) && name.contains("_Packages")
        })
    })
}

fn host_release() -> String {
    command::probe(Command::new("uname").arg("-r"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "?".to_owned())
}

/// Builds the bpf-tests (test profile) and returns their executables, filtered and
/// without the skipped ones.
fn test_binaries(filter: &[String], skip: &[String]) -> Result<Vec<TestBinary>> {
    println!("vm-test: building the bpf-tests");
    let json = command::stdout(workspace::cargo().args([
        "test",
        "-p",
        "sockmesh-bpf-tests",
        "--no-run",
        "--message-format=json",
    ]))?;
    let all = guest::parse_test_executables(&json);
    if all.is_empty() {
        bail!("cargo built no bpf-tests executables");
    }
    Ok(all
        .into_iter()
        .filter(|t| filter.is_empty() || filter.iter().any(|f| t.name.contains(f.as_str())))
        .filter(|t| !skip.iter().any(|s| t.name.contains(s.as_str())))
        .collect())
}

/// Fetches, boots and evaluates one kernel series. Errors are only for the host side
/// breaking (interrupt, I/O); what goes wrong with the kernel is in the report.
fn run_kernel(
    series: &str,
    ctx: &RunContext<'_>,
    accel: &mut Option<Accel>,
) -> Result<KernelReport> {
    let package = match kernel::find_package(series) {
        Ok(p) => p,
        Err(e) => {
            return Ok(KernelReport::failed_to_start(
                series,
                None,
                format!("{e:#}"),
            ))
        }
    };
    println!("vm-test: kernel {series}: {package}");
    let kernel = match kernel::fetch(&package, ctx.cache) {
        Ok(k) => k,
        Err(e) => {
            return Ok(KernelReport::failed_to_start(
                series,
                Some(package),
                format!("fetch: {e:#}"),
            ))
        }
    };

    let accel = match accel {
        Some(a) => a.clone(),
        None => {
            let chosen = qemu::choose_accel(&kernel.vmlinuz, &ctx.cache.join("runs"))?;
            match &chosen {
                Accel::Kvm => println!("vm-test: accelerator: KVM"),
                Accel::Tcg(why) => println!(
                    "vm-test: accelerator: TCG (software emulation, several times slower; \
                     timing-sensitive tests may fail for that alone). KVM is not usable: {why}"
                ),
            }
            *accel = Some(chosen.clone());
            chosen
        }
    };

    let run_dir = ctx.cache.join("runs").join(&kernel.release);
    let out = run_dir.join("out");
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let script_path = run_dir.join("guest.sh");
    let initrd = run_dir.join("initramfs.cpio");
    let console = run_dir.join("console.log");

    let package_dir = workspace::root().join("bpf-tests");
    let plan = GuestPlan {
        release: &kernel.release,
        modules: &kernel.modules,
        results: &out,
        package_dir: &package_dir,
        agent: ctx.agent,
        cli: &ctx.agent.with_file_name("sockmesh"),
        control: &ctx.agent.with_file_name("sockmesh-control"),
        xtask: ctx.xtask,
        tests: ctx.tests,
        per_test_timeout_secs: ctx.args.per_test_timeout_mins * 60,
    };
    fs::write(&script_path, guest::script(&plan))?;
    let paths = initramfs::InitPaths {
        results: &out,
        guest_script: &script_path,
    };
    if let Err(e) = initramfs::build(&kernel.modules, &paths, &initrd) {
        return Ok(KernelReport::failed_to_start(
            series,
            Some(package),
            format!("initramfs: {e:#}"),
        ));
    }

    let spec = VmSpec {
        vmlinuz: &kernel.vmlinuz,
        initrd: &initrd,
        results: &out,
        console_log: &console,
        accel: &accel,
        tcg_threads: ctx.args.tcg_threads,
        memory_mib: ctx.args.memory_mib,
        cpus: ctx.args.cpus,
        timeout: Duration::from_secs(ctx.args.timeout_mins * 60),
        stall_timeout: Duration::from_secs(ctx.args.per_test_timeout_mins * 60 + 120),
    };
    let started = std::time::Instant::now();
    let end = qemu::run(&spec)?;
    println!(
        "vm-test: kernel {series}: VM ended after {:.0} s ({end:?}); console log {}",
        started.elapsed().as_secs_f64(),
        console.display()
    );

    let booted = fs::read_to_string(out.join("uname"))
        .ok()
        .map(|s| s.trim().to_owned());
    let binaries = collect_outcomes(&out, ctx.tests);
    let verifier = match fs::read_to_string(out.join("verifier.json")) {
        Ok(json) => verifier::from_json(&json).map_err(|e| format!("{e:#}")),
        Err(_) => Err(match fs::read_to_string(out.join("verifier.log")) {
            Ok(log) => error_lines(&log),
            Err(_) => "not reached".to_owned(),
        }),
    };
    let problem = match (&end, &booted) {
        (_, None) => Some(format!(
            "did not boot to userspace; console tail:\n{}",
            last_lines(&fs::read_to_string(&console).unwrap_or_default(), 15)
        )),
        (VmEnd::Stalled, Some(_)) => Some(format!(
            "the guest stopped making progress (console silent for --per-test-timeout-mins \
             + 2 min) with {} of {} test binaries done; killed",
            binaries.len(),
            ctx.tests.len()
        )),
        (VmEnd::TimedOut, Some(_)) => Some(format!(
            "timed out after {} min (--timeout-mins) with {} of {} test binaries done",
            ctx.args.timeout_mins,
            binaries.len(),
            ctx.tests.len()
        )),
        (VmEnd::Exited(_), Some(_)) if !console_says_done(&console) => {
            Some("the VM stopped before the guest script finished".to_owned())
        }
        _ => None,
    };
    let kernel_trouble = qemu::kernel_trouble(&fs::read_to_string(&console).unwrap_or_default());
    Ok(KernelReport {
        series: series.to_owned(),
        package: Some(package),
        booted,
        problem,
        binaries,
        verifier,
        kernel_trouble,
    })
}

fn console_says_done(console: &Path) -> bool {
    fs::read_to_string(console).is_ok_and(|c| c.contains("vm-test-guest: DONE"))
}

/// The outcome of every test binary the guest got to (it writes `<name>.rc` when one ends).
fn collect_outcomes(out: &Path, tests: &[TestBinary]) -> Vec<(String, BinaryOutcome)> {
    tests
        .iter()
        .filter_map(|t| {
            let log = fs::read_to_string(out.join(format!("{}.log", t.name))).ok()?;
            let rc = fs::read_to_string(out.join(format!("{}.rc", t.name)))
                .ok()
                .map(|s| s.trim().to_owned());
            let outcome = match report::parse_results(&log) {
                Some(counts) => BinaryOutcome::Finished {
                    counts,
                    failed: report::failed_tests(&log),
                },
                None => BinaryOutcome::NoResult {
                    detail: match rc.as_deref() {
                        Some("124") | Some("137") => "killed by --per-test-timeout-mins".into(),
                        Some(rc) => format!("exit {rc}; {}", last_lines(&log, 3)),
                        None => "still running when the VM stopped".into(),
                    },
                },
            };
            Some((t.name.clone(), outcome))
        })
        .collect()
}

/// What a failed step's log says went wrong: its `error:` lines (the agent's, e.g. a
/// verifier rejection, with the first lines of the verifier output after it), or else its
/// last lines. The logs end in a backtrace (`RUST_BACKTRACE=1`), so the tail alone says
/// nothing.
fn error_lines(log: &str) -> String {
    let mut errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("error:") || l.starts_with("Error:"))
        .collect();
    if errors.is_empty() {
        return last_lines(log, 3);
    }
    errors.dedup();
    // The agent's own error line is the informative one: first (the sort is stable).
    errors.sort_by_key(|l| !l.starts_with("error:"));
    errors.join("\n")
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn summarize(
    tests: &[TestBinary],
    reports: &[KernelReport],
    host_column: &str,
    host: &Result<Vec<verifier::ProgStats>, String>,
    accel: Option<&Accel>,
) {
    let names: Vec<String> = tests.iter().map(|t| t.name.clone()).collect();
    println!();
    println!(
        "vm-test: summary ({})",
        match accel {
            Some(Accel::Kvm) => "under KVM",
            Some(Accel::Tcg(_)) => "under TCG: KVM was not usable",
            None => "no VM started",
        }
    );
    for r in reports {
        println!(
            "  {}: {} -> {}",
            r.series,
            r.package.as_deref().unwrap_or("no package"),
            r.booted.as_deref().unwrap_or("NOT BOOTED")
        );
    }
    println!();
    print!("{}", report::results_table(&names, reports));
    for r in reports {
        for (name, outcome) in &r.binaries {
            match outcome {
                BinaryOutcome::Finished { failed, .. } if !failed.is_empty() => {
                    println!("  {} {name}: failed: {}", r.series, failed.join(", "))
                }
                BinaryOutcome::NoResult { detail } => {
                    println!("  {} {name}: no result: {detail}", r.series)
                }
                _ => {}
            }
        }
        if let Some(problem) = &r.problem {
            println!("  {}: {problem}", r.series);
        }
        for line in &r.kernel_trouble {
            println!("  {}: kernel: {line}", r.series);
        }
    }
    println!();
    let mut columns = vec![(host_column.to_owned(), host)];
    columns.extend(reports.iter().map(|r| {
        (
            r.booted.clone().unwrap_or_else(|| r.series.clone()),
            &r.verifier,
        )
    }));
    print!("{}", report::verifier_table(&columns));
    println!(
        "  (limit: {} verified instructions per program)",
        verifier::VERIFIER_INSN_LIMIT
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_matched_as_words_outside_comments() {
        let deb822 = "Types: deb\nSuites: bookworm bookworm-updates\n# Suites: bullseye\n";
        assert!(names_suite(deb822, "bookworm"));
        assert!(!names_suite(deb822, "bookworm-backports"));
        assert!(!names_suite(deb822, "bullseye"));
        let one_line = "deb http://deb.debian.org/debian bullseye-security main\n";
        assert!(names_suite(one_line, "bullseye-security"));
        assert!(!names_suite(one_line, "bullseye"));
    }

    #[test]
    fn a_failed_steps_error_lines_beat_its_backtrace() {
        let log = "Error: agent exited with exit status: 1\n----- agent log tail -----\n\
                   error: program sockmesh_connect4: verifier rejected it: ... Verifier output: \
                   BPF_STX uses reserved fields\nprocessed 0 insns\n-----\n\nStack backtrace:\n\
                   \x20 0: anyhow::error\n  24: _start\n";
        assert_eq!(
            error_lines(log),
            "error: program sockmesh_connect4: verifier rejected it: ... Verifier output: \
             BPF_STX uses reserved fields\nError: agent exited with exit status: 1"
        );
        assert_eq!(error_lines("a\nb\nc\nd\n"), "b\nc\nd");
    }

    #[test]
    fn only_5_10_needs_bullseye() {
        assert!(std::ptr::eq(kernel_source("5.10").unwrap(), &BULLSEYE));
        assert!(kernel_source("6.1").is_none());
        assert!(kernel_source("6.12").is_none());
        assert!(kernel_source("5.1").is_none());
        // The pin keeps every other bullseye package at -1.
        let (_, pin) = BULLSEYE.pin.unwrap();
        assert!(pin.contains("Package: *\nPin: release n=bullseye\nPin-Priority: -1"));
        assert!(pin.contains("Package: *\nPin: release n=bullseye-security\nPin-Priority: -1"));
    }
}
