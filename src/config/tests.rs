//! Whole-module tests: realistic Patroni configs, overrides, every validation message, effective GUCs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

const SAMPLE: &str = include_str!("../../tests/fixtures/config/postgres0.yml");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(rel)
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A minimal valid configuration as JSON (which is YAML), easy to break one key at a time.
fn minimal() -> Value {
    json!({
        "scope": "batman",
        "name": "node1",
        "restapi": {"listen": "0.0.0.0:8008", "connect_address": "10.0.0.1:8008"},
        "etcd3": {"host": "127.0.0.1:2379"},
        "postgresql": {
            "listen": "0.0.0.0:5432",
            "connect_address": "10.0.0.1:5432",
            "data_dir": "/data",
            "authentication": {
                "superuser": {"username": "postgres"},
                "replication": {"username": "replicator"}
            }
        }
    })
}

fn load_json(v: &Value) -> Result<Config, ConfigError> {
    load_from_str(&v.to_string())
}

/// Applies `edit` to the minimal config and returns the load error's message.
fn error_after(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = minimal();
    edit(&mut v);
    match load_json(&v) {
        Ok(_) => panic!("expected an error for {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn patroni_sample_config_loads_unchanged() {
    let c = load_from_str(SAMPLE).unwrap();
    assert_eq!(c.scope, "batman");
    assert_eq!(c.namespace, "/service/");
    assert_eq!(c.name, "postgresql0");
    assert_eq!(c.restapi.listen, "127.0.0.1:8008");
    assert_eq!(c.restapi.connect_address, "127.0.0.1:8008");
    assert_eq!(
        c.restapi.authentication,
        Some(BasicAuth {
            username: "username".into(),
            password: "password".into()
        })
    );
    assert!(!c.ctl.as_ref().unwrap().insecure);
    let etcd = c.etcd3.as_ref().unwrap();
    assert_eq!(etcd.hosts, vec!["127.0.0.1:2379"]);
    assert_eq!(etcd.protocol, "http");
    assert!(c.kubernetes.is_none());

    let b = c.bootstrap.as_ref().unwrap();
    assert_eq!(b.dcs["ttl"], json!(30));
    assert_eq!(b.dcs["postgresql"]["use_pg_rewind"], json!(true));
    assert_eq!(
        b.initdb,
        vec![
            InitdbOption::KeyValue("encoding".into(), "UTF8".into()),
            InitdbOption::Flag("data-checksums".into()),
        ]
    );
    let args: Vec<String> = b.initdb.iter().map(InitdbOption::to_arg).collect();
    assert_eq!(args, vec!["--encoding=UTF8", "--data-checksums"]);
    assert_eq!(b.pg_hba.len(), 2);
    assert!(b.methods.is_empty());

    let pg = &c.postgresql;
    assert_eq!(pg.listen_port(), 5432);
    assert_eq!(pg.listen_host(), "127.0.0.1");
    assert_eq!(pg.data_dir, PathBuf::from("data/postgresql0"));
    assert_eq!(pg.pgpass, Some(PathBuf::from("/tmp/pgpass0")));
    assert_eq!(pg.authentication.superuser.username, "postgres");
    assert_eq!(
        pg.authentication.superuser.password.as_deref(),
        Some("zalando")
    );
    assert_eq!(pg.authentication.replication.username, "replicator");
    assert_eq!(
        pg.authentication.rewind.as_ref().unwrap().username,
        "rewind_user"
    );
    assert_eq!(pg.parameters["unix_socket_directories"], json!(".."));
    assert_eq!(pg.create_replica_methods, vec!["basebackup"]);
    assert_eq!(pg.pg_ctl_timeout, Duration::from_secs(60));
    assert_eq!(pg.use_pg_rewind, None);
    assert_eq!(c.tags["nofailover"], json!(false));
    assert_eq!(c.tags.len(), 5);
    assert!(c.watchdog.is_none());
    assert_eq!(c.raw["bootstrap"]["dcs"]["loop_wait"], json!(10));

    assert_eq!(unknown_keys(&c.raw), Vec::<String>::new());

    let dynamic = DynamicConfig::from_json(&b.dcs).unwrap();
    assert!(dynamic.use_pg_rewind);
    assert!(effective_use_pg_rewind(&c, &dynamic));
    assert_eq!(effective_pg_hba(&c, &dynamic), b.pg_hba);
}

#[test]
fn env_overrides_apply_over_the_file() {
    let c = load_with_env(
        SAMPLE,
        &env(&[
            ("PATRONI_NAME", "pg-env"),
            ("PATRONI_SCOPE", "robin"),
            ("PATRONI_NAMESPACE", "/other"),
            ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:9008"),
            ("PATRONI_RESTAPI_CONNECT_ADDRESS", "10.1.1.1:9008"),
            ("PATRONI_RESTAPI_PASSWORD", "s3cret"),
            ("PATRONI_RESTAPI_ALLOWLIST", "127.0.0.1, 10.0.0.0/8"),
            ("PATRONI_RESTAPI_ALLOWLIST_INCLUDE_MEMBERS", "on"),
            ("PATRONI_RESTAPI_VERIFY_CLIENT", "required"),
            ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1,[::1]:5433"),
            ("PATRONI_POSTGRESQL_DATA_DIR", "/pgdata"),
            ("PATRONI_POSTGRESQL_BIN_DIR", "/usr/lib/postgresql/17/bin"),
            ("PATRONI_SUPERUSER_PASSWORD", "su"),
            ("PATRONI_REPLICATION_SSLMODE", "verify-full"),
            ("PATRONI_REWIND_USERNAME", "rw"),
            ("PATRONI_ETCD3_HOSTS", "https://e1:2379,e2"),
            ("PATRONI_ETCD3_USERNAME", "root"),
            ("PATRONI_KUBERNETES_NAMESPACE", "ignored-because-unset"),
        ]),
    );
    // Setting a kubernetes variable selects kubernetes as well: two DCS sections.
    assert_eq!(
        c.unwrap_err().to_string(),
        "config error: kubernetes: only one DCS section may be configured, found both etcd3 and kubernetes"
    );

    let c = load_with_env(
        SAMPLE,
        &env(&[
            ("PATRONI_NAME", "pg-env"),
            ("PATRONI_SCOPE", "robin"),
            ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:9008"),
            ("PATRONI_RESTAPI_CONNECT_ADDRESS", "10.1.1.1:9008"),
            ("PATRONI_RESTAPI_PASSWORD", "s3cret"),
            ("PATRONI_RESTAPI_ALLOWLIST", "127.0.0.1, 10.0.0.0/8"),
            ("PATRONI_RESTAPI_ALLOWLIST_INCLUDE_MEMBERS", "on"),
            ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1,[::1]:5433"),
            ("PATRONI_POSTGRESQL_DATA_DIR", "/pgdata"),
            ("PATRONI_POSTGRESQL_BIN_DIR", "/usr/lib/postgresql/17/bin"),
            ("PATRONI_SUPERUSER_PASSWORD", "su"),
            ("PATRONI_REPLICATION_SSLMODE", "verify-full"),
            ("PATRONI_REWIND_USERNAME", "rw"),
            ("PATRONI_ETCD3_HOSTS", "https://e1:2379,e2"),
            ("PATRONI_ETCD3_USERNAME", "root"),
        ]),
    )
    .unwrap();
    assert_eq!(c.name, "pg-env");
    assert_eq!(c.scope, "robin");
    assert_eq!(c.restapi.listen, "0.0.0.0:9008");
    assert_eq!(c.restapi.connect_address, "10.1.1.1:9008");
    // Only the password came from the environment; the username stays from the file.
    let auth = c.restapi.authentication.as_ref().unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("username", "s3cret")
    );
    assert_eq!(c.restapi.allowlist, vec!["127.0.0.1", "10.0.0.0/8"]);
    assert!(c.restapi.allowlist_include_members);
    assert_eq!(c.postgresql.listen_host(), "127.0.0.1,::1");
    assert_eq!(c.postgresql.listen_port(), 5433);
    assert_eq!(c.postgresql.data_dir, PathBuf::from("/pgdata"));
    assert_eq!(
        c.postgresql.bin_dir,
        Some(PathBuf::from("/usr/lib/postgresql/17/bin"))
    );
    let a = &c.postgresql.authentication;
    assert_eq!(a.superuser.password.as_deref(), Some("su"));
    assert_eq!(a.superuser.username, "postgres");
    assert_eq!(a.replication.extra["sslmode"], "verify-full");
    let rewind = a.rewind.as_ref().unwrap();
    assert_eq!(
        (rewind.username.as_str(), rewind.password.as_deref()),
        ("rw", Some("rewind_password"))
    );
    let etcd = c.etcd3.as_ref().unwrap();
    assert_eq!(etcd.hosts, vec!["e1:2379", "e2:2379"]);
    assert_eq!(etcd.protocol, "https");
    assert_eq!(etcd.username.as_deref(), Some("root"));
    // The raw dump reflects the overrides too.
    assert_eq!(c.raw["name"], json!("pg-env"));
}

#[test]
fn kubernetes_env_builds_the_raw_section() {
    let mut v = minimal();
    v.as_object_mut().unwrap().remove("etcd3");
    let c = load_with_env(
        &v.to_string(),
        &env(&[
            ("PATRONI_KUBERNETES_NAMESPACE", "db"),
            (
                "PATRONI_KUBERNETES_LABELS",
                "{application: patroni, cluster-name: x}",
            ),
            ("PATRONI_KUBERNETES_USE_ENDPOINTS", "true"),
            (
                "PATRONI_KUBERNETES_PORTS",
                "[{name: postgresql, port: 5432}]",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.kubernetes,
        Some(json!({
            "namespace": "db",
            "labels": {"application": "patroni", "cluster-name": "x"},
            "use_endpoints": true,
            "ports": [{"name": "postgresql", "port": 5432}]
        }))
    );
    assert!(c.etcd3.is_none());
}

#[test]
fn env_only_configuration() {
    let yaml = minimal().to_string();
    let c = load_from_env_only(&env(&[
        ("PATRONI_CONFIGURATION", &yaml),
        // Patroni uses PATRONI_CONFIGURATION as is: other variables do not override it.
        ("PATRONI_NAME", "ignored"),
    ]))
    .unwrap();
    assert_eq!(c.name, "node1");

    let c = load_from_env_only(&env(&[
        ("PATRONI_SCOPE", "s"),
        ("PATRONI_NAME", "n"),
        ("PATRONI_RESTAPI_LISTEN", "10.0.0.2:8008"),
        ("PATRONI_ETCD3_HOST", "etcd"),
        ("PATRONI_POSTGRESQL_LISTEN", "*:5432"),
        ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "10.0.0.2:5432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/d"),
        ("PATRONI_SUPERUSER_USERNAME", "postgres"),
        ("PATRONI_REPLICATION_USERNAME", "rep"),
    ]))
    .unwrap();
    // A concrete listen host doubles as the connect address.
    assert_eq!(c.restapi.connect_address, "10.0.0.2:8008");
    assert_eq!(c.etcd3.unwrap().hosts, vec!["etcd:2379"]);
    assert!(c.bootstrap.is_none());
    assert_eq!(c.namespace, "/service");
}

#[test]
fn directory_of_yaml_files_merges_in_sorted_order() {
    let c = load(&fixture("confd")).unwrap();
    assert_eq!(c.scope, "batman");
    assert_eq!(c.name, "node-b");
    assert_eq!(c.postgresql.parameters["work_mem"], json!("8MB"));
    assert_eq!(c.postgresql.parameters["shared_buffers"], json!("128MB"));
    assert!(c.tags.is_empty());
    assert_eq!(
        c.etcd3.unwrap().hosts,
        vec!["10.0.0.10:2379", "10.0.0.11:2379"]
    );
}

#[test]
fn single_file_loads_and_missing_file_is_reported() {
    // The sample itself: `load` also reads the process environment, which has no PATRONI_* in tests.
    assert_eq!(load(&fixture("postgres0.yml")).unwrap().name, "postgresql0");
    assert_eq!(
        load(Path::new("/nonexistent/x.yml"))
            .unwrap_err()
            .to_string(),
        "config error: cannot read /nonexistent/x.yml: No such file or directory"
    );
}

#[test]
fn yaml_and_shape_errors() {
    let e = load_from_str("scope: [unclosed").unwrap_err().to_string();
    assert!(
        e.starts_with("config error: <string>: invalid YAML: "),
        "{e}"
    );
    assert_eq!(
        load_from_str("- a\n- b").unwrap_err().to_string(),
        "config error: <string>: the configuration must be a YAML mapping"
    );
}

/// One way to break the minimal config.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn validation_messages() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["scope"] = json!("")),
            "config error: scope: is required",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("name");
            }),
            "config error: name: is required",
        ),
        (
            Box::new(|v| v["name"] = json!("__patroni_strict_sync_replica_placeholder__")),
            "config error: name: '__patroni_strict_sync_replica_placeholder__' is reserved by Patroni",
        ),
        (
            Box::new(|v| v["restapi"]["listen"] = json!("abc")),
            "config error: restapi.listen: 'abc' is not host:port",
        ),
        (
            Box::new(|v| v["restapi"]["listen"] = json!("0.0.0.0:0")),
            "config error: restapi.listen: port 0 is out of range 1..65535",
        ),
        (
            Box::new(|v| {
                v["restapi"]
                    .as_object_mut()
                    .unwrap()
                    .remove("connect_address");
            }),
            "config error: restapi.connect_address: is required",
        ),
        (
            Box::new(|v| v["restapi"]["connect_address"] = json!("0.0.0.0:8008")),
            "config error: restapi.connect_address: '0.0.0.0:8008' must name one host that other members can connect to",
        ),
        (
            Box::new(|v| v["restapi"]["authentication"] = json!({"username": "u"})),
            "config error: restapi.authentication.password: is required",
        ),
        (
            Box::new(|v| v["restapi"]["allowlist"] = json!("10.0.0.1")),
            "config error: restapi.allowlist: expected a list, got \"10.0.0.1\"",
        ),
        (
            Box::new(|v| v["restapi"] = json!("0.0.0.0:8008")),
            "config error: restapi: expected a mapping, got \"0.0.0.0:8008\"",
        ),
        (
            Box::new(|v| {
                v["postgresql"].as_object_mut().unwrap().remove("data_dir");
            }),
            "config error: postgresql.data_dir: is required",
        ),
        (
            Box::new(|v| {
                v["postgresql"].as_object_mut().unwrap().remove("listen");
            }),
            "config error: postgresql.listen: is required",
        ),
        (
            Box::new(|v| v["postgresql"]["listen"] = json!("localhost:99999")),
            "config error: postgresql.listen: port 99999 is out of range 1..65535",
        ),
        (
            Box::new(|v| {
                v["postgresql"]
                    .as_object_mut()
                    .unwrap()
                    .remove("connect_address");
            }),
            "config error: postgresql.connect_address: is required",
        ),
        (
            Box::new(|v| v["postgresql"]["connect_address"] = json!("10.0.0.1")),
            "config error: postgresql.connect_address: '10.0.0.1' is not host:port",
        ),
        (
            Box::new(|v| {
                v["postgresql"]["authentication"]
                    .as_object_mut()
                    .unwrap()
                    .remove("superuser");
            }),
            "config error: postgresql.authentication.superuser.username: is required",
        ),
        (
            Box::new(|v| {
                v["postgresql"]["authentication"]["replication"] = json!({"password": "x"})
            }),
            "config error: postgresql.authentication.replication.username: is required",
        ),
        (
            Box::new(|v| {
                v["postgresql"]["basebackup"] = json!({"max-rate": "100M", "pgdata": "/x"})
            }),
            "config error: postgresql.basebackup: option 'pgdata' is not allowed, Patroni sets it itself",
        ),
        (
            Box::new(|v| {
                v["postgresql"]["basebackup"] = json!(["verbose", {"wal-method": "fetch"}])
            }),
            "config error: postgresql.basebackup: option 'wal-method' is not allowed, Patroni sets it itself",
        ),
        (
            Box::new(|v| v["postgresql"]["pg_ctl_timeout"] = json!("soon")),
            "config error: postgresql.pg_ctl_timeout: expected an integer, got \"soon\"",
        ),
        (
            Box::new(|v| v["postgresql"]["use_unix_socket"] = json!("perhaps")),
            "config error: postgresql.use_unix_socket: expected a boolean, got \"perhaps\"",
        ),
        (
            Box::new(|v| v["postgresql"]["pg_hba"] = json!(["local all all trust", ["x"]])),
            "config error: postgresql.pg_hba.1: expected a string, got [\"x\"]",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("etcd3");
            }),
            "config error: etcd3: a DCS section is required: etcd3 or kubernetes",
        ),
        (
            Box::new(|v| v["etcd"] = json!({"host": "127.0.0.1:2379"})),
            "config error: etcd: etcd v2 is not supported, use etcd3",
        ),
        (
            Box::new(|v| v["consul"] = json!({"host": "127.0.0.1:8500"})),
            "config error: consul: this DCS is not supported, use etcd3 or kubernetes",
        ),
        (
            Box::new(|v| v["kubernetes"] = json!({"namespace": "x"})),
            "config error: kubernetes: only one DCS section may be configured, found both etcd3 and kubernetes",
        ),
        (
            Box::new(|v| v["etcd3"] = json!({"protocol": "http"})),
            "config error: etcd3: one of host, hosts, url, proxy or srv is required",
        ),
        (
            Box::new(|v| v["etcd3"] = json!({"host": "e:abc"})),
            "config error: etcd3.host: 'e:abc' is not host:port",
        ),
        (
            Box::new(|v| v["etcd3"]["protocol"] = json!("grpc")),
            "config error: etcd3.protocol: 'grpc' is not http or https",
        ),
        (
            Box::new(|v| v["bootstrap"] = json!({"dcs": {"ttl": "abc"}})),
            "config error: bootstrap.dcs.ttl: expected an integer, got \"abc\"",
        ),
        (
            Box::new(|v| {
                v["bootstrap"] = json!({"dcs": {"postgresql": {"use_pg_rewind": "sometimes"}}})
            }),
            "config error: bootstrap.dcs.postgresql.use_pg_rewind: expected a boolean, got \"sometimes\"",
        ),
        (
            Box::new(|v| v["bootstrap"] = json!({"method": "wal_e"})),
            "config error: bootstrap.wal_e.command: is required",
        ),
        (
            Box::new(|v| v["bootstrap"] = json!({"initdb": ["data-checksums", {"pgdata": "/x"}]})),
            "config error: bootstrap.initdb: option 'pgdata' is not allowed, Patroni sets it itself",
        ),
        (
            Box::new(|v| v["bootstrap"] = json!({"initdb": [{"a": 1, "b": 2}]})),
            "config error: bootstrap.initdb.0: expected an option name or a one-key mapping, got {\"a\":1,\"b\":2}",
        ),
        (
            Box::new(|v| v["tags"] = json!(["nofailover"])),
            "config error: tags: expected a mapping, got [\"nofailover\"]",
        ),
    ];
    for (edit, expected) in cases {
        assert_eq!(error_after(edit), expected);
    }
}

#[test]
fn lenient_values_patroni_accepts() {
    let mut v = minimal();
    v["restapi"]["connect_address"] = json!(null); // written as `connect_address:` → absent
    v["restapi"]["listen"] = json!("10.0.0.1:8008");
    v["postgresql"]["pg_ctl_timeout"] = json!("120");
    v["postgresql"]["use_pg_rewind"] = json!("on");
    v["postgresql"]["authentication"]["superuser"]["password"] = json!(1234);
    v["postgresql"]["parameters"] = json!(null);
    v["postgresql"]["create_replica_methods"] = json!(["pgbackrest", "basebackup"]);
    v["postgresql"]["pgbackrest"] = json!({"command": "pgbackrest restore", "keep_data": true});
    v["postgresql"]["basebackup"] = json!(["verbose", {"max-rate": "100M"}]);
    v["bootstrap"] = json!({
        "method": "wal_e",
        "wal_e": {"command": "restore.sh", "no_params": true},
        "initdb": {"encoding": "UTF8", "locale": "C"}
    });
    let c = load_json(&v).unwrap();
    assert_eq!(c.restapi.connect_address, "10.0.0.1:8008");
    assert_eq!(c.postgresql.pg_ctl_timeout, Duration::from_secs(120));
    assert_eq!(c.postgresql.use_pg_rewind, Some(true));
    assert_eq!(
        c.postgresql.authentication.superuser.password.as_deref(),
        Some("1234")
    );
    assert!(c.postgresql.parameters.is_empty());
    assert_eq!(c.postgresql.extra["pgbackrest"]["keep_data"], json!(true));
    let b = c.bootstrap.unwrap();
    assert_eq!(b.method.as_deref(), Some("wal_e"));
    assert_eq!(b.methods["wal_e"]["command"], json!("restore.sh"));
    assert_eq!(
        b.initdb,
        vec![
            InitdbOption::KeyValue("encoding".into(), "UTF8".into()),
            InitdbOption::KeyValue("locale".into(), "C".into()),
        ]
    );
}

#[test]
fn etcd3_endpoint_forms() {
    let etcd = |section: Value| {
        let mut v = minimal();
        v["etcd3"] = section;
        load_json(&v).unwrap().etcd3.unwrap()
    };
    let e = etcd(json!({"hosts": ["a:1", "b:2"]}));
    assert_eq!(e.hosts, vec!["a:1", "b:2"]);
    let e = etcd(json!({"url": "https://etcd.example:2379/"}));
    assert_eq!(
        (e.hosts, e.protocol.as_str()),
        (vec!["etcd.example:2379".to_string()], "https")
    );
    let e = etcd(json!({"proxy": "http://proxy:2379"}));
    assert_eq!(e.hosts, vec!["proxy:2379"]);
    assert!(e.use_proxies);
    let e = etcd(json!({"host": "[::1]", "cacert": "/ca.pem"}));
    assert_eq!(
        (e.hosts, e.protocol.as_str()),
        (vec!["[::1]:2379".to_string()], "https")
    );
    let e = etcd(json!({"srv": "example.org"}));
    assert!(e.hosts.is_empty());
    assert_eq!(e.srv.as_deref(), Some("example.org"));
}

fn with_params(local: Value, dynamic: Value) -> BTreeMap<String, String> {
    let mut v = minimal();
    v["postgresql"]["parameters"] = local;
    let c = load_json(&v).unwrap();
    let d = DynamicConfig::from_json(
        json!({"postgresql": {"parameters": dynamic}})
            .as_object()
            .unwrap(),
    )
    .unwrap();
    effective_parameters(&c, &d)
}

#[test]
fn effective_parameters_defaults() {
    let p = with_params(json!({}), json!({}));
    let expected: BTreeMap<String, String> = [
        ("cluster_name", "batman"),
        ("hot_standby", "on"),
        ("listen_addresses", "0.0.0.0"),
        ("max_connections", "100"),
        ("max_locks_per_transaction", "64"),
        ("max_prepared_transactions", "0"),
        ("max_replication_slots", "10"),
        ("max_wal_senders", "10"),
        ("max_worker_processes", "8"),
        ("port", "5432"),
        ("track_commit_timestamp", "off"),
        ("wal_keep_size", "128MB"),
        ("wal_level", "replica"),
        ("wal_log_hints", "on"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(p, expected);
}

#[test]
fn owned_gucs_come_only_from_dynamic_and_are_validated() {
    let p = with_params(
        json!({
            "max_connections": 500,          // owned: ignored locally
            "wal_level": "logical",          // owned: ignored locally
            "port": 6000,                    // derived from postgresql.listen
            "shared_buffers": "1GB",         // local wins over dynamic
            "log_min_duration_statement": 1000
        }),
        json!({
            "max_connections": "200",        // valid string → 200
            "max_wal_senders": 2,            // below minimum 3 → default 10
            "max_locks_per_transaction": "x",// not an integer → default 64
            "wal_level": "LOGICAL",          // allowed, case-insensitive
            "wal_log_hints": false,          // bool → off
            "track_commit_timestamp": "yes", // bool → on
            "wal_keep_segments": 64,         // converted to wal_keep_size on PG13+
            "cluster_name": "other",         // never settable
            "hot_standby": "off",            // never settable
            "shared_buffers": "512MB",
            "archive_mode": true,
            "archive_timeout": 1800,
            "unset_me": null
        }),
    );
    assert_eq!(p["max_connections"], "200");
    assert_eq!(p["max_wal_senders"], "10");
    assert_eq!(p["max_locks_per_transaction"], "64");
    assert_eq!(p["wal_level"], "logical");
    assert_eq!(p["wal_log_hints"], "off");
    assert_eq!(p["track_commit_timestamp"], "on");
    assert_eq!(p["wal_keep_size"], "1024MB");
    assert!(!p.contains_key("wal_keep_segments"));
    assert_eq!(p["cluster_name"], "batman");
    assert_eq!(p["hot_standby"], "on");
    assert_eq!(p["port"], "5432");
    assert_eq!(p["shared_buffers"], "1GB");
    assert_eq!(p["archive_mode"], "on");
    assert_eq!(p["archive_timeout"], "1800");
    assert_eq!(p["log_min_duration_statement"], "1000");
    assert!(!p.contains_key("unset_me"));

    let p = with_params(
        json!({}),
        json!({"wal_keep_size": "1GB", "max_connections": 10}),
    );
    assert_eq!(p["wal_keep_size"], "1GB");
    assert_eq!(p["max_connections"], "100");
    let p = with_params(json!({}), json!({"wal_keep_size": "8MB"}));
    assert_eq!(p["wal_keep_size"], "128MB");
}

#[test]
fn pg_hba_precedence() {
    let mut v = minimal();
    v["bootstrap"] = json!({"pg_hba": ["host all all 0.0.0.0/0 md5"]});
    let c = load_json(&v).unwrap();
    let none = DynamicConfig::default();
    let dynamic = DynamicConfig::from_json(
        json!({"postgresql": {"pg_hba": ["host all all 10.0.0.0/8 md5"]}})
            .as_object()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        effective_pg_hba(&c, &none),
        vec!["host all all 0.0.0.0/0 md5"]
    );
    assert_eq!(
        effective_pg_hba(&c, &dynamic),
        vec!["host all all 10.0.0.0/8 md5"]
    );

    v["postgresql"]["pg_hba"] = json!(["local all all trust"]);
    let c = load_json(&v).unwrap();
    assert_eq!(effective_pg_hba(&c, &dynamic), vec!["local all all trust"]);
}

#[test]
fn use_pg_rewind_precedence() {
    let dynamic = DynamicConfig::from_json(
        json!({"postgresql": {"use_pg_rewind": true}})
            .as_object()
            .unwrap(),
    )
    .unwrap();
    let c = load_json(&minimal()).unwrap();
    assert!(effective_use_pg_rewind(&c, &dynamic));
    let mut v = minimal();
    v["postgresql"]["use_pg_rewind"] = json!(false);
    assert!(!effective_use_pg_rewind(&load_json(&v).unwrap(), &dynamic));
}

#[test]
fn unknown_keys_are_listed_not_fatal() {
    let mut v = minimal();
    v["restapi"]["listne"] = json!("x");
    v["postgresql"]["data_dri"] = json!("/x");
    v["future_feature"] = json!({"a": 1});
    let c = load_json(&v).unwrap();
    assert_eq!(
        unknown_keys(&c.raw),
        vec!["future_feature", "postgresql.data_dri", "restapi.listne"]
    );
}
