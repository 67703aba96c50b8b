#!/usr/bin/env bash
# The pod tests (tests/pods_it.rs): a single-node Kubernetes built on this machine
# (tests/k8s/node.sh: kubelet, containerd, kube-proxy, controllers, scheduler, CoreDNS, all from
# their Go modules, cached under ~/.cache/pgwarden-k8s) runs helm/pgwarden with the images of
# docker/ built here; the tests install, fail over, roll, switch over, evict and measure. Needs
# root; the node is removed at the end, whatever happened.
#
#   scripts/pods.sh [--smoke] [--keep] [--report FILE]
#
#   --smoke     only the first test: install, pods Ready, one failover
#   --keep      leave the node running (its directory is printed; `tests/k8s/node.sh down DIR`)
#   --report    where the figures go (default target/pods-report.md)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke="" keep="" report=target/pods-report.md
while [ $# -gt 0 ]; do
  case "$1" in
  --smoke) smoke=1; shift ;;
  --keep) keep=1; shift ;;
  --report) report=$2; shift 2 ;;
  *) echo "usage: $0 [--smoke] [--keep] [--report FILE]" >&2; exit 2 ;;
  esac
done

bash scripts/install-deps.sh
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
mkdir -p "$(dirname "$report")"
report=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")

work=$(mktemp -d /tmp/pgwarden-pods-XXXXXX)
cleanup() {
  if [ -n "$keep" ]; then
    echo "pods.sh: the node is still up in $work/node (tests/k8s/node.sh down $work/node)" >&2
  else
    tests/k8s/node.sh down "$work/node" || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT
started=$SECONDS
tests/k8s/node.sh up "$work/node" >/dev/null
echo "pods.sh: node up in $((SECONDS - started)) s" >&2

{
  echo "# Pod tests, $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "node up (builds included): $((SECONDS - started)) s"
} >"$report"
export PGWARDEN_NODE_ENV=$work/node/env PODS_REPORT=$report
filter=()
[ -n "$smoke" ] && filter=(install_then_kill_the_primary_container)
status=0
# A release build: the binary the images carry is the one users run.
cargo test --release --test pods_it -- --ignored --test-threads=1 --nocapture "${filter[@]}" || status=$?
echo "total: $((SECONDS - started)) s" >>"$report"
echo "pods.sh: report in $report" >&2
cat "$report" >&2
exit "$status"
