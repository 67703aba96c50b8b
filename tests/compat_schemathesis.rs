//! schemathesis (PyPI) fuzzes `docs/openapi.yaml` against a live member: no crash, no 5xx
//! except the documented ones (health checks' 503, `/failsafe`'s 502 with failsafe off), and
//! every answer conforms to the spec (status code, content type, JSON schema). Operations
//! tagged `destructive` (restart, reinitialize, switchover, failover, config writes, DELETE,
//! sigterm) are left out: they are covered by the cluster tests.
//! Skipped outside CI when `st`, PostgreSQL or etcd is missing; fails in CI.

#[path = "support/cluster.rs"]
mod cluster;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Backend, Cluster, Timings};

const T: Timings = Timings {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 3,
};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `st` on PATH (pip's console script), if any.
fn st() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("st"))
        .find(|p| p.is_file())
}

/// Runs `st run` with a hard deadline; `(success, output)`.
fn run_st(st: &std::path::Path, port: u16, dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let out = dir.join("st.out");
    let file = std::fs::File::create(&out).unwrap();
    let mut child = Command::new(st)
        .arg("run")
        .arg(spec)
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--exclude-tag", "destructive"])
        .args(["--max-examples", "20", "--seed", "4", "--workers", "2"])
        .args(["--request-timeout", "10", "--no-color"])
        .args(["--report-dir"])
        .arg(dir.join("st-report"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn st");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    // The summary (operations, test cases) for the log of a passing run.
    for l in text
        .lines()
        .filter(|l| l.contains("generated") || l.contains("selected"))
    {
        eprintln!("schemathesis: {}", l.trim());
    }
    (status.is_some_and(|s| s.success()), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() {
    let Some(st) = st() else {
        assert!(
            !in_ci(),
            "CI=true but schemathesis is missing (pip install schemathesis)"
        );
        eprintln!("SKIPPED: schemathesis (st) is missing");
        return;
    };
    let Some(c) = Cluster::start(Backend::Etcd, "schemathesis", 1, T).await else {
        return;
    };
    let long = Duration::from_secs(120);
    c.wait_for("a leader", long, || async { c.leader().await })
        .await;
    c.wait_for("PostgreSQL running", long, || async {
        let (code, _) = c.api(0, reqwest::Method::GET, "/health", None).await;
        (code == 200).then_some(())
    })
    .await;
    let port = c.members[0].api_port;
    let conformance =
        "status_code_conformance,content_type_conformance,response_schema_conformance";

    // Everything but the health checks and failsafe: no 5xx at all.
    let (ok, text) = run_st(
        &st,
        port,
        &c.dir,
        &[
            "--exclude-tag",
            "health",
            "--exclude-tag",
            "probes",
            "--exclude-tag",
            "failsafe",
            "--checks",
            &format!("not_a_server_error,{conformance}"),
        ],
    );
    assert!(ok, "schemathesis (no 5xx):\n{text}");

    // Health checks, probes and failsafe: their 503/502 are documented; nothing undocumented.
    let (ok, text) = run_st(
        &st,
        port,
        &c.dir,
        &[
            "--include-tag",
            "health",
            "--include-tag",
            "probes",
            "--include-tag",
            "failsafe",
            "--checks",
            conformance,
        ],
    );
    assert!(ok, "schemathesis (documented codes):\n{text}");

    // The member survived the fuzzing.
    let (code, body) = c.api(0, reqwest::Method::GET, "/patroni", None).await;
    assert_eq!(code, 200, "{body}");
}
