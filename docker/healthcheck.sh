#!/bin/bash
# The image's HEALTHCHECK: `GET /liveness` on the member's REST API answers 200 (the agent's
# loop is running). The image has no curl: bash's /dev/tcp speaks the one request.
#
# The API's address is, in this order: PGWARDEN_HEALTHCHECK_ADDRESS (host:port),
# PATRONI_RESTAPI_LISTEN, `restapi: listen:` in the YAML files of /etc/pgwarden, 127.0.0.1:8008
# (an address of 0.0.0.0, :: or no host is asked on 127.0.0.1). With TLS on the API
# (`restapi.certfile`) only the port is checked: bash speaks no TLS.
set -uo pipefail

CONFIG_DIR=/etc/pgwarden

# `key:` of the top-level `restapi:` section of the YAML files (plain block style only).
from_yaml() {
    local key=$1
    shopt -s nullglob
    local files=("$CONFIG_DIR"/*.yml "$CONFIG_DIR"/*.yaml)
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v key="$key" '
        /^[^[:space:]#]/ { in_api = ($0 ~ /^restapi:/) }
        in_api && $1 == key ":" { v = $2; gsub(/["'\'']/, "", v); last = v }
        END { if (last != "") print last }
    ' "${files[@]}"
}

addr=${PGWARDEN_HEALTHCHECK_ADDRESS:-${PATRONI_RESTAPI_LISTEN:-$(from_yaml listen)}}
addr=${addr:-127.0.0.1:8008}
port=${addr##*:}
host=${addr%:*}
host=${host#[}
host=${host%]}
case "$host" in
"" | 0.0.0.0 | "::" | "*") host=127.0.0.1 ;;
esac

tls=${PATRONI_RESTAPI_CERTFILE:-$(from_yaml certfile)}
if [ -n "$tls" ]; then
    exec timeout 4 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
fi

status=$(timeout 4 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET /liveness HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3
    head -n 1 <&3
' _ "$host" "$port" 2>/dev/null)
case "$status" in
"HTTP/1."?" 200"*) exit 0 ;;
*)
    echo "GET http://$host:$port/liveness: ${status:-no answer}"
    exit 1
    ;;
esac
