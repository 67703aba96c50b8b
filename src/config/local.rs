//! Turns the merged YAML tree into a validated [`Config`].
//!
//! Validation happens here, while parsing, so every error carries the key path it came from.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::addr::{check_connect_address, is_wildcard, split_host_port};
use super::dynamic::DynamicConfig;
use super::error::ConfigError;
use super::types::{
    BasicAuth, Bootstrap, Config, CtlConfig, Etcd3, InitdbOption, PgAuthentication, PgUser,
    Postgresql, RestApi,
};
use super::value::{Obj, as_string};
use crate::postgres::sync_names::STRICT_PLACEHOLDER;

/// DCS sections Patroni knows but this agent does not implement.
const UNSUPPORTED_DCS: [&str; 5] = ["etcd", "consul", "zookeeper", "exhibitor", "raft"];

/// libpq options Patroni keeps from `postgresql.authentication.<user>` (`_AUTH_ALLOWED_PARAMETERS`).
pub(crate) const PG_USER_OPTIONS: [&str; 10] = [
    "sslmode",
    "sslkey",
    "sslpassword",
    "sslcert",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslnegotiation",
    "gssencmode",
    "channel_binding",
];

/// pg_basebackup options Patroni sets itself, so users may not (§4.8).
const FORBIDDEN_BASEBACKUP: [&str; 11] = [
    "pgdata",
    "format",
    "wal-method",
    "xlog-method",
    "gzip",
    "version",
    "dbname",
    "host",
    "port",
    "username",
    "password",
];

/// initdb options Patroni sets itself (`pgdata`) or that would break bootstrap.
const FORBIDDEN_INITDB: [&str; 5] = ["pgdata", "nosync", "pwfile", "sync-only", "version"];

/// Keys of `postgresql` that have a typed home; everything else goes to `Postgresql::extra`.
pub(crate) const POSTGRESQL_TYPED: [&str; 28] = [
    "listen",
    "connect_address",
    "proxy_address",
    "data_dir",
    "config_dir",
    "bin_dir",
    "bin_name",
    "pgpass",
    "custom_conf",
    "authentication",
    "parameters",
    "pg_hba",
    "pg_ident",
    "use_pg_rewind",
    "remove_data_directory_on_rewind_failure",
    "remove_data_directory_on_diverged_timelines",
    "basebackup",
    "create_replica_methods",
    "pg_ctl_timeout",
    "callbacks",
    "recovery_conf",
    "use_unix_socket",
    "use_unix_socket_repl",
    "pre_promote",
    "before_stop",
    // Accepted but meaningless locally (dynamic only, or moved to the top level by Patroni):
    "use_slots",
    "name",
    "scope",
];

/// Keys of `bootstrap` with a typed home; others are custom method sections.
pub(crate) const BOOTSTRAP_TYPED: [&str; 7] = [
    "dcs",
    "method",
    "initdb",
    "pg_hba",
    "users",
    "post_bootstrap",
    "post_init",
];

pub(crate) fn parse_config(raw: Value) -> Result<Config, ConfigError> {
    let root = Obj::new("", Some(&raw))
        .map_err(|_| ConfigError::invalid("(root)", "the configuration must be a YAML mapping"))?;
    let pg = Obj::new("postgresql", root.get("postgresql"))?;

    let scope = root.required_string("scope")?;
    // Very old configs put `name` under `postgresql`; Patroni still honours that.
    let name = match root.string("name")? {
        Some(n) => Some(n),
        None => pg.string("name")?,
    }
    .filter(|n| !n.trim().is_empty())
    .ok_or_else(|| ConfigError::missing("name"))?;
    // Patroni reserves this name for the strict-mode placeholder in synchronous_standby_names.
    if name == STRICT_PLACEHOLDER {
        return Err(ConfigError::invalid(
            "name",
            format!("'{STRICT_PLACEHOLDER}' is reserved by Patroni"),
        ));
    }
    let namespace = root
        .string("namespace")?
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "/service".to_string());

    let restapi = parse_restapi(Obj::new("restapi", root.get("restapi"))?)?;
    let ctl_obj = Obj::new("ctl", root.get("ctl"))?;
    let ctl = if ctl_obj.is_present() {
        Some(parse_ctl(ctl_obj)?)
    } else {
        None
    };
    let (etcd3, kubernetes) = parse_dcs(&root)?;
    let postgresql = parse_postgresql(pg)?;
    let bootstrap_obj = Obj::new("bootstrap", root.get("bootstrap"))?;
    let bootstrap = if bootstrap_obj.is_present() {
        Some(parse_bootstrap(bootstrap_obj)?)
    } else {
        None
    };
    let tags = root.raw_map("tags")?;
    let watchdog = root.get("watchdog").cloned();
    let log = root.get("log").cloned();

    Ok(Config {
        scope,
        name,
        namespace,
        restapi,
        ctl,
        etcd3,
        kubernetes,
        bootstrap,
        postgresql,
        tags,
        watchdog,
        log,
        raw,
    })
}

fn parse_basic_auth(parent: &Obj<'_>) -> Result<Option<BasicAuth>, ConfigError> {
    let path = parent.key("authentication");
    let auth = Obj::new(&path, parent.get("authentication"))?;
    if !auth.is_present() {
        return Ok(None);
    }
    Ok(Some(BasicAuth {
        username: auth.required_string("username")?,
        password: auth.required_string("password")?,
    }))
}

fn parse_restapi(o: Obj<'_>) -> Result<RestApi, ConfigError> {
    // Patroni has no default here; 0.0.0.0:8008 is the documented conventional value, and
    // connect_address is then still required explicitly because a wildcard can't be dialled.
    let listen = o
        .string("listen")?
        .unwrap_or_else(|| "0.0.0.0:8008".to_string());
    let (listen_host, _) = split_host_port(&o.key("listen"), &listen)?;
    let connect_address = match o.string("connect_address")? {
        Some(addr) => {
            check_connect_address(&o.key("connect_address"), &addr)?;
            addr
        }
        None if !is_wildcard(&listen_host) && !listen_host.contains(',') => listen.clone(),
        None => return Err(ConfigError::missing(o.key("connect_address"))),
    };
    Ok(RestApi {
        listen,
        connect_address,
        authentication: parse_basic_auth(&o)?,
        certfile: o.string("certfile")?,
        keyfile: o.string("keyfile")?,
        keyfile_password: o.string("keyfile_password")?,
        cafile: o.string("cafile")?,
        verify_client: o.string("verify_client")?,
        allowlist: o.string_list("allowlist")?.unwrap_or_default(),
        allowlist_include_members: o.bool("allowlist_include_members")?.unwrap_or(false),
        http_extra_headers: o.string_map("http_extra_headers")?.unwrap_or_default(),
        https_extra_headers: o.string_map("https_extra_headers")?.unwrap_or_default(),
    })
}

fn parse_ctl(o: Obj<'_>) -> Result<CtlConfig, ConfigError> {
    Ok(CtlConfig {
        authentication: parse_basic_auth(&o)?,
        insecure: o.bool("insecure")?.unwrap_or(false),
        cacert: o.string("cacert")?,
        certfile: o.string("certfile")?,
        keyfile: o.string("keyfile")?,
        keyfile_password: o.string("keyfile_password")?,
    })
}

/// Exactly one supported DCS section must be present.
fn parse_dcs(root: &Obj<'_>) -> Result<(Option<Etcd3>, Option<Value>), ConfigError> {
    if root.contains("etcd") {
        return Err(ConfigError::invalid(
            "etcd",
            "etcd v2 is not supported, use etcd3",
        ));
    }
    for dcs in UNSUPPORTED_DCS {
        if root.contains(dcs) {
            return Err(ConfigError::invalid(
                dcs,
                "this DCS is not supported, use etcd3 or kubernetes",
            ));
        }
    }
    match (root.get("etcd3"), root.get("kubernetes")) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            "kubernetes",
            "only one DCS section may be configured, found both etcd3 and kubernetes",
        )),
        (None, None) => Err(ConfigError::invalid(
            "etcd3",
            "a DCS section is required: etcd3 or kubernetes",
        )),
        (Some(v), None) => Ok((Some(parse_etcd3(Obj::new("etcd3", Some(v))?)?), None)),
        (None, Some(v)) => {
            // Validated here so a bad section fails start-up; the backend parses it again.
            super::kubernetes::Kubernetes::parse(v)?;
            Ok((None, Some(v.clone())))
        }
    }
}

fn parse_etcd3(o: Obj<'_>) -> Result<Etcd3, ConfigError> {
    // Patroni's precedence: a proxy hides the cluster, then url, hosts, host; srv is resolved later.
    let (key, entries, use_proxies) = if let Some(p) = o.string("proxy")? {
        ("proxy", vec![p], true)
    } else if let Some(u) = o.string("url")? {
        ("url", vec![u], false)
    } else if let Some(v) = o.get("hosts") {
        let list = match v {
            Value::String(s) => s.split(',').map(str::to_string).collect(),
            _ => o.string_list("hosts")?.unwrap_or_default(),
        };
        ("hosts", list, false)
    } else if let Some(h) = o.string("host")? {
        ("host", vec![h], false)
    } else {
        ("srv", Vec::new(), false)
    };
    let use_proxies = use_proxies || o.bool("use_proxies")?.unwrap_or(false);

    let mut scheme = None;
    let mut hosts = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let rest = match entry.split_once("://") {
            Some((s, rest)) => {
                scheme = Some(s.to_ascii_lowercase());
                rest
            }
            None => entry,
        };
        let rest = rest.trim_end_matches('/');
        let with_port = if split_host_port("", rest).is_ok() {
            rest.to_string()
        } else if rest.contains(':') && !rest.ends_with(']') {
            // Has a colon but no valid port: report it rather than guessing.
            split_host_port(&o.key(key), rest)?;
            rest.to_string()
        } else {
            format!("{rest}:2379")
        };
        hosts.push(with_port);
    }
    let srv = o.string("srv")?;
    if hosts.is_empty() && srv.is_none() {
        return Err(ConfigError::invalid(
            "etcd3",
            "one of host, hosts, url, proxy or srv is required",
        ));
    }

    let cacert = o.string("cacert")?;
    let cert = o.string("cert")?;
    let protocol = match o.string("protocol")? {
        Some(p) => p.to_ascii_lowercase(),
        None => scheme.unwrap_or_else(|| {
            if cacert.is_some() || cert.is_some() {
                "https".to_string()
            } else {
                "http".to_string()
            }
        }),
    };
    if protocol != "http" && protocol != "https" {
        return Err(ConfigError::invalid(
            o.key("protocol"),
            format!("'{protocol}' is not http or https"),
        ));
    }
    Ok(Etcd3 {
        hosts,
        protocol,
        username: o.string("username")?,
        password: o.string("password")?,
        cacert,
        cert,
        key: o.string("key")?,
        srv,
        srv_suffix: o.string("srv_suffix")?,
        use_proxies,
    })
}

fn parse_pg_user(auth: &Obj<'_>, which: &str) -> Result<Option<PgUser>, ConfigError> {
    let path = auth.key(which);
    let o = Obj::new(&path, auth.get(which))?;
    if !o.is_present() {
        return Ok(None);
    }
    let mut extra = std::collections::BTreeMap::new();
    for opt in PG_USER_OPTIONS {
        if let Some(v) = o.string(opt)? {
            extra.insert(opt.to_string(), v);
        }
    }
    Ok(Some(PgUser {
        username: o.required_string("username")?,
        password: o.string("password")?,
        extra,
    }))
}

fn parse_postgresql(o: Obj<'_>) -> Result<Postgresql, ConfigError> {
    let listen = o.required_string("listen")?;
    split_host_port(&o.key("listen"), &listen)?;
    let connect_address = o.required_string("connect_address")?;
    check_connect_address(&o.key("connect_address"), &connect_address)?;
    let data_dir = PathBuf::from(o.required_string("data_dir")?);

    let auth_path = o.key("authentication");
    let auth = Obj::new(&auth_path, o.get("authentication"))?;
    let required_user = |which: &str| {
        parse_pg_user(&auth, which)?
            .ok_or_else(|| ConfigError::missing(format!("{}.username", auth.key(which))))
    };
    let authentication = PgAuthentication {
        superuser: required_user("superuser")?,
        replication: required_user("replication")?,
        rewind: parse_pg_user(&auth, "rewind")?,
    };

    let basebackup = o.get("basebackup").cloned();
    if let Some(bb) = &basebackup {
        check_basebackup(&o.key("basebackup"), bb)?;
    }
    let create_replica_methods = o
        .string_list("create_replica_methods")?
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["basebackup".to_string()]);
    let pg_ctl_timeout = match o.int("pg_ctl_timeout")? {
        None => Duration::from_secs(60),
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        Some(s) => {
            return Err(ConfigError::invalid(
                o.key("pg_ctl_timeout"),
                format!("must be a positive number of seconds, got {s}"),
            ));
        }
    };
    let path = |key: &str| -> Result<Option<PathBuf>, ConfigError> {
        Ok(o.string(key)?.filter(|s| !s.is_empty()).map(PathBuf::from))
    };

    let extra: Map<String, Value> = o
        .map()
        .into_iter()
        .filter(|(k, _)| !POSTGRESQL_TYPED.contains(&k.as_str()))
        .collect();

    Ok(Postgresql {
        listen,
        connect_address,
        proxy_address: o.string("proxy_address")?,
        data_dir,
        config_dir: path("config_dir")?,
        bin_dir: path("bin_dir")?,
        bin_name: o.string_map("bin_name")?.unwrap_or_default(),
        pgpass: path("pgpass")?,
        custom_conf: path("custom_conf")?,
        authentication,
        parameters: o.raw_map("parameters")?,
        pg_hba: o.string_list("pg_hba")?.unwrap_or_default(),
        pg_ident: o.string_list("pg_ident")?.unwrap_or_default(),
        use_pg_rewind: o.bool("use_pg_rewind")?,
        remove_data_directory_on_rewind_failure: o
            .bool("remove_data_directory_on_rewind_failure")?
            .unwrap_or(false),
        remove_data_directory_on_diverged_timelines: o
            .bool("remove_data_directory_on_diverged_timelines")?
            .unwrap_or(false),
        basebackup,
        create_replica_methods,
        pg_ctl_timeout,
        callbacks: o.string_map("callbacks")?.unwrap_or_default(),
        recovery_conf: o.raw_map("recovery_conf")?,
        use_unix_socket: o.bool("use_unix_socket")?.unwrap_or(false),
        use_unix_socket_repl: o.bool("use_unix_socket_repl")?.unwrap_or(false),
        pre_promote: o.string("pre_promote")?,
        before_stop: o.string("before_stop")?,
        extra,
    })
}

/// `basebackup` is `{opt: value}` or a list of `opt` / `{opt: value}`; Patroni's own options are refused.
fn check_basebackup(path: &str, v: &Value) -> Result<(), ConfigError> {
    let check = |name: &str| {
        if FORBIDDEN_BASEBACKUP.contains(&name) {
            Err(ConfigError::invalid(
                path,
                format!("option '{name}' is not allowed, Patroni sets it itself"),
            ))
        } else {
            Ok(())
        }
    };
    match v {
        Value::Object(m) => m.keys().try_for_each(|k| check(k)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| match item {
                Value::String(s) => check(s),
                Value::Object(m) if m.len() == 1 => m.keys().try_for_each(|k| check(k)),
                other => Err(ConfigError::wrong_type(
                    format!("{path}.{i}"),
                    "an option name or a one-key mapping",
                    other,
                )),
            }),
        other => Err(ConfigError::wrong_type(path, "a mapping or a list", other)),
    }
}

fn parse_initdb(path: &str, v: Option<&Value>) -> Result<Vec<InitdbOption>, ConfigError> {
    let checked = |name: &str, opt: InitdbOption| {
        if FORBIDDEN_INITDB.contains(&name) {
            Err(ConfigError::invalid(
                path,
                format!("option '{name}' is not allowed, Patroni sets it itself"),
            ))
        } else {
            Ok(opt)
        }
    };
    let key_value = |item_path: &str, k: &String, v: &Value| {
        let value = as_string(&format!("{item_path}.{k}"), v)?;
        checked(k, InitdbOption::KeyValue(k.clone(), value))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        // Patroni also accepts a plain mapping of options.
        Some(Value::Object(m)) => m.iter().map(|(k, v)| key_value(path, k, v)).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => checked(s, InitdbOption::Flag(s.clone())),
                Value::Object(m) if m.len() == 1 => {
                    let (k, v) = m.iter().next().ok_or_else(|| {
                        ConfigError::invalid(format!("{path}.{i}"), "empty option")
                    })?;
                    key_value(&format!("{path}.{i}"), k, v)
                }
                other => Err(ConfigError::wrong_type(
                    format!("{path}.{i}"),
                    "an option name or a one-key mapping",
                    other,
                )),
            })
            .collect(),
        Some(other) => Err(ConfigError::wrong_type(path, "a list", other)),
    }
}

fn parse_bootstrap(o: Obj<'_>) -> Result<Bootstrap, ConfigError> {
    let dcs = o.raw_map("dcs")?;
    // Validate the seed now: a typo here would otherwise surface only when this node wins the race.
    DynamicConfig::from_json(&dcs).map_err(|e| e.under("bootstrap.dcs"))?;

    let method = o.string("method")?.filter(|m| !m.is_empty());
    if let Some(m) = method.as_deref().filter(|m| *m != "initdb") {
        let path = o.key(m);
        let section = Obj::new(&path, o.get(m))?;
        section.required_string("command")?;
    }
    let methods: Map<String, Value> = o
        .map()
        .into_iter()
        .filter(|(k, _)| !BOOTSTRAP_TYPED.contains(&k.as_str()))
        .collect();
    Ok(Bootstrap {
        dcs,
        method,
        initdb: parse_initdb(&o.key("initdb"), o.get("initdb"))?,
        pg_hba: o.string_list("pg_hba")?.unwrap_or_default(),
        users: o.raw_map("users")?,
        post_bootstrap: o.string("post_bootstrap")?,
        post_init: o.string("post_init")?,
        methods,
    })
}
