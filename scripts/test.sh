#!/usr/bin/env bash
# The test suite, as CI runs it: installs what is missing, starts one real Kubernetes control
# plane (kube-apiserver + etcd built from their Go modules on first use, then cached under
# ~/.cache/pgwarden-k8s), then runs every test against the real components (PostgreSQL 15, etcd,
# patronictl, HAProxy, pgBouncer, kube-apiserver, ...). With CI=true a missing component fails
# its test instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Go is on our machines for building the test control plane only.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

work=$(mktemp -d /tmp/pgwarden-test-XXXXXX)
cleanup() {
  tests/k8s/cluster.sh down "$work/k8s" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
if tests/k8s/cluster.sh up "$work/k8s" >"$work/k8s-up.log" 2>&1; then
  export PGWARDEN_TEST_KUBECONFIG="$work/k8s/kubeconfig"
else
  # The Kubernetes tests then fail (with CI=true) with this log's reason; the rest still runs.
  echo "warning: the Kubernetes control plane did not start:" >&2
  tail -20 "$work/k8s-up.log" >&2
fi
status=0
cargo test --no-fail-fast "$@" 2>&1 | tee "$work/test.log" || status=$?
# One closing line for the whole run. Summaries of the re-executed PostgreSQL tests (run as the
# postgres user, each with the others filtered out) are counted once, by their parent.
awk '/^test result: / && / 0 filtered out/ {
       for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) }
     } END { printf "tests: %d passed, %d failed\n", p, f }' "$work/test.log"
exit "$status"
