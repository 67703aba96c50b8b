//! Keys Patroni would not recognise. They are warnings, never errors: Patroni ignores them too, and
//! a newer Patroni may know keys this agent does not.

use serde_json::Value;

/// What may appear under a key.
#[derive(Clone, Copy)]
enum Node {
    /// Anything (free-form sections such as `parameters` or `tags`).
    Any,
    /// A mapping with these keys.
    Keys(&'static [(&'static str, Node)]),
    /// Like `Keys`, but any mapping holding a `command` is a custom method section (free-form).
    WithMethods(&'static [(&'static str, Node)]),
}

use Node::{Any, Keys, WithMethods};

const fn leaves<const N: usize>(names: [&'static str; N]) -> [(&'static str, Node); N] {
    let mut out = [("", Any); N];
    let mut i = 0;
    while i < N {
        out[i] = (names[i], Any);
        i += 1;
    }
    out
}

const BASIC_AUTH: [(&str, Node); 2] = leaves(["username", "password"]);
const PG_USER: [(&str, Node); 12] = leaves([
    "username",
    "password",
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
]);
const RESTAPI: [(&str, Node); 17] = [
    ("listen", Any),
    ("connect_address", Any),
    ("authentication", Keys(&BASIC_AUTH)),
    ("certfile", Any),
    ("keyfile", Any),
    ("keyfile_password", Any),
    ("cafile", Any),
    ("ciphers", Any),
    ("verify_client", Any),
    ("allowlist", Any),
    ("allowlist_include_members", Any),
    ("http_extra_headers", Any),
    ("https_extra_headers", Any),
    ("request_queue_size", Any),
    ("thread_pool_size", Any),
    ("server_tokens", Any),
    ("auth", Any),
];
const CTL: [(&str, Node); 6] = [
    ("authentication", Keys(&BASIC_AUTH)),
    ("insecure", Any),
    ("cacert", Any),
    ("certfile", Any),
    ("keyfile", Any),
    ("keyfile_password", Any),
];
const ETCD3: [(&str, Node); 14] = leaves([
    "host",
    "hosts",
    "url",
    "proxy",
    "srv",
    "srv_suffix",
    "protocol",
    "username",
    "password",
    "cacert",
    "cert",
    "key",
    "key_password",
    "use_proxies",
]);
const KUBERNETES: [(&str, Node); 19] = leaves([
    "namespace",
    "labels",
    "scope_label",
    "role_label",
    "leader_label_value",
    "follower_label_value",
    "standby_leader_label_value",
    "tmp_role_label",
    "bootstrap_labels",
    "use_endpoints",
    "pod_ip",
    "ports",
    // pgwarden's own: the Lease's name, the replica's re-publication threshold, the primary's
    // EndpointSlice.
    "lease_name",
    "position_threshold",
    "primary_endpoint_slice",
    "cacert",
    "bypass_api_service",
    "retriable_http_codes",
    "context",
]);
const WATCHDOG: [(&str, Node); 3] = leaves(["mode", "device", "safety_margin"]);
const LOG: [(&str, Node); 13] = leaves([
    "type",
    "level",
    "traceback_level",
    "format",
    "dateformat",
    "static_fields",
    "max_queue_size",
    "dir",
    "mode",
    "file_num",
    "file_size",
    "loggers",
    "deduplicate_heartbeat_logs",
]);
const PG_AUTH: [(&str, Node); 3] = [
    ("superuser", Keys(&PG_USER)),
    ("replication", Keys(&PG_USER)),
    ("rewind", Keys(&PG_USER)),
];
const POSTGRESQL: [(&str, Node); 39] = [
    ("authentication", Keys(&PG_AUTH)),
    ("listen", Any),
    ("connect_address", Any),
    ("proxy_address", Any),
    ("data_dir", Any),
    ("config_dir", Any),
    ("bin_dir", Any),
    ("bin_name", Any),
    ("pgpass", Any),
    ("custom_conf", Any),
    ("parameters", Any),
    ("pg_hba", Any),
    ("pg_ident", Any),
    ("use_pg_rewind", Any),
    ("rewind", Any),
    ("remove_data_directory_on_rewind_failure", Any),
    ("remove_data_directory_on_diverged_timelines", Any),
    ("basebackup", Any),
    ("create_replica_methods", Any),
    ("pg_ctl_timeout", Any),
    ("callbacks", Any),
    ("recovery_conf", Any),
    ("use_unix_socket", Any),
    ("use_unix_socket_repl", Any),
    ("pre_promote", Any),
    ("before_stop", Any),
    ("use_slots", Any),
    ("name", Any),
    ("scope", Any),
    ("parameters_primary", Any),
    ("parameters_replica", Any),
    ("parameters_standby_leader", Any),
    ("pg_hba_primary", Any),
    ("pg_hba_replica", Any),
    ("pg_hba_standby_leader", Any),
    ("pg_ident_primary", Any),
    ("pg_ident_replica", Any),
    ("pg_ident_standby_leader", Any),
    ("retry_timeout", Any),
];
const DYNAMIC_PG: [(&str, Node); 15] = [
    ("use_pg_rewind", Any),
    ("use_slots", Any),
    ("parameters", Any),
    ("pg_hba", Any),
    ("pg_ident", Any),
    ("recovery_conf", Any),
    ("parameters_primary", Any),
    ("parameters_replica", Any),
    ("parameters_standby_leader", Any),
    ("pg_hba_primary", Any),
    ("pg_hba_replica", Any),
    ("pg_hba_standby_leader", Any),
    ("pg_ident_primary", Any),
    ("pg_ident_replica", Any),
    ("pg_ident_standby_leader", Any),
];
const DYNAMIC: [(&str, Node); 24] = [
    ("ttl", Any),
    ("loop_wait", Any),
    ("retry_timeout", Any),
    ("maximum_lag_on_failover", Any),
    ("maximum_lag_on_syncnode", Any),
    ("max_timelines_history", Any),
    ("primary_start_timeout", Any),
    ("master_start_timeout", Any),
    ("primary_stop_timeout", Any),
    ("master_stop_timeout", Any),
    ("primary_race_backoff", Any),
    ("shutdown_handover_timeout", Any),
    ("synchronous_mode", Any),
    ("synchronous_mode_strict", Any),
    ("synchronous_node_count", Any),
    ("failsafe_mode", Any),
    ("check_timeline", Any),
    ("member_slots_ttl", Any),
    ("pause", Any),
    ("slots", Any),
    ("ignore_slots", Any),
    ("standby_cluster", Any),
    ("citus", Any),
    ("postgresql", Keys(&DYNAMIC_PG)),
];
const BOOTSTRAP: [(&str, Node); 7] = [
    ("dcs", Keys(&DYNAMIC)),
    ("method", Any),
    ("initdb", Any),
    ("pg_hba", Any),
    ("users", Any),
    ("post_bootstrap", Any),
    ("post_init", Any),
];
const ROOT: [(&str, Node); 33] = [
    ("scope", Any),
    ("name", Any),
    ("namespace", Any),
    ("log", Keys(&LOG)),
    ("restapi", Keys(&RESTAPI)),
    ("ctl", Keys(&CTL)),
    ("bootstrap", WithMethods(&BOOTSTRAP)),
    ("postgresql", WithMethods(&POSTGRESQL)),
    ("etcd3", Keys(&ETCD3)),
    ("kubernetes", Keys(&KUBERNETES)),
    ("watchdog", Keys(&WATCHDOG)),
    ("tags", Any),
    ("citus", Any),
    ("thread_pool_size", Any),
    ("thread_stack_size", Any),
    // Other DCS sections are rejected by validation with a clearer message than "unknown".
    ("etcd", Any),
    ("consul", Any),
    ("zookeeper", Any),
    ("exhibitor", Any),
    ("raft", Any),
    // Dynamic keys at the top level are legacy local settings Patroni silently ignores.
    ("ttl", Any),
    ("loop_wait", Any),
    ("retry_timeout", Any),
    ("maximum_lag_on_failover", Any),
    ("maximum_lag_on_syncnode", Any),
    ("max_timelines_history", Any),
    ("primary_start_timeout", Any),
    ("primary_stop_timeout", Any),
    ("synchronous_mode", Any),
    ("synchronous_mode_strict", Any),
    ("synchronous_node_count", Any),
    ("failsafe_mode", Any),
    ("check_timeline", Any),
];

/// Dotted paths of keys Patroni does not know, sorted. Free-form sections (`parameters`,
/// `tags`, `recovery_conf`, custom replica/bootstrap method sections, ...) are not inspected.
pub fn unknown_keys(raw: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(&WithMethods(&ROOT), raw, "", &mut out);
    out
}

fn walk(node: &Node, v: &Value, path: &str, out: &mut Vec<String>) {
    let (keys, methods) = match node {
        Any => return,
        Keys(k) => (*k, false),
        WithMethods(k) => (*k, true),
    };
    let Value::Object(m) = v else { return };
    for (k, child) in m {
        let full = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match keys.iter().find(|(name, _)| name == k) {
            Some((_, sub)) => walk(sub, child, &full, out),
            None if methods && path.is_empty() => out.push(full),
            None if methods && is_method_section(child) => {}
            None => out.push(full),
        }
    }
}

/// Custom replica/bootstrap methods are `<name>: {command: ...}`.
fn is_method_section(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.contains_key("command"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_only_unknown_paths() {
        let raw = json!({
            "scope": "s", "nmae": "typo",
            "restapi": {"listen": "x", "authentication": {"username": "u", "pasword": "p"}},
            "bootstrap": {"dcs": {"ttl": 30, "postgresql": {"use_pg_rewind": true, "bogus": 1}},
                          "wal_e": {"command": "x"}},
            "postgresql": {"parameters": {"anything": 1}, "pgbackrest": {"command": "x"},
                           "no_command_section": {"a": 1},
                           "authentication": {"superuser": {"username": "p", "sslmode": "x", "wat": 1}}},
            "tags": {"custom": true}
        });
        assert_eq!(
            unknown_keys(&raw),
            vec![
                "bootstrap.dcs.postgresql.bogus",
                "nmae",
                "postgresql.authentication.superuser.wat",
                "postgresql.no_command_section",
                "restapi.authentication.pasword",
            ]
        );
    }
}
