#!/usr/bin/env bash
# Build helm from its Go module (the Go module proxy) into a cache directory, for charts/test.sh.
#
# Idempotent: when the cache already holds helm of the requested version it prints where it is
# and exits at once. The same layout as tests/controlplane/build.sh.
#
# Environment (all optional):
#   REGISTRY_GATE_HELM_VERSION   helm.sh/helm/v3 release (default below)
#   REGISTRY_GATE_HELM_CACHE     output dir (default ~/.cache/registry-gate/helm/<version>)
#   REGISTRY_GATE_HELM_FORCE=1   rebuild even if the cache looks complete
#
# Output: <cache>/bin/helm and <cache>/versions.env. The last line on stdout is the path of the
# helm binary, so callers can do
#   HELM=$(charts/helm.sh | tail -n1)
set -euo pipefail
# One { } block, so bash parses the whole script before running it: editing this file while a
# build runs cannot break the running copy.
{

HELM_VERSION="${REGISTRY_GATE_HELM_VERSION:-v3.22.0}"
CACHE="${REGISTRY_GATE_HELM_CACHE:-${HOME}/.cache/registry-gate/helm/${HELM_VERSION}}"
BIN="${CACHE}/bin"
STAMP="${CACHE}/versions.env"

log() { echo "helm.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cache_ok() {
  [[ -f "${STAMP}" && -x "${BIN}/helm" ]] &&
    [[ "$(sed -n 's/^HELM_VERSION=//p' "${STAMP}")" == "${HELM_VERSION}" ]]
}

print_result() {
  log "helm ${HELM_VERSION} ($(tr '\n' ' ' <"${STAMP}"))"
  echo "${BIN}/helm"
}

if [[ "${REGISTRY_GATE_HELM_FORCE:-0}" != 1 ]] && cache_ok; then
  log "cache hit"
  print_result
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "${CACHE}"

# One build at a time per cache directory.
if command -v flock >/dev/null; then
  exec 9>"${CACHE}/.lock"
  flock 9
  if [[ "${REGISTRY_GATE_HELM_FORCE:-0}" != 1 ]] && cache_ok; then
    log "cache hit (built by a concurrent run)"
    print_result
    exit 0
  fi
fi

SECONDS=0
export CGO_ENABLED=0 # a static binary, no C toolchain needed

log "resolving helm.sh/helm/v3@${HELM_VERSION} via $(go env GOPROXY)"
HELM_JSON="$(cd "${CACHE}" && go mod download -json "helm.sh/helm/v3@${HELM_VERSION}")" ||
  die "go mod download helm.sh/helm/v3@${HELM_VERSION} failed: ${HELM_JSON:-}"
HELM_GOMOD="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"${HELM_JSON}" | head -n1)"
[[ -f "${HELM_GOMOD}" ]] || die "could not locate helm's go.mod in: ${HELM_JSON}"

# The Kubernetes version helm assumes when it talks to no cluster (`helm template`, `helm lint`:
# .Capabilities.KubeVersion and Chart.yaml's kubeVersion check). Left alone it says v1.20; helm's
# own Makefile sets it from the client-go it is built with (v0.X.Y -> v1.X), and so does this.
CLIENT_GO="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "${HELM_GOMOD}")"
[[ "${CLIENT_GO}" =~ ^v0\.([0-9]+)\. ]] || die "no k8s.io/client-go v0.X.Y requirement in ${HELM_GOMOD}"
K8S_MINOR="${BASH_REMATCH[1]}"

LDFLAGS=(-s -w
  -X "helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  -X "helm.sh/helm/v3/internal/version.gitTreeState=clean"
  -X "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
  -X "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${K8S_MINOR}"
  -X "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
  -X "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${K8S_MINOR}")

TMPBIN="${CACHE}/bin.tmp"
rm -rf "${TMPBIN}"
mkdir -p "${TMPBIN}"
log "building helm ${HELM_VERSION} (assumes Kubernetes v1.${K8S_MINOR} offline)"
(cd "${CACHE}" && GOBIN="${TMPBIN}" nice -n 10 go install -trimpath -ldflags="${LDFLAGS[*]}" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}") || die "go install helm.sh/helm/v3/cmd/helm@${HELM_VERSION} failed"
"${TMPBIN}/helm" version --short >&2

rm -rf "${BIN}"
mv "${TMPBIN}" "${BIN}"
{
  echo "HELM_VERSION=${HELM_VERSION}"
  echo "KUBE_VERSION=v1.${K8S_MINOR}"
  echo "GO_VERSION=$(go env GOVERSION)"
} >"${STAMP}"
log "built in ${SECONDS}s"
print_result
exit
}
