#!/usr/bin/env bash
# The full fault suite (tests/faults.rs): random seeded fault schedules on real three-member
# clusters, each member and the store in network namespaces of their own, for a given time;
# every schedule is run by pgwarden and, on the same seed, by Debian's Patroni 3.0.2. Writes a
# Markdown report (a summary per backend, agent and mode, then every round) and keeps the
# members' logs of any round that broke a rule. Needs root (namespaces, iptables).
#
#   scripts/faults.sh [--minutes 60] [--backends etcd,kubernetes] [--agents pgwarden,patroni]
#                     [--rounds 4] [--seed N] [--report target/faults-report.md]
#
# A failing schedule replays with the seed the report names: `--seed N --minutes 0` runs that
# one schedule (per backend) and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=60 backends=etcd,kubernetes agents=pgwarden,patroni rounds=4 seed="" report=target/faults-report.md
while [ $# -gt 0 ]; do
  case "$1" in
  --minutes) minutes=$2; shift 2 ;;
  --backends) backends=$2; shift 2 ;;
  --agents) agents=$2; shift 2 ;;
  --rounds) rounds=$2; shift 2 ;;
  --seed) seed=$2; shift 2 ;;
  --report) report=$2; shift 2 ;;
  *) echo "usage: $0 [--minutes M] [--backends etcd,kubernetes] [--agents pgwarden,patroni] [--rounds R] [--seed N] [--report FILE]" >&2; exit 2 ;;
  esac
done

bash scripts/install-deps.sh
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
mkdir -p "$(dirname "$report")"
report=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
export FAULT_MINUTES=$minutes FAULT_BACKENDS=$backends FAULT_AGENTS=$agents FAULT_ROUNDS=$rounds
export FAULT_REPORT=$report FAULT_LOGS=${FAULT_LOGS:-$(dirname "$report")/fault-logs}
[ -n "$seed" ] && export FAULT_SEED=$seed
# A release build of the agent: the one users run.
cargo test --release --test faults full_suite -- --ignored --nocapture
