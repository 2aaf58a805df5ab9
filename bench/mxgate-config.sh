#!/usr/bin/env bash
# Writes mxgate's benchmark configuration directory, the equivalent of bench/postfix-instance.sh:
# one public listener on 127.0.0.1, RAT example.com, every route to the smtp-sink, metrics off,
# no per-IP limits (every load comes from 127.0.0.1), reverse DNS against the loadgen DNS stub.
#
# With RSA_PORT RSA_CERT RSA_KEY, a second listener on 127.0.0.1:RSA_PORT serves that
# certificate (same policies, spool and process). DNS is a port on 127.0.0.1 or ADDR:PORT.
#
#   bench/mxgate-config.sh DIR LISTEN_PORT SINK_PORT DNS CERT KEY [RSA_PORT RSA_CERT RSA_KEY]
set -euo pipefail
dir=$1 port=$2 sink=$3 dns=$4 cert=$5 key=$6
rsa_port=${7:-} rsa_cert=${8:-} rsa_key=${9:-}
case $dns in *:*) ;; *) dns=127.0.0.1:$dns ;; esac
mkdir -p "$dir/listeners" "$dir/policies" "$dir/spool" "$dir/certs" "$dir/log"
cat > "$dir/mxgate.yaml" <<YAML
spool_dir: $dir/spool
certs_dir: $dir/certs
mail_log:
  target: $dir/log/mail.log
  format: text
dns:
  resolvers: ["$dns"]
  timeout: 5s
shutdown_grace: 1s
metrics:
  listen: null
delivery:
  concurrency: 20
  hostname: mx.example.com
YAML
cat > "$dir/listeners/inbound.yaml" <<YAML
name: inbound
type: public
bind: ["127.0.0.1:$port"]
hostname: mx.example.com
certificate: $cert
key: $key
hat: inbound
rat: inbound
max_connections: 20000
YAML
if [ -n "$rsa_port" ]; then
  cat > "$dir/listeners/inbound-rsa.yaml" <<YAML
name: inbound-rsa
type: public
bind: ["127.0.0.1:$rsa_port"]
hostname: mx.example.com
certificate: $rsa_cert
key: $rsa_key
hat: inbound
rat: inbound
max_connections: 20000
YAML
fi
cat > "$dir/policies/hat.yaml" <<YAML
inbound:
  sender_groups:
    - name: BLOCKLIST
      policy: BLOCKED
      match: [198.51.100.0/24]
  default_policy: ACCEPTED
YAML
cat > "$dir/policies/mail_flow.yaml" <<YAML
policies:
  BLOCKED:
    action: reject
  ACCEPTED:
    action: accept
    tls: preferred
    max_message_size: 20M
    max_messages_per_connection: unlimited
    max_recipients_per_message: 1000
    max_concurrent_connections_per_ip: unlimited
    max_recipients_per_hour: unlimited
    # The Postfix instance has no postscreen: greet at once here too.
    pre_greet_pause: 0
YAML
cat > "$dir/policies/rat.yaml" <<YAML
inbound:
  entries:
    - recipient: example.com
      action: accept
YAML
cat > "$dir/policies/routes.yaml" <<YAML
routes:
  - domain: ALL
    hosts:
      - host: 127.0.0.1
        port: $sink
YAML
cat > "$dir/policies/destinations.yaml" <<YAML
default:
  max_concurrent_connections: 20
  max_messages_per_connection: 10
  tls: "no"
YAML
