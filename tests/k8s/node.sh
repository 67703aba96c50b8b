#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for the pod tests (tests/pods_it.rs): the test
# control plane of cluster.sh plus a node (containerd, kubelet, kube-proxy, CNI), the
# controllers and scheduler, and CoreDNS, all built from their Go modules and cached outside the
# repository, and the images pods run (pgwarden, pgBouncer, the sandbox's pause) built by a
# Docker engine of its own and imported into containerd, since no registry is reachable.
#
#   tests/k8s/node.sh build        build (or reuse) every binary; prints their directory
#   tests/k8s/node.sh up DIR       start everything, import the images, wait for the node to be
#                                  Ready; writes DIR/kubeconfig (also printed) and DIR/env
#   tests/k8s/node.sh images DIR   rebuild the images and import them again (after a change)
#   tests/k8s/node.sh down DIR     stop and remove all that `up DIR` made (below)
#
# Needs root. One node at a time on a machine (a lock: the kubelet and kube-proxy own host-wide
# things). What it makes outside DIR, and `down` removes: the address NODE_IP on lo, the bridge
# pgwnode0 and the pods' network namespaces (under containerd's state directory), iptables
# chains KUBE-* and CNI-*, the cgroup /pgwarden-node in every hierarchy, containerd's state in
# /run/pgwarden-node-*, symlinks in /var/log/containers into DIR, and the sysctls it changed
# (ip_forward, bridge-nf-call-iptables), put back as they were.
#
# Addresses, all its own and never routed off the machine: NODE_IP (10.99.0.1) for the node,
# its API server and CoreDNS; pods in 10.98.0.0/24 on the bridge; Services in 10.97.0.0/24.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$ROOT/tests/lib/go-binary.sh"

KV=v1.37.2
CTRD=$(awk '$1 == "github.com/containerd/containerd/v2" { print $2 }' "$HERE/bins/containerd/go.mod")
CNIV=$(awk '$1 == "github.com/containernetworking/plugins" { print $2 }' "$HERE/bins/cni/go.mod")
DNSV=$(awk '$1 == "github.com/coredns/coredns" { print $2 }' "$HERE/bins/coredns/go.mod")
BIN=${PGWARDEN_NODE_BINS:-$HOME/.cache/pgwarden-k8s/node-$KV-containerd-$CTRD-cni-$CNIV-coredns-$DNSV}

NODE=pgwarden-node
NODE_IP=10.99.0.1
POD_CIDR=10.98.0.0/24
SERVICE_CIDR=10.97.0.0/24
SERVICE_IP=10.97.0.1
BRIDGE=pgwnode0
CGROUP=pgwarden-node
LOCK=/run/pgwarden-node.lock
PAUSE_IMAGE=docker.io/pgwarden-test/pause:1

log() { echo "node.sh: $*" >&2; }

build() {
    local minor=${KV#v1.}
    minor=${minor%%.*}
    local kldf="-s -w -X k8s.io/component-base/version.gitVersion=$KV"
    kldf="$kldf -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    kldf="$kldf -X k8s.io/component-base/version.gitTreeState=clean"
    kldf="$kldf -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
    local c
    for c in kubelet kube-controller-manager kube-scheduler kube-proxy kubectl; do
        go_binary "$BIN/$c" "$HERE/bins/node" "k8s.io/kubernetes/cmd/$c" "$kldf" \
            "$c $KV (minutes on 2 cores, once)" >/dev/null
    done
    local cldf="-s -w -X github.com/containerd/containerd/v2/version.Version=$CTRD"
    for c in containerd containerd-shim-runc-v2 ctr; do
        go_binary "$BIN/$c" "$HERE/bins/containerd" "github.com/containerd/containerd/v2/cmd/$c" \
            "$cldf" "$c $CTRD (minutes, once)" >/dev/null
    done
    local p
    for p in main/bridge ipam/host-local main/loopback meta/portmap; do
        go_binary "$BIN/cni/${p#*/}" "$HERE/bins/cni" \
            "github.com/containernetworking/plugins/plugins/$p" "-s -w" "CNI $p $CNIV (once)" >/dev/null
    done
    go_binary "$BIN/coredns" "$HERE/bins/coredns" github.com/coredns/coredns "-s -w" \
        "CoreDNS $DNSV (minutes, once)" >/dev/null
    # The sandbox's process: a static C program (no registry to pull registry.k8s.io/pause).
    if [ ! -x "$BIN/pause" ]; then
        cc -static -Os -s -o "$BIN/pause.tmp" "$HERE/pause/pause.c"
        mv "$BIN/pause.tmp" "$BIN/pause"
    fi
    echo "$BIN"
}

# Where containerd keeps its sockets and the pods' network namespaces: a short path (a socket's
# is at most 108 bytes), one per DIR.
state_dir() { echo "/run/pgwarden-node-$(echo "$1" | md5sum | cut -c1-10)"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
    local name=$1 D=$2
    shift 2
    setsid "$@" </dev/null >>"$D/logs/$name.log" 2>&1 &
    echo $! >"$D/pids/$name"
}

alive() { [ -f "$1/pids/$2" ] && kill -0 "$(cat "$1/pids/$2")" 2>/dev/null; }

# Polls CMD every half second for up to SECONDS; on failure names WHAT and shows LOGFILE's end.
wait_for() {
    local what=$1 seconds=$2 logfile=$3
    shift 3
    local i
    for i in $(seq 1 $((seconds * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "$what: not within $seconds s; the end of $logfile:"
    tail -25 "$logfile" >&2
    return 1
}

kubectl_() { "$BIN/kubectl" --kubeconfig "$D/kubeconfig" "$@"; }

sysctl_set() {
    local key=$1 value=$2 file
    file=/proc/sys/${key//.//}
    [ -f "$file" ] || { log "no $file (is br_netfilter loaded?)"; return 1; }
    # The first `up` records what it found, and `down` puts it back.
    [ -f "$D/sysctl.$key" ] || cat "$file" >"$D/sysctl.$key"
    echo "$value" >"$file"
}

write_configs() {
    local S=$1 kport=$2 pport=$3 rport=$4 hport=$5
    mkdir -p "$D/cni/net.d" "$D/cni/ipam" "$D/pod-logs" "$D/kubelet"
    cat >"$D/containerd.toml" <<TOML
version = 3
root = "$D/containerd"
state = "$S/state"

[grpc]
  address = "$S/containerd.sock"
[ttrpc]
  address = "$S/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '$PAUSE_IMAGE'

[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE: without this, runc fails every sandbox asking for -998.
  restrict_oom_score_adj = true
  # The pods' network namespaces under the state directory, which down removes.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '/usr/sbin/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$BIN/cni']
    conf_dir = '$D/cni/net.d'

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
TOML
    cat >"$D/cni/net.d/10-pgwnode.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "pgwnode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$D/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
    cat >"$D/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kport
readOnlyPort: 0
healthzPort: 0
# Our machines run cgroup v1 (hybrid), which this kubelet refuses unless told.
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
containerRuntimeEndpoint: unix://$S/containerd.sock
imageServiceEndpoint: unix://$S/containerd.sock
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
podLogsDir: $D/pod-logs
# A test node: the API server is the only caller, and nothing routes to NODE_IP from outside.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
    cat >"$D/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $D/kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$hport
metricsBindAddress: 127.0.0.1:$pport
# Leave the host's conntrack table and route_localnet alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
YAML
    # No forwarder: nothing leaves the machine, so only the cluster's names resolve.
    cat >"$D/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:$rport
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $D/kubeconfig test
        pods insecure
        ttl 5
    }
    cache 5
}
COREFILE
}

images() {
    local S
    S=$(state_dir "$D")
    log "images: a Docker engine of its own builds pgwarden, pgBouncer and pause"
    local E=$D/docker
    bash "$ROOT/tests/docker/engine.sh" up "$E" >/dev/null
    export DOCKER_HOST=unix://$E/docker.sock
    local status=0
    (
        set -e
        bash "$ROOT/tests/docker/build.sh" >/dev/null
        tar -C "$BIN" -c pause | /usr/bin/docker import -c 'ENTRYPOINT ["/pause"]' - "${PAUSE_IMAGE#docker.io/}" >/dev/null
        /usr/bin/docker save pgwarden-test/pgwarden:latest pgwarden-test/pgbouncer:latest "${PAUSE_IMAGE#docker.io/}" |
            "$BIN/ctr" --address "$S/containerd.sock" -n k8s.io images import - >&2
    ) || status=$?
    bash "$ROOT/tests/docker/engine.sh" down "$E" >/dev/null 2>&1 || true
    unset DOCKER_HOST
    [ "$status" = 0 ] || { log "images: failed"; return 1; }
}

up() {
    [ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
    for tool in /usr/sbin/runc iptables ip; do
        command -v "$tool" >/dev/null || { log "no $tool (scripts/install-deps.sh installs it)"; exit 1; }
    done
    build >/dev/null
    mkdir -p "$D/logs" "$D/pids"
    if alive "$D" kubelet; then
        log "already up in $D"
        echo "$D/kubeconfig"
        return 0
    fi
    exec 8>>"$LOCK"
    if ! flock -n 8; then
        log "another node runs on this machine (lock $LOCK held): one at a time"
        exit 1
    fi
    echo "$D" >"$LOCK"
    local S
    S=$(state_dir "$D")
    mkdir -p "$S"
    echo "$S" >"$D/state-dir"

    # The node's address, the kernel's forwarding for pods, Services' NAT seen on the bridge.
    ip addr show dev lo | grep -q " $NODE_IP/32 " || ip addr add "$NODE_IP/32" dev lo
    touch "$D/lo-address"
    [ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null || true
    sysctl_set net.ipv4.ip_forward 1
    sysctl_set net.bridge.bridge-nf-call-iptables 1
    local ctl
    for ctl in /sys/fs/cgroup/*/; do
        [ -e "$ctl/cgroup.procs" ] && mkdir -p "$ctl$CGROUP"
    done

    log "control plane on $NODE_IP"
    K8S_ADDR=$NODE_IP K8S_SANS=$SERVICE_IP K8S_SERVICE_CIDR=$SERVICE_CIDR K8S_DISABLE_ADMISSION= \
        K8S_APISERVER_ARGS="--kubelet-preferred-address-types=InternalIP --advertise-address=$NODE_IP" \
        bash "$HERE/cluster.sh" up "$D/cp" >/dev/null
    cp "$D/cp/kubeconfig" "$D/kubeconfig"

    local kport pport rport hport
    kport=$(free_port)
    pport=$(free_port)
    rport=$(free_port)
    hport=$(free_port)
    write_configs "$S" "$kport" "$pport" "$rport" "$hport"

    log "containerd $CTRD"
    start containerd "$D" env PATH="$BIN:$PATH" "$BIN/containerd" --config "$D/containerd.toml"
    wait_for containerd 60 "$D/logs/containerd.log" \
        "$BIN/ctr" --address "$S/containerd.sock" version
    images

    log "controllers, scheduler, CoreDNS"
    start controller-manager "$D" "$BIN/kube-controller-manager" --kubeconfig "$D/kubeconfig" \
        --leader-elect=false --secure-port=0 --use-service-account-credentials=false \
        --service-account-private-key-file="$D/cp/pki/sa.key" --root-ca-file="$D/cp/pki/ca.crt" \
        --cluster-name="$NODE" --controllers='*'
    start scheduler "$D" "$BIN/kube-scheduler" --kubeconfig "$D/kubeconfig" \
        --leader-elect=false --secure-port=0
    start coredns "$D" "$BIN/coredns" -conf "$D/Corefile"

    log "kubelet and kube-proxy"
    start kubelet "$D" env PATH="$BIN:$PATH" "$BIN/kubelet" --config "$D/kubelet.yaml" \
        --kubeconfig "$D/kubeconfig" --root-dir "$D/kubelet" --cert-dir "$D/kubelet-pki" \
        --hostname-override "$NODE" --node-ip "$NODE_IP"
    start kube-proxy "$D" env PATH="$BIN:$PATH" "$BIN/kube-proxy" --config "$D/kube-proxy.yaml"

    # kube-proxy's healthz answers 200 once it has written the Services' rules.
    wait_for kube-proxy 60 "$D/logs/kube-proxy.log" curl -sf --max-time 2 "http://127.0.0.1:$hport/healthz"
    wait_for "node $NODE Ready" 180 "$D/logs/kubelet.log" \
        sh -c "'$BIN/kubectl' --kubeconfig '$D/kubeconfig' get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
    wait_for "the default ServiceAccount" 60 "$D/logs/controller-manager.log" \
        kubectl_ get serviceaccount default
    # CoreDNS's `ready` answers once it has the cluster's Services.
    wait_for "CoreDNS" 60 "$D/logs/coredns.log" curl -sf --max-time 2 "http://127.0.0.1:$rport/ready"
    cat >"$D/env" <<ENV
KUBECONFIG=$D/kubeconfig
PGWARDEN_NODE_BINS=$BIN
PGWARDEN_NODE_NAME=$NODE
PGWARDEN_NODE_IP=$NODE_IP
PGWARDEN_NODE_CONTAINERD=$S/containerd.sock
ENV
    log "up: node $NODE Ready; kubeconfig $D/kubeconfig; kubectl at $BIN/kubectl"
    echo "$D/kubeconfig"
}

stop_pid() {
    local name=$1 f=$D/pids/$1
    [ -f "$f" ] || return 0
    local pid
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

# Removes the rules of the tables' chains named KUBE-* and CNI-* (kube-proxy's, the kubelet's,
# the bridge plugin's masquerading), and those chains, leaving every other rule as it is.
iptables_clean() {
    local cmd table
    for cmd in iptables ip6tables; do
        command -v "$cmd-save" >/dev/null || continue
        for table in filter nat mangle; do
            local saved
            saved=$("$cmd-save" -t "$table" 2>/dev/null) || continue
            grep -qE 'KUBE-|CNI-' <<<"$saved" || continue
            grep -vE 'KUBE-|CNI-' <<<"$saved" | "$cmd-restore" -T "$table" 2>/dev/null ||
                log "could not clean $cmd's $table table"
        done
    done
}

down() {
    [ -d "$D" ] || return 0
    local S
    S=$(cat "$D/state-dir" 2>/dev/null || state_dir "$D")
    # Pods first, through the kubelet, so that the CNI plugin tears down their network.
    if alive "$D" kubelet && [ -f "$D/kubeconfig" ]; then
        # Scaled to zero first, so that no controller makes them again.
        kubectl_ scale statefulset,deployment --all --all-namespaces --replicas=0 >/dev/null 2>&1 || true
        kubectl_ delete pods --all --all-namespaces --grace-period=0 --force --wait=false \
            >/dev/null 2>&1 || true
        for _ in $(seq 1 60); do
            [ -z "$(kubectl_ get pods -A -o name 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop_pid kube-proxy
    stop_pid kubelet
    stop_pid scheduler
    stop_pid controller-manager
    stop_pid coredns
    # What the kubelet left running: containers killed, then their shims.
    if alive "$D" containerd; then
        local ctr=("$BIN/ctr" --address "$S/containerd.sock" -n k8s.io) t
        for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
            "${ctr[@]}" tasks kill -s KILL "$t" >/dev/null 2>&1 || true
        done
        sleep 1
        for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
            "${ctr[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true
        done
    fi
    stop_pid containerd
    # Shims run on after containerd; each names our state directory on its command line.
    local pid
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $S/containerd.sock" 2>/dev/null); do
        kill -9 "$pid" 2>/dev/null || true
    done
    bash "$HERE/cluster.sh" down "$D/cp" >/dev/null 2>&1 || true
    [ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    iptables_clean
    # Mounts: the pods' volumes and network namespaces, containerd's snapshots, the kubelet's
    # own bind mount of its root; deepest first.
    local m
    for m in $(awk -v d="$D/" -v s="$S/" 'index($2, d) == 1 || index($2, s) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    umount -l "$D/kubelet" 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    local ctl
    for ctl in /sys/fs/cgroup/*/"$CGROUP"; do
        [ -d "$ctl" ] || continue
        find "$ctl" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    if [ -f "$D/lo-address" ]; then
        ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
        rm -f "$D/lo-address"
    fi
    local f
    for f in "$D"/sysctl.*; do
        [ -f "$f" ] || continue
        local key=${f##*/sysctl.}
        cat "$f" >"/proc/sys/${key//.//}" 2>/dev/null || true
        rm -f "$f"
    done
    for f in /var/log/containers/*; do
        [ -L "$f" ] && case $(readlink "$f") in "$D"/*) rm -f "$f" ;; esac
    done
    rm -rf "$S"
    if [ -f "$LOCK" ] && [ "$(cat "$LOCK" 2>/dev/null)" = "$D" ]; then : >"$LOCK"; fi
    log "down: $D"
}

cmd=${1:-}
case "$cmd" in
build) build ;;
up | down | images)
    [ -n "${2:-}" ] || { echo "usage: node.sh $cmd DIR" >&2; exit 2; }
    mkdir -p "$2"
    D=$(cd "$2" && pwd)
    "$cmd"
    ;;
*) echo "usage: node.sh build | up DIR | images DIR | down DIR" >&2; exit 2 ;;
esac
