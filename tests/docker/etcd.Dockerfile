# etcd for the container test only (tests/container_it.rs): Debian's etcd-server on the same
# base as the member images, so that the store runs as a container beside them. Not an image
# for users: they run their own etcd cluster.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends etcd-server tini \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/etcd"]
