#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) and prints the executions each made and in
# total. Crashes land in fuzz/artifacts/<target>/; each one becomes a named regression test.
#   fuzz/run.sh [--quick] [SECONDS] [TARGET...]
#
# Needs a nightly toolchain. By default the targets are built by cargo-fuzz
# (`cargo install cargo-fuzz --locked`): its release build with one codegen unit runs the most
# executions per second, for long runs. --quick (what CI runs, a few seconds per target) needs
# no cargo-fuzz: it builds the same binaries with cargo-fuzz's instrumentation (libFuzzer's
# coverage and comparison tracing, AddressSanitizer, debug assertions, `--cfg fuzzing`) in the
# dev profile: 3 minutes to compile from cold here instead of 9, at fewer executions per second
# (the handshake target about 100 a second, slowed most by tracing the comparisons in
# constant-time curve arithmetic).
set -euo pipefail
cd "$(dirname "$0")"
quick=0
if [ "${1:-}" = "--quick" ]; then
    quick=1
    shift
fi
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
if [ "$quick" = 1 ]; then
    # The flags `cargo fuzz build` passes (cargo-fuzz's src/project.rs), less its release build.
    flags=(-Cpasses=sancov-module
           -Cllvm-args=-sanitizer-coverage-level=4
           -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
           -Cllvm-args=-sanitizer-coverage-pc-table
           -Cllvm-args=-sanitizer-coverage-trace-compares
           --cfg fuzzing
           -Cllvm-args=-simplifycfg-branch-fold-threshold=0
           -Zsanitizer=address
           -Cdebug-assertions)
    case "$triple" in
        *-linux-*) flags+=(-Cllvm-args=-sanitizer-coverage-stack-depth) ;;
    esac
    RUSTFLAGS="${flags[*]} ${RUSTFLAGS:-}" CARGO_PROFILE_DEV_DEBUG=0 \
        cargo +nightly build --locked --quiet --target "$triple" --bins
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
fi

total=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    args=("corpus/$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="artifacts/$t/")
    log=$(mktemp)
    if [ "$quick" = 1 ]; then
        run=("target/$triple/debug/$t" "${args[@]}")
    else
        run=(cargo +nightly fuzz run "$t" "${args[0]}" -- "${args[@]:1}")
    fi
    if ! "${run[@]}" >"$log" 2>&1; then
        tail -40 "$log"
        echo "FAILED: $t (artifacts/$t/)" >&2
        exit 1
    fi
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "$t: $runs executions in ${secs}s, no crash"
    total=$((total + runs))
    rm -f "$log"
done
echo "total: $total executions"
