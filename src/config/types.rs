//! The typed local configuration (`patroni.yml`). Parsing lives in `local.rs`; these are plain data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::addr::split_host_port;

/// The local configuration: file(s) merged with `PATRONI_*` overrides, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub scope: String,
    pub name: String,
    /// As written (default `/service`); the DCS layer normalises slashes like Patroni does.
    pub namespace: String,
    pub restapi: RestApi,
    pub ctl: Option<CtlConfig>,
    pub etcd3: Option<Etcd3>,
    /// Kept raw for now; the Kubernetes backend parses its own section.
    pub kubernetes: Option<Value>,
    pub bootstrap: Option<Bootstrap>,
    pub postgresql: Postgresql,
    pub tags: Map<String, Value>,
    pub watchdog: Option<Value>,
    pub log: Option<Value>,
    /// The whole merged configuration, for `GET /patroni`-style dumps and keys not typed here.
    pub raw: Value,
}

/// `restapi` section.
#[derive(Debug, Clone, PartialEq)]
pub struct RestApi {
    pub listen: String,
    pub connect_address: String,
    pub authentication: Option<BasicAuth>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    pub keyfile_password: Option<String>,
    pub cafile: Option<String>,
    pub verify_client: Option<String>,
    pub allowlist: Vec<String>,
    pub allowlist_include_members: bool,
    pub http_extra_headers: BTreeMap<String, String>,
    pub https_extra_headers: BTreeMap<String, String>,
}

/// `username`/`password` pair used by `restapi.authentication` and `ctl.authentication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

/// `ctl` section (how patronictl talks to the REST API).
#[derive(Debug, Clone, PartialEq)]
pub struct CtlConfig {
    pub authentication: Option<BasicAuth>,
    pub insecure: bool,
    pub cacert: Option<String>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    pub keyfile_password: Option<String>,
}

/// `etcd3` section, with the endpoint list resolved from `host`, `hosts`, `url` or `proxy`.
#[derive(Debug, Clone, PartialEq)]
pub struct Etcd3 {
    /// `host:port` endpoints without scheme; a missing port becomes 2379.
    pub hosts: Vec<String>,
    /// `http` or `https`.
    pub protocol: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub cacert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// DNS SRV discovery name; when set, `hosts` may be empty and the DCS layer resolves it.
    pub srv: Option<String>,
    pub srv_suffix: Option<String>,
    /// True when the endpoints came from `proxy`: use them as given, never discover cluster members.
    pub use_proxies: bool,
}

/// `bootstrap` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// Seed of the dynamic configuration, written to the DCS `config` key by the bootstrap winner.
    pub dcs: Map<String, Value>,
    /// `initdb` (the default) or the name of a custom method section in `methods`.
    pub method: Option<String>,
    pub initdb: Vec<InitdbOption>,
    pub pg_hba: Vec<String>,
    /// Deprecated in Patroni (removed in 4.0) but still accepted; kept raw.
    pub users: Map<String, Value>,
    pub post_bootstrap: Option<String>,
    pub post_init: Option<String>,
    /// Custom bootstrap method sections (`<method>: {command: ..., ...}`), kept raw.
    pub methods: Map<String, Value>,
}

/// One `bootstrap.initdb` item: `data-checksums` or `{encoding: UTF8}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitdbOption {
    Flag(String),
    KeyValue(String, String),
}

impl InitdbOption {
    /// The initdb command-line argument: `--data-checksums` / `--encoding=UTF8`.
    pub fn to_arg(&self) -> String {
        match self {
            InitdbOption::Flag(name) => format!("--{name}"),
            InitdbOption::KeyValue(name, value) => format!("--{name}={value}"),
        }
    }
}

/// `postgresql` section (local part).
#[derive(Debug, Clone, PartialEq)]
pub struct Postgresql {
    /// `host:port`; the host part may be a comma-separated list.
    pub listen: String,
    pub connect_address: String,
    pub proxy_address: Option<String>,
    pub data_dir: PathBuf,
    pub config_dir: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    pub bin_name: BTreeMap<String, String>,
    pub pgpass: Option<PathBuf>,
    pub custom_conf: Option<PathBuf>,
    pub authentication: PgAuthentication,
    pub parameters: Map<String, Value>,
    pub pg_hba: Vec<String>,
    pub pg_ident: Vec<String>,
    /// The local value; see [`super::effective_use_pg_rewind`] for how it combines with the dynamic one.
    pub use_pg_rewind: Option<bool>,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    /// `pg_basebackup` options, a mapping or a list, already checked for forbidden options.
    pub basebackup: Option<Value>,
    pub create_replica_methods: Vec<String>,
    pub pg_ctl_timeout: Duration,
    pub callbacks: BTreeMap<String, String>,
    pub recovery_conf: Map<String, Value>,
    pub use_unix_socket: bool,
    pub use_unix_socket_repl: bool,
    pub pre_promote: Option<String>,
    pub before_stop: Option<String>,
    /// Everything else under `postgresql`: custom replica-method sections, `parameters_primary`, ...
    pub extra: Map<String, Value>,
}

impl Postgresql {
    /// Port from `listen` (validated at load time; 5432 is only a fallback for hand-built values).
    pub fn listen_port(&self) -> u16 {
        split_host_port("postgresql.listen", &self.listen).map_or(5432, |(_, port)| port)
    }

    /// Hosts from `listen`, comma-separated, brackets removed: the value of `listen_addresses`.
    pub fn listen_host(&self) -> String {
        split_host_port("postgresql.listen", &self.listen)
            .map_or_else(|_| self.listen.clone(), |(host, _)| host)
    }

    /// Host from `connect_address`.
    pub fn connect_host(&self) -> String {
        split_host_port("postgresql.connect_address", &self.connect_address)
            .map_or_else(|_| self.connect_address.clone(), |(host, _)| host)
    }

    /// Port from `connect_address`.
    pub fn connect_port(&self) -> u16 {
        split_host_port("postgresql.connect_address", &self.connect_address)
            .map_or(5432, |(_, port)| port)
    }
}

/// `postgresql.authentication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgAuthentication {
    pub superuser: PgUser,
    pub replication: PgUser,
    pub rewind: Option<PgUser>,
}

/// One database user Patroni connects as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUser {
    pub username: String,
    pub password: Option<String>,
    /// libpq connection options Patroni allows here: sslmode, sslcert, sslkey, sslpassword,
    /// sslrootcert, sslcrl, sslcrldir, sslnegotiation, gssencmode, channel_binding.
    pub extra: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initdb_args() {
        assert_eq!(
            InitdbOption::Flag("data-checksums".into()).to_arg(),
            "--data-checksums"
        );
        assert_eq!(
            InitdbOption::KeyValue("encoding".into(), "UTF8".into()).to_arg(),
            "--encoding=UTF8"
        );
    }
}
