# syntax=docker/dockerfile:1
# The mcs-operator image: a release build of the `mcs-operator` binary on the Rust toolchain of
# Cargo.toml's rust-version, then a slim Debian runtime of the same release (bookworm, so the
# binary finds the glibc it was linked against) with only qemu-img/qemu-io (qemu-utils) and CA
# certificates. It runs as the non-root user 65532 and needs no shell: the chart and deploy/ run
# it with a read-only root filesystem, /var/lib/mcs (storage) and /tmp as the only writable
# mounts.
#
#   docker build -t ghcr.io/mcs-operator/mcs-operator:0.1.0 .

FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY src src
COPY benches benches
COPY examples examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package mcs-operator --bin mcs-operator \
    && install -D -m 0755 target/release/mcs-operator /out/mcs-operator

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends qemu-utils ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/mcs
COPY --from=build /out/mcs-operator /usr/local/bin/mcs-operator
LABEL org.opencontainers.image.title="mcs-operator" \
      org.opencontainers.image.description="Machine Creation Services image management on Kubernetes" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/mcs-operator/mcs-operator" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/mcs-operator"]
CMD ["run"]
