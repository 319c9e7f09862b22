//! Where the workspace and its build outputs are, and how to call cargo from inside xtask.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn root() -> PathBuf {
    // xtask is always built from this workspace, so its manifest dir is a fixed child of it.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR like cargo does.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        None => root().join("target"),
    }
}

/// The release agent binary that `cargo xtask build` produces.
pub fn agent_bin() -> PathBuf {
    target_dir().join("release").join("sockmesh-agent")
}

/// A `cargo` command run from the workspace root, with the same cargo that runs xtask.
pub fn cargo() -> Command {
    // `cargo run` exports CARGO; using it keeps the toolchain the user picked (e.g. +stable).
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root());
    cmd
}
