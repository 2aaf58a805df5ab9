#!/usr/bin/env bash
# A dictionary attack against call-ahead validation (issue 13; results in BENCHMARKS.md).
#
#   bench/validation-attack.sh               # run A: no DHAP limit, about a minute after the build
#   bench/validation-attack.sh --dhap 25     # run B: max_invalid_recipients_per_hour 25 per IP
#   RUNS=2 bench/validation-attack.sh        # twice in a row
#
# Runs the ignored test tests/validation_attack.rs in release mode: a private Postfix (50 users
# in its relay_recipient_maps) is the internal server that `validate: callahead` probes and the
# delivery target; 20 harvester sessions from 20 PROXY addresses send 500 RCPTs each (10,000,
# a fifth of them repeats) while one client sends a message to a real user every 100 ms; then
# that client runs alone on fresh servers (the baseline). Prints the report and appends it,
# with the machine's facts and the command, to target/bench-results/validation-attack-<time>/
# report.md; Postfix's and mxgate's logs of each run are kept beside it. Every server listens
# on 127.0.0.1 only; the PROXY addresses (203.0.113.x, 198.51.100.77) only appear in headers.
# Needs root (Postfix's master); installs Postfix when missing. Not part of the test suite.
#
# The test's knobs pass through: ATTACK_SESSIONS (20), ATTACK_RCPTS (500), ATTACK_REPEAT_PCT
# (20), ATTACK_VALID_USERS (50), ATTACK_LEGIT_INTERVAL_MS (100; 0: back to back),
# ATTACK_MAX_CONCURRENCY (4), ATTACK_MAX_WAITING (64), ATTACK_DHAP (what --dhap sets),
# ATTACK_BASELINE (1), ATTACK_SEED (13).
set -euo pipefail

RUNS=${RUNS:-1}
while [ $# -gt 0 ]; do
  case $1 in
    --dhap) export ATTACK_DHAP=$2; shift 2 ;;
    *) echo "usage: $0 [--dhap N]" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
results=${RESULTS:-$root/target/bench-results/validation-attack-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "$0 needs root (the Postfix instance)" >&2; exit 1; }
if [ ! -x /usr/lib/postfix/sbin/master ] || [ ! -x /usr/sbin/smtp-sink ]; then
  log "installing postfix (no system configuration: only the test's private instance runs)"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix
fi

log "building mxgate and the test (release)"
(cd "$root" && cargo test --release -q --test validation_attack --no-run)

report=$results/report.md
{
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): bench/validation-attack.sh ${ATTACK_DHAP:+--dhap $ATTACK_DHAP}"
  echo
  echo "- commit: $(cd "$root" && git rev-parse --short HEAD)$(cd "$root" && git diff --quiet HEAD -- src tests || echo ' (with local changes)')"
  echo "- machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "- $(rustc --version), Postfix $(postconf -d -h mail_version 2>/dev/null || echo '?')"
  echo "- knobs: $(env | grep "^ATTACK_" | sort | tr "\n" " ")(the rest at their defaults)"
  echo
} >> "$report"

for run in $(seq "$RUNS"); do
  log "run $run of $RUNS (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "Load average before run $run: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$report"
  echo >> "$report"
  (cd "$root" && ATTACK_OUT=$report ATTACK_LOGS=$results/run$run \
    cargo test --release -q --test validation_attack -- --ignored --nocapture --test-threads 1)
done
log "report: $report"
