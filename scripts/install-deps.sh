#!/usr/bin/env bash
# Installs what pgwarden's demo and tests need, where it is missing (Debian/Ubuntu, as root or
# with sudo): PostgreSQL 15, etcd, protoc (for the etcd client's build), and the real clients
# the compatibility tests drive: Patroni's patronictl, HAProxy, pgBouncer, wrk, schemathesis;
# iproute2 and iptables for the tests that cut members off the network; libfaketime for the
# fault suite's clock skew; Docker's engine (Debian's docker.io) and debootstrap for the
# container image's test, which runs a daemon of its own.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v patronictl >/dev/null 2>&1 || need+=(patroni)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Tests that cut members off the network: namespaces, veth pairs, DROP rules.
[ -x /usr/sbin/ip ] || need+=(iproute2)
[ -x /usr/sbin/iptables ] || need+=(iptables)
# The chart's pgBackRest design is tested on real pgBackRest TLS servers.
[ -x /usr/bin/pgbackrest ] || need+=(pgbackrest)
# The fault suite moves one member's wall clock.
[ -f /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(libfaketime)
# The container test (tests/container_it.rs) runs a Docker daemon of its own and builds the
# image on a Debian base it makes itself; without recommended packages (needrestart among them).
bare=()
[ -x /usr/sbin/dockerd ] || bare+=(docker.io)
[ -x /usr/sbin/debootstrap ] || bare+=(debootstrap)

if [ ${#need[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
  echo "installing: ${need[*]} ${bare[*]}"
  $SUDO apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ${#bare[@]} -gt 0 ]; then
  # docker.io's own daemon would set iptables rules (a DROP policy on FORWARD) that break the
  # tests' network namespaces: while it installs, a policy-rc.d forbids starting services
  # (unless the machine has a policy-rc.d of its own, which is left alone).
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 0755 "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${bare[@]}" >/dev/null
  if [ -n "$policy" ]; then $SUDO rm -f "$policy"; fi
fi

# Debian's packages start their own servers; pgwarden's tests start theirs on free ports.
for svc in etcd patroni haproxy pgbouncer postgresql docker.socket docker containerd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done

if ! command -v st >/dev/null 2>&1 && command -v pip >/dev/null 2>&1; then
  pip install -q schemathesis >/dev/null 2>&1 || echo "warning: could not install schemathesis" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (1.85 or newer) with rustup first" >&2
  exit 1
fi
