#!/usr/bin/env bash
# mxgate with a long queue: does a backlog slow down the accept path? (issue 7; BENCHMARKS.md)
#
#   bench/backlog.sh                      # BACKLOG=50000 deferred messages, then the (a) load
#
# The internal server is down (the route points at a closed port), so every message is
# deferred and stays queued. Runs scenario (a) (20 sessions, MESSAGES x 4 KiB, one per
# connection) first with an empty queue, then again after BACKLOG messages were queued, and
# prints msg/s and mxgate's CPU per message for both as JSON lines. Loopback only; needs no
# root and no Postfix.
set -euo pipefail
BACKLOG=${BACKLOG:-50000}
MESSAGES=${MESSAGES:-2000}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
(cd "$root" && cargo build --release -q -p mxgate -p loadgen)
mxgate=$root/target/release/mxgate
loadgen=$root/target/release/loadgen

work=$(mktemp -d /tmp/mxgate-backlog.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT
read -r p_mx p_down p_dns < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$work/bench.key" -out "$work/bench.crt" -subj /CN=mx.example.com 2>/dev/null
"$loadgen" dns --listen "127.0.0.1:$p_dns" --max-secs 3600 2> "$work/dns.log" &
pids+=($!)
# Nothing listens on p_down: every delivery attempt is refused and deferred.
bash "$bench/mxgate-config.sh" "$work/mxgate" "$p_mx" "$p_down" "$p_dns" "$work/bench.crt" "$work/bench.key"
sed -i 's/^delivery:/delivery:\n  retry_initial: 1h/' "$work/mxgate/mxgate.yaml"
(cd "$work/mxgate" && exec "$mxgate" serve --config-dir "$work/mxgate" > "$work/mxgate/stdout.log" 2>&1) &
mx=$!
pids+=($mx)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p_mx") 2>/dev/null && break; sleep 0.1; done

queued() { find "$work/mxgate/spool/queue" \( -name '*.mail' -o -name '*.env' \) | wc -l; }
measure() { # label
  local c0 c1 out
  c0=$(python3 "$bench/proctree.py" cpu "$mx")
  out=$("$loadgen" run --target "127.0.0.1:$p_mx" --sessions 20 --messages "$MESSAGES" --size 4K \
        --per-conn 1 --label "$1" --max-secs 300)
  sleep 1 # the first (refused) delivery attempts of the last messages
  c1=$(python3 "$bench/proctree.py" cpu "$mx")
  python3 - "$1" "$(queued)" "$c0" "$c1" "$out" <<'PY'
import json, sys
label, queued, c0, c1, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), json.loads(sys.argv[5])
print(json.dumps({"run": label, "queued_after": queued, "msg_per_s": out["msg_per_s"],
                  "cpu_ms_per_msg": round(1000 * (c1 - c0) / max(out["ok"], 1), 3),
                  "p50_message_ms": out["latency_ms"]["message"]["p50"], "failed": out["failed"]}))
PY
}
"$loadgen" run --target "127.0.0.1:$p_mx" --messages 200 >/dev/null
measure empty-queue
log "queueing $BACKLOG messages that cannot be delivered"
"$loadgen" run --target "127.0.0.1:$p_mx" --sessions 20 --messages "$BACKLOG" --size 4K --per-conn 10 \
  --max-secs 1800 >/dev/null
sleep 2
log "$(queued) messages queued"
measure "backlog-$BACKLOG"
