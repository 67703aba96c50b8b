//! A dynamic configuration change reaches PostgreSQL (real PostgreSQL 15 and etcd): `PATCH
//! /config` of a parameter is rendered and reloaded on every member by the core's
//! `ApplyConfig`, including a member whose PostgreSQL was held by a task when it came.

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

async fn work_mem(c: &Cluster, i: usize) -> Option<String> {
    c.sql(i, "SHOW work_mem")
        .await
        .ok()
        .and_then(|rows| rows.into_iter().next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patched_parameter_is_reloaded_on_every_member() {
    let Some(c) = Cluster::start("itconfig", 2, T).await else {
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
        c.view()
            .await
            .is_some_and(|v| cluster::member_io::streaming_on(&v, &replica, 1))
            .then_some(())
    })
    .await;
    assert_eq!(work_mem(&c, l).await.as_deref(), Some("4MB"));

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
            || async { (work_mem(&c, i).await.as_deref() == Some("7MB")).then_some(()) },
        )
        .await;
    }
}
