#!/usr/bin/env bash
# The whole test suite: installs the real clients and servers the tests drive, then runs
# formatting, lints and every test. README command 2; .ci/run calls it too.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v swaks >/dev/null || need+=(swaks)
# `swaks --tls` needs Net::SSLeay and IO::Socket::SSL. They are only recommended by the swaks
# package, so --no-install-recommends leaves them out: name them.
perl -MNet::SSLeay -e 1 2>/dev/null || need+=(libnet-ssleay-perl)
perl -MIO::Socket::SSL -e 1 2>/dev/null || need+=(libio-socket-ssl-perl)
command -v python3 >/dev/null || need+=(python3)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
# Postfix ships smtp-sink/smtp-source and plays the internal mail server in relay tests.
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
# A real Prometheus (and promtool) scrapes mxgate and evaluates the dashboard and alert rules.
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import yaml' 2>/dev/null || need+=(python3 python3-yaml)
# HAProxy sends PROXY v1/v2 headers in the load-balancer tests.
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets --no-fail-fast
