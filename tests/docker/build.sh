#!/usr/bin/env bash
# Builds the images the container tests run, with the engine at DOCKER_HOST, from
# docker/Dockerfile and docker/pgbouncer.Dockerfile exactly as users build them, except where
# their inputs come from (no registry here): the base is tests/docker/base.sh's Debian 12 and
# pgwarden is the host's `cargo build --release` binary (PGWARDEN_BINARY=prebuilt).
#
#   DOCKER_HOST=unix://... tests/docker/build.sh     prints the image names on stdout: pgwarden,
#                                                    pgBouncer, and the test's own etcd
#
# JIT=yes|no is passed to docker/Dockerfile (default: the Dockerfile's own).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/docker
DOCKER=${DOCKER:-/usr/bin/docker}
PGWARDEN_IMAGE=pgwarden-test/pgwarden:latest
PGBOUNCER_IMAGE=pgwarden-test/pgbouncer:latest
ETCD_IMAGE=pgwarden-test/etcd:latest

log() { echo "build.sh: $*" >&2; }

if [ -z "${DOCKER_HOST:-}" ]; then
    log "DOCKER_HOST is not set (tests/docker/engine.sh up DIR prints it)"
    exit 2
fi
base=$(bash "$HERE/base.sh")

# The binary the image copies: the release build at the path the Dockerfile names.
log "cargo build --release"
(cd "$ROOT" && CARGO_TARGET_DIR=$ROOT/target nice -n 19 "${CARGO:-cargo}" build --release \
    --locked --bin pgwarden >&2)

# BuildKit (the Debian client's own, no buildx here) builds only the stages the prebuilt binary
# needs; host networking because the engine has no bridge.
build() {
    local image=$1 started=$SECONDS
    shift
    DOCKER_BUILDKIT=1 nice -n 19 "$DOCKER" build --network host --progress plain \
        --build-arg "BASE=$base" -t "$image" "$@" >"$LOG" 2>&1 || {
        log "docker build $* failed:"
        tail -40 "$LOG" >&2
        exit 1
    }
    log "$image built in $((SECONDS - started)) s"
}
LOG=$(mktemp /tmp/pgwarden-docker-build-XXXXXX.log)
trap 'rm -f "$LOG"' EXIT

jit=()
[ -n "${JIT:-}" ] && jit=(--build-arg "JIT=$JIT")
build "$PGWARDEN_IMAGE" -f "$ROOT/docker/Dockerfile" --build-arg PGWARDEN_BINARY=prebuilt \
    "${jit[@]}" "$ROOT"
build "$PGBOUNCER_IMAGE" -f "$ROOT/docker/pgbouncer.Dockerfile" "$ROOT/docker"
# The test's store, as a container too (not shipped: tests/docker/etcd.Dockerfile).
build "$ETCD_IMAGE" -f "$HERE/etcd.Dockerfile" "$HERE"

for image in "$PGWARDEN_IMAGE" "$PGBOUNCER_IMAGE"; do
    log "$image: $("$DOCKER" image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
done
echo "$PGWARDEN_IMAGE"
echo "$PGBOUNCER_IMAGE"
echo "$ETCD_IMAGE"
