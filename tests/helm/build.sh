#!/usr/bin/env bash
# Builds (or reuses) Helm 3, which the chart's test (tests/chart_it.rs) lints, renders and
# installs helm/pgwarden with.
#
#   tests/helm/build.sh        prints the path of the helm binary on stdout; logs on stderr
#
# The binary is built from the Go module beside this script (go.mod/go.sum pin
# helm.sh/helm/v3) into a cache outside the repository, keyed by version:
# ${PGWARDEN_HELM_BIN:-~/.cache/pgwarden-helm/<version>}/helm.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../lib/go-binary.sh"
# The version is the one go.mod pins: one place to change it.
HV=$(awk '$1 == "helm.sh/helm/v3" { print $2 }' "$HERE/go.mod")
if [ -z "$HV" ]; then
    echo "helm/build.sh: no helm.sh/helm/v3 requirement in $HERE/go.mod" >&2
    exit 1
fi
BIN=${PGWARDEN_HELM_BIN:-$HOME/.cache/pgwarden-helm/$HV}
# As helm's Makefile does: its version, and the Kubernetes version `helm template` and
# `helm lint` assume (without it, v1.20, which the chart's kubeVersion refuses), taken from the
# client-go it is built with.
kv=$(awk '$1 == "k8s.io/client-go" { print $2 }' "$HERE/go.mod")
kminor=${kv#v0.}; kminor=${kminor%%.*}
ldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HV"
for pkg in pkg/lint/rules pkg/chartutil; do
    ldf="$ldf -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$kminor"
done
go_binary "$BIN/helm" "$HERE" helm.sh/helm/v3/cmd/helm "$ldf" \
    "helm $HV (a few minutes on 2 cores, once)"
