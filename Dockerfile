# syntax=docker/dockerfile:1
# weir's container image: `weir` on PATH in a distroless runtime (glibc, CA certificates, no shell),
# running as the nonroot user 65532. The operator's children run `command: ["weir"]`; the chart runs
# the Entrypoint with its args.
#
#   docker build -t ghcr.io/weir-dev/weir:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Without a registry to pull the base images from, scripts/build-image.sh assembles the same image
# offline from a weir binary built on the host.

ARG RUST_VERSION=1
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
# aws-lc-sys (the TLS provider) builds with cmake; rusqlite's bundled SQLite with the C compiler.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin weir && cp target/release/weir /weir

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="weir" \
      org.opencontainers.image.description="Multi-cluster, DNS-weighted traffic controller for Kubernetes with an Envoy xDS control plane" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/weir-dev/weir" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /weir /usr/local/bin/weir
USER 65532:65532
ENTRYPOINT ["weir"]
