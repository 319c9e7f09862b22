//! `sockmesh-agent`, the per-node daemon; everything but the allocator is in the library
//! (src/lib.rs).

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: at 10,000 services x 10 backends the agent's peak
/// RSS during config churn was 492 MiB against 739-803 MiB with glibc (which keeps freed
/// arenas), idle CPU the same (docs/bench.md, "Memory allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sockmesh_agent::main()
}
