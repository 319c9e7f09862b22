//! `cargo xtask lint`: the gates `cargo xtask test` starts with, so a formatting slip or a
//! clippy warning fails in seconds, naming the command, instead of after the unit tests.
//!
//! 1. `cargo fmt --all --check`;
//! 2. `cargo clippy --workspace --all-targets --exclude sockmesh-ebpf -- -D warnings` (the
//!    host crates; the agent's build.rs builds the eBPF object with nightly on the way);
//! 3. clippy for the eBPF crate on its own target, the way `agent/build.rs` builds it:
//!    `rustup run nightly cargo clippy -p sockmesh-ebpf --bins --release --target
//!    bpfel-unknown-none -Z build-std=core -- -D warnings` (target dir `target/ebpf-lint`,
//!    so it never invalidates the agent's own eBPF build).

use std::process::Command;

use anyhow::{Context, Result};

use crate::{command, workspace};

/// Runs every lint gate; fails at the first red one.
pub fn run() -> Result<()> {
    println!("lint: rustfmt");
    command::run(workspace::cargo().args(["fmt", "--all", "--check"]))
        .context("lint: unformatted code (`cargo fmt --all` fixes it)")?;

    println!("lint: clippy (host crates)");
    command::run(workspace::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--exclude",
        "sockmesh-ebpf",
        "--",
        "-D",
        "warnings",
    ]))
    .context("lint: clippy warnings in the host crates")?;

    println!("lint: clippy (eBPF programs, bpfel-unknown-none)");
    command::run(&mut ebpf_clippy())
        .context("lint: clippy warnings in the eBPF programs (ebpf/programs)")?;
    println!("lint: ok");
    Ok(())
}

/// Clippy for `sockmesh-ebpf` with the nightly toolchain, target and flags `agent/build.rs`
/// builds it with.
fn ebpf_clippy() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "clippy"])
        .args(["--package", "sockmesh-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(workspace::target_dir().join("ebpf-lint"))
        .args(["--", "-D", "warnings"])
        .current_dir(workspace::root())
        // As in agent/build.rs: round robin's fetch-and-add needs BPF cpu v3.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-cpu=v3");
    // The host toolchain's cargo and compiler must not leak into the nightly run.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    cmd
}
