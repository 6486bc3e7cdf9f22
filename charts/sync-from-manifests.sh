#!/usr/bin/env bash
# Copies into the chart what it shares with manifests/, since Helm reads no file outside the
# chart's directory:
#
#   manifests/base/default-policy.yaml         -> the `policy: |` block of registry-gate/values.yaml
#   manifests/monitoring/prometheusrule.yaml   -> registry-gate/files/prometheusrule.yaml
#   manifests/monitoring/grafana-dashboard.json -> registry-gate/files/grafana-dashboard.json
#
#   charts/sync-from-manifests.sh          write the copies
#   charts/sync-from-manifests.sh --check  change nothing; exit 1, with a diff, if a copy differs
#
# charts/test.sh runs --check, so a change to one of those manifests fails the tests until it is
# synced here.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/.." && pwd)"
CHART="${HERE}/registry-gate"
CHECK=0
case "${1:-}" in
  "") ;;
  --check) CHECK=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT
mkdir -p "${WORK}/files"
cp "${ROOT}/manifests/monitoring/prometheusrule.yaml" "${WORK}/files/prometheusrule.yaml"
cp "${ROOT}/manifests/monitoring/grafana-dashboard.json" "${WORK}/files/grafana-dashboard.json"

# values.yaml with its `policy: |` block (the indented lines after it) replaced by the policy
# file, indented by two spaces.
policy="${ROOT}/manifests/base/default-policy.yaml"
awk -v policy="${policy}" '
  # Blank lines between the block and the next key are kept; those inside it go with it.
  in_block && $0 == "" { blank++; next }
  in_block && /^ / { blank = 0; next }
  in_block { while (blank-- > 0) print ""; in_block = 0 }
  $0 == "policy: |" {
    print
    while ((getline line < policy) > 0) print (line == "" ? "" : "  " line)
    in_block = 1
    found = 1
    next
  }
  { print }
  END { if (!found) { print "values.yaml has no `policy: |` line" > "/dev/stderr"; exit 1 } }
' "${CHART}/values.yaml" >"${WORK}/values.yaml"

differs=0
for f in values.yaml files/prometheusrule.yaml files/grafana-dashboard.json; do
  if ! cmp -s "${WORK}/${f}" "${CHART}/${f}"; then
    if [[ ${CHECK} == 1 ]]; then
      echo "charts/registry-gate/${f} is out of step with manifests/:" >&2
      diff -u "${CHART}/${f}" "${WORK}/${f}" | head -n 40 >&2 || true
      differs=1
    else
      mkdir -p "$(dirname "${CHART}/${f}")"
      cp "${WORK}/${f}" "${CHART}/${f}"
      echo "updated charts/registry-gate/${f}"
    fi
  fi
done
if [[ ${differs} == 1 ]]; then
  echo "run charts/sync-from-manifests.sh to copy them" >&2
  exit 1
fi
