//! `cargo xtask setup`: everything a fresh Debian 12 machine lacks to build and run sockmesh
//! (the verified steps of shared/TOOLCHAIN.md), installed idempotently.
//!
//! Each step first checks cheaply whether its result is already there, so `demo`, `test` and
//! `bench` can run setup every time: on a prepared machine it costs a few process starts and
//! never touches the network (`apt-get update` only runs when a package is missing).

use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::command;

/// Debian packages: LLVM 22 for bpf-linker (its major must match the nightly's LLVM), the
/// haproxy that bench compares against, bpftool for bench's BPF stats, and the tools the
/// bpf-tests and demo drive (ip, curl, python3), the Prometheus server and promtool the
/// signal tests scrape the agent with, and the HTTP load generators of the L7 bench and
/// tests (wrk for HTTP/1.1, h2load from nghttp2-client for HTTP/2).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "haproxy",
    "bpftool",
    "iproute2",
    "curl",
    "python3",
    "prometheus",
    // The virtualenv holding kubernetes-validate and checkov (`deploy_tools`).
    "python3-venv",
    "wrk",
    "nghttp2-client",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz for `cargo xtask fuzz` and the test smoke; 0.13.2 builds with the stable
/// toolchain here (`--locked`: its own lock file, not whatever crates.io has today).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// kubernetes-validate and checkov for the deploy/ checks of `cargo xtask test`
/// (`deploy_k8s`), from PyPI at pinned versions, in a virtualenv of their own: checkov pins
/// dozens of libraries, which would otherwise move packages under the machine's python3.
/// Outside the workspace so a fresh clone (CI) reuses it.
pub const DEPLOY_TOOLS_VENV: &str = "/opt/sockmesh-xtask/deploy-tools";
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
pub const CHECKOV_VERSION: &str = "3.3.30";

/// grpcio for the L7 gRPC bpf-test (a stock gRPC client and server through a VIP), from PyPI
/// at a pinned version in a virtualenv of its own; the bpf-tests find its python through
/// [`GRPC_PYTHON_ENV`].
pub const GRPC_VENV: &str = "/opt/sockmesh-xtask/grpc";
pub const GRPCIO_VERSION: &str = "1.85.4";
pub const GRPC_PYTHON_ENV: &str = "SOCKMESH_GRPC_PYTHON";

/// The only nightly that exists on these machines; newer ones cannot be installed, so it is
/// named as installed rather than by date (shared/TOOLCHAIN.md).
const NIGHTLY: &str = "nightly";

pub fn run() -> Result<()> {
    require_root()?;
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    kubectl()?;
    deploy_tools()?;
    grpc_tools()?;
    mount_if_missing("bpf", Path::new("/sys/fs/bpf"))?;
    mount_if_missing("tracefs", Path::new("/sys/kernel/tracing"))?;
    match crate::cgroup::cgroup2_mount() {
        Ok(path) => println!("setup: cgroup v2 at {}", path.display()),
        Err(e) => bail!("{e:#}; sockmesh attaches to a cgroup v2 directory"),
    }
    println!("setup: done");
    Ok(())
}

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "this needs root: it installs packages, mounts bpffs and loads eBPF programs \
             (run it as root, e.g. `sudo -E cargo xtask ...`)"
        );
    }
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        println!(
            "setup: apt packages already present ({})",
            APT_PACKAGES.join(" ")
        );
        return Ok(());
    }
    println!("setup: installing apt packages: {}", missing.join(" "));
    // The package lists may be stale or absent on a fresh machine; refresh them only now
    // that something has to be installed.
    command::run(Command::new("apt-get").args(["update", "-q"]))?;
    apt_install(&missing)
}

/// `apt-get install` of `packages`, non-interactive, without recommends (lists already fresh).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    command::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

pub fn dpkg_installed(pkg: &str) -> bool {
    // `dpkg -s` also succeeds for removed-but-configured packages; the status word does not.
    command::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn rust_src() -> Result<()> {
    let installed = command::probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src for {NIGHTLY} already present");
        return Ok(());
    }
    println!("setup: adding rust-src to {NIGHTLY} (build-std for bpfel-unknown-none)");
    command::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))
}

fn bpf_linker() -> Result<()> {
    let version = command::probe(Command::new("bpf-linker").arg("--version"));
    if version
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} already present");
        return Ok(());
    }
    match version {
        Some(v) => println!(
            "setup: replacing {} with bpf-linker {BPF_LINKER_VERSION} (a few minutes)",
            v.trim()
        ),
        None => println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (a few minutes)"),
    }
    // LLVM_PREFIX: without it bpf-linker's build looks for libLLVM in /usr/lib64 and fails.
    // Plain `cargo` (not the one running xtask): an install is independent of the workspace.
    command::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .current_dir("/"),
    )
}

/// Installs cargo-fuzz unless that version already answers `cargo fuzz --version`. Needs no
/// root (it installs into the user's cargo home), so `cargo xtask fuzz` calls it directly.
pub fn cargo_fuzz() -> Result<()> {
    let version = command::probe(Command::new("cargo").args(["fuzz", "--version"]));
    if version
        .as_deref()
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION))
    {
        println!("setup: cargo-fuzz {CARGO_FUZZ_VERSION} already present");
        return Ok(());
    }
    match version {
        Some(v) => println!(
            "setup: replacing {} with cargo-fuzz {CARGO_FUZZ_VERSION}",
            v.trim()
        ),
        None => println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)"),
    }
    command::run(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ])
            .current_dir("/"),
    )
}

/// kubectl for `kubectl kustomize deploy/`: any kubectl present is kept (a newer one from
/// the Kubernetes packages, say); without one, Debian's (`kubernetes-client`, 1.20, whose
/// kustomize renders deploy/ the same as kustomize v5).
fn kubectl() -> Result<()> {
    if let Some(v) = command::probe(Command::new("kubectl").args(["version", "--client"])) {
        let first = v.lines().next().unwrap_or_default().to_owned();
        println!("setup: kubectl already present ({})", first.trim());
        return Ok(());
    }
    println!("setup: installing Debian's kubectl (kubernetes-client)");
    command::run(Command::new("apt-get").args(["update", "-q"]))?;
    command::run(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "kubernetes-client",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs kubernetes-validate and checkov into [`DEPLOY_TOOLS_VENV`] unless both already
/// answer `--version` with the pinned versions there.
fn deploy_tools() -> Result<()> {
    let venv = Path::new(DEPLOY_TOOLS_VENV);
    let bin = venv.join("bin");
    let pinned = [
        ("kubernetes-validate", KUBERNETES_VALIDATE_VERSION),
        ("checkov", CHECKOV_VERSION),
    ];
    let present = pinned.iter().all(|(tool, version)| {
        command::probe(Command::new(bin.join(tool)).arg("--version"))
            .is_some_and(|v| v.trim() == *version)
    });
    if present {
        println!(
            "setup: kubernetes-validate {KUBERNETES_VALIDATE_VERSION} and checkov \
             {CHECKOV_VERSION} already present in {DEPLOY_TOOLS_VENV}"
        );
        return Ok(());
    }
    println!("setup: installing kubernetes-validate and checkov from PyPI (about a minute)");
    pip_install(venv, &pinned)
}

/// Installs grpcio into [`GRPC_VENV`] unless its python already imports that version.
fn grpc_tools() -> Result<()> {
    let venv = Path::new(GRPC_VENV);
    let python = venv.join("bin").join("python");
    let version =
        command::probe(Command::new(&python).args(["-c", "import grpc; print(grpc.__version__)"]));
    if version.as_deref().map(str::trim) == Some(GRPCIO_VERSION) {
        println!("setup: grpcio {GRPCIO_VERSION} already present in {GRPC_VENV}");
        return Ok(());
    }
    println!("setup: installing grpcio {GRPCIO_VERSION} from PyPI into {GRPC_VENV}");
    pip_install(venv, &[("grpcio", GRPCIO_VERSION)])
}

/// `pip install name==version...` into the virtualenv at `venv`, creating it first if needed.
fn pip_install(venv: &Path, pinned: &[(&str, &str)]) -> Result<()> {
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        fs::create_dir_all(venv).with_context(|| format!("create {}", venv.display()))?;
        command::run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    }
    command::run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(
                pinned
                    .iter()
                    .map(|(name, version)| format!("{name}=={version}")),
            ),
    )
}

/// Mounts a pseudo filesystem of type `fstype` at `target` unless one already is there.
fn mount_if_missing(fstype: &str, target: &Path) -> Result<()> {
    if is_mounted(fstype, target)? {
        println!("setup: {fstype} already mounted at {}", target.display());
        return Ok(());
    }
    fs::create_dir_all(target).with_context(|| format!("create {}", target.display()))?;
    let c_target = CString::new(target.as_os_str().as_encoded_bytes())?;
    let c_type = CString::new(fstype)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call;
    // pseudo filesystems take no data argument.
    let rc = unsafe {
        libc::mount(
            c_type.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("mount -t {fstype} {fstype} {}: {err}", target.display());
    }
    println!("setup: mounted {fstype} at {}", target.display());
    Ok(())
}

fn is_mounted(fstype: &str, target: &Path) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, ty) = (fields.next(), fields.next(), fields.next());
        dir.map(Path::new) == Some(target) && ty == Some(fstype)
    }))
}
