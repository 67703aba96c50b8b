//! The API server stops answering (SIGSTOP, sockets stay open) for longer than ttl: the
//! primary stops taking writes before anyone could have taken its Lease; when the API server
//! is back there is exactly one primary again. Runs on a control plane of its own, since it
//! pauses it.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{Backend, Cluster, ControlPlane, Timings};

const T: Timings = Timings {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 3,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_demotes_in_time_and_recovers() {
    let own = Backend::Kubernetes(ControlPlane::Own);
    let Some(c) = Cluster::start(own, "k8sout", 3, T).await else {
        return;
    };
    let cp = c.kubernetes().own_control_plane();
    let long = Duration::from_secs(120);
    let l = c.writable_leader(long).await;
    let leader = c.members[l].name.clone();
    for m in ["m0", "m1", "m2"].iter().filter(|m| **m != leader) {
        c.wait_for(&format!("{m} replicating"), long, || async {
            c.view()
                .await
                .and_then(|v| v.members.get(*m).cloned())
                .and_then(|x| x.replication_state)
                .map(|_| ())
        })
        .await;
    }

    // Outage. Nobody can take the Lease while the API server is stopped, and afterwards only
    // once ttl passed on the taker's clock since it last saw a renewal (before the pause): the
    // old primary must be read-only within ttl of the pause.
    let paused = Instant::now();
    cp.pause();
    let mut stopped_at = None;
    while paused.elapsed() < Duration::from_secs(T.ttl + 5) {
        let ok = c.writable(l).await;
        for (i, _) in c.members.iter().enumerate().filter(|(i, _)| *i != l) {
            assert!(!c.writable(i).await, "a second writer during the outage");
        }
        if !ok && stopped_at.is_none() {
            stopped_at = Some(paused.elapsed());
        }
        if ok {
            assert!(
                stopped_at.is_none(),
                "the primary took writes again during the outage"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cp.resume();
    let stopped_at = stopped_at.expect("the primary stopped taking writes");
    assert!(
        stopped_at < Duration::from_secs(T.ttl),
        "the primary took writes {stopped_at:?} into the outage, ttl is {} s",
        T.ttl
    );
    eprintln!(
        "primary read-only {stopped_at:?} after the API server stopped (ttl {} s)",
        T.ttl
    );

    // Back: one primary again, the one holding the Lease.
    let holder = c
        .wait_for("one writable primary holding the Lease", long, || async {
            let writable: Vec<usize> = {
                let mut w = Vec::new();
                for i in 0..3 {
                    if c.writable(i).await {
                        w.push(i);
                    }
                }
                w
            };
            let (holder, _) = c.kubernetes().lease_state().await?;
            let holder = holder?;
            (writable.len() == 1 && c.members[writable[0]].name == holder).then_some(holder)
        })
        .await;
    let others: Vec<&str> = ["m0", "m1", "m2"]
        .into_iter()
        .filter(|m| *m != holder)
        .collect();
    c.wait_for("labels after the outage", long, || async {
        c.kubernetes()
            .labels_are(&holder, &others)
            .await
            .then_some(())
    })
    .await;
}
