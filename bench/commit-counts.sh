#!/usr/bin/env bash
# bench/commit-counts.sh MXGATE LOADGEN LABEL MODE(plain|tls) [MESSAGES] -> one JSON line of counts per message
# mxgate runs under perf stat (inherit: every thread, also those created later), events enabled
# only from the start of the measured load until mxgate's queue is empty again.
set -euo pipefail
mx=$(realpath "$1") lg=$(realpath "$2") label=$3 mode=$4 n=${5:-2000}
bench=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/single-setup.sh
source "$bench/single-setup.sh"
mkfifo "$w/ctl" "$w/ack"
ev=context-switches,task-clock,raw_syscalls:sys_enter
for s in fdatasync fsync futex write writev sendto recvfrom read epoll_wait epoll_pwait io_uring_enter rename renameat2 openat close ftruncate pwrite64 statfs sched_yield; do
  ev=$ev,syscalls:sys_enter_$s
done
(cd "$w/mx" && exec perf stat -x, -D -1 --control "fifo:$w/ctl,$w/ack" -e "$ev" -o "$w/perf.csv" -- "$mx" serve --config-dir "$w/mx" > "$w/mx.log" 2>&1) &
perf_pid=$!; pids+=($perf_pid)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$pmx") 2>/dev/null && break; sleep 0.1; done
mxpid=$(pgrep -P "$perf_pid" | head -1)
tls=(); [ "$mode" = tls ] && tls=(--tls 1.3)
qempty() { for _ in $(seq 2400); do [ "$(find "$w/mx/spool/queue" -type f | wc -l)" -eq 0 ] && return 0; sleep 0.05; done; echo "queue not empty" >&2; }
"$lg" run --target "127.0.0.1:$pmx" --sessions 20 --messages 200 --size 4K --per-conn 1 "${tls[@]}" --label warm > /dev/null
qempty
exec 8>"$w/ctl"; exec 9<"$w/ack"
echo enable >&8; read -r _ <&9
out=$("$lg" run --target "127.0.0.1:$pmx" --sessions 20 --messages "$n" --size 4K --per-conn 1 "${tls[@]}" \
      --sink-counter "$w/sink.out" --label "$label" --max-secs 300 --e2e-timeout 120)
qempty
echo disable >&8; read -r _ <&9
kill -TERM "$mxpid"; wait "$perf_pid" || true
python3 - "$w/perf.csv" "$label" "$mode" "$n" "$out" <<'PY'
import json, sys
c = {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        c[f[2].replace("syscalls:sys_enter_", "")] = float(f[0])
n = int(sys.argv[4]); load = json.loads(sys.argv[5])
per = {k: round(v / n, 2) for k, v in c.items()}
print(json.dumps({"label": sys.argv[2], "mode": sys.argv[3], "n": n,
                  "ok": load.get("ok"), "failed": load.get("failed"), "sink": load.get("sink_received"),
                  "msg_s": load.get("msg_per_s", load.get("accepted_per_s")),
                  "per_msg": per}))
PY
