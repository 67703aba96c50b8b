//! The etcd v3 backend against a real etcd (one throwaway server per test).

#[path = "support/etcd.rs"]
mod etcd_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use pgwarden::dcs::etcd::{EtcdDcs, EtcdSettings};
use pgwarden::dcs::model::parse_history;
use pgwarden::dcs::{Dcs, DcsError, Failover, Member, Status, SyncState, Version};

use etcd_support::EtcdServer;

const FIXTURES: &[(&str, &str)] = &[
    (
        "01-steady-sync-mode",
        include_str!("fixtures/patroni-3.0.2/01-steady-sync-mode.etcd.json"),
    ),
    (
        "02-scheduled-switchover-pending",
        include_str!("fixtures/patroni-3.0.2/02-scheduled-switchover-pending.etcd.json"),
    ),
    (
        "03-after-switchover",
        include_str!("fixtures/patroni-3.0.2/03-after-switchover.etcd.json"),
    ),
];

fn settings(endpoint: &str, scope: &str, name: &str, ttl: Duration) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![endpoint.to_owned()],
        namespace: "/service".into(),
        scope: scope.into(),
        name: name.into(),
        ttl,
        retry_timeout: Duration::from_secs(3),
        username: None,
        password: None,
    }
}

async fn dcs(server: &EtcdServer, scope: &str, name: &str, ttl: Duration) -> EtcdDcs {
    EtcdDcs::connect(settings(&server.endpoint(), scope, name, ttl))
        .await
        .expect("connect")
}

async fn raw_client(server: &EtcdServer) -> Client {
    Client::connect([server.endpoint()], None)
        .await
        .expect("raw etcd client")
}

/// Every key under `prefix` (relative) → (value, lease).
async fn raw_dump(c: &mut Client, prefix: &str) -> BTreeMap<String, (String, i64)> {
    let r = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("range");
    r.kvs()
        .iter()
        .map(|kv| {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            let k = k.strip_prefix(prefix).unwrap_or(&k).to_owned();
            (
                k,
                (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()),
            )
        })
        .collect()
}

/// A fixture's keys relative to `/service/bars/`.
fn fixture(name: &str) -> BTreeMap<String, String> {
    let raw = FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .expect("fixture");
    let m: BTreeMap<String, String> = serde_json::from_str(raw).expect("fixture JSON");
    m.into_iter()
        .map(|(k, v)| {
            (
                k.strip_prefix("/service/bars/").expect("prefix").to_owned(),
                v,
            )
        })
        .collect()
}

/// Waits until `d` answers `load(false)` from its watch-fed cache.
async fn wait_watching(d: &EtcdDcs) {
    let start = Instant::now();
    while !d.watching() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "watch not established"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a change tick, then for `pred` on the cached view; panics after `within`.
async fn wait_for(
    d: &EtcdDcs,
    within: Duration,
    what: &str,
    pred: impl Fn(&pgwarden::dcs::ClusterView) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut rx = d.changes();
    loop {
        if let Ok(v) = d.load(false).await
            && pred(&v)
        {
            return start.elapsed();
        }
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            panic!("{what}: not observed within {within:?}");
        }
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_renew_release() {
    let Some(server) = EtcdServer::start_or_skip("acquire_renew_release").await else {
        return;
    };
    let ttl = Duration::from_secs(10);
    let a = dcs(&server, "t1", "a", ttl).await;
    let b = dcs(&server, "t1", "b", ttl).await;

    assert!(a.acquire_leader().await.unwrap());
    assert!(!b.acquire_leader().await.unwrap());
    assert!(a.update_leader(None).await.unwrap());
    assert!(
        !b.update_leader(None).await.unwrap(),
        "b must not renew a's lock"
    );
    let v = a.load(true).await.unwrap();
    assert_eq!(v.leader.as_ref().map(|l| l.name.as_str()), Some("a"));
    wait_for(&b, Duration::from_secs(5), "b's cache shows a", |v| {
        v.leader.is_some()
    })
    .await;

    // A new TTL means a new lease; the lock moves to it on the next renewal.
    let mut raw = raw_client(&server).await;
    let before = raw_dump(&mut raw, a.prefix()).await["leader"].1;
    a.set_ttl(Duration::from_secs(12));
    assert!(a.update_leader(None).await.unwrap());
    let after = raw_dump(&mut raw, a.prefix()).await["leader"].clone();
    assert_eq!(after.0, "a");
    assert_ne!(
        after.1, before,
        "leader key must be bound to the re-granted lease"
    );

    assert!(
        !b.release_leader(None, None).await.unwrap(),
        "b cannot release a's lock"
    );
    // A release for another instance of the lock (a late one) deletes nothing.
    let seen = a
        .load(true)
        .await
        .unwrap()
        .leader
        .expect("a holds the lock")
        .version;
    let stale = Version(format!("{}", seen.0.parse::<i64>().unwrap() - 1));
    assert!(!a.release_leader(None, Some(&stale)).await.unwrap());
    assert!(a.release_leader(None, Some(&seen)).await.unwrap());
    assert!(a.load(true).await.unwrap().leader.is_none());
    assert!(b.acquire_leader().await.unwrap());
    assert!(
        !a.update_leader(None).await.unwrap(),
        "a lost the lock to b"
    );
    assert_eq!(b.load(true).await.unwrap().leader.unwrap().name, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_wakes_observers() {
    let Some(server) = EtcdServer::start_or_skip("lease_expiry_wakes_observers").await else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let a = dcs(&server, "t2", "a", ttl).await;
    let b = dcs(&server, "t2", "b", ttl).await;
    a.touch_member(&Member {
        role: Some("master".into()),
        ..Member::default()
    })
    .await
    .unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let frozen_at = Instant::now();
    wait_for(&b, Duration::from_secs(5), "b sees a as leader", |v| {
        v.leader.as_ref().is_some_and(|l| l.name == "a")
    })
    .await;

    // a stops renewing. b is woken by the watch, not by polling.
    let mut rx = b.changes();
    let deadline = ttl + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_sub(frozen_at.elapsed());
        assert!(
            !left.is_zero(),
            "leader key did not expire within ttl + 2 s"
        );
        tokio::time::timeout(left, rx.changed())
            .await
            .expect("no change tick before the deadline")
            .expect("watch sender alive");
        let v = b.load(false).await.unwrap();
        if v.leader.is_none() {
            assert!(
                !v.members.contains_key("a"),
                "a's member key shares its lease"
            );
            eprintln!(
                "lock expiry seen {:?} after a's last renewal",
                frozen_at.elapsed()
            );
            break;
        }
    }
    assert!(b.acquire_leader().await.unwrap());
    // a wakes up: its lease is gone and the lock is b's.
    assert!(!a.update_leader(None).await.unwrap());
    assert_eq!(b.load(true).await.unwrap().leader.unwrap().name, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_writes() {
    let Some(server) = EtcdServer::start_or_skip("compare_and_set_writes").await else {
        return;
    };
    let d = dcs(&server, "t3", "a", Duration::from_secs(10)).await;

    assert!(d.set_config(r#"{"ttl":30}"#, None).await.unwrap());
    let v1 = d.load(true).await.unwrap().config.unwrap().version;
    assert!(d.set_config(r#"{"ttl":31}"#, Some(&v1)).await.unwrap());
    assert!(
        !d.set_config(r#"{"ttl":32}"#, Some(&v1)).await.unwrap(),
        "stale version"
    );
    let view = d.load(true).await.unwrap();
    let c = view.config.unwrap();
    assert_eq!(c.value["ttl"], 31);
    assert!(
        d.set_config(r#"{"ttl":33}"#, Some(&c.version))
            .await
            .unwrap()
    );

    let f = Failover {
        leader: Some("a".into()),
        member: Some("b".into()),
        scheduled_at: None,
    };
    assert!(
        !d.set_failover(&f, Some(&Version("999999".into())))
            .await
            .unwrap(),
        "absent key"
    );
    assert!(d.set_failover(&f, None).await.unwrap());
    let fv = d.load(true).await.unwrap().failover_version.unwrap();
    assert!(
        d.set_failover(&Failover::default(), Some(&fv))
            .await
            .unwrap()
    );
    assert!(
        !d.set_failover(&f, Some(&fv)).await.unwrap(),
        "stale version"
    );
    let view = d.load(true).await.unwrap();
    assert!(view.failover.is_none(), "`{{}}` means no failover");

    let s = SyncState {
        leader: Some("a".into()),
        sync_standby: Some("b".into()),
        quorum: None,
    };
    assert!(d.set_sync(&s, None).await.unwrap());
    let sv = d.load(true).await.unwrap().sync.unwrap().version;
    let s2 = SyncState {
        sync_standby: None,
        ..s.clone()
    };
    assert!(d.set_sync(&s2, Some(&sv)).await.unwrap());
    assert!(!d.set_sync(&s, Some(&sv)).await.unwrap(), "stale version");
    assert_eq!(d.load(true).await.unwrap().sync.unwrap().value, s2);

    let bad = d
        .set_config("{}", Some(&Version("not-a-revision".into())))
        .await;
    assert!(matches!(bad, Err(DcsError::Failed(_))), "{bad:?}");

    d.delete_cluster().await.unwrap();
    let view = d.load(true).await.unwrap();
    assert!(view.config.is_none() && view.sync.is_none() && view.failover_version.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_feeds_changes_and_cache() {
    let Some(server) = EtcdServer::start_or_skip("watch_feeds_changes_and_cache").await else {
        return;
    };
    let a = dcs(&server, "t4", "a", Duration::from_secs(10)).await;
    let b = dcs(&server, "t4", "b", Duration::from_secs(10)).await;
    // Another cluster with a scope sharing the prefix must not leak in.
    let other = dcs(&server, "t4x", "z", Duration::from_secs(10)).await;
    other.set_config(r#"{"other":true}"#, None).await.unwrap();

    wait_watching(&b).await;
    let mut rx = b.changes();
    rx.borrow_and_update();
    a.set_config(r#"{"loop_wait":7}"#, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("changes() ticks after another client's write")
        .unwrap();
    wait_for(
        &b,
        Duration::from_secs(5),
        "b's cache shows the config",
        |v| v.config.as_ref().is_some_and(|c| c.value["loop_wait"] == 7),
    )
    .await;

    a.touch_member(&Member {
        state: Some("running".into()),
        ..Member::default()
    })
    .await
    .unwrap();
    wait_for(
        &b,
        Duration::from_secs(5),
        "b's cache shows member a",
        |v| {
            v.members
                .get("a")
                .is_some_and(|m| m.state.as_deref() == Some("running"))
        },
    )
    .await;
    a.delete_member().await.unwrap();
    wait_for(
        &b,
        Duration::from_secs(5),
        "b's cache drops member a",
        |v| !v.members.contains_key("a"),
    )
    .await;
    let cached = b.load(false).await.unwrap();
    assert_eq!(
        cached,
        b.load(true).await.unwrap(),
        "cache equals a fresh read"
    );
    assert!(!cached.config.unwrap().value.contains_key("other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_fixtures_parse_and_writes_match_bytes() {
    let Some(server) = EtcdServer::start_or_skip("patroni_fixtures").await else {
        return;
    };
    let mut raw = raw_client(&server).await;

    // Patroni's own values, written raw, parse without problems.
    for (i, (name, _)) in FIXTURES.iter().enumerate() {
        let scope = format!("t5r{i}");
        for (k, v) in fixture(name) {
            raw.put(format!("/service/{scope}/{k}"), v, None)
                .await
                .unwrap();
        }
        let d = dcs(&server, &scope, "reader", Duration::from_secs(10)).await;
        let v = d.load(true).await.unwrap();
        assert!(v.problems.is_empty(), "{name}: {:?}", v.problems);
        assert_eq!(v.members.len(), 3, "{name}");
        assert_eq!(v.initialize.as_deref(), Some("7711601831702346954"));
        assert_eq!(v.config.as_ref().unwrap().value["synchronous_mode"], true);
        wait_watching(&d).await;
        assert_eq!(
            d.load(false).await.unwrap(),
            v,
            "{name}: cache and fresh read agree"
        );
        match *name {
            "01-steady-sync-mode" => {
                assert_eq!(v.leader.as_ref().unwrap().name, "m0");
                assert!(v.members["m0"].is_primary_role());
                assert_eq!(v.status.as_ref().unwrap().optime, 67108864);
                assert!(v.failover.is_none() && v.sync.is_none() && v.history.is_none());
            }
            "02-scheduled-switchover-pending" => {
                assert_eq!(v.leader.as_ref().unwrap().name, "m0");
                let f = &v.failover.as_ref().unwrap().value;
                assert_eq!(f.leader.as_deref(), Some("m0"));
                assert_eq!(f.member.as_deref(), Some("m1"));
                assert_eq!(f.scheduled_at.as_deref(), Some("2099-01-01T00:00:00+00:00"));
            }
            _ => {
                assert_eq!(v.leader.as_ref().unwrap().name, "m1");
                assert!(v.failover.is_none() && v.failover_version.is_some());
                let s = &v.sync.as_ref().unwrap().value;
                assert_eq!(s.leader.as_deref(), Some("m1"));
                assert_eq!(s.members(), ["m2"]);
                assert_eq!(v.history.as_ref().unwrap().len(), 1);
                assert_eq!(v.timeline(), 2);
                assert_eq!(v.status.as_ref().unwrap().optime, 67109576);
                assert_eq!(v.members["m1"].pending_restart, Some(true));
            }
        }
    }

    // pgwarden as m0 writes the same keys Patroni did: byte for byte.
    let want = fixture("01-steady-sync-mode");
    let m0 = dcs(&server, "t5w", "m0", Duration::from_secs(10)).await;
    // As the agent does: claim with "" (bound to the session while bootstrapping), then write
    // the system identifier for good.
    assert!(m0.initialize(true, "").await.unwrap());
    assert!(m0.initialize(false, &want["initialize"]).await.unwrap());
    assert!(m0.set_config(&want["config"], None).await.unwrap());
    for name in ["m0", "m1", "m2"] {
        let d = dcs(&server, "t5w", name, Duration::from_secs(10)).await;
        let member = Member::parse(&want[&format!("members/{name}")]).unwrap();
        d.touch_member(&member).await.unwrap();
    }
    assert!(m0.acquire_leader().await.unwrap());
    let status = Status {
        optime: 67108864,
        ..Status::default()
    };
    assert!(m0.update_leader(Some(&status)).await.unwrap());
    let got = raw_dump(&mut raw, m0.prefix()).await;
    let values: BTreeMap<String, String> = got
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert_eq!(values, want);
    for (k, (_, lease)) in &got {
        let bound = k == "leader" || k.starts_with("members/");
        assert_eq!(
            *lease != 0,
            bound,
            "{k}: only leader and members carry the lease"
        );
    }

    let want3 = fixture("03-after-switchover");
    m0.set_history(&parse_history(&want3["history"]).unwrap())
        .await
        .unwrap();
    let sync = SyncState {
        leader: Some("m1".into()),
        sync_standby: Some("m2".into()),
        quorum: None,
    };
    assert!(m0.set_sync(&sync, None).await.unwrap());
    assert!(m0.set_failover(&Failover::default(), None).await.unwrap());
    let got = raw_dump(&mut raw, m0.prefix()).await;
    for k in ["history", "sync", "failover"] {
        assert_eq!(got[k].0, want3[k], "{k}");
    }
    // `failsafe`, as Patroni writes it: compact JSON, a permanent key; the holder's only.
    let topology: BTreeMap<String, String> = [
        ("m1".to_owned(), "http://127.0.0.1:8009/patroni".to_owned()),
        ("m0".to_owned(), "http://127.0.0.1:8008/patroni".to_owned()),
    ]
    .into();
    assert!(m0.set_failsafe(&topology).await.unwrap());
    let m1 = dcs(&server, "t5w", "m1", Duration::from_secs(10)).await;
    assert!(!m1.set_failsafe(&BTreeMap::new()).await.unwrap());
    let got = raw_dump(&mut raw, m0.prefix()).await;
    assert_eq!(
        got["failsafe"],
        (
            r#"{"m0":"http://127.0.0.1:8008/patroni","m1":"http://127.0.0.1:8009/patroni"}"#
                .to_owned(),
            0
        )
    );
    let status3 = Status {
        optime: 67109576,
        ..Status::default()
    };
    assert!(m0.release_leader(Some(&status3), None).await.unwrap());
    let got = raw_dump(&mut raw, m0.prefix()).await;
    assert_eq!(got["status"].0, want3["status"]);
    assert!(!got.contains_key("leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_key_is_rewritten_only_on_change() {
    let Some(server) = EtcdServer::start_or_skip("member_key_rewrites").await else {
        return;
    };
    let d = dcs(&server, "t5m", "a", Duration::from_secs(10)).await;
    let mut raw = raw_client(&server).await;
    let key = format!("{}members/a", d.prefix());
    let rev = |r: etcd_client::GetResponse| r.kvs().first().map(|kv| kv.mod_revision());

    wait_watching(&d).await;
    let m = Member {
        state: Some("running".into()),
        ..Member::default()
    };
    d.touch_member(&m).await.unwrap();
    let r1 = rev(raw.get(key.as_str(), None).await.unwrap()).unwrap();
    wait_for(&d, Duration::from_secs(5), "own member cached", |v| {
        v.members.contains_key("a")
    })
    .await;
    d.touch_member(&m).await.unwrap();
    assert_eq!(
        rev(raw.get(key.as_str(), None).await.unwrap()),
        Some(r1),
        "unchanged: no write"
    );

    let m2 = Member {
        state: Some("stopped".into()),
        ..Member::default()
    };
    d.touch_member(&m2).await.unwrap();
    assert!(rev(raw.get(key.as_str(), None).await.unwrap()).unwrap() > r1);

    // Deleted behind our back: the cache notices, the next touch writes again.
    raw.delete(key.as_str(), None).await.unwrap();
    wait_for(&d, Duration::from_secs(5), "deletion cached", |v| {
        !v.members.contains_key("a")
    })
    .await;
    d.touch_member(&m2).await.unwrap();
    assert!(rev(raw.get(key.as_str(), None).await.unwrap()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_race_has_one_winner() {
    let Some(server) = EtcdServer::start_or_skip("initialize_race").await else {
        return;
    };
    let a = dcs(&server, "t6", "a", Duration::from_secs(10)).await;
    let b = dcs(&server, "t6", "b", Duration::from_secs(10)).await;
    let (ra, rb) = tokio::join!(a.initialize(true, ""), b.initialize(true, ""));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra ^ rb,
        "exactly one create-only initialize wins: {ra} {rb}"
    );
    // Claiming again is how a claimant whose answer was lost finds its claim; others still lose.
    let (owner, other) = if ra { (&a, &b) } else { (&b, &a) };
    assert!(owner.initialize(true, "").await.unwrap());
    assert!(!other.initialize(true, "").await.unwrap());
    assert!(!a.initialize(true, "1").await.unwrap());
    assert!(a.initialize(false, "7711601831702346954").await.unwrap());
    assert_eq!(
        b.load(true).await.unwrap().initialize.as_deref(),
        Some("7711601831702346954")
    );
    b.cancel_initialization().await.unwrap();
    assert!(a.load(true).await.unwrap().initialize.is_none());
    assert!(a.initialize(true, "").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_store_fails_fast() {
    let Some(mut server) = EtcdServer::start_or_skip("unreachable_store_fails_fast").await else {
        return;
    };
    let retry = Duration::from_secs(2);
    let bound = retry + Duration::from_millis(1500);

    // Nothing listens on this port.
    let mut s = settings(
        &format!("127.0.0.1:{}", etcd_support::free_port()),
        "t7",
        "a",
        Duration::from_secs(10),
    );
    s.retry_timeout = retry;
    let dead = EtcdDcs::connect(s.clone()).await.expect("connect is lazy");
    let t = Instant::now();
    let r = dead.load(false).await;
    assert!(matches!(r, Err(DcsError::Unreachable(_))), "{r:?}");
    assert!(t.elapsed() < bound, "took {:?}", t.elapsed());
    let t = Instant::now();
    let r = dead.acquire_leader().await;
    assert!(matches!(r, Err(DcsError::Unreachable(_))), "{r:?}");
    assert!(t.elapsed() < bound, "took {:?}", t.elapsed());

    // A store that goes away under a leader, then comes back.
    s.endpoints = vec![server.endpoint()];
    let a = EtcdDcs::connect(s).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    wait_for(&a, Duration::from_secs(5), "cache warm", |v| {
        v.leader.is_some()
    })
    .await;
    server.stop();
    for _ in 0..2 {
        let t = Instant::now();
        let r = a.update_leader(None).await;
        assert!(matches!(r, Err(DcsError::Unreachable(_))), "{r:?}");
        assert!(t.elapsed() < bound, "took {:?}", t.elapsed());
        let t = Instant::now();
        let r = a.load(false).await;
        assert!(
            matches!(r, Err(DcsError::Unreachable(_))),
            "stale cache served: {r:?}"
        );
        assert!(t.elapsed() < bound, "took {:?}", t.elapsed());
    }
    server.start().await;
    let t = Instant::now();
    loop {
        match a.update_leader(None).await {
            Ok(held) => {
                assert!(held, "the lease outlived a short outage");
                break;
            }
            Err(e) => assert!(t.elapsed() < Duration::from_secs(15), "no recovery: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_watching(&a).await;
    let v = a.load(false).await.unwrap();
    assert_eq!(v.leader.map(|l| l.name).as_deref(), Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_in_the_list_is_skipped() {
    let Some(server) = EtcdServer::start_or_skip("dead_endpoint_in_the_list").await else {
        return;
    };
    let mut s = settings(&server.endpoint(), "t8", "a", Duration::from_secs(10));
    s.endpoints = vec![
        format!("127.0.0.1:{}", etcd_support::free_port()),
        server.endpoint(),
    ];
    let d = EtcdDcs::connect(s).await.unwrap();
    for _ in 0..5 {
        assert!(d.initialize(false, "1").await.unwrap());
        assert_eq!(d.load(true).await.unwrap().initialize.as_deref(), Some("1"));
    }
    assert!(d.acquire_leader().await.unwrap());
    assert!(d.update_leader(None).await.unwrap());
    wait_watching(&d).await;
}
