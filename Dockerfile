# syntax=docker/dockerfile:1
# registry-gate's image: one static executable on distroless/static (no shell, no package
# manager, no libc), run as UID 65532. The same image runs `serve` (the webhook) and `controller`.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry-gate .
#
# The executable is built by build/release.sh, the script `make release` and `make test` run,
# so the toolchain, target and flags are written in one place (docs/container-image.md).

# The Rust toolchain of every release build; build/release.sh reads this line when
# RUST_VERSION is not in its environment.
ARG RUST_VERSION=1.95.0

# The build stage runs on the builder's own platform and cross-compiles to TARGETARCH, so an
# arm64 image builds at native speed on an amd64 machine (no emulation).
FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
ARG TARGETARCH
WORKDIR /src
# The toolchain (rustup target, C compiler) in a layer of its own, kept across source changes.
COPY build/release.sh build/release.sh
# TARGETARCH (amd64, arm64) comes from BuildKit's --platform or a --build-arg; without it, the
# builder's own architecture.
RUN build/release.sh --toolchain-only "${TARGETARCH:-$(dpkg --print-architecture)}"
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}" \
    && build/release.sh --out /out "$arch" \
    && mv "/out/registry-gate-linux-$arch" /out/registry-gate

# nonroot: UID and GID 65532, home /home/nonroot; CA certificates and /etc/passwd included.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="registry-gate" \
      org.opencontainers.image.description="Kubernetes admission webhook that admits images only from registered registries and injects their pull secrets" \
      org.opencontainers.image.licenses="Apache-2.0"
# On PATH, because the manifests and the chart start it as `command: ["registry-gate"]`.
COPY --from=build /out/registry-gate /usr/local/bin/registry-gate
USER 65532:65532
# mimalloc (the amd64 executable's allocator, see Cargo.toml) commits memory as it is used and
# returns what is freed at once: with its defaults the resident memory after start was 28 MiB
# instead of 14.6 MiB with a 10,000-entry policy (benches/RESULTS.md). Ignored on arm64.
ENV MIMALLOC_ARENA_EAGER_COMMIT=0 \
    MIMALLOC_PURGE_DELAY=0
ENTRYPOINT ["/usr/local/bin/registry-gate"]
