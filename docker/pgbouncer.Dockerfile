# pgBouncer beside a pgwarden cluster, on the same Debian 12 base as docker/Dockerfile, run as the
# same postgres user (uid 999) under tini. Its configuration is a mounted file:
#
#   docker build -f docker/pgbouncer.Dockerfile -t pgwarden-pgbouncer docker
#   docker run -v ./pgbouncer.ini:/etc/pgbouncer/pgbouncer.ini:ro -p 6432:6432 pgwarden-pgbouncer
#
# The packaged pgbouncer.ini listens on localhost only and logs to a file: mount your own
# (logfile empty or unset so that the log goes to the container's stderr; no pidfile needed).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql \
        --shell /bin/bash postgres \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/pgwarden.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends pgbouncer tini ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql \
    && chown -R postgres:postgres /etc/pgbouncer
USER postgres
EXPOSE 6432
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/usr/sbin/pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]
