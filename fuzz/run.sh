#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 30) when nightly and cargo-fuzz exist;
# otherwise says SKIP and exits 0 (the proptests in tests/hardening.rs cover the same
# properties on stable). Usage: fuzz/run.sh [SECONDS] [TARGET...]
# A longer run: FUZZ_ARGS="-runs=10000000" fuzz/run.sh 900   (stops at 10M runs or 900 s).
# FUZZ_SANITIZER (default none: the targets are safe Rust, and the build and the runs are about
# twice as fast without ASan) is passed to `cargo fuzz run -s`. The first build compiles the
# whole crate in release mode with coverage instrumentation: ~10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(command_parser data_reader line_reader)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "SKIP: fuzzing needs a nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "SKIP: cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== fuzz $t for ${secs}s"
    mkdir -p logs
    set +e
    # shellcheck disable=SC2086
    cargo +nightly fuzz run -s "${FUZZ_SANITIZER:-none}" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 ${FUZZ_ARGS:-} \
        >"logs/$t.log" 2>&1
    status=$?
    set -e
    grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|==[0-9]+==|SUMMARY|thread .* panicked|Test unit written)' \
        "logs/$t.log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 30 "logs/$t.log"
        echo "FAIL: fuzz target $t (exit $status): see fuzz/logs/$t.log; a crashing input, if any, is in fuzz/artifacts/$t/"
        exit "$status"
    fi
    echo "ok: $t"
done
