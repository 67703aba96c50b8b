#!/usr/bin/env bash
# pgwarden vs Debian's Patroni 3.0.2, both on the Kubernetes API (one real kube-apiserver from
# tests/k8s/cluster.sh, its audit log counting every request), three members each with real
# PostgreSQL 15, default timings (ttl 30, loop_wait 10, retry_timeout 10). Not a timed test: it
# prints figures.
#
#   1. steady state: API requests/s and write requests/s per cluster over WINDOW seconds
#      (audit events of each cluster's namespace, the benchmark's own admin requests excluded);
#   2. planned switchover (POST /switchover): longest gap between successful INSERTs of a client
#      writing every 20 ms through libpq's read-write host list;
#   3. primary's agent and postmaster killed -9: time to the first successful INSERT.
#
# Needs: PostgreSQL 15, patroni (Debian), python3-psycopg2 (for /usr/bin/python3), and a pgwarden binary
# (PGWARDEN_BIN, else $CARGO_TARGET_DIR/release/pgwarden, else .../debug/pgwarden).
# Usage: tests/bench/k8s_bench.sh [WINDOW seconds, default 180]
set -euo pipefail

WINDOW=${1:-180}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${PGWARDEN_BIN:-}
[ -n "$BIN" ] || { [ -x "$TARGET/release/pgwarden" ] && BIN=$TARGET/release/pgwarden; } || true
[ -n "$BIN" ] || BIN=$TARGET/debug/pgwarden
PGBIN=/usr/lib/postgresql/15/bin
for need in /usr/bin/patroni "$PGBIN/postgres" "$BIN"; do
    [ -x "$need" ] || { echo "missing: $need" >&2; exit 1; }
done
/usr/bin/python3 -c "import psycopg2" || { echo "missing: python3-psycopg2" >&2; exit 1; }

DIR=$(mktemp -d /tmp/k8s-bench.XXXXXX)
chmod 755 "$DIR"
CP=$DIR/cp
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for pidfile in "$DIR"/*/*/data/postmaster.pid; do
        [ -f "$pidfile" ] && kill -9 "$(head -1 "$pidfile")" 2>/dev/null || true
    done
    "$ROOT/tests/k8s/cluster.sh" down "$CP" >/dev/null 2>&1 || true
    sleep 0.5
    [ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

"$ROOT/tests/k8s/cluster.sh" up "$CP" >/dev/null
AP=$(cat "$CP/apiserver.port")
cp "$CP/pki/ca.crt" "$DIR/ca.crt"
cat >"$DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: t
  cluster:
    server: https://127.0.0.1:$AP
    certificate-authority: $DIR/ca.crt
users:
- name: u
  user:
    token: pgwarden-admin-token
contexts:
- name: kind-kind
  context:
    cluster: t
    user: u
current-context: kind-kind
KC
# (Patroni 3.0.2 uses the context named by kubernetes.context, default "kind-kind", not
# current-context.)
# The agents run as "system:masters" through a second token, so that the benchmark's own
# admin requests (user admin) can be told apart in the audit log.
echo 'pgwarden-agent-token,agent,agent,"system:masters"' >>"$CP/pki/tokens.csv"
sed -i "s/token: pgwarden-admin-token/token: pgwarden-agent-token/" "$DIR/kubeconfig"
# --token-auth-file is read at start: restart the API server (etcd keeps the state).
kill "$(cat "$CP/apiserver.pid")"; sleep 2
( cd "$ROOT" && bash -c "source <(sed -n '/^start_apiserver()/,/^}/p' tests/k8s/cluster.sh); BIN=\${PGWARDEN_K8S_BINS:-\$HOME/.cache/pgwarden-k8s/v1.37.2-v3.7.3}; start_apiserver $CP" )

api() { # method path [json]
    curl -sf --cacert "$CP/pki/ca.crt" -H 'Authorization: Bearer pgwarden-admin-token' \
        -H 'Content-Type: application/json' -X "$1" "https://127.0.0.1:$AP$2" ${3:+-d "$3"} >/dev/null
}
ports=($(python3 -c '
import socket
ss=[socket.socket() for _ in range(12)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))'))

member_yaml() { # ns name pg_port api_port
    cat <<EOF
scope: bench
name: $2
restapi:
  listen: 127.0.0.1:$4
  connect_address: 127.0.0.1:$4
kubernetes:
  namespace: $1
  labels: {application: bench}
  use_endpoints: false
  pod_ip: 127.0.0.1
  ports: [{name: postgresql, port: $3}]
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters: {wal_log_hints: "on"}
  initdb:
  - encoding: UTF8
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 md5
  - host all all 127.0.0.1/32 md5
postgresql:
  listen: 127.0.0.1:$3
  connect_address: 127.0.0.1:$3
  data_dir: $DIR/$1/$2/data
  bin_dir: $PGBIN
  pgpass: $DIR/$1/$2/pgpass
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: rep-pass}
    rewind: {username: rewind_user, password: rewind-pass}
  parameters:
    unix_socket_directories: '$DIR/$1/$2'
EOF
}

cp "$BIN" "$DIR/pgwarden-bin"; chmod 755 "$DIR/pgwarden-bin"
AS=()
[ "$(id -u)" = 0 ] && AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
declare -A PGPORT APIPORT AGENT
k=0
for ns in pgw pat; do
    api POST /api/v1/namespaces "{\"metadata\":{\"name\":\"$ns\"}}"
    mkdir -p "$DIR/$ns"
    for m in m0 m1 m2; do
        PGPORT[$ns/$m]=${ports[$k]}; APIPORT[$ns/$m]=${ports[$((k + 1))]}; k=$((k + 2))
        api POST /api/v1/namespaces/$ns/pods "{\"metadata\":{\"name\":\"$m\",\"labels\":{\"application\":\"bench\",\"cluster-name\":\"bench\"}},\"spec\":{\"containers\":[{\"name\":\"pg\",\"image\":\"postgres:15\"}]}}"
        curl -sf --cacert "$CP/pki/ca.crt" -H 'Authorization: Bearer pgwarden-admin-token' \
            -H 'Content-Type: application/merge-patch+json' -X PATCH \
            "https://127.0.0.1:$AP/api/v1/namespaces/$ns/pods/$m/status" \
            -d '{"status":{"podIP":"127.0.0.1","phase":"Running"}}' >/dev/null
        mkdir -p "$DIR/$ns/$m"
        if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR/$ns/$m"; fi
        member_yaml $ns $m "${PGPORT[$ns/$m]}" "${APIPORT[$ns/$m]}" >"$DIR/$ns/$m.yml"
    done
done
start_member() { # ns m
    local ns=$1 m=$2 cmd
    if [ "$ns" = pgw ]; then cmd=("$DIR/pgwarden-bin" run); else cmd=(/usr/bin/patroni); fi
    "${AS[@]}" env HOME="$DIR" KUBECONFIG="$DIR/kubeconfig" PGWARDEN_LOG=info \
        "${cmd[@]}" "$DIR/$ns/$m.yml" >>"$DIR/$ns/$m.log" 2>&1 &
    AGENT[$ns/$m]=$!
    PIDS+=($!)
}
for ns in pgw pat; do for m in m0 m1 m2; do start_member $ns $m; done; done

# One member's /cluster.
cluster_state() { # ns
    for m in m0 m1 m2; do
        curl -s --max-time 3 "http://127.0.0.1:${APIPORT[$1/$m]}/cluster" && return 0
    done
    return 1
}
leader_of() { cluster_state "$1" | python3 -c '
import json,sys
c=json.load(sys.stdin)
print(next((m["name"] for m in c["members"] if m["role"] in ("leader","master","primary")), ""))' 2>/dev/null || true; }
steady() { cluster_state "$1" | python3 -c '
import json,sys
ms=json.load(sys.stdin)["members"]
ok=sum(1 for m in ms if m["role"] in ("leader","master","primary") and m["state"]=="running")==1 and \
   sum(1 for m in ms if m["role"]=="replica" and m["state"] in ("streaming","running"))==2
sys.exit(0 if ok else 1)' 2>/dev/null; }
wait_steady() {
    for _ in $(seq 1 300); do steady "$1" && return 0; sleep 1; done
    echo "$1 did not reach steady state" >&2; tail -20 "$DIR/$1"/*.log >&2; exit 1
}
wait_steady pgw; wait_steady pat
sleep 30

# 1. Steady state, counted from the audit log.
T0=$(date -u +%s.%N); sleep "$WINDOW"; T1=$(date -u +%s.%N)
sleep 2
python3 - "$CP/audit.log" "$T0" "$T1" >"$DIR/steady.txt" <<'PY'
import json, sys, datetime
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
count = {}
for line in open(path):
    e = json.loads(line)
    if e.get("stage") != "ResponseComplete" or e["user"]["username"] != "agent":
        continue
    t = ts(e["requestReceivedTimestamp"])
    if not (t0 <= t < t1):
        continue
    ns = (e.get("objectRef") or {}).get("namespace", "-")
    verb = e["verb"]
    c = count.setdefault(ns, {"all": 0, "write": 0, "verbs": {}})
    c["all"] += 1
    if verb in ("create", "update", "patch", "delete", "deletecollection"):
        c["write"] += 1
    key = verb + " " + (e.get("objectRef") or {}).get("resource", "?")
    c["verbs"][key] = c["verbs"].get(key, 0) + 1
w = t1 - t0
for ns, label in (("pgw", "pgwarden"), ("pat", "patroni 3.0.2")):
    c = count.get(ns, {"all": 0, "write": 0, "verbs": {}})
    print(f"{label:14s} requests/s {c['all']/w:6.3f}  writes/s {c['write']/w:6.3f}  ({c['all']} requests, {c['write']} writes in {w:.0f} s: " +
          ", ".join(f"{k} {v}" for k, v in sorted(c["verbs"].items())) + ")")
PY

# 2./3. A client writing every 20 ms through the read-write host list.
writer() { # ns out
    local hosts="" portlist=""
    for m in m0 m1 m2; do hosts+="127.0.0.1,"; portlist+="${PGPORT[$1/$m]},"; done
    /usr/bin/python3 - "${hosts%,}" "${portlist%,}" "$2" >/dev/null 2>&1 <<'PY' &
import sys, time, psycopg2
hosts, ports, out = sys.argv[1], sys.argv[2], sys.argv[3]
dsn = f"host={hosts} port={ports} user=postgres password=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2"
conn = None
f = open(out, "w", buffering=1)
while True:
    try:
        if conn is None:
            conn = psycopg2.connect(dsn); conn.autocommit = True
            conn.cursor().execute("CREATE TABLE IF NOT EXISTS bench (t float8)")
        conn.cursor().execute("INSERT INTO bench VALUES (%s)", (time.time(),))
        f.write(f"{time.time()}\n")
    except Exception:
        try:
            conn and conn.close()
        except Exception:
            pass
        conn = None
    time.sleep(0.02)
PY
    echo $!
}
gap() { # file from
    python3 - "$1" "$2" <<'PY'
import sys
ts = [float(l) for l in open(sys.argv[1]) if l.strip()]
frm = float(sys.argv[2])
ts = [t for t in ts if t >= frm - 5]
g = max((b - a for a, b in zip(ts, ts[1:])), default=float("nan"))
print(f"{g:.2f}")
PY
}
first_after() { # file t
    python3 - "$1" "$2" <<'PY'
import sys
t = float(sys.argv[2])
after = [float(l) for l in open(sys.argv[1]) if l.strip() and float(l) > t]
print(f"{after[0] - t:.2f}" if after else "none")
PY
}
declare -A SWITCH CRASH
for ns in pgw pat; do
    W=$(writer $ns "$DIR/$ns/writes-switch.txt"); PIDS+=($W)
    sleep 5
    L=$(leader_of $ns); C=$([ "$L" = m0 ] && echo m1 || echo m0)
    T=$(date +%s.%N)
    curl -s -o /dev/null -X POST "http://127.0.0.1:${APIPORT[$ns/$L]}/switchover" \
        -H 'Content-Type: application/json' -d "{\"leader\":\"$L\",\"candidate\":\"$C\"}"
    sleep 20
    kill "$W"
    SWITCH[$ns]=$(gap "$DIR/$ns/writes-switch.txt" "$T")
    wait_steady $ns; sleep 10
    W=$(writer $ns "$DIR/$ns/writes-crash.txt"); PIDS+=($W)
    sleep 5
    L=$(leader_of $ns)
    PM=$(head -1 "$DIR/$ns/$L/data/postmaster.pid")
    T=$(date +%s.%N)
    kill -9 "${AGENT[$ns/$L]}" "$PM" 2>/dev/null || true
    for _ in $(seq 1 120); do
        [ "$(first_after "$DIR/$ns/writes-crash.txt" "$T")" != none ] && break
        sleep 1
    done
    kill "$W"
    CRASH[$ns]=$(first_after "$DIR/$ns/writes-crash.txt" "$T")
done

echo "kube-apiserver v1.37.2 + etcd v3.7.3 on loopback, $(nproc) CPUs; 3 members each, ttl 30, loop_wait 10"
echo "== steady state over ${WINDOW} s (audit log; per cluster)"
cat "$DIR/steady.txt"
echo "== planned switchover, longest write gap (s): pgwarden ${SWITCH[pgw]}  patroni ${SWITCH[pat]}"
echo "== primary's agent + postmaster killed -9, to first write (s): pgwarden ${CRASH[pgw]}  patroni ${CRASH[pat]}"
