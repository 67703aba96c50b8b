//! What members read back: fresh and cached views after each write, the change counter,
//! separate scopes.

use std::time::Duration;

use pgwarden::dcs::{ClusterView, Dcs};
use serde_json::json;

use super::{
    Backend, PROPAGATION, SYSID, cached, failover, fresh, history, holder, member, status, sync,
};

const TTL: Duration = Duration::from_secs(30);

pub async fn new_cluster_is_empty(b: &dyn Backend) {
    let c = b.cluster("empty").await;
    let a = b.member(&c, "a", TTL).await;
    assert_eq!(fresh(&*a).await, ClusterView::default(), "fresh read");
    assert_eq!(
        a.load(false).await.unwrap(),
        ClusterView::default(),
        "cached read"
    );
}

/// Every write shows at once in the writer's fresh read, and soon in another member's cache,
/// which then agrees with a fresh read.
pub async fn writes_show(b: &dyn Backend) {
    let c = b.cluster("views").await;
    let a = b.member(&c, "a", TTL).await;
    let other = b.member(&c, "b", TTL).await;

    let m = member("running", "replica");
    a.touch_member(&m).await.unwrap();
    assert_eq!(fresh(&*a).await.members.get("a"), Some(&m), "touch_member");
    assert!(
        a.set_config(r#"{"ttl":30,"loop_wait":10}"#, None)
            .await
            .unwrap()
    );
    let v = fresh(&*a).await;
    assert_eq!(
        v.config.map(|c| json!(c.value)),
        Some(json!({"ttl": 30, "loop_wait": 10})),
        "set_config"
    );
    assert!(a.initialize(false, SYSID).await.unwrap());
    assert_eq!(
        fresh(&*a).await.initialize.as_deref(),
        Some(SYSID),
        "initialize"
    );
    a.set_history(&history(2)).await.unwrap();
    let v = fresh(&*a).await;
    assert_eq!(v.history, Some(history(2)), "set_history");
    assert_eq!(v.timeline(), 3);
    assert!(a.set_failover(&failover("a", "b"), None).await.unwrap());
    let v = fresh(&*a).await;
    let f = v.failover.expect("set_failover");
    assert_eq!(f.value, failover("a", "b"));
    assert_eq!(v.failover_version, Some(f.version), "failover_version");
    assert!(a.set_sync(&sync("a", Some("b")), None).await.unwrap());
    assert_eq!(
        fresh(&*a).await.sync.map(|s| s.value),
        Some(sync("a", Some("b"))),
        "set_sync"
    );
    assert!(a.acquire_leader().await.unwrap());
    assert_eq!(holder(&fresh(&*a).await), Some("a"), "acquire_leader");
    assert!(a.update_leader(Some(&status(4096))).await.unwrap());
    let want = fresh(&*a).await;
    assert_eq!(want.status, Some(status(4096)), "update_leader's status");
    assert!(want.problems.is_empty(), "{:?}", want.problems);

    cached(&*other, "another member's cache shows every write", |v| {
        *v == want
    })
    .await;
    assert_eq!(fresh(&*other).await, want, "another member's fresh read");
    cached(&*a, "the writer's own cache", |v| *v == want).await;
}

/// Waits for `rx` to move, then for `pred` on `d`'s cached view (the agent's own pattern: sleep
/// on the counter, then read). A view that changes without the counter moving fails.
async fn woken(
    rx: &mut tokio::sync::watch::Receiver<u64>,
    d: &dyn Dcs,
    what: &str,
    pred: impl Fn(&ClusterView) -> bool,
) {
    let until = tokio::time::Instant::now() + PROPAGATION;
    loop {
        match tokio::time::timeout_at(until, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("{what}: changes() sender dropped"),
            Err(_) => panic!(
                "{what}: changes() did not move (or the view never showed it); view: {:?}",
                d.load(false).await
            ),
        }
        if d.load(false).await.is_ok_and(|v| pred(&v)) {
            return;
        }
    }
}

pub async fn changes_move(b: &dyn Backend) {
    let c = b.cluster("changes").await;
    let a = b.member(&c, "a", TTL).await;
    let w = b.member(&c, "b", TTL).await;
    let mut rx = w.changes();
    let w = &*w;
    macro_rules! step {
        ($what:expr, $write:expr, $pred:expr) => {
            rx.borrow_and_update();
            $write;
            woken(&mut rx, w, $what, $pred).await;
        };
    }
    step!(
        "set_config",
        a.set_config(r#"{"ttl":30}"#, None).await.unwrap(),
        |v| v.config.is_some()
    );
    step!(
        "touch_member",
        a.touch_member(&member("running", "replica")).await.unwrap(),
        |v| v.members.contains_key("a")
    );
    step!(
        "acquire_leader",
        assert!(a.acquire_leader().await.unwrap()),
        |v| holder(v) == Some("a")
    );
    step!(
        "update_leader with a status",
        assert!(a.update_leader(Some(&status(77))).await.unwrap()),
        |v| v.status == Some(status(77))
    );
    step!(
        "set_failover",
        assert!(a.set_failover(&failover("a", "b"), None).await.unwrap()),
        |v| v.failover.is_some()
    );
    step!(
        "set_sync",
        assert!(a.set_sync(&sync("a", None), None).await.unwrap()),
        |v| v.sync.is_some()
    );
    step!(
        "set_history",
        a.set_history(&history(1)).await.unwrap(),
        |v| v.history.is_some()
    );
    step!(
        "initialize",
        assert!(a.initialize(false, SYSID).await.unwrap()),
        |v| v.initialize.is_some()
    );
    step!(
        "release_leader",
        assert!(a.release_leader(None, None).await.unwrap()),
        |v| v.leader.is_none()
    );
    step!(
        "cancel_initialization",
        a.cancel_initialization().await.unwrap(),
        |v| v.initialize.is_none()
    );
    step!("delete_member", a.delete_member().await.unwrap(), |v| !v
        .members
        .contains_key("a"));
    step!("delete_cluster", a.delete_cluster().await.unwrap(), |v| v
        .config
        .is_none()
        && v.history.is_none());
}

pub async fn scopes_are_separate(b: &dyn Backend) {
    let c1 = b.cluster("iso").await;
    let c2 = b.neighbour(&c1, &format!("{}x", c1.scope)).await;
    let a = b.member(&c1, "a", TTL).await;
    let a2 = b.member(&c1, "b", TTL).await;
    let z = b.member(&c2, "z", TTL).await;

    a.touch_member(&member("running", "primary")).await.unwrap();
    assert!(a.set_config(r#"{"ttl":30}"#, None).await.unwrap());
    assert!(a.initialize(false, SYSID).await.unwrap());
    a.set_history(&history(1)).await.unwrap();
    assert!(a.set_failover(&failover("a", "b"), None).await.unwrap());
    assert!(a.set_sync(&sync("a", None), None).await.unwrap());
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.update_leader(Some(&status(5))).await.unwrap());
    cached(&*a2, "the same scope sees it all", |v| {
        v.status.is_some() && v.sync.is_some() && !v.members.is_empty()
    })
    .await;
    assert_eq!(
        fresh(&*z).await,
        ClusterView::default(),
        "another scope: fresh"
    );
    assert_eq!(
        z.load(false).await.unwrap(),
        ClusterView::default(),
        "cached"
    );

    assert!(z.acquire_leader().await.unwrap(), "a lock of its own");
    assert_eq!(holder(&fresh(&*z).await), Some("z"));
    assert_eq!(holder(&fresh(&*a).await), Some("a"));
    assert!(z.release_leader(None, None).await.unwrap());
    assert_eq!(
        holder(&fresh(&*a).await),
        Some("a"),
        "a release stays in its scope"
    );
    assert!(z.acquire_leader().await.unwrap());
    a.delete_cluster().await.unwrap();
    let v = fresh(&*z).await;
    assert_eq!(holder(&v), Some("z"), "delete_cluster stays in its scope");
    assert!(fresh(&*a).await.config.is_none());
}
