//! `docs/configuration-reference.md` against the code, so that the two cannot drift apart:
//!
//! - every key in the reference's "Key" tables is one pgwarden knows (no unknown-key warning),
//!   or is marked `unknown-key warning` and does draw one;
//! - every key `src/config/unknown.rs` knows is in the reference;
//! - every `PATRONI_*` variable the reference names sets the key of its row;
//! - every variable `src/config/env.rs` reads for a documented key is named in its row.
//!
//! The reference is read from the repository at test time. Rows of the section
//! "Dynamic configuration" are keys of the store's `config` (and of `bootstrap.dcs`); the
//! others are paths in the local file. `<user>` in a key (`<USER>` in a variable) stands for
//! `superuser`, `replication` and `rewind`; keys with `<method>` are not checked.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

const DOC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docs/configuration-reference.md"
);
const UNKNOWN_RS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/unknown.rs");
const ENV_RS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/env.rs");
const USERS: [&str; 3] = ["superuser", "replication", "rewind"];
const WARNING: &str = "unknown-key warning";

/// One key of a "Key" table, placeholders expanded.
#[derive(Debug, Clone)]
struct Entry {
    dynamic: bool,
    key: String,
    ty: String,
    env: Vec<String>,
    status: String,
    line: usize,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `code spans` of a table cell.
fn spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

fn cells(line: &str) -> Vec<String> {
    let t = line.trim().trim_start_matches('|').trim_end_matches('|');
    t.split('|').map(|c| c.trim().to_owned()).collect()
}

/// Every row of every table whose first column is "Key".
fn entries() -> Vec<Entry> {
    let doc = read(DOC);
    let mut out = Vec::new();
    let mut dynamic = false;
    let mut header: Option<Vec<String>> = None;
    let mut in_table = false;
    for (i, line) in doc.lines().enumerate() {
        if let Some(h) = line.strip_prefix("## ") {
            dynamic = h.starts_with("Dynamic configuration");
        }
        if !line.trim_start().starts_with('|') {
            in_table = false;
            header = None;
            continue;
        }
        if !in_table {
            in_table = true;
            let h = cells(line);
            header = (h.first().map(String::as_str) == Some("Key")).then_some(h);
            continue;
        }
        let Some(h) = &header else { continue };
        if line.trim_start().starts_with("|---") {
            continue;
        }
        let c = cells(line);
        assert_eq!(
            c.len(),
            h.len(),
            "line {}: {} cells, header has {}",
            i + 1,
            c.len(),
            h.len()
        );
        let col = |name: &str| {
            h.iter()
                .position(|x| x == name)
                .map(|j| c[j].clone())
                .unwrap_or_default()
        };
        let env: Vec<String> = spans(&col("Env"))
            .into_iter()
            .filter(|v| v.starts_with("PATRONI_"))
            .collect();
        let keys = spans(&c[0]);
        assert!(!keys.is_empty(), "line {}: no key in {:?}", i + 1, c[0]);
        for key in keys {
            if key.contains("<method>") {
                continue;
            }
            let expansions: Vec<(String, Vec<String>)> = if key.contains("<user>") {
                USERS
                    .iter()
                    .map(|u| {
                        let up = u.to_ascii_uppercase();
                        (
                            key.replace("<user>", u),
                            env.iter().map(|v| v.replace("<USER>", &up)).collect(),
                        )
                    })
                    .collect()
            } else {
                vec![(key.clone(), env.clone())]
            };
            for (key, env) in expansions {
                assert!(
                    !key.contains('<') && env.iter().all(|v| !v.contains('<')),
                    "line {}: unexpanded placeholder in {key} {env:?}",
                    i + 1
                );
                out.push(Entry {
                    dynamic,
                    key,
                    ty: col("Type"),
                    env,
                    status: col("pgwarden"),
                    line: i + 1,
                });
            }
        }
    }
    assert!(out.len() > 100, "only {} keys found in {DOC}", out.len());
    out
}

/// The local path of an entry (a dynamic key lives under `bootstrap.dcs` in the file).
fn local_path(e: &Entry) -> String {
    if e.dynamic {
        format!("bootstrap.dcs.{}", e.key)
    } else {
        e.key.clone()
    }
}

fn with_leaf(path: &str) -> Value {
    let mut v = Value::String("x".into());
    for part in path.split('.').rev() {
        let mut m = Map::new();
        m.insert(part.to_owned(), v);
        v = Value::Object(m);
    }
    v
}

#[test]
fn documented_keys_are_known_or_marked() {
    let mut wrong = Vec::new();
    for e in entries() {
        let path = local_path(&e);
        let got = pgwarden::config::unknown_keys(&with_leaf(&path));
        let want: Vec<String> = if e.status.contains(WARNING) {
            vec![path.clone()]
        } else {
            Vec::new()
        };
        if got != want {
            wrong.push(format!(
                "line {}: {path}: unknown_keys gives {got:?}, the reference says {:?}",
                e.line, e.status
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn no_key_is_documented_twice() {
    let mut seen = BTreeMap::new();
    let mut twice = Vec::new();
    for e in entries() {
        if let Some(first) = seen.insert((e.dynamic, e.key.clone()), e.line) {
            twice.push(format!("{} (lines {first} and {})", e.key, e.line));
        }
    }
    assert!(twice.is_empty(), "{twice:?}");
}

/// `const NAME: ... = <body>;` of a Rust file: the body text by name.
fn consts(src: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = src;
    while let Some(at) = rest.find("\nconst ") {
        rest = &rest[at + "\nconst ".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if name.is_empty() || !rest[name.len()..].starts_with(':') {
            continue;
        }
        let Some(eq) = rest.find(" = ") else { break };
        let Some(end) = rest[eq..].find(';') else {
            break;
        };
        out.insert(name, rest[eq + 3..eq + end].to_owned());
    }
    out
}

/// The string literals of a text.
fn literals(text: &str) -> Vec<String> {
    text.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

/// `unknown.rs`'s tree: (key, the constant describing what is under it, if any).
fn node_entries(body: &str) -> Vec<(String, Option<String>)> {
    if let Some(list) = body.trim().strip_prefix("leaves(") {
        return literals(list).into_iter().map(|k| (k, None)).collect();
    }
    body.split("(\"")
        .skip(1)
        .map(|item| {
            let (key, tail) = item.split_once('"').expect("a closing quote");
            let child = tail.split_once("(&").map(|(_, c)| {
                c.chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect::<String>()
            });
            (key.to_owned(), child)
        })
        .collect()
}

fn known_paths(
    all: &BTreeMap<String, String>,
    node: &str,
    prefix: &str,
    out: &mut BTreeSet<String>,
) {
    let body = all
        .get(node)
        .unwrap_or_else(|| panic!("unknown.rs has no const {node}"));
    for (key, child) in node_entries(body) {
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match child {
            Some(c) => known_paths(all, &c, &path, out),
            None => {
                out.insert(path);
            }
        }
    }
}

#[test]
fn every_known_key_is_documented() {
    let all = consts(&read(UNKNOWN_RS));
    let mut known = BTreeSet::new();
    known_paths(&all, "ROOT", "", &mut known);
    assert!(
        known.len() > 150,
        "only {} known keys parsed from {UNKNOWN_RS}",
        known.len()
    );
    let documented: BTreeSet<String> = entries().iter().map(local_path).collect();
    let missing: Vec<&String> = known.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys src/config/unknown.rs knows but {DOC} does not list: {missing:?}"
    );
}

/// A valid configuration in which every section a variable may complete is present (a
/// username alone would fail for want of its password).
const BASE_ETCD: &str = "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\n  connect_address: 127.0.0.1:8008\n  authentication: {username: u, password: p}\nctl:\n  authentication: {username: u, password: p}\netcd3:\n  host: 127.0.0.1:2379\npostgresql:\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\n  data_dir: /tmp/x\n  authentication:\n    superuser: {username: postgres}\n    replication: {username: rep}\n    rewind: {username: rw}\n";

/// A value the variable's key accepts, from the row's type.
fn sample(var: &str, ty: &str) -> &'static str {
    if var.ends_with("_PORTS") {
        "[{port: 5432}]"
    } else if ty.starts_with("host:port") {
        "127.0.0.1:9999"
    } else if var.ends_with("_PROTOCOL") {
        "http"
    } else if ty.starts_with("bool") {
        "true"
    } else if ty.starts_with("int") {
        "7"
    } else if ty.starts_with("list") {
        "x"
    } else if ty.starts_with("mapping") {
        "k: v"
    } else {
        "x"
    }
}

fn pointer(key: &str) -> String {
    format!("/{}", key.replace('.', "/"))
}

#[test]
fn documented_variables_set_their_keys() {
    let base_k8s = BASE_ETCD.replace("etcd3:\n  host: 127.0.0.1:2379\n", "kubernetes: {}\n");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for e in entries() {
        for var in &e.env {
            let base = if e.key.starts_with("kubernetes.") {
                base_k8s.as_str()
            } else {
                BASE_ETCD
            };
            let env = BTreeMap::from([(var.clone(), sample(var, &e.ty).to_owned())]);
            checked += 1;
            match pgwarden::config::load_with_env(base, &env) {
                Ok(cfg) if cfg.raw.pointer(&pointer(&e.key)).is_some() => {}
                Ok(cfg) => wrong.push(format!(
                    "line {}: {var} does not set {} (got {})",
                    e.line, e.key, cfg.raw
                )),
                Err(err) => wrong.push(format!("line {}: {var}: {err}", e.line)),
            }
        }
    }
    assert!(checked > 80, "only {checked} variables checked");
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// `("name", Kind)` tuples of one of env.rs's tables.
fn env_table(all: &BTreeMap<String, String>, name: &str) -> Vec<String> {
    let body = all
        .get(name)
        .unwrap_or_else(|| panic!("env.rs has no const {name}"));
    node_entries(body).into_iter().map(|(k, _)| k).collect()
}

#[test]
fn variables_env_rs_reads_for_documented_keys_are_named() {
    let all = consts(&read(ENV_RS));
    let mut expected: Vec<(String, String)> = Vec::new();
    for (table, section) in [
        ("RESTAPI", "restapi"),
        ("CTL", "ctl"),
        ("POSTGRESQL", "postgresql"),
        ("LOG", "log"),
    ] {
        for p in env_table(&all, table) {
            expected.push((
                format!(
                    "PATRONI_{}_{}",
                    section.to_ascii_uppercase(),
                    p.to_ascii_uppercase()
                ),
                format!("{section}.{p}"),
            ));
        }
    }
    for b in literals(all.get("BINARIES").expect("BINARIES")) {
        expected.push((
            format!("PATRONI_POSTGRESQL_BIN_{}", b.to_ascii_uppercase()),
            "postgresql.bin_name".into(),
        ));
    }
    for section in ["restapi", "ctl"] {
        for p in ["username", "password"] {
            expected.push((
                format!(
                    "PATRONI_{}_{}",
                    section.to_ascii_uppercase(),
                    p.to_ascii_uppercase()
                ),
                format!("{section}.authentication.{p}"),
            ));
        }
    }
    for p in ["username", "password"] {
        expected.push((
            format!("PATRONI_ETCD3_{}", p.to_ascii_uppercase()),
            format!("etcd3.{p}"),
        ));
    }
    let entries = entries();
    let documented: BTreeMap<&str, &Entry> = entries
        .iter()
        .filter(|e| !e.dynamic)
        .map(|e| (e.key.as_str(), e))
        .collect();
    // The generic store suffixes, for the keys the reference lists.
    for s in env_table(&all, "DCS_SUFFIXES") {
        for section in ["etcd3", "kubernetes"] {
            let key = format!("{section}.{s}");
            if documented.contains_key(key.as_str()) {
                expected.push((
                    format!(
                        "PATRONI_{}_{}",
                        section.to_ascii_uppercase(),
                        s.to_ascii_uppercase()
                    ),
                    key,
                ));
            }
        }
    }
    let mut missing = Vec::new();
    for (var, key) in &expected {
        match documented.get(key.as_str()) {
            Some(e) if e.env.contains(var) => {}
            Some(e) => missing.push(format!("line {}: {key} does not name {var}", e.line)),
            None => missing.push(format!("{key} (read from {var}) is not documented")),
        }
    }
    assert!(
        expected.len() > 60,
        "only {} variables parsed",
        expected.len()
    );
    assert!(missing.is_empty(), "\n{}", missing.join("\n"));
}
