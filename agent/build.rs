//! Builds the eBPF programs (crate `sockmesh-ebpf`) for bpfel-unknown-none with the nightly
//! toolchain and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! aya-build does the same job but overwrites RUSTFLAGS, and we need `-C target-cpu=v3`:
//! round robin uses an atomic fetch-and-add, which LLVM only emits for BPF cpu v3 (kernel
//! >= 5.12). So this is our own ~50-line version of it.

use std::{env, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("agent crate has a parent dir")?;
    for dir in [
        "ebpf/programs/src",
        "ebpf/programs/Cargo.toml",
        "ebpf/common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=SOCKMESH_EBPF_OBJ");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // Escape hatch for environments that build the objects elsewhere (e.g. a Dockerfile
    // stage): a directory holding sockmesh-ebpf.o and sockmesh-netfault.o.
    if let Ok(prebuilt) = env::var("SOCKMESH_EBPF_OBJ") {
        for object in ["sockmesh-ebpf.o", "sockmesh-netfault.o"] {
            let from = PathBuf::from(&prebuilt).join(object);
            std::fs::copy(&from, out_dir.join(object))
                .with_context(|| format!("copy {}", from.display()))?;
        }
        return Ok(());
    }

    let target_dir = out_dir.join("ebpf-target");
    // No BTF yet: the programs use only legacy maps, and the kernel rejects the BTF rustc
    // emits for some Rust types (enum layouts), which only produces load-time warnings.
    let flags = ["-Ctarget-cpu=v3"].join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        "sockmesh-ebpf",
        "--bins",
    ])
    .args([
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(root)
    .env("CARGO_ENCODED_RUSTFLAGS", flags);
    // Do not leak the host build's compiler wrapper or toolchain into the nightly build.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().context(
        "failed to run `rustup run nightly cargo build` for the eBPF programs; \
         run `cargo xtask setup` to install the toolchain",
    )?;
    if !status.success() {
        bail!(
            "building the eBPF programs failed ({status}); `cargo xtask setup` installs \
             rust-src for nightly and bpf-linker"
        );
    }
    for (bin, object) in [
        ("sockmesh", "sockmesh-ebpf.o"),
        ("sockmesh-netfault", "sockmesh-netfault.o"),
    ] {
        let built = target_dir.join("bpfel-unknown-none/release").join(bin);
        let dest = out_dir.join(object);
        std::fs::copy(&built, &dest).with_context(|| format!("copy {}", built.display()))?;
    }
    Ok(())
}
