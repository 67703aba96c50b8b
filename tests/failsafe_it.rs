//! Failsafe mode (Patroni's `failsafe_mode`) end to end, on real PostgreSQL 15 and both stores
//! (a real etcd, a real kube-apiserver): the `failsafe` key the leader publishes, a primary
//! kept up through a store outage because every member confirms it over REST, and one that
//! stops at its own deadline when a member cannot be reached.
//!
//! Every member's REST API is reached by its peers through a cuttable TCP proxy (the
//! `api_url` they publish is the proxy's); the test itself talks to each API directly. On
//! Kubernetes the store outage is the API server SIGSTOPped, which needs a control plane of
//! the cluster's own (pausing the shared one would stop every other test).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::{Backend, Cluster, ControlPlane, Store, Timings};
use proxy::Proxy;
use reqwest::Method;
use tokio::task::JoinHandle;

const T: Timings = Timings {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 3,
};

const LONG: Duration = Duration::from_secs(120);

fn ttl() -> Duration {
    Duration::from_secs(T.ttl)
}

/// Three members with `failsafe_mode: true` in their bootstrap dcs, each behind a REST proxy
/// (`proxies[i]` carries what peers send to member `i`); `None` (skip) when a component is
/// missing outside CI.
async fn failsafe_cluster(backend: Backend, scope: &str) -> Option<(Cluster, Vec<Proxy>)> {
    let mut c = Cluster::prepare(backend, scope, 3, T).await?;
    let mut proxies = Vec::new();
    for m in &c.members {
        let p = Proxy::start(([127, 0, 0, 1], m.api_port).into()).await;
        let yaml = std::fs::read_to_string(&m.config).expect("config");
        let retry = format!("    retry_timeout: {}\n", T.retry_timeout);
        let yaml = yaml
            .replace(&retry, &format!("{retry}    failsafe_mode: true\n"))
            .replace(
                &format!("connect_address: 127.0.0.1:{}", m.api_port),
                &format!("connect_address: 127.0.0.1:{}", p.port),
            );
        assert!(
            yaml.contains("failsafe_mode: true") && yaml.contains(&format!(":{}", p.port)),
            "{yaml}"
        );
        std::fs::write(&m.config, yaml).expect("write config");
        proxies.push(p);
    }
    c.spawn_all();
    Some((c, proxies))
}

/// The `api_url` member `i` publishes: its proxy's.
fn api_url(p: &Proxy) -> String {
    format!("http://127.0.0.1:{}/patroni", p.port)
}

/// What the `failsafe` key must hold: every member with its `api_url`.
fn expected_key(c: &Cluster, proxies: &[Proxy]) -> BTreeMap<String, String> {
    c.members
        .iter()
        .zip(proxies)
        .map(|(m, p)| (m.name.clone(), api_url(p)))
        .collect()
}

/// The raw `failsafe` value in the store itself: etcd's `<ns>/<scope>/failsafe` key, or the
/// Lease's `failsafe` annotation.
async fn failsafe_in_store(c: &Cluster) -> Option<BTreeMap<String, String>> {
    let raw = match &c.store {
        Store::Etcd(e) => {
            e.raw_value(&format!("/service/{}/failsafe", c.scope))
                .await?
        }
        Store::Kubernetes(k) => k
            .lease()
            .await?
            .metadata
            .annotations?
            .get("failsafe")?
            .clone(),
    };
    serde_json::from_str(&raw).ok()
}

/// The store stops answering: etcd killed, or the API server SIGSTOPped.
fn store_down(c: &mut Cluster) {
    match &mut c.store {
        Store::Etcd(e) => e.stop(),
        Store::Kubernetes(k) => k.own_control_plane().pause(),
    }
}

async fn store_up(c: &mut Cluster) {
    match &mut c.store {
        Store::Etcd(e) => e.start().await,
        Store::Kubernetes(k) => k.own_control_plane().resume(),
    }
}

/// The leader lock is held by `name`: the store's leader (and on Kubernetes the Lease's
/// holder) names it.
async fn lock_held_by(c: &Cluster, name: &str) -> bool {
    if c.leader().await.as_deref() != Some(name) {
        return false;
    }
    match &c.store {
        Store::Etcd(_) => true,
        Store::Kubernetes(k) => k.lease_state().await.and_then(|(h, _)| h).as_deref() == Some(name),
    }
}

/// `GET /patroni` of member `i` says failsafe mode keeps it up.
async fn failsafe_active(c: &Cluster, i: usize) -> bool {
    let (code, body) = c.api(i, Method::GET, "/patroni", None).await;
    code == 200
        && serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|v| v["failsafe_mode_is_active"] == serde_json::Value::Bool(true))
}

/// Whether the PostgreSQL of member `i` accepts a write right now (bounded by 2 s: a write
/// that does not finish in time counts as refused).
async fn accepts_write(c: &Cluster, i: usize) -> bool {
    let w = c.sql(i, "INSERT INTO probe VALUES (1)");
    matches!(
        tokio::time::timeout(Duration::from_secs(2), w).await,
        Ok(Ok(_))
    )
}

/// The leader writable, both replicas streaming, the `probe` table made: the leader's index.
async fn healthy_with_probe(c: &Cluster) -> usize {
    let (l, _) = c.healthy(LONG).await;
    c.wait_for("the probe table", LONG, || async {
        c.sql(l, "CREATE TABLE IF NOT EXISTS probe (x int)")
            .await
            .ok()
    })
    .await;
    l
}

/// What a client saw: when each insert was acknowledged, and each failure.
#[derive(Default)]
struct Writes {
    acked: Vec<Instant>,
    failed: Vec<(Instant, String)>,
}

/// A client inserting into `probe` on the PostgreSQL at `port` every 50 ms until `stop`, over
/// one connection (re-made after a failure), each insert bounded by 2 s.
fn keep_writing(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<Writes> {
    tokio::spawn(async move {
        let conn = format!(
            "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres connect_timeout=2"
        );
        let mut w = Writes::default();
        let mut client = None;
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
                    Ok((cl, connection)) => {
                        tokio::spawn(connection);
                        client = Some(cl);
                    }
                    Err(e) => w.failed.push((Instant::now(), e.to_string())),
                }
            }
            if let Some(cl) = &client {
                let q = cl.simple_query("INSERT INTO probe VALUES (2)");
                match tokio::time::timeout(Duration::from_secs(2), q).await {
                    Ok(Ok(_)) => w.acked.push(Instant::now()),
                    Ok(Err(e)) => {
                        w.failed.push((Instant::now(), e.to_string()));
                        client = None;
                    }
                    Err(_) => {
                        w.failed.push((Instant::now(), "timed out".into()));
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w
    })
}

/// The longest time within `[from, to]` without an acknowledged write.
fn longest_gap(acked: &[Instant], from: Instant, to: Instant) -> Duration {
    let inside = acked.iter().copied().filter(|t| *t > from && *t < to);
    let mut points: Vec<Instant> = std::iter::once(from)
        .chain(inside)
        .chain(std::iter::once(to))
        .collect();
    points.sort();
    points
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// The indexes of the members whose PostgreSQL accepts a write now.
async fn writers(c: &Cluster) -> Vec<usize> {
    let mut w = Vec::new();
    for i in 0..c.members.len() {
        if accepts_write(c, i).await {
            w.push(i);
        }
    }
    w
}

/// Healed: exactly one member writable, holding the lock, and the others streaming from it.
async fn one_leader_again(c: &Cluster) -> String {
    let leader = c
        .wait_for("one writable member holding the lock", LONG, || async {
            let w = writers(c).await;
            let [only] = w[..] else { return None };
            let name = c.members[only].name.clone();
            lock_held_by(c, &name).await.then_some(name)
        })
        .await;
    let (l, _) = c.healthy(LONG).await;
    assert_eq!(
        c.members[l].name, leader,
        "the leader changed while healing"
    );
    leader
}

// 1. The key: once the cluster is healthy, the leader has published every member's api_url.

async fn failsafe_key_is_published(backend: Backend) {
    let Some((c, proxies)) = failsafe_cluster(backend, "fskey").await else {
        return;
    };
    let l = healthy_with_probe(&c).await;
    let want = expected_key(&c, &proxies);
    // The members' own keys carry the same api_url (they are where the leader takes it from).
    let view = c.view().await.expect("view");
    for (name, url) in &want {
        assert_eq!(view.members[name].api_url.as_ref(), Some(url), "{name}");
    }
    c.wait_for("the failsafe key in the store", LONG, || async {
        (failsafe_in_store(&c).await.as_ref() == Some(&want)).then_some(())
    })
    .await;
    assert_eq!(c.view().await.expect("view").failsafe.as_ref(), Some(&want));
    // Every member serves it, the leader and the replicas alike.
    for i in (0..3).cycle().skip(l).take(3) {
        let got = c
            .wait_for(&format!("GET /failsafe on m{i}"), LONG, || async {
                let (code, body) = c.api(i, Method::GET, "/failsafe", None).await;
                let got: BTreeMap<String, String> = serde_json::from_str(&body).ok()?;
                (code == 200 && got == want).then_some(got)
            })
            .await;
        eprintln!("GET /failsafe on m{i}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_key_is_published_on_etcd() {
    failsafe_key_is_published(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_key_is_published_on_kubernetes() {
    failsafe_key_is_published(Backend::Kubernetes(ControlPlane::Shared)).await;
}

/// A healthy failsafe cluster whose leader has published the key: the cluster, its proxies,
/// the leader's index and name.
async fn published(backend: Backend, scope: &str) -> Option<(Cluster, Vec<Proxy>, usize, String)> {
    let (c, proxies) = failsafe_cluster(backend, scope).await?;
    let l = healthy_with_probe(&c).await;
    let leader = c.members[l].name.clone();
    let want = expected_key(&c, &proxies);
    c.wait_for("the failsafe key", LONG, || async {
        (c.view().await?.failsafe? == want).then_some(())
    })
    .await;
    Some((c, proxies, l, leader))
}

// 2. The store down for 3 × ttl, every member reachable: the primary keeps taking writes.

async fn primary_survives_a_store_outage(backend: Backend) {
    let Some((mut c, _proxies, l, leader)) = published(backend, "fsup").await else {
        return;
    };

    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_writing(c.members[l].pg_port, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down = Instant::now();
    store_down(&mut c);
    // Failsafe mode must be on well before the lease deadline (ttl - margin after the last
    // renewal), and stay on; nobody else may take writes meanwhile.
    let mut active_since = None;
    let mut second_writers = Vec::new();
    while down.elapsed() < 3 * ttl() {
        let active = failsafe_active(&c, l).await;
        match (active, active_since) {
            (true, None) => active_since = Some(down.elapsed()),
            (false, Some(since)) => {
                c.dump_logs();
                panic!(
                    "failsafe mode active from {since:?}, off again {:?} into the outage",
                    down.elapsed()
                );
            }
            _ => {}
        }
        for i in (0..3).filter(|i| *i != l) {
            if accepts_write(&c, i).await {
                second_writers.push((i, down.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up = Instant::now();
    store_up(&mut c).await;
    // Keep writing through the store's return and the lock's renewal.
    c.wait_for(
        &format!("{leader} holding the lock again"),
        LONG,
        || async { lock_held_by(&c, &leader).await.then_some(()) },
    )
    .await;
    let renewed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let w = client.await.expect("writer");

    let gap = longest_gap(&w.acked, down, renewed);
    let during = w.acked.iter().filter(|t| **t > down && **t < up).count();
    eprintln!(
        "outage {:?}: failsafe active {active_since:?} into it; {during} writes acknowledged \
         during it, longest gap {gap:?}, {} failures; lock held again {:?} after the store \
         returned",
        up - down,
        w.failed.len(),
        renewed - up
    );
    if !w.failed.is_empty() || gap > ttl() / 2 || !second_writers.is_empty() {
        for (t, e) in &w.failed {
            eprintln!(
                "write failed {:?} after the store went down: {e}",
                *t - down
            );
        }
        c.dump_logs();
    }
    assert!(
        second_writers.is_empty(),
        "second writers: {second_writers:?}"
    );
    let active_since = active_since.expect("GET /patroni never showed failsafe_mode_is_active");
    assert!(
        active_since < ttl(),
        "failsafe mode active only {active_since:?} into the outage"
    );
    assert!(
        w.failed.is_empty(),
        "writes failed on the primary: {:?}",
        w.failed
    );
    assert!(gap <= ttl() / 2, "no write acknowledged for {gap:?}");
    let log = std::fs::read_to_string(c.log_path(l)).unwrap_or_default();
    assert!(
        log.contains("failsafe mode is enabled and all members are accessible"),
        "the leader's log does not say why it kept running"
    );

    // Healthy again, on the same leader, and out of failsafe mode.
    let (l2, _) = c.healthy(LONG).await;
    assert_eq!(c.members[l2].name, leader, "the leader changed");
    c.wait_for("failsafe mode off", LONG, || async {
        (!failsafe_active(&c, l).await).then_some(())
    })
    .await;
    assert_eq!(
        writers(&c).await,
        vec![l],
        "exactly the leader takes writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_survives_a_store_outage_on_etcd() {
    primary_survives_a_store_outage(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_survives_a_store_outage_on_kubernetes() {
    primary_survives_a_store_outage(Backend::Kubernetes(ControlPlane::Own)).await;
}

// 3. The store down and one replica's REST API cut off from the leader: the replica cannot
// confirm, so the primary stops at its normal lease deadline.

async fn primary_stops_when_a_member_cannot_confirm(backend: Backend) {
    let Some((mut c, proxies, l, leader)) = published(backend, "fscut").await else {
        return;
    };
    let r = (l + 1) % 3;
    assert!(accepts_write(&c, l).await);

    proxies[r].cut();
    let down = Instant::now();
    store_down(&mut c);
    // The lease deadline is ttl - margin after the last renewal, itself before the outage.
    let mut stopped_at = None;
    let mut violations = Vec::new();
    while down.elapsed() < 2 * ttl() + Duration::from_secs(5) {
        let round = down.elapsed();
        let w = writers(&c).await;
        if w.contains(&l) {
            if let Some(at) = stopped_at {
                violations.push(format!(
                    "{leader} writable again at {round:?} (stopped {at:?})"
                ));
            }
        } else if stopped_at.is_none() {
            stopped_at = Some(round);
        }
        if let Some(o) = w.iter().find(|i| **i != l) {
            violations.push(format!("m{o} writable at {round:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let active = failsafe_active(&c, l).await;
    eprintln!("store down and m{r} cut off: {leader} refused writes {stopped_at:?} into it");
    if !violations.is_empty() || stopped_at.is_none_or(|s| s > ttl() + Duration::from_secs(3)) {
        c.dump_logs();
    }
    assert!(violations.is_empty(), "{violations:?}");
    let stopped_at = stopped_at.expect("the primary never stopped taking writes");
    assert!(
        stopped_at <= ttl() + Duration::from_secs(3),
        "the primary took writes {stopped_at:?} into the outage (ttl {:?})",
        ttl()
    );
    assert!(!active, "failsafe mode active with a member unreachable");
    // It stopped because failsafe mode asked and the cut member did not confirm, not for
    // some other reason.
    let cut_name = &c.members[r].name;
    let log = std::fs::read_to_string(c.log_path(l)).unwrap_or_default();
    assert!(
        log.contains(&format!("failsafe mode could not reach {cut_name}")),
        "the leader's log never says it could not reach {cut_name}"
    );

    // Healed: one leader again, whoever it is.
    proxies[r].heal();
    store_up(&mut c).await;
    let now_leader = one_leader_again(&c).await;
    eprintln!("healed: {now_leader} leads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_stops_when_a_member_cannot_confirm_on_etcd() {
    primary_stops_when_a_member_cannot_confirm(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_stops_when_a_member_cannot_confirm_on_kubernetes() {
    primary_stops_when_a_member_cannot_confirm(Backend::Kubernetes(ControlPlane::Own)).await;
}
