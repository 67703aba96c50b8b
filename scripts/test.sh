#!/usr/bin/env bash
# The test suite, as CI runs it: installs what is missing, then runs every test against the
# real components (PostgreSQL 15, etcd, patronictl, ...). With CI=true a missing component
# fails its test instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --no-fail-fast "$@"
