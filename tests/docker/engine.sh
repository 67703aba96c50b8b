#!/usr/bin/env bash
# A Docker engine of the tests' own, for the container tests (this machine has no systemd and
# no registry; see docker/README.md).
#
#   tests/docker/engine.sh up DIR     start dockerd (Debian's docker.io, which
#                                     scripts/install-deps.sh installs) with its data, state,
#                                     socket and cgroups under DIR / of its own;
#                                     prints DOCKER_HOST=unix://DIR/docker.sock (also in DIR/env)
#   tests/docker/engine.sh down DIR   remove its containers, stop it, unmount and remove DIR
#
# The daemon touches no network setup of the host: no iptables rules, no bridge, no IP
# forwarding change (containers use --network host). It may share the machine with other test
# runs, so `down` stops only the daemon whose pid `up` recorded, and unmounts only under DIR.
set -euo pipefail

log() { echo "engine.sh: $*" >&2; }

usage() {
    echo "usage: $0 up|down DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
SOCK=$DIR/docker.sock
# The exec root holds containerd's sockets, whose paths must stay short (108 bytes).
EXEC_ROOT=/tmp/pgwarden-dx-$(echo "$DIR" | md5sum | cut -c1-10)
CGROUP_PARENT=pgwarden-docker-$(basename "$EXEC_ROOT")

up() {
    if [ ! -x /usr/sbin/dockerd ] || [ ! -x /usr/bin/docker ]; then
        log "no /usr/sbin/dockerd or /usr/bin/docker: install Debian's docker.io (scripts/install-deps.sh does)"
        exit 1
    fi
    if [ -S "$SOCK" ] && DOCKER_HOST=unix://$SOCK /usr/bin/docker version >/dev/null 2>&1; then
        log "already running at $SOCK"
    else
        mkdir -p "$DIR/data" "$EXEC_ROOT"
        echo "$EXEC_ROOT" >"$DIR/exec-root"
        # setsid: the daemon outlives this script and the test's process group, and a Ctrl-C
        # in the terminal goes to the test, whose cleanup stops the daemon in order.
        setsid /usr/sbin/dockerd \
            --data-root "$DIR/data" --exec-root "$EXEC_ROOT" --pidfile "$DIR/dockerd.pid" \
            -H "unix://$SOCK" --iptables=false --ip-masq=false --ip-forward=false \
            --bridge=none --cgroup-parent "/$CGROUP_PARENT" --storage-driver overlay2 \
            --log-level warn \
            </dev/null >"$DIR/dockerd.log" 2>&1 &
        local i
        for i in $(seq 1 120); do
            if DOCKER_HOST=unix://$SOCK /usr/bin/docker version >/dev/null 2>&1; then
                break
            fi
            if [ "$i" = 120 ]; then
                log "dockerd did not answer within 60 s; its log:"
                tail -20 "$DIR/dockerd.log" >&2
                exit 1
            fi
            sleep 0.5
        done
    fi
    echo "DOCKER_HOST=unix://$SOCK" >"$DIR/env"
    echo "DOCKER_HOST=unix://$SOCK"
}

down() {
    local pid=""
    [ -f "$DIR/dockerd.pid" ] && pid=$(cat "$DIR/dockerd.pid")
    if [ -S "$SOCK" ]; then
        local ids
        ids=$(DOCKER_HOST=unix://$SOCK timeout 30 /usr/bin/docker ps -aq 2>/dev/null || true)
        if [ -n "$ids" ]; then
            # shellcheck disable=SC2086
            DOCKER_HOST=unix://$SOCK timeout 60 /usr/bin/docker rm -f $ids >/dev/null 2>&1 || true
        fi
    fi
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "dockerd $pid still running after 30 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # What the daemon left mounted under its own directories, deepest first.
    local root mnt
    for root in "$DIR" "$EXEC_ROOT"; do
        awk -v r="$root/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
            while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    done
    # Its cgroups (empty once its containers are gone).
    local cg
    for cg in /sys/fs/cgroup/*/"$CGROUP_PARENT"; do
        [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    rm -rf "$EXEC_ROOT" "$DIR"
}

case "$cmd" in
up) up ;;
down) down ;;
*) usage ;;
esac
