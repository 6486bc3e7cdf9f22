# Shared by manifests/validate.sh and charts/test.sh (sourced, after `k` is defined): how a
# check is reported, and the RBAC checks against a running API server. The expected RBAC rules
# of each ServiceAccount are the tables manifests/README.md gives, in tests/controlplane/rbac/.
# shellcheck shell=bash

passed=0
failed=0
skipped=0
report() { # ok|FAIL DESCRIPTION OUTPUT
  if [[ "$1" == ok ]]; then
    passed=$((passed + 1))
    echo "ok   - $2"
  else
    failed=$((failed + 1))
    echo "FAIL - $2"
  fi
  [[ -z "$3" ]] || sed 's/^/       | /' <<<"$3"
}
# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() {
  local d="$1" out rc
  shift
  out="$("$@" 2>&1)"
  rc=$?
  if [[ ${rc} -eq 0 ]]; then report ok "${d}" "${out}"; else report FAIL "${d} (exit ${rc})" "${out}"; fi
}
# refused DESCRIPTION PATTERN COMMAND...: passes when the command fails and its output
# contains PATTERN (an extended regular expression).
refused() {
  local d="$1" pattern="$2" out rc
  shift 2
  out="$("$@" 2>&1)"
  rc=$?
  if [[ ${rc} -ne 0 ]] && grep -Eq -- "${pattern}" <<<"${out}"; then
    report ok "${d}" "${out}"
  else
    report FAIL "${d} (exit ${rc}, expected a refusal matching: ${pattern})" "${out}"
  fi
}
skip() { skipped=$((skipped + 1)); echo "skip - $1: $2"; }

# --- RBAC ------------------------------------------------------------------------------------------
# shellcheck disable=SC2034 # read by the scripts that source this file
RBAC_TABLES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/rbac"
# shellcheck disable=SC2034
WEBHOOK=system:serviceaccount:registry-gate:registry-gate
# shellcheck disable=SC2034
CONTROLLER=system:serviceaccount:registry-gate:registry-gate-controller
# The caller sets NOBODY: an account with no binding of its own, whose rules (discovery,
# self-reviews) the exact comparisons leave out.
can() { # WHO yes|no VERB RESOURCE [NAMESPACE; "*" for all namespaces]
  local who="$1" want="$2" verb="$3" resource="$4" ns="${5:-}" scope=() got
  case "${ns}" in
    "") ;;
    "*") scope=(--all-namespaces) ;;
    *) scope=(-n "${ns}") ;;
  esac
  got="$(k auth can-i "${verb}" "${resource}" "${scope[@]}" --as="${who}" 2>/dev/null)"
  echo "${who##*:} can-i ${verb} ${resource} ${ns:+in ${ns}}: ${got}"
  [[ "${got}" == "${want}" ]]
}
can_all() { # WHO yes|no RESOURCE NAMESPACE VERB...
  local who="$1" want="$2" resource="$3" ns="$4" verb
  shift 4
  for verb in "$@"; do can "${who}" "${want}" "${verb}" "${resource}" "${ns}" || return 1; done
}
# rules WHO NAMESPACE: the resource rules `kubectl auth can-i --list` shows for WHO beyond those of
# NOBODY, one per line, columns separated by single spaces.
rules() {
  local who="$1" ns="$2"
  rule_lines() {
    k auth can-i --list -n "${ns}" --as="$1" | awk 'NR > 1 && $1 !~ /^\[/ { $1 = $1; print }' | sort
  }
  comm -23 <(rule_lines "${who}") <(rule_lines "${NOBODY}")
}
# exactly_rules WHO NAMESPACE < EXPECTED: the rules are exactly the expected lines, in any order.
exactly_rules() {
  local got want
  want="$(sort)"
  got="$(rules "$1" "$2")" || return 1
  echo "${got:-(no rules)}"
  [[ "${got}" == "${want}" ]] || { echo "--- expected:"; echo "${want:-(no rules)}"; return 1; }
}
