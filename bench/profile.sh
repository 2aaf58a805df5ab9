#!/usr/bin/env bash
# bench/profile.sh MXGATE LOADGEN [MESSAGES] [MODE plain|tls]: where mxgate's CPU goes under load (a)
# (plain 4 KiB, one message per connection, 20 sessions) or, with tls, (c). mxgate relays to smtp-sink;
# `perf record -g` samples mxgate's threads (every thread, also those created later: --inherit by pid
# follows threads) from the start of the measured load until the queue is empty again.
# Prints the kernel/user split, the top symbols and the top call chains by area; PERF_DATA=file keeps
# the samples for `perf report -i file`.
set -euo pipefail
mx=$(realpath "$1") lg=$(realpath "$2") n=${3:-20000} mode=${4:-plain}
bench=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/single-setup.sh
source "$bench/single-setup.sh"
(cd "$w/mx" && exec "$mx" serve --config-dir "$w/mx" > "$w/mx.log" 2>&1) & mxpid=$!; pids+=($mxpid)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$pmx") 2>/dev/null && break; sleep 0.1; done
tls=(); [ "$mode" = tls ] && tls=(--tls 1.3)
qempty() { for _ in $(seq 2400); do [ "$(find "$w/mx/spool/queue" -type f | wc -l)" -eq 0 ] && return 0; sleep 0.05; done; echo "queue not empty" >&2; }
"$lg" run --target "127.0.0.1:$pmx" --sessions 20 --messages 500 --size 4K --per-conn 1 "${tls[@]}" --label warm > /dev/null
qempty
ticks0=$(awk '{print $14 + $15}' "/proc/$mxpid/stat")
perf record -F 1999 -g -p "$mxpid" -o "$w/perf.data" 2> "$w/perf.err" & perfpid=$!
sleep 0.5
out=$("$lg" run --target "127.0.0.1:$pmx" --sessions 20 --messages "$n" --size 4K --per-conn 1 "${tls[@]}" \
      --sink-counter "$w/sink.out" --label profile --max-secs 300 --e2e-timeout 120)
qempty
kill -INT "$perfpid"; wait "$perfpid" || true
ticks1=$(awk '{print $14 + $15}' "/proc/$mxpid/stat")
echo "$out" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); print("load:", {k: r[k] for k in ("ok", "failed", "msg_per_s", "e2e_msg_per_s", "sink_received")})'
echo "mxgate CPU per message: $(python3 -c "print(round(($ticks1 - $ticks0) * 1000 / $(getconf CLK_TCK) / $n, 3))") ms (from /proc, perf attached)"
[ -z "${PERF_DATA:-}" ] || cp "$w/perf.data" "$PERF_DATA"
echo; echo "## kernel / user (share of mxgate's samples)"
perf report -i "$w/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8 || true
echo; echo "## top symbols (self)"
perf report -i "$w/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40 || true
echo; echo "## top symbols including callees (children)"
perf report -i "$w/perf.data" --children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -60 || true
