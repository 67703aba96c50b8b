//! Translating configuration into what the other modules take: PostgreSQL settings, the HA
//! core's identity and policy. Pure functions.

use std::path::PathBuf;

use crate::config::{self, Config, DynamicConfig};
use crate::dcs::model::{tags_failover_priority, tags_nofailover};
use crate::ha::{Identity, Policy};
use crate::postgres::{Credentials, PgSettings};

/// Where Debian's PostgreSQL 15 keeps its binaries, used when `postgresql.bin_dir` is unset.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The member's identity for the HA core.
pub fn identity(cfg: &Config) -> Identity {
    Identity {
        name: cfg.name.clone(),
        nofailover: tags_nofailover(Some(&cfg.tags)),
        failover_priority: tags_failover_priority(Some(&cfg.tags)),
        can_bootstrap: cfg.bootstrap.is_some(),
    }
}

/// The policy in force: dynamic configuration merged with local settings.
pub fn policy(cfg: &Config, dynamic: &DynamicConfig) -> Policy {
    Policy {
        ttl: dynamic.ttl,
        loop_wait: dynamic.loop_wait,
        retry_timeout: dynamic.retry_timeout,
        maximum_lag_on_failover: dynamic.maximum_lag_on_failover,
        use_pg_rewind: config::effective_use_pg_rewind(cfg, dynamic),
        remove_data_directory_on_rewind_failure: cfg
            .postgresql
            .remove_data_directory_on_rewind_failure
            || cfg.postgresql.remove_data_directory_on_diverged_timelines,
        pause: dynamic.pause,
        use_slots: dynamic.use_slots,
        check_timeline: dynamic.check_timeline,
        sync: crate::ha::sync::SyncPolicy {
            mode: dynamic.synchronous_mode,
            strict: dynamic.synchronous_mode_strict,
            node_count: dynamic.synchronous_node_count,
            maximum_lag_on_syncnode: dynamic.maximum_lag_on_syncnode,
        },
        failsafe_mode: dynamic.failsafe_mode,
        primary_start_timeout: dynamic.primary_start_timeout,
        handover_timeout: dynamic.shutdown_handover_timeout,
        safety_margin: Policy::default_margin(dynamic.ttl),
    }
}

/// How long a fast stop may take before the postmaster is killed: `pg_ctl_timeout`, or for a
/// primary in a synchronous mode `primary_stop_timeout` when set and shorter (Patroni's
/// meaning: a stop waiting on a synchronous standby that is gone must not hang the hand-over;
/// every acknowledged commit is on a synchronous standby already).
pub fn stop_timeout(cfg: &Config, dynamic: &DynamicConfig, primary: bool) -> std::time::Duration {
    let pg_ctl = cfg.postgresql.pg_ctl_timeout;
    let bound = dynamic.primary_stop_timeout;
    let sync = dynamic.synchronous_mode != config::SyncMode::Off;
    if primary && sync && !bound.is_zero() {
        pg_ctl.min(bound)
    } else {
        pg_ctl
    }
}

fn credentials(u: &config::PgUser) -> Credentials {
    Credentials {
        username: u.username.clone(),
        password: u.password.clone(),
    }
}

/// PostgreSQL settings for this member.
pub fn pg_settings(cfg: &Config, dynamic: &DynamicConfig) -> PgSettings {
    let p = &cfg.postgresql;
    let auth = &p.authentication;
    let socket_dir = config::effective_parameters(cfg, dynamic)
        .get("unix_socket_directories")
        .and_then(|d| d.split(',').next())
        .map(|d| PathBuf::from(d.trim()))
        .filter(|d| !d.as_os_str().is_empty());
    PgSettings {
        data_dir: p.data_dir.clone(),
        bin_dir: p
            .bin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR)),
        listen_host: p.listen_host(),
        port: p.listen_port(),
        connect_host: p.connect_host(),
        socket_dir,
        name: cfg.name.clone(),
        scope: cfg.scope.clone(),
        parameters: with_sync_default(config::effective_parameters(cfg, dynamic), dynamic),
        pg_hba: config::effective_pg_hba(cfg, dynamic),
        superuser: credentials(&auth.superuser),
        replication: credentials(&auth.replication),
        rewind: auth.rewind.as_ref().map(credentials),
        pgpass: p
            .pgpass
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("pgpass.{}", cfg.name))),
        initdb_args: cfg
            .bootstrap
            .as_ref()
            .map(|b| b.initdb.iter().map(|o| o.to_arg()).collect())
            .unwrap_or_default(),
        basebackup_args: basebackup_args(p.basebackup.as_ref()),
        pg_ctl_timeout: p.pg_ctl_timeout,
    }
}

/// In a synchronous mode the HA core owns `synchronous_standby_names`; until it sets the list
/// (and on every replica) it is empty, or in strict mode the placeholder, so that a server
/// promoted or restarted as the primary never acknowledges a commit no listed standby has.
fn with_sync_default(
    mut parameters: std::collections::BTreeMap<String, String>,
    dynamic: &DynamicConfig,
) -> std::collections::BTreeMap<String, String> {
    if dynamic.synchronous_mode != config::SyncMode::Off {
        let default = match dynamic.synchronous_mode_strict {
            true => crate::postgres::sync_names::STRICT_PLACEHOLDER.to_owned(),
            false => String::new(),
        };
        parameters.insert("synchronous_standby_names".into(), default);
    }
    parameters
}

/// `postgresql.basebackup` as command-line options: a map `{k: v}` or a list of `flag` and
/// `{k: v}` items (forbidden options were refused by config validation).
fn basebackup_args(v: Option<&serde_json::Value>) -> Vec<String> {
    use serde_json::Value;
    fn one(k: &str, v: &Value) -> String {
        match v {
            Value::String(s) => format!("--{k}={s}"),
            Value::Null => format!("--{k}"),
            other => format!("--{k}={other}"),
        }
    }
    match v {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| one(k, v)).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .flat_map(|i| match i {
                Value::String(s) => vec![format!("--{s}")],
                Value::Object(m) => m.iter().map(|(k, v)| one(k, v)).collect(),
                _ => vec![],
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `host` and `port` of a member's `conn_url` (`postgres://host:port/postgres`).
pub fn conn_url_host_port(conn_url: &str) -> Option<(String, u16)> {
    let rest = conn_url.split_once("://")?.1;
    let hostport = rest.split(['/', '?']).next()?;
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (hostport, 5432),
    };
    Some((host.trim_matches(['[', ']']).to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_urls_split() {
        assert_eq!(
            conn_url_host_port("postgres://10.0.0.5:5433/postgres"),
            Some(("10.0.0.5".into(), 5433))
        );
        assert_eq!(
            conn_url_host_port("postgres://h/postgres"),
            Some(("h".into(), 5432))
        );
        assert_eq!(
            conn_url_host_port("postgres://[::1]:5432/postgres"),
            Some(("::1".into(), 5432))
        );
        assert_eq!(conn_url_host_port("nonsense"), None);
    }

    #[test]
    fn basebackup_options() {
        let v: serde_json::Value = serde_json::json!([{"max-rate": "100M"}, "verbose"]);
        assert_eq!(
            basebackup_args(Some(&v)),
            vec!["--max-rate=100M", "--verbose"]
        );
        let v: serde_json::Value = serde_json::json!({"checkpoint": "fast"});
        assert_eq!(basebackup_args(Some(&v)), vec!["--checkpoint=fast"]);
    }

    #[test]
    fn primary_stop_timeout_bounds_a_primarys_stop_in_synchronous_modes_only() {
        use std::time::Duration;
        let cfg = crate::config::load_from_str(
            "scope: s\nname: m\nrestapi: {listen: ':8008', connect_address: 'h:8008'}\n\
             etcd3: {hosts: ['h:2379']}\n\
             postgresql: {listen: ':5432', connect_address: 'h:5432', data_dir: /d, \
             pg_ctl_timeout: 60, authentication: {superuser: {username: postgres}, \
             replication: {username: r}}}\n",
        )
        .expect("config");
        let d = |json: serde_json::Value| {
            DynamicConfig::from_json(json.as_object().expect("an object")).expect("dynamic")
        };
        let sync = d(serde_json::json!({"synchronous_mode": true, "primary_stop_timeout": 5}));
        let off = d(serde_json::json!({"primary_stop_timeout": 5}));
        let unset = d(serde_json::json!({"synchronous_mode": true}));
        assert_eq!(stop_timeout(&cfg, &sync, true), Duration::from_secs(5));
        assert_eq!(stop_timeout(&cfg, &sync, false), Duration::from_secs(60));
        assert_eq!(stop_timeout(&cfg, &off, true), Duration::from_secs(60));
        assert_eq!(stop_timeout(&cfg, &unset, true), Duration::from_secs(60));
    }
}
