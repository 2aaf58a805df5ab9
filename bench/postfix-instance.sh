#!/usr/bin/env bash
# Sets up a private Postfix instance for bench/compare.sh: its own config_directory,
# queue_directory and data_directory under DIR, listening on 127.0.0.1:PORT only, configured
# as the inbound relay gateway mxgate is compared with: accepts mail for example.com only
# (relay_domains, no local delivery), STARTTLS "may" with the given certificate,
# smtpd_forbid_bare_newline, and relays everything to the smtp-sink on 127.0.0.1:SINK_PORT.
# Both the smtpd maxproc and default_process_limit are MAXPROC, for the idle-connection test.
# With RSA_PORT RSA_CERT RSA_KEY, a second smtpd service on 127.0.0.1:RSA_PORT serves that
# certificate instead (the same instance, queue and processes otherwise).
#
#   bench/postfix-instance.sh DIR PORT SINK_PORT CERT KEY MAXPROC [RSA_PORT RSA_CERT RSA_KEY]
# Start it with `postfix -c DIR/conf start`; stop it with `postfix -c DIR/conf stop`.
set -euo pipefail
dir=$1 port=$2 sink=$3 cert=$4 key=$5 maxproc=$6
rsa_port=${7:-} rsa_cert=${8:-} rsa_key=${9:-}
mkdir -p "$dir/conf" "$dir/queue" "$dir/data" "$dir/log"
chmod 755 "$dir" "$dir/conf" "$dir/log"
chown root:root "$dir/queue"
chown postfix "$dir/data"
cat > "$dir/conf/main.cf" <<EOF
# Private benchmark instance (bench/compare.sh): nothing here is the system's Postfix.
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = $dir/log/maillog
maillog_file_prefixes = $dir/log

myhostname = mx.example.com
mydomain = example.com
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_banner = \$myhostname ESMTP

# An inbound gateway for one domain: no local delivery, no trusted networks (the load comes
# from 127.0.0.1, which is exempt from the per-client limits only, like mxgate's policy).
mydestination =
mynetworks =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains = example.com
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_event_limit_exceptions = 127.0.0.0/8
message_size_limit = 20971520
smtpd_forbid_bare_newline = yes

# STARTTLS offered ("may") with the same certificate mxgate uses (ECDSA P-256; RSA-2048 on
# the second port).
smtpd_tls_security_level = may
smtpd_tls_chain_files = $key, $cert
smtpd_tls_loglevel = 0

# Everything goes to the smtp-sink, in plaintext, without DNS.
relayhost = [127.0.0.1]:$sink
transport_maps = inline:{example.com=relay:[127.0.0.1]:$sink}
smtp_tls_security_level = none
smtp_dns_support_level = disabled
default_destination_concurrency_limit = 20

default_process_limit = $maxproc
EOF
cat > "$dir/conf/master.cf" <<EOF
# service type private unpriv chroot wakeup maxproc command
127.0.0.1:$port inet n - n - $maxproc smtpd
cleanup   unix  n - n - 0     cleanup
qmgr      unix  n - n 300 1   qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - -     trivial-rewrite
bounce    unix  - - n - 0     bounce
defer     unix  - - n - 0     bounce
trace     unix  - - n - 0     bounce
verify    unix  - - n - 1     verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - -     proxymap
smtp      unix  - - n - -     smtp
relay     unix  - - n - -     smtp
error     unix  - - n - -     error
retry     unix  - - n - -     error
discard   unix  - - n - -     discard
anvil     unix  - - n - 1     anvil
scache    unix  - - n - 1     scache
postlog   unix-dgram n - n - 1 postlogd
showq     unix  n - n - -     showq
EOF
if [ -n "$rsa_port" ]; then
  echo "127.0.0.1:$rsa_port inet n - n - $maxproc smtpd -o smtpd_tls_chain_files=$rsa_key,$rsa_cert" \
    >> "$dir/conf/master.cf"
fi
postfix -c "$dir/conf" check
