#!/usr/bin/env bash
# The one build of registry-gate that ships: a static Linux executable (musl libc linked in, no
# dynamic loader, no shared libraries), so that it runs on an image with no libc at all. The
# Dockerfile runs this script, `make release` runs it, and `make image-smoke` (part of `make
# test`) runs it and tests what it built, so the image's build step is exercised on every run.
#
#   build/release.sh [--out DIR] ARCH...   ARCH: amd64 | arm64
#   build/release.sh --toolchain-only ARCH...
#
# Builds each ARCH and prints the path of its executable. With --out, also copies it to
# DIR/registry-gate-linux-ARCH and writes DIR/SHA256SUMS for every executable in DIR.
# --toolchain-only installs what the builds need and stops (the Dockerfile's cached layer).
#
# Everything that decides the bytes of the executable is set here and nowhere else:
# - the Rust toolchain: RUST_VERSION from the environment (the Dockerfile's build argument),
#   otherwise the Dockerfile's `ARG RUST_VERSION=` line, so both always agree;
# - the target triple (<arch>-unknown-linux-musl) and the release profile of Cargo.toml;
# - the Rust flags (below); RUSTFLAGS from the environment are ignored;
# - the C compiler for the C and assembly in ring (TLS) and psm (a stack-growth helper):
#   musl-gcc (Debian's musl-tools) for the machine's own architecture, Debian's GNU cross
#   compiler otherwise. The cross compiler only compiles those objects: the link uses the musl
#   C library, start files and unwinder that rustup ships with the musl target ("self-contained"
#   linking), never the cross compiler's glibc.
# CARGO_TARGET_DIR defaults to target/musl, so that these builds neither wait on nor invalidate
# the development builds in target/.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

die() { echo "build/release.sh: $*" >&2; exit 1; }

out=
toolchain_only=false
arches=()
while (($#)); do
  case $1 in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --toolchain-only) toolchain_only=true; shift ;;
    amd64 | arm64) arches+=("$1"); shift ;;
    -h | --help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (architectures: amd64, arm64)" ;;
  esac
done
((${#arches[@]})) || die "name at least one architecture: amd64, arm64"

if [[ -z ${RUST_VERSION:-} ]]; then
  RUST_VERSION=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
  [[ -n $RUST_VERSION ]] || die "no RUST_VERSION in the environment nor an 'ARG RUST_VERSION=' line in Dockerfile"
fi

rust_arch() {
  case $1 in
    amd64) echo x86_64 ;;
    arm64) echo aarch64 ;;
  esac
}
# Debian's GNU cross compiler for a Rust arch, and the C headers it compiles against (ring's C
# includes <stdint.h> and <string.h>; their declarations are the same for musl).
cross_packages() {
  case $1 in
    x86_64) echo gcc-x86-64-linux-gnu libc6-dev-amd64-cross ;;
    aarch64) echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
  esac
}

apt_install() {
  command -v apt-get >/dev/null || die "missing $*; install it (Debian: apt-get install $*)"
  [[ $(id -u) == 0 ]] || die "missing $*; run as root or install it: apt-get install $*"
  echo "build/release.sh: installing $* with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! rustup toolchain list | grep -q "^$RUST_VERSION-"; then
  rustup toolchain install --profile minimal "$RUST_VERSION"
fi
cargo=(cargo "+$RUST_VERSION")
host_arch=$(rustc "+$RUST_VERSION" -vV | sed -n 's/^host: \([^-]*\)-.*/\1/p')

# Per architecture: the C compiler and linker (environment variables read by cc-rs and Cargo).
declare -A build_env
for arch in "${arches[@]}"; do
  rarch=$(rust_arch "$arch")
  triple=$rarch-unknown-linux-musl
  triple_env=${triple//-/_}
  if rustup target list --toolchain "$RUST_VERSION" --installed | grep -qx "$triple"; then :; else
    rustup target add --toolchain "$RUST_VERSION" "$triple"
  fi
  if [[ $rarch == "$host_arch" ]]; then
    command -v musl-gcc >/dev/null || apt_install musl-tools
    build_env[$arch]="CC_$triple_env=musl-gcc"
  else
    gcc=$rarch-linux-gnu-gcc
    if ! command -v "$gcc" >/dev/null || [[ ! -e /usr/$rarch-linux-gnu/include/string.h ]]; then
      # shellcheck disable=SC2046 # two package names
      apt_install $(cross_packages "$rarch")
    fi
    build_env[$arch]="CC_$triple_env=$gcc AR_$triple_env=$rarch-linux-gnu-ar CARGO_TARGET_${triple_env^^}_LINKER=$gcc"
  fi
done
$toolchain_only && exit 0

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/musl}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# crt-static: the musl targets' default, stated so that a change of default cannot quietly make
# the executable dynamic. The path remappings keep the checkout's and Cargo's locations (which
# differ between the image's build and a local one) out of the executable's panic messages.
rustflags=(
  -Ctarget-feature=+crt-static
  "--remap-path-prefix=$repo=/registry-gate"
  "--remap-path-prefix=$cargo_home=/cargo"
)
unset RUSTFLAGS
export CARGO_ENCODED_RUSTFLAGS
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; echo "${rustflags[*]}")

built=()
for arch in "${arches[@]}"; do
  triple=$(rust_arch "$arch")-unknown-linux-musl
  echo "build/release.sh: $arch: cargo +$RUST_VERSION build --release --locked --target $triple" >&2
  # shellcheck disable=SC2086 # build_env holds NAME=VALUE words.
  env ${build_env[$arch]} "${cargo[@]}" build --release --locked --target "$triple" --bin registry-gate
  binary=$CARGO_TARGET_DIR/$triple/release/registry-gate
  if [[ -n $out ]]; then
    mkdir -p "$out"
    cp "$binary" "$out/registry-gate-linux-$arch"
  fi
  built+=("$binary")
done

if [[ -n $out ]]; then
  (cd "$out" && sha256sum registry-gate-linux-* >SHA256SUMS)
fi
printf '%s\n' "${built[@]}"
