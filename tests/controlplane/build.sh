#!/usr/bin/env bash
# Build kube-apiserver, kubectl and etcd from Go modules (the Go module proxy)
# into a cache directory, for the end-to-end tests (see README.md here).
#
# Idempotent: when the cache already holds the three binaries for the requested
# versions it prints where they are and exits at once.
#
# Environment (all optional):
#   REGISTRY_GATE_K8S_VERSION          k8s.io/kubernetes release        (default below)
#   REGISTRY_GATE_ETCD_VERSION         go.etcd.io/etcd/server/v3 release (default: the
#                                      ETCD_VERSION of that release's hack/lib/etcd.sh,
#                                      i.e. the etcd Kubernetes' own integration tests use)
#   REGISTRY_GATE_CONTROLPLANE_CACHE   output dir (default ~/.cache/registry-gate/controlplane/<k8s-version>)
#   REGISTRY_GATE_CONTROLPLANE_FORCE=1 rebuild even if the cache looks complete
#
# Output: <cache>/bin/{kube-apiserver,kubectl,etcd} and <cache>/versions.env.
# The last line on stdout is the bin directory, so callers can do
#   BIN=$(tests/controlplane/build.sh | tail -n1)
set -euo pipefail
# The whole script is one { } block so bash parses it before running: editing
# or updating this file while a build runs cannot break the running copy.
{

K8S_VERSION="${REGISTRY_GATE_K8S_VERSION:-v1.37.2}"
CACHE="${REGISTRY_GATE_CONTROLPLANE_CACHE:-${HOME}/.cache/registry-gate/controlplane/${K8S_VERSION}}"
BIN="${CACHE}/bin"
STAMP="${CACHE}/versions.env"

log() { echo "build.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cache_ok() {
  [[ -f "${STAMP}" ]] || return 1
  local b
  for b in kube-apiserver kubectl etcd; do [[ -x "${BIN}/${b}" ]] || return 1; done
  local K8S_BUILT ETCD_BUILT
  K8S_BUILT="$(sed -n 's/^K8S_VERSION=//p' "${STAMP}")"
  ETCD_BUILT="$(sed -n 's/^ETCD_VERSION=//p' "${STAMP}")"
  [[ "${K8S_BUILT}" == "${K8S_VERSION}" ]] || return 1
  if [[ -n "${REGISTRY_GATE_ETCD_VERSION:-}" && "${ETCD_BUILT}" != "${REGISTRY_GATE_ETCD_VERSION}" ]]; then
    return 1
  fi
  return 0
}

print_result() {
  log "binaries ($(tr '\n' ' ' <"${STAMP}")):"
  local b
  for b in kube-apiserver kubectl etcd; do log "  ${BIN}/${b}"; done
  echo "${BIN}"
}

if [[ "${REGISTRY_GATE_CONTROLPLANE_FORCE:-0}" != 1 ]] && cache_ok; then
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
  # Somebody else may have finished the build while we waited.
  if [[ "${REGISTRY_GATE_CONTROLPLANE_FORCE:-0}" != 1 ]] && cache_ok; then
    log "cache hit (built by a concurrent run)"
    print_result
    exit 0
  fi
fi

SECONDS=0
export CGO_ENABLED=0 # static binaries, no C toolchain needed
NICE=(nice -n 10)

# --- k8s.io/kubernetes: find its go.mod in the module cache -----------------
log "resolving k8s.io/kubernetes@${K8S_VERSION} via $(go env GOPROXY)"
K8S_JSON="$(cd "${CACHE}" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}")" \
  || die "go mod download k8s.io/kubernetes@${K8S_VERSION} failed: ${K8S_JSON:-}"
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" <<<"${K8S_JSON}" | head -n1; }
K8S_GOMOD="$(json_field GoMod)"
K8S_DIR="$(json_field Dir)"
K8S_INFO="$(json_field Info)"
[[ -f "${K8S_GOMOD}" && -d "${K8S_DIR}" ]] || die "could not locate go.mod/source of k8s.io/kubernetes in: ${K8S_JSON}"

# k8s.io/kubernetes v1.X.Y <-> staging modules (k8s.io/api, ...) v0.X.Y
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
K8S_MINOR="$(cut -d. -f2 <<<"${K8S_VERSION}")"
K8S_COMMIT_TIME="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${K8S_INFO}")"
GO_DIRECTIVE="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "${K8S_GOMOD}" | head -n1)"
GODEBUG_DIRECTIVE="$(sed -n 's/^godebug \(.*\)$/\1/p' "${K8S_GOMOD}" | head -n1)"

# Staging modules: those in kubernetes' replace block ("k8s.io/x => ./staging/...")
# that kubernetes also requires at v0.0.0 (sample-controller etc. are replaced but
# not required, and are not all published).
mapfile -t STAGING < <(
  sed -n '/^replace (/,/^)/p' "${K8S_GOMOD}" |
    awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' |
    while read -r m; do
      grep -Eq "^[[:space:]]*${m//./\\.} v0\.0\.0([[:space:]]|$)" "${K8S_GOMOD}" && echo "${m}"
    done
)
[[ ${#STAGING[@]} -gt 0 ]] || die "found no staging replace directives in ${K8S_GOMOD}"

if [[ -z "${REGISTRY_GATE_ETCD_VERSION:-}" ]]; then
  # shellcheck disable=SC2016 # the ${...} is literal text of etcd.sh
  ETCD_VERSION="v$(sed -n 's/^ETCD_VERSION=\${ETCD_VERSION:-\([0-9][0-9.a-z-]*\)}.*/\1/p' "${K8S_DIR}/hack/lib/etcd.sh" | head -n1)"
  [[ "${ETCD_VERSION}" != v ]] || die "could not read ETCD_VERSION from ${K8S_DIR}/hack/lib/etcd.sh; set REGISTRY_GATE_ETCD_VERSION"
else
  ETCD_VERSION="${REGISTRY_GATE_ETCD_VERSION}"
fi
log "k8s.io/kubernetes ${K8S_VERSION} (staging ${STAGING_VERSION}, ${#STAGING[@]} modules), etcd ${ETCD_VERSION}, go $(go env GOVERSION)"

# --- generated module for kube-apiserver + kubectl ----------------------------
SRC="${CACHE}/src"
KSRC="${SRC}/kube"
rm -rf "${KSRC}"
mkdir -p "${KSRC}/kube-apiserver" "${KSRC}/kubectl"
{
  echo "// Generated by tests/controlplane/build.sh; do not edit."
  echo "module registry-gate.local/controlplane/kube"
  echo
  echo "go ${GO_DIRECTIVE}"
  [[ -z "${GODEBUG_DIRECTIVE}" ]] || { echo; echo "godebug ${GODEBUG_DIRECTIVE}"; }
  echo
  echo "require k8s.io/kubernetes ${K8S_VERSION}"
  echo
  echo "// k8s.io/kubernetes requires its staging modules at v0.0.0 (replaced by"
  echo "// ./staging/... in its own repo); pin them to the matching release."
  echo "replace ("
  for m in "${STAGING[@]}"; do printf '\t%s => %s %s\n' "${m}" "${m}" "${STAGING_VERSION}"; done
  echo ")"
} >"${KSRC}/go.mod"

# Same as k8s.io/kubernetes/cmd/kube-apiserver/apiserver.go
cat >"${KSRC}/kube-apiserver/main.go" <<'EOF'
// Generated by tests/controlplane/build.sh; mirrors k8s.io/kubernetes/cmd/kube-apiserver.
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
EOF

# Same as k8s.io/kubernetes/cmd/kubectl/kubectl.go
cat >"${KSRC}/kubectl/main.go" <<'EOF'
// Generated by tests/controlplane/build.sh; mirrors k8s.io/kubernetes/cmd/kubectl.
package main

import (
	"os"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // client auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
EOF

# --- generated module for etcd ------------------------------------------------
ESRC="${SRC}/etcd"
rm -rf "${ESRC}"
mkdir -p "${ESRC}"
cat >"${ESRC}/go.mod" <<EOF
// Generated by tests/controlplane/build.sh; do not edit.
module registry-gate.local/controlplane/etcd

go ${GO_DIRECTIVE}

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
EOF
cat >"${ESRC}/main.go" <<'EOF'
// Generated by tests/controlplane/build.sh; same as etcd's own main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
EOF

# --- resolve + build ------------------------------------------------------------
TMPBIN="${CACHE}/bin.tmp"
rm -rf "${TMPBIN}"
mkdir -p "${TMPBIN}"

t0=${SECONDS}
log "go mod tidy (kube)"
(cd "${KSRC}" && "${NICE[@]}" go mod tidy) || die "go mod tidy failed in ${KSRC}"
log "go mod tidy (etcd)"
(cd "${ESRC}" && "${NICE[@]}" go mod tidy) || die "go mod tidy failed in ${ESRC}"
log "modules resolved in $((SECONDS - t0))s"

# kubectl's main sets glog's verbosity from its flags since 1.31; before, it does not, and
# kubectl's cmd package has no GetLogVerbosity. Older releases (the chart supports 1.30) get
# their own main's shape.
KUBECTL_DIR="$(cd "${KSRC}" && go list -m -f '{{.Dir}}' k8s.io/kubectl)"
if ! grep -qs 'func GetLogVerbosity' "${KUBECTL_DIR}"/pkg/cmd/*.go; then
  sed -i -e '/GetLogVerbosity/d' -e '\|"k8s.io/component-base/logs"|d' -e '/^\t"os"$/d' "${KSRC}/kubectl/main.go"
fi

# Version stamping as k8s' hack/lib/version.sh does, so `kubectl version` and
# /version report the real release instead of v0.0.0-master.
KV=()
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  KV+=("-X ${pkg}.gitVersion=${K8S_VERSION}"
       "-X ${pkg}.gitMajor=1"
       "-X ${pkg}.gitMinor=${K8S_MINOR}"
       "-X ${pkg}.gitTreeState=clean"
       "-X ${pkg}.buildDate=${K8S_COMMIT_TIME}")
done
KLDFLAGS="-s -w ${KV[*]}"

t0=${SECONDS}
log "building kube-apiserver + kubectl (this is the long part)"
(cd "${KSRC}" && "${NICE[@]}" go build -trimpath -tags selinux,notest,grpcnotrace \
  -ldflags="${KLDFLAGS}" -o "${TMPBIN}/" ./kube-apiserver ./kubectl) || die "kube build failed"
log "kube-apiserver + kubectl built in $((SECONDS - t0))s"

t0=${SECONDS}
log "building etcd"
(cd "${ESRC}" && "${NICE[@]}" go build -trimpath -ldflags="-s -w" -o "${TMPBIN}/etcd" .) || die "etcd build failed"
log "etcd built in $((SECONDS - t0))s"

"${TMPBIN}/kube-apiserver" --version >&2
"${TMPBIN}/etcd" --version >&2

rm -rf "${BIN}"
mv "${TMPBIN}" "${BIN}"
{
  echo "K8S_VERSION=${K8S_VERSION}"
  echo "ETCD_VERSION=${ETCD_VERSION}"
  echo "GO_VERSION=$(go env GOVERSION)"
} >"${STAMP}"
log "done in ${SECONDS}s; cache size $(du -sh "${CACHE}" | cut -f1)"
print_result
exit
}
