#!/usr/bin/env bash
# A real Kubernetes control plane (kube-apiserver + etcd, no controllers) on loopback, for tests.
#
#   tests/k8s/cluster.sh build          build (or reuse) the binaries; prints their directory
#   tests/k8s/cluster.sh up DIR         start etcd + kube-apiserver; writes DIR/kubeconfig
#   tests/k8s/cluster.sh down DIR       stop what `up DIR` started (by the PIDs it recorded)
#   tests/k8s/cluster.sh pause DIR      SIGSTOP the API server (an outage that keeps sockets open)
#   tests/k8s/cluster.sh resume DIR     SIGCONT it
#   tests/k8s/cluster.sh kill DIR       SIGKILL the API server (etcd keeps the data)
#   tests/k8s/cluster.sh start DIR      start the API server again after `kill`
#
# K8S_ADDR (default 127.0.0.1) is the address the API server listens on and the kubeconfig
# names: a test running the control plane in a network namespace of its own gives that
# namespace's address (and runs `up` and `start` inside it). K8S_SANS adds IP addresses the
# server's certificate is valid for (a proxy in front of it), comma-separated.
# K8S_SERVICE_CIDR (default 10.0.0.0/24), K8S_DISABLE_ADMISSION (default ServiceAccount: no
# controller creates service accounts here) and K8S_APISERVER_ARGS (more flags) are for a
# cluster with nodes (tests/k8s/node.sh); `up` keeps them for `start`.
#
# Binaries are built from their Go modules (go.mod/go.sum under tests/k8s/bins/) into a cache
# outside the repository, keyed by version: ${PGWARDEN_K8S_BINS:-~/.cache/pgwarden-k8s/<k>-<e>}.
# Every request is written to DIR/audit.log (one JSON line each) so benchmarks can count them.
set -euo pipefail

KV=v1.37.2
ADDR=${K8S_ADDR:-127.0.0.1}
EV=v3.7.3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${PGWARDEN_K8S_BINS:-$HOME/.cache/pgwarden-k8s/$KV-$EV}

log() { echo "cluster.sh: $*" >&2; }

build() {
    mkdir -p "$BIN"
    export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
    if [ ! -x "$BIN/etcd" ]; then
        log "building etcd $EV (a few minutes, once)"
        (cd "$HERE/bins/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
        mv "$BIN/etcd.tmp" "$BIN/etcd"
    fi
    if [ ! -x "$BIN/kube-apiserver" ]; then
        log "building kube-apiserver $KV (15-30 minutes on 2 cores, once)"
        local minor=${KV#v1.}; minor=${minor%%.*}
        local ldf="-s -w -X k8s.io/component-base/version.gitVersion=$KV"
        ldf="$ldf -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
        ldf="$ldf -X k8s.io/component-base/version.gitTreeState=clean"
        ldf="$ldf -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
        (cd "$HERE/bins/apiserver" && go build -trimpath -ldflags "$ldf" -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
        mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
    fi
    echo "$BIN"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pki() {
    local P=$1
    mkdir -p "$P"
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=pgwarden-test-ca" \
        -keyout "$P/ca.key" -out "$P/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
        -keyout "$P/apiserver.key" -out "$P/apiserver.csr" 2>/dev/null
    local sans="DNS:localhost,IP:127.0.0.1,IP:$ADDR" ip
    for ip in ${K8S_SANS:+${K8S_SANS//,/ }}; do sans="$sans,IP:$ip"; done
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' "$sans" >"$P/san.ext"
    openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
        -days 7 -extfile "$P/san.ext" -out "$P/apiserver.crt" 2>/dev/null
    openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
    openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
    echo 'pgwarden-admin-token,admin,admin,"system:masters"' >"$P/tokens.csv"
    cat >"$P/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
YAML
}

start_apiserver() {
    local D=$1
    local EP AP
    # What `up` was given, for a restart by `start`.
    # shellcheck disable=SC1091
    [ -f "$D/apiserver.env" ] && . "$D/apiserver.env"
    EP=$(cat "$D/etcd.port")
    AP=$(cat "$D/apiserver.port")
    "$BIN/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$EP" \
        --bind-address="$ADDR" --secure-port="$AP" \
        --tls-cert-file="$D/pki/apiserver.crt" --tls-private-key-file="$D/pki/apiserver.key" \
        --client-ca-file="$D/pki/ca.crt" --token-auth-file="$D/pki/tokens.csv" \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$D/pki/sa.pub" --service-account-signing-key-file="$D/pki/sa.key" \
        --service-cluster-ip-range="${K8S_SERVICE_CIDR:-10.0.0.0/24}" \
        --authorization-mode=RBAC --disable-admission-plugins="${K8S_DISABLE_ADMISSION-ServiceAccount}" \
        --allow-privileged=true ${K8S_APISERVER_ARGS:-} \
        --audit-policy-file="$D/pki/audit-policy.yaml" --audit-log-path="$D/audit.log" \
        --audit-log-format=json --audit-log-mode=batch --audit-log-batch-max-wait=1s \
        --cert-dir="$D/certdir" --profiling=false </dev/null >>"$D/apiserver.log" 2>&1 &
    echo $! >"$D/apiserver.pid"
    local i
    for i in $(seq 1 240); do
        if curl -sf --max-time 2 --cacert "$D/pki/ca.crt" -H 'Authorization: Bearer pgwarden-admin-token' \
            "https://$ADDR:$AP/readyz" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$(cat "$D/apiserver.pid")" 2>/dev/null; then
            log "kube-apiserver exited; see $D/apiserver.log"; tail -20 "$D/apiserver.log" >&2; return 1
        fi
        sleep 0.5
    done
    log "kube-apiserver not ready after 120 s; see $D/apiserver.log"
    return 1
}

up() {
    local D=$1
    build >/dev/null
    mkdir -p "$D"
    D=$(cd "$D" && pwd)
    if [ -f "$D/apiserver.pid" ] && kill -0 "$(cat "$D/apiserver.pid")" 2>/dev/null; then
        log "already up in $D"; echo "$D/kubeconfig"; return 0
    fi
    rm -rf "$D/pki" "$D/etcd-data" "$D/certdir" "$D/audit.log"
    pki "$D/pki"
    {
        printf 'K8S_SERVICE_CIDR=%q\n' "${K8S_SERVICE_CIDR:-10.0.0.0/24}"
        printf 'K8S_DISABLE_ADMISSION=%q\n' "${K8S_DISABLE_ADMISSION-ServiceAccount}"
        printf 'K8S_APISERVER_ARGS=%q\n' "${K8S_APISERVER_ARGS:-}"
    } >"$D/apiserver.env"
    local EP PP AP
    EP=$(free_port); PP=$(free_port); AP=$(free_port)
    echo "$EP" >"$D/etcd.port"; echo "$AP" >"$D/apiserver.port"
    "$BIN/etcd" --data-dir="$D/etcd-data" --name=test \
        --listen-client-urls="http://127.0.0.1:$EP" --advertise-client-urls="http://127.0.0.1:$EP" \
        --listen-peer-urls="http://127.0.0.1:$PP" --initial-advertise-peer-urls="http://127.0.0.1:$PP" \
        --initial-cluster="test=http://127.0.0.1:$PP" --unsafe-no-fsync \
        --log-level=warn </dev/null >"$D/etcd.log" 2>&1 &
    echo $! >"$D/etcd.pid"
    local i
    for i in $(seq 1 60); do
        curl -sf --max-time 2 "http://127.0.0.1:$EP/health" >/dev/null 2>&1 && break
        sleep 0.5
    done
    start_apiserver "$D"
    cat >"$D/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://$ADDR:$AP
    certificate-authority: $D/pki/ca.crt
users:
- name: admin
  user:
    token: pgwarden-admin-token
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
KC
    log "up: kube-apiserver https://$ADDR:$AP, kubeconfig $D/kubeconfig"
    echo "$D/kubeconfig"
}

stop_pid() {
    local f=$1
    [ -f "$f" ] || return 0
    local pid
    pid=$(cat "$f")
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

down() {
    local D=$1
    stop_pid "$D/apiserver.pid"
    stop_pid "$D/etcd.pid"
    log "down: $D"
}

cmd=${1:-}
case "$cmd" in
build) build ;;
up) up "${2:?usage: cluster.sh up DIR}" ;;
down) down "${2:?usage: cluster.sh down DIR}" ;;
pause) kill -STOP "$(cat "${2:?}/apiserver.pid")" ;;
resume) kill -CONT "$(cat "${2:?}/apiserver.pid")" ;;
kill) kill -KILL "$(cat "${2:?}/apiserver.pid")" ;;
start) build >/dev/null; start_apiserver "$(cd "${2:?}" && pwd)" ;;
*) echo "usage: cluster.sh build | up DIR | down DIR | pause DIR | resume DIR | kill DIR | start DIR" >&2; exit 2 ;;
esac
