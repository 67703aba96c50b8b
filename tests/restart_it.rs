//! `POST /restart` and `POST /reinitialize` on real members (PostgreSQL 15, etcd). Both are
//! requests to the HA core, carried out as its tasks: the main loop goes on meanwhile, so a
//! leader keeps its lock through its own restart.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/etcd.rs"]
mod etcd_support;

use std::time::Duration;

use cluster::{Cluster, Timings};
use reqwest::Method;

const T: Timings = Timings {
    ttl: 6,
    loop_wait: 1,
    retry_timeout: 2,
};

async fn streaming(c: &Cluster, name: &str) -> bool {
    c.view()
        .await
        .is_some_and(|v| cluster::member_io::streaming_on(&v, name, 1))
}

async fn started_at(c: &Cluster, i: usize) -> Option<String> {
    c.sql(i, "SELECT pg_postmaster_start_time()::text")
        .await
        .ok()
        .and_then(|rows| rows.into_iter().next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_leader_and_reinitialize_clones_a_replica_afresh() {
    let Some(c) = Cluster::start("itrestart", 2, T).await else {
        return;
    };
    let long = Duration::from_secs(90);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    let l = c.index(&leader);
    let r = 1 - l;
    let replica = c.members[r].name.clone();
    c.wait_for("the replica streaming", long, || async {
        streaming(&c, &replica).await.then_some(())
    })
    .await;
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
    let before = started_at(&c, l).await.expect("start time");
    let (code, body) = c.api(l, Method::POST, "/restart", Some("{}")).await;
    assert_eq!((code, body.as_str()), (200, "restarted successfully"));
    let after = started_at(&c, l).await.expect("up again");
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
        streaming(&c, &replica).await.then_some(())
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
        (streaming(&c, &replica).await && !marker.exists()).then_some(())
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
