#!/usr/bin/env bash
# REST API throughput: wrk (2 threads, 16 connections, 10 s, --latency) on /health and /patroni
# of a live pgwarden member (release build) and of Debian's Patroni 3.0.2, side by side, in the
# same run on the same machine, each a one-member cluster on its own etcd scope and real
# PostgreSQL 15. Not a timed test: it prints figures (targets: pgwarden >= 30x Patroni's
# requests/s, p99 <= 5 ms).
#
# Needs: wrk, etcd (/usr/bin/etcd), PostgreSQL 15, patroni (Debian), and `cargo build
# --release` done first (target dir: $CARGO_TARGET_DIR, else ./target).
# Usage: tests/bench/rest_wrk.sh [duration, default 10s]
set -euo pipefail

DURATION=${1:-10s}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/pgwarden
PGBIN=/usr/lib/postgresql/15/bin
for need in wrk /usr/bin/etcd /usr/bin/patroni "$PGBIN/postgres" "$BIN"; do
    command -v "$need" >/dev/null 2>&1 || [ -x "$need" ] || {
        echo "missing: $need (apt-get install wrk etcd-server patroni postgresql-15; cargo build --release)" >&2
        exit 1
    }
done

DIR=$(mktemp -d /tmp/rest-bench.XXXXXX)
chmod 755 "$DIR"
PIDS=()
# Agents get SIGTERM first (they stop their PostgreSQL), then SIGKILL; a postmaster left over
# is killed from its pid file.
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 40); do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.5
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for pidfile in "$DIR"/*/data/postmaster.pid; do
        [ -f "$pidfile" ] && kill -9 "$(head -1 "$pidfile")" 2>/dev/null || true
    done
    sleep 0.5
    rm -rf "$DIR"
}
trap cleanup EXIT

# Free loopback ports from the kernel.
ports=($(python3 -c '
import socket
ss=[socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
ETCD_CLIENT=${ports[0]} ETCD_PEER=${ports[1]}
PGW_PG=${ports[2]} PGW_API=${ports[3]} PAT_PG=${ports[4]} PAT_API=${ports[5]}

/usr/bin/etcd --name=bench --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster="bench=http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster-state=new >"$DIR/etcd.log" 2>&1 &
PIDS+=($!)

# The same Patroni YAML for both agents (pgwarden takes Patroni's configuration as it is).
member_yaml() { # scope name pg_port api_port
    cat <<EOF
scope: $1
namespace: /service
name: $2
restapi:
  listen: 127.0.0.1:$4
  connect_address: 127.0.0.1:$4
etcd3:
  hosts: 127.0.0.1:$ETCD_CLIENT
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
  initdb:
  - encoding: UTF8
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 md5
  - host all all 127.0.0.1/32 md5
postgresql:
  listen: 127.0.0.1:$3
  connect_address: 127.0.0.1:$3
  data_dir: $DIR/$2/data
  bin_dir: $PGBIN
  pgpass: $DIR/$2/pgpass
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: rep-pass}
  parameters:
    unix_socket_directories: '$DIR/$2'
EOF
}
member_yaml pgw-bench pgwarden "$PGW_PG" "$PGW_API" >"$DIR/pgwarden.yml"
member_yaml pat-bench patroni "$PAT_PG" "$PAT_API" >"$DIR/patroni.yml"
cp "$BIN" "$DIR/pgwarden-bin"
mkdir -p "$DIR/pgwarden" "$DIR/patroni"
AS=()
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$DIR/pgwarden" "$DIR/patroni"
    # setpriv execs in place (no fork, unlike runuser): $! is the agent itself.
    AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
chmod 755 "$DIR/pgwarden-bin"
"${AS[@]}" env HOME="$DIR" "$DIR/pgwarden-bin" run "$DIR/pgwarden.yml" >"$DIR/pgwarden.log" 2>&1 &
PIDS+=($!)
"${AS[@]}" env HOME="$DIR" /usr/bin/patroni "$DIR/patroni.yml" >"$DIR/patroni.log" 2>&1 &
PIDS+=($!)

wait_health() { # port name
    for _ in $(seq 1 240); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health")" = 200 ] && return 0
        sleep 0.5
    done
    echo "$2 did not become healthy; log:" >&2
    tail -30 "$DIR/$2.log" >&2
    exit 1
}
wait_health "$PGW_API" pgwarden
wait_health "$PAT_API" patroni

# "rps p50 p90 p99" (latencies in ms) of one wrk run.
run_wrk() { # url
    wrk -t2 -c16 -d"$DURATION" --latency "$1" | awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return v
        }
        /^ +50%/ { p50 = ms($2) } /^ +90%/ { p90 = ms($2) } /^ +99%/ { p99 = ms($2) }
        /^Requests\/sec/ { rps = $2 }
        /Non-2xx/ { non2xx = $NF }
        END { printf "%s %.3f %.3f %.3f %s\n", rps, p50, p90, p99, (non2xx == "" ? 0 : non2xx) }'
}

echo "wrk -t2 -c16 -d$DURATION --latency; $(nproc) CPUs; $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
printf '%-9s %-9s %12s %9s %9s %9s %8s\n' endpoint agent "req/s" "p50 ms" "p90 ms" "p99 ms" non-2xx
for ep in /health /patroni; do
    read -r pg_rps pg50 pg90 pg99 pgbad <<<"$(run_wrk "http://127.0.0.1:$PGW_API$ep")"
    read -r pt_rps pt50 pt90 pt99 ptbad <<<"$(run_wrk "http://127.0.0.1:$PAT_API$ep")"
    printf '%-9s %-9s %12s %9s %9s %9s %8s\n' "$ep" pgwarden "$pg_rps" "$pg50" "$pg90" "$pg99" "$pgbad"
    printf '%-9s %-9s %12s %9s %9s %9s %8s\n' "$ep" patroni "$pt_rps" "$pt50" "$pt90" "$pt99" "$ptbad"
    awk -v a="$pg_rps" -v b="$pt_rps" -v ep="$ep" -v p99="$pg99" 'BEGIN {
        printf "%-9s ratio     %11.1fx  (target >= 30x; pgwarden p99 %s ms, target <= 5 ms)\n", ep, a / b, p99 }'
done
