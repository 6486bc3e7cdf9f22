#!/usr/bin/env bash
# Build a Go helper of the tests into a cache directory keyed by the hash of its
# sources: goref (see README.md here) for tests/go_differential.rs, or, given its
# directory, tests/godecode for tests/review_differential.rs.
#
#   tests/goref/build.sh                     # builds tests/goref
#   tests/goref/build.sh tests/godecode      # builds tests/godecode
#
# Idempotent: when the cache already holds the binary for these exact sources it
# prints its path at once, without needing Go.
#
# Environment (all optional):
#   REGISTRY_GATE_GOREF_CACHE    cache root (default ~/.cache/registry-gate/<helper>);
#                                the binary goes to <root>/<hash>/<helper>
#   REGISTRY_GATE_GOREF_FORCE=1  rebuild even if the binary is cached
#
# The last line on stdout is the binary's path, so callers can do
#   GOREF=$(tests/goref/build.sh | tail -n1)
set -euo pipefail
# The whole script is one { } block so bash parses it before running: editing
# this file while a build runs cannot break the running copy.
{

HERE="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")}" && pwd)"
NAME="$(basename "${HERE}")"

log() { echo "build.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Keyed by content rather than by version, so that editing main.go or bumping a
# module can never run a stale binary.
HASH="$(cd "${HERE}" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
CACHE="${REGISTRY_GATE_GOREF_CACHE:-${HOME}/.cache/registry-gate/${NAME}}/${HASH}"
BIN="${CACHE}/${NAME}"

if [[ "${REGISTRY_GATE_GOREF_FORCE:-0}" != 1 && -x "${BIN}" ]]; then
  log "cache hit"
  echo "${BIN}"
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH (https://go.dev/dl); or set REGISTRY_GATE_GOREF_BIN to a built helper"
mkdir -p "${CACHE}"

# One build at a time per cache directory.
if command -v flock >/dev/null; then
  exec 9>"${CACHE}/.lock"
  flock 9
  if [[ "${REGISTRY_GATE_GOREF_FORCE:-0}" != 1 && -x "${BIN}" ]]; then
    log "cache hit (built by a concurrent run)"
    echo "${BIN}"
    exit 0
  fi
fi

SECONDS=0
log "building ${BIN} with $(go env GOVERSION) via $(go env GOPROXY)"
TMP="${BIN}.tmp.$$"
# -mod=readonly: go.sum is committed and must already be complete, so a build
# never edits the tree. -buildvcs=false: VCS stamping would run git in the
# enclosing repository and tie the binary to its state, for nothing.
(cd "${HERE}" && CGO_ENABLED=0 nice -n 10 go build -trimpath -mod=readonly -buildvcs=false -o "${TMP}" .) \
  || { rm -f "${TMP}"; die "go build failed in ${HERE}"; }
# Rename last, so a half-written binary is never a cache hit.
mv -f "${TMP}" "${BIN}"
log "built in ${SECONDS}s"
echo "${BIN}"
exit
}
