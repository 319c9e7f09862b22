//! `cargo xtask test`: the lint gates (`cargo xtask lint`: rustfmt, clippy for the host
//! crates and for the eBPF programs), the unit tests, then the privileged bpf-tests against
//! the release agent, with the tools' own output (and the `test result:` lines) passed
//! through unchanged.
//!
//! The bpf-tests load programs into the running kernel, so they run one at a time
//! (`--test-threads=1`) and after the leftovers of crashed earlier runs are removed: a
//! stale pin directory or cgroup named like a new test's would make that test fail for a
//! reason that has nothing to do with the code under test. Each test binary runs under a
//! timeout of its own ([`bpf_tests`]): a hang fails that binary by name and the others
//! still run.

mod bpf_tests;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{agent_build, cgroup, command, deploy_check, deploy_k8s, fuzz, lint, setup, workspace};

/// Name prefix of the bpf-tests' cgroups and pin directories; nothing else is ever removed.
const TEST_PREFIX: &str = "sockmesh-test-";
const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    setup::run()?;

    // First, and fast: a red lint needs no test run to be found.
    println!("test: lint gates");
    lint::run()?;

    println!("test: unit tests");
    // The eBPF crate only builds for bpfel-unknown-none (the agent's build.rs builds it),
    // and the bpf-tests need root and the release agent: both are left to the steps below.
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    command::run(workspace::cargo().args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "sockmesh-bpf-tests",
        "--exclude",
        "sockmesh-ebpf",
    ]))?;

    println!("test: fuzz smoke ({} s per target)", fuzz::SMOKE_SECONDS);
    fuzz::smoke()?;

    println!("test: deploy (Prometheus rules, rule tests, Grafana dashboard)");
    deploy_check::run()?;

    println!("test: deploy/k8s (kustomize render, kubernetes-validate --strict, checkov)");
    deploy_k8s::run()?;

    let agent = agent_build::run()?;
    let agent = fs::canonicalize(&agent).with_context(|| format!("{}", agent.display()))?;

    remove_leftovers(&agent)?;

    println!("test: bpf-tests (privileged, one at a time)");
    bpf_tests::run(&agent)
}

/// Removes `sockmesh-test-*` pin directories and cgroups that no running test owns.
fn remove_leftovers(agent: &Path) -> Result<()> {
    let cgroup_root = cgroup::cgroup2_mount()?;

    for pins in leftovers(Path::new(BPFFS))? {
        let name = file_name(&pins);
        if in_use(&name, &cgroup_root) {
            println!("test: leaving {} (its run is still going)", pins.display());
            continue;
        }
        println!("test: removing leftover pins {}", pins.display());
        let cleanup = Command::new(agent)
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&pins)
            .output();
        match cleanup {
            Ok(out) if out.status.success() => {}
            Ok(out) => println!(
                "test: `sockmesh-agent cleanup` failed ({}): {}; unlinking the pins instead",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => println!("test: cannot run sockmesh-agent cleanup: {e}"),
        }
        // Whatever cleanup left: unlinking a link's last pin detaches it in the kernel too.
        match fs::remove_dir_all(&pins) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                println!("test: could not remove {}: {e}", pins.display())
            }
            _ => {}
        }
    }

    for dir in leftovers(&cgroup_root)? {
        if in_use(&file_name(&dir), &cgroup_root) {
            println!("test: leaving cgroup {} (still in use)", dir.display());
            continue;
        }
        match cgroup::remove_if_unused(&dir) {
            Ok(true) => println!("test: removed leftover cgroup {}", dir.display()),
            Ok(false) => println!("test: leaving cgroup {} (still in use)", dir.display()),
            Err(e) => println!("test: could not remove {}: {e:#}", dir.display()),
        }
    }

    // Network namespaces (the cluster testbed's nodes and pods, the IPv6 tests'): deleting
    // the name frees the namespace once no process or socket holds it, and its veths with it.
    let names: Vec<String> = fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(TEST_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    for name in names {
        if in_use(&name, &cgroup_root) {
            continue;
        }
        println!("test: removing leftover network namespace {name}");
        if let Err(e) = command::run(Command::new("ip").args(["netns", "del", &name])) {
            println!("test: could not remove network namespace {name}: {e:#}");
        }
    }
    Ok(())
}

fn leftovers(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let is_dir = entry.file_type()?.is_dir();
        if is_dir && entry.file_name().to_string_lossy().starts_with(TEST_PREFIX) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Whether a `sockmesh-test-<pid>[-...]` leftover may still belong to a live test run:
/// the pid in its name is alive, or its cgroup still has processes. Other people run the
/// tests on the same machine, so only what is certainly dead is removed.
fn in_use(name: &str, cgroup_root: &Path) -> bool {
    let digits: String = name[TEST_PREFIX.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let owner_alive = !digits.is_empty() && Path::new("/proc").join(&digits).exists();
    let procs = fs::read_to_string(cgroup_root.join(name).join("cgroup.procs")).unwrap_or_default();
    owner_alive || !procs.trim().is_empty()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
