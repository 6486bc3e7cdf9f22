#!/usr/bin/env bash
# Start etcd + kube-apiserver on loopback the way controller-runtime's envtest
# (pkg/internal/testing/controlplane) does, for end-to-end tests. See README.md.
#
# Usage:
#   start.sh [--workdir DIR] [--bin DIR] [--keep]            start in the background, print the
#                                                            env file and kubeconfig, exit 0
#   start.sh [--workdir DIR] [--bin DIR] [--keep] -- CMD...  start, run CMD with the env below
#                                                            exported, stop, exit with CMD's status
#   start.sh --stop DIR                                      stop a background control plane
#                                                            (DIR is its workdir) and delete DIR
#   start.sh --stop-apiserver DIR                            stop only the kube-apiserver of a
#                                                            running control plane: SIGTERM, wait
#                                                            until its port refuses connections,
#                                                            SIGKILL if it still runs after the
#                                                            grace below; etcd keeps running
#   start.sh --start-apiserver DIR                           start it again with the same command
#                                                            line (port, etcd, certificates),
#                                                            appending to its log; wait for /readyz
#
# Options / environment:
#   --bin DIR     directory with etcd, kube-apiserver, kubectl
#                 (default $REGISTRY_GATE_CONTROLPLANE_BIN, else build.sh's cache: build.sh is
#                 run, which returns at once when the binaries are cached)
#   --workdir DIR where certs, etcd data, logs, kubeconfig go (default: a new mktemp -d).
#   --keep        do not delete the workdir on stop (logs stay for inspection)
#   REGISTRY_GATE_CONTROLPLANE_TIMEOUT  seconds to wait for etcd and for /readyz (default 90)
#   REGISTRY_GATE_APISERVER_STOP_GRACE  --stop-apiserver: seconds between SIGTERM and SIGKILL
#                 (default 5; an apiserver with open watches drains them up to 60 s)
#
# What CMD (or a caller that sources DIR/env) gets:
#   KUBECONFIG                    admin kubeconfig (client cert in group system:masters)
#   REGISTRY_GATE_APISERVER_URL   https://127.0.0.1:<port>
#   REGISTRY_GATE_APISERVER_CA    CA file that signed the apiserver's serving cert
#   REGISTRY_GATE_ADMIN_TOKEN     bearer token of the same admin (via --token-auth-file)
#   REGISTRY_GATE_ADMIN_CERT / REGISTRY_GATE_ADMIN_KEY  admin client cert/key files
#   REGISTRY_GATE_CONTROLPLANE_DIR  the workdir; ETCD_URL; ETCD_PID; APISERVER_PID;
#   REGISTRY_GATE_CONTROLPLANE_BIN  the bin dir (so CMD can use "$REGISTRY_GATE_CONTROLPLANE_BIN/kubectl")
#   (APISERVER_PID is empty in DIR/env while --stop-apiserver has the apiserver stopped)
set -euo pipefail
# The whole script is one { } block so bash parses it before running: editing
# or updating this file while a build runs cannot break the running copy.
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "start.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TIMEOUT="${REGISTRY_GATE_CONTROLPLANE_TIMEOUT:-90}"
BIN_DIR="${REGISTRY_GATE_CONTROLPLANE_BIN:-}"
WORKDIR=""
KEEP=0
STOP_DIR=""
APISERVER_OP=""
CMD=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN_DIR="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --stop) STOP_DIR="$2"; shift 2 ;;
    --stop-apiserver) APISERVER_OP=stop; STOP_DIR="$2"; shift 2 ;;
    --start-apiserver) APISERVER_OP=start; STOP_DIR="$2"; shift 2 ;;
    --) shift; CMD=("$@"); break ;;
    -h|--help) sed -n '2,39p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# ---------------------------------------------------------------- stopping ---
# Whether a process runs. A zombie does not: an apiserver started by --start-apiserver outlives
# that call and is reparented to PID 1 (or a subreaper), which may never reap it.
running() {
  local pid="$1" stat
  kill -0 "${pid}" 2>/dev/null || return 1
  stat="$(cat "/proc/${pid}/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# Stop one process by pid: SIGTERM, wait up to $2 seconds, then SIGKILL.
stop_pid() {
  local pid="$1" grace="$2" name="$3" i
  [[ -n "${pid}" ]] || return 0
  running "${pid}" || return 0
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    running "${pid}" || { log "${name} (pid ${pid}) stopped"; return 0; }
    sleep 0.1
  done
  log "${name} (pid ${pid}) did not stop in ${grace}s; killing"
  kill -KILL "${pid}" 2>/dev/null || true
}

stop_dir() {
  local dir="$1" keep="$2"
  [[ -f "${dir}/env" ]] || die "${dir}/env not found: not a control plane workdir"
  local apid epid
  apid="$(sed -n 's/^APISERVER_PID=//p' "${dir}/env")"
  epid="$(sed -n 's/^ETCD_PID=//p' "${dir}/env")"
  stop_pid "${apid}" 30 kube-apiserver
  stop_pid "${epid}" 15 etcd
  if [[ "${keep}" == 1 ]]; then
    log "kept ${dir}"
  else
    rm -rf "${dir}"
  fi
}

# ---------------------------------------------------------------- helpers ----
wait_for() { # name pid seconds command...
  local name="$1" pid="$2" secs="$3" i
  shift 3
  for ((i = 0; i < secs * 4; i++)); do
    running "${pid}" || die "${name} exited early"
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "${name} not ready after ${secs}s"
}

# Whether something accepts connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts kube-apiserver in the background (APISERVER_PID), with the one command line every start
# uses, made of BIN_DIR, ETCD_URL, CERTS, APISERVER_PORT, APISERVER_URL and SETSID.
# $1 = append: add to its log rather than start a new one.
start_apiserver() {
  local out="${WORKDIR}/logs/kube-apiserver.log"
  [[ "${1:-}" == append ]] || : >"${out}"
  log "starting kube-apiserver on ${APISERVER_URL}"
  "${SETSID[@]}" "${BIN_DIR}/kube-apiserver" \
    --etcd-servers="${ETCD_URL}" \
    --cert-dir="${CERTS}" \
    --tls-cert-file="${CERTS}/apiserver.crt" \
    --tls-private-key-file="${CERTS}/apiserver.key" \
    --secure-port="${APISERVER_PORT}" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --endpoint-reconciler-type=none \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount \
    --authorization-mode=RBAC \
    --client-ca-file="${CERTS}/client-ca.crt" \
    --token-auth-file="${CERTS}/tokens.csv" \
    --service-account-issuer="${APISERVER_URL}/" \
    --service-account-key-file="${CERTS}/sa-signer.pub" \
    --service-account-signing-key-file="${CERTS}/sa-signer.key" \
    </dev/null >>"${out}" 2>&1 &
  APISERVER_PID=$!
}

wait_apiserver_ready() {
  local t0=${SECONDS}
  wait_for kube-apiserver "${APISERVER_PID}" "${TIMEOUT}" \
    curl -fsS --max-time 3 --cacert "${CERTS}/serving-ca.crt" \
    --cert "${CERTS}/admin.crt" --key "${CERTS}/admin.key" "${APISERVER_URL}/readyz"
  log "kube-apiserver ready in $((SECONDS - t0))s (pid ${APISERVER_PID})"
}

# ------------------------------------------------- restarting the apiserver ---
# The settings of a running control plane, from its env file.
load_dir() {
  local dir="$1"
  [[ -f "${dir}/env" ]] || die "${dir}/env not found: not a control plane workdir"
  WORKDIR="${dir}"
  CERTS="${dir}/certs"
  BIN_DIR="$(sed -n 's/^REGISTRY_GATE_CONTROLPLANE_BIN=//p' "${dir}/env")"
  ETCD_URL="$(sed -n 's/^ETCD_URL=//p' "${dir}/env")"
  ETCD_PID="$(sed -n 's/^ETCD_PID=//p' "${dir}/env")"
  APISERVER_URL="$(sed -n 's/^REGISTRY_GATE_APISERVER_URL=//p' "${dir}/env")"
  APISERVER_PORT="${APISERVER_URL##*:}"
  APISERVER_PID="$(sed -n 's/^APISERVER_PID=//p' "${dir}/env")"
}

# Records the apiserver's pid where stop_dir reads it (sed -i renames a new file into place).
set_apiserver_pid() { sed -i "s/^APISERVER_PID=.*/APISERVER_PID=$2/" "$1/env"; }

ms_since() { # $EPOCHREALTIME of the start
  local now="${EPOCHREALTIME}"
  echo $(((10#${now//[.,]/} - 10#${1//[.,]/}) / 1000))
}

# On SIGTERM the apiserver stops listening at once, then drains the connections still open for
# up to its shutdown timeout (60 s): a client's watch keeps it alive that long. Kubelet would
# SIGKILL it after terminationGracePeriodSeconds (30 s in kubeadm's manifest); here the grace is
# REGISTRY_GATE_APISERVER_STOP_GRACE. A second SIGTERM would make it exit at once, so only one
# is sent.
stop_apiserver_of() {
  local dir="$1" grace="${REGISTRY_GATE_APISERVER_STOP_GRACE:-5}" t0 i
  load_dir "${dir}"
  [[ -n "${APISERVER_PID}" ]] || die "the kube-apiserver of ${dir} is already stopped"
  t0="${EPOCHREALTIME}"
  kill -TERM "${APISERVER_PID}" 2>/dev/null || log "kube-apiserver (pid ${APISERVER_PID}) was not running"
  for ((i = 0; i < TIMEOUT * 20; i++)); do
    port_open "${APISERVER_PORT}" || break
    sleep 0.05
  done
  ! port_open "${APISERVER_PORT}" || die "port ${APISERVER_PORT} still accepts connections ${TIMEOUT}s after SIGTERM"
  log "port ${APISERVER_PORT} refuses connections $(ms_since "${t0}") ms after SIGTERM"
  for ((i = 0; i < grace * 20; i++)); do
    running "${APISERVER_PID}" || break
    sleep 0.05
  done
  if running "${APISERVER_PID}"; then
    log "kube-apiserver (pid ${APISERVER_PID}) still runs ${grace}s after SIGTERM; SIGKILL"
    kill -KILL "${APISERVER_PID}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      running "${APISERVER_PID}" || break
      sleep 0.05
    done
    ! running "${APISERVER_PID}" || die "kube-apiserver (pid ${APISERVER_PID}) survives SIGKILL"
  fi
  log "kube-apiserver (pid ${APISERVER_PID}) gone $(ms_since "${t0}") ms after SIGTERM"
  set_apiserver_pid "${dir}" ""
}

start_apiserver_of() {
  local dir="$1" stat sid
  load_dir "${dir}"
  if [[ -n "${APISERVER_PID}" ]] && running "${APISERVER_PID}"; then
    die "kube-apiserver (pid ${APISERVER_PID}) is running; --stop-apiserver ${dir} first"
  fi
  ! port_open "${APISERVER_PORT}" || die "port ${APISERVER_PORT} is taken"
  # The session arrangement of the first start, which etcd still has: a session of its own
  # (setsid) in background mode, the caller's process group in command mode.
  stat="$(cat "/proc/${ETCD_PID}/stat" 2>/dev/null)" || die "etcd (pid ${ETCD_PID}) is not running"
  read -r _ _ _ sid _ <<<"${stat##*) }"
  SETSID=()
  [[ "${sid}" != "${ETCD_PID}" ]] || SETSID=(setsid)
  printf '\n==== start.sh --start-apiserver %s ====\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    >>"${WORKDIR}/logs/kube-apiserver.log"
  start_apiserver append
  # Recorded before the wait, so that a stop from now on stops this process.
  set_apiserver_pid "${dir}" "${APISERVER_PID}"
  wait_apiserver_ready
}

if [[ -n "${APISERVER_OP}" ]]; then
  "${APISERVER_OP}_apiserver_of" "${STOP_DIR}"
  exit 0
fi

if [[ -n "${STOP_DIR}" ]]; then
  stop_dir "${STOP_DIR}" "${KEEP}"
  exit 0
fi

# ---------------------------------------------------------------- binaries ---
if [[ -z "${BIN_DIR}" ]]; then
  BIN_DIR="$("${HERE}/build.sh" | tail -n1)"
fi
for b in etcd kube-apiserver kubectl; do
  [[ -x "${BIN_DIR}/${b}" ]] || die "${BIN_DIR}/${b} missing (run tests/controlplane/build.sh)"
done
command -v openssl >/dev/null || die "openssl is required"
command -v curl >/dev/null || die "curl is required"

# ---------------------------------------------------------------- workdir ----
if [[ -z "${WORKDIR}" ]]; then
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/registry-gate-controlplane.XXXXXX")"
else
  mkdir -p "${WORKDIR}"
  WORKDIR="$(cd "${WORKDIR}" && pwd)"
  [[ ! -e "${WORKDIR}/env" ]] || die "${WORKDIR} already holds a control plane (stop it with --stop ${WORKDIR})"
fi
CERTS="${WORKDIR}/certs"
mkdir -p "${CERTS}" "${WORKDIR}/etcd" "${WORKDIR}/logs"
chmod 700 "${WORKDIR}" "${WORKDIR}/etcd"

ETCD_PID=""
APISERVER_PID=""
STARTED=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup_on_failure() {
  local rc=$?
  if [[ "${STARTED}" != 1 ]]; then
    if [[ ${rc} -ne 0 ]]; then
      for f in "${WORKDIR}/logs/etcd.log" "${WORKDIR}/logs/kube-apiserver.log"; do
        [[ -s "${f}" ]] && { log "last lines of ${f}:"; tail -n 25 "${f}" >&2; }
      done
    fi
    stop_pid "${APISERVER_PID}" 10 kube-apiserver
    stop_pid "${ETCD_PID}" 10 etcd
    [[ "${KEEP}" == 1 ]] || rm -rf "${WORKDIR}"
  fi
}
trap cleanup_on_failure EXIT

# ---------------------------------------------------------------- ports ------
# A port on 127.0.0.1 nobody listens on (racy by nature, as envtest's addr.Suggest). Below the
# kernel's ephemeral range: a port in it can be the local end of someone's outgoing connection,
# which a connect probe does not see but a bind refuses ("address already in use", seen on a
# busy machine).
EPHEMERAL_LOW="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
((EPHEMERAL_LOW > 12000)) || EPHEMERAL_LOW=32768
declare -A TAKEN=()
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
    [[ -z "${TAKEN[${p}]:-}" ]] || continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${p}") 2>/dev/null; then
      TAKEN[${p}]=1
      echo "${p}"
      return 0
    fi
  done
  die "no free port found"
}
ETCD_CLIENT_PORT="$(free_port)"
ETCD_PEER_PORT="$(free_port)"
APISERVER_PORT="$(free_port)"
ETCD_URL="http://127.0.0.1:${ETCD_CLIENT_PORT}"
APISERVER_URL="https://127.0.0.1:${APISERVER_PORT}"

# ---------------------------------------------------------------- certs ------
# Layout as envtest: the serving cert is <cert-dir>/apiserver.{crt,key} (the
# apiserver picks it up from --cert-dir), sa-signer.{crt,key} sign service
# account tokens, a separate client CA signs the admin's client cert.
ossl() { openssl "$@" 2>>"${WORKDIR}/logs/openssl.log" >/dev/null; }
new_ca() { # name cn
  ossl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 7 \
    -subj "/CN=$2" -keyout "${CERTS}/$1.key" -out "${CERTS}/$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
}
new_cert() { # name ca subj extfile-content
  ossl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 \
    -subj "$3" -keyout "${CERTS}/$1.key" -out "${CERTS}/$1.csr"
  printf '%s\n' "$4" >"${CERTS}/$1.ext"
  ossl x509 -req -in "${CERTS}/$1.csr" -CA "${CERTS}/$2.crt" -CAkey "${CERTS}/$2.key" -CAcreateserial \
    -sha256 -days 7 -extfile "${CERTS}/$1.ext" -out "${CERTS}/$1.crt"
  rm -f "${CERTS}/$1.csr" "${CERTS}/$1.ext"
}
new_ca serving-ca "registry-gate-test-serving-ca"
new_cert apiserver serving-ca "/CN=kube-apiserver" \
  "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
new_ca client-ca "registry-gate-test-client-ca"
new_cert admin client-ca "/O=system:masters/CN=registry-gate-admin" \
  "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${CERTS}/sa-signer.key"
ossl pkey -in "${CERTS}/sa-signer.key" -pubout -out "${CERTS}/sa-signer.pub"
ADMIN_TOKEN="$(openssl rand -hex 24)"
# token,user,uid,"group1,group2"
printf '%s,registry-gate-admin,registry-gate-admin,"system:masters"\n' "${ADMIN_TOKEN}" >"${CERTS}/tokens.csv"
chmod 600 "${CERTS}"/*.key "${CERTS}/tokens.csv"

# ---------------------------------------------------------------- etcd -------
SETSID=()
[[ ${#CMD[@]} -gt 0 ]] || SETSID=(setsid) # background mode: survive the caller's Ctrl-C
log "starting etcd on ${ETCD_URL}"
"${SETSID[@]}" "${BIN_DIR}/etcd" \
  --name=registry-gate-test \
  --data-dir="${WORKDIR}/etcd" \
  --listen-client-urls="${ETCD_URL}" \
  --advertise-client-urls="${ETCD_URL}" \
  --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster="registry-gate-test=http://127.0.0.1:${ETCD_PEER_PORT}" \
  --unsafe-no-fsync=true \
  </dev/null >"${WORKDIR}/logs/etcd.log" 2>&1 &
ETCD_PID=$!

wait_for etcd "${ETCD_PID}" "${TIMEOUT}" curl -fsS --max-time 2 "${ETCD_URL}/health"
log "etcd ready (pid ${ETCD_PID})"

# ---------------------------------------------------------------- apiserver --
start_apiserver
wait_apiserver_ready

# ---------------------------------------------------------------- outputs ----
b64() { base64 -w0 <"$1"; }
cat >"${WORKDIR}/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: registry-gate-test
  cluster:
    server: ${APISERVER_URL}
    certificate-authority-data: $(b64 "${CERTS}/serving-ca.crt")
users:
- name: registry-gate-admin
  user:
    client-certificate-data: $(b64 "${CERTS}/admin.crt")
    client-key-data: $(b64 "${CERTS}/admin.key")
contexts:
- name: registry-gate-test
  context:
    cluster: registry-gate-test
    user: registry-gate-admin
current-context: registry-gate-test
EOF
chmod 600 "${WORKDIR}/kubeconfig"

cat >"${WORKDIR}/env" <<EOF
KUBECONFIG=${WORKDIR}/kubeconfig
REGISTRY_GATE_APISERVER_URL=${APISERVER_URL}
REGISTRY_GATE_APISERVER_CA=${CERTS}/serving-ca.crt
REGISTRY_GATE_ADMIN_TOKEN=${ADMIN_TOKEN}
REGISTRY_GATE_ADMIN_CERT=${CERTS}/admin.crt
REGISTRY_GATE_ADMIN_KEY=${CERTS}/admin.key
REGISTRY_GATE_CONTROLPLANE_DIR=${WORKDIR}
REGISTRY_GATE_CONTROLPLANE_BIN=${BIN_DIR}
ETCD_URL=${ETCD_URL}
ETCD_PID=${ETCD_PID}
APISERVER_PID=${APISERVER_PID}
EOF
STARTED=1
trap - EXIT

if [[ ${#CMD[@]} -eq 0 ]]; then
  log "control plane running; workdir ${WORKDIR}"
  log "env file: ${WORKDIR}/env  (set -a; . ${WORKDIR}/env; set +a)"
  log "stop with: ${HERE}/start.sh --stop ${WORKDIR}"
  log "kubeconfig (${WORKDIR}/kubeconfig):"
  cat "${WORKDIR}/kubeconfig"
  echo "${WORKDIR}/env"
  exit 0
fi

# Run CMD against it, then tear down whatever happens.
trap 'stop_dir "${WORKDIR}" "${KEEP}"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set +e
(
  set -a
  # shellcheck disable=SC1091
  . "${WORKDIR}/env"
  set +a
  exec "${CMD[@]}"
)
rc=$?
set -e
log "command exited ${rc}; stopping control plane"
exit "${rc}"
}
