#!/usr/bin/env bash
# mxgate against Postfix on this machine, side by side (issue 7; results in BENCHMARKS.md).
#
#   bench/compare.sh                 # everything, ~10-15 minutes on 2 cores
#   ROUNDS=3 SCENARIOS="a c" bench/compare.sh
#
# Sets up, in a temporary directory, a private Postfix instance (bench/postfix-instance.sh)
# and mxgate with the equivalent configuration (bench/mxgate-config.sh), both on 127.0.0.1
# only and relaying to the same smtp-sink; runs identical loads with bench/loadgen against
# each, alternating which server goes first, over ROUNDS rounds; prints medians and the
# mxgate/Postfix ratio per scenario. CPU per message is utime+stime of each server's whole
# process tree from /proc, over the run until its queue is empty again. Every process it
# starts is stopped on exit. Needs root (Postfix's queue ownership); installs Postfix when
# missing. Not part of the test suite.
#
# Scenarios (SCENARIOS, default "a c c12 d e f"):
#   a   plain SMTP, 20 sessions, MESSAGES x 4 KiB, one message per connection; reports the
#       accept rate (a) and the end-to-end rate until the sink has them all (b)
#   c   the same with STARTTLS (TLS 1.3) on every connection;  c12: with TLS 1.2
#   d   10 messages per connection
#   e   BIG_MESSAGES x 1 MiB, one per connection
#   f   IDLE idle connections held (greeting + EHLO): RSS/PSS of each server's process tree
#       per connection. Postfix needs one smtpd process per connection: it gets as many as
#       fit in the memory available (PF_IDLE, default: estimated from a 200-connection probe).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-2000}
BIG_MESSAGES=${BIG_MESSAGES:-200}
IDLE=${IDLE:-10000}
PF_IDLE=${PF_IDLE:-auto}
SCENARIOS=${SCENARIOS:-a c c12 d e f}
CEILING=${CEILING:-1}
KEEP=${KEEP:-0}

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
results=${RESULTS:-$root/target/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "bench/compare.sh needs root (the Postfix instance)" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
if [ ! -x /usr/sbin/postfix ] || [ ! -x /usr/sbin/smtp-sink ]; then
  log "installing postfix (no system configuration: only the private instance below runs)"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix
fi
for t in openssl python3; do
  command -v $t >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $t
done
log "building mxgate and loadgen (release)"
(cd "$root" && cargo build --release -q -p mxgate -p loadgen)
mxgate=$root/target/release/mxgate
loadgen=$root/target/release/loadgen

# --- private directory, ports, certificate ------------------------------------------------
work=$(mktemp -d /tmp/mxgate-bench.XXXXXX)
chmod 755 "$work"
pids=()
pf_conf=$work/postfix/conf
pf_started=0
cleanup() {
  set +e
  log "cleaning up"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if [ "$pf_started" = 1 ]; then postfix -c "$pf_conf" stop >/dev/null 2>&1; fi
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  if [ -n "${pf_master:-}" ]; then
    for _ in $(seq 100); do kill -0 "$pf_master" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ "$KEEP" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r p_pf p_mx p_sink p_dns < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$work/bench.key" -out "$work/bench.crt" -subj /CN=mx.example.com \
  -addext subjectAltName=DNS:mx.example.com 2>/dev/null
chmod 644 "$work/bench.key" "$work/bench.crt"

# --- the sink, the DNS stub, both servers ---------------------------------------------------
sink_out=$work/sink.out
smtp-sink -c -u nobody -m 1000 "127.0.0.1:$p_sink" 1024 > "$sink_out" 2>&1 &
pids+=($!)
"$loadgen" dns --listen "127.0.0.1:$p_dns" --max-secs 3600 2> "$work/dns.log" &
pids+=($!)

pf_maxproc=$((IDLE + 100))
bash "$bench/postfix-instance.sh" "$work/postfix" "$p_pf" "$p_sink" "$work/bench.crt" "$work/bench.key" "$pf_maxproc" \
  || { tail -5 "$work/postfix/log/maillog" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
postfix -c "$pf_conf" start >/dev/null || { tail -5 "$work/postfix/log/maillog" >&2; exit 1; }
pf_started=1

bash "$bench/mxgate-config.sh" "$work/mxgate" "$p_mx" "$p_sink" "$p_dns" "$work/bench.crt" "$work/bench.key"
(cd "$work/mxgate" && exec "$mxgate" serve --config-dir "$work/mxgate" > "$work/mxgate/stdout.log" 2>&1) &
mx_pid=$!
pids+=($mx_pid)

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}
wait_port "$p_pf"; wait_port "$p_mx"; wait_port "$p_sink"
for _ in $(seq 50); do [ -s "$work/postfix/queue/pid/master.pid" ] && break; sleep 0.1; done
pf_master=$(tr -d ' ' < "$work/postfix/queue/pid/master.pid")
log "postfix master $pf_master on :$p_pf, mxgate $mx_pid on :$p_mx, smtp-sink on :$p_sink"

server_pid() { if [ "$1" = mxgate ]; then echo "$mx_pid"; else echo "$pf_master"; fi; }
server_port() { if [ "$1" = mxgate ]; then echo "$p_mx"; else echo "$p_pf"; fi; }
queue_len() {
  if [ "$1" = mxgate ]; then
    find "$work/mxgate/spool/queue" -name '*.env' 2>/dev/null | wc -l
  else
    find "$work/postfix/queue/"{maildrop,incoming,active,deferred} -type f 2>/dev/null | wc -l
  fi
}
wait_queue_empty() {
  for _ in $(seq 1200); do [ "$(queue_len "$1")" -eq 0 ] && return 0; sleep 0.05; done
  log "WARNING: $1 queue not empty after 60 s"
}

scenario_args() {
  case $1 in
    a) echo "--sessions 20 --messages $MESSAGES --size 4K --per-conn 1" ;;
    c) echo "--sessions 20 --messages $MESSAGES --size 4K --per-conn 1 --tls 1.3" ;;
    c12) echo "--sessions 20 --messages $MESSAGES --size 4K --per-conn 1 --tls 1.2" ;;
    d) echo "--sessions 20 --messages $MESSAGES --size 4K --per-conn 10" ;;
    e) echo "--sessions 20 --messages $BIG_MESSAGES --size 1M --per-conn 1" ;;
  esac
}

# One load run against one server: loadgen JSON plus the server's CPU over the run.
run_load() { # server scenario round
  local server=$1 sc=$2 round=$3 pid cpu0 cpu1 out
  pid=$(server_pid "$server")
  wait_queue_empty "$server"
  cpu0=$(python3 "$bench/proctree.py" cpu "$pid")
  # shellcheck disable=SC2046
  out=$("$loadgen" run --target "127.0.0.1:$(server_port "$server")" $(scenario_args "$sc") \
        --sink-counter "$sink_out" --label "$server/$sc/$round" --max-secs 300 --e2e-timeout 120)
  wait_queue_empty "$server"
  cpu1=$(python3 "$bench/proctree.py" cpu "$pid")
  echo "{\"server\":\"$server\",\"scenario\":\"$sc\",\"round\":$round,\"cpu_s\":$(python3 -c "print(round($cpu1-$cpu0,3))"),\"load\":$out}" \
    >> "$results/runs.jsonl"
  python3 - "$results/runs.jsonl" <<'EOF' >&2
import json, sys
r = json.loads(open(sys.argv[1]).readlines()[-1]); l = r["load"]
print(f"  {r['server']:8} {r['scenario']:4} round {r['round']}: {l['msg_per_s']:8.1f} msg/s accepted, "
      f"{l['e2e_msg_per_s'] or 0:8.1f} msg/s end to end, {1000*r['cpu_s']/max(l['ok'],1):6.2f} ms CPU/msg, "
      f"ok {l['ok']} failed {l['failed']} {l['errors'] or ''}")
EOF
}

# --- loadgen's own ceiling: straight into smtp-sink -----------------------------------------
if [ "$CEILING" = 1 ]; then
  log "loadgen ceiling against smtp-sink"
  for sc in a d e; do
    # shellcheck disable=SC2046
    out=$("$loadgen" run --target "127.0.0.1:$p_sink" $(scenario_args $sc) --sink-counter "$sink_out" --label "sink/$sc")
    echo "{\"server\":\"smtp-sink\",\"scenario\":\"$sc\",\"round\":0,\"cpu_s\":null,\"load\":$out}" >> "$results/runs.jsonl"
  done
fi

# --- warm-up, then the rounds ---------------------------------------------------------------
for s in mxgate postfix; do
  "$loadgen" run --target "127.0.0.1:$(server_port $s)" --messages 200 --sink-counter "$sink_out" >/dev/null
  "$loadgen" run --target "127.0.0.1:$(server_port $s)" --messages 50 --tls 1.3 --sink-counter "$sink_out" >/dev/null
done
loads=()
for sc in $SCENARIOS; do [ "$sc" != f ] && loads+=("$sc"); done
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="mxgate postfix"; else order="postfix mxgate"; fi
  log "round $round/$ROUNDS ($order)"
  for sc in "${loads[@]}"; do
    for s in $order; do run_load "$s" "$sc" "$round"; done
  done
done

# --- (f) idle connections -----------------------------------------------------------------
hold_idle() { # server count -> appends one JSON line
  local server=$1 n=$2 pid m0 m1 ready=$work/idle.ready release=$work/idle.release lg
  pid=$(server_pid "$server")
  rm -f "$ready" "$release"
  sleep 1
  m0=$(python3 "$bench/proctree.py" mem "$pid")
  "$loadgen" idle --target "127.0.0.1:$(server_port "$server")" --connections "$n" --concurrency 100 \
    --ready-file "$ready" --release-file "$release" --hold-secs 300 --setup-secs 400 \
    --label "$server/f" > "$work/idle.out" &
  lg=$!
  pids+=($lg)
  for _ in $(seq 4200); do [ -s "$ready" ] && break; kill -0 $lg 2>/dev/null || break; sleep 0.1; done
  sleep 2
  m1=$(python3 "$bench/proctree.py" mem "$pid")
  touch "$release"
  wait $lg || true
  echo "{\"server\":\"$server\",\"scenario\":\"f\",\"round\":1,\"mem_before\":[${m0// /,}],\"mem_held\":[${m1// /,}],\"load\":$(cat "$ready" 2>/dev/null || echo null)}" \
    >> "$results/runs.jsonl"
  python3 - "$results/runs.jsonl" <<'EOF' >&2
import json, sys
r = json.loads(open(sys.argv[1]).readlines()[-1]); l = r["load"] or {"held": 0}
h = max(l["held"], 1); b, m = r["mem_before"], r["mem_held"]
print(f"  {r['server']:8} f: {l['held']} idle connections held; RSS {(m[0]-b[0])/h:.1f} KiB/conn, "
      f"PSS {(m[1]-b[1])/h:.1f} KiB/conn, {m[2]} processes")
EOF
}
if [[ " $SCENARIOS " == *" f "* ]]; then
  log "(f) $IDLE idle connections to mxgate"
  hold_idle mxgate "$IDLE"
  n=$PF_IDLE
  if [ "$n" = auto ]; then
    # Probe: PSS per smtpd process with 200 connections, then as many as fit in the memory
    # available minus 4 GiB of headroom, at most IDLE.
    hold_idle postfix 200
    n=$(python3 - "$results/runs.jsonl" "$IDLE" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).readlines()[-1])
per = max((r["mem_held"][1] - r["mem_before"][1]) / max(r["load"]["held"], 1), 1)  # KiB
avail = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemAvailable:")))
print(max(200, min(int(sys.argv[2]), int((avail - 4 * 1024 * 1024) / per))))
EOF
)
    log "postfix: about $n connections fit in the memory available"
  fi
  # Idle smtpd processes left by earlier runs would serve the first connections without a
  # new process: a reload ends them, so every held connection is counted from zero.
  postfix -c "$pf_conf" reload >/dev/null 2>&1
  sleep 3
  log "(f) $n idle connections to postfix"
  hold_idle postfix "$n"
fi

python3 "$bench/summarize.py" "$results/runs.jsonl" | tee "$results/summary.md"
log "results in $results"
