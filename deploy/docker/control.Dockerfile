# syntax=docker/dockerfile:1
# sockmesh-control (and the `sockmesh` CLI) for the Deployment in deploy/k8s/.
#
#   docker build -f deploy/docker/control.Dockerfile -t ghcr.io/sockmesh/sockmesh-control:0.1.0 .
#
# Build context: the repository root. Not built by `cargo xtask test` (no container engine on
# the project's machines); checkov checks this file there. The control plane has no eBPF, so
# its builder needs only stable Rust: no nightly, LLVM or bpf-linker (the agent's does,
# agent.Dockerfile).

# ---- builder ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sockmesh-control -p sockmesh-cli \
      --bin sockmesh-control --bin sockmesh \
 && install -D -m 0755 target/release/sockmesh-control target/release/sockmesh /out/

# ---- runtime ---------------------------------------------------------------------------------
# Distroless "cc": glibc and libgcc for a Rust binary, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=builder /out/sockmesh-control /out/sockmesh /usr/local/bin/

# Probes are the Deployment's (metrics endpoint, API port); Docker's HEALTHCHECK would need a
# client in the image, and Kubernetes ignores it.
# checkov:skip=CKV_DOCKER_2: health is checked by the Deployment's readiness and liveness probes; Kubernetes ignores HEALTHCHECK and distroless has no client to run one
# 65532 is distroless's `nonroot`; the Deployment sets the same uid and runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sockmesh-control"]
