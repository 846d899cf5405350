#!/bin/sh
# A short fuzz run of every target, one after the other:
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]        (default 60)
#
# Environment:
#   FUZZ_TARGETS    targets to run (default: all six)
#   FUZZ_RUNS       run each target for this many executions instead of a time
#   FUZZ_SANITIZER  none (default: no unsafe code in the workspace, and 3-10x faster)
#                   or address
#   FUZZ_WORK       where the growing corpus goes (default: $CARGO_TARGET_DIR/fuzz-work,
#                   else target/fuzz-work); the committed seeds stay as they are
#
# Installs cargo-fuzz if missing. cargo-fuzz passes nightly-only flags to rustc; on a
# stable toolchain RUSTC_BOOTSTRAP=1 allows them (set here). A crash, panic, timeout
# (10 s per input) or an allocation over 256 MiB stops the target with its input in
# tests/fuzz/artifacts/TARGET/; see tests/fuzz/README.md for what to do with it.
set -eu
cd "$(dirname "$0")"

secs=${1:-60}
targets=${FUZZ_TARGETS:-wire_decode swim_datagram stream_frame api_request config_file runtime_file}
sanitizer=${FUZZ_SANITIZER:-none}
work=${FUZZ_WORK:-${CARGO_TARGET_DIR:-../../target}/fuzz-work}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

if [ -n "${FUZZ_RUNS:-}" ]; then
    limit="-runs=$FUZZ_RUNS"
else
    limit="-max_total_time=$secs"
fi

# Longest input per target: a little over what the node accepts where that is small
# (a datagram), enough for several messages where it is large.
max_len() {
    case "$1" in
        swim_datagram) echo 1500 ;;
        stream_frame) echo 16384 ;;
        *) echo 8192 ;;
    esac
}

cargo fuzz build -s "$sanitizer"
failed=""
for t in $targets; do
    mkdir -p "$work/$t"
    dirs="$work/$t corpus/$t"
    if [ -d "regressions/$t" ]; then
        dirs="$dirs regressions/$t"
    fi
    log="$work/$t.log"
    start=$(date +%s)
    # shellcheck disable=SC2086 # word splitting of $dirs and $limit is intended
    if nice -n 19 cargo fuzz run -s "$sanitizer" "$t" $dirs -- \
        "$limit" -max_len="$(max_len "$t")" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed="$failed $t"
    fi
    wall=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    corpus=$(find "$work/$t" -type f | wc -l)
    echo "$t: $status, ${execs:-?} executions in ${wall}s (${rate:-?}/s), corpus $corpus inputs, sanitizer $sanitizer, log $log"
done
if [ -n "$failed" ]; then
    echo "failed:$failed (inputs in tests/fuzz/artifacts/)" >&2
    exit 1
fi
