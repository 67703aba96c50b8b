//! A member of the container tests' cluster: a container of the pgwarden image on the host's
//! network, configured by `PATRONI_*` variables alone (no file), its data in a named volume
//! that the image's postgres user owns. Include it with `#[path = "docker/member.rs"] mod member;`.

#![allow(dead_code)]

use super::engine::Engine;

/// Where the image keeps the data directory's volume (owned by its postgres user).
const VOLUME_MOUNT: &str = "/var/lib/postgresql/data";

pub struct Member {
    /// The member's name, and its container's.
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    /// The container's arguments: none runs the image's entrypoint as it is.
    pub args: Vec<String>,
}

impl Member {
    /// The `PATRONI_*` variables of this member of `scope`, its store at `etcd` (`host:port`).
    pub fn env(&self, scope: &str, etcd: &str) -> Vec<(String, String)> {
        let api = format!("127.0.0.1:{}", self.api_port);
        let pg = format!("127.0.0.1:{}", self.pg_port);
        [
            ("PATRONI_NAME", self.name.as_str()),
            ("PATRONI_SCOPE", scope),
            ("PATRONI_ETCD3_HOSTS", etcd),
            ("PATRONI_RESTAPI_LISTEN", &api),
            ("PATRONI_RESTAPI_CONNECT_ADDRESS", &api),
            ("PATRONI_POSTGRESQL_LISTEN", &pg),
            ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", &pg),
            (
                "PATRONI_POSTGRESQL_DATA_DIR",
                "/var/lib/postgresql/data/pgdata",
            ),
            ("PATRONI_SUPERUSER_USERNAME", "postgres"),
            ("PATRONI_SUPERUSER_PASSWORD", "postgres"),
            ("PATRONI_REPLICATION_USERNAME", "replicator"),
            ("PATRONI_REPLICATION_PASSWORD", "replicator"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// `docker run -d` of this member (a new container; its volume is made on first use).
    pub fn run(&self, engine: &Engine, scope: &str, etcd: &str) {
        let volume = format!("{}-data:{VOLUME_MOUNT}", self.name);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &self.name,
            "--network",
            "host",
            "-v",
            &volume,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in self.env(scope, etcd) {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(engine.pgwarden_image.clone());
        args.extend(self.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        engine.docker_ok(&args);
    }
}
