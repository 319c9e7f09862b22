//! `cargo xtask`: the project's own commands, so a fresh machine needs only two README lines.
//!
//! - `setup`: installs the eBPF toolchain and mounts bpffs/tracefs (idempotent).
//! - `build`: builds the release agent (its build.rs builds the eBPF object).
//! - `lint`:  rustfmt and clippy (host crates, and the eBPF programs on their target).
//! - `test`:  the lint gates, unit tests, then the privileged bpf-tests against the release
//!   agent, each test binary under a timeout.
//! - `demo`:  routes a bounded client load through the default config's VIPs (live table),
//!   then a scene where a backend dies, is banned, returns and is let back in after a probe.
//! - `bench`: direct vs. sockmesh vs. one haproxy hop, connect rate and request latency.
//! - `fuzz`:  the cargo-fuzz targets in `fuzz/`, each for a bounded time.
//! - `cluster`: the cluster testbed to watch: nodes and pods in network namespaces, an agent
//!   per node following one control plane on the Kubernetes source; a node dies.
//! - `chaos`: SIGKILLs the agent at random moments under load; nothing may be lost or leaked.
//! - `vm-test`: the bpf-tests on Debian's 6.1 and 6.12 kernels, each in a qemu VM, plus the
//!   verifier statistics of every program per kernel (docs/vm-test.md).
//!
//! Everything that touches the kernel does so in a child cgroup and a bpffs directory of its
//! own, and removes both again, also when it fails or is interrupted.

mod agent_build;
mod attached_agent;
mod bench;
mod cgroup;
mod chaos;
mod cluster;
mod command;
mod demo;
mod deploy_check;
mod deploy_k8s;
mod fuzz;
mod interrupt;
mod lint;
mod scratch;
mod setup;
mod test;
mod vm_test;
mod workspace;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "sockmesh build, setup, test, demo and bench"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain and system packages, mount bpffs and tracefs (needs root).
    Setup,
    /// Build the release agent (and with it the eBPF programs).
    Build,
    /// rustfmt and clippy (-D warnings) on every crate, the eBPF programs included.
    Lint,
    /// Lint gates, unit tests, then the privileged bpf-tests (needs root).
    Test,
    /// Route a bounded client load through the default config's VIPs and show the split.
    Demo(demo::DemoArgs),
    /// Compare direct connects, sockmesh and one haproxy hop.
    Bench(bench::BenchArgs),
    /// Run the cargo-fuzz targets, each for a bounded time (docs/fuzzing.md).
    Fuzz(fuzz::FuzzArgs),
    /// SIGKILL the agent at random moments under load; prove nothing is lost or leaked.
    Chaos(chaos::ChaosArgs),
    /// A cluster on this machine: nodes and pods in network namespaces, an agent per node,
    /// one control plane; a live table per node, and a node that dies (needs root).
    Cluster(cluster::ClusterArgs),
    /// The bpf-tests on Debian's 6.1 and 6.12 kernels in qemu VMs, with verifier
    /// statistics (needs root; docs/vm-test.md).
    VmTest(vm_test::VmTestArgs),
    /// vm-test's verifier statistics step; the guest runs it inside each VM.
    #[command(hide = true)]
    VmVerifier(vm_test::VerifierGuestArgs),
    /// The bench's load generator; bench starts it itself, inside the bench cgroup.
    #[command(hide = true)]
    Loadgen(bench::loadgen::LoadgenArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build => agent_build::run().map(|_| ()),
        Cmd::Lint => lint::run(),
        Cmd::Test => test::run(),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Chaos(args) => chaos::run(&args),
        Cmd::Cluster(args) => cluster::run(&args),
        Cmd::VmTest(args) => vm_test::run(&args),
        Cmd::VmVerifier(args) => vm_test::verifier_guest(&args),
        Cmd::Loadgen(args) => bench::loadgen::run(&args),
    }
}
