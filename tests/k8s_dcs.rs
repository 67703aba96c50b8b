//! The Kubernetes backend alone against a real kube-apiserver: the Lease lock (acquire, renew,
//! conflict, expiry on the observer's clock, release, forged renewTime), Patroni's ConfigMaps and
//! the member Pods.

#[path = "support/k8s.rs"]
mod k8s;
#[path = "support/poll.rs"]
mod poll;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use pgwarden::config::Kubernetes;
use pgwarden::dcs::kubernetes::{KubernetesDcs, KubernetesSettings};
use pgwarden::dcs::{Dcs, Failover, HistoryLine, Member, Status, SyncState};

const LONG: Duration = Duration::from_secs(30);

async fn member(client: &kube::Client, ns: &str, name: &str, ttl: u64) -> KubernetesDcs {
    let k8s = Kubernetes {
        namespace: ns.into(),
        ..Kubernetes::default()
    };
    member_with(client, name, ttl, k8s, "10.1.0.1").await
}

/// A member of scope `pg` with the `kubernetes` section `k8s`, its Pod (made if missing) at
/// `ip`, once its watches are established.
async fn member_with(
    client: &kube::Client,
    name: &str,
    ttl: u64,
    k8s: Kubernetes,
    ip: &str,
) -> KubernetesDcs {
    let ns = k8s.namespace.clone();
    let labels: BTreeMap<String, String> = [("cluster-name".to_owned(), "pg".to_owned())].into();
    if Api::<Pod>::namespaced(client.clone(), &ns)
        .get_opt(name)
        .await
        .unwrap()
        .is_none()
    {
        k8s::create_pod(client, &ns, name, labels, ip).await;
    }
    let d = KubernetesDcs::with_client(
        client.clone(),
        KubernetesSettings {
            k8s,
            scope: "pg".into(),
            name: name.into(),
            ttl: Duration::from_secs(ttl),
            retry_timeout: Duration::from_secs(5),
        },
    )
    .unwrap();
    k8s::eventually("watches established", LONG, || async {
        d.watching().then_some(())
    })
    .await;
    d
}

async fn lease(client: &kube::Client, ns: &str) -> Lease {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get("pg-leader")
        .await
        .unwrap()
}

fn spec(l: &Lease) -> &k8s_openapi::api::coordination::v1::LeaseSpec {
    l.spec.as_ref().unwrap()
}

#[tokio::test]
async fn lease_lock_acquire_renew_conflict_release() {
    let c = k8s::admin().await;
    let ns = k8s::fresh_namespace(&c, "lock").await;
    let a = member(&c, &ns, "a", 30).await;
    let b = member(&c, &ns, "b", 30).await;

    assert!(a.acquire_leader().await.unwrap(), "first taker wins");
    assert!(
        !b.acquire_leader().await.unwrap(),
        "a live holder is respected"
    );
    let l = lease(&c, &ns).await;
    assert_eq!(spec(&l).holder_identity.as_deref(), Some("a"));
    assert_eq!(spec(&l).lease_duration_seconds, Some(30));
    assert_eq!(spec(&l).lease_transitions, Some(0));
    assert!(spec(&l).acquire_time.is_some() && spec(&l).renew_time.is_some());

    // Renewal carries the leader's status as annotations; it is one write.
    let status = Status {
        optime: 123456,
        slots: Some([("b".to_owned(), 100u64)].into()),
        retain_slots: None,
    };
    assert!(a.update_leader(Some(&status)).await.unwrap());
    let l2 = lease(&c, &ns).await;
    assert_ne!(l2.metadata.resource_version, l.metadata.resource_version);
    assert_eq!(
        l2.metadata.annotations.as_ref().unwrap()["optime"],
        "123456"
    );
    assert!(!b.update_leader(None).await.unwrap(), "not the holder");

    // `failsafe` is an annotation of the Lease (Patroni's leader object), compact JSON; the
    // write leaves the lock itself as it was, and the next renewal builds on it.
    let topology: BTreeMap<String, String> = [
        ("b".to_owned(), "http://10.1.0.2:8008/patroni".to_owned()),
        ("a".to_owned(), "http://10.1.0.1:8008/patroni".to_owned()),
    ]
    .into();
    assert!(a.set_failsafe(&topology).await.unwrap());
    assert!(
        !b.set_failsafe(&BTreeMap::new()).await.unwrap(),
        "not the holder"
    );
    let lf = lease(&c, &ns).await;
    assert_eq!(
        lf.metadata.annotations.as_ref().unwrap()["failsafe"],
        r#"{"a":"http://10.1.0.1:8008/patroni","b":"http://10.1.0.2:8008/patroni"}"#
    );
    assert_eq!(lf.spec, l2.spec, "the lock is as it was");
    assert!(a.update_leader(Some(&status)).await.unwrap());
    let l2 = lease(&c, &ns).await;
    assert_eq!(
        l2.metadata.annotations.as_ref().unwrap()["failsafe"],
        lf.metadata.annotations.as_ref().unwrap()["failsafe"],
        "kept by the renewal"
    );
    assert_ne!(spec(&l2).renew_time, spec(&lf).renew_time);

    let v = k8s::eventually("b sees a's status", LONG, || async {
        b.load(false)
            .await
            .ok()
            .filter(|v| v.status.as_ref().is_some_and(|s| s.optime == 123456))
    })
    .await;
    assert_eq!(v.leader.unwrap().name, "a");
    assert_eq!(v.status.unwrap().slots.unwrap()["b"], 100);

    // Release: the next member takes over at once, without waiting for expiry.
    assert!(a.release_leader(Some(&status), None).await.unwrap());
    assert!(lease(&c, &ns).await.spec.unwrap().holder_identity.is_none());
    assert!(
        b.acquire_leader().await.unwrap(),
        "a released lock is free at once"
    );
    let l3 = lease(&c, &ns).await;
    assert_eq!(spec(&l3).holder_identity.as_deref(), Some("b"));
    assert_eq!(
        spec(&l3).lease_transitions,
        Some(1),
        "+1 per change of holder"
    );
    assert!(!a.update_leader(None).await.unwrap(), "a lost it");
    assert!(
        !a.release_leader(None, None).await.unwrap(),
        "a cannot release b's lock"
    );
}

#[tokio::test]
async fn expiry_is_counted_on_the_observers_clock() {
    let c = k8s::admin().await;
    let ns = k8s::fresh_namespace(&c, "expiry").await;
    let ttl = 4;
    let a = member(&c, &ns, "a", ttl).await;
    assert!(a.acquire_leader().await.unwrap());
    let b = member(&c, &ns, "b", ttl).await;
    // a stops renewing (it is gone). b sees the lock held until ttl passed on its own clock
    // since it first saw this version.
    let seen = Instant::now();
    drop(a);
    assert!(!b.acquire_leader().await.unwrap());
    let took = k8s::eventually("b takes the expired lock", LONG, || async {
        b.acquire_leader().await.unwrap().then(Instant::now)
    })
    .await;
    assert!(took.duration_since(seen) >= Duration::from_secs(ttl) - Duration::from_millis(500));
    let l = lease(&c, &ns).await;
    assert_eq!(spec(&l).holder_identity.as_deref(), Some("b"));
    assert_eq!(spec(&l).lease_transitions, Some(1));
}

#[tokio::test]
async fn a_forged_renew_time_does_not_fool_the_election() {
    let c = k8s::admin().await;
    let ns = k8s::fresh_namespace(&c, "skew").await;
    let ttl = 4;
    let a = member(&c, &ns, "a", ttl).await;
    let b = member(&c, &ns, "b", ttl).await;
    assert!(a.acquire_leader().await.unwrap());
    let leases: Api<Lease> = Api::namespaced(c.clone(), &ns);
    let forge = |t: &'static str| {
        let leases = leases.clone();
        async move {
            let p = serde_json::json!({"spec": {"renewTime": t}});
            leases
                .patch("pg-leader", &PatchParams::default(), &Patch::Merge(&p))
                .await
                .unwrap();
        }
    };
    // Far in the past, while a keeps renewing: b must not see it expired.
    forge("1970-01-01T00:00:00.000000Z").await;
    for _ in 0..6 {
        assert!(
            a.update_leader(None).await.unwrap(),
            "a renews over the forged value"
        );
        assert!(
            !b.acquire_leader().await.unwrap(),
            "a renewTime in the past does not expire a live holder"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Far in the future, and a gone: b still takes over once ttl passed since the last change.
    drop(a);
    forge("2999-01-01T00:00:00.000000Z").await;
    let at = Instant::now();
    k8s::eventually(
        "b takes over despite a renewTime in the future",
        LONG,
        || async { b.acquire_leader().await.unwrap().then_some(()) },
    )
    .await;
    assert!(at.elapsed() >= Duration::from_secs(ttl) - Duration::from_millis(500));
}

#[tokio::test]
async fn racing_candidates_one_winner() {
    let c = k8s::admin().await;
    let ns = k8s::fresh_namespace(&c, "race").await;
    let mut ms = Vec::new();
    for n in ["a", "b", "c", "d"] {
        ms.push(member(&c, &ns, n, 30).await);
    }
    // Free lock, no Lease object yet: all race to create it.
    let r = futures::future::join_all(ms.iter().map(|m| m.acquire_leader())).await;
    assert_eq!(
        r.iter().filter(|x| matches!(x, Ok(true))).count(),
        1,
        "{r:?}"
    );
    let winner = r.iter().position(|x| matches!(x, Ok(true))).unwrap();
    assert!(ms[winner].release_leader(None, None).await.unwrap());
    // Released Lease: all race to update it with the same resourceVersion.
    for m in &ms {
        k8s::eventually("release seen", LONG, || async {
            m.load(false)
                .await
                .ok()
                .filter(|v| v.leader.is_none())
                .map(|_| ())
        })
        .await;
    }
    let r = futures::future::join_all(ms.iter().map(|m| m.acquire_leader())).await;
    assert_eq!(
        r.iter().filter(|x| matches!(x, Ok(true))).count(),
        1,
        "{r:?}"
    );
}

#[tokio::test]
async fn configmaps_and_member_pods() {
    let c = k8s::admin().await;
    let ns = k8s::fresh_namespace(&c, "cms").await;
    let a = member(&c, &ns, "a", 30).await;
    let b = member(&c, &ns, "b", 30).await;
    let mut changes = b.changes();
    let before = *changes.borrow_and_update();

    assert!(a.initialize(true, "7000").await.unwrap());
    assert!(
        !b.initialize(true, "7001").await.unwrap(),
        "initialize is create-only"
    );
    assert!(
        a.set_config(r#"{"ttl":30,"loop_wait":10}"#, None)
            .await
            .unwrap()
    );
    a.set_history(&[HistoryLine::new(
        1,
        100,
        "no recovery target specified",
        "2026-01-01T00:00:00+00:00",
        "a",
    )])
    .await
    .unwrap();
    let v = k8s::eventually("b sees config", LONG, || async {
        b.load(false)
            .await
            .ok()
            .filter(|v| v.config.is_some() && v.history.is_some())
    })
    .await;
    assert!(
        *changes.borrow_and_update() != before,
        "watch events move the counter"
    );
    assert_eq!(v.initialize.as_deref(), Some("7000"));
    assert_eq!(v.timeline(), 2);
    let cv = v.config.unwrap();
    assert!(
        !b.set_config("{}", Some(&pgwarden::dcs::Version("1".into())))
            .await
            .unwrap(),
        "CAS on a stale version fails"
    );
    let fresh = b.load(true).await.unwrap();
    assert!(
        b.set_config(r#"{"ttl":20}"#, Some(&fresh.config.unwrap().version))
            .await
            .unwrap()
    );
    assert_eq!(cv.value["ttl"], 30);

    // Failover and sync.
    let f = Failover {
        leader: Some("a".into()),
        member: Some("b".into()),
        scheduled_at: None,
    };
    // Eventually established: b's cache answers reads from then on.
    k8s::eventually("b's cache to hold the config", LONG, || async {
        b.load(false).await.ok().filter(|v| v.config.is_some())
    })
    .await;
    assert!(b.set_failover(&f, None).await.unwrap());
    // Read-your-writes from the cache: the cycle an API request wakes right after writing
    // the failover key sees it, without waiting for the watch's echo (an own write's echo
    // wakes no one, so a missed echo cost up to loop_wait).
    let seen = b.load(false).await.unwrap();
    assert_eq!(
        seen.failover.map(|f| f.value.member),
        Some(Some("b".to_string())),
        "an own write is in the cached view at once"
    );
    let s = SyncState {
        leader: Some("a".into()),
        sync_standby: Some("b".into()),
        quorum: Some(1),
    };
    assert!(a.set_sync(&s, None).await.unwrap());
    let v = k8s::eventually("a sees failover and sync", LONG, || async {
        a.load(false)
            .await
            .ok()
            .filter(|v| v.failover.is_some() && v.sync.is_some())
    })
    .await;
    assert_eq!(v.failover.as_ref().unwrap().value, f);
    assert_eq!(v.sync.as_ref().unwrap().value, s);
    assert!(
        a.set_failover(&Failover::default(), v.failover_version.as_ref())
            .await
            .unwrap(),
        "cleared by CAS"
    );

    // Members: the status annotation and the role label, written only when something other
    // than a small position move changed.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let mut m = Member {
        conn_url: Some("postgres://10.1.0.1:5432/postgres".into()),
        api_url: Some("http://10.1.0.1:8008/patroni".into()),
        state: Some("running".into()),
        role: Some("replica".into()),
        xlog_location: Some(1000),
        timeline: Some(2),
        ..Member::default()
    };
    b.touch_member(&m).await.unwrap();
    let p = pods.get("b").await.unwrap();
    assert_eq!(p.metadata.labels.as_ref().unwrap()["role"], "replica");
    assert_eq!(
        Member::parse(&p.metadata.annotations.as_ref().unwrap()["status"]).unwrap(),
        m
    );
    let rv = p.metadata.resource_version.clone();
    m.xlog_location = Some(2000);
    b.touch_member(&m).await.unwrap();
    assert_eq!(
        pods.get("b").await.unwrap().metadata.resource_version,
        rv,
        "a small WAL move is not written"
    );
    m.xlog_location = Some(2000 + 16 * 1024 * 1024);
    b.touch_member(&m).await.unwrap();
    assert_ne!(
        pods.get("b").await.unwrap().metadata.resource_version,
        rv,
        "a large one is"
    );
    m.role = Some("primary".into());
    b.touch_member(&m).await.unwrap();
    assert_eq!(
        pods.get("b").await.unwrap().metadata.labels.unwrap()["role"],
        "primary"
    );
    m.state = Some("stopped".into());
    b.touch_member(&m).await.unwrap();
    assert!(
        !pods
            .get("b")
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap()
            .contains_key("role"),
        "no label while stopped"
    );
    let v = k8s::eventually("a sees b as a member", LONG, || async {
        a.load(false).await.ok().filter(|v| {
            v.members
                .get("b")
                .is_some_and(|x| x.state.as_deref() == Some("stopped"))
        })
    })
    .await;
    assert_eq!(v.members["b"].conn_url, m.conn_url);
    b.delete_member().await.unwrap();
    k8s::eventually("member gone", LONG, || async {
        a.load(false)
            .await
            .ok()
            .filter(|v| !v.members.contains_key("b"))
            .map(|_| ())
    })
    .await;

    a.delete_cluster().await.unwrap();
    let v = a.load(true).await.unwrap();
    assert!(v.config.is_none() && v.initialize.is_none() && v.leader.is_none());
}

/// A member of scope `pg` keeping the primary EndpointSlice, at `ip`.
async fn slice_member(client: &kube::Client, ns: &str, name: &str, ip: &str) -> KubernetesDcs {
    let k8s = Kubernetes {
        namespace: ns.into(),
        pod_ip: Some(ip.into()),
        primary_endpoint_slice: true,
        ..Kubernetes::default()
    };
    member_with(client, name, 30, k8s, ip).await
}

/// The addresses in the primary EndpointSlice (`None`: no slice).
async fn slice_addresses(client: &kube::Client, ns: &str) -> Option<Vec<String>> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let s = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .get_opt("pg-primary")
        .await
        .unwrap()?;
    Some(
        s.endpoints
            .unwrap_or_default()
            .into_iter()
            .flat_map(|e| e.addresses)
            .collect(),
    )
}

fn running(role: &str) -> Member {
    Member {
        state: Some("running".into()),
        role: Some(role.into()),
        ..Member::default()
    }
}

#[tokio::test]
async fn the_primary_endpoint_slice_follows_the_lock_holder() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let c = k8s::admin().await;
    let ns = k8s::fresh_namespace(&c, "slice").await;
    let a = slice_member(&c, &ns, "a", "10.9.0.1").await;
    let b = slice_member(&c, &ns, "b", "10.9.0.2").await;
    let want = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());

    // A primary without the lock does not route the Service to itself.
    a.touch_member(&running("primary")).await.unwrap();
    b.touch_member(&running("replica")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(slice_addresses(&c, &ns).await, None);

    // The holder running as primary: the slice holds its address only, tied to its Service.
    assert!(a.acquire_leader().await.unwrap());
    a.touch_member(&running("primary")).await.unwrap();
    k8s::eventually("the slice to hold a", LONG, || async {
        (slice_addresses(&c, &ns).await == want(&["10.9.0.1"])).then_some(())
    })
    .await;
    let s = Api::<EndpointSlice>::namespaced(c.clone(), &ns)
        .get("pg-primary")
        .await
        .unwrap();
    let labels = s.metadata.labels.unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "pg-primary");
    assert_eq!(labels["cluster-name"], "pg");
    assert_eq!(s.address_type, "IPv4");
    assert_eq!(s.ports.unwrap()[0].port, Some(5432));

    // A hand-over: the new holder replaces the address; the old primary, now a replica, then
    // takes out nothing that is not its own.
    assert!(a.release_leader(None, None).await.unwrap());
    assert!(b.acquire_leader().await.unwrap());
    b.touch_member(&running("primary")).await.unwrap();
    k8s::eventually("the slice to hold b", LONG, || async {
        (slice_addresses(&c, &ns).await == want(&["10.9.0.2"])).then_some(())
    })
    .await;
    a.touch_member(&running("replica")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(slice_addresses(&c, &ns).await, want(&["10.9.0.2"]));

    // The primary stops: its address goes, so nothing routes to a stopped server.
    b.touch_member(&Member {
        state: Some("stopped".into()),
        role: Some("primary".into()),
        ..Member::default()
    })
    .await
    .unwrap();
    k8s::eventually("the slice to empty", LONG, || async {
        (slice_addresses(&c, &ns).await == want(&[])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_primary_endpoint_slice_needs_a_pod_ip() {
    let c = k8s::admin().await;
    let k8s = Kubernetes {
        primary_endpoint_slice: true,
        ..Kubernetes::default()
    };
    let e = KubernetesDcs::with_client(
        c,
        KubernetesSettings {
            k8s,
            scope: "pg".into(),
            name: "a".into(),
            ttl: Duration::from_secs(30),
            retry_timeout: Duration::from_secs(5),
        },
    )
    .err()
    .expect("refused without pod_ip")
    .to_string();
    assert!(e.contains("kubernetes.pod_ip"), "{e}");
}
