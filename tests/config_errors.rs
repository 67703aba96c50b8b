//! A bad configuration stops start-up with one line naming the key and the problem, exit 1.

use std::process::Command;

fn run(yaml: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!(
        "pgwarden-cfg-{}-{}",
        std::process::id(),
        yaml.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("run")
        .arg(&path)
        .env_remove("PATRONI_CONFIGURATION")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\n  connect_address: 127.0.0.1:8008\netcd3:\n  host: 127.0.0.1:2379\npostgresql:\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\n  data_dir: /tmp/x\n  authentication:\n    superuser: {username: postgres}\n    replication: {username: rep}\n";

#[test]
fn missing_data_dir_is_named() {
    let (code, err) = run(&GOOD.replace("  data_dir: /tmp/x\n", ""));
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "config error: postgresql.data_dir: is required");
}

#[test]
fn bad_listen_address_is_named() {
    let (code, err) = run(&GOOD.replace("listen: 127.0.0.1:5432", "listen: nonsense"));
    assert_eq!(code, 1);
    assert!(err.starts_with("config error: postgresql.listen:"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn wrong_type_is_named() {
    let (code, err) = run(&format!("{GOOD}bootstrap:\n  dcs:\n    ttl: soon\n"));
    assert_eq!(code, 1);
    assert!(err.contains("bootstrap.dcs.ttl"), "{err}");
}

#[test]
fn broken_yaml_is_reported() {
    let (code, err) = run("scope: [unclosed\n");
    assert_eq!(code, 1);
    assert!(err.starts_with("config error:"), "{err}");
}

#[test]
fn validate_config_accepts_a_good_file() {
    let dir = std::env::temp_dir().join(format!("pgwarden-cfg-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ok.yml");
    std::fs::write(&path, GOOD).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("--validate-config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--validate-config` checks the `watchdog` section as start-up does: its values, and a
/// required device that cannot be written.
#[test]
fn validate_config_checks_the_watchdog() {
    let dir = std::env::temp_dir().join(format!("pgwarden-cfg-wd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let validate = |extra: &str| {
        let path = dir.join("wd.yml");
        std::fs::write(&path, format!("{GOOD}{extra}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .arg("--validate-config")
            .arg(&path)
            .env_remove("PATRONI_CONFIGURATION")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    let (code, err) = validate("watchdog:\n  mode: sometimes\n");
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "config error: watchdog.mode: must be off, automatic or required"
    );
    let missing = dir.join("no-such-watchdog");
    let (code, err) = validate(&format!(
        "watchdog:\n  mode: required\n  device: {}\n",
        missing.display()
    ));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("config error: watchdog.device: watchdog.mode is required but ")
            && err.contains("no-such-watchdog"),
        "{err}"
    );
    let (code, err) = validate(&format!(
        "watchdog:\n  mode: automatic\n  device: {}\n",
        missing.display()
    ));
    assert_eq!((code, err.as_str()), (0, ""));
    let _ = std::fs::remove_dir_all(&dir);
}
