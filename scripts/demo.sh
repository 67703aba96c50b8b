#!/usr/bin/env bash
# Set-up and demo in one command: installs what is missing, builds pgwarden, and runs
# `pgwarden demo` (etcd and three members on loopback). Extra arguments go to `pgwarden demo`,
# e.g. `scripts/demo.sh --failover-after 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --quiet
exec ./target/release/pgwarden demo "$@"
