//! The writes besides the lock: member keys, `initialize`, compare-and-set writes,
//! `delete_cluster`, and the holder's `failsafe`.

use std::collections::BTreeMap;
use std::time::Duration;

use pgwarden::dcs::{ClusterView, Failover};

use super::{Backend, SYSID, cached, failover, fresh, history, holder, member, status, sync};

const TTL: Duration = Duration::from_secs(30);

pub async fn member_keys(b: &dyn Backend) {
    let c = b.cluster("members").await;
    let a = b.member(&c, "a", TTL).await;
    let other = b.member(&c, "b", TTL).await;

    let m1 = member("running", "replica");
    a.touch_member(&m1).await.unwrap();
    assert_eq!(fresh(&*a).await.members.get("a"), Some(&m1));
    let m2 = member("stopped", "demoted");
    a.touch_member(&m2).await.unwrap();
    assert_eq!(fresh(&*a).await.members.get("a"), Some(&m2), "rewritten");
    let mb = member("running", "replica");
    other.touch_member(&mb).await.unwrap();
    let v = fresh(&*a).await;
    assert_eq!(
        v.members.get("a"),
        Some(&m2),
        "a member writes its own key only"
    );
    assert_eq!(v.members.get("b"), Some(&mb));
    assert_eq!(v.members.len(), 2);
    cached(&*other, "b's cache shows a", |v| {
        v.members.get("a") == Some(&m2)
    })
    .await;

    a.delete_member().await.unwrap();
    let v = fresh(&*a).await;
    assert!(!v.members.contains_key("a"), "delete_member");
    assert_eq!(v.members.get("b"), Some(&mb), "the others stay");
    cached(&*other, "b's cache drops a", |v| {
        !v.members.contains_key("a")
    })
    .await;
    a.delete_member().await.unwrap();
    // The next touch writes again, whatever the backend remembers of its last write.
    a.touch_member(&m2).await.unwrap();
    assert_eq!(
        fresh(&*a).await.members.get("a"),
        Some(&m2),
        "written again"
    );
}

pub async fn initialize(b: &dyn Backend) {
    let c = b.cluster("init").await;
    let a = b.member(&c, "a", TTL).await;
    let bb = b.member(&c, "b", TTL).await;
    let third = b.member(&c, "c", TTL).await;

    let (ra, rb) = tokio::join!(a.initialize(true, ""), bb.initialize(true, ""));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra ^ rb,
        "exactly one create-only initialize wins: {ra} {rb}"
    );
    let (owner, loser) = if ra { (&a, &bb) } else { (&bb, &a) };
    assert_eq!(fresh(&**owner).await.initialize.as_deref(), Some(""));
    // Claiming again is how a claimant whose answer was lost finds its claim (src/ha/cycle.rs).
    assert!(
        owner.initialize(true, "").await.unwrap(),
        "the claimant's claim is its own"
    );
    assert!(
        !loser.initialize(true, "").await.unwrap(),
        "the loser still loses"
    );
    assert!(!third.initialize(true, "").await.unwrap());
    assert!(
        !owner.initialize(true, "1").await.unwrap(),
        "create-only: another value"
    );
    assert_eq!(fresh(&*third).await.initialize.as_deref(), Some(""));

    // Overwriting is unconditional and ends the claim.
    assert!(loser.initialize(false, SYSID).await.unwrap());
    assert_eq!(fresh(&*third).await.initialize.as_deref(), Some(SYSID));
    assert!(
        !owner.initialize(true, "").await.unwrap(),
        "initialized: no claim"
    );
    assert!(
        !loser.initialize(true, SYSID).await.unwrap(),
        "create-only never overwrites"
    );
    assert_eq!(fresh(&*a).await.initialize.as_deref(), Some(SYSID));

    third.cancel_initialization().await.unwrap();
    assert_eq!(fresh(&*a).await.initialize, None, "cancel_initialization");
    third.cancel_initialization().await.unwrap();
    assert!(
        third.initialize(true, "").await.unwrap(),
        "free to claim again"
    );
    assert!(!a.initialize(true, "").await.unwrap());
}

pub async fn compare_and_set(b: &dyn Backend) {
    let c = b.cluster("cas").await;
    let a = b.member(&c, "a", TTL).await;
    let other = b.member(&c, "b", TTL).await;
    let config_version = |v: ClusterView| v.config.expect("config").version;

    assert!(a.set_config(r#"{"ttl":30}"#, None).await.unwrap());
    let v1 = config_version(fresh(&*a).await);
    assert!(
        a.set_config(r#"{"ttl":31}"#, Some(&v1)).await.unwrap(),
        "current version"
    );
    assert!(
        !a.set_config(r#"{"ttl":32}"#, Some(&v1)).await.unwrap(),
        "stale version"
    );
    let v = fresh(&*a).await.config.unwrap();
    assert_eq!(
        v.value["ttl"], 31,
        "a failed compare-and-set writes nothing"
    );
    assert_ne!(v.version, v1);
    assert!(
        other
            .set_config(r#"{"ttl":33}"#, Some(&v.version))
            .await
            .unwrap()
    );
    assert!(
        a.set_config(r#"{"ttl":34}"#, None).await.unwrap(),
        "unconditional"
    );
    let foreign = config_version(fresh(&*a).await);

    // `failover`: a version of another key never matches, present or absent.
    let f = failover("a", "b");
    assert!(
        !a.set_failover(&f, Some(&foreign)).await.unwrap(),
        "absent key"
    );
    assert_eq!(fresh(&*a).await.failover_version, None);
    assert!(a.set_failover(&f, None).await.unwrap());
    let fv = fresh(&*a).await.failover.expect("failover").version;
    assert!(
        !a.set_failover(&Failover::default(), Some(&foreign))
            .await
            .unwrap()
    );
    assert!(
        a.set_failover(&Failover::default(), Some(&fv))
            .await
            .unwrap(),
        "cleared"
    );
    let v = fresh(&*a).await;
    assert!(v.failover.is_none(), "an empty value means no failover");
    let cleared = v.failover_version.expect("the cleared key keeps a version");
    assert_ne!(cleared, fv);
    assert!(
        !a.set_failover(&f, Some(&fv)).await.unwrap(),
        "stale version"
    );
    assert!(other.set_failover(&f, Some(&cleared)).await.unwrap());
    assert_eq!(fresh(&*a).await.failover.map(|f| f.value), Some(f));

    // `sync`.
    assert!(
        !a.set_sync(&sync("a", None), Some(&foreign)).await.unwrap(),
        "absent key"
    );
    assert!(a.set_sync(&sync("a", Some("b")), None).await.unwrap());
    let sv = fresh(&*a).await.sync.expect("sync").version;
    assert!(a.set_sync(&sync("a", None), Some(&sv)).await.unwrap());
    assert!(
        !a.set_sync(&sync("a", Some("b")), Some(&sv)).await.unwrap(),
        "stale"
    );
    assert_eq!(
        fresh(&*a).await.sync.map(|s| s.value),
        Some(sync("a", None))
    );

    // `history` has no version: the last write wins.
    a.set_history(&history(2)).await.unwrap();
    other.set_history(&history(3)).await.unwrap();
    let v = fresh(&*a).await;
    assert_eq!(v.history, Some(history(3)));
    assert_eq!(v.timeline(), 4);
}

pub async fn delete_cluster(b: &dyn Backend) {
    let c = b.cluster("remove").await;
    let a = b.member(&c, "a", TTL).await;
    let other = b.member(&c, "b", TTL).await;

    assert!(a.set_config(r#"{"ttl":30}"#, None).await.unwrap());
    let before = fresh(&*a).await.config.unwrap().version;
    a.touch_member(&member("running", "primary")).await.unwrap();
    assert!(a.initialize(false, SYSID).await.unwrap());
    a.set_history(&history(1)).await.unwrap();
    assert!(a.set_failover(&failover("a", "b"), None).await.unwrap());
    assert!(a.set_sync(&sync("a", Some("b")), None).await.unwrap());
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.update_leader(Some(&status(9))).await.unwrap());
    cached(&*other, "b sees the cluster", |v| {
        holder(v) == Some("a") && v.status.is_some()
    })
    .await;

    a.delete_cluster().await.unwrap();
    // Members are left out: on Kubernetes they are Pods, which outlive the cluster's keys (as
    // with Patroni), and on etcd the agents write them again at once.
    let gone = |v: &ClusterView| {
        v.leader.is_none()
            && v.config.is_none()
            && v.initialize.is_none()
            && v.history.is_none()
            && v.failover.is_none()
            && v.failover_version.is_none()
            && v.sync.is_none()
            && v.status.is_none()
    };
    let v = fresh(&*a).await;
    assert!(gone(&v), "after delete_cluster: {v:?}");
    cached(&*other, "b's cache after delete_cluster", gone).await;
    a.delete_cluster().await.unwrap();

    // A version read before never matches a key written after.
    assert!(a.set_config(r#"{"ttl":20}"#, None).await.unwrap());
    assert!(
        !a.set_config(r#"{"ttl":10}"#, Some(&before)).await.unwrap(),
        "a version from before delete_cluster matched"
    );
    assert!(other.acquire_leader().await.unwrap(), "the lock is free");
    a.touch_member(&member("running", "replica")).await.unwrap();
    assert!(fresh(&*a).await.members.contains_key("a"), "written again");
}

/// Patroni's `failsafe` value: every member with an api_url, by name.
fn topology(names: &[&str]) -> BTreeMap<String, String> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                (*n).to_owned(),
                format!("http://10.0.0.{}:8008/patroni", i + 1),
            )
        })
        .collect()
}

/// `failsafe` is written by the lock's holder only: a member that does not hold it (never did,
/// released it, lost it to another) writes nothing. The write is no new holding, and the
/// holder's renewals go on after it (on Kubernetes both write the Lease).
pub async fn failsafe(b: &dyn Backend) {
    let c = b.cluster("failsafe").await;
    let a = b.member(&c, "a", TTL).await;
    let other = b.member(&c, "b", TTL).await;
    let (ab, only_b, only_a) = (topology(&["a", "b"]), topology(&["b"]), topology(&["a"]));

    assert!(
        !a.set_failsafe(&ab).await.unwrap(),
        "no lock: nothing written"
    );
    assert_eq!(fresh(&*a).await.failsafe, None);
    assert!(a.acquire_leader().await.unwrap());
    let holding = fresh(&*a).await.leader.expect("held").version;
    assert!(a.set_failsafe(&ab).await.unwrap(), "the holder writes it");
    let v = fresh(&*other).await;
    assert_eq!(v.failsafe, Some(ab.clone()));
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(
        v.leader.map(|l| l.version),
        Some(holding.clone()),
        "the same holding"
    );

    assert!(
        !other.set_failsafe(&only_b).await.unwrap(),
        "not the holder"
    );
    assert_eq!(
        fresh(&*a).await.failsafe,
        Some(ab.clone()),
        "the refused write changed nothing"
    );

    // The holder's renewals go on, and keep it.
    assert!(
        a.update_leader(None).await.unwrap(),
        "renewal after the holder's failsafe write"
    );
    assert!(a.update_leader(Some(&status(100))).await.unwrap());
    let v = fresh(&*a).await;
    assert_eq!(holder(&v), Some("a"));
    assert_eq!(v.failsafe, Some(ab.clone()), "renewals keep it");
    assert_eq!(v.status, Some(status(100)));
    assert!(a.set_failsafe(&only_a).await.unwrap(), "rewritten");
    assert!(a.set_failsafe(&ab).await.unwrap(), "and again");
    assert!(a.update_leader(Some(&status(101))).await.unwrap());
    cached(&*other, "b's cache shows it", |v| {
        v.failsafe.as_ref() == Some(&ab) && v.status == Some(status(101))
    })
    .await;

    // Released, then taken by b: a writes nothing any more, b does.
    assert!(
        a.release_leader(None, Some(&holding)).await.unwrap(),
        "still the holding it was"
    );
    assert!(!a.set_failsafe(&only_a).await.unwrap(), "released");
    assert!(other.acquire_leader().await.unwrap());
    assert!(!a.set_failsafe(&only_a).await.unwrap(), "deposed");
    assert_eq!(fresh(&*a).await.failsafe, Some(ab.clone()));
    assert!(other.set_failsafe(&only_b).await.unwrap());
    assert!(other.update_leader(None).await.unwrap());
    let v = fresh(&*a).await;
    assert_eq!(holder(&v), Some("b"));
    assert_eq!(v.failsafe, Some(only_b));
}
