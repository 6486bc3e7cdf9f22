#!/usr/bin/env bash
# The image's executable, proven without a container engine (`make image-smoke`, part of `make
# test`): builds it with build/release.sh, as the Dockerfile does, then runs it the way the
# image and the manifests run it.
#
#   build/smoke.sh [ARCH...]   ARCH: amd64 (default) | arm64 (run under qemu-user)
#
# For each ARCH:
# 1. the executable is static: no program interpreter, no shared library (readelf, file);
# 2. it runs as UID/GID 65532 with no supplementary groups, no capabilities and no_new_privs
#    (setpriv), from a root-owned directory it cannot write to (as with readOnlyRootFilesystem),
#    found on PATH as `registry-gate` (the manifests' `command`), with a clean environment;
# 3. `certs` makes development certificates; `serve` reads them from a mode-0440 file owned by
#    group 65532 (the Secret mount's mode and fsGroup) and answers, over HTTPS checked against
#    the development CA: /healthz and /readyz 200, /validate denying an unregistered registry
#    and allowing a registered one, /mutate adding a registry's pull secret;
# 4. `controller` is in the same executable (its --help), and `serve` exits 0 on SIGTERM.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

fail() { echo "image-smoke: FAIL: $*" >&2; exit 1; }
step() { echo "image-smoke: $*" >&2; }

arches=("$@")
((${#arches[@]})) || arches=(amd64)

tools=()
command -v file >/dev/null || tools+=(file)
command -v curl >/dev/null || tools+=(curl)
command -v readelf >/dev/null || tools+=(binutils)
command -v setpriv >/dev/null || tools+=(util-linux)
for arch in "${arches[@]}"; do
  [[ $arch == arm64 && $(uname -m) != aarch64 ]] && ! command -v qemu-aarch64-static >/dev/null \
    && tools+=(qemu-user-static)
done
if ((${#tools[@]})); then
  [[ $(id -u) == 0 ]] || fail "missing ${tools[*]}; install them (Debian: apt-get install ${tools[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tools[@]}" >/dev/null
fi
# setpriv needs root to change to UID 65532.
[[ $(id -u) == 0 ]] || fail "run as root: the executable is started as UID 65532 with setpriv"

tmp=$(mktemp -d)
server=
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
# Others (UID 65532) must reach what is inside.
chmod 0755 "$tmp"

# The restrictions of the manifests' securityContext: runAsUser/runAsGroup 65532, no
# supplementary groups, capabilities dropped, allowPrivilegeEscalation false.
as_nonroot=("$(command -v setpriv)" --reuid 65532 --regid 65532 --clear-groups --inh-caps=-all --bounding-set=-all
  --no-new-privs)

smoke() {
  local arch=$1 binary=$2 dir=$tmp/$1
  local start=$SECONDS
  local emulator=() timeout=30
  if [[ $arch == arm64 && $(uname -m) != aarch64 ]]; then
    emulator=("$(command -v qemu-aarch64-static)")
    timeout=120
  fi

  # 1. Static.
  local kind
  kind=$(file -b "$binary")
  [[ $kind == *"statically linked"* || $kind == *"static-pie linked"* ]] || fail "$arch: not static: $kind"
  if readelf -lW "$binary" | grep -q INTERP; then fail "$arch: has a program interpreter"; fi
  if readelf -dW "$binary" | grep -q NEEDED; then fail "$arch: needs shared libraries"; fi
  step "$arch: ${kind%%, BuildID*}"

  # 2. A root filesystem as the image's, read-only to UID 65532.
  local root=$dir/root
  mkdir -p "$root/usr/local/bin" "$root/etc/registry-gate/tls" "$dir/certs"
  cp "$binary" "$root/usr/local/bin/registry-gate"
  chmod 0755 "$root/usr/local/bin/registry-gate"
  # Found on PATH as the manifests' `command: ["registry-gate"]` is; under qemu-user, by path.
  local exe=registry-gate
  if ((${#emulator[@]})); then exe=$root/usr/local/bin/registry-gate; fi
  local cmd=(env -i -C "$root" PATH="$root/usr/local/bin" HOME=/nonexistent "${as_nonroot[@]}" "${emulator[@]}" "$exe")
  run() { "${cmd[@]}" "$@"; }
  # The development certificates are written by the executable itself, as UID 65532, into the
  # one directory it may write; then mounted read-only the way the Secret is.
  chown 65532:65532 "$dir/certs"
  run certs --out "$dir/certs" >/dev/null || fail "$arch: registry-gate certs failed"
  install -o root -g 65532 -m 0440 "$dir/certs/tls.crt" "$dir/certs/tls.key" "$root/etc/registry-gate/tls/"
  chown -R root:root "$dir/certs"
  find "$root" -type d -exec chmod 0555 {} +
  if run certs --out "$root/probe" >/dev/null 2>&1; then fail "$arch: UID 65532 could write the root"; fi

  run --version >/dev/null || fail "$arch: --version failed"
  run controller --help >/dev/null || fail "$arch: no controller subcommand"

  # 3. The webhook, on loopback ports the kernel picks, with the bundled policy.
  local tls=$root/etc/registry-gate/tls
  # Not through run(): $! must be the server itself (env and setpriv exec it) for the SIGTERM.
  "${cmd[@]}" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --tls-cert "$tls/tls.crt" --tls-key "$tls/tls.key" >"$dir/serve.log" 2>&1 &
  server=$!
  local webhook='' operations='' waited=0
  until webhook=$(grep -o '"webhook":"[^"]*"' "$dir/serve.log" | cut -d'"' -f4) && [[ -n $webhook ]]; do
    kill -0 "$server" 2>/dev/null || { cat "$dir/serve.log" >&2; fail "$arch: serve exited"; }
    ((waited++ < timeout * 10)) || { cat "$dir/serve.log" >&2; fail "$arch: serve did not start in ${timeout}s"; }
    sleep 0.1
  done
  operations=$(grep -o '"operations":"[^"]*"' "$dir/serve.log" | cut -d'"' -f4)

  local code
  for path in healthz readyz; do
    code=$(curl -sS -o /dev/null -w '%{http_code}' "http://$operations/$path") || true
    [[ $code == 200 ]] || fail "$arch: /$path answered $code"
  done
  review() {
    local endpoint=$1 uid=$2 images=$3 containers='' i=0 image
    for image in $images; do
      containers+="${containers:+,}{\"name\":\"c$i\",\"image\":\"$image\"}"
      i=$((i + 1))
    done
    curl -sS --fail --cacert "$dir/certs/ca.crt" "https://$webhook/$endpoint" \
      -H 'content-type: application/json' -d '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
      "request":{"uid":"'"$uid"'","kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"shop",
      "operation":"CREATE","object":{"spec":{"containers":['"$containers"']}}}}'
  }
  local answer
  answer=$(review validate denied "nginx:1.27 evil.example.com/miner") || fail "$arch: /validate failed"
  [[ $answer == *'"uid":"denied","allowed":false'* && $answer == *'evil.example.com/miner is not in any registered registry'* ]] \
    || fail "$arch: /validate did not deny evil.example.com/miner: $answer"
  answer=$(review validate allowed "nginx:1.27 registry.k8s.io/pause:3.10") || fail "$arch: /validate failed"
  [[ $answer == *'"uid":"allowed","allowed":true'* ]] || fail "$arch: /validate did not allow: $answer"
  answer=$(review mutate patched "nginx:1.27 localhost:5000/shop/api:2.1") || fail "$arch: /mutate failed"
  local patch
  patch=$(sed -n 's/.*"patch":"\([^"]*\)".*/\1/p' <<<"$answer" | base64 -d)
  [[ $patch == *'"path":"/spec/imagePullSecrets","value":[{"name":"local-registry-pull"}]'* ]] \
    || fail "$arch: /mutate did not add the pull secret: $answer"

  # 4. A clean stop.
  kill -TERM "$server"
  local status=0
  wait "$server" || status=$?
  server=
  ((status == 0)) || { cat "$dir/serve.log" >&2; fail "$arch: serve exited $status on SIGTERM"; }
  step "$arch: ok as UID 65532 in a read-only root: healthz, readyz, validate (deny, allow), mutate," \
    "controller, clean SIGTERM ($((SECONDS - start)) s)"
}

for arch in "${arches[@]}"; do
  build_start=$SECONDS
  binary=$(build/release.sh "$arch" | tail -n 1)
  step "$arch: built $binary ($((SECONDS - build_start)) s)"
  smoke "$arch" "$binary"
done
