#!/usr/bin/env bash
# Proves the alert rules of prometheusrule.yaml with Prometheus' own promtool:
#
#   1. `promtool check rules` on the rules of each PrometheusRule (its `spec`, which is a plain
#      Prometheus rules file);
#   2. `promtool test rules` on the unit tests in tests/monitoring/*.test.yaml;
#   3. every alert has at least one test case where it fires and one where it does not.
#
#   manifests/monitoring/test-rules.sh               all three; exits 1 if anything fails
#   manifests/monitoring/test-rules.sh --extract DIR only write the rules files into DIR
#
# The rules are kept once, in the PrometheusRule objects; the plain files are written to a
# temporary directory as <metadata.name>.rules.yaml, the names the unit tests load. Needs
# promtool (`make prometheus`) and python3 with PyYAML.
set -euo pipefail
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
RULES="${HERE}/prometheusrule.yaml"
TESTS="${ROOT}/tests/monitoring"

# extract DIR: one rules file per PrometheusRule object in prometheusrule.yaml.
extract() {
  python3 - "${RULES}" "$1" <<'EOF'
import pathlib, sys, yaml
source, out = sys.argv[1], pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for doc in yaml.safe_load_all(open(source)):
    if not doc or doc.get("kind") != "PrometheusRule":
        continue
    path = out / f"{doc['metadata']['name']}.rules.yaml"
    path.write_text(yaml.safe_dump(doc["spec"], sort_keys=False, width=1000))
    print(path)
EOF
}

if [[ "${1:-}" == --extract ]]; then
  [[ $# -eq 2 ]] || { echo "usage: $0 --extract DIR" >&2; exit 2; }
  extract "$2" >/dev/null
  exit 0
fi

command -v promtool >/dev/null || { echo "promtool not found: run \`make prometheus\`" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

listed="$(extract "${WORK}")"
mapfile -t files <<<"${listed}"
promtool check rules "${files[@]}"

# The tests name their rule files relative to themselves, so they run next to the extracted ones.
cp "${TESTS}"/*.test.yaml "${WORK}/"
(cd "${WORK}" && promtool test rules ./*.test.yaml)

# promtool passes an alert nobody tested; this does not.
python3 - "${WORK}" <<'EOF'
import pathlib, sys, yaml
work = pathlib.Path(sys.argv[1])
alerts = set()
for path in work.glob("*.rules.yaml"):
    for group in yaml.safe_load(path.read_text())["groups"]:
        alerts.update(rule["alert"] for rule in group["rules"] if "alert" in rule)
fires, silent = set(), set()
for path in work.glob("*.test.yaml"):
    for test in yaml.safe_load(path.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
missing = sorted(
    f"{alert}: no case where it {what}"
    for alert in alerts
    for what, cases in (("fires", fires), ("does not fire", silent))
    if alert not in cases
)
unknown = sorted((fires | silent) - alerts)
for line in missing + [f"{name}: tested but not defined" for name in unknown]:
    print(f"FAILED: {line}")
if missing or unknown:
    sys.exit(1)
print(f"SUCCESS: all {len(alerts)} alerts fire in some case and stay silent in another")
EOF

exit 0
}
