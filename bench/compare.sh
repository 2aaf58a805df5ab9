#!/usr/bin/env bash
# mxgate against Postfix and OpenSMTPD on this machine, side by side, and against the
# machine's own limit (issues 7 and 16; results in BENCHMARKS.md).
#
#   bench/compare.sh                 # everything, ~35-45 minutes on 2 cores (OpenSMTPD, durable, is slow)
#   ROUNDS=3 SCENARIOS="a c" bench/compare.sh
#   ROUNDS=1 MESSAGES=300 BIG_MESSAGES=20 IDLE=300 bench/compare.sh   # a quick check
#
# Sets up, in a temporary directory, a private Postfix instance (bench/postfix-instance.sh),
# a private OpenSMTPD instance (bench/opensmtpd-instance.sh) and mxgate with the equivalent
# configuration (bench/mxgate-config.sh), all on 127.0.0.1 only and relaying to the same
# smtp-sink; runs identical loads with bench/loadgen against each, rotating which server goes
# first, over ROUNDS rounds; prints per-round ratios and, at the end, medians
# (bench/summarize.py). CPU per message is utime+stime of each server's whole process tree
# from /proc, over the run until its queue is empty again; mxgate's context switches likewise
# (every thread; the peers' processes come and go, taking their counts with them: perf below). Every run is checked: no failed message, and the sink received every
# accepted one; the script exits 1 when a check failed. Every process it starts is stopped
# on exit. Needs root (Postfix's queue ownership, OpenSMTPD's privilege separation and mount
# namespace). Not part of the test suite.
#
# Each server serves two certificates: an ECDSA P-256 one on its main port and an RSA-2048
# one on a second port (same instance, queue and processes).
#
# Scenarios (SCENARIOS, default "a c crsa cr c12 d e f"):
#   a     plain SMTP, 20 sessions, MESSAGES x 4 KiB, one message per connection; reports the
#         accept rate (a) and the end-to-end rate until the sink has them all (b)
#   c     the same with STARTTLS (TLS 1.3) on every connection, ECDSA P-256 certificate,
#         full handshake every time
#   crsa  the same with the RSA-2048 certificate
#   cr    the same as c with a resuming client (loadgen --resume: rustls's session cache,
#         TLS 1.3 tickets when the server sends them; the report counts resumed handshakes)
#   c12   the same as c with TLS 1.2
#   d     10 messages per connection
#   e     BIG_MESSAGES x 1 MiB, one per connection
#   f     IDLE idle connections held (greeting + EHLO): RSS/PSS of each server's process tree
#         per connection. Postfix needs one smtpd process per connection: it gets as many as
#         fit in the memory available (PF_IDLE, default: estimated from a 200-connection probe).
#
# The machine's limit, measured in every round beside the servers (LIMITS=1):
#   sink   loadgen straight into smtp-sink with the scenario's load (no gateway; smtp-sink
#          has no TLS, so for c* this is the plain-SMTP limit: an upper bound)
#   spool  `loadgen spool-ceiling`: write + fdatasync + rename + group-commit directory fsync
#          of one file per message, the scenario's size, 20 at a time, on the file system of
#          the servers' queues
#   The limit of a scenario is the lower of the two; each server's rate is printed as a
#   fraction of it. The spool ceiling one commit at a time (concurrency 1) is recorded too:
#   the ceiling of a queue that commits serially, as OpenSMTPD's single queue process does.
#
# Context switches and syscalls per message (PERF=auto|1|0): after the rounds, one more run
# per load scenario and server under `perf stat -e context-switches,raw_syscalls:sys_enter`
# attached to the server's process tree (a separate pass: tracepoints cost the traced server
# CPU, so these runs are not in the medians). Without perf, the /proc context-switch counts of
# the rounds are all there is.
#
# The peers:
# - Postfix: Debian's, installed when missing (no system configuration, only the private
#   instance runs). It fsyncs each queue file before the 250.
# - OpenSMTPD: Debian's 6.8.0p2. Its package conflicts with Postfix's (both provide
#   mail-transport-agent: installing one removes the other), so it is not installed but
#   extracted (apt-get download + dpkg-deb -x) into OPENSMTPD_ROOT (default
#   target/opensmtpd); OPENSMTPD=/path/to/smtpd uses another build. No system instance is
#   ever started: the package's service is not installed, and the instance runs in its own
#   mount namespace with a private queue and control socket. Durability: OpenSMTPD 6.8 does
#   not fsync its queue before the 250 (bench/opensmtpd-instance.sh says where); with
#   OPENSMTPD_DURABLE=1 (the default) an LD_PRELOAD shim (bench/opensmtpd-shim.c) makes
#   its commit durable like the others' (fdatasync of the message and envelope files, fsync
#   of the directories before and after the rename that commits); OPENSMTPD_DURABLE=0 runs it
#   as shipped, not durable. The same shim raises its listen backlog, compiled in as 5, to
#   OPENSMTPD_BACKLOG (default 1024 like mxgate's; Postfix's is 400 here): with 5, clients of a
#   20-session load wait up to a minute for a greeting (the accept queue overflows and the
#   handshake's last ACK is dropped). Debian 12's build cannot complete a TLS handshake with OpenSSL 3
#   (OpenSMTPD issues #1171, #1239: its privilege-separated key signing fails, with RSA and
#   ECDSA keys alike): each server's TLS is probed at start and the scenarios it cannot serve
#   are recorded as unsupported.
# - Haraka (npm) is not included. Its queue semantics can be made close to comparable, but
#   only by using it as an outbound relay: inbound mail is handed to a queue plugin, and
#   the usual one for a gateway, queue/smtp_forward, forwards the message to the next hop
#   *before* the 250 (no local queue at all: the 250 is the sink's, and a sink that
#   discards makes it look faster than any store-and-forward server). Treating every client
#   as relaying (the relay plugin's ACL) sends mail to Haraka's outbound queue instead,
#   which writes one file per message with fsync and renames it before the 250 -- but
#   without a directory fsync (the rename is not durable at the 250), and routing the
#   outbound queue to the sink needs the relay plugin's force_routing. Durability would
#   still differ from the others (no directory fsync), and setting it up means an npm
#   install of Haraka and its dependency tree: left out for now, see BENCHMARKS.md.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-2000}
BIG_MESSAGES=${BIG_MESSAGES:-200}
IDLE=${IDLE:-10000}
PF_IDLE=${PF_IDLE:-auto}
SCENARIOS=${SCENARIOS:-a c crsa cr c12 d e f}
SERVERS=${SERVERS:-mxgate postfix opensmtpd}
LIMITS=${LIMITS:-1}
PERF=${PERF:-auto}
OPENSMTPD_DURABLE=${OPENSMTPD_DURABLE:-1}
OPENSMTPD_BACKLOG=${OPENSMTPD_BACKLOG:-1024}
KEEP=${KEEP:-0}

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
results=${RESULTS:-$root/target/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
runs=$results/runs.jsonl
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
has_server() { [[ " $SERVERS " == *" $1 "* ]]; }

[ "$(id -u)" -eq 0 ] || { echo "bench/compare.sh needs root (the Postfix instance)" >&2; exit 1; }
[[ " $SERVERS " == *" mxgate "* ]] || { echo "SERVERS must include mxgate" >&2; exit 1; }

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
smtpd_bin=""
if has_server opensmtpd; then
  osd_root=${OPENSMTPD_ROOT:-$root/target/opensmtpd}
  smtpd_bin=${OPENSMTPD:-$osd_root/usr/sbin/smtpd}
  if [ ! -x "$smtpd_bin" ]; then
    log "extracting Debian's opensmtpd into $osd_root (not installed: it would remove Postfix)"
    dl=$(mktemp -d)
    chmod 777 "$dl"
    (cd "$dl" && apt-get download -q opensmtpd >/dev/null 2>&1) ||
      { apt-get update -qq && (cd "$dl" && apt-get download -q opensmtpd >/dev/null); }
    # Its libraries, without the package itself (their names as Debian 12 has them).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libevent-2.1-7 libdb5.3 libssl3 libpam0g zlib1g libcrypt1 >/dev/null
    mkdir -p "$osd_root"
    dpkg-deb -x "$dl"/opensmtpd_*.deb "$osd_root"
    rm -rf "$dl"
  fi
  if ldd "$smtpd_bin" | grep -q 'not found'; then
    ldd "$smtpd_bin" | grep 'not found' >&2
    exit 1
  fi
  command -v cc >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev
fi
if [ "$PERF" = auto ]; then
  if command -v perf >/dev/null && perf stat -e context-switches,raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    PERF=1
  else
    PERF=0
  fi
fi
log "building mxgate and loadgen (release)"
(cd "$root" && cargo build --release -q -p mxgate -p loadgen)
mxgate=$root/target/release/mxgate
loadgen=$root/target/release/loadgen

# --- private directory, ports, certificates -------------------------------------------------
work=$(mktemp -d /tmp/mxgate-bench.XXXXXX)
chmod 755 "$work"
pids=()
pf_conf=$work/postfix/conf
pf_started=0
osd_pid=""
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

read -r p_pf p_mx p_osd p_pf_rsa p_mx_rsa p_osd_rsa p_sink < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
# The DNS stub listens on port 53 (OpenSMTPD's resolver knows no other port) of a random
# loopback address, so it collides with nothing else on this machine.
dns_addr=$(python3 -c '
import random, socket
for _ in range(50):
    a = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.53"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((a, 53)); print(a); break
    except OSError:
        pass
    finally:
        s.close()')
[ -n "$dns_addr" ] || { echo "no loopback address with a free port 53" >&2; exit 1; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$work/bench.key" -out "$work/bench.crt" -subj /CN=mx.example.com \
  -addext subjectAltName=DNS:mx.example.com 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
  -keyout "$work/rsa.key" -out "$work/rsa.crt" -subj /CN=mx.example.com \
  -addext subjectAltName=DNS:mx.example.com 2>/dev/null
chmod 644 "$work/bench.key" "$work/bench.crt" "$work/rsa.key" "$work/rsa.crt"

# --- the sink, the DNS stub, the servers ----------------------------------------------------
sink_out=$work/sink.out
smtp-sink -c -u nobody -m 1000 "127.0.0.1:$p_sink" 1024 > "$sink_out" 2>&1 &
pids+=($!)
"$loadgen" dns --listen "$dns_addr:53" --max-secs 7200 2> "$work/dns.log" &
pids+=($!)
ulimit -n "$(ulimit -Hn)"

if has_server postfix; then
  pf_maxproc=$((IDLE + 100))
  bash "$bench/postfix-instance.sh" "$work/postfix" "$p_pf" "$p_sink" "$work/bench.crt" "$work/bench.key" \
    "$pf_maxproc" "$p_pf_rsa" "$work/rsa.crt" "$work/rsa.key" \
    || { tail -5 "$work/postfix/log/maillog" >&2; exit 1; }
  postfix -c "$pf_conf" start >/dev/null || { tail -5 "$work/postfix/log/maillog" >&2; exit 1; }
  pf_started=1
fi

if has_server opensmtpd; then
  DURABLE=$OPENSMTPD_DURABLE BACKLOG=$OPENSMTPD_BACKLOG bash "$bench/opensmtpd-instance.sh" "$work/opensmtpd" "$p_osd" "$p_sink" \
    "$work/bench.crt" "$work/bench.key" "$dns_addr" "$smtpd_bin" "$p_osd_rsa" "$work/rsa.crt" "$work/rsa.key" >/dev/null
  "$work/opensmtpd/run.sh" > "$work/opensmtpd/log/smtpd.log" 2>&1 &
  osd_pid=$!
  pids+=($osd_pid)
fi

bash "$bench/mxgate-config.sh" "$work/mxgate" "$p_mx" "$p_sink" "$dns_addr:53" "$work/bench.crt" "$work/bench.key" \
  "$p_mx_rsa" "$work/rsa.crt" "$work/rsa.key"
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
wait_port "$p_mx"; wait_port "$p_mx_rsa"; wait_port "$p_sink"
if has_server postfix; then
  wait_port "$p_pf"; wait_port "$p_pf_rsa"
  for _ in $(seq 50); do [ -s "$work/postfix/queue/pid/master.pid" ] && break; sleep 0.1; done
  pf_master=$(tr -d ' ' < "$work/postfix/queue/pid/master.pid")
fi
if has_server opensmtpd; then
  wait_port "$p_osd" || { tail -5 "$work/opensmtpd/log/smtpd.log" >&2; exit 1; }
  wait_port "$p_osd_rsa"
fi
log "mxgate $mx_pid on :$p_mx/:$p_mx_rsa, postfix ${pf_master:-off} on :$p_pf/:$p_pf_rsa," \
    "opensmtpd ${osd_pid:-off} on :$p_osd/:$p_osd_rsa (durable=$OPENSMTPD_DURABLE, backlog=$OPENSMTPD_BACKLOG), smtp-sink on :$p_sink," \
    "DNS stub on $dns_addr:53, perf=$PERF"

server_pid() {
  case $1 in mxgate) echo "$mx_pid" ;; postfix) echo "$pf_master" ;; opensmtpd) echo "$osd_pid" ;; esac
}
server_port() { # server scenario
  local rsa=0
  [ "${2:-}" = crsa ] && rsa=1
  case $1/$rsa in
    mxgate/0) echo "$p_mx" ;; mxgate/1) echo "$p_mx_rsa" ;;
    postfix/0) echo "$p_pf" ;; postfix/1) echo "$p_pf_rsa" ;;
    opensmtpd/0) echo "$p_osd" ;; opensmtpd/1) echo "$p_osd_rsa" ;;
  esac
}
queue_len() {
  case $1 in
    # Every file in the spool's queue/ is a queued message's (any format).
    mxgate) find "$work/mxgate/spool/queue" -type f 2>/dev/null | wc -l ;;
    postfix) find "$work/postfix/queue/"{maildrop,incoming,active,deferred} -type f 2>/dev/null | wc -l ;;
    opensmtpd) find "$work/opensmtpd/spool/"{incoming,queue} -type f 2>/dev/null | wc -l ;;
  esac
}
wait_queue_empty() {
  for _ in $(seq 2400); do [ "$(queue_len "$1")" -eq 0 ] && return 0; sleep 0.05; done
  log "WARNING: $1 queue not empty after 120 s"
}

scenario_args() {
  local base="--sessions 20 --messages $MESSAGES --size 4K --per-conn 1"
  case $1 in
    a) echo "$base" ;;
    c | crsa) echo "$base --tls 1.3" ;;
    cr) echo "$base --tls 1.3 --resume" ;;
    c12) echo "$base --tls 1.2" ;;
    d) echo "--sessions 20 --messages $MESSAGES --size 4K --per-conn 10" ;;
    e) echo "--sessions 20 --messages $BIG_MESSAGES --size 1M --per-conn 1" ;;
  esac
}
# The same load without TLS (smtp-sink has none): the sink limit of a scenario.
plain_args() { scenario_args "$1" | sed -e 's/--tls [0-9.]*//' -e 's/--resume//'; }
scenario_messages() { if [ "$1" = e ]; then echo "$BIG_MESSAGES"; else echo "$MESSAGES"; fi; }
scenario_size() { if [ "$1" = e ]; then echo 1M; else echo 4K; fi; }
is_tls() { case $1 in c | crsa | cr | c12) return 0 ;; *) return 1 ;; esac; }

failures=0
# Checks a loadgen report: every message accepted, none failed, the sink got them all.
check_load() { # json expected_messages -> prints "ok" or what is wrong
  python3 - "$1" "$2" <<'EOF'
import json, sys
l = json.loads(sys.argv[1]); want = int(sys.argv[2]); bad = []
if l["ok"] != want: bad.append(f"accepted {l['ok']} of {want}")
if l["failed"]: bad.append(f"{l['failed']} failed")
if l.get("sink_received") is not None and l["sink_received"] != l["ok"]:
    bad.append(f"sink received {l['sink_received']} of {l['ok']}")
if l.get("errors"): bad.append(f"errors {l['errors']}")
print("ok" if not bad else "; ".join(bad))
EOF
}

# --- TLS probe: which server can serve which TLS scenario -----------------------------------
declare -A unsupported=()
for s in $SERVERS; do
  for sc in c crsa c12; do
    out=$("$loadgen" run --target "127.0.0.1:$(server_port "$s" "$sc")" --messages 1 --sessions 1 \
          $(scenario_args "$sc" | sed 's/--messages [0-9]*//; s/--sessions [0-9]*//') \
          --sink-counter "$sink_out" --e2e-timeout 30 --label "probe/$s/$sc" 2>/dev/null || echo '{}')
    if [ "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1] or "{}"); print(d.get("ok", 0))' "$out")" != 1 ]; then
      why=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1] or "{}"); print((d.get("error_samples") or ["no report"])[0])' "$out")
      unsupported[$s/$sc]=$why
      if [ "$sc" = c ]; then unsupported[$s/cr]=$why; fi
      log "$s cannot serve $sc: $why"
    fi
  done
done

# One load run against one server: loadgen JSON, the server's CPU and context switches
# over the run, and the check.
run_load() { # server scenario round
  local server=$1 sc=$2 round=$3 pid cpu0 cpu1 cs0 cs1 out check
  if [ -n "${unsupported[$server/$sc]:-}" ]; then
    if [ "$round" = 1 ]; then
      python3 -c 'import json,sys; print(json.dumps({"server": sys.argv[1], "scenario": sys.argv[2], "round": 1, "unsupported": sys.argv[3]}))' \
        "$server" "$sc" "${unsupported[$server/$sc]}" >> "$runs"
    fi
    return
  fi
  pid=$(server_pid "$server")
  wait_queue_empty "$server"
  cpu0=$(python3 "$bench/proctree.py" cpu "$pid")
  cs0=$(python3 "$bench/proctree.py" ctxt "$pid")
  # shellcheck disable=SC2046
  out=$("$loadgen" run --target "127.0.0.1:$(server_port "$server" "$sc")" $(scenario_args "$sc") \
        --sink-counter "$sink_out" --label "$server/$sc/$round" --max-secs 300 --e2e-timeout 120)
  wait_queue_empty "$server"
  cpu1=$(python3 "$bench/proctree.py" cpu "$pid")
  cs1=$(python3 "$bench/proctree.py" ctxt "$pid")
  check=$(check_load "$out" "$(scenario_messages "$sc")")
  [ "$check" = ok ] || { failures=$((failures + 1)); log "CHECK FAILED: $server $sc round $round: $check"; }
  python3 -c 'import json,sys; print(json.dumps({"server": sys.argv[1], "scenario": sys.argv[2], "round": int(sys.argv[3]),
    "cpu_s": round(float(sys.argv[4]), 3), "ctxt": int(sys.argv[5]), "check": sys.argv[6], "load": json.loads(sys.argv[7])}))' \
    "$server" "$sc" "$round" "$(python3 -c "print($cpu1-$cpu0)")" "$((cs1 - cs0))" "$check" "$out" >> "$runs"
  python3 - "$runs" <<'EOF' >&2
import json, sys
r = json.loads(open(sys.argv[1]).readlines()[-1]); l = r["load"]; ok = max(l["ok"], 1)
res = f", {l['tls_resumed']}/{l['tls_handshakes']} resumed" if l.get("resume") else ""
print(f"  {r['server']:9} {r['scenario']:4} round {r['round']}: {l['msg_per_s']:8.1f} msg/s accepted, "
      f"{l['e2e_msg_per_s'] or 0:8.1f} end to end, {1000*r['cpu_s']/ok:6.2f} ms CPU/msg, "
      + (f"{r['ctxt']/ok:6.1f} ctx sw/msg, " if r["server"] == "mxgate" else "")
      + f"check {r['check']}{res}")
EOF
}

# The machine's limit for one scenario, this round: straight into the sink, and the spool.
run_limits() { # scenario round
  local sc=$1 round=$2 out check
  # shellcheck disable=SC2046
  out=$("$loadgen" run --target "127.0.0.1:$p_sink" $(plain_args "$sc") --sink-counter "$sink_out" \
        --label "sink/$sc/$round" --e2e-timeout 60)
  check=$(check_load "$out" "$(scenario_messages "$sc")")
  [ "$check" = ok ] || { failures=$((failures + 1)); log "CHECK FAILED: sink $sc round $round: $check"; }
  python3 -c 'import json,sys; print(json.dumps({"server": "limit-sink", "scenario": sys.argv[1], "round": int(sys.argv[2]),
    "check": sys.argv[3], "load": json.loads(sys.argv[4])}))' "$sc" "$round" "$check" "$out" >> "$runs"
  out=$("$loadgen" spool-ceiling --dir "$work/spool-ceiling" --concurrency 20 \
        --files "$(scenario_messages "$sc")" --size "$(scenario_size "$sc")" --label "spool/$sc/$round")
  python3 -c 'import json,sys; print(json.dumps({"server": "limit-spool", "scenario": sys.argv[1], "round": int(sys.argv[2]),
    "spool": json.loads(sys.argv[3])}))' "$sc" "$round" "$out" >> "$runs"
  # The same one commit at a time: the ceiling of a queue that commits serially (OpenSMTPD's
  # single queue process). Not part of the limit.
  out=$("$loadgen" spool-ceiling --dir "$work/spool-ceiling" --concurrency 1 \
        --files "$(( $(scenario_messages "$sc") / 4 + 1 ))" --size "$(scenario_size "$sc")" --label "spool1/$sc/$round")
  python3 -c 'import json,sys; print(json.dumps({"server": "limit-spool-serial", "scenario": sys.argv[1], "round": int(sys.argv[2]),
    "spool": json.loads(sys.argv[3])}))' "$sc" "$round" "$out" >> "$runs"
  python3 - "$runs" <<'EOF' >&2
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]).readlines()[-3:]]
s, p, p1 = lines[0]["load"], lines[1]["spool"], lines[2]["spool"]
print(f"  limit     {lines[0]['scenario']:4} round {lines[0]['round']}: sink {s['msg_per_s']:8.1f} msg/s, "
      f"spool {p['files_per_s']:8.1f} files/s ({p['dir_fsyncs']} directory fsyncs for {p['files']} files), "
      f"one commit at a time {p1['files_per_s']:.1f} files/s")
EOF
}

# The round's ratios for one scenario, as soon as its runs are done.
print_round() { # scenario round
  python3 - "$runs" "$1" "$2" <<'EOF' >&2
import json, sys
sc, rnd = sys.argv[2], int(sys.argv[3])
rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rs = [r for r in rs if r.get("scenario") == sc and r.get("round") == rnd]
acc = {r["server"]: r["load"]["msg_per_s"] for r in rs if "load" in r and r["server"] != "limit-sink"}
sink = next((r["load"]["msg_per_s"] for r in rs if r["server"] == "limit-sink"), None)
spool = next((r["spool"]["files_per_s"] for r in rs if r["server"] == "limit-spool"), None)
limit = min(x for x in (sink, spool) if x) if (sink or spool) else None
mx = acc.get("mxgate")
parts = []
for peer in ("postfix", "opensmtpd"):
    if mx and acc.get(peer):
        parts.append(f"mxgate/{peer} {mx / acc[peer]:.2f}x")
if limit:
    parts += [f"{s}/limit {v / limit:.2f}" for s, v in acc.items()]
print(f"  round {rnd} {sc}: " + ", ".join(parts))
EOF
}

# --- warm-up, then the rounds ---------------------------------------------------------------
for s in $SERVERS; do
  "$loadgen" run --target "127.0.0.1:$(server_port "$s")" --messages 200 --sink-counter "$sink_out" >/dev/null
  if [ -z "${unsupported[$s/c]:-}" ]; then
    "$loadgen" run --target "127.0.0.1:$(server_port "$s")" --messages 50 --tls 1.3 --sink-counter "$sink_out" >/dev/null
  fi
done
loads=()
for sc in $SCENARIOS; do [ "$sc" != f ] && loads+=("$sc"); done
read -r -a servers <<< "$SERVERS"
for round in $(seq "$ROUNDS"); do
  # Rotate which server goes first.
  k=$(( (round - 1) % ${#servers[@]} ))
  order="${servers[*]:$k} ${servers[*]:0:$k}"
  log "round $round/$ROUNDS ($order)"
  for sc in "${loads[@]}"; do
    [ "$LIMITS" = 1 ] && run_limits "$sc" "$round"
    for s in $order; do run_load "$s" "$sc" "$round"; done
    print_round "$sc" "$round"
  done
done

# --- context switches and syscalls per message (perf, a separate pass) ---------------------
if [ "$PERF" = 1 ]; then
  log "perf pass: context switches and syscalls per message"
  for sc in "${loads[@]}"; do
    for s in $SERVERS; do
      [ -n "${unsupported[$s/$sc]:-}" ] && continue
      wait_queue_empty "$s"
      pf_out=$work/perf.$s.$sc
      perf stat -x, -e context-switches,raw_syscalls:sys_enter \
        -p "$(python3 "$bench/proctree.py" pids "$(server_pid "$s")")" -o "$pf_out" &
      perf_pid=$!
      sleep 0.5
      # shellcheck disable=SC2046
      out=$("$loadgen" run --target "127.0.0.1:$(server_port "$s" "$sc")" $(scenario_args "$sc") \
            --sink-counter "$sink_out" --label "perf/$s/$sc" --max-secs 300 --e2e-timeout 120)
      wait_queue_empty "$s"
      kill -INT "$perf_pid"; wait "$perf_pid" || true
      python3 - "$pf_out" "$s" "$sc" "$out" >> "$runs" <<'EOF'
import json, sys
counts = {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        counts[f[2]] = int(float(f[0]))
print(json.dumps({"server": sys.argv[2], "scenario": sys.argv[3], "round": "perf",
                  "perf": {"context_switches": counts.get("context-switches"),
                           "syscalls": counts.get("raw_syscalls:sys_enter")},
                  "load": json.loads(sys.argv[4])}))
EOF
      python3 - "$runs" <<'EOF' >&2
import json, sys
r = json.loads(open(sys.argv[1]).readlines()[-1]); ok = max(r["load"]["ok"], 1); p = r["perf"]
f = lambda x: "n/a" if x is None else f"{x / ok:.1f}"
print(f"  perf {r['server']:9} {r['scenario']:4}: {f(p['context_switches'])} context switches, {f(p['syscalls'])} syscalls per message")
EOF
    done
  done
fi

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
    >> "$runs"
  python3 - "$runs" <<'EOF' >&2
import json, sys
r = json.loads(open(sys.argv[1]).readlines()[-1]); l = r["load"] or {"held": 0}
h = max(l["held"], 1); b, m = r["mem_before"], r["mem_held"]
print(f"  {r['server']:9} f: {l['held']} idle connections held; RSS {(m[0]-b[0])/h:.1f} KiB/conn, "
      f"PSS {(m[1]-b[1])/h:.1f} KiB/conn, {m[2]} processes")
EOF
}
if [[ " $SCENARIOS " == *" f "* ]]; then
  log "(f) $IDLE idle connections to mxgate"
  hold_idle mxgate "$IDLE"
  if has_server opensmtpd; then
    log "(f) $IDLE idle connections to opensmtpd"
    hold_idle opensmtpd "$IDLE"
  fi
  if has_server postfix; then
    n=$PF_IDLE
    if [ "$n" = auto ]; then
      # Probe: PSS per smtpd process with 200 connections, then as many as fit in the memory
      # available minus 4 GiB of headroom, at most IDLE.
      hold_idle postfix 200
      n=$(python3 - "$runs" "$IDLE" <<'EOF'
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
fi

python3 "$bench/summarize.py" "$runs" | tee "$results/summary.md"
log "results in $results"
if [ "$failures" -gt 0 ]; then
  log "$failures CHECKS FAILED (see CHECK FAILED above and the check field in runs.jsonl)"
  exit 1
fi
