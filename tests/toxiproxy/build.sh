#!/usr/bin/env bash
# Builds (or reuses) Toxiproxy's server, the TCP proxy that the tests put between processes to
# add latency, jitter and bandwidth limits (this machine's kernel has no tc/netem).
#
#   tests/toxiproxy/build.sh        prints the path of toxiproxy-server on stdout; logs on stderr
#
# The binary is built from the Go module beside this script (go.mod/go.sum pin
# github.com/Shopify/toxiproxy/v2) into a cache outside the repository, keyed by version:
# ${PGWARDEN_TOXIPROXY_BIN:-~/.cache/pgwarden-toxiproxy/<version>}/toxiproxy-server.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The version is the one go.mod pins: one place to change it.
TV=$(awk '$1 == "github.com/Shopify/toxiproxy/v2" { print $2 }' "$HERE/go.mod")
BIN=${PGWARDEN_TOXIPROXY_BIN:-$HOME/.cache/pgwarden-toxiproxy/$TV}
OUT=$BIN/toxiproxy-server

log() { echo "toxiproxy/build.sh: $*" >&2; }

if [ -z "$TV" ]; then
    log "no github.com/Shopify/toxiproxy/v2 requirement in $HERE/go.mod"
    exit 1
fi

if [ ! -x "$OUT" ]; then
    # Go is on our machines for building test binaries only, and not always on PATH.
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        export PATH="$PATH:/usr/local/go/bin"
    fi
    if ! command -v go >/dev/null 2>&1; then
        log "go not found (on PATH or at /usr/local/go/bin/go): cannot build toxiproxy-server $TV"
        exit 1
    fi
    mkdir -p "$BIN"
    # Test binaries may ask for it at the same time: one builds, the others wait and reuse it.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$BIN/.build.lock"
        flock 9
    fi
    if [ ! -x "$OUT" ]; then
        log "building toxiproxy-server $TV (20-60 s, once)"
        export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
        trap 'rm -f "$OUT.tmp.$$"' EXIT
        (cd "$HERE" && go build -trimpath \
            -ldflags "-s -w -X github.com/Shopify/toxiproxy/v2.Version=${TV#v}" \
            -o "$OUT.tmp.$$" github.com/Shopify/toxiproxy/v2/cmd/server)
        mv -f "$OUT.tmp.$$" "$OUT"
    fi
fi
echo "$OUT"
