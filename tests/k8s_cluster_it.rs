//! pgwarden on Kubernetes end to end: a real kube-apiserver, real PostgreSQL 15, three
//! `pgwarden run` processes each paired with a Pod object.

#[path = "k8s/harness.rs"]
mod harness;
#[path = "support/k8s.rs"]
mod k8s;

use std::time::Duration;

use harness::{K8sCluster, Timings};
use reqwest::Method;

const T: Timings = Timings {
    ttl: 8,
    loop_wait: 1,
    retry_timeout: 3,
};

async fn streaming_on(c: &K8sCluster, name: &str, timeline: u64) -> bool {
    c.view()
        .await
        .is_some_and(|v| harness::member_io::streaming_on(&v, name, timeline))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_labels_failover_and_switchover() {
    if !harness::pg_available() {
        return;
    }
    let client = k8s::admin().await;
    let ns = k8s::fresh_namespace(&client, "it").await;
    let mut c = K8sCluster::new("k8sit", 3, &T, &k8s::kubeconfig(), ns).await;
    c.spawn_all();
    let long = Duration::from_secs(120);
    let names = ["m0", "m1", "m2"];

    // Bootstrap: the leader holds the Lease; the labels say who is what.
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    let others: Vec<&str> = names.iter().copied().filter(|m| *m != leader).collect();
    for m in &others {
        c.wait_for(&format!("{m} streaming"), long, || async {
            streaming_on(&c, m, 1).await.then_some(())
        })
        .await;
    }
    let (holder, transitions0) = c.lease_state().await.expect("the Lease exists");
    assert_eq!(holder.as_deref(), Some(leader.as_str()));
    c.wait_for("role labels", long, || async {
        c.labels_are(&leader, &others).await.then_some(())
    })
    .await;
    let l = c.index(&leader);
    c.sql(
        l,
        "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)",
    )
    .await
    .expect("write on the leader");
    let lease = c.lease().await.unwrap();
    let spec = lease.spec.as_ref().unwrap();
    assert_eq!(spec.lease_duration_seconds, Some(T.ttl as i32));
    let ann = lease.metadata.annotations.clone().unwrap_or_default();
    assert!(
        ann.get("optime").is_some_and(|o| o.parse::<u64>().is_ok()),
        "optime annotation: {ann:?}"
    );

    // The primary's agent and postmaster die with -9: a replica takes the Lease and writes.
    c.kill9(l);
    let new_leader = c
        .wait_for("a new leader", long, || async {
            c.leader().await.filter(|n| *n != leader)
        })
        .await;
    let n = c.index(&new_leader);
    c.wait_for("writes on the new leader", long, || async {
        c.sql(n, "INSERT INTO t VALUES (2)").await.ok()
    })
    .await;
    let (holder, transitions1) = c.lease_state().await.unwrap();
    assert_eq!(holder.as_deref(), Some(new_leader.as_str()));
    assert_eq!(
        transitions1,
        transitions0 + 1,
        "leaseTransitions +1 on failover"
    );
    let survivor: Vec<&str> = others
        .iter()
        .copied()
        .filter(|m| *m != new_leader)
        .collect();
    c.wait_for("labels follow the failover", long, || async {
        let labels = c.role_labels().await;
        (c.labels_are(&new_leader, &survivor).await && labels[&leader].is_none()).then_some(())
    })
    .await;

    // The old primary comes back as a replica (through pg_rewind) and is labelled so.
    c.spawn(l);
    c.wait_for("the old primary streaming on timeline 2", long, || async {
        streaming_on(&c, &leader, 2).await.then_some(())
    })
    .await;
    let replicas: Vec<&str> = names.iter().copied().filter(|m| *m != new_leader).collect();
    c.wait_for("labels after the rejoin", long, || async {
        c.labels_are(&new_leader, &replicas).await.then_some(())
    })
    .await;

    // A switchover through REST back to the old primary: the Lease moves, labels follow.
    let body = format!(r#"{{"leader": "{new_leader}", "candidate": "{leader}"}}"#);
    let (code, text) = c.api(n, Method::POST, "/switchover", Some(&body)).await;
    assert_eq!(code, 200, "{text}");
    c.wait_for("writes after the switchover", long, || async {
        c.sql(l, "INSERT INTO t VALUES (3)").await.ok()
    })
    .await;
    let (holder, transitions2) = c.lease_state().await.unwrap();
    assert_eq!(holder.as_deref(), Some(leader.as_str()));
    assert_eq!(transitions2, transitions1 + 1);
    let replicas: Vec<&str> = names.iter().copied().filter(|m| *m != leader).collect();
    c.wait_for("labels after the switchover", long, || async {
        c.labels_are(&leader, &replicas).await.then_some(())
    })
    .await;
    c.wait_for("the former leader streaming again", long, || async {
        streaming_on(&c, &new_leader, 3).await.then_some(())
    })
    .await;
}
