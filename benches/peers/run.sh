#!/usr/bin/env bash
# The peers' engines and registry-gate deciding the same Pod against the same registries, in one
# run: OPA's Rego (Gatekeeper's engine) and cel-go (kube-apiserver's, for ValidatingAdmission-
# Policy) as Go benchmarks in this folder, registry-gate as benches/peers.rs, timed the same way.
# Prints the machine, the versions, every raw result and the Markdown tables that
# benches/RESULTS.md quotes. Needs Go and cargo; Go modules come from the Go module proxy
# (go.sum pins them) into Go's own cache. COUNT runs per benchmark (default 5).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
count=${COUNT:-5}
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT

cd "$here"
go mod download
go build ./...
# Both sides are built before anything is timed, so no compiler shares the cores with a run.
(cd "$root" && cargo bench --locked --bench peers --no-run)
go test -run '^$' -count 1 . >/dev/null

echo "## Machine and versions"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- cores: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- $(go version | cut -d' ' -f3-), $(rustc --version)"
go list -m -f '- {{.Path}} {{.Version}}' github.com/open-policy-agent/opa github.com/google/cel-go
echo

echo "## Raw results"
echo
echo '```'
go test -run '^$' -bench . -benchmem -count="$count" | tee "$results/go.txt"
(cd "$root" && cargo bench --locked --bench peers -- --count "$count") | tee "$results/rust.txt"
echo '```'
echo "- load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

echo "## Comparison"
echo
go run ./summarize "$results/go.txt" "$results/rust.txt"
