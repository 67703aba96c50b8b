#!/usr/bin/env bash
# The chart's pgBackRest design, run on one machine (tests/chart_it.rs prepares DIR from the
# rendered chart: DIR/conf/{member,repo}.conf with paths and ports moved into DIR, the chart's
# certificate in DIR/certs, DIR/hosts naming the chart's hosts at loopback addresses):
#
#   unshare --mount --propagation private tests/helm/pgbackrest-check.sh DIR PGPORT
#
# In a private mount namespace (root) DIR/hosts stands for /etc/hosts, so the names the
# configuration and the certificate carry resolve as in the cluster. Then, as the postgres
# user: the repository host's and the member's `pgbackrest server`, a PostgreSQL 15 whose
# archive_command is the chart's, `stanza-create`, `check` and a full `backup` run on the
# repository host over TLS, WAL pushed by PostgreSQL, `info`; and `backup` from the member's
# side, which pgBackRest refuses with a remote repository. Markers on stdout: `== step`.
set -uo pipefail
W=$1
P=$2
B=/usr/lib/postgresql/15/bin
mount --bind "$W/hosts" /etc/hosts
as() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
pids=()
cleanup() {
    as "$B/pg_ctl" -D "$W/data/pgroot/data" -m immediate -w stop >/dev/null 2>&1
    kill "${pids[@]}" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT
as "$B/initdb" -D "$W/data/pgroot/data" -A trust -U postgres >"$W/initdb.log" 2>&1 || { echo "initdb failed"; exit 1; }
# setpriv itself in the background (not the `as` function, which would be a subshell of its
# own): $! is then pgbackrest's pid, which the cleanup stops.
for side in repo member; do
    setpriv --reuid=postgres --regid=postgres --init-groups -- \
        pgbackrest --config="$W/conf/$side.conf" server >"$W/$side-server.log" 2>&1 &
    pids+=($!)
done
# The chart's archive_command is `pgbackrest --stanza=db archive-push %p`, reading the
# member's configuration from its default path; here it is named.
as "$B/pg_ctl" -D "$W/data/pgroot/data" -l "$W/pg.log" -w start \
    -o "-p $P -k $W/sock -c listen_addresses='' -c archive_mode=on -c wal_level=replica" \
    -o "-c archive_command='pgbackrest --config=$W/conf/member.conf --stanza=db archive-push %p'" >/dev/null ||
    { echo "PostgreSQL did not start"; exit 1; }
repo() { as pgbackrest --config="$W/conf/repo.conf" --stanza=db "$@" 2>&1; }
echo "== stanza-create"; repo stanza-create
echo "== check"; repo check
echo "== backup"; repo --type=full backup
echo "== archive"
as "$B/psql" -h "$W/sock" -p "$P" -U postgres -Atc "select pg_switch_wal()" >/dev/null
as "$B/psql" -h "$W/sock" -p "$P" -U postgres -Atc "create table t (x int); select pg_switch_wal()" >/dev/null
for _ in $(seq 1 50); do
    n=$(as "$B/psql" -h "$W/sock" -p "$P" -U postgres -Atc "select archived_count >= 4 and failed_count = 0 from pg_stat_archiver")
    [ "$n" = t ] && break
    sleep 0.2
done
echo "archived: $(as "$B/psql" -h "$W/sock" -p "$P" -U postgres -Atc "select archived_count || ' failed ' || failed_count from pg_stat_archiver")"
echo "== info"; repo info
echo "== member backup"; as pgbackrest --config="$W/conf/member.conf" --stanza=db backup 2>&1
echo "== end"
