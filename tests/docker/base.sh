#!/usr/bin/env bash
# The Debian 12 base image the container tests build on, made here because no registry is
# reachable: a `debootstrap --variant=minbase bookworm` root, slimmed the way Docker's
# debian:bookworm-slim is (no documentation, manual pages or translations, apt's caches
# cleaned), imported into the engine at DOCKER_HOST.
#
#   DOCKER_HOST=unix://... tests/docker/base.sh     prints the image's name on stdout
#
# The root's tarball is cached, keyed by the month it was made in (Debian's point releases
# land in the mirror over time):
# ${PGWARDEN_DOCKER_CACHE:-~/.cache/pgwarden-docker}/bookworm-slim-YYYYMM.tar.
set -euo pipefail

IMAGE=pgwarden-test/debian:bookworm-slim
MIRROR=${PGWARDEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${PGWARDEN_DOCKER_CACHE:-$HOME/.cache/pgwarden-docker}
TARBALL=$CACHE/bookworm-slim-$(date -u +%Y%m).tar
DOCKER=${DOCKER:-/usr/bin/docker}

log() { echo "base.sh: $*" >&2; }

if [ -z "${DOCKER_HOST:-}" ]; then
    log "DOCKER_HOST is not set (tests/docker/engine.sh up DIR prints it)"
    exit 2
fi
if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi

mkdir -p "$CACHE"
# Two test runs may want it at once: one makes it, the other waits and reuses it.
exec 9>"$CACHE/.base.lock"
flock 9

if [ ! -s "$TARBALL" ]; then
    if [ ! -x /usr/sbin/debootstrap ]; then
        log "no /usr/sbin/debootstrap: install Debian's debootstrap (scripts/install-deps.sh does)"
        exit 1
    fi
    ROOTFS=$(mktemp -d /tmp/pgwarden-rootfs-XXXXXX)
    cleanup() {
        # debootstrap mounts /proc and /sys in the root while it runs; a failed run may leave them.
        awk -v r="$ROOTFS/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$ROOTFS" "$TARBALL.tmp.$$"
    }
    trap cleanup EXIT
    log "debootstrap bookworm from $MIRROR (about a minute, once a month)"
    nice -n 19 /usr/sbin/debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" \
        >"$ROOTFS.log" 2>&1 || {
        tail -20 "$ROOTFS.log" >&2
        rm -f "$ROOTFS.log"
        exit 1
    }
    rm -f "$ROOTFS.log"
    # What the slim variant leaves out, now and for every package installed later.
    cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/pgwarden-slim" <<'EOF'
# As Docker's debian:*-slim images: no documentation, manual pages or translations in a
# container (copyright files stay).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$ROOTFS/usr/share/man/"* "$ROOTFS/usr/share/info/"* "$ROOTFS/usr/share/groff/"* \
        "$ROOTFS/usr/share/lintian/"* "$ROOTFS/usr/share/locale/"*
    # No recommended packages, no downloaded .debs or package lists kept in a layer.
    cat >"$ROOTFS/etc/apt/apt.conf.d/pgwarden-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
    cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$ROOTFS/etc/apt/sources.list"
    rm -rf "$ROOTFS/var/lib/apt/lists/"* "$ROOTFS/var/cache/apt/"*.bin \
        "$ROOTFS/var/cache/apt/archives/"*.deb "$ROOTFS/var/log/"*.log "$ROOTFS/tmp/"*
    # The machine's own name and resolver come from the engine at run time.
    : >"$ROOTFS/etc/hostname"
    : >"$ROOTFS/etc/resolv.conf"
    tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.tmp.$$" .
    mv -f "$TARBALL.tmp.$$" "$TARBALL"
    # Older months' tarballs are stale.
    find "$CACHE" -maxdepth 1 -name 'bookworm-slim-*.tar' ! -path "$TARBALL" -delete
fi

log "importing $TARBALL as $IMAGE"
"$DOCKER" import --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
