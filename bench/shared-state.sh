#!/usr/bin/env bash
# bench/shared-state.sh MXGATE LOADGEN: the accept rate with the per-client counters shared in
# Redis (issue 17, docs/shared-state.md) against counted on each node, on one node and on three,
# all behind one HAProxy (round-robin, PROXY v2) so the four set-ups differ only in what is
# measured. Every node relays to one smtp-sink; one private redis-server on 127.0.0.1.
#
# The policy limits every client (max_recipients_per_hour and max_concurrent_connections_per_ip,
# high enough never to refuse the load, which all comes from 127.0.0.1), so with shared_state
# each connection runs the lease script and its release, and each RCPT the hourly script:
# the per-message cost of sharing. Without shared_state the same limits are counted locally.
#
#   ROUNDS=3 MESSAGES=2000 bench/shared-state.sh target/release/mxgate bench/loadgen/target/release/loadgen
# Output: one JSON line per run on stdout, a table at the end; RESULTS=DIR keeps the runs.
set -euo pipefail
mx=$(realpath "$1") lg=$(realpath "$2")
rounds=${ROUNDS:-3} n=${MESSAGES:-2000} sessions=${SESSIONS:-20}
bench=$(cd "$(dirname "$0")" && pwd)
for tool in redis-server haproxy smtp-sink; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "needs $tool" >&2; exit 2; }
done
PATH=$PATH:/usr/sbin
w=$(mktemp -d)
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
cleanup() { stop_all; rm -rf "$w"; }
trap cleanup EXIT
ports() { python3 -c '
import socket, sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1",0))
print(*[x.getsockname()[1] for x in s])' "$1"; }
rcli() { python3 - "$predis" "$@" <<'PY'
import socket, sys
port, args = int(sys.argv[1]), sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port))
s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
buf = b""
while True:
    buf += s.recv(65536)
    if buf.startswith(b"$"):
        head, _, rest = buf.partition(b"\r\n")
        if len(rest) >= int(head[1:]) + 2: print(rest[: int(head[1:])].decode()); break
    elif buf.endswith(b"\r\n"): print(buf.decode().strip()); break
PY
}
calls() { rcli INFO commandstats | python3 -c '
import re, sys
t = sys.stdin.read()
print(sum(int(m) for m in re.findall(r"cmdstat_(?:evalsha|eval|zrem):calls=(\d+)", t)))'; }

read -r predis psink pdns pfront <<<"$(ports 4)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$w/bench.key" -out "$w/bench.crt" -subj /CN=mx.example.com \
  -addext subjectAltName=DNS:mx.example.com 2>/dev/null
redis-server --port "$predis" --bind 127.0.0.1 --save "" --appendonly no --dir "$w" > "$w/redis.log" 2>&1 &
redis_pid=$!
smtp-sink -c -u nobody -m 1000 "127.0.0.1:$psink" 1024 > "$w/sink.out" 2>&1 &
sink_pid=$!
"$lg" dns --listen "127.0.0.1:$pdns" --max-secs 36000 2> "$w/dns.log" &
dns_pid=$!
trap 'kill $redis_pid $sink_pid $dns_pid 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 100); do [ "$(rcli PING 2>/dev/null)" = "+PONG" ] && break; sleep 0.1; done

# One node's configuration: the benchmark's own (bench/mxgate-config.sh), behind the PROXY
# protocol, with finite per-client limits and, for "on", the shared store.
node_config() { # DIR PORT SHARED(on|off)
  local dir=$1 port=$2 shared=$3
  bash "$bench/mxgate-config.sh" "$dir" "$port" "$psink" "127.0.0.1:$pdns" "$w/bench.crt" "$w/bench.key"
  sed -i 's/^    max_concurrent_connections_per_ip: unlimited/    max_concurrent_connections_per_ip: 10000/;
          s/^    max_recipients_per_hour: unlimited/    max_recipients_per_hour: 100000000/' "$dir/policies/mail_flow.yaml"
  printf 'proxy_protocol:\n  trusted: [127.0.0.1/32]\n  timeout: 5s\n' >> "$dir/listeners/inbound.yaml"
  if [ "$shared" = on ]; then
    printf 'shared_state:\n  url: redis://127.0.0.1:%s/0\n  key_prefix: "bench:"\n  timeout: 50ms\n' "$predis" >> "$dir/mxgate.yaml"
  fi
  grep -q 'max_recipients_per_hour: 100000000' "$dir/policies/mail_flow.yaml"
}

qempty() { # DIRS...
  for _ in $(seq 2400); do
    local left=0 d
    for d in "$@"; do left=$((left + $(find "$d/spool/queue" -type f | wc -l))); done
    [ "$left" -eq 0 ] && return 0; sleep 0.05
  done
  echo "queue not empty" >&2
}

run_one() { # ROUND NODES SHARED
  local round=$1 nodes=$2 shared=$3 dirs=() backends="" i
  local nports; read -r -a nports <<<"$(ports "$nodes")"
  rm -rf "$w/nodes"; mkdir -p "$w/nodes"
  for ((i = 0; i < nodes; i++)); do
    node_config "$w/nodes/$i" "${nports[$i]}" "$shared"
    dirs+=("$w/nodes/$i")
    (cd "$w/nodes/$i" && exec "$mx" serve --config-dir "$w/nodes/$i" > "$w/nodes/$i/out.log" 2>&1) &
    pids+=($!)
    backends+="  server s$i 127.0.0.1:${nports[$i]} send-proxy-v2"$'\n'
  done
  printf 'global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend f\n  bind 127.0.0.1:%s\n  default_backend b\nbackend b\n  balance roundrobin\n%s' \
    "$pfront" "$backends" > "$w/haproxy.cfg"
  for ((i = 0; i < nodes; i++)); do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/${nports[$i]}") 2>/dev/null && break; sleep 0.1; done
  done
  haproxy -db -f "$w/haproxy.cfg" > "$w/haproxy.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$pfront))" 2>/dev/null || break; sleep 0.05; done
  rcli FLUSHALL > /dev/null; rcli CONFIG RESETSTAT > /dev/null
  "$lg" run --target "127.0.0.1:$pfront" --sessions "$sessions" --messages 200 --size 4K --per-conn 1 --label warm > /dev/null
  qempty "${dirs[@]}"
  rcli CONFIG RESETSTAT > /dev/null
  local rcpu0; rcpu0=$(awk '{print $14+$15}' "/proc/$redis_pid/stat")
  local cpu0; cpu0=$(for d in "${dirs[@]}"; do pgrep -f "serve --config-dir $d\$"; done | xargs -I{} awk '{print $14+$15}' /proc/{}/stat | paste -sd+ | bc)
  local out; out=$("$lg" run --target "127.0.0.1:$pfront" --sessions "$sessions" --messages "$n" --size 4K --per-conn 1 \
    --sink-counter "$w/sink.out" --label "r$round-$nodes-$shared" --max-secs 300 --e2e-timeout 120)
  qempty "${dirs[@]}"
  local cpu1; cpu1=$(for d in "${dirs[@]}"; do pgrep -f "serve --config-dir $d\$"; done | xargs -I{} awk '{print $14+$15}' /proc/{}/stat | paste -sd+ | bc)
  local rcpu1; rcpu1=$(awk '{print $14+$15}' "/proc/$redis_pid/stat")
  local store_calls; store_calls=$(calls)
  local fallbacks=0; for d in "${dirs[@]}"; do
    fallbacks=$((fallbacks + $(grep -c 'shared state: .* unavailable' "$d/log/mail.log" || true)))
  done
  stop_all
  python3 - "$out" "$round" "$nodes" "$shared" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$n" "$store_calls" "$fallbacks" "$((rcpu1 - rcpu0))" <<'PY'
import json, sys
load = json.loads(sys.argv[1])
ticks, hz, n = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
print(json.dumps({"round": int(sys.argv[2]), "nodes": int(sys.argv[3]), "shared": sys.argv[4],
                  "ok": load.get("ok"), "failed": load.get("failed"), "sink": load.get("sink_received"),
                  "accepted_per_s": load.get("msg_per_s"),
                  "e2e_per_s": load.get("e2e_msg_per_s"),
                  "cpu_ms_per_msg": round(ticks * 1000 / hz / n, 3),
                  "store_calls_per_msg": round(int(sys.argv[8]) / n, 2),
                  "redis_cpu_ms_per_msg": round(int(sys.argv[10]) * 1000 / hz / n, 3),
                  "store_down_said": int(sys.argv[9]), "error_samples": load.get("error_samples", [])[:2]}))
PY
}

: > "$w/runs.jsonl"
for ((r = 1; r <= rounds; r++)); do
  for nodes in 1 3; do
    for shared in off on; do
      run_one "$r" "$nodes" "$shared" | tee -a "$w/runs.jsonl"
    done
  done
done
[ -z "${RESULTS:-}" ] || { mkdir -p "$RESULTS"; cp "$w/runs.jsonl" "$RESULTS/"; }
python3 - "$w/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print("\n| nodes | shared counters | accepted msg/s (median; rounds) | on/off (median of rounds) | mxgate CPU ms/msg | redis-server CPU ms/msg | store calls/msg | all delivered |")
print("|---:|---|---|---:|---:|---:|---:|---|")
for nodes in (1, 3):
    for shared in ("off", "on"):
        rs = [r for r in runs if r["nodes"] == nodes and r["shared"] == shared]
        rates = [r["accepted_per_s"] for r in rs]
        ratio = ""
        if shared == "on":
            offs = {r["round"]: r["accepted_per_s"] for r in runs if r["nodes"] == nodes and r["shared"] == "off"}
            ratio = "%.2f" % statistics.median(r["accepted_per_s"] / offs[r["round"]] for r in rs)
        ok = all(r["failed"] == 0 and r["sink"] == r["ok"] for r in rs)
        print("| %d | %s | %s (%s) | %s | %.2f | %.3f | %.2f | %s |" % (
            nodes, shared, f"{statistics.median(rates):,.0f}", ", ".join(f"{x:,.0f}" for x in rates), ratio,
            statistics.median(r["cpu_ms_per_msg"] for r in rs), statistics.median(r["redis_cpu_ms_per_msg"] for r in rs),
            statistics.median(r["store_calls_per_msg"] for r in rs),
            "yes" if ok else "NO"))
PY
