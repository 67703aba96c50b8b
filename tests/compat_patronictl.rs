//! Debian's real `patronictl` (Patroni 3.0.2) drives a pgwarden cluster on etcd, and
//! `pgwarden ctl` reads the same cluster: list, switchover, failover, pause, resume,
//! edit-config, show-config, history, restart and reload all work and show the right result.
//! Skipped outside CI when patronictl, PostgreSQL or etcd is missing; fails in CI (CI=true).

#[path = "support/cluster.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster::{Backend, Cluster, Timings};

const T: Timings = Timings {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 3,
};
const PATRONICTL: &str = "/usr/bin/patronictl";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Runs a ctl program with the cluster's config; `(exit code, stdout + stderr)`.
fn ctl(program: &Path, config: &Path, args: &[&str]) -> (i32, String) {
    // `pgwarden ctl -c FILE ...` / `patronictl -c FILE ...`
    let (prefix, rest) = match args.first() {
        Some(&"ctl") => (&args[..1], &args[1..]),
        _ => (&args[..0], args),
    };
    let out = Command::new(program)
        .args(prefix)
        .arg("-c")
        .arg(config)
        .args(rest)
        .env_remove("PATRONICTL_CONFIG_FILE")
        .env_remove("DCS_URL")
        .output()
        .expect("run ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn write_ctl_config(c: &Cluster) -> PathBuf {
    let path = c.dir.join("patronictl.yaml");
    let etcd = c.etcd().endpoint().trim_start_matches("http://").to_owned();
    std::fs::write(
        &path,
        format!(
            "scope: {}\nnamespace: /service\netcd3:\n  hosts: {etcd}\n",
            c.scope
        ),
    )
    .unwrap();
    path
}

fn role_of(list_json: &str, member: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(list_json.lines().last()?).ok()?;
    v.as_array()?
        .iter()
        .find(|r| r["Member"] == member)
        .and_then(|r| r["Role"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_patronictl_drives_a_pgwarden_cluster() {
    if !Path::new(PATRONICTL).is_file() {
        assert!(
            !in_ci(),
            "CI=true but {PATRONICTL} is missing (apt-get install patroni)"
        );
        eprintln!("SKIPPED: {PATRONICTL} is missing");
        return;
    }
    let Some(c) = Cluster::start(Backend::Etcd, "ctlcompat", 3, T).await else {
        return;
    };
    let long = Duration::from_secs(120);
    let cfg = write_ctl_config(&c);
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_pgwarden"));
    let theirs = PathBuf::from(PATRONICTL);
    let scope = c.scope.clone();

    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    c.wait_for("two streaming replicas", long, || async {
        let v = c.view().await?;
        let n = v
            .members
            .values()
            .filter(|m| {
                m.replication_state.as_deref() == Some("streaming") && m.timeline == Some(1)
            })
            .count();
        (n == 2).then_some(())
    })
    .await;

    // list: both tools show the leader and two replicas on timeline 1 with their lag.
    let (code, text) = ctl(&theirs, &cfg, &["list", &scope]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("| Leader "), "{text}");
    assert_eq!(text.matches("| Replica ").count(), 2, "{text}");
    assert!(text.contains("Lag in MB"), "{text}");
    let (code, ours_text) = ctl(&ours, &cfg, &["ctl", "list", &scope]);
    assert_eq!(code, 0, "{ours_text}");
    assert!(
        ours_text.contains("| Leader ") && ours_text.matches("| Replica ").count() == 2,
        "{ours_text}"
    );
    let (code, json) = ctl(&theirs, &cfg, &["list", &scope, "--format", "json"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(role_of(&json, &leader).as_deref(), Some("Leader"), "{json}");
    let (_, our_json) = ctl(&ours, &cfg, &["ctl", "list", "--format", "json"]);
    assert_eq!(
        role_of(&our_json, &leader).as_deref(),
        Some("Leader"),
        "{our_json}"
    );

    // switchover to a named candidate.
    let candidate = ["m0", "m1", "m2"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap()
        .to_owned();
    let (code, text) = ctl(
        &theirs,
        &cfg,
        &[
            "switchover",
            &scope,
            "--leader",
            &leader,
            "--candidate",
            &candidate,
            "--force",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("Successfully switched over to \"{candidate}\"")),
        "{text}"
    );
    c.wait_for("the candidate leads", long, || async {
        c.leader().await.filter(|l| *l == candidate)
    })
    .await;

    // history has the switchover line.
    c.wait_for("history line", long, || async {
        let (code, text) = ctl(&theirs, &cfg, &["history", &scope]);
        (code == 0 && text.contains(&candidate) && text.contains("New Leader")).then_some(())
    })
    .await;
    let (code, text) = ctl(&ours, &cfg, &["ctl", "history"]);
    assert!(code == 0 && text.contains(&candidate), "{text}");

    // pause / resume: the maintenance footer comes and goes.
    let (code, text) = ctl(&theirs, &cfg, &["pause", &scope]);
    assert_eq!(code, 0, "{text}");
    c.wait_for("paused", long, || async {
        let (_, t) = ctl(&theirs, &cfg, &["list", &scope]);
        t.contains("Maintenance mode: on").then_some(())
    })
    .await;
    let (code, text) = ctl(&ours, &cfg, &["ctl", "pause"]);
    assert_eq!(code, 1, "already paused must fail: {text}");
    assert!(text.contains("Cluster is already paused"), "{text}");
    let (code, text) = ctl(&theirs, &cfg, &["resume", &scope]);
    assert_eq!(code, 0, "{text}");
    let (_, t) = ctl(&theirs, &cfg, &["list", &scope]);
    assert!(!t.contains("Maintenance mode: on"), "{t}");

    // edit-config / show-config.
    let (code, text) = ctl(
        &theirs,
        &cfg,
        &[
            "edit-config",
            &scope,
            "--set",
            "maximum_lag_on_failover=2097152",
            "-p",
            "work_mem=8MB",
            "--force",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Configuration changed"), "{text}");
    let (code, text) = ctl(&theirs, &cfg, &["show-config", &scope]);
    assert!(
        code == 0
            && text.contains("maximum_lag_on_failover: 2097152")
            && text.contains("work_mem: 8MB"),
        "{text}"
    );
    let (code, text) = ctl(
        &ours,
        &cfg,
        &[
            "ctl",
            "edit-config",
            "-s",
            "maximum_lag_on_failover=1048576",
            "--force",
        ],
    );
    assert!(
        code == 0 && text.contains("Configuration changed"),
        "{text}"
    );
    let (_, text) = ctl(&ours, &cfg, &["ctl", "show-config"]);
    assert!(
        text.contains("maximum_lag_on_failover: 1048576") && text.contains("work_mem: 8MB"),
        "{text}"
    );

    // reload and restart on every member.
    let (code, text) = ctl(&theirs, &cfg, &["reload", &scope, "--force"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        text.matches("Reload request received for member").count(),
        3,
        "{text}"
    );
    let start_times = |i: usize| {
        let c = &c;
        async move {
            let (_, body) = c.api(i, reqwest::Method::GET, "/patroni", None).await;
            serde_json::from_str::<serde_json::Value>(&body).ok()?["postmaster_start_time"]
                .as_str()
                .map(str::to_owned)
        }
    };
    let before = start_times(c.index(&leader)).await;
    let (code, text) = ctl(&theirs, &cfg, &["restart", &scope, &leader, "--force"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("Success: restart on member {leader}")),
        "{text}"
    );
    let after = start_times(c.index(&leader)).await;
    assert!(
        after.is_some() && after != before,
        "postmaster start time must change: {before:?} {after:?}"
    );
    let (code, text) = ctl(
        &ours,
        &cfg,
        &["ctl", "restart", &leader, "--pending", "--force"],
    );
    assert_eq!(code, 1, "nothing pending: {text}");
    assert!(
        text.contains("restart conditions are not satisfied"),
        "{text}"
    );

    // failover back to the first leader.
    let (code, text) = ctl(
        &theirs,
        &cfg,
        &["failover", &scope, "--candidate", &leader, "--force"],
    );
    assert_eq!(code, 0, "{text}");
    c.wait_for("failover done", long, || async {
        c.leader().await.filter(|l| *l == leader)
    })
    .await;
    let (code, text) = ctl(&ours, &cfg, &["ctl", "list"]);
    assert_eq!(code, 0);
    assert!(text.contains(&format!("| {leader} ")), "{text}");
}
