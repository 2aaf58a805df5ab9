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
# curl fetches the MTA-STS policy over HTTPS (tests/mta_sts.rs).
command -v curl >/dev/null || need+=(curl)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
# Postfix ships smtp-sink/smtp-source and plays the internal mail server in relay tests.
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
# A real Prometheus (and promtool) scrapes mxgate and evaluates the dashboard and alert rules.
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import yaml' 2>/dev/null || need+=(python3 python3-yaml)
# Debian's dkimpy signs the messages of the DKIM/DMARC tests (tests/message_auth.rs).
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import dkim' 2>/dev/null || need+=(python3-dkim)
# HAProxy sends PROXY v1/v2 headers in the load-balancer tests.
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
# A private redis-server holds the counters several gateways share (tests/shared_state.rs).
[ -x /usr/bin/redis-server ] || need+=(redis-server)
# A private OpenLDAP slapd answers the ldap: recipient-validation tests (tests/validate_ldap.rs).
[ -x /usr/sbin/slapd ] || need+=(slapd ldap-utils)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # The tests start their own private instances. Installing must not turn this machine into a
  # mail server on port 25 or start Prometheus on every interface: Postfix is installed with
  # "No configuration", and no service is started while installing (policy-rc.d, Debian's
  # switch for that), unless the machine already has a policy of its own.
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo_cmd debconf-set-selections
  # slapd likewise: no default directory of its own (the tests build theirs).
  echo "slapd slapd/no_configuration boolean true" | $sudo_cmd debconf-set-selections
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" || rc=$?
  [ -z "$own_policy" ] || $sudo_cmd rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || exit "$rc"
fi
# rustfmt and clippy are rustup components; a minimal toolchain may lack them.
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets --no-fail-fast
