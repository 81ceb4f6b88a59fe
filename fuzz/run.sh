#!/usr/bin/env bash
# Runs the fuzz targets one after the other (nightly + cargo-fuzz; see docs/FUZZING.md):
#
#   fuzz/run.sh                     every target, 1,000,000 executions each
#   RUNS=100000 fuzz/run.sh npz pth  some targets, fewer executions
#   SANITIZER=none fuzz/run.sh       without AddressSanitizer (faster build and runs)
#
# New inputs that reach new coverage go to fuzz/corpus/<target>/, crashes to
# fuzz/artifacts/<target>/ (minimize with `cargo +nightly fuzz tmin`, fix, and keep the file:
# tests/fuzz_replay.rs replays it on stable). Each run's log: fuzz/target/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-1000000}
sanitizer=${SANITIZER:-address}
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p fuzz/target/logs
# The targets write their input to a file where the parser takes a path: keep that in memory.
if [ -d /dev/shm ] && [ -z "${TMPDIR:-}" ]; then
    export TMPDIR=/dev/shm
fi
cargo +nightly fuzz build --sanitizer "$sanitizer"
for t in "${targets[@]}"; do
    echo "== $t: $runs executions"
    # Limits: 2 GiB of resident memory, no single allocation above 1 GiB, 10 s per input.
    set +e
    cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "fuzz/corpus/$t" -- \
        -runs="$runs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
        -print_final_stats=1 >"fuzz/target/logs/$t.log" 2>&1
    status=$?
    set -e
    grep -E '^(#[0-9]+ +DONE|Done |stat::number_of_executed_units|stat::average_exec_per_sec|SUMMARY)' \
        "fuzz/target/logs/$t.log" || true
    if [ "$status" -ne 0 ]; then
        echo "$t: libFuzzer exited with $status (see fuzz/target/logs/$t.log and fuzz/artifacts/$t/)" >&2
        exit "$status"
    fi
done
