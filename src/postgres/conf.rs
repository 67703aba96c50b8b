//! Pure rendering: `postgresql.conf`, `pg_hba.conf`, pgpass, libpq conninfo strings, postmaster
//! arguments and SQL quoting. No I/O here.

use std::collections::BTreeMap;

use super::settings::{Credentials, PgSettings};

/// File names inside the data directory.
pub const BASE_CONF: &str = "postgresql.base.conf";
pub const CONF: &str = "postgresql.conf";
pub const HBA: &str = "pg_hba.conf";
pub const STANDBY_SIGNAL: &str = "standby.signal";
pub const RECOVERY_SIGNAL: &str = "recovery.signal";

/// GUCs Patroni also passes on the postmaster command line (so `ALTER SYSTEM` cannot override
/// them), when present in the effective parameters.
const POSTMASTER_CMDLINE_GUCS: &[&str] = &[
    "cluster_name",
    "hot_standby",
    "listen_addresses",
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "port",
    "track_commit_timestamp",
    "wal_level",
    "wal_log_hints",
];

/// Recovery GUCs that only we manage (depending on the role we start as).
const RECOVERY_GUCS: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
];

/// The replica part of our config file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryConf {
    pub primary_conninfo: Option<String>,
    pub slot: Option<String>,
}

/// Quotes a GUC value for `postgresql.conf`: `'...'`, `'` doubled, backslash and control
/// characters escaped (the GUC lexer processes backslash escapes and forbids raw newlines).
pub fn quote_guc(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// Quotes one libpq conninfo value when needed (empty, spaces, quotes, backslashes).
pub fn quote_conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return value.to_string();
    }
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// `key=value key=value` with quoting.
pub fn build_conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", quote_conninfo_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A conninfo for `host:port` with the given credentials and application_name.
pub fn conninfo_for(host: &str, port: u16, creds: &Credentials, application_name: &str) -> String {
    let port = port.to_string();
    let mut pairs = vec![
        ("host", host),
        ("port", port.as_str()),
        ("user", creds.username.as_str()),
    ];
    if let Some(pw) = &creds.password {
        pairs.push(("password", pw.as_str()));
    }
    if !application_name.is_empty() {
        pairs.push(("application_name", application_name));
    }
    build_conninfo(&pairs)
}

/// Appends `extra` key/value pairs to a key=value conninfo (libpq: the last occurrence of a
/// keyword wins, so this overrides). URIs (`postgres://`, `postgresql://`) are returned as is.
pub fn conninfo_override(conninfo: &str, extra: &[(&str, &str)]) -> String {
    let t = conninfo.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        return t.to_string();
    }
    let extra = build_conninfo(extra);
    if t.is_empty() {
        extra
    } else {
        format!("{t} {extra}")
    }
}

/// The local address we connect to ourselves with, when no socket dir is configured.
pub fn local_tcp_host(listen_host: &str) -> String {
    let first = listen_host
        .split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("");
    match first {
        "" | "*" | "0.0.0.0" => "127.0.0.1".to_string(),
        "::" => "::1".to_string(),
        h => h.to_string(),
    }
}

/// The full set of GUCs we render: the caller's parameters, then listen/port/cluster name/socket
/// dir from the settings, then the recovery GUCs of a replica (removed for a primary).
pub fn effective_parameters(
    s: &PgSettings,
    recovery: Option<&RecoveryConf>,
) -> BTreeMap<String, String> {
    let mut p = s.parameters.clone();
    for k in RECOVERY_GUCS {
        p.remove(*k);
    }
    p.insert("listen_addresses".into(), s.listen_host.clone());
    p.insert("port".into(), s.port.to_string());
    if !s.scope.is_empty() {
        p.insert("cluster_name".into(), s.scope.clone());
    }
    if let Some(dir) = &s.socket_dir {
        p.insert("unix_socket_directories".into(), dir.display().to_string());
    }
    if let Some(r) = recovery {
        if let Some(ci) = &r.primary_conninfo {
            p.insert("primary_conninfo".into(), ci.clone());
        }
        if let Some(slot) = &r.slot {
            p.insert("primary_slot_name".into(), slot.clone());
        }
    }
    // postmaster-context GUC: rendered for both roles so a promote (and its reload) does not
    // change it and leave a pending restart behind
    p.insert("recovery_target_timeline".into(), "latest".into());
    p
}

/// Our `postgresql.conf`: include of initdb's original, then all parameters sorted.
pub fn render_postgresql_conf(s: &PgSettings, recovery: Option<&RecoveryConf>) -> String {
    let mut out =
        String::from("# Do not edit this file manually!\n# It will be overwritten by pgwarden.\n");
    out.push_str(&format!("include {}\n\n", quote_guc(BASE_CONF)));
    let params = effective_parameters(s, recovery);
    for (k, v) in params
        .iter()
        .filter(|(k, _)| !RECOVERY_GUCS.contains(&k.as_str()))
    {
        out.push_str(&format!("{k} = {}\n", quote_guc(v)));
    }
    out.push_str(if recovery.is_some() {
        "\n# recovery (replica)\n"
    } else {
        "\n# recovery\n"
    });
    for (k, v) in params
        .iter()
        .filter(|(k, _)| RECOVERY_GUCS.contains(&k.as_str()))
    {
        out.push_str(&format!("{k} = {}\n", quote_guc(v)));
    }
    out
}

/// `--name=value` postmaster options for the Patroni-owned GUCs present.
pub fn postmaster_args(s: &PgSettings) -> Vec<String> {
    let params = effective_parameters(s, None);
    POSTMASTER_CMDLINE_GUCS
        .iter()
        .filter_map(|k| params.get(*k).map(|v| format!("--{k}={v}")))
        .collect()
}

/// `pg_hba.conf` from configured lines.
pub fn render_pg_hba(lines: &[String]) -> String {
    let mut out =
        String::from("# Do not edit this file manually!\n# It will be overwritten by pgwarden.\n");
    for l in lines {
        out.push_str(l.trim_end());
        out.push('\n');
    }
    out
}

fn pgpass_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace(':', "\\:")
}

/// A pgpass file with one wildcard line per credential that has a password.
pub fn render_pgpass(creds: &[&Credentials]) -> String {
    creds
        .iter()
        .filter_map(|c| {
            c.password.as_ref().map(|pw| {
                format!(
                    "*:*:*:{}:{}\n",
                    pgpass_escape(&c.username),
                    pgpass_escape(pw)
                )
            })
        })
        .collect()
}

/// `"quoted"` SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'quoted'` SQL literal (standard_conforming_strings on; `E''` for backslashes).
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn settings() -> PgSettings {
        PgSettings {
            data_dir: PathBuf::from("/d"),
            bin_dir: PathBuf::from("/b"),
            listen_host: "127.0.0.1".into(),
            port: 5433,
            connect_host: "10.0.0.1".into(),
            socket_dir: Some(PathBuf::from("/tmp/s")),
            name: "node-1".into(),
            scope: "batman".into(),
            parameters: [
                ("wal_level", "replica"),
                ("max_connections", "100"),
                ("archive_command", "cp %p /arch/'x'"),
                ("primary_conninfo", "should be dropped"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            pg_hba: vec![
                "local all all trust".into(),
                "host replication all 0.0.0.0/0 md5  ".into(),
            ],
            superuser: Credentials {
                username: "postgres".into(),
                password: Some("su".into()),
            },
            replication: Credentials {
                username: "rep".into(),
                password: Some("p:w\\".into()),
            },
            rewind: None,
            pgpass: PathBuf::from("/tmp/pgpass"),
            initdb_args: vec![],
            basebackup_args: vec![],
            pg_ctl_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn guc_quoting() {
        assert_eq!(quote_guc("abc"), "'abc'");
        assert_eq!(quote_guc("it's"), "'it''s'");
        assert_eq!(quote_guc("a\\b\nc"), "'a\\\\b\\nc'");
        assert_eq!(quote_guc(""), "''");
    }

    #[test]
    fn conninfo_quoting() {
        assert_eq!(quote_conninfo_value("abc"), "abc");
        assert_eq!(quote_conninfo_value(""), "''");
        assert_eq!(quote_conninfo_value("a b"), "'a b'");
        assert_eq!(quote_conninfo_value("it's\\"), "'it\\'s\\\\'");
        let creds = Credentials {
            username: "rep".into(),
            password: Some("se cret'".into()),
        };
        assert_eq!(
            conninfo_for("h1", 5432, &creds, "node-1"),
            "host=h1 port=5432 user=rep password='se cret\\'' application_name=node-1"
        );
        let nopw = Credentials {
            username: "rep".into(),
            password: None,
        };
        assert_eq!(conninfo_for("h1", 1, &nopw, ""), "host=h1 port=1 user=rep");
        assert_eq!(
            conninfo_override("host=x user=a", &[("user", "b")]),
            "host=x user=a user=b"
        );
        assert_eq!(
            conninfo_override("postgres://x", &[("user", "b")]),
            "postgres://x"
        );
        assert_eq!(conninfo_override("", &[("user", "b")]), "user=b");
    }

    #[test]
    fn primary_conf_is_sorted_and_has_no_recovery() {
        let conf = render_postgresql_conf(&settings(), None);
        let expected = "# Do not edit this file manually!\n# It will be overwritten by pgwarden.\n\
include 'postgresql.base.conf'\n\n\
archive_command = 'cp %p /arch/''x'''\n\
cluster_name = 'batman'\n\
listen_addresses = '127.0.0.1'\n\
max_connections = '100'\n\
port = '5433'\n\
unix_socket_directories = '/tmp/s'\n\
wal_level = 'replica'\n\n\
# recovery\n\
recovery_target_timeline = 'latest'\n";
        assert_eq!(conf, expected);
    }

    #[test]
    fn replica_conf_has_recovery_section_with_double_quoting() {
        let s = settings();
        let ci = conninfo_for("10.0.0.2", 5432, &s.replication, "node-1");
        let r = RecoveryConf {
            primary_conninfo: Some(ci),
            slot: Some("node_1".into()),
        };
        let conf = render_postgresql_conf(&s, Some(&r));
        assert!(conf.ends_with(
            "\n# recovery (replica)\n\
primary_conninfo = 'host=10.0.0.2 port=5432 user=rep password=''p:w\\\\\\\\'' application_name=node-1'\n\
primary_slot_name = 'node_1'\n\
recovery_target_timeline = 'latest'\n"
        ), "{conf}");
        // a replica with neither conninfo nor slot still gets recovery_target_timeline
        let conf = render_postgresql_conf(&s, Some(&RecoveryConf::default()));
        assert!(conf.ends_with("# recovery (replica)\nrecovery_target_timeline = 'latest'\n"));
        assert!(!conf.contains("should be dropped"));
    }

    #[test]
    fn postmaster_args_only_owned_gucs() {
        assert_eq!(
            postmaster_args(&settings()),
            vec![
                "--cluster_name=batman",
                "--listen_addresses=127.0.0.1",
                "--max_connections=100",
                "--port=5433",
                "--wal_level=replica"
            ]
        );
    }

    #[test]
    fn hba_and_pgpass() {
        let s = settings();
        assert_eq!(
            render_pg_hba(&s.pg_hba),
            "# Do not edit this file manually!\n# It will be overwritten by pgwarden.\n\
local all all trust\nhost replication all 0.0.0.0/0 md5\n"
        );
        let nopw = Credentials {
            username: "x".into(),
            password: None,
        };
        assert_eq!(
            render_pgpass(&[&s.replication, &nopw, &s.superuser]),
            "*:*:*:rep:p\\:w\\\\\n*:*:*:postgres:su\n"
        );
    }

    #[test]
    fn sql_quoting_and_local_host() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'"), "E'a\\\\'''");
        assert_eq!(local_tcp_host("*"), "127.0.0.1");
        assert_eq!(local_tcp_host("10.0.0.1, 127.0.0.1"), "10.0.0.1");
        assert_eq!(local_tcp_host("::"), "::1");
    }
}
