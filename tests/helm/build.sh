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
# The version is the one go.mod pins: one place to change it.
HV=$(awk '$1 == "helm.sh/helm/v3" { print $2 }' "$HERE/go.mod")
BIN=${PGWARDEN_HELM_BIN:-$HOME/.cache/pgwarden-helm/$HV}
OUT=$BIN/helm

log() { echo "helm/build.sh: $*" >&2; }

if [ -z "$HV" ]; then
    log "no helm.sh/helm/v3 requirement in $HERE/go.mod"
    exit 1
fi

if [ ! -x "$OUT" ]; then
    # Go is on our machines for building test binaries only, and not always on PATH.
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        export PATH="$PATH:/usr/local/go/bin"
    fi
    if ! command -v go >/dev/null 2>&1; then
        log "go not found (on PATH or at /usr/local/go/bin/go): cannot build helm $HV"
        exit 1
    fi
    mkdir -p "$BIN"
    # Several test binaries may ask for it at once: one builds, the others wait and reuse it.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$BIN/.build.lock"
        flock 9
    fi
    if [ ! -x "$OUT" ]; then
        log "building helm $HV (a few minutes on 2 cores, once)"
        export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
        trap 'rm -f "$OUT.tmp.$$"' EXIT
        # As helm's Makefile does: its version, and the Kubernetes version `helm template` and
        # `helm lint` assume (without it, v1.20, which the chart's kubeVersion refuses), taken
        # from the client-go it is built with.
        kv=$(awk '$1 == "k8s.io/client-go" { print $2 }' "$HERE/go.mod")
        kminor=${kv#v0.}; kminor=${kminor%%.*}
        ldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HV"
        for pkg in pkg/lint/rules pkg/chartutil; do
            ldf="$ldf -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$kminor"
        done
        (cd "$HERE" && nice -n 19 go build -trimpath -ldflags "$ldf" \
            -o "$OUT.tmp.$$" helm.sh/helm/v3/cmd/helm)
        mv -f "$OUT.tmp.$$" "$OUT"
    fi
fi
echo "$OUT"
