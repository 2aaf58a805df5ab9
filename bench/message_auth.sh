#!/usr/bin/env bash
# The accept-path cost of sender authentication (issue 15): the same signed message sent N
# times over one SMTP connection to two listeners of one mxgate, one without sender
# authentication and one with `spf: tag` + `dmarc: enforce` (SPF, DKIM, DMARC, the
# Authentication-Results header, the message held until the end of DATA). DNS is a private
# dnsmasq; after the warm-up every record comes from mxgate's resolver cache. Both listeners
# fsync each message before 250, relaying into smtp-sink.
#
#   bench/message_auth.sh            # N=500 messages per run, ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-500} ROUNDS=${ROUNDS:-3}
py=/usr/bin/python3
$py -c 'import dkim' || { echo "needs python3-dkim" >&2; exit 1; }
cargo build --release --bin mxgate >/dev/null
mxgate=$PWD/target/release/mxgate
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p_dns=$(free_port) p_sink=$(free_port) p_plain=$(free_port) p_auth=$(free_port)

openssl genrsa -out "$work/dkim.pem" 2048 2>/dev/null
pub=$(openssl rsa -in "$work/dkim.pem" -pubout -outform DER 2>/dev/null | base64 -w0)
key="v=DKIM1; k=rsa; p=$pub"
/usr/sbin/dnsmasq --keep-in-foreground --no-resolv --no-hosts --port "$p_dns" \
  --listen-address=127.0.0.1 --bind-interfaces --local=/test/ \
  --mx-host=auth.test,mail.auth.test,10 --host-record=mail.auth.test,127.0.0.9 \
  "--txt-record=auth.test,v=spf1 ip4:127.0.0.1 -all" \
  "--txt-record=_dmarc.auth.test,v=DMARC1; p=reject" \
  "--txt-record=sel._domainkey.auth.test,${key:0:200},${key:200}" 2>"$work/dnsmasq.log" &
pids+=($!)
/usr/sbin/smtp-sink -c "127.0.0.1:$p_sink" 1024 >/dev/null 2>&1 &
pids+=($!)

cfg=$work/cfg
mkdir -p "$cfg/listeners" "$cfg/policies"
cat > "$cfg/mxgate.yaml" <<YAML
spool_dir: $work/spool
mail_log:
  target: $work/mail.log
dns:
  resolvers: ["127.0.0.1:$p_dns"]
  timeout: 2s
metrics:
  listen: null
shutdown_grace: 1s
delivery:
  concurrency: 20
  hostname: mx.test.example
YAML
for l in plain auth; do
  port=$p_plain; [ $l = auth ] && port=$p_auth
  printf 'name: %s\ntype: public\nbind: ["127.0.0.1:%s"]\nhostname: mx.test.example\nhat: %s\nrat: inbound\n' \
    $l "$port" $l > "$cfg/listeners/$l.yaml"
done
cat > "$cfg/policies/hat.yaml" <<YAML
plain: {sender_groups: [], default_policy: PLAIN}
auth: {sender_groups: [], default_policy: AUTH}
YAML
cat > "$cfg/policies/mail_flow.yaml" <<YAML
default:
  tls: "off"
  pre_greet_pause: 0s
  max_messages_per_connection: unlimited
  max_recipients_per_hour: unlimited
policies:
  PLAIN: {}
  AUTH: {spf: tag, dmarc: enforce}
YAML
printf 'inbound:\n  entries:\n    - recipient: example.com\n      action: accept\n' > "$cfg/policies/rat.yaml"
printf 'routes:\n  - domain: ALL\n    hosts:\n      - host: 127.0.0.1\n        port: %s\n' "$p_sink" > "$cfg/policies/routes.yaml"
(cd "$work" && exec "$mxgate" serve --config-dir "$cfg" >"$work/stdout.log" 2>&1) &
pids+=($!)
for _ in $(seq 50); do
  $py -c "import socket; socket.create_connection(('127.0.0.1', $p_auth), 1)" 2>/dev/null && break
  sleep 0.2
done

# One connection, N transactions of the same signed message; prints ms per message.
send() {
  $py - "$1" "$2" "$work/dkim.pem" <<'PY'
import sys, time, smtplib, dkim
port, n, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = b'x' * 76 + b'\r\n'
msg = (b'From: <a@auth.test>\r\nTo: <bob@example.com>\r\nSubject: bench\r\n'
       b'Date: Sat, 05 Dec 2026 12:00:00 +0000\r\nMessage-ID: <b@auth.test>\r\n\r\n' + body * 40)
msg = dkim.sign(msg, b'sel', b'auth.test', open(key, 'rb').read(),
                include_headers=[b'from', b'to', b'subject', b'date', b'message-id'],
                linesep=b'\r\n') + msg
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.auth.test', timeout=30)
s.ehlo()
t = time.perf_counter()
for _ in range(n):
    s.sendmail('a@auth.test', ['bob@example.com'], msg)
dt = time.perf_counter() - t
s.quit()
print(f"{dt / n * 1000:.3f}")
PY
}
send "$p_plain" 20 >/dev/null; send "$p_auth" 20 >/dev/null   # warm-up: fills the DNS cache
grep -q "DMARC pass" "$work/mail.log" || { echo "DMARC did not pass:"; tail "$work/mail.log"; exit 1; }
echo "ms per message (one connection, $N messages, 3.3 KB signed message), round: plain auth"
for r in $(seq "$ROUNDS"); do
  a=$(send "$p_plain" "$N"); b=$(send "$p_auth" "$N")
  echo "round $r: $a $b"
done
