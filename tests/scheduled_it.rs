//! A scheduled switchover on real members (PostgreSQL 15, etcd): `POST /switchover` with
//! `scheduled_at` is answered 202 and carried out by the leader's HA core at that time, not
//! before.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_switchover_runs_at_its_time() {
    let Some(c) = Cluster::start("itsched", 2, T).await else {
        return;
    };
    let long = Duration::from_secs(90);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    let l = c.index(&leader);
    let candidate = c.members[1 - l].name.clone();
    c.wait_for("the candidate streaming", long, || async {
        c.view()
            .await
            .is_some_and(|v| cluster::member_io::streaming_on(&v, &candidate, 1))
            .then_some(())
    })
    .await;

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
