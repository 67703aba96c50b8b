//! The leader lock: taking, renewing and releasing it, its expiry, and races for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden::dcs::Dcs;

use super::{Backend, cached, fresh, holder, member, status};

const TTL: Duration = Duration::from_secs(30);

pub async fn acquire(b: &dyn Backend) {
    let c = b.cluster("acquire").await;
    let a = b.member(&c, "a", TTL).await;
    let other = b.member(&c, "b", TTL).await;

    assert!(a.acquire_leader().await.unwrap(), "a free lock");
    let first = fresh(&*a).await.leader.expect("held");
    assert_eq!(first.name, "a");
    assert!(!other.acquire_leader().await.unwrap(), "held by another");
    // The HA core's answer to `Ok(false)` is "somebody else holds it: stop writing"; the
    // holder asking again (its earlier answer lost) holds it, still the same instance.
    assert!(a.acquire_leader().await.unwrap(), "held by this member");
    let again = fresh(&*a).await.leader.expect("still held");
    assert_eq!(
        again, first,
        "taking it again keeps the instance (its version)"
    );
    assert!(
        !other.acquire_leader().await.unwrap(),
        "still held by another"
    );
    assert_eq!(holder(&fresh(&*other).await), Some("a"));
}

pub async fn update(b: &dyn Backend) {
    let c = b.cluster("update").await;
    let a = b.member(&c, "a", TTL).await;
    let other = b.member(&c, "b", TTL).await;

    assert!(
        !a.update_leader(None).await.unwrap(),
        "no lock: nothing to renew"
    );
    assert!(
        fresh(&*a).await.leader.is_none(),
        "update_leader never creates the lock"
    );
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.update_leader(None).await.unwrap(), "own lock");
    assert!(a.update_leader(Some(&status(100))).await.unwrap());
    assert_eq!(fresh(&*a).await.status, Some(status(100)));
    assert!(
        !other.update_leader(Some(&status(1))).await.unwrap(),
        "someone else's"
    );
    let v = fresh(&*a).await;
    assert_eq!(holder(&v), Some("a"));
    assert_eq!(
        v.status,
        Some(status(100)),
        "a failed renewal writes no status"
    );
    assert!(a.update_leader(None).await.unwrap());
    assert_eq!(
        fresh(&*a).await.status,
        Some(status(100)),
        "no status: kept"
    );

    // Lost: released, then taken by another member.
    assert!(a.release_leader(None, None).await.unwrap());
    assert!(other.acquire_leader().await.unwrap());
    assert!(!a.update_leader(None).await.unwrap(), "lost to b");
    assert_eq!(holder(&fresh(&*a).await), Some("b"));

    // Deleted by hand: lost, and never created again by a renewal.
    cached(&*a, "a sees b's lock", |v| holder(v) == Some("b")).await;
    b.delete_lock(&c).await;
    assert!(
        !other.update_leader(None).await.unwrap(),
        "a deleted lock is lost"
    );
    assert!(!other.update_leader(Some(&status(200))).await.unwrap());
    let v = fresh(&*other).await;
    assert!(
        v.leader.is_none(),
        "renewals never re-create the lock: {v:?}"
    );
    // Its former holder may still be writable until its own deadline: the others are told
    // whom to ask before they race (ClusterView::vanished_leader).
    cached(&*a, "a sees the lock vanish", |v| {
        v.leader.is_none() && v.vanished_leader.as_deref() == Some("b")
    })
    .await;
    assert!(
        a.acquire_leader().await.unwrap(),
        "a vanished lock can be taken"
    );
    let v = fresh(&*a).await;
    assert_eq!(holder(&v), Some("a"));
    assert_eq!(v.vanished_leader, None);
}

pub async fn release(b: &dyn Backend) {
    let c = b.cluster("release").await;
    let a = b.member(&c, "a", TTL).await;
    let other = b.member(&c, "b", TTL).await;

    assert!(!a.release_leader(None, None).await.unwrap(), "nothing held");
    assert!(a.acquire_leader().await.unwrap());
    let v1 = fresh(&*a).await.leader.expect("held").version;
    assert!(
        !other.release_leader(Some(&status(1)), None).await.unwrap(),
        "someone else's"
    );
    assert!(
        !other.release_leader(None, Some(&v1)).await.unwrap(),
        "even with its version"
    );
    let v = fresh(&*a).await;
    assert_eq!(holder(&v), Some("a"));
    assert_eq!(
        v.status, None,
        "a release that releases nothing writes no status"
    );

    // The version as seen before the holder's renewals still names this holding.
    assert!(a.update_leader(None).await.unwrap());
    assert!(
        a.release_leader(Some(&status(50)), Some(&v1))
            .await
            .unwrap(),
        "own, expected"
    );
    let v = fresh(&*a).await;
    assert!(v.leader.is_none(), "released");
    assert_eq!(v.status, Some(status(50)), "the last position is written");

    // Taken again: a release that arrives late, for the earlier holding, releases nothing.
    assert!(a.acquire_leader().await.unwrap());
    let v2 = fresh(&*a).await.leader.expect("held again").version;
    assert_ne!(v2, v1, "a new holding has a new version");
    assert!(
        !a.release_leader(Some(&status(1)), Some(&v1)).await.unwrap(),
        "stale expected version"
    );
    let v = fresh(&*a).await;
    assert_eq!(v.leader.map(|l| l.version), Some(v2.clone()), "still held");
    assert_eq!(
        v.status,
        Some(status(50)),
        "the stale release wrote no status"
    );
    assert!(a.release_leader(None, Some(&v2)).await.unwrap());
    assert!(
        !a.release_leader(None, None).await.unwrap(),
        "already released"
    );

    // A released lock is free at once.
    assert!(other.acquire_leader().await.unwrap());
    assert!(!a.release_leader(None, Some(&v2)).await.unwrap());
    assert!(!a.release_leader(None, None).await.unwrap(), "b's now");
    assert_eq!(holder(&fresh(&*a).await), Some("b"));
}

const SHORT: Duration = Duration::from_secs(4);

/// The lock lasts ttl from the send time of its holder's last successful acquisition or
/// renewal (for other members, on Kubernetes, from when they saw it: expiry is observer-local)
/// and not much longer, for members that joined before the holder too. `set_ttl` sets the ttl
/// of the next lock taken.
pub async fn expiry(b: &dyn Backend) {
    let c = b.cluster("ttl").await;
    let bb = b.member(&c, "b", TTL).await;
    let cc = b.member(&c, "c", TTL).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = b.member(&c, "a", TTL).await;
    // A session with the long ttl exists first (the member key), as in the agent.
    a.touch_member(&member("running", "replica")).await.unwrap();
    for d in [&a, &bb, &cc] {
        d.set_ttl(SHORT);
    }

    let t0 = Instant::now();
    assert!(a.acquire_leader().await.unwrap());
    for d in [&bb, &cc] {
        cached(&**d, "the others see a", |v| holder(v) == Some("a")).await;
    }
    sleep_until(t0 + SHORT / 2).await;
    let t1 = Instant::now();
    assert!(a.update_leader(None).await.unwrap());
    sleep_until(t0 + SHORT + Duration::from_millis(500)).await;
    assert!(
        !bb.acquire_leader().await.unwrap(),
        "renewed: still held past t0 + ttl"
    );
    let t2 = Instant::now();
    assert!(
        a.acquire_leader().await.unwrap(),
        "its holder takes it again"
    );
    sleep_until(t1 + SHORT + Duration::from_millis(500)).await;
    assert!(
        !cc.acquire_leader().await.unwrap(),
        "taken again: held past t1 + ttl"
    );

    // a stops renewing; b and c race for the lock once it expires for them.
    let (winner, loser) = loop {
        let (rb, rc) = tokio::join!(bb.acquire_leader(), cc.acquire_leader());
        let (rb, rc) = (rb.unwrap(), rc.unwrap());
        assert!(!(rb && rc), "both took the expired lock");
        if rb || rc {
            break if rb { (&bb, &cc) } else { (&cc, &bb) };
        }
        assert!(
            t2.elapsed() < SHORT + Duration::from_secs(8),
            "not expired {:?} after the last acquisition (ttl {SHORT:?})",
            t2.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = t2.elapsed();
    assert!(
        took >= SHORT - Duration::from_millis(100),
        "expired {took:?} after the holder's last acquisition, before its ttl {SHORT:?}"
    );
    eprintln!("the unrenewed lock was taken {took:?} after its last acquisition (ttl {SHORT:?})");
    assert!(
        !a.update_leader(None).await.unwrap(),
        "lost after it expired"
    );
    assert!(!a.acquire_leader().await.unwrap());
    assert!(!loser.acquire_leader().await.unwrap());
    assert!(winner.update_leader(None).await.unwrap());
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}

pub async fn race(b: &dyn Backend) {
    let c = b.cluster("race").await;
    let mut ms: Vec<Arc<dyn Dcs>> = Vec::new();
    for n in ["a", "b", "c", "d"] {
        ms.push(b.member(&c, n, TTL).await);
    }
    let one_winner = |r: Vec<Result<bool, pgwarden::dcs::DcsError>>| {
        let won: Vec<usize> = r
            .iter()
            .enumerate()
            .filter(|(_, x)| matches!(x, Ok(true)))
            .map(|(i, _)| i)
            .collect();
        assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
        assert_eq!(won.len(), 1, "exactly one winner: {r:?}");
        won[0]
    };
    // A lock never taken yet.
    let w = one_winner(futures::future::join_all(ms.iter().map(|m| m.acquire_leader())).await);
    let name = ["a", "b", "c", "d"][w];
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(holder(&fresh(&**m).await), Some(name));
        assert_eq!(
            m.update_leader(None).await.unwrap(),
            i == w,
            "only the winner renews"
        );
    }
    // A released lock.
    assert!(ms[w].release_leader(None, None).await.unwrap());
    for m in &ms {
        cached(&**m, "the release seen", |v| v.leader.is_none()).await;
    }
    let w2 = one_winner(futures::future::join_all(ms.iter().map(|m| m.acquire_leader())).await);
    let name = ["a", "b", "c", "d"][w2];
    for m in &ms {
        assert_eq!(holder(&fresh(&**m).await), Some(name));
    }
}
