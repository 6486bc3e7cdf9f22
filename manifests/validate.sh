#!/usr/bin/env bash
# Checks the kustomizations in manifests/ against a real kube-apiserver (tests/controlplane):
#
#   1. every kustomization renders with `kubectl kustomize`;
#   2. server-side dry-runs (`kubectl apply --server-side --dry-run=server --validate=strict -k`)
#      of the base, both overlays and monitoring/, with cert-manager's and the Prometheus
#      Operator's CRDs installed (taken from their Go modules; without Go those parts are skipped
#      and everything else is still checked);
#   3. a real apply of overlays/self-managed with a throwaway CA, then what the apply should
#      cause: the caBundle is the CA; Pod and workload writes are refused while the webhook
#      cannot be reached (fail closed); exempt namespaces are never sent to the webhooks; the
#      policy ConfigMap can still be changed (its webhook fails open); metadata-only updates and
#      mirror Pods are handled by the matchConditions; both Deployments' Pods pass Pod Security
#      "restricted"; the controller runs as one replica replaced with Recreate; and the two
#      ServiceAccounts (webhook, controller) have exactly the permissions manifests/README.md
#      lists: the webhook none on Secrets, the controller nothing beyond its RBAC table.
#
# There is no registry-gate server behind the Service here, so every webhook call fails; that
# is what the failurePolicy checks rely on.
#
#   manifests/validate.sh [start.sh options, e.g. --keep]
#
# Prints one line per check and ends with "N passed, N failed, N skipped"; exits 1 if any failed.
# Needs bash, openssl, base64 and python3 (to edit a stored object for the guard checks); Go (for the CRDs) and jq (for one Pod Security check) are
# optional. Writes only to a temporary directory; the control plane is stopped at the end.
set -uo pipefail
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/.." && pwd)"

if [[ "${REGISTRY_GATE_VALIDATE_INNER:-}" != 1 ]]; then
  # Outer call: start a throwaway control plane and run the checks inside it.
  REGISTRY_GATE_VALIDATE_INNER=1 exec "${ROOT}/tests/controlplane/start.sh" "$@" -- "${HERE}/validate.sh"
fi

CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.21.2}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"

k() { "${REGISTRY_GATE_CONTROLPLANE_BIN}/kubectl" "$@"; }
# report, check, refused, skip, and the RBAC checks (can, can_all, rules, exactly_rules).
# shellcheck source=../tests/controlplane/checks.sh
source "${ROOT}/tests/controlplane/checks.sh"

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT
# Work on a copy, so that the test certificates never land in the repository.
cp -r "${HERE}" "${WORK}/manifests"
M="${WORK}/manifests"
# Never test with (or overwrite) certificates someone put into the real overlay.
rm -f "${M}/overlays/self-managed/certs/"{ca.crt,tls.crt,tls.key}

# --- Test certificates for overlays/self-managed (what `registry-gate certs` would write). ------
make_certs() {
  local d="$1"
  openssl ecparam -name prime256v1 -genkey -noout -out "${WORK}/ca.key" &&
    openssl req -x509 -new -key "${WORK}/ca.key" -subj /CN=registry-gate-validate-ca -days 1 \
      -out "${d}/ca.crt" &&
    openssl ecparam -name prime256v1 -genkey -noout -out "${d}/tls.key" &&
    openssl req -new -key "${d}/tls.key" -subj /CN=registry-gate.registry-gate.svc -out "${WORK}/tls.csr" &&
    printf '%s\n' \
      'subjectAltName=DNS:registry-gate.registry-gate.svc,DNS:registry-gate.registry-gate.svc.cluster.local' \
      'extendedKeyUsage=serverAuth' >"${WORK}/ext" &&
    openssl x509 -req -in "${WORK}/tls.csr" -CA "${d}/ca.crt" -CAkey "${WORK}/ca.key" \
      -CAcreateserial -days 1 -extfile "${WORK}/ext" -out "${d}/tls.crt"
}
check "test CA and serving certificate written to a copy of overlays/self-managed/certs" \
  make_certs "${M}/overlays/self-managed/certs"

# --- Example overlays from manifests/README.md. ------------------------------------------------
mkdir -p "${M}/overlays/example-custom"
cp "${ROOT}/policy/default.yaml" "${M}/overlays/example-custom/my-policy.yaml"
cat >"${M}/overlays/example-custom/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../cert-manager
images:
  - name: ghcr.io/registry-gate/registry-gate
    newTag: "0.1.1"
configMapGenerator:
  - name: registry-gate-policy
    namespace: registry-gate
    behavior: replace
    files:
      - policy.yaml=my-policy.yaml
patches:
  - target:
      labelSelector: app.kubernetes.io/component=controller
    patch: |-
      $patch: delete
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: any
EOF

# --- 1. Rendering. -----------------------------------------------------------------------------
check "base/default-policy.yaml is identical to policy/default.yaml" \
  cmp "${HERE}/base/default-policy.yaml" "${ROOT}/policy/default.yaml"
for dir in base overlays/cert-manager overlays/self-managed overlays/example-custom monitoring; do
  check "kubectl kustomize manifests/${dir}" k kustomize "${M}/${dir}" -o "${WORK}/${dir//\//-}.yaml"
done
example_overlay_as_documented() {
  local out="${WORK}/overlays-example-custom.yaml"
  # The controller's objects are gone; the one ClusterRole left is the webhook's Namespace reader.
  ! grep -q 'registry-gate-controller' "${out}" &&
    [[ "$(grep -c '^kind: ClusterRole$' "${out}")" == 1 ]] &&
    grep -q 'name: registry-gate-namespace-reader' "${out}" &&
    grep -q 'image: ghcr.io/registry-gate/registry-gate:0.1.1' "${out}" &&
    grep -q 'registry-gate.io/policy: "true"' "${out}" &&
    grep -q 'name: registry-gate-policy$' "${out}"
}
check "README example overlay: no controller objects, image tag and policy replaced, label kept" \
  example_overlay_as_documented
self_managed_ca_bundle_filled() {
  [[ "$(grep -c 'caBundle:' "${WORK}/overlays-self-managed.yaml")" == 3 ]]
}
check "overlays/self-managed renders a caBundle for all three webhooks" self_managed_ca_bundle_filled

# --- 2. Server-side dry-runs. ------------------------------------------------------------------
dry_run() { k apply --server-side --dry-run=server --validate=strict "$@"; }

# A dry-run creates nothing, so the namespaced objects of a dry-run would find no namespace.
check "create the registry-gate Namespace for real (namespaced dry-runs need it)" \
  k apply --server-side -f "${M}/base/namespace.yaml"
check "dry-run: manifests/base" dry_run -k "${M}/base"
check "dry-run: manifests/overlays/self-managed" dry_run -k "${M}/overlays/self-managed"

# Without cert-manager's CRDs, everything but the Issuer and the Certificate must still pass.
only_cert_manager_kinds_unknown() {
  local out accepted unknown other
  out="$(dry_run -k "${M}/overlays/cert-manager" 2>&1)"
  echo "${out}"
  accepted="$(grep -c 'serverside-applied (server dry run)' <<<"${out}")"
  unknown="$(grep -c 'no matches for kind "\(Issuer\|Certificate\)" in version "cert-manager.io/v1"' <<<"${out}")"
  other="$(grep -v -e 'serverside-applied (server dry run)' -e 'no matches for kind' \
    -e '^ensure CRDs are installed first' <<<"${out}" | grep -c .)"
  echo "accepted: ${accepted}, unknown cert-manager kinds: ${unknown}, other lines: ${other}"
  [[ "${accepted}" == 21 && "${unknown}" == 2 && "${other}" == 0 ]]
}
check "dry-run without CRDs: overlays/cert-manager (all 21 objects of the base accepted)" \
  only_cert_manager_kinds_unknown

# module_dir MODULE VERSION: the module's directory in the Go module cache, downloaded if needed.
module_dir() {
  command -v go >/dev/null || return 1
  (cd "${WORK}" && GOFLAGS=-mod=mod go mod download -json "$1@$2") |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}
cm_dir="$(module_dir github.com/cert-manager/cert-manager "${CERT_MANAGER_VERSION}" 2>/dev/null)"
if [[ -n "${cm_dir}" && -d "${cm_dir}/deploy/crds" ]]; then
  cm_install() {
    k apply --server-side -f "${cm_dir}/deploy/crds/cert-manager.io_issuers.yaml" \
      -f "${cm_dir}/deploy/crds/cert-manager.io_certificates.yaml" &&
      k wait --for=condition=Established --timeout=60s \
        crd/issuers.cert-manager.io crd/certificates.cert-manager.io
  }
  check "install cert-manager ${CERT_MANAGER_VERSION} CRDs (Issuer, Certificate) from its Go module" cm_install
  check "dry-run: manifests/overlays/cert-manager" dry_run -k "${M}/overlays/cert-manager"
  check "dry-run: README example overlay (on top of overlays/cert-manager)" \
    dry_run -k "${M}/overlays/example-custom"
else
  skip "dry-run: manifests/overlays/cert-manager" "cert-manager ${CERT_MANAGER_VERSION} CRDs not available (needs go)"
fi

po_dir="$(module_dir github.com/prometheus-operator/prometheus-operator "${PROMETHEUS_OPERATOR_VERSION}" 2>/dev/null)"
if [[ -n "${po_dir}" && -d "${po_dir}/example/prometheus-operator-crd" ]]; then
  po_install() {
    k apply --server-side \
      -f "${po_dir}/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
      -f "${po_dir}/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" &&
      k wait --for=condition=Established --timeout=60s \
        crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com
  }
  check "install Prometheus Operator ${PROMETHEUS_OPERATOR_VERSION} CRDs (ServiceMonitor, PrometheusRule)" po_install
  check "dry-run: manifests/monitoring" dry_run -k "${M}/monitoring"
else
  skip "dry-run: manifests/monitoring" "Prometheus Operator ${PROMETHEUS_OPERATOR_VERSION} CRDs not available (needs go)"
fi

# --- 3. A real install of overlays/self-managed, and what it does. ------------------------------
pod() { # NAMESPACE NAME [extra kubectl run flags]
  local ns="$1" name="$2"
  shift 2
  k -n "${ns}" run "${name}" --image=registry.k8s.io/pause:3.10 --restart=Never "$@"
}
# Made before the webhooks exist, to check later that a metadata-only update still goes through.
check "create Deployment default/existing before the webhooks exist" \
  k -n default create deployment existing --image=registry.k8s.io/pause:3.10
check "create Pod default/existing-pod before the webhooks exist" pod default existing-pod
# The two-step install manifests/README.md describes: all but the webhook configurations, then all.
check "apply for real, step 1: manifests/overlays/self-managed without the webhook configurations" \
  k apply --server-side --validate=strict -k "${M}/overlays/self-managed" \
  -l 'app.kubernetes.io/component!=webhook-configuration'
no_webhook_configurations_yet() {
  local out
  out="$(k get validatingwebhookconfigurations,mutatingwebhookconfigurations -o name)"
  echo "webhook configurations: ${out:-none}"
  [[ -z "${out}" ]] && k -n registry-gate get deployment/registry-gate \
    deployment/registry-gate-controller configmap/registry-gate-policy -o name
}
check "step 1 created both Deployments and the policy, and no webhook configuration" \
  no_webhook_configurations_yet
check "apply for real, step 2: manifests/overlays/self-managed (everything)" \
  k apply --server-side --validate=strict -k "${M}/overlays/self-managed"

ca_bundles_are_the_ca() {
  local b n=0
  for b in $(k get validatingwebhookconfiguration registry-gate \
    -o jsonpath='{range .webhooks[*]}{.clientConfig.caBundle}{"\n"}{end}') \
    $(k get mutatingwebhookconfiguration registry-gate \
      -o jsonpath='{range .webhooks[*]}{.clientConfig.caBundle}{"\n"}{end}'); do
    base64 -d <<<"${b}" | cmp -s - "${M}/overlays/self-managed/certs/ca.crt" || return 1
    n=$((n + 1))
  done
  echo "${n} webhooks carry the CA"
  [[ ${n} == 3 ]]
}
check "stored caBundle of all three webhooks decodes to certs/ca.crt" ca_bundles_are_the_ca
service_references() {
  local refs
  refs="$(k get validatingwebhookconfiguration,mutatingwebhookconfiguration registry-gate \
    -o jsonpath='{range .items[*].webhooks[*]}{.name} {.clientConfig.service.namespace}/{.clientConfig.service.name}:{.clientConfig.service.port}{.clientConfig.service.path} url={.clientConfig.url}{"\n"}{end}')"
  echo "${refs}"
  [[ "$(wc -l <<<"${refs}")" == 3 ]] && ! grep -v ' registry-gate/registry-gate:443/[a-z-]* url=$' <<<"${refs}" | grep -q .
}
check "all three webhooks use a Service reference (registry-gate/registry-gate:443), no URL" service_references

refused "fail closed: Pod CREATE in default is refused while the webhook is unreachable" \
  'failed calling webhook "pull-secrets\.registry-gate\.io"' pod default p1
refused "fail closed: a server-side dry-run Pod CREATE is sent to the webhooks too" \
  'failed calling webhook "pull-secrets\.registry-gate\.io"' pod default p1 --dry-run=server
refused "fail closed: Deployment CREATE in default is refused" \
  'failed calling webhook "images\.registry-gate\.io"' \
  k -n default create deployment new --image=registry.k8s.io/pause:3.10
check "matchCondition spec-changed: a label-only UPDATE of default/existing is admitted" \
  k -n default label deployment existing team=payments
refused "matchCondition spec-changed: an image UPDATE of default/existing is sent (and refused)" \
  'failed calling webhook "images\.registry-gate\.io"' \
  k -n default set image deployment/existing pause=registry.k8s.io/pause:3.9
refused "pods/ephemeralcontainers: kubectl debug on default/existing-pod is sent (and refused)" \
  'failed calling webhook "images\.registry-gate\.io"' \
  k -n default debug existing-pod --image=registry.k8s.io/pause:3.10 --container=debugger
check "matchCondition spec-changed: an annotation-only UPDATE of default/existing-pod is admitted" \
  k -n default annotate pod existing-pod validate.registry-gate.io/touched=yes
mirror_pod() {
  k create -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: mirror
  namespace: default
  annotations:
    kubernetes.io/config.mirror: "validate"
spec:
  nodeName: node-1
  containers:
    - name: c
      image: registry.k8s.io/pause:3.10
EOF
}
# The mutating webhook runs first; the refusal must come from the validating one.
refused "matchCondition not-a-mirror-pod: a mirror Pod skips pull-secrets and reaches images" \
  'failed calling webhook "images\.registry-gate\.io"' mirror_pod
check "namespaceSelector: Pod CREATE in kube-system is admitted" pod kube-system p1
restricted_pod() { # a Pod that meets Pod Security "restricted", which registry-gate enforces
  k create -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: p1
  namespace: registry-gate
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: c
      image: registry.k8s.io/pause:3.10
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: ["ALL"]
EOF
}
check "namespaceSelector: Pod CREATE in registry-gate is admitted" restricted_pod
labelled_namespace() {
  k create namespace labelled && k label namespace labelled registry-gate.io/ignore=true &&
    pod labelled p1
}
refused "namespaceSelector: a registry-gate.io/ignore=true label exempts nothing in the base" \
  'failed calling webhook "pull-secrets\.registry-gate\.io"' labelled_namespace
check "fail open: an UPDATE of the policy ConfigMap is admitted while the webhook is unreachable" \
  k -n registry-gate annotate configmap registry-gate-policy validate.registry-gate.io/touched=yes
template_pod() { # DEPLOYMENT: create a Pod from its Pod template
  k -n registry-gate get deployment "$1" -o json |
    jq --arg name "$1-template-check" '{apiVersion: "v1", kind: "Pod",
         metadata: {name: $name, namespace: "registry-gate", labels: .spec.template.metadata.labels},
         spec: .spec.template.spec}' |
    k create -f -
}
if command -v jq >/dev/null; then
  for d in registry-gate registry-gate-controller; do
    check "Pod Security restricted (enforced on registry-gate): Deployment ${d}'s Pod template is admitted as a Pod" \
      template_pod "${d}"
  done
else
  skip "Pod Security check of the Deployments' Pod templates" "needs jq"
fi
refused "Pod Security restricted: a privileged Pod in registry-gate is refused" \
  'violates PodSecurity "restricted' pod registry-gate privileged --privileged
# One controller at a time: a rollout must stop the old Pod before starting the new one, and
# no PodDisruptionBudget may select the controller (with one replica it would block drains).
controller_runs_alone() {
  local got pdbs
  got="$(k -n registry-gate get deployment registry-gate-controller \
    -o jsonpath='replicas={.spec.replicas} strategy={.spec.strategy.type} account={.spec.template.spec.serviceAccountName}')"
  echo "${got}"
  pdbs="$(k -n registry-gate get pdb -o jsonpath='{range .items[*]}{.metadata.name}: {.spec.selector.matchLabels}{"\n"}{end}')"
  echo "${pdbs}"
  [[ "${got}" == "replicas=1 strategy=Recreate account=registry-gate-controller" ]] &&
    ! grep -q '"app.kubernetes.io/component":"controller"' <<<"${pdbs}"
}
check "controller Deployment: 1 replica, strategy Recreate, its own ServiceAccount, no PodDisruptionBudget" \
  controller_runs_alone

# --- RBAC: what the two ServiceAccounts may and may not do. ----------------------------------------
# An account with no binding of its own: what every ServiceAccount may do anyway (discovery,
# self-reviews), which the exact comparisons below leave out.
# shellcheck disable=SC2034 # read by rules() in tests/controlplane/checks.sh
NOBODY=system:serviceaccount:registry-gate:validate-no-bindings

# The webhook: the policy ConfigMap and Events in registry-gate, nothing on Secrets anywhere.
check "RBAC webhook: get configmap/registry-gate-policy in registry-gate" \
  can "${WEBHOOK}" yes get configmap/registry-gate-policy registry-gate
check "RBAC webhook: no get of any other ConfigMap by name" \
  can "${WEBHOOK}" no get configmap/other registry-gate
check "RBAC webhook: list and watch ConfigMaps in registry-gate" \
  can_all "${WEBHOOK}" yes configmaps registry-gate list watch
check "RBAC webhook: no ConfigMaps outside registry-gate" \
  can_all "${WEBHOOK}" no configmaps default get list watch
check "RBAC webhook: no writes to the policy" \
  can_all "${WEBHOOK}" no configmap/registry-gate-policy registry-gate update patch delete
check "RBAC webhook: create and patch Events (core) in registry-gate" \
  can_all "${WEBHOOK}" yes events registry-gate create patch
check "RBAC webhook: create and patch Events (events.k8s.io) in registry-gate" \
  can_all "${WEBHOOK}" yes events.events.k8s.io registry-gate create patch
check "RBAC webhook: no Events elsewhere" can "${WEBHOOK}" no create events default
for ns in registry-gate default kube-system "*"; do
  check "RBAC webhook: nothing on Secrets in ${ns/#\*/all namespaces}" \
    can_all "${WEBHOOK}" no secrets "${ns}" get list watch create update patch delete
done
check "RBAC webhook: nothing on Pods or workloads" \
  can_all "${WEBHOOK}" no pods default create update
check "RBAC webhook: nothing on webhook configurations" \
  can_all "${WEBHOOK}" no validatingwebhookconfigurations.admissionregistration.k8s.io "" update patch
check "RBAC webhook: list and watch Namespaces (their labels), nothing more on them" \
  can_all "${WEBHOOK}" yes namespaces "" list watch
check "RBAC webhook: no get or write of Namespaces" \
  can_all "${WEBHOOK}" no namespaces "" get create update patch delete
check "RBAC webhook: exactly the rules of the table in default (Namespaces read)" \
  exactly_rules "${WEBHOOK}" default <"${RBAC_TABLES}/webhook-default.rules"
check "RBAC webhook: exactly the rules of the table in registry-gate" \
  exactly_rules "${WEBHOOK}" registry-gate <"${RBAC_TABLES}/webhook-registry-gate.rules"

# The controller: Secrets and Events everywhere, Namespaces read-only, Pods and workloads listed
# (the audit), three ConfigMaps.
check "RBAC controller: get/list/watch/create/update/patch/delete Secrets in another namespace" \
  can_all "${CONTROLLER}" yes secrets default get list watch create update patch delete
check "RBAC controller: get/list/watch the source Secrets in registry-gate" \
  can_all "${CONTROLLER}" yes secrets registry-gate get list watch
check "RBAC controller: list and watch Secrets across all namespaces (its copies, by label)" \
  can_all "${CONTROLLER}" yes secrets "*" list watch
check "RBAC controller: no deletecollection of Secrets" \
  can "${CONTROLLER}" no deletecollection secrets default
check "RBAC controller: get/list/watch Namespaces" \
  can_all "${CONTROLLER}" yes namespaces "" get list watch
check "RBAC controller: no create/update/patch/delete of Namespaces" \
  can_all "${CONTROLLER}" no namespaces "" create update patch delete
check "RBAC controller: create and patch Events (core) in another namespace" \
  can_all "${CONTROLLER}" yes events default create patch
check "RBAC controller: create and patch Events (events.k8s.io) in another namespace" \
  can_all "${CONTROLLER}" yes events.events.k8s.io default create patch
check "RBAC controller: get configmap/registry-gate-policy in registry-gate" \
  can "${CONTROLLER}" yes get configmap/registry-gate-policy registry-gate
check "RBAC controller: list and watch ConfigMaps in registry-gate" \
  can_all "${CONTROLLER}" yes configmaps registry-gate list watch
check "RBAC controller: no writes to the policy" \
  can_all "${CONTROLLER}" no configmap/registry-gate-policy registry-gate update patch delete
check "RBAC controller: create ConfigMaps in registry-gate (cannot be held to one name)" \
  can "${CONTROLLER}" yes create configmaps registry-gate
check "RBAC controller: get/update/patch configmap/registry-gate-sync-status" \
  can_all "${CONTROLLER}" yes configmap/registry-gate-sync-status registry-gate get update patch
check "RBAC controller: get/update/patch configmap/registry-gate-audit" \
  can_all "${CONTROLLER}" yes configmap/registry-gate-audit registry-gate get update patch
audit_lists() {
  local r
  for r in pods replicationcontrollers deployments.apps statefulsets.apps daemonsets.apps \
    replicasets.apps jobs.batch cronjobs.batch; do
    can "${CONTROLLER}" yes list "${r}" "*" || return 1
  done
}
check "RBAC controller: list Pods and workloads in every namespace (the audit)" audit_lists
check "RBAC controller: no get or watch of Pods (the audit caches nothing)" \
  can_all "${CONTROLLER}" no pods default get watch
check "RBAC controller: no delete of configmap/registry-gate-sync-status" \
  can "${CONTROLLER}" no delete configmap/registry-gate-sync-status registry-gate
check "RBAC controller: no get, update or patch of any other ConfigMap by name" \
  can_all "${CONTROLLER}" no configmap/other registry-gate get update patch
check "RBAC controller: no ConfigMaps outside registry-gate" \
  can_all "${CONTROLLER}" no configmaps default get list watch create
check "RBAC controller: no writes to Pods" can_all "${CONTROLLER}" no pods default create update delete
check "RBAC controller: nothing on workloads, its own Deployment included" \
  can_all "${CONTROLLER}" no deployments.apps registry-gate update patch
check "RBAC controller: nothing on validating webhook configurations" \
  can_all "${CONTROLLER}" no validatingwebhookconfigurations.admissionregistration.k8s.io "" update patch delete
check "RBAC controller: get and update of mutatingwebhookconfiguration/registry-gate (its match condition)" \
  can_all "${CONTROLLER}" yes mutatingwebhookconfigurations.admissionregistration.k8s.io/registry-gate "" get update
check "RBAC controller: no patch or delete of mutatingwebhookconfiguration/registry-gate" \
  can_all "${CONTROLLER}" no mutatingwebhookconfigurations.admissionregistration.k8s.io/registry-gate "" patch delete
check "RBAC controller: nothing on any other mutating webhook configuration" \
  can_all "${CONTROLLER}" no mutatingwebhookconfigurations.admissionregistration.k8s.io/other "" get update
check "RBAC controller: no create, list or watch of mutating webhook configurations" \
  can_all "${CONTROLLER}" no mutatingwebhookconfigurations.admissionregistration.k8s.io "" create list watch
# base/guard-controller.yaml: the API server itself refuses an update by the controller that
# changes more than its one matchCondition. Each edit is made to the stored object and PUT as
# the controller's ServiceAccount.
put_as_controller() { # PYTHON-EDIT (of the configuration `m`)
  local edited
  edited="$(k get mutatingwebhookconfiguration registry-gate -o json | python3 -c "
import json, sys
m = json.load(sys.stdin)
hook = m['webhooks'][0]
$1
print(json.dumps(m))")" || return 1
  k replace --raw /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/registry-gate \
    --as="${CONTROLLER}" -f - <<<"${edited}" >/dev/null
}
check "guard: the controller may add its matchCondition registry-gate-needs-pull-secret" \
  put_as_controller "hook['matchConditions'].append({'name': 'registry-gate-needs-pull-secret', 'expression': 'true'})"
check "guard: the controller may change it" \
  put_as_controller "[c.update(expression='1 == 1') for c in hook['matchConditions'] if c['name'] == 'registry-gate-needs-pull-secret']"
refused "guard: the controller may not point the webhook at another Service" \
  'registry-gate-controller-guard.*may change only the matchCondition' \
  put_as_controller "hook['clientConfig']['service']['name'] = 'elsewhere'"
refused "guard: the controller may not change the failurePolicy" \
  'registry-gate-controller-guard.*may change only the matchCondition' \
  put_as_controller "hook['failurePolicy'] = 'Ignore'"
refused "guard: the controller may not change the install's own matchConditions" \
  'registry-gate-controller-guard.*may change only the matchCondition' \
  put_as_controller "hook['matchConditions'][0]['expression'] = 'false'"
refused "guard: the controller may not add a webhook" \
  'registry-gate-controller-guard.*may not add, remove, rename or reorder webhooks' \
  put_as_controller "m['webhooks'].append(dict(hook, name='more.example.com'))"
refused "guard: the controller may not change labels" \
  'registry-gate-controller-guard.*may not change the configuration' \
  put_as_controller "m['metadata']['labels']['team'] = 'x'"
check "guard: the controller may remove its matchCondition" \
  put_as_controller "hook['matchConditions'] = [c for c in hook['matchConditions'] if c['name'] != 'registry-gate-needs-pull-secret']"
check "RBAC controller: no RoleBindings" \
  can_all "${CONTROLLER}" no rolebindings.rbac.authorization.k8s.io registry-gate create update
check "RBAC controller: no bind or escalate of ClusterRoles" \
  can_all "${CONTROLLER}" no clusterroles.rbac.authorization.k8s.io "" bind escalate update
check "RBAC controller: no ServiceAccount tokens" \
  can "${CONTROLLER}" no create serviceaccounts/token registry-gate
check "RBAC controller: exactly the rules of the table in another namespace" \
  exactly_rules "${CONTROLLER}" default <"${RBAC_TABLES}/controller-default.rules"
check "RBAC controller: exactly the rules of the table in registry-gate" \
  exactly_rules "${CONTROLLER}" registry-gate <"${RBAC_TABLES}/controller-registry-gate.rules"

echo
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[[ ${failed} -eq 0 ]]
exit
}
