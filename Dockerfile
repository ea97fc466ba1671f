# syntax=docker/dockerfile:1
# The release binaries (mailvault-collector, mailvault-aggregator, mailvault-indexer, mailvault)
# on a slim Debian base, run as uid/gid 10001 — the user the Helm chart (helm/mailvault) runs
# them as. Build from the repository root:
#
#   docker build -t mailvault:0.1.0 .
#
# The binaries handle SIGTERM themselves (flush, ack, exit), so they run as PID 1 without an
# init. The chart sets each container's command; the image's default only prints help.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG RUST_VERSION
# aws-lc-sys (rustls' provider in the AWS SDK) may build with cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
# The image's toolchain, without rust-toolchain.toml's rustfmt/clippy downloads.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} CARGO_INCREMENTAL=0
WORKDIR /src
COPY . .
# The cache mounts are gone after this step, so the binaries are copied out within it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p mailvault-collector -p mailvault-aggregator -p mailvault-indexer -p mailvault-ops \
      --bin mailvault-collector --bin mailvault-aggregator --bin mailvault-indexer --bin mailvault \
 && install -d /out \
 && install -m 0755 target/release/mailvault-collector target/release/mailvault-aggregator \
      target/release/mailvault-indexer target/release/mailvault /out/

FROM debian:${DEBIAN_RELEASE}-slim
# CA certificates: S3 and NATS over TLS trust the system roots (the chart adds a private NATS
# CA next to /etc/ssl/certs/ca-certificates.crt).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mailvault \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/mailvault --shell /usr/sbin/nologin mailvault \
 && install -d -o 10001 -g 10001 /var/lib/mailvault
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/mailvault
CMD ["mailvault", "--help"]
