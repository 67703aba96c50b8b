//! Signals a running member gets from the system around it. SIGHUP (`systemctl reload`, log
//! rotators) must not end the agent, whose PostgreSQL would end with it: it reloads
//! PostgreSQL's configuration, as `POST /reload` does. Real PostgreSQL 15, real etcd, a real
//! `pgwarden run` process.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{Backend, Cluster, Timings};

const T: Timings = Timings {
    ttl: 6,
    loop_wait: 1,
    retry_timeout: 2,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_the_member_keeps_running() {
    let Some(mut c) = Cluster::start(Backend::Etcd, "itsighup", 1, T).await else {
        return;
    };
    let long = Duration::from_secs(120);
    c.wait_for("the member to lead", long, || async { c.leader().await })
        .await;
    let started = c
        .wait_for("the leader's postmaster", long, || async {
            c.sql(0, "SELECT pg_postmaster_start_time()::text")
                .await
                .ok()
        })
        .await;
    let pid = c.members[0].child.as_ref().expect("spawned").id();

    for _ in 0..3 {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGHUP);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let child = c.members[0].child.as_mut().expect("spawned");
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "the agent ended on SIGHUP: {:?}",
        child.try_wait()
    );
    assert_eq!(c.leader().await.as_deref(), Some("m0"));
    assert_eq!(
        c.sql(0, "SELECT pg_postmaster_start_time()::text").await,
        Ok(started),
        "the same postmaster runs"
    );
    c.sql(
        0,
        "CREATE TABLE IF NOT EXISTS t (id int); INSERT INTO t VALUES (1)",
    )
    .await
    .expect("a write after SIGHUP");
    let log = std::fs::read_to_string(c.log_path(0)).unwrap_or_default();
    assert!(
        log.contains("SIGHUP: reloading PostgreSQL"),
        "the agent says what SIGHUP did"
    );
}
