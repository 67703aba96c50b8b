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
. "$HERE/../lib/go-binary.sh"
# The version is the one go.mod pins: one place to change it.
TV=$(awk '$1 == "github.com/Shopify/toxiproxy/v2" { print $2 }' "$HERE/go.mod")
if [ -z "$TV" ]; then
    echo "toxiproxy/build.sh: no github.com/Shopify/toxiproxy/v2 requirement in $HERE/go.mod" >&2
    exit 1
fi
BIN=${PGWARDEN_TOXIPROXY_BIN:-$HOME/.cache/pgwarden-toxiproxy/$TV}
go_binary "$BIN/toxiproxy-server" "$HERE" github.com/Shopify/toxiproxy/v2/cmd/server \
    "-s -w -X github.com/Shopify/toxiproxy/v2.Version=${TV#v}" \
    "toxiproxy-server $TV (20-60 s, once)"
