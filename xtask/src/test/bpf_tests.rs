//! The privileged bpf-tests, one test binary at a time, each under a timeout.
//!
//! cargo builds the binaries once (`cargo test --no-run`, its progress and diagnostics on
//! stderr as usual); then each binary runs with `--test-threads=1`, its output passed
//! through (so its `test result:` line shows), in a process group of its own. One that
//! outlives `SOCKMESH_TEST_TIMEOUT_SECS` (default [`DEFAULT_TIMEOUT`]) is killed with its
//! whole group (the agents, backends and clients it started), reported as
//! `bpf-test NAME timed out after N s`, and what it left behind is removed before the next
//! one starts. Every binary runs (no fail-fast); the step fails at the end, listing each
//! binary that failed or timed out.

use std::env;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{remove_leftovers, TEST_PREFIX};
use crate::vm_test::guest::{parse_test_executables, TestBinary};
use crate::{cgroup, command, interrupt, setup, workspace};

/// Per-binary limit when `SOCKMESH_TEST_TIMEOUT_SECS` is unset: several times the slowest
/// binary's usual run (chaos_restart, about two minutes), so only a hang reaches it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
const TIMEOUT_ENV: &str = "SOCKMESH_TEST_TIMEOUT_SECS";
const POLL: Duration = Duration::from_millis(100);

/// How one binary ended.
enum Outcome {
    Passed,
    Failed(ExitStatus),
    TimedOut(Duration),
}

/// Builds the bpf-tests, runs every binary against `agent` (the release agent, with the CLI
/// and control plane beside it) and fails unless all of them passed.
pub fn run(agent: &Path) -> Result<()> {
    let timeout = timeout()?;
    // Ctrl-C reaches only the terminal's foreground group, which the test binaries are not
    // in (they get groups of their own, to be killable as a whole): pass it on ourselves.
    interrupt::install();
    let binaries = build()?;
    println!(
        "test: {} bpf-test binaries, each limited to {} s ({TIMEOUT_ENV})",
        binaries.len(),
        timeout.as_secs()
    );

    let mut bad = Vec::new();
    for binary in &binaries {
        println!("test: bpf-test {} ({})", binary.name, binary.exe.display());
        match run_one(binary, agent, timeout)? {
            Outcome::Passed => {}
            Outcome::Failed(status) => {
                println!("bpf-test {} failed ({status})", binary.name);
                bad.push(format!("{} ({status})", binary.name));
            }
            Outcome::TimedOut(after) => {
                println!(
                    "bpf-test {} timed out after {} s",
                    binary.name,
                    after.as_secs()
                );
                bad.push(format!(
                    "{} (timed out after {} s)",
                    binary.name,
                    after.as_secs()
                ));
                // Killed, its guards never ran: clear its cgroups and pins for the next one.
                remove_leftovers(agent)?;
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} of {} bpf-test binaries failed: {}",
            bad.len(),
            binaries.len(),
            bad.join(", ")
        );
    }
    println!("test: all {} bpf-test binaries passed", binaries.len());
    Ok(())
}

fn timeout() -> Result<Duration> {
    parse_timeout(env::var(TIMEOUT_ENV).ok().as_deref())
}

fn parse_timeout(value: Option<&str>) -> Result<Duration> {
    let Some(v) = value else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let secs: u64 = v
        .trim()
        .parse()
        .with_context(|| format!("{TIMEOUT_ENV}={v:?}: not a number of seconds"))?;
    if secs == 0 {
        bail!("{TIMEOUT_ENV} must be at least 1");
    }
    Ok(Duration::from_secs(secs))
}

/// `cargo test --no-run`: builds every bpf-test binary once and names their executables.
fn build() -> Result<Vec<TestBinary>> {
    let mut cmd = workspace::cargo();
    cmd.args([
        "test",
        "--no-run",
        "-p",
        "sockmesh-bpf-tests",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped());
    let shown = command::describe(&cmd);
    eprintln!("xtask: $ {shown}");
    let out = cmd
        .output()
        .with_context(|| format!("failed to start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    let binaries = parse_test_executables(&String::from_utf8_lossy(&out.stdout));
    if binaries.is_empty() {
        bail!("`{shown}` built no test binaries");
    }
    Ok(binaries)
}

fn run_one(binary: &TestBinary, agent: &Path, timeout: Duration) -> Result<Outcome> {
    let package = workspace::root().join("bpf-tests");
    let mut cmd = Command::new(&binary.exe);
    cmd.arg("--test-threads=1")
        // As `cargo test` runs it: from the package, which tests may read files relative to.
        .current_dir(&package)
        .env("CARGO_MANIFEST_DIR", &package)
        .env("SOCKMESH_AGENT_BIN", agent)
        .env("SOCKMESH_CLI_BIN", agent.with_file_name("sockmesh"))
        .env(
            "SOCKMESH_CONTROL_BIN",
            agent.with_file_name("sockmesh-control"),
        )
        // Free metrics ports for the agents under test, as for demo and bench.
        .env("SOCKMESH_METRICS_ADDR", "127.0.0.1:0")
        .env(
            setup::GRPC_PYTHON_ENV,
            Path::new(setup::GRPC_VENV).join("bin").join("python"),
        )
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {}", binary.exe.display()))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(if status.success() {
                Outcome::Passed
            } else {
                Outcome::Failed(status)
            });
        }
        if let Err(e) = interrupt::check() {
            kill_group(&mut child);
            return Err(e.context(format!("bpf-test {} stopped", binary.name)));
        }
        if started.elapsed() >= timeout {
            kill_group(&mut child);
            return Ok(Outcome::TimedOut(timeout));
        }
        thread::sleep(POLL);
    }
}

/// SIGKILLs the binary's process group, then every process still in the cgroups it made
/// (`sockmesh-test-<its pid>-*`: a process it moved there may have left the group), and
/// reaps it.
fn kill_group(child: &mut Child) {
    let pid = child.id();
    // SAFETY: kill(2) on the process group we created for this child (its pid is the pgid).
    unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    let _ = child.wait();
    let Ok(root) = cgroup::cgroup2_mount() else {
        return;
    };
    let prefix = format!("{TEST_PREFIX}{pid}-");
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            // Kills every process in the cgroup and below it (kernel >= 5.14).
            let _ = fs::write(entry.path().join("cgroup.kill"), "1");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    /// A stand-in test binary: a shell script that ignores its arguments.
    fn script(name: &str, body: &str) -> TestBinary {
        let dir = env::temp_dir().join(format!("xtask-bpf-runner-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let exe = dir.join(name);
        fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        TestBinary {
            name: name.into(),
            exe,
        }
    }

    fn agent() -> PathBuf {
        PathBuf::from("/nonexistent/sockmesh-agent")
    }

    #[test]
    fn exit_status_decides_pass_or_fail() {
        let pass = script("pass", "exit 0");
        let fail = script("fail", "exit 101");
        let limit = Duration::from_secs(60);
        assert!(matches!(
            run_one(&pass, &agent(), limit).unwrap(),
            Outcome::Passed
        ));
        match run_one(&fail, &agent(), limit).unwrap() {
            Outcome::Failed(status) => assert_eq!(status.code(), Some(101)),
            _ => panic!("exit 101 is a failure"),
        }
    }

    #[test]
    fn a_hang_is_killed_with_its_process_group() {
        // The script's child (a second sleep) is in the same group and must die too: it
        // writes its pid, and the test checks that pid is gone afterwards.
        let dir = env::temp_dir().join(format!("xtask-bpf-runner-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("grandchild.pid");
        let hang = script(
            "hang",
            &format!("sleep 300 & echo $! > {}\nwait", pidfile.display()),
        );
        let started = Instant::now();
        let outcome = run_one(&hang, &agent(), Duration::from_secs(1)).unwrap();
        assert!(matches!(outcome, Outcome::TimedOut(t) if t == Duration::from_secs(1)));
        assert!(started.elapsed() < Duration::from_secs(30));
        let grandchild = fs::read_to_string(&pidfile).unwrap();
        let proc_dir = Path::new("/proc").join(grandchild.trim());
        // SIGKILLed; init reaps it shortly after (it was reparented when the script died).
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc_dir.exists() && !is_zombie(&proc_dir) {
            assert!(Instant::now() < deadline, "{} survived", proc_dir.display());
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_zombie(proc_dir: &Path) -> bool {
        fs::read_to_string(proc_dir.join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    }

    #[test]
    fn timeout_from_env_or_default() {
        assert_eq!(parse_timeout(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(parse_timeout(Some("42")).unwrap(), Duration::from_secs(42));
        assert!(parse_timeout(Some("0")).is_err());
        assert!(parse_timeout(Some("soon")).is_err());
    }
}
