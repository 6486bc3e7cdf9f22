#!/usr/bin/env bash
# A short, bounded fuzz run for CI: every target (or those named as arguments) for
# FUZZ_SECONDS seconds each, starting from the committed corpus.
#
# Each target fuzzes a scratch copy of its corpus, so a run never changes the repository; a
# crashing input is saved under fuzz/artifacts/<target>/ (ignored by git) and fails the run.
#
#   fuzz/run.sh                      # all targets, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh policy_decide
set -euo pipefail

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
seconds=${FUZZ_SECONDS:-60}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# libFuzzer and the sanitizers need unstable rustc flags: a nightly when there is one, otherwise
# the stable compiler with its unstable features unlocked.
nightly=$(rustup toolchain list 2>/dev/null | awk '/^nightly/ { print $1; exit }' || true)
if [[ -n $nightly ]]; then
    cargo=(cargo "+$nightly" fuzz)
else
    cargo=(cargo fuzz)
    export RUSTC_BOOTSTRAP=1
fi

cd "$fuzz_dir/.."
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <("${cargo[@]}" list --fuzz-dir "$fuzz_dir")
fi
# Built before the clock starts, so that every target gets its full time. A failed build is tried
# once more: a compiler error fails again, while a passing fault (a build job killed for memory,
# say) should not fail the run. The disk left is printed, since a full disk is the usual cause.
if ! "${cargo[@]}" build --fuzz-dir "$fuzz_dir"; then
    echo "fuzz/run.sh: the build failed; building once more. Disk and memory now:" >&2
    df -h "$fuzz_dir" >&2 || true
    free -m >&2 || true
    "${cargo[@]}" build --fuzz-dir "$fuzz_dir"
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

summary=()
failed=0
for target in "${targets[@]}"; do
    corpus="$scratch/corpus/$target"
    mkdir -p "$corpus"
    if [[ -d $fuzz_dir/corpus/$target ]]; then
        cp -R "$fuzz_dir/corpus/$target/." "$corpus/"
    fi
    log="$scratch/$target.log"
    status=0
    "${cargo[@]}" run --fuzz-dir "$fuzz_dir" "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 2>&1 | tee "$log" || status=$?
    # libFuzzer's own count: "Done 123456 runs in 60 second(s)".
    done_line=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
    if [[ $status -eq 0 && -n $done_line ]]; then
        read -r _ runs _ _ secs _ <<<"$done_line"
        summary+=("fuzz $target: $runs runs in $secs s, no crash")
    else
        failed=1
        artifact=$(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -n 1 | cut -d' ' -f5- || true)
        runs=$(grep -Eo '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
        summary+=("fuzz $target: CRASH after ${runs:-?} runs: ${artifact:-no artifact written (exit $status)}")
    fi
done

printf '%s\n' "${summary[@]}"
exit "$failed"
