#!/bin/bash
# The image's entrypoint (under tini): where the member's configuration comes from.
#
#   arguments given          run them as they are: `patronictl list`, `pgwarden /path.yml`, `bash`
#   YAML in /etc/pgwarden    `pgwarden /etc/pgwarden`: every *.yml / *.yaml file there, merged
#                            in name order (one file mounted at /etc/pgwarden/patroni.yml, or a
#                            ConfigMap's keys), with PATRONI_* variables applied over them
#   PATRONI_CONFIGURATION    `pgwarden`: that whole YAML document, as Patroni reads it
#   otherwise                PATRONI_* variables over the image's defaults
#                            (/usr/local/share/pgwarden/env-defaults.yml: data directory,
#                            listen addresses, a bootstrap section), the member's name and
#                            connect addresses from the container's when unset
#
# The defaults apply only without a file: a variable set in the image would override what a
# mounted file says.
set -euo pipefail

CONFIG_DIR=/etc/pgwarden

if [ $# -gt 0 ]; then
    exec "$@"
fi

shopt -s nullglob
yaml=("$CONFIG_DIR"/*.yml "$CONFIG_DIR"/*.yaml)
if [ ${#yaml[@]} -gt 0 ]; then
    exec /usr/local/bin/pgwarden "$CONFIG_DIR"
fi

if [ -n "${PATRONI_CONFIGURATION:-}" ]; then
    exec /usr/local/bin/pgwarden
fi

# Whether any PATRONI_* variable is set to something (Patroni ignores empty ones).
any_patroni_variable() {
    local v
    for v in $(compgen -e); do
        if [[ $v == PATRONI_* && -n ${!v} ]]; then
            return 0
        fi
    done
    return 1
}

if ! any_patroni_variable; then
    cat >&2 <<EOF
pgwarden-entrypoint: no configuration. Give one of:
  - a Patroni YAML file mounted at $CONFIG_DIR/patroni.yml (or YAML files in $CONFIG_DIR),
  - PATRONI_CONFIGURATION holding the whole YAML document,
  - PATRONI_* variables: at least PATRONI_SCOPE, a store (PATRONI_ETCD3_HOSTS, or
    PATRONI_KUBERNETES_NAMESPACE and friends), PATRONI_SUPERUSER_USERNAME and _PASSWORD,
    PATRONI_REPLICATION_USERNAME and _PASSWORD.
See docker/README.md.
EOF
    exit 2
fi

# This container's first address, for the addresses other members and clients connect to.
own_ip() {
    local ip
    ip=$(hostname -i 2>/dev/null | awk '{ print $1 }')
    echo "${ip:-127.0.0.1}"
}

: "${PATRONI_NAME:=$(hostname)}"
if [ -z "${PATRONI_POSTGRESQL_CONNECT_ADDRESS:-}" ]; then
    pg_listen=${PATRONI_POSTGRESQL_LISTEN:-0.0.0.0:5432}
    PATRONI_POSTGRESQL_CONNECT_ADDRESS=$(own_ip):${pg_listen##*:}
fi
if [ -z "${PATRONI_RESTAPI_CONNECT_ADDRESS:-}" ]; then
    api_listen=${PATRONI_RESTAPI_LISTEN:-0.0.0.0:8008}
    PATRONI_RESTAPI_CONNECT_ADDRESS=$(own_ip):${api_listen##*:}
fi
export PATRONI_NAME PATRONI_POSTGRESQL_CONNECT_ADDRESS PATRONI_RESTAPI_CONNECT_ADDRESS
exec /usr/local/bin/pgwarden /usr/local/share/pgwarden/env-defaults.yml
