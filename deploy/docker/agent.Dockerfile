# syntax=docker/dockerfile:1
# sockmesh-agent, the L7 proxy `sockmesh-proxy` (the DaemonSet's `proxy` container) and the
# `sockmesh` CLI, for the DaemonSet in deploy/k8s/.
#
#   docker build -f deploy/docker/agent.Dockerfile -t ghcr.io/sockmesh/sockmesh-agent:0.1.0 .
#
# Build context: the repository root. Not built by `cargo xtask test` (no container engine on
# the project's machines); checkov checks this file there. The toolchain is the one
# shared/TOOLCHAIN.md verified: stable Rust for userspace, a nightly with rust-src and LLVM 22
# for the eBPF programs (agent/build.rs builds them), bpf-linker 0.13 built against LLVM 22
# (its LLVM major must be the nightly's).

# ---- builder ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# The nightly whose LLVM is 22 (rustc 1.97.0-nightly, commit date 2026-05-19; rustup names
# nightlies by the next day). Pinned so a rebuild gets the same compiler; moving it to
# another LLVM major means moving llvm-22 and bpf-linker's feature with it.
ARG RUST_NIGHTLY=nightly-2026-05-20
ARG BPF_LINKER_VERSION=0.13.0

# LLVM 22 comes from bookworm-security (Debian ships it there for its Rust toolchain).
RUN apt-get update \
 && apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*

RUN rustup toolchain install "${RUST_NIGHTLY}" --profile minimal --component rust-src

# Without LLVM_PREFIX bpf-linker's build looks for libLLVM in /usr/lib64 and fails.
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked \
      --version "${BPF_LINKER_VERSION}" --no-default-features --features llvm-22

WORKDIR /src
COPY . .

# The eBPF objects, built as agent/build.rs builds them but with the dated nightly named
# explicitly (build.rs asks rustup for plain `nightly`, whatever that is on the day of the
# build); SOCKMESH_EBPF_OBJ hands them to build.rs, which then only copies them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_ENCODED_RUSTFLAGS=-Ctarget-cpu=v3 cargo +"${RUST_NIGHTLY}" build \
      --package sockmesh-ebpf --bins --release --target bpfel-unknown-none \
      -Z build-std=core --target-dir target/ebpf \
 && install -D -m 0644 target/ebpf/bpfel-unknown-none/release/sockmesh /ebpf/sockmesh-ebpf.o \
 && install -D -m 0644 target/ebpf/bpfel-unknown-none/release/sockmesh-netfault \
      /ebpf/sockmesh-netfault.o

RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    SOCKMESH_EBPF_OBJ=/ebpf cargo build --release --locked \
      -p sockmesh-agent -p sockmesh-cli -p sockmesh-proxy \
      --bin sockmesh-agent --bin sockmesh --bin sockmesh-proxy \
 && install -D -m 0755 target/release/sockmesh-agent target/release/sockmesh \
      target/release/sockmesh-proxy /out/

# ---- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim

# curl: the kubelet's exec probes ask the admin API on its unix socket (/ready, /status)
# and the proxy's /metrics.
# util-linux (nsenter, part of the base image) and coreutils (stat) serve the init container
# that mounts bpffs/tracefs on the node when missing.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

# sockmesh-proxy beside sockmesh-agent: where `--proxy spawn` looks for it, and what the
# DaemonSet's proxy container runs.
COPY --from=builder /out/sockmesh-agent /out/sockmesh /out/sockmesh-proxy /usr/local/bin/

# The agent runs as uid 0 with only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the DaemonSet
# drops every other capability; the proxy container keeps only CAP_BPF): Linux grants
# capabilities to uid 0 only, Kubernetes has no ambient capabilities for other users.
# checkov:skip=CKV_DOCKER_3: the agent must run as uid 0 to hold its three capabilities (see above); the DaemonSet drops all others and makes the root filesystem read-only
# checkov:skip=CKV_DOCKER_2: liveness and readiness are the DaemonSet's exec probes on the admin socket (/status, /ready); Docker's HEALTHCHECK is ignored by Kubernetes
USER 0
ENTRYPOINT ["/usr/local/bin/sockmesh-agent"]
