//! `cargo xtask build`: the release agent (with the eBPF objects its build.rs compiles), the
//! `sockmesh` CLI, the `sockmesh-control` control plane and the `sockmesh-proxy` L7 proxy
//! (beside the agent, where `--proxy spawn` finds it).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{command, workspace};

/// Builds the release agent, CLI, control plane and proxy; returns the agent binary's path.
pub fn run() -> Result<PathBuf> {
    command::run(workspace::cargo().args([
        "build",
        "--release",
        "-p",
        "sockmesh-agent",
        "-p",
        "sockmesh-control",
        "-p",
        "sockmesh-cli",
        "-p",
        "sockmesh-proxy",
        "--bins",
    ]))?;
    let bin = workspace::agent_bin();
    bin.metadata()
        .with_context(|| format!("cargo reported success but {} is missing", bin.display()))?;
    println!(
        "build: agent at {}, CLI at {}",
        bin.display(),
        cli_bin().display()
    );
    println!("build: control plane at {}", control_bin().display());
    let proxy = workspace::agent_bin().with_file_name("sockmesh-proxy");
    proxy
        .metadata()
        .with_context(|| format!("cargo reported success but {} is missing", proxy.display()))?;
    Ok(bin)
}

/// The `sockmesh` CLI next to the agent binary.
pub fn cli_bin() -> PathBuf {
    workspace::agent_bin().with_file_name("sockmesh")
}

/// The `sockmesh-control` binary next to the agent binary.
pub fn control_bin() -> PathBuf {
    workspace::agent_bin().with_file_name("sockmesh-control")
}
