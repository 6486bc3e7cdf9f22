#!/usr/bin/env bash
# Smoke test of build.sh + start.sh: start etcd + kube-apiserver, talk to it with
# kubectl (list namespaces, create a namespace and a Pod) and with the bearer
# token, then shut everything down. Prints "N passed, N failed" at the end.
#
#   tests/controlplane/smoke.sh [start.sh options, e.g. --bin DIR --keep]
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ "${REGISTRY_GATE_SMOKE_INNER:-}" != 1 ]]; then
  # Outer call: have start.sh bring the control plane up and run us inside it.
  REGISTRY_GATE_SMOKE_INNER=1 exec "${HERE}/start.sh" "$@" -- "${HERE}/smoke.sh"
fi

k() { "${REGISTRY_GATE_CONTROLPLANE_BIN}/kubectl" "$@"; }
passed=0
failed=0
check() { # description command...
  local d="$1" out rc
  shift
  out="$("$@" 2>&1)"
  rc=$?
  if [[ ${rc} -eq 0 ]]; then
    passed=$((passed + 1))
    echo "ok   - ${d}"
  else
    failed=$((failed + 1))
    echo "FAIL - ${d} (exit ${rc})"
  fi
  # shellcheck disable=SC2001
  [[ -z "${out}" ]] || sed 's/^/       | /' <<<"${out}"
}

get_ns() { k get ns && k get ns default kube-system kube-public -o name; }
create_pod() {
  k apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: smoke
  namespace: foo
spec:
  containers:
  - name: c
    image: registry.example.com/team/app:1.0
EOF
}
pod_pending() {
  local phase
  phase="$(k -n foo get pod smoke -o jsonpath='{.status.phase}')"
  echo "phase=${phase}"
  [[ "${phase}" == Pending ]]
}
token_works() {
  curl -fsS --cacert "${REGISTRY_GATE_APISERVER_CA}" \
    -H "Authorization: Bearer ${REGISTRY_GATE_ADMIN_TOKEN}" \
    "${REGISTRY_GATE_APISERVER_URL}/api/v1/namespaces/foo/pods/smoke" |
    grep -o '"image": *"[^"]*"'
}
anonymous_denied() {
  local code
  code="$(curl -sS -o /dev/null -w '%{http_code}' --cacert "${REGISTRY_GATE_APISERVER_CA}" \
    "${REGISTRY_GATE_APISERVER_URL}/api/v1/namespaces")"
  echo "anonymous GET /api/v1/namespaces -> HTTP ${code}"
  [[ "${code}" == 401 || "${code}" == 403 ]]
}

check "kubectl version (client and server)" k version
check "kubectl get ns" get_ns
check "kubectl create ns foo" k create ns foo
check "create a Pod in foo" create_pod
check "the Pod is stored and Pending (no scheduler/kubelet)" pod_pending
check "bearer token authenticates as the admin" token_works
check "anonymous requests are refused" anonymous_denied
echo "${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
