//! What the REST API asks of the HA core, on real members (PostgreSQL 15, etcd): `POST /restart`
//! and `POST /reinitialize` (the core's requests, carried out as its tasks, so a leader keeps its
//! lock through its own restart), a switchover scheduled with `scheduled_at` (run by the
//! leader's core at that time, not before) and a parameter changed with `PATCH /config`
//! (reloaded on every member by the core's `ApplyConfig`, also on one whose PostgreSQL a task
//! held when it came).

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{Backend, Cluster, Timings};
use reqwest::Method;

const T: Timings = Timings {
    ttl: 6,
    loop_wait: 1,
    retry_timeout: 2,
};

/// Waits for a leader and for the other members streaming from it on timeline 1; the
/// leader's index.
async fn healthy(c: &Cluster) -> usize {
    let long = Duration::from_secs(90);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    for m in &c.members {
        if m.name != leader {
            c.wait_for(&format!("{} streaming", m.name), long, || async {
                c.streaming_on(&m.name, 1).await.then_some(())
            })
            .await;
        }
    }
    c.index(&leader)
}

async fn first_row(c: &Cluster, i: usize, sql: &str) -> Option<String> {
    c.sql(i, sql)
        .await
        .ok()
        .and_then(|rows| rows.into_iter().next())
}

const STARTED: &str = "SELECT pg_postmaster_start_time()::text";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_leader_and_reinitialize_clones_a_replica_afresh() {
    let Some(c) = Cluster::start(Backend::Etcd, "itrestart", 2, T).await else {
        return;
    };
    let long = Duration::from_secs(90);
    let l = healthy(&c).await;
    let leader = c.members[l].name.clone();
    let r = 1 - l;
    let replica = c.members[r].name.clone();
    c.sql(l, "CREATE TABLE r (i int); INSERT INTO r VALUES (1)")
        .await
        .expect("write on the leader");
    // use_slots: the leader keeps a slot for the replica, which streams through it.
    let active = "SELECT slot_name::text FROM pg_replication_slots WHERE active";
    c.wait_for("the replica's slot in use", long, || async {
        let slots = c.sql(l, active).await.ok()?;
        (slots == [replica.clone()]).then_some(())
    })
    .await;

    // The leader restarts in place: same leader, same timeline, a new postmaster.
    let before = first_row(&c, l, STARTED).await.expect("start time");
    let (code, body) = c.api(l, Method::POST, "/restart", Some("{}")).await;
    assert_eq!((code, body.as_str()), (200, "restarted successfully"));
    let after = first_row(&c, l, STARTED).await.expect("up again");
    assert_ne!(before, after, "a new postmaster");
    let view = c.view().await.expect("view");
    assert_eq!(
        view.leader.as_ref().map(|l| l.name.clone()),
        Some(leader.clone())
    );
    assert_eq!(view.timeline(), 1, "no failover: {:?}", view.history);
    c.sql(l, "INSERT INTO r VALUES (2)")
        .await
        .expect("write after the restart");

    // The replica restarts and streams again.
    let (code, body) = c.api(r, Method::POST, "/restart", Some("{}")).await;
    assert_eq!((code, body.as_str()), (200, "restarted successfully"));
    c.wait_for("the replica streaming again", long, || async {
        c.streaming_on(&replica, 1).await.then_some(())
    })
    .await;

    // Reinitialize: refused on the leader; on the replica the data directory is wiped and
    // cloned afresh from the leader.
    let (code, body) = c.api(l, Method::POST, "/reinitialize", Some("{}")).await;
    assert_eq!(
        (code, body.as_str()),
        (503, "I am the leader, can not reinitialize")
    );
    let marker = c
        .dir
        .join(&replica)
        .join("data")
        .join("marker-of-the-old-copy");
    std::fs::write(&marker, b"x").expect("marker");
    let (code, body) = c.api(r, Method::POST, "/reinitialize", Some("{}")).await;
    assert_eq!((code, body.as_str()), (200, "reinitialize started"));
    c.wait_for("the replica cloned and streaming", long, || async {
        (c.streaming_on(&replica, 1).await && !marker.exists()).then_some(())
    })
    .await;
    c.wait_for("both rows on the new copy", long, || async {
        let rows = c.sql(r, "SELECT count(*)::text FROM r").await.ok()?;
        (rows == ["2"]).then_some(())
    })
    .await;
    assert_eq!(c.leader().await, Some(leader), "the leader never changed");
    let slots = c.sql(l, active).await.expect("slots");
    assert_eq!(
        slots,
        [replica],
        "the new copy streams through the same slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_switchover_runs_at_its_time() {
    let Some(c) = Cluster::start(Backend::Etcd, "itsched", 2, T).await else {
        return;
    };
    let long = Duration::from_secs(90);
    let l = healthy(&c).await;
    let leader = c.members[l].name.clone();
    let candidate = c.members[1 - l].name.clone();

    let at = chrono::Utc::now() + chrono::Duration::seconds(6);
    let body = format!(
        r#"{{"leader": "{leader}", "candidate": "{candidate}", "scheduled_at": "{}"}}"#,
        at.to_rfc3339()
    );
    let (code, reply) = c.api(l, Method::POST, "/switchover", Some(&body)).await;
    assert_eq!((code, reply.as_str()), (202, "Switchover scheduled"));
    let new_leader = c
        .wait_for("the switchover", long, || async {
            c.leader().await.filter(|n| *n == candidate)
        })
        .await;
    let done = chrono::Utc::now();
    assert_eq!(new_leader, candidate);
    assert!(done >= at, "switched over at {done}, before its time {at}");
    c.wait_for("the key cleared", long, || async {
        c.view()
            .await
            .filter(|v| v.failover.as_ref().is_none_or(|f| f.value.is_empty()))
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patched_parameter_is_reloaded_on_every_member() {
    let Some(c) = Cluster::start(Backend::Etcd, "itconfig", 2, T).await else {
        return;
    };
    let long = Duration::from_secs(90);
    let l = healthy(&c).await;
    let r = 1 - l;
    assert_eq!(
        first_row(&c, l, "SHOW work_mem").await.as_deref(),
        Some("4MB")
    );

    // The replica is restarting (a task holds its PostgreSQL) when the change lands.
    let body = r#"{"postgresql": {"parameters": {"work_mem": "7MB"}}}"#;
    let (restart, patch) = tokio::join!(c.api(r, Method::POST, "/restart", Some("{}")), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.api(l, Method::PATCH, "/config", Some(body)).await
    });
    assert_eq!(restart.0, 200, "{}", restart.1);
    assert_eq!(patch.0, 200, "{}", patch.1);
    for i in [l, r] {
        c.wait_for(
            &format!("work_mem on {}", c.members[i].name),
            long,
            || async {
                (first_row(&c, i, "SHOW work_mem").await.as_deref() == Some("7MB")).then_some(())
            },
        )
        .await;
    }
}
