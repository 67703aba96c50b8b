//! Synchronous replication end to end, on real PostgreSQL 15 and both stores: the leader's
//! `synchronous_standby_names` and the `sync` key as Patroni writes them, strict mode keeping
//! every acknowledged row through a failover after `kill -9` of the primary, and commits
//! waiting, not accepted unreplicated, while no synchronous standby is left.

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster::{Backend, Cluster, ControlPlane, Timings};
use reqwest::Method;
use tokio::task::JoinHandle;

const T: Timings = Timings {
    ttl: 8,
    loop_wait: 1,
    retry_timeout: 3,
};

const LONG: Duration = Duration::from_secs(120);

/// The sync key's (leader, sync_standby, quorum), as the store holds it.
async fn sync_key(c: &Cluster) -> Option<(Option<String>, Option<String>, Option<u64>)> {
    let s = c.view().await?.sync?.value;
    Some((s.leader, s.sync_standby, s.quorum))
}

/// Waits for leader `leader`'s sync key (in `on` mode) to name a standby; its name.
async fn sync_standby_of(c: &Cluster, leader: &str) -> String {
    c.wait_for(
        &format!("a synchronous standby of {leader} in the sync key"),
        LONG,
        || async {
            match sync_key(c).await? {
                (Some(k), Some(s), None) if k == leader => Some(s),
                _ => None,
            }
        },
    )
    .await
}

async fn show_ssn(c: &Cluster, i: usize) -> Option<String> {
    c.sql(i, "SHOW synchronous_standby_names")
        .await
        .ok()?
        .into_iter()
        .next()
}

/// A client inserting unique rows from `from` on the PostgreSQL at `host:port` over one
/// connection, `pause` apart, until `stop` is set or a commit fails or takes over 10 s: the ids
/// whose commit was acknowledged.
fn writer(
    (host, port): (&str, u16),
    from: u64,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<BTreeSet<u64>> {
    let conn = format!(
        "host={host} port={port} user=postgres password=postgres dbname=postgres connect_timeout=3"
    );
    tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        let Ok((client, connection)) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await
        else {
            return acked;
        };
        tokio::spawn(connection);
        for id in from.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let q = format!("INSERT INTO acked VALUES ({id})");
            match tokio::time::timeout(Duration::from_secs(10), client.simple_query(&q)).await {
                Ok(Ok(_)) => {
                    acked.insert(id);
                }
                _ => break,
            }
            tokio::time::sleep(pause).await;
        }
        acked
    })
}

/// A [`writer`] on member `i`, 20 ms apart, ids from `from`, until [`Client::acked`].
struct Client {
    stop: Arc<AtomicBool>,
    task: JoinHandle<BTreeSet<u64>>,
}

fn client_on(c: &Cluster, i: usize, from: u64) -> Client {
    let stop = Arc::new(AtomicBool::new(false));
    let task = writer(
        c.members[i].pg_addr(),
        from,
        Duration::from_millis(20),
        stop.clone(),
    );
    Client { stop, task }
}

impl Client {
    /// Stops the client; the ids whose commit was acknowledged.
    async fn acked(self) -> BTreeSet<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// A [`Client`] on member `i` for `d`.
async fn insert_for(c: &Cluster, i: usize, d: Duration, from: u64) -> BTreeSet<u64> {
    let client = client_on(c, i, from);
    tokio::time::sleep(d).await;
    client.acked().await
}

/// The ids of `acked` that member `i`'s table lacks.
async fn missing_on<'a>(
    c: &Cluster,
    i: usize,
    acked: impl IntoIterator<Item = &'a u64>,
) -> Vec<u64> {
    let held = rows_on(c, i).await;
    acked
        .into_iter()
        .filter(|id| !held.contains(id))
        .copied()
        .collect()
}

async fn rows_on(c: &Cluster, i: usize) -> BTreeSet<u64> {
    c.sql(i, "SELECT id FROM acked")
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Waits for the store to name a leader other than `old`: its name and index.
async fn leader_other_than(c: &Cluster, old: &str, what: &str) -> (String, usize) {
    let name = c
        .wait_for(what, LONG, || async {
            c.leader().await.filter(|n| n != old)
        })
        .await;
    let i = c.index(&name);
    (name, i)
}

/// Waits until member `i` accepts a write.
async fn writes_on(c: &Cluster, i: usize) {
    let name = &c.members[i].name;
    c.wait_for(&format!("writes on {name}"), LONG, || async {
        c.writable(i).await.then_some(())
    })
    .await;
}

/// Whether member `i`'s PostgreSQL answers as a primary now (a refused or hanging connection,
/// or a standby, is not one).
async fn is_primary(c: &Cluster, i: usize) -> bool {
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        c.sql(i, "SELECT NOT pg_is_in_recovery()"),
    )
    .await;
    matches!(r, Ok(Ok(v)) if v.first().map(String::as_str) == Some("t"))
}

/// Waits until member `i` runs as a primary (one that may not take writes: strict mode with
/// no standby left).
async fn primary_on(c: &Cluster, i: usize) {
    let name = &c.members[i].name;
    c.wait_for(&format!("{name} runs as the primary"), LONG, || async {
        is_primary(c, i).await.then_some(())
    })
    .await;
}

/// The leader writable and every replica streaming, a table `acked` made, and the
/// configuration patched with `settings` (JSON members, such as `"synchronous_mode": true`)
/// through the REST API: the leader's index and name.
async fn all_streaming_with(c: &Cluster, settings: &str) -> (usize, String) {
    let l = c.writable_leader(LONG).await;
    for i in (0..c.members.len()).filter(|i| *i != l) {
        let m = c.members[i].name.clone();
        c.wait_for(&format!("{m} streaming"), LONG, || async {
            c.streaming_on(&m, 1).await.then_some(())
        })
        .await;
    }
    c.sql(l, "CREATE TABLE acked (id bigint primary key)")
        .await
        .expect("table");
    let body = format!("{{{settings}}}");
    let (code, body) = c.api(l, Method::PATCH, "/config", Some(&body)).await;
    assert_eq!(code, 200, "{body}");
    (l, c.members[l].name.clone())
}

async fn synchronous_modes(backend: Backend) {
    let Some(mut c) = Cluster::start(backend, "itsync", 3, T).await else {
        return;
    };
    // synchronous_mode on: one standby in synchronous_standby_names, then in the key.
    let (l, leader) = all_streaming_with(&c, r#""synchronous_mode": true"#).await;
    let standby = sync_standby_of(&c, &leader).await;
    assert!(
        ["m0", "m1", "m2"].contains(&standby.as_str()) && standby != leader,
        "{standby}"
    );
    assert_eq!(show_ssn(&c, l).await.as_deref(), Some(standby.as_str()));
    let s = c.index(&standby);
    let state = c
        .sql(
            l,
            "SELECT application_name || ':' || sync_state FROM pg_stat_replication ORDER BY 1",
        )
        .await
        .unwrap();
    assert!(state.contains(&format!("{standby}:sync")), "{state:?}");
    let (code, body) = c.api(l, Method::GET, "/cluster", None).await;
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!(
            "\"name\": \"{standby}\", \"role\": \"sync_standby\""
        )),
        "{body}"
    );
    // Members learn of the key at their next cycle.
    c.wait_for("/sync 200 on the synchronous standby", LONG, || async {
        (c.api(s, Method::GET, "/sync", None).await.0 == 200).then_some(())
    })
    .await;
    let other = (0..3).find(|i| *i != l && *i != s).unwrap();
    let (code, _) = c.api(other, Method::GET, "/sync", None).await;
    assert_eq!(code, 503);

    // Strict: the primary killed with -9 while a client writes; only the synchronous standby
    // may take over, and it has every acknowledged row.
    let (code, body) = c
        .api(
            l,
            Method::PATCH,
            "/config",
            Some(r#"{"synchronous_mode_strict": true}"#),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let acked = insert_for(&c, l, Duration::from_secs(3), 1).await;
    assert!(acked.len() > 20, "only {} rows acknowledged", acked.len());
    let writer_task = writer(
        c.members[l].pg_addr(),
        100_000,
        Duration::ZERO,
        Arc::new(AtomicBool::new(false)),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill9(l);
    let during = writer_task.await.unwrap();
    let (new_leader, _) = leader_other_than(&c, &leader, "a new leader").await;
    assert_eq!(
        new_leader, standby,
        "only the synchronous standby may take over"
    );
    writes_on(&c, s).await;
    let lost = missing_on(&c, s, acked.union(&during)).await;
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on the new primary: {lost:?}"
    );

    // Strict with no synchronous standby left: a commit waits, and goes through once a standby
    // is back.
    c.wait_for("the other replica listed", LONG, || async {
        let name = c.members[other].name.clone();
        (show_ssn(&c, s).await.as_deref() == Some(name.as_str())).then_some(())
    })
    .await;
    c.kill9(other);
    let placeholder = pgwarden::postgres::sync_names::STRICT_PLACEHOLDER;
    c.wait_for("the strict placeholder", LONG, || async {
        (show_ssn(&c, s).await.as_deref() == Some(placeholder)).then_some(())
    })
    .await;
    let blocked = {
        let port = c.members[s].pg_port;
        tokio::spawn(async move {
            let conn = format!(
                "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres"
            );
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            client
                .simple_query("INSERT INTO acked VALUES (999999999)")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !blocked.is_finished(),
        "a commit was acknowledged with no synchronous standby in strict mode"
    );
    c.spawn(other);
    let r = tokio::time::timeout(LONG, blocked).await;
    assert!(
        matches!(r, Ok(Ok(Ok(_)))),
        "the waiting commit goes through once a standby is back: {r:?}"
    );
    // The old primary rejoins as a replica.
    c.spawn(l);
    c.wait_for(&format!("{leader} streaming"), LONG, || async {
        c.streaming(&leader).await.then_some(())
    })
    .await;

    // SIGTERM, a rolling restart's: the synchronous standby leaves the key before it stops,
    // then the leader hands over to the other one; a client writing throughout loses nothing
    // it was told was committed.
    let sync_now = sync_standby_of(&c, &standby).await;
    let x = c.index(&sync_now);
    let y = (0..3).find(|i| *i != s && *i != x).unwrap();
    let writer_task = client_on(&c, s, 200_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::block_in_place(|| c.terminate(x));
    assert!(
        status.is_some_and(|s| s.success()),
        "{sync_now} exits cleanly: {status:?}"
    );
    let y_name = c.members[y].name.clone();
    c.wait_for(
        "the other replica becomes the synchronous standby",
        LONG,
        || async {
            match sync_key(&c).await? {
                (Some(k), Some(s), None) if k == standby && s == y_name => Some(()),
                _ => None,
            }
        },
    )
    .await;
    let during_standby_stop = writer_task.acked().await;
    assert!(
        during_standby_stop.len() > 10,
        "writes went on while the synchronous standby stopped: {}",
        during_standby_stop.len()
    );
    let status = tokio::task::block_in_place(|| c.terminate(s));
    assert!(
        status.is_some_and(|s| s.success()),
        "{standby} exits cleanly: {status:?}"
    );
    let (after, _) = leader_other_than(&c, &standby, "a leader after the leader's SIGTERM").await;
    assert_eq!(after, y_name, "the synchronous standby takes over");
    // Alone, in strict mode, it takes no write; reads show what it holds.
    primary_on(&c, y).await;
    let lost = missing_on(&c, y, &during_standby_stop).await;
    assert!(
        lost.is_empty(),
        "acknowledged rows missing after the hand-over: {lost:?}"
    );
}

/// Waits for leader `l`'s `sync` key to name every other member as a voter with `quorum`,
/// then for its `synchronous_standby_names` to be `ANY quorum (...)`, as Patroni writes it.
async fn quorum_settled(c: &Cluster, l: usize, quorum: u64) {
    let leader = c.members[l].name.clone();
    let names: Vec<String> = (0..c.members.len())
        .filter(|i| *i != l)
        .map(|i| c.members[i].name.clone())
        .collect();
    let voters = names.join(",");
    c.wait_for(
        &format!("{leader}'s quorum in the sync key"),
        LONG,
        || async {
            match sync_key(c).await? {
                (Some(k), Some(s), Some(q)) if k == leader && s == voters && q == quorum => {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
    // The key takes its quorum while the wider list a new standby joins through is still in
    // force; the list narrows at the leader's next step.
    let want = format!("ANY {quorum} ({voters})");
    c.wait_for(
        &format!("{leader}'s list narrowed to {want}"),
        LONG,
        || async { (show_ssn(c, l).await.as_deref() == Some(want.as_str())).then_some(()) },
    )
    .await;
    assert_eq!(
        show_ssn(c, l).await,
        Some(want),
        "synchronous_standby_names as Patroni writes it"
    );
}

/// Quorum commit with three members: every standby listed, any one acknowledging; with the
/// leader and one standby down nobody takes over (the acknowledgement may be on the missing
/// one), and once it is back the most advanced of the two does, holding every acknowledged row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_on_etcd() {
    let Some(mut c) = Cluster::start(Backend::Etcd, "itquorum", 3, T).await else {
        return;
    };
    let (l, leader) = all_streaming_with(&c, r#""synchronous_mode": "quorum""#).await;
    let standbys: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    quorum_settled(&c, l, 1).await;
    let (code, body) = c.api(l, Method::GET, "/cluster", None).await;
    assert_eq!(code, 200);
    assert!(body.contains("quorum_standby"), "{body}");
    c.wait_for("/quorum 200 on a standby", LONG, || async {
        (c.api(standbys[0], Method::GET, "/quorum", None).await.0 == 200).then_some(())
    })
    .await;
    let (code, _) = c.api(standbys[0], Method::GET, "/sync", None).await;
    assert_eq!(code, 503);

    let acked = insert_for(&c, l, Duration::from_secs(2), 1).await;
    assert!(acked.len() > 10, "only {} rows acknowledged", acked.len());
    let (a, b) = (standbys[0], standbys[1]);
    c.kill9(l);
    c.kill9(a);
    // Three ttls: b alone may not decide it holds every acknowledged commit.
    tokio::time::sleep(Duration::from_secs(3 * T.ttl)).await;
    assert_eq!(
        c.leader().await,
        None,
        "nobody takes over with one voter of two"
    );
    c.spawn(a);
    let (new_leader, n) = leader_other_than(&c, &leader, "a leader once both voters answer").await;
    assert!(n == a || n == b, "{new_leader}");
    primary_on(&c, n).await;
    let lost = missing_on(&c, n, &acked).await;
    assert!(lost.is_empty(), "acknowledged rows missing: {lost:?}");
}

/// Quorum commit with five members and `synchronous_node_count: 2`: `ANY 2` of the four
/// standbys acknowledge each commit, so any three of them hold it. With the leader and one
/// standby gone the three left take over at once; with a second standby gone too, nobody does
/// until one of them is back. No acknowledged row is lost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_with_five_members_on_etcd() {
    let Some(mut c) = Cluster::start(Backend::Etcd, "itquorum5", 5, T).await else {
        return;
    };
    let settings = r#""synchronous_mode": "quorum", "synchronous_node_count": 2"#;
    let (l, leader) = all_streaming_with(&c, settings).await;
    let standbys: Vec<usize> = (0..5).filter(|i| *i != l).collect();
    quorum_settled(&c, l, 2).await;

    // The leader and one standby die: three voters of four answer, enough to decide.
    let acked = insert_for(&c, l, Duration::from_secs(2), 1).await;
    assert!(acked.len() > 10, "only {} rows acknowledged", acked.len());
    c.kill9(l);
    c.kill9(standbys[0]);
    let (second, n) = leader_other_than(&c, &leader, "a leader among the three left").await;
    assert!(standbys[1..].contains(&n), "{second}");
    writes_on(&c, n).await;
    let lost = missing_on(&c, n, &acked).await;
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on {second}: {lost:?}"
    );

    // Back to five, the new leader's quorum settled over the four others.
    c.spawn(l);
    c.spawn(standbys[0]);
    quorum_settled(&c, n, 2).await;

    // Now the leader and two standbys die: two voters of four cannot rule out that a commit
    // was acknowledged by the two that are gone.
    let acked = insert_for(&c, n, Duration::from_secs(2), 100_000).await;
    assert!(acked.len() > 10, "only {} rows acknowledged", acked.len());
    let rest: Vec<usize> = (0..5).filter(|i| *i != n).collect();
    c.kill9(n);
    c.kill9(rest[0]);
    c.kill9(rest[1]);
    tokio::time::sleep(Duration::from_secs(3 * T.ttl)).await;
    assert_eq!(
        c.leader().await,
        None,
        "nobody takes over with two voters of four"
    );
    c.spawn(rest[0]);
    let (third, t) = leader_other_than(&c, &second, "a leader once three voters answer").await;
    assert!([rest[0], rest[2], rest[3]].contains(&t), "{third}");
    writes_on(&c, t).await;
    let lost = missing_on(&c, t, &acked).await;
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on {third}: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_modes_on_etcd() {
    synchronous_modes(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_modes_on_kubernetes() {
    synchronous_modes(Backend::Kubernetes(ControlPlane::Shared)).await;
}

/// Strict mode, the primary cut off from the network (its namespace drops every packet but its
/// client's) while the client writes: its commits wait for a standby that no longer answers,
/// so none is acknowledged after the cut; it stops being a primary before the synchronous
/// standby takes over, which holds every acknowledged row; healed, it rejoins as a replica.
/// Then a switchover under writes loses nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_keeps_every_row_when_the_primary_is_cut_off_on_etcd() {
    let Some(c) = Cluster::start_partitionable("itcut", 3, T).await else {
        return;
    };
    let settings = r#""synchronous_mode": true, "synchronous_mode_strict": true"#;
    let (l, leader) = all_streaming_with(&c, settings).await;
    let standby = sync_standby_of(&c, &leader).await;
    let s = c.index(&standby);
    let net = c.net.as_ref().expect("namespaces");
    let client = client_on(&c, l, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.isolate(l, Some(c.members[l].pg_port));
    let cut = std::time::Instant::now();

    // Until the standby writes: never both primaries at once.
    let old_stopped = std::sync::OnceLock::new();
    c.wait_for("the synchronous standby writable", LONG, || async {
        let (old, new) = tokio::join!(is_primary(&c, l), is_primary(&c, s));
        assert!(!(old && new), "two primaries: {leader} and {standby}");
        if !old {
            old_stopped.get_or_init(|| cut.elapsed());
        }
        (new && c.writable(s).await).then_some(())
    })
    .await;
    let Some(old_stopped) = old_stopped.get() else {
        panic!("{leader} still a primary when {standby} took over");
    };
    eprintln!(
        "{leader} cut off: no longer a primary {old_stopped:?} later, {standby} writable {:?} later",
        cut.elapsed()
    );
    assert_eq!(
        c.leader().await.as_deref(),
        Some(standby.as_str()),
        "only the synchronous standby may take over"
    );
    let acked = client.acked().await;
    assert!(acked.len() > 20, "only {} rows acknowledged", acked.len());
    let lost = missing_on(&c, s, &acked).await;
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on the new primary: {lost:?}"
    );

    net.heal(l);
    c.wait_for(&format!("{leader} back as a replica"), LONG, || async {
        c.streaming(&leader).await.then_some(())
    })
    .await;
    let lost = missing_on(&c, l, &acked).await;
    assert!(
        lost.is_empty(),
        "rows missing on {leader} after it rejoined: {lost:?}"
    );

    // Then a switchover through REST while the client writes: the synchronous standby takes
    // over, holding every row acknowledged until the old primary stopped.
    let sync_now = sync_standby_of(&c, &standby).await;
    let client = client_on(&c, s, 1_000_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let body = format!(r#"{{"leader": "{standby}"}}"#);
    let (code, text) = c.api(s, Method::POST, "/switchover", Some(&body)).await;
    assert_eq!(code, 200, "{text}");
    let (after, n) = leader_other_than(&c, &standby, "a leader after the switchover").await;
    assert_eq!(
        after, sync_now,
        "only the synchronous standby may take over"
    );
    writes_on(&c, n).await;
    let acked = client.acked().await;
    assert!(acked.len() > 10, "only {} rows acknowledged", acked.len());
    let lost = missing_on(&c, n, &acked).await;
    assert!(
        lost.is_empty(),
        "acknowledged rows missing after the switchover: {lost:?}"
    );
}

/// Strict mode from the first boot (`synchronous_mode_strict` in `bootstrap.dcs`): the fresh
/// primary's own setup (roles, passwords) must not wait for a standby that can only clone once
/// it is done. Found by the fault suite: the setup timed out after 60 s, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_from_bootstrap_on_etcd() {
    let Some(mut c) = Cluster::prepare(Backend::Etcd, "itstrictboot", 3, T).await else {
        return;
    };
    c.add_bootstrap_dcs("    synchronous_mode: true\n    synchronous_mode_strict: true\n");
    c.spawn_all();
    let l = c.writable_leader(LONG).await;
    let leader = c.members[l].name.clone();
    let standby = sync_standby_of(&c, &leader).await;
    let s = c.index(&standby);
    c.sql(
        l,
        "CREATE TABLE acked (id bigint primary key); INSERT INTO acked VALUES (1)",
    )
    .await
    .expect("a write acknowledged by the synchronous standby");
    assert_eq!(rows_on(&c, s).await, BTreeSet::from([1]));
    let log = std::fs::read_to_string(c.log_path(l)).unwrap();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("post-bootstrap") && (l.contains("ERROR") || l.contains("WARN")))
        .collect();
    assert!(
        failed.is_empty(),
        "the setup of the fresh primary failed: {failed:?}"
    );
}
