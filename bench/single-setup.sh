# Sourced by the single-mxgate benchmarks (commit-counts.sh, profile.sh): a work directory $w
# (removed on exit with every process in $pids), three free ports ($pmx for mxgate, $psink,
# $pdns), an ECDSA P-256 certificate, smtp-sink counting messages ($w/sink.out), loadgen's DNS
# stub, and mxgate's benchmark configuration in $w/mx. Needs $lg (loadgen) and $bench.
w=$(mktemp -d)
read -r pmx psink pdns < <(python3 -c '
import socket
s=[socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1",0))
print(*[x.getsockname()[1] for x in s])')
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$w"; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$w/bench.key" -out "$w/bench.crt" -subj /CN=mx.example.com \
  -addext subjectAltName=DNS:mx.example.com 2>/dev/null
chmod 644 "$w/bench.key" "$w/bench.crt"
smtp-sink -c -u nobody -m 1000 "127.0.0.1:$psink" 1024 > "$w/sink.out" 2>&1 & pids+=($!)
"$lg" dns --listen "127.0.0.1:$pdns" --max-secs 3600 2> "$w/dns.log" & pids+=($!)
bash "$bench/mxgate-config.sh" "$w/mx" "$pmx" "$psink" "127.0.0.1:$pdns" "$w/bench.crt" "$w/bench.key"
