//! The effective PostgreSQL settings: dynamic configuration combined with the local one under
//! Patroni's rules (reference §0 and §5.2).
//!
//! Inside `postgresql` the local configuration wins (Patroni's `_build_effective_configuration`),
//! except for the GUCs Patroni owns: those come only from the dynamic configuration, because they must
//! agree across the cluster (a replica with fewer `max_connections` than its primary cannot start).

use std::collections::BTreeMap;

use serde_json::Value;

use super::dynamic::DynamicConfig;
use super::types::Config;
use super::value::parse_bool_str;

/// How a dynamic value for an owned GUC is checked (Patroni's `CMDLINE_OPTIONS` validators).
#[derive(Clone, Copy)]
enum Check {
    /// Never settable from configuration (derived from other settings).
    Derived,
    Enum(&'static [&'static str]),
    Int {
        min: i64,
    },
    /// A size whose bare numbers are megabytes (`wal_keep_size`).
    SizeMb {
        min: i64,
    },
    Bool,
}

/// Patroni-owned GUCs: (name, default, check). `wal_level` defaults to `replica`, the PG ≥ 9.6 name of
/// Patroni's `hot_standby`.
const OWNED: [(&str, &str, Check); 15] = [
    ("listen_addresses", "", Check::Derived),
    ("port", "", Check::Derived),
    ("cluster_name", "", Check::Derived),
    ("hot_standby", "on", Check::Derived),
    (
        "wal_level",
        "replica",
        Check::Enum(&["hot_standby", "replica", "logical"]),
    ),
    ("max_connections", "100", Check::Int { min: 25 }),
    ("max_wal_senders", "10", Check::Int { min: 3 }),
    ("wal_keep_segments", "8", Check::Int { min: 1 }),
    ("wal_keep_size", "128MB", Check::SizeMb { min: 16 }),
    ("max_prepared_transactions", "0", Check::Int { min: 0 }),
    ("max_locks_per_transaction", "64", Check::Int { min: 32 }),
    ("track_commit_timestamp", "off", Check::Bool),
    ("max_replication_slots", "10", Check::Int { min: 4 }),
    ("max_worker_processes", "8", Check::Int { min: 2 }),
    ("wal_log_hints", "on", Check::Bool),
];

fn owned(name: &str) -> Option<(&'static str, Check)> {
    OWNED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, default, check)| (*default, *check))
}

/// A JSON value as PostgreSQL expects it in postgresql.conf / on the command line.
fn render(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Bool(true) => Some("on".into()),
        Value::Bool(false) => Some("off".into()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Megabytes in a size like `128MB`, `1GB`, `2048kB` or a bare number of megabytes.
fn size_mb(v: &Value) -> Option<i64> {
    if let Some(n) = int_of(v) {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let num: i64 = num.parse().ok()?;
    match unit.trim() {
        "kB" => Some(num / 1024),
        "MB" => Some(num),
        "GB" => num.checked_mul(1024),
        "TB" => num.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// The rendered value if `v` passes the check, else None.
fn validate(check: Check, v: &Value) -> Option<String> {
    match check {
        Check::Derived => None,
        Check::Enum(allowed) => {
            let s = v.as_str()?.trim().to_ascii_lowercase();
            allowed.contains(&s.as_str()).then_some(s)
        }
        Check::Int { min } => int_of(v).filter(|n| *n >= min).map(|n| n.to_string()),
        Check::SizeMb { min } => size_mb(v).filter(|n| *n >= min).and_then(|_| render(v)),
        Check::Bool => {
            let b = match v {
                Value::Bool(b) => Some(*b),
                Value::Number(n) => n.as_i64().and_then(|n| parse_bool_str(&n.to_string())),
                Value::String(s) => parse_bool_str(s),
                _ => None,
            }?;
            Some(if b { "on" } else { "off" }.to_string())
        }
    }
}

/// PostgreSQL GUCs to run with. Dynamic `postgresql.parameters` first (owned GUCs validated, a bad
/// value falls back to the default with a warning), local `postgresql.parameters` over them except the
/// owned GUCs (ignored locally), then the owned GUCs' defaults, and finally `listen_addresses`/`port`
/// from `postgresql.listen`, `cluster_name` = scope and `hot_standby` = on. Names are lower-cased (GUC
/// names are case-insensitive). Assumes PostgreSQL 13 or later: `wal_keep_segments` is converted to
/// `wal_keep_size` (16 MB segments) as Patroni does for those versions, and never emitted itself.
pub fn effective_parameters(local: &Config, dynamic: &DynamicConfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in &dynamic.parameters {
        let name = name.to_ascii_lowercase();
        match owned(&name) {
            Some((default, check)) => match validate(check, value) {
                Some(v) => {
                    out.insert(name, v);
                }
                None => tracing::warn!(
                    "postgresql parameter {name}={value} failed validation, defaulting to {default}"
                ),
            },
            None => {
                if let Some(v) = render(value) {
                    out.insert(name, v);
                }
            }
        }
    }
    for (name, value) in &local.postgresql.parameters {
        let name = name.to_ascii_lowercase();
        if owned(&name).is_some() {
            tracing::debug!(
                "ignoring local postgresql parameter {name}: set it in the dynamic configuration"
            );
            continue;
        }
        match render(value) {
            Some(v) => out.insert(name, v),
            None => out.remove(&name),
        };
    }

    if let Some(segments) = out.remove("wal_keep_segments")
        && !out.contains_key("wal_keep_size")
        && let Ok(n) = segments.parse::<i64>()
    {
        out.insert(
            "wal_keep_size".into(),
            format!("{}MB", n.saturating_mul(16)),
        );
    }
    for (name, default, check) in OWNED {
        if !matches!(check, Check::Derived) && name != "wal_keep_segments" {
            out.entry(name.to_string())
                .or_insert_with(|| default.to_string());
        }
    }
    out.insert("listen_addresses".into(), local.postgresql.listen_host());
    out.insert("port".into(), local.postgresql.listen_port().to_string());
    out.insert("cluster_name".into(), local.scope.clone());
    out.insert("hot_standby".into(), "on".into());
    out
}

/// pg_hba lines. Local `postgresql.pg_hba` wins when non-empty (Patroni: inside `postgresql` local
/// beats dynamic), then the dynamic `postgresql.pg_hba`, then `bootstrap.pg_hba`. Empty: leave the
/// existing pg_hba.conf alone.
pub fn effective_pg_hba(local: &Config, dynamic: &DynamicConfig) -> Vec<String> {
    if !local.postgresql.pg_hba.is_empty() {
        return local.postgresql.pg_hba.clone();
    }
    if let Some(hba) = &dynamic.pg_hba {
        return hba.clone();
    }
    local
        .bootstrap
        .as_ref()
        .map(|b| b.pg_hba.clone())
        .unwrap_or_default()
}

/// Whether to use pg_rewind: the local `postgresql.use_pg_rewind` when set, else the dynamic one
/// (same precedence as Patroni's effective configuration).
pub fn effective_use_pg_rewind(local: &Config, dynamic: &DynamicConfig) -> bool {
    local
        .postgresql
        .use_pg_rewind
        .unwrap_or(dynamic.use_pg_rewind)
}
