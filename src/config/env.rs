//! `PATRONI_*` environment overrides, built into a config tree the way Patroni's
//! `_build_environment_configuration` does, then patched over the file(s) by the loader.
//!
//! Empty values are ignored (as in Patroni). Unlike Patroni we do not remove the variables from the
//! process environment: mutating the environment is unsound once threads exist, and the agent passes
//! an explicit environment to child processes anyway.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::ConfigError;
use super::local::PG_USER_OPTIONS;
use super::value::parse_bool_str;
use super::yaml::parse_yaml;

const PREFIX: &str = "PATRONI_";

/// How an environment string becomes a config value.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    /// Inline YAML list, brackets optional: `a,b` or `[a, b]`.
    List,
    /// Inline YAML mapping, braces optional: `k: v, k2: v2`.
    Dict,
}

use Kind::{Bool, Dict, Int, List, Str};

const RESTAPI: &[(&str, Kind)] = &[
    ("listen", Str),
    ("connect_address", Str),
    ("certfile", Str),
    ("keyfile", Str),
    ("keyfile_password", Str),
    ("cafile", Str),
    ("ciphers", Str),
    ("verify_client", Str),
    ("http_extra_headers", Dict),
    ("https_extra_headers", Dict),
    ("allowlist", List),
    ("allowlist_include_members", Bool),
    ("request_queue_size", Int),
    ("thread_pool_size", Int),
    ("server_tokens", Str),
];
const CTL: &[(&str, Kind)] = &[
    ("insecure", Bool),
    ("cacert", Str),
    ("certfile", Str),
    ("keyfile", Str),
    ("keyfile_password", Str),
];
const POSTGRESQL: &[(&str, Kind)] = &[
    ("listen", Str),
    ("connect_address", Str),
    ("proxy_address", Str),
    ("config_dir", Str),
    ("data_dir", Str),
    ("pgpass", Str),
    ("bin_dir", Str),
];
const LOG: &[(&str, Kind)] = &[
    ("type", Str),
    ("level", Str),
    ("traceback_level", Str),
    ("format", Str),
    ("dateformat", Str),
    ("static_fields", Dict),
    ("max_queue_size", Int),
    ("dir", Str),
    ("mode", Str),
    ("file_num", Int),
    ("file_size", Int),
    ("loggers", Dict),
    ("deduplicate_heartbeat_logs", Bool),
];
/// Raft is not supported, but reading its variables lets validation say so clearly.
const RAFT: &[(&str, Kind)] = &[
    ("data_dir", Str),
    ("self_addr", Str),
    ("partner_addrs", List),
    ("password", Str),
    ("bind_addr", Str),
];
const BINARIES: [&str; 7] = [
    "pg_ctl",
    "initdb",
    "pg_controldata",
    "pg_basebackup",
    "postgres",
    "pg_isready",
    "pg_rewind",
];
/// Sections filled by the generic `PATRONI_<DCS>_<SUFFIX>` rule; their presence selects the DCS.
const DCS_SECTIONS: [&str; 7] = [
    "etcd",
    "etcd3",
    "consul",
    "zookeeper",
    "exhibitor",
    "kubernetes",
    "citus",
];
const DCS_SUFFIXES: &[(&str, Kind)] = &[
    ("host", Str),
    ("hosts", List),
    ("port", Int),
    ("use_proxies", Bool),
    ("protocol", Str),
    ("srv", Str),
    ("srv_suffix", Str),
    ("url", Str),
    ("proxy", Str),
    ("cacert", Str),
    ("cert", Str),
    ("key", Str),
    ("verify", Bool),
    ("token", Str),
    ("checks", List),
    ("dc", Str),
    ("consistency", Str),
    ("register_service", Bool),
    ("service_check_interval", Str),
    ("service_check_tls_server_name", Str),
    ("service_tags", List),
    ("namespace", Str),
    ("context", Str),
    ("use_endpoints", Bool),
    ("scope_label", Str),
    ("role_label", Str),
    ("pod_ip", Str),
    ("ports", List),
    ("labels", Dict),
    ("bootstrap_labels", Dict),
    ("bypass_api_service", Bool),
    ("retriable_http_codes", List),
    ("key_password", Str),
    ("use_ssl", Bool),
    ("set_acls", Dict),
    ("group", Int),
    ("database", Str),
    ("leader_label_value", Str),
    ("follower_label_value", Str),
    ("standby_leader_label_value", Str),
    ("tmp_role_label", Str),
];

/// Builds the override tree from `env` (only `PATRONI_*` entries matter).
pub(crate) fn env_config(env: &BTreeMap<String, String>) -> Result<Value, ConfigError> {
    let get = |name: &str| {
        env.get(&format!("{PREFIX}{}", name.to_ascii_uppercase()))
            .filter(|v| !v.is_empty())
    };
    let mut ret = Map::new();

    for key in ["name", "namespace", "scope"] {
        if let Some(v) = get(key) {
            ret.insert(key.into(), Value::String(v.clone()));
        }
    }

    let section =
        |name: &str, params: &[(&str, Kind)]| -> Result<Map<String, Value>, ConfigError> {
            let mut out = Map::new();
            for (param, kind) in params {
                let var = format!("{name}_{param}");
                if let Some(v) = get(&var) {
                    out.insert((*param).into(), convert(&var, v, *kind)?);
                }
            }
            Ok(out)
        };
    let auth = |name: &str, params: &[&str]| {
        let mut out = Map::new();
        for param in params {
            if let Some(v) = get(&format!("{name}_{param}")) {
                out.insert((*param).into(), Value::String(v.clone()));
            }
        }
        out
    };

    let mut restapi = section("restapi", RESTAPI)?;
    let restapi_auth = auth("restapi", &["username", "password"]);
    if !restapi_auth.is_empty() {
        restapi.insert("authentication".into(), Value::Object(restapi_auth));
    }
    let mut ctl = section("ctl", CTL)?;
    let ctl_auth = auth("ctl", &["username", "password"]);
    if !ctl_auth.is_empty() {
        ctl.insert("authentication".into(), Value::Object(ctl_auth));
    }

    let mut postgresql = section("postgresql", POSTGRESQL)?;
    let mut bin_name = Map::new();
    for binary in BINARIES {
        if let Some(v) = get(&format!("postgresql_bin_{binary}")) {
            bin_name.insert(binary.into(), Value::String(v.clone()));
        }
    }
    if !bin_name.is_empty() {
        postgresql.insert("bin_name".into(), Value::Object(bin_name));
    }
    let mut users = Map::new();
    let user_params: Vec<&str> = ["username", "password"]
        .into_iter()
        .chain(PG_USER_OPTIONS)
        .collect();
    for user in ["superuser", "replication", "rewind"] {
        let entry = auth(user, &user_params);
        if !entry.is_empty() {
            users.insert(user.into(), Value::Object(entry));
        }
    }
    if !users.is_empty() {
        postgresql.insert("authentication".into(), Value::Object(users));
    }

    // Legacy log variable names, used only when the new name is unset.
    let mut log_env = env.clone();
    for (new, old) in [
        ("LOG_LEVEL", "LOGLEVEL"),
        ("LOG_FORMAT", "LOGFORMAT"),
        ("LOG_DATEFORMAT", "LOG_DATEFMT"),
    ] {
        let new_var = format!("{PREFIX}{new}");
        if let Some(v) = env.get(&format!("{PREFIX}{old}")).filter(|v| !v.is_empty()) {
            log_env.entry(new_var).or_insert_with(|| v.clone());
        }
    }
    let log = env_config_log(&log_env)?;

    for (name, map) in [
        ("restapi", restapi),
        ("ctl", ctl),
        ("postgresql", postgresql),
        ("log", log),
        ("raft", section("raft", RAFT)?),
    ] {
        if !map.is_empty() {
            ret.insert(name.into(), Value::Object(map));
        }
    }

    for dcs in DCS_SECTIONS {
        let mut map = section(dcs, DCS_SUFFIXES)?;
        if dcs == "etcd" || dcs == "etcd3" {
            map.extend(auth(dcs, &["username", "password"]));
        }
        if !map.is_empty() {
            ret.insert(dcs.into(), Value::Object(map));
        }
    }
    Ok(Value::Object(ret))
}

fn env_config_log(env: &BTreeMap<String, String>) -> Result<Map<String, Value>, ConfigError> {
    let mut out = Map::new();
    for (param, kind) in LOG {
        let var = format!("{PREFIX}LOG_{}", param.to_ascii_uppercase());
        if let Some(v) = env.get(&var).filter(|v| !v.is_empty()) {
            out.insert((*param).into(), convert(&format!("log_{param}"), v, *kind)?);
        }
    }
    Ok(out)
}

/// Converts one variable's text; errors name the variable (`PATRONI_RESTAPI_ALLOWLIST`).
fn convert(var: &str, v: &str, kind: Kind) -> Result<Value, ConfigError> {
    let name = format!("{PREFIX}{}", var.to_ascii_uppercase());
    let got = Value::String(v.to_string());
    match kind {
        Str => Ok(got),
        Bool => parse_bool_str(v).map(Value::Bool).ok_or_else(|| {
            ConfigError::wrong_type(name, "a boolean (on/off, true/false, yes/no, 1/0)", &got)
        }),
        Int => v
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| ConfigError::wrong_type(name, "an integer", &got)),
        List => {
            let t = v.trim();
            let text = if t.starts_with('-') || t.contains('[') {
                v.to_string()
            } else {
                format!("[{v}]")
            };
            match parse_yaml(&name, &text)? {
                list @ Value::Array(_) => Ok(list),
                _ => Err(ConfigError::wrong_type(name, "an inline YAML list", &got)),
            }
        }
        Dict => {
            let text = if v.trim().starts_with('{') {
                v.to_string()
            } else {
                format!("{{{v}}}")
            };
            match parse_yaml(&name, &text)? {
                map @ Value::Object(_) => Ok(map),
                _ => Err(ConfigError::wrong_type(
                    name,
                    "an inline YAML mapping",
                    &got,
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn builds_patroni_layout() {
        let v = env_config(&env(&[
            ("PATRONI_NAME", "n1"),
            ("PATRONI_SCOPE", ""),
            ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:8009"),
            ("PATRONI_RESTAPI_USERNAME", "u"),
            ("PATRONI_RESTAPI_PASSWORD", "p"),
            ("PATRONI_RESTAPI_ALLOWLIST", "10.0.0.0/8, 127.0.0.1"),
            ("PATRONI_RESTAPI_ALLOWLIST_INCLUDE_MEMBERS", "yes"),
            ("PATRONI_RESTAPI_HTTP_EXTRA_HEADERS", "X-A: 1, X-B: b"),
            ("PATRONI_POSTGRESQL_BIN_PG_CTL", "/bin/pg_ctl"),
            ("PATRONI_SUPERUSER_USERNAME", "postgres"),
            ("PATRONI_SUPERUSER_SSLMODE", "require"),
            ("PATRONI_ETCD3_HOSTS", "a:2379,b:2379"),
            ("PATRONI_ETCD3_PASSWORD", "s"),
            ("PATRONI_KUBERNETES_LABELS", "{app: pg}"),
            ("PATRONI_KUBERNETES_USE_ENDPOINTS", "true"),
            ("PATRONI_LOGLEVEL", "DEBUG"),
            ("OTHER", "x"),
        ]))
        .unwrap();
        assert_eq!(
            v,
            json!({
                "name": "n1",
                "restapi": {
                    "listen": "0.0.0.0:8009",
                    "authentication": {"username": "u", "password": "p"},
                    "allowlist": ["10.0.0.0/8", "127.0.0.1"],
                    "allowlist_include_members": true,
                    "http_extra_headers": {"X-A": 1, "X-B": "b"}
                },
                "postgresql": {
                    "bin_name": {"pg_ctl": "/bin/pg_ctl"},
                    "authentication": {"superuser": {"username": "postgres", "sslmode": "require"}}
                },
                "log": {"level": "DEBUG"},
                "etcd3": {"hosts": ["a:2379", "b:2379"], "password": "s"},
                "kubernetes": {"labels": {"app": "pg"}, "use_endpoints": true}
            })
        );
    }

    #[test]
    fn bracketed_list_and_bad_bool() {
        let v = env_config(&env(&[("PATRONI_RESTAPI_ALLOWLIST", "[a, b]")])).unwrap();
        assert_eq!(v["restapi"]["allowlist"], json!(["a", "b"]));
        let e = env_config(&env(&[("PATRONI_CTL_INSECURE", "maybe")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config error: PATRONI_CTL_INSECURE: expected a boolean (on/off, true/false, yes/no, 1/0), got \"maybe\""
        );
    }
}
