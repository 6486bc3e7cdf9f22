#!/usr/bin/env bash
# Checks the Helm chart charts/registry-gate, against manifests/ and against a real
# kube-apiserver + etcd (tests/controlplane):
#
#   1. the chart: its copies of manifests/ files are current (sync-from-manifests.sh --check);
#      `helm lint` and `helm lint --strict` with the default values and with
#      testdata/all-options.yaml (every value changed, in each certificate mode); what
#      all-options renders; the values the chart must refuse;
#   2. parity: `helm template` and `kubectl kustomize` of the matching overlay give the same
#      objects, but for the differences listed in registry-gate/README.md (parity.py):
#      defaults = overlays/cert-manager; namespace, opt-out and monitoring on = cert-manager +
#      monitoring/ + components/namespace-opt-out; selfManaged = overlays/self-managed with the
#      same files; controller off = cert-manager with manifests/README.md's delete patch;
#   3. an install into the API server: server-side dry-runs of the certManager and all-options
#      renderings (cert-manager's and the Prometheus Operator's CRDs installed from their Go
#      modules, as manifests/validate.sh does); `helm install` then `helm upgrade` as the README's
#      two-step install, in selfManaged mode with monitoring; the objects, caBundle and Service
#      references; fail closed while no server answers; the two ServiceAccounts' permissions
#      (the tables of manifests/README.md); then the real `registry-gate serve` and
#      `registry-gate controller`, running as those ServiceAccounts (kubeconfig impersonation)
#      and reading the chart's policy ConfigMap, with the chart's webhook configurations
#      pointed at the server's loopback URL (the only field changed: no Service networking runs
#      here): an unregistered and a deny-listed image refused through the API server, a Pod
#      from the private registry given its pull secret, kube-system left alone, a broken policy
#      refused by the policy webhook and a valid edit taken live, the controller's copy of the
#      pull secret in another namespace; finally `helm uninstall` leaves admission open.
#
#   charts/test.sh [start.sh options, e.g. --keep]
#
# Prints one line per check and ends with "N passed, N failed, N skipped"; exits 1 if any failed.
# Needs helm (charts/helm.sh builds it), cargo (for target/debug/registry-gate), python3 with
# PyYAML, openssl, curl and Go (for the CRDs; without it those dry-runs are skipped). Writes
# only to a temporary directory; the control plane is stopped at the end.
set -uo pipefail
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/.." && pwd)"
CHART="${HERE}/registry-gate"

if [[ "${REGISTRY_GATE_CHART_TEST_INNER:-}" != 1 ]]; then
  # Outer call: helm and the registry-gate binary, then a throwaway control plane to run in.
  REGISTRY_GATE_HELM="$("${HERE}/helm.sh" | tail -n 1)" || exit 1
  (cd "${ROOT}" && "${CARGO:-cargo}" build --locked --quiet --bin registry-gate) || exit 1
  export REGISTRY_GATE_HELM
  export REGISTRY_GATE_BINARY="${REGISTRY_GATE_BINARY:-${CARGO_TARGET_DIR:-${ROOT}/target}/debug/registry-gate}"
  REGISTRY_GATE_CHART_TEST_INNER=1 exec "${ROOT}/tests/controlplane/start.sh" "$@" -- "${HERE}/test.sh"
fi

SECONDS=0
k() { "${REGISTRY_GATE_CONTROLPLANE_BIN}/kubectl" "$@"; }
h() { "${REGISTRY_GATE_HELM}" "$@"; }
gate() { "${REGISTRY_GATE_BINARY}" "$@"; }
# report, check, refused, skip, and the RBAC checks (can, can_all, rules, exactly_rules).
# shellcheck source=../tests/controlplane/checks.sh
source "${ROOT}/tests/controlplane/checks.sh"
# quiet COMMAND...: runs it, shows its output only when it fails (for long renderings).
quiet() { local out; out="$("$@" 2>&1)" || { echo "${out}"; return 1; }; }
# eventually SECONDS COMMAND...: runs it every 0.1 s until it succeeds, for at most SECONDS.
eventually() {
  local deadline=$((SECONDS + $1)) out
  shift
  until out="$("$@" 2>&1)"; do
    ((SECONDS < deadline)) || { echo "${out}"; return 1; }
    sleep 0.1
  done
  echo "${out}"
}

WORK="$(mktemp -d)"
PIDS=()
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local pid
  # SIGKILL: a graceful stop would wait for the API server's keep-alive connections.
  for pid in "${PIDS[@]}"; do kill -KILL "${pid}" 2>/dev/null && wait "${pid}" 2>/dev/null; done
  rm -rf "${WORK}"
}
trap cleanup EXIT
# Helm keeps its repositories, cache and plugins here, not in the user's home.
export HELM_CACHE_HOME="${WORK}/helm/cache" HELM_CONFIG_HOME="${WORK}/helm/config" \
  HELM_DATA_HOME="${WORK}/helm/data"
# Work on a copy of manifests/, so that the test certificates never land in the repository.
cp -r "${ROOT}/manifests" "${WORK}/manifests"
M="${WORK}/manifests"
CERTS="${M}/overlays/self-managed/certs"
rm -f "${CERTS}/"{ca.crt,tls.crt,tls.key}
SELF_MANAGED=(--set certificates.mode=selfManaged
  --set-file "certificates.selfManaged.caCrt=${CERTS}/ca.crt"
  --set-file "certificates.selfManaged.tlsCrt=${CERTS}/tls.crt"
  --set-file "certificates.selfManaged.tlsKey=${CERTS}/tls.key")
MONITORING=(--set monitoring.serviceMonitor.enabled=true --set monitoring.prometheusRule.enabled=true
  --set monitoring.grafanaDashboard.enabled=true)
ALL=(-f "${HERE}/testdata/all-options.yaml")
render() { # OUT HELM-TEMPLATE-ARGS...: helm template into WORK/OUT.yaml
  local out="${WORK}/$1.yaml"
  shift
  h template registry-gate "${CHART}" "$@" >"${out}"
}

echo "helm $(h version --template '{{ .Version }}'), $("${REGISTRY_GATE_BINARY}" --version 2>/dev/null || echo registry-gate)"

# --- 1. The chart on its own. ------------------------------------------------------------------
check "the chart's copies of manifests/ files are current (charts/sync-from-manifests.sh --check)" \
  "${HERE}/sync-from-manifests.sh" --check
check "helm lint, default values" h lint "${CHART}" -n registry-gate
check "helm lint --strict, default values" h lint --strict "${CHART}" -n registry-gate
for mode in existingSecret certManager selfManaged; do
  check "helm lint, testdata/all-options.yaml, certificates.mode=${mode}" \
    h lint "${CHART}" -n platform-gate "${ALL[@]}" --set "certificates.mode=${mode}"
  check "helm lint --strict, testdata/all-options.yaml, certificates.mode=${mode}" \
    h lint --strict "${CHART}" -n platform-gate "${ALL[@]}" --set "certificates.mode=${mode}"
done

check "helm template testdata/all-options.yaml in namespace platform-gate" \
  render all-options -n platform-gate "${ALL[@]}"
A="${WORK}/all-options.yaml"
# Without the alert rules and the dashboard, whose texts name the usual namespace.
nothing_tied_to_registry_gate_namespace() {
  render all-options-plain -n platform-gate "${ALL[@]}" --set monitoring.prometheusRule.enabled=false \
    --set monitoring.grafanaDashboard.enabled=false || return 1
  ! grep -v '^# Source: ' "${WORK}/all-options-plain.yaml" |
    grep -nE 'namespace: registry-gate$|(^|[ ="])registry-gate/|=registry-gate$|registry-gate\.registry-gate|(values|matchNames): \[.*"registry-gate"|metadata\.name: registry-gate$'
}
check "all-options: no object, flag, selector or name refers to the namespace registry-gate" \
  nothing_tied_to_registry_gate_namespace
controller_flags() {
  local got
  got="$(grep -A10 -- '- controller$' "${A}" | sed -n 's/^ *- \(--.*\)$/\1/p')"
  echo "${got}"
  [[ "${got}" == "--namespace=platform-gate
--policy-configmap=platform-gate/platform-policy
--metrics-listen=0.0.0.0:9091
--audit-interval-seconds=0
--audit-page-size=200
--registry-test-interval-seconds=3600
--registry-test-timeout-seconds=5
--resync-seconds=1200
--writes-per-second=20
--log-format=text" ]]
}
check "all-options: controller flags, auditIntervalSeconds 0 included, extraArgs last" controller_flags
server_flags() {
  local got
  got="$(grep -A8 -- '- serve$' "${A}" | sed -n 's/^ *- \(--.*\)$/\1/p')"
  echo "${got}"
  [[ "${got}" == "--listen=0.0.0.0:8443
--metrics-listen=0.0.0.0:9090
--tls-cert=/etc/registry-gate/tls/tls.crt
--tls-key=/etc/registry-gate/tls/tls.key
--policy-configmap=platform-gate/platform-policy
--log-format=text
--body-memory-mib=48" ]]
}
check "all-options: the server's flags name the existing policy ConfigMap, extraArgs last" server_flags
existing_policy_used() {
  ! grep -q 'name: registry-gate-policy' "${A}" &&
    [[ "$(grep -c 'resourceNames: \["platform-policy"\]' "${A}")" == 2 ]]
}
check "all-options: existingPolicyConfigMap: no policy ConfigMap; both Roles get it by name" existing_policy_used
ca_of_existing_secret() {
  local want
  want="$(printf -- '-----BEGIN CERTIFICATE-----\nplaceholder-existing-ca\n-----END CERTIFICATE-----\n' | base64 -w0)"
  [[ "$(grep -c "caBundle: ${want}$" "${A}")" == 3 ]] && grep -q 'secretName: platform-gate-tls$' "${A}"
}
check "all-options: existingSecret: its name mounted, the PEM caBundle base64-encoded in all 3 webhooks" \
  ca_of_existing_secret
webhook_settings() {
  [[ "$(grep -c 'failurePolicy: Ignore' "${A}")" == 3 && "$(grep -c 'timeoutSeconds: 10$' "${A}")" == 3 &&
    "$(grep -c 'values: \["kube-system","platform-gate","cert-manager","istio-system"\]' "${A}")" == 2 &&
    "$(grep -c 'key: registry-gate.io/ignore' "${A}")" == 2 ]]
}
check "all-options: failurePolicy, timeoutSeconds, excluded namespaces and the opt-out label in the webhooks" \
  webhook_settings
check "all-options: both Deployments run the image by digest" \
  test "$(grep -c 'image: registry.example.com/mirror/registry-gate@sha256:0123' "${A}")" == 2
monitoring_labels() {
  [[ "$(grep -c 'release: kube-prometheus-stack' "${A}")" == 4 ]] && grep -q 'grafana_folder: Platform' "${A}"
}
check "all-options: the Prometheus selector label on 2 ServiceMonitors and 2 PrometheusRules; dashboard annotation" \
  monitoring_labels
policy_text_kept() {
  render own-policy --set-file "policy=${ROOT}/policy/example-all-types.yaml" &&
    python3 - "${WORK}/own-policy.yaml" "${ROOT}/policy/example-all-types.yaml" <<'EOF'
import sys, yaml
cm = next(o for o in yaml.safe_load_all(open(sys.argv[1])) if o and o["kind"] == "ConfigMap")
sys.exit(cm["data"]["policy.yaml"] != open(sys.argv[2]).read())
EOF
}
check "--set-file policy=policy/example-all-types.yaml: the ConfigMap holds the file byte for byte" \
  policy_text_kept
issuer_ref() {
  render issuer --set certificates.certManager.issuerRef.name=platform-ca \
    --set certificates.certManager.issuerRef.kind=ClusterIssuer &&
    ! grep -q 'kind: Issuer$' "${WORK}/issuer.yaml" &&
    grep -A2 'issuerRef:' "${WORK}/issuer.yaml" | grep -q 'kind: ClusterIssuer'
}
check "certManager with issuerRef: no Issuer of the chart's own, the Certificate names the ClusterIssuer" issuer_ref

refused "refused: a misspelt value (webhooks.failurepolicy)" "additional properties 'failurepolicy' not allowed" \
  render x --set webhooks.failurepolicy=Ignore
refused "refused: failurePolicy other than Fail or Ignore" "value must be one of 'Fail', 'Ignore'" \
  render x --set webhooks.failurePolicy=Never
refused "refused: controller.auditPageSize below 10" "minimum: got 5, want 10" \
  render x --set controller.auditPageSize=5
refused "refused: one server replica with the PodDisruptionBudget (would block drains)" "would block every node drain" \
  render x --set server.replicas=1
refused "refused: selfManaged without the certificate files" "certificates.selfManaged.caCrt \(PEM\) is required" \
  render x --set certificates.mode=selfManaged
refused "refused: existingSecret without the Secret's name" "certificates.existingSecret.name is required" \
  render x --set certificates.mode=existingSecret --set certificates.existingSecret.caBundle=Zm9v
check "server.replicas=1 renders with the PodDisruptionBudget off" \
  render x --set server.replicas=1 --set server.podDisruptionBudget.enabled=false

# --- 2. Parity with manifests/. ----------------------------------------------------------------
# Certificates for 127.0.0.1 too, so that the registry-gate server run in part 3 can use them.
check "test certificates (registry-gate certs) in a copy of overlays/self-managed/certs" \
  gate certs --out "${CERTS}" --name registry-gate.registry-gate.svc \
  --name registry-gate.registry-gate.svc.cluster.local --name 127.0.0.1
overlay() { # NAME KUSTOMIZATION-BODY: an overlay of its own in the copy of manifests/
  mkdir -p "${M}/overlays/$1"
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n%s\n' "$2" \
    >"${M}/overlays/$1/kustomization.yaml"
}
overlay chart-everything '
resources: [../cert-manager, ../../monitoring]
components: [../../components/namespace-opt-out]'
# The patch manifests/README.md gives for an install without the controller.
overlay chart-no-controller '
resources: [../cert-manager]
patches:
  - target:
      labelSelector: app.kubernetes.io/component=controller
    patch: |-
      $patch: delete
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: any'
parity() { # OVERLAY "ALLOWED DIFFERENCES" HELM-TEMPLATE-ARGS...
  local overlay="$1" allowed=() a
  for a in $2; do allowed+=(--allow "${a}"); done
  shift 2
  k kustomize "${M}/overlays/${overlay}" >"${WORK}/kustomize.yaml" &&
    render helm -n registry-gate "$@" &&
    python3 "${HERE}/parity.py" "${WORK}/kustomize.yaml" "${WORK}/helm.yaml" "${allowed[@]}"
}
check "parity: default values = overlays/cert-manager" parity cert-manager "namespace-object"
check "parity: namespace.create, namespaceOptOut, all monitoring = cert-manager + monitoring/ + components/namespace-opt-out" \
  parity chart-everything "" --set namespace.create=true --set webhooks.namespaceOptOut=true "${MONITORING[@]}"
check "parity: certificates.mode=selfManaged = overlays/self-managed, the same three files" \
  parity self-managed "namespace-object tls-secret-name" "${SELF_MANAGED[@]}"
check "parity: controller.enabled=false = cert-manager with manifests/README.md's patch that removes the controller" \
  parity chart-no-controller "namespace-object" --set controller.enabled=false
differences_documented() {
  local id missing=0
  for id in $(python3 "${HERE}/parity.py" --list); do
    grep -q "\`${id}\`" "${CHART}/README.md" || { echo "not in registry-gate/README.md: ${id}"; missing=1; }
  done
  return "${missing}"
}
check "every difference parity.py allows is documented in charts/registry-gate/README.md" differences_documented
values_documented() {
  python3 - "${CHART}/values.schema.json" "${CHART}/README.md" <<'EOF'
import json, sys
def paths(schema, prefix=""):
    for name, sub in schema.get("properties", {}).items():
        if name == "global":
            continue
        if "properties" in sub:
            yield from paths(sub, prefix + name + ".")
        else:
            yield prefix + name
readme = open(sys.argv[2]).read()
missing = [p for p in paths(json.load(open(sys.argv[1]))) if f"| `{p}` |" not in readme]
print("\n".join(f"not in the README's table: {p}" for p in missing) or "all values documented")
sys.exit(bool(missing))
EOF
}
check "every value of values.schema.json has a row in charts/registry-gate/README.md" values_documented

# --- 3. Installed into the API server. ---------------------------------------------------------
# module_dir MODULE VERSION: the module's directory in the Go module cache, downloaded if needed.
module_dir() {
  command -v go >/dev/null || return 1
  (cd "${WORK}" && GOFLAGS=-mod=mod go mod download -json "$1@$2") |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}
# The CRD versions manifests/validate.sh installs.
validate_default() { sed -n "s/^$1=\"\${$1:-\(.*\)}\"$/\1/p" "${ROOT}/manifests/validate.sh"; }
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-$(validate_default CERT_MANAGER_VERSION)}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-$(validate_default PROMETHEUS_OPERATOR_VERSION)}"
crds=0
cm_dir="$(module_dir github.com/cert-manager/cert-manager "${CERT_MANAGER_VERSION}" 2>/dev/null)"
po_dir="$(module_dir github.com/prometheus-operator/prometheus-operator "${PROMETHEUS_OPERATOR_VERSION}" 2>/dev/null)"
if [[ -n "${cm_dir}" && -n "${po_dir}" ]]; then
  install_crds() {
    k apply --server-side -f "${cm_dir}/deploy/crds/cert-manager.io_issuers.yaml" \
      -f "${cm_dir}/deploy/crds/cert-manager.io_certificates.yaml" \
      -f "${po_dir}/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
      -f "${po_dir}/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" &&
      k wait --for=condition=Established --timeout=60s crd/issuers.cert-manager.io \
        crd/certificates.cert-manager.io crd/servicemonitors.monitoring.coreos.com \
        crd/prometheusrules.monitoring.coreos.com
  }
  check "install the CRDs of cert-manager ${CERT_MANAGER_VERSION} and Prometheus Operator ${PROMETHEUS_OPERATOR_VERSION}" \
    install_crds && crds=1
fi

# The namespace, as registry-gate/README.md's install does it.
release_namespace() {
  k create namespace registry-gate &&
    k label namespace registry-gate pod-security.kubernetes.io/{enforce,warn,audit}=restricted
}
check "create the namespace registry-gate and hold it to Pod Security restricted (README, Install)" \
  release_namespace
check "create the namespace platform-gate (for the dry-run of all-options)" k create namespace platform-gate
dry_run() { k apply --server-side --dry-run=server --validate=strict -f "$1"; }
if [[ ${crds} == 1 ]]; then
  dry_run_of() { render "$@" && quiet dry_run "${WORK}/$1.yaml"; }
  check "dry-run: default values (certManager) with monitoring" \
    dry_run_of defaults -n registry-gate "${MONITORING[@]}"
  check "dry-run: testdata/all-options.yaml in platform-gate (existingSecret, Namespace object, monitoring)" \
    quiet dry_run "${A}"
  check "dry-run: testdata/all-options.yaml with certificates.mode=certManager (ClusterIssuer)" \
    dry_run_of all-cm -n platform-gate "${ALL[@]}" --set certificates.mode=certManager
else
  skip "dry-runs with cert-manager and Prometheus Operator kinds" "their CRDs are not available (needs go)"
  MONITORING=()
fi

# The two-step install: everything but the webhook configurations, then everything.
INSTALL=(registry-gate "${CHART}" -n registry-gate "${SELF_MANAGED[@]}" "${MONITORING[@]}")
step_one() { h install "${INSTALL[@]}" --set webhooks.enabled=false >"${WORK}/notes.txt" && head -n 6 "${WORK}/notes.txt"; }
check "helm install, step 1: selfManaged, monitoring, webhooks.enabled=false" step_one
check "NOTES say the webhooks are off and how to turn them on" \
  grep -q 'The webhooks are OFF' "${WORK}/notes.txt"
step_one_objects() {
  local out
  out="$(k get validatingwebhookconfigurations,mutatingwebhookconfigurations -o name)"
  echo "webhook configurations: ${out:-none}"
  [[ -z "${out}" ]] && k -n registry-gate get deployment/registry-gate deployment/registry-gate-controller \
    configmap/registry-gate-policy secret/registry-gate-tls pdb/registry-gate service/registry-gate \
    service/registry-gate-controller serviceaccount/registry-gate serviceaccount/registry-gate-controller -o name
}
check "step 1 created the Deployments, policy, Secret, Services, and no webhook configuration" step_one_objects
step_two() {
  h upgrade registry-gate "${CHART}" -n registry-gate --reuse-values --set webhooks.enabled=true >/dev/null &&
    h status registry-gate -n registry-gate | grep -E '^(STATUS|REVISION):'
}
check "helm upgrade, step 2: --reuse-values --set webhooks.enabled=true" step_two
if [[ ${#MONITORING[@]} -gt 0 ]]; then
  check "monitoring objects exist (2 ServiceMonitors, 2 PrometheusRules, the dashboard)" \
    k -n registry-gate get servicemonitor/registry-gate servicemonitor/registry-gate-controller \
    prometheusrule/registry-gate prometheusrule/registry-gate-controller configmap/registry-gate-dashboard -o name
fi
ca_bundles_are_the_ca() {
  local b n=0
  for b in $(k get validatingwebhookconfiguration,mutatingwebhookconfiguration registry-gate \
    -o jsonpath='{range .items[*].webhooks[*]}{.clientConfig.caBundle}{"\n"}{end}'); do
    base64 -d <<<"${b}" | cmp -s - "${CERTS}/ca.crt" || return 1
    n=$((n + 1))
  done
  echo "${n} webhooks carry the CA"
  [[ ${n} == 3 ]]
}
check "stored caBundle of all three webhooks decodes to ca.crt" ca_bundles_are_the_ca
service_references() {
  local refs
  refs="$(k get validatingwebhookconfiguration,mutatingwebhookconfiguration registry-gate \
    -o jsonpath='{range .items[*].webhooks[*]}{.name} {.clientConfig.service.namespace}/{.clientConfig.service.name}:{.clientConfig.service.port}{.clientConfig.service.path}{"\n"}{end}')"
  echo "${refs}"
  [[ "${refs}" == "images.registry-gate.io registry-gate/registry-gate:443/validate
policy.registry-gate.io registry-gate/registry-gate:443/validate-policy
pull-secrets.registry-gate.io registry-gate/registry-gate:443/mutate" ]]
}
check "the three webhooks call the Service registry-gate/registry-gate:443 at their paths" service_references
pod() { # NAMESPACE NAME IMAGE [extra kubectl run flags]
  local ns="$1" name="$2" image="$3"
  shift 3
  k -n "${ns}" run "${name}" --image="${image}" --restart=Never "$@"
}
refused "fail closed: Pod CREATE in default is refused while no server answers" \
  'failed calling webhook "pull-secrets\.registry-gate\.io"' pod default p1 registry.k8s.io/pause:3.10
check "namespaceSelector: Pod CREATE in kube-system is admitted" pod kube-system p1 registry.k8s.io/pause:3.10

# What the two ServiceAccounts may do: manifests/README.md's RBAC tables, as
# manifests/validate.sh checks them for the kustomize install.
# shellcheck disable=SC2034 # read by rules() in tests/controlplane/checks.sh
NOBODY=system:serviceaccount:registry-gate:chart-test-no-bindings
for ns in registry-gate default "*"; do
  check "RBAC webhook: nothing on Secrets in ${ns/#\*/all namespaces}" \
    can_all "${WEBHOOK}" no secrets "${ns}" get list watch create update patch delete
done
check "RBAC webhook: exactly the rules of the table in default" exactly_rules "${WEBHOOK}" default <"${RBAC_TABLES}/webhook-default.rules"
check "RBAC webhook: exactly the rules of the table in registry-gate" \
  exactly_rules "${WEBHOOK}" registry-gate <"${RBAC_TABLES}/webhook-registry-gate.rules"
check "RBAC controller: exactly the rules of the table in default" exactly_rules "${CONTROLLER}" default <"${RBAC_TABLES}/controller-default.rules"
check "RBAC controller: exactly the rules of the table in registry-gate" \
  exactly_rules "${CONTROLLER}" registry-gate <"${RBAC_TABLES}/controller-registry-gate.rules"

# The real processes, each as its ServiceAccount: a copy of the admin kubeconfig that
# impersonates the account (and the groups the API server gives ServiceAccounts).
kubeconfig_as() { # ACCOUNT OUT
  sed "/^  user:\$/a\\
    as: system:serviceaccount:registry-gate:$1\\
    as-groups: [system:serviceaccounts, system:serviceaccounts:registry-gate, system:authenticated]" \
    "${KUBECONFIG}" >"$2"
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() { # PORT LOG: /readyz answers 200 within 30 s
  eventually 30 curl -fsS --max-time 1 "http://127.0.0.1:$1/readyz" || { tail -n 20 "$2"; return 1; }
}
WEBHOOK_PORT="$(free_port)"
SERVER_METRICS="$(free_port)"
kubeconfig_as registry-gate "${WORK}/kubeconfig-webhook"
# Started straight from the binary (not through the gate function), so that $! is its PID.
"${REGISTRY_GATE_BINARY}" serve --listen "127.0.0.1:${WEBHOOK_PORT}" --metrics-listen "127.0.0.1:${SERVER_METRICS}" \
  --tls-cert "${CERTS}/tls.crt" --tls-key "${CERTS}/tls.key" \
  --policy-configmap registry-gate/registry-gate-policy --kubeconfig "${WORK}/kubeconfig-webhook" \
  --log-format json </dev/null >"${WORK}/serve.log" 2>&1 &
PIDS+=($!)
check "registry-gate serve, as the webhook's ServiceAccount, loads the chart's policy ConfigMap and is ready" \
  wait_ready "${SERVER_METRICS}" "${WORK}/serve.log"

# clientConfig of every webhook of the chart: its Service reference becomes the loopback URL of
# the same path; caBundle (the chart's, from ca.crt) and every other field stay as installed.
point_webhooks_at_server() {
  local kind n i path ops
  for kind in validatingwebhookconfiguration mutatingwebhookconfiguration; do
    n="$(k get "${kind}" registry-gate -o jsonpath='{range .webhooks[*]}x{end}')"
    ops=()
    for ((i = 0; i < ${#n}; i++)); do
      path="$(k get "${kind}" registry-gate -o jsonpath="{.webhooks[${i}].clientConfig.service.path}")"
      ops+=("{\"op\":\"remove\",\"path\":\"/webhooks/${i}/clientConfig/service\"}"
        "{\"op\":\"add\",\"path\":\"/webhooks/${i}/clientConfig/url\",\"value\":\"https://127.0.0.1:${WEBHOOK_PORT}${path}\"}")
    done
    k patch "${kind}" registry-gate --type=json -p "[$(IFS=,; echo "${ops[*]}")]" || return 1
  done
}
check "the chart's webhook configurations pointed at https://127.0.0.1:${WEBHOOK_PORT} (clientConfig only)" \
  point_webhooks_at_server
denied_by_registry_gate() {
  local out
  out="$(pod default probe evil.example.com/miner --dry-run=server 2>&1)"
  grep 'uses an image from unregistered or forbidden registries' <<<"${out}"
}
# The API server picks the change up from a watch, a moment later.
check "the API server calls registry-gate through the chart's configurations" \
  eventually 20 denied_by_registry_gate
refused "images.registry-gate.io: an unregistered image in default is refused, by field path and image" \
  'spec\.containers\[0\]\.image "evil\.example\.com/miner": evil\.example\.com/miner is not in any registered registry' \
  pod default miner evil.example.com/miner
refused "images.registry-gate.io: a deny-listed image is refused with the policy's reason" \
  'debug images are not for production' pod default debug docker.io/library/busybox:1.36
refused "images.registry-gate.io: a Deployment with an unregistered image is refused" \
  'admission webhook "images\.registry-gate\.io" denied the request' \
  k -n default create deployment miner --image=evil.example.com/miner
pull_secret_added() {
  local got
  got="$(pod default api localhost:5000/shop/api:2.1 -o jsonpath='{.spec.imagePullSecrets[*].name}')" || return 1
  echo "imagePullSecrets: ${got}"
  [[ "${got}" == local-registry-pull ]]
}
check "pull-secrets.registry-gate.io: a Pod from localhost:5000 is created with imagePullSecrets local-registry-pull" \
  pull_secret_added
check "images.registry-gate.io: a Pod of an official Docker Hub image is admitted" pod default web nginx:1.27
check "namespaceSelector: an unregistered image in kube-system is admitted (never sent)" \
  pod kube-system miner evil.example.com/miner --dry-run=server
refused "policy.registry-gate.io: a broken policy written to the chart's ConfigMap is refused" \
  'admission webhook "policy\.registry-gate\.io" denied the request' \
  k -n registry-gate patch configmap registry-gate-policy --type=merge -p '{"data":{"policy.yaml":"mode: sideways\n"}}'
policy_edit_taken_live() {
  python3 - "${ROOT}/manifests/base/default-policy.yaml" >"${WORK}/policy-edit.json" <<'EOF' || return 1
import json, sys
policy = open(sys.argv[1]).read().replace(
    "registries:\n", "registries:\n  - name: miners\n    type: Public\n    url: evil.example.com\n", 1)
print(json.dumps({"data": {"policy.yaml": policy}}))
EOF
  k -n registry-gate patch configmap registry-gate-policy --type=merge --patch-file "${WORK}/policy-edit.json" &&
    eventually 20 pod default miner evil.example.com/miner --dry-run=server
}
check "a valid policy edit (evil.example.com registered) is admitted and enforced within seconds" \
  policy_edit_taken_live

CONTROLLER_METRICS="$(free_port)"
kubeconfig_as registry-gate-controller "${WORK}/kubeconfig-controller"
"${REGISTRY_GATE_BINARY}" controller --namespace registry-gate --policy-configmap registry-gate/registry-gate-policy \
  --kubeconfig "${WORK}/kubeconfig-controller" --metrics-listen "127.0.0.1:${CONTROLLER_METRICS}" \
  --log-format json </dev/null >"${WORK}/controller.log" 2>&1 &
PIDS+=($!)
check "registry-gate controller, as its ServiceAccount, is ready (policy loaded, Secrets listed)" \
  wait_ready "${CONTROLLER_METRICS}" "${WORK}/controller.log"
copy_made() {
  PULL_PASSWORD=chart-test gate secret render --policy "${ROOT}/manifests/base/default-policy.yaml" \
    local-development --username chart-test --password-from env:PULL_PASSWORD |
    k apply -f - || return 1
  copy_labelled() {
    k -n default get secret local-registry-pull -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}' |
      grep -x registry-gate
  }
  eventually 20 copy_labelled || { tail -n 20 "${WORK}/controller.log"; return 1; }
}
check "the controller copies the source pull Secret local-registry-pull into default" copy_made
# Written every 5 s.
check "the controller writes its status ConfigMap registry-gate-sync-status" \
  eventually 15 k -n registry-gate get configmap registry-gate-sync-status -o jsonpath='{.data.status\.yaml}'

uninstalled() {
  h uninstall registry-gate -n registry-gate || return 1
  local out
  out="$(k get validatingwebhookconfigurations,mutatingwebhookconfigurations,clusterroles -o name | grep registry-gate)"
  echo "left: ${out:-nothing cluster-wide}"
  [[ -z "${out}" ]]
}
check "helm uninstall removes the webhook configurations and ClusterRoles" uninstalled
check "after uninstall, an unregistered image in default is admitted" \
  pod default after evil.example.com/miner --dry-run=server

echo
echo "charts/test.sh took ${SECONDS} s"
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[[ ${failed} -eq 0 ]]
exit
}
