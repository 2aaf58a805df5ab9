#!/usr/bin/env bash
# Sets up a private OpenSMTPD instance for bench/compare.sh, the second peer beside Postfix,
# configured like bench/postfix-instance.sh: listening on 127.0.0.1:PORT only, accepting mail
# for example.com only and relaying everything to the smtp-sink on 127.0.0.1:SINK_PORT
# (plaintext, no MX lookup), STARTTLS offered with the given certificate, limits raised to
# what the load needs.
#
#   bench/opensmtpd-instance.sh DIR PORT SINK_PORT CERT KEY DNS_ADDR SMTPD [RSA_PORT RSA_CERT RSA_KEY]
#
# With RSA_PORT RSA_CERT RSA_KEY, a second listener on 127.0.0.1:RSA_PORT serves that
# certificate (the same instance and queue otherwise).
#
# SMTPD is the smtpd binary (bench/compare.sh extracts Debian's package privately: it
# conflicts with Postfix). Writes DIR/smtpd.conf and DIR/run.sh; `DIR/run.sh` execs smtpd in
# the foreground (log on stderr) inside its own mount namespace, where:
# - /var/spool/smtpd, the queue (its path is compiled in), is DIR/spool: a private queue on
#   the same file system as the other servers' queues;
# - /run (the control socket /run/smtpd.sock) is DIR/run, so no other instance is touched;
# - /etc/resolv.conf names DNS_ADDR (port 53, the only port OpenSMTPD's resolver uses): the
#   loadgen DNS stub, so its reverse lookup of the client (always done, not configurable)
#   is answered locally, as mxgate's FCrDNS is.
#
# Durability: OpenSMTPD 6.8 does not fsync its queue before the 250 (queue_fs.c writes new
# envelopes with do_sync=0, the message file is closed without fsync, no directory fsync;
# only envelope updates are fsynced). With DURABLE=1, a small LD_PRELOAD shim
# (bench/opensmtpd-shim.c) makes the commit durable: fdatasync of the message and envelope
# files and fsync of the directories before the rename that commits, fsync of the
# destination directory after it. The same shim raises the listen backlog, compiled in as 5,
# to BACKLOG (default 1024, as mxgate's; 0 keeps 5): see there why.
set -euo pipefail
dir=$1 port=$2 sink=$3 cert=$4 key=$5 dns=$6 smtpd=$7
rsa_port=${8:-} rsa_cert=${9:-} rsa_key=${10:-}
durable=${DURABLE:-0}
backlog=${BACKLOG:-1024}
mkdir -p "$dir/spool" "$dir/run" "$dir/log"
chmod 711 "$dir/spool"
chmod 755 "$dir" "$dir/run" "$dir/log"
# The compiled-in paths must exist as mount points / chroot (what the package would create).
mkdir -p /var/spool/smtpd /var/lib/opensmtpd/empty
for u in opensmtpd opensmtpq; do
  getent passwd $u >/dev/null ||
    adduser --quiet --system --group --no-create-home --home /var/lib/opensmtpd/empty $u
done
# The private key must not be readable by others for smtpd (it refuses world-readable keys).
install -m 600 "$key" "$dir/bench.key"
cp "$cert" "$dir/bench.crt"
rsa_pki="" rsa_listen=""
if [ -n "$rsa_port" ]; then
  install -m 600 "$rsa_key" "$dir/rsa.key"
  cp "$rsa_cert" "$dir/rsa.crt"
  rsa_pki="pki mx-rsa cert \"$dir/rsa.crt\"
pki mx-rsa key \"$dir/rsa.key\""
  rsa_listen="listen on 127.0.0.1 port $rsa_port hostname mx.example.com tls pki mx-rsa"
fi
cat > "$dir/resolv.conf" <<EOF
nameserver $dns
lookup bind file
EOF
cat > "$dir/smtpd.conf" <<EOF
# Private benchmark instance (bench/compare.sh).
pki mx.example.com cert "$dir/bench.crt"
pki mx.example.com key "$dir/bench.key"
$rsa_pki

# Sessions: one message per connection up to 10 (scenario d), 20 MiB messages like the others.
smtp max-message-size 20M
smtp limit max-mails 1000 max-rcpt 1000

# Delivery to the sink: 20 connections at once and 10 messages per connection, like mxgate
# (destinations.yaml) and Postfix (default_destination_concurrency_limit = 20); no delays
# between connections (the defaults wait 5 s per route, which would bound the end-to-end
# rate by the scheduler, not the server).
mta limit max-conn-per-host 20 max-conn-per-route 20 max-conn-per-relay 20 max-conn-per-domain 20 max-conn-per-connector 20 conn-delay-route 0 conn-delay-relay 0 reconn-delay-route 0 session-mail-max 10

# STARTTLS offered (not required) with the same certificate as the others.
listen on 127.0.0.1 port $port hostname mx.example.com tls pki mx.example.com
$rsa_listen

table rcptdomains { example.com }
action "sink" relay host smtp+notls://127.0.0.1:$sink
match from any for domain <rcptdomains> action "sink"
EOF
"$smtpd" -n -f "$dir/smtpd.conf" >/dev/null 2>&1 || "$smtpd" -n -f "$dir/smtpd.conf"

cc -O2 -shared -fPIC -o "$dir/shim.so" "$(dirname "$0")/opensmtpd-shim.c" -ldl
preload="LD_PRELOAD=$dir/shim.so SHIM_DURABLE=$durable SHIM_BACKLOG=$backlog"
cat > "$dir/run.sh" <<EOF
#!/usr/bin/env bash
# Runs the private OpenSMTPD in its own mount namespace (see bench/opensmtpd-instance.sh).
exec unshare --mount --propagation private bash -c '
  set -e
  mount --bind "$dir/spool" /var/spool/smtpd
  mount --bind "$dir/run" /run
  mount --bind "$dir/resolv.conf" /etc/resolv.conf
  exec env $preload "$smtpd" -d -f "$dir/smtpd.conf"'
EOF
chmod 755 "$dir/run.sh"
