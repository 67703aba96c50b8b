//! pgwarden end to end: `pgwarden run` processes on real PostgreSQL 15. The failover scenario
//! runs on both stores, real etcd and a real kube-apiserver (each member paired with a Pod
//! object); the store outage and the crashed postmaster on etcd.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{Backend, Cluster, ControlPlane, Store, Timings};
use reqwest::Method;

const T: Timings = Timings {
    ttl: 6,
    loop_wait: 1,
    retry_timeout: 2,
};

/// The failover scenario's, on either store: the API server answers more slowly than etcd.
const FAILOVER: Timings = Timings {
    ttl: 8,
    loop_wait: 1,
    retry_timeout: 3,
};

const LONG: Duration = Duration::from_secs(120);

/// On Kubernetes, the Lease's holder is `leader`; its `leaseTransitions`. `None` on etcd, whose
/// leader key keeps no count.
async fn lease_held_by(c: &Cluster, leader: &str) -> Option<i32> {
    let Store::Kubernetes(k8s) = &c.store else {
        return None;
    };
    let (holder, transitions) = k8s.lease_state().await.expect("the Lease exists");
    assert_eq!(holder.as_deref(), Some(leader));
    Some(transitions)
}

/// On Kubernetes, waits for the Pods' role labels to say `primary` is the primary, each of
/// `replicas` a replica, and `dead` (a killed member), if any, neither. Etcd has no labels.
async fn labels_follow(
    c: &Cluster,
    what: &str,
    primary: &str,
    replicas: &[&str],
    dead: Option<&str>,
) {
    let Store::Kubernetes(k8s) = &c.store else {
        return;
    };
    c.wait_for(what, LONG, || async {
        let unlabelled = match dead {
            Some(d) => k8s.role_labels().await[d].is_none(),
            None => true,
        };
        (k8s.labels_are(primary, replicas).await && unlabelled).then_some(())
    })
    .await;
}

/// Three members: bootstrap, the primary's agent and postmaster killed with -9 and a failover,
/// the old primary rejoining through pg_rewind, a switchover back through REST, a restart of
/// the whole cluster keeping the data, a second member under a running member's name refused.
/// On Kubernetes the Lease (holder, one transition per change of holder) and the Pods' role
/// labels follow every change of leader.
async fn three_members_fail_over_switch_over_and_restart(backend: Backend) {
    let Some(mut c) = Cluster::start(backend, "itcore", 3, FAILOVER).await else {
        return;
    };
    let names = ["m0", "m1", "m2"];
    let all_but = |m: &str| -> Vec<&str> { names.into_iter().filter(|n| *n != m).collect() };

    // Bootstrap: one leader, two streaming replicas.
    let leader = c
        .wait_for("a leader", LONG, || async { c.leader().await })
        .await;
    let others = all_but(&leader);
    for m in &others {
        c.wait_for(&format!("{m} streaming"), LONG, || async {
            c.streaming_on(m, 1).await.then_some(())
        })
        .await;
    }
    let transitions = lease_held_by(&c, &leader).await;
    labels_follow(&c, "role labels", &leader, &others, None).await;
    let l = c.index(&leader);
    c.sql(
        l,
        "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)",
    )
    .await
    .expect("write on the leader");
    if let Store::Kubernetes(k8s) = &c.store {
        let lease = k8s.lease().await.unwrap();
        let spec = lease.spec.as_ref().unwrap();
        assert_eq!(spec.lease_duration_seconds, Some(FAILOVER.ttl as i32));
        let ann = lease.metadata.annotations.clone().unwrap_or_default();
        assert!(
            ann.get("optime").is_some_and(|o| o.parse::<u64>().is_ok()),
            "optime annotation: {ann:?}"
        );
    }
    let (code, body) = c.api(l, Method::GET, "/primary", None).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = c.api(l, Method::GET, "/replica", None).await;
    assert_eq!(code, 503);
    let (code, body) = c.api(l, Method::GET, "/cluster", None).await;
    assert_eq!(code, 200);
    assert!(body.contains("\"role\": \"leader\""), "{body}");

    // The leader's agent and postmaster are killed with -9: a replica takes over and writes.
    c.kill9(l);
    let old_port = c.members[l].pg_port;
    let new_leader = c
        .wait_for("a new leader", LONG, || async {
            c.leader().await.filter(|n| *n != leader)
        })
        .await;
    let n = c.index(&new_leader);
    c.wait_for("writes on the new leader", LONG, || async {
        c.sql(n, "INSERT INTO t VALUES (2)").await.ok()
    })
    .await;
    let after_failover = lease_held_by(&c, &new_leader).await;
    assert_eq!(
        after_failover,
        transitions.map(|t| t + 1),
        "leaseTransitions +1 on failover"
    );
    let survivor: Vec<&str> = others
        .iter()
        .copied()
        .filter(|m| *m != new_leader)
        .collect();
    labels_follow(
        &c,
        "labels follow the failover",
        &new_leader,
        &survivor,
        Some(&leader),
    )
    .await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", old_port)).is_err(),
        "the killed agent's PostgreSQL must have died with it"
    );
    c.wait_for("history to record the promotion", LONG, || async {
        c.view().await.filter(|v| v.timeline() == 2).map(|_| ())
    })
    .await;

    // The old primary comes back and rejoins as a replica through pg_rewind.
    c.spawn(l);
    c.wait_for("the old primary streaming on timeline 2", LONG, || async {
        c.streaming_on(&leader, 2).await.then_some(())
    })
    .await;
    let log = std::fs::read_to_string(c.log_path(l)).unwrap_or_default();
    assert!(
        log.contains("pg_rewind"),
        "the old primary rejoined through pg_rewind"
    );
    c.wait_for("row 2 replicated to the old primary", LONG, || async {
        c.sql(l, "SELECT count(*) FROM t")
            .await
            .ok()
            .filter(|r| r == &vec!["2".to_string()])
    })
    .await;
    labels_follow(
        &c,
        "labels after the rejoin",
        &new_leader,
        &all_but(&new_leader),
        None,
    )
    .await;

    // A switchover through REST back to the old primary.
    let body = format!(r#"{{"leader": "{new_leader}", "candidate": "{leader}"}}"#);
    let (code, text) = c.api(n, Method::POST, "/switchover", Some(&body)).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(text, format!("Successfully switched over to \"{leader}\""));
    c.wait_for("writes after the switchover", LONG, || async {
        c.sql(l, "INSERT INTO t VALUES (3)").await.ok()
    })
    .await;
    let after_switchover = lease_held_by(&c, &leader).await;
    assert_eq!(after_switchover, after_failover.map(|t| t + 1));
    labels_follow(&c, "labels after the switchover", &leader, &others, None).await;
    c.wait_for("the former leader streaming again", LONG, || async {
        c.streaming_on(&new_leader, 3).await.then_some(())
    })
    .await;

    // The whole cluster restarts and keeps its data.
    for i in 0..3 {
        let st = c.terminate(i).expect("member was running");
        assert!(st.success(), "clean shutdown of member {i}: {st:?}");
    }
    c.spawn_all();
    let after = c
        .wait_for("a leader after the restart", LONG, || async {
            c.leader().await
        })
        .await;
    let a = c.index(&after);
    let rows = c
        .wait_for("the data after the restart", LONG, || async {
            c.sql(a, "SELECT count(*) FROM t").await.ok()
        })
        .await;
    assert_eq!(rows, vec!["3".to_string()]);

    // A second member with a running member's name refuses to start.
    let dup_cfg = c.dir.join("dup.yml");
    let yaml = std::fs::read_to_string(&c.members[0].config)
        .unwrap()
        .replace(
            &format!("{}/m0/data", c.dir.display()),
            &format!("{}/dup/data", c.dir.display()),
        )
        .replace(
            &format!("127.0.0.1:{}", c.members[0].api_port),
            &format!("127.0.0.1:{}", cluster::distinct_ports(1)[0]),
        );
    std::fs::write(&dup_cfg, yaml).unwrap();
    let out = c
        .command(&dup_cfg, &c.dir.join("dup.log"))
        .stdout(std::process::Stdio::piped())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let log = std::fs::read_to_string(c.dir.join("dup.log")).unwrap_or_default();
    assert!(
        log.contains("there is already a node named 'm0' running"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_fail_over_switch_over_and_restart_on_etcd() {
    three_members_fail_over_switch_over_and_restart(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_fail_over_switch_over_and_restart_on_kubernetes() {
    three_members_fail_over_switch_over_and_restart(Backend::Kubernetes(ControlPlane::Shared))
        .await;
}

/// Cut off from the store, the leader stops taking writes on its own (it cannot renew), and
/// when the store comes back the cluster has exactly one primary again.
/// A rolling restart, as Kubernetes does one: SIGTERM to every member in turn, highest
/// ordinal first, each restarted once it has exited. Every agent exits cleanly; the leader's
/// SIGTERM hands over to another member, which takes writes;
/// after the roll the three members stream from one leader and every row is there.
async fn a_rolling_restart_keeps_the_cluster_whole(backend: Backend) {
    let Some(mut c) = Cluster::start(backend, "itroll", 3, FAILOVER).await else {
        return;
    };
    let (l, _) = c.healthy(LONG).await;
    c.sql(l, "CREATE TABLE r (id int primary key)")
        .await
        .expect("write on the leader");
    let mut rows = 0;
    for i in (0..3).rev() {
        let leader = c.leader().await.expect("a leader");
        let name = c.members[i].name.clone();
        let st = c.terminate(i).expect("member was running");
        assert!(st.success(), "clean shutdown of {name}: {st:?}");
        if leader == name {
            let next = c
                .wait_for("a leader after the leader's SIGTERM", LONG, || async {
                    c.leader().await.filter(|n| *n != name)
                })
                .await;
            let n = c.index(&next);
            rows += 1;
            c.wait_for(&format!("writes on {next}"), LONG, || async {
                c.sql(n, &format!("INSERT INTO r VALUES ({rows})"))
                    .await
                    .ok()
            })
            .await;
        }
        c.spawn(i);
        // Its own REST API, not its member key (which may still be the last incarnation's).
        c.wait_for(&format!("{name} back as a replica"), LONG, || async {
            let (code, _) = c.api(i, Method::GET, "/replica", None).await;
            (code == 200).then_some(())
        })
        .await;
        let (l, replicas) = c.healthy(LONG).await;
        assert_eq!(replicas.len(), 2, "{name} back as a streaming replica");
        rows += 1;
        c.sql(l, &format!("INSERT INTO r VALUES ({rows})"))
            .await
            .expect("write after the restart");
    }
    let (l, replicas) = c.healthy(LONG).await;
    for i in replicas.into_iter().chain([l]) {
        c.wait_for(&format!("every row on member {i}"), LONG, || async {
            c.sql(i, "SELECT count(*) FROM r")
                .await
                .ok()
                .filter(|r| *r == vec![rows.to_string()])
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_the_cluster_whole_on_etcd() {
    a_rolling_restart_keeps_the_cluster_whole(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_the_cluster_whole_on_kubernetes() {
    a_rolling_restart_keeps_the_cluster_whole(Backend::Kubernetes(ControlPlane::Shared)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_from_the_store_stops_writing_then_recovers() {
    let Some(mut c) = Cluster::start(Backend::Etcd, "itstore", 3, T).await else {
        return;
    };
    let long = Duration::from_secs(90);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    let l = c.index(&leader);
    c.wait_for("writes on the leader", long, || async {
        c.sql(l, "CREATE TABLE IF NOT EXISTS s (at timestamptz)")
            .await
            .ok()
    })
    .await;
    let stopped = std::time::Instant::now();
    c.etcd_mut().stop();
    // Writes must stop by the leader's own deadline (ttl minus a margin after its last
    // renewal); the bound here is generous, the figure is printed.
    let refused = c
        .wait_for(
            "the leader to stop taking writes",
            Duration::from_secs(3 * T.ttl),
            || async {
                c.sql(l, "INSERT INTO s VALUES (now())")
                    .await
                    .is_err()
                    .then(std::time::Instant::now)
            },
        )
        .await;
    eprintln!(
        "store stopped; the leader refused writes {:.2} s later (ttl {} s)",
        (refused - stopped).as_secs_f64(),
        T.ttl
    );
    // Nobody else may be writable either: the store is down, nobody can hold the lock.
    for i in 0..3 {
        let r = c.sql(i, "SELECT pg_is_in_recovery()").await;
        assert!(
            r.is_err() || r == Ok(vec!["t".to_string()]),
            "member {i} must not be a primary: {r:?}"
        );
    }
    c.etcd_mut().start().await;
    c.wait_for("a leader after the store returned", long, || async {
        c.leader().await
    })
    .await;
    let primaries = c
        .wait_for("exactly one writable primary", long, || async {
            let mut writable = Vec::new();
            for i in 0..3 {
                if c.sql(i, "SELECT pg_is_in_recovery()").await == Ok(vec!["f".to_string()]) {
                    writable.push(i);
                }
            }
            (writable.len() == 1).then_some(writable)
        })
        .await;
    let p = primaries[0];
    c.wait_for("writes on the primary", long, || async {
        c.sql(p, "INSERT INTO s VALUES (now())").await.ok()
    })
    .await;
}

/// The leader's postmaster dies but its agent lives: the agent restarts PostgreSQL as the
/// primary on the same timeline (crash recovery), without a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_postmaster_is_recovered_in_place() {
    let Some(c) = Cluster::start(
        Backend::Etcd,
        "itcrash",
        2,
        Timings {
            ttl: 20,
            loop_wait: 1,
            retry_timeout: 3,
        },
    )
    .await
    else {
        return;
    };
    let long = Duration::from_secs(90);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    let l = c.index(&leader);
    // Bootstrap is over once `initialize` holds the system identifier.
    c.wait_for("bootstrap to finish", long, || async {
        c.view()
            .await
            .and_then(|v| v.initialize)
            .filter(|i| !i.is_empty())
    })
    .await;
    c.wait_for("writes", long, || async {
        c.sql(l, "CREATE TABLE IF NOT EXISTS k (id int)").await.ok()
    })
    .await;
    let data_dir = c.dir.join(&leader).join("data");
    let pid =
        pgwarden::postgres::postmaster_pid_file_alive(&data_dir).expect("a running postmaster");
    // SAFETY: kill(2) on the postmaster of our own test cluster.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    c.wait_for("writes on the restarted primary", long, || async {
        let new_pid = pgwarden::postgres::postmaster_pid_file_alive(&data_dir)?;
        (new_pid != pid).then_some(())?;
        c.sql(l, "INSERT INTO k VALUES (1)").await.ok()
    })
    .await;
    assert_eq!(
        c.leader().await.as_deref(),
        Some(leader.as_str()),
        "no failover for a local crash"
    );
    let v = c.view().await.expect("view");
    assert_eq!(v.timeline(), 1, "crash recovery keeps the timeline");
}
