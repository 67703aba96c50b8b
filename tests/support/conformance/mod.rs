//! The contract of the `Dcs` trait, written once and run against every backend: what the HA
//! core (`src/ha`) and the shell (`src/agent`) rely on, whatever the store.
//!
//! A backend provides [`Backend`]: empty clusters of their own and member handles on them. Each
//! check makes its own cluster, so the checks of one backend run concurrently and the runs of
//! different backends can run in parallel. [`run_all`] runs every check and reports each one that
//! failed, not only the first.
//!
//! Include it with `#[path = "support/conformance/mod.rs"] mod conformance;`.
#![allow(dead_code)]

mod lock;
mod views;
mod writes;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use pgwarden::dcs::{ClusterView, Dcs, Failover, HistoryLine, Member, Status, SyncState};

/// One cluster of a backend: its scope and, where the backend has one, the space it lives in
/// (an etcd key namespace, a Kubernetes namespace).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub scope: String,
    pub space: String,
}

/// A store under test.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new, empty cluster named after `tag`.
    async fn cluster(&self, tag: &str) -> Cluster;
    /// Another cluster, `scope`, sharing everything with `of` but its scope (the same etcd key
    /// namespace, the same Kubernetes namespace).
    async fn neighbour(&self, of: &Cluster, scope: &str) -> Cluster;
    /// Member `name` of `c` with lock ttl `ttl`, once it answers `load(false)` from its cache.
    async fn member(&self, c: &Cluster, name: &str, ttl: Duration) -> Arc<dyn Dcs>;
    /// Deletes the leader lock behind every member's back, as an operator or a tool would.
    async fn delete_lock(&self, c: &Cluster);
}

type Check<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Every check, by name.
fn checks(b: &dyn Backend) -> Vec<(&'static str, Check<'_>)> {
    vec![
        (
            "a new cluster is empty",
            Box::pin(views::new_cluster_is_empty(b)),
        ),
        (
            "writes show in fresh and cached views",
            Box::pin(views::writes_show(b)),
        ),
        (
            "changes() moves after another member's writes",
            Box::pin(views::changes_move(b)),
        ),
        (
            "touch_member and delete_member",
            Box::pin(writes::member_keys(b)),
        ),
        (
            "initialize: one claimant, overwrite, cancel",
            Box::pin(writes::initialize(b)),
        ),
        (
            "compare-and-set writes",
            Box::pin(writes::compare_and_set(b)),
        ),
        ("delete_cluster", Box::pin(writes::delete_cluster(b))),
        (
            "failsafe: written by the holder only",
            Box::pin(writes::failsafe(b)),
        ),
        (
            "scopes do not see each other",
            Box::pin(views::scopes_are_separate(b)),
        ),
        ("acquire_leader", Box::pin(lock::acquire(b))),
        ("update_leader", Box::pin(lock::update(b))),
        ("release_leader", Box::pin(lock::release(b))),
        (
            "an unrenewed lock expires after ttl",
            Box::pin(lock::expiry(b)),
        ),
        ("racing members: one winner", Box::pin(lock::race(b))),
    ]
}

/// How long one check may take (the ttl check takes about 15 s; a loaded machine more).
const CHECK_LIMIT: Duration = Duration::from_secs(150);

/// Runs every check against `b` (concurrently: each has its own cluster) and fails with the
/// list of those that failed.
pub async fn run_all(backend: &str, b: &dyn Backend) {
    let runs = checks(b).into_iter().map(|(name, check)| async move {
        let start = Instant::now();
        let r = tokio::time::timeout(CHECK_LIMIT, AssertUnwindSafe(check).catch_unwind()).await;
        let verdict = match r {
            Ok(Ok(())) => None,
            Ok(Err(panic)) => Some(panic_message(&panic)),
            Err(_) => Some(format!("no verdict within {CHECK_LIMIT:?}")),
        };
        let status = if verdict.is_some() { "FAILED" } else { "ok" };
        eprintln!(
            "conformance[{backend}] {status}: {name} ({:?})",
            start.elapsed()
        );
        verdict.map(|v| format!("{name}: {v}"))
    });
    let failed: Vec<String> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        failed.is_empty(),
        "{backend} breaks the Dcs contract:\n  {}",
        failed.join("\n  ")
    );
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".into())
}

/// A system identifier, as `initialize` holds it once bootstrapped.
pub const SYSID: &str = "7711601831702346954";

/// How long a write may take to reach another member's cache.
pub const PROPAGATION: Duration = Duration::from_secs(20);

/// Polls `d.load(false)` until `pred` holds; panics after [`PROPAGATION`].
pub async fn cached(d: &dyn Dcs, what: &str, pred: impl Fn(&ClusterView) -> bool) -> ClusterView {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < PROPAGATION {
        match d.load(false).await {
            Ok(v) if pred(&v) => return v,
            Ok(v) => last = Some(v),
            Err(e) => eprintln!("{what}: load(false): {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not in the cached view within {PROPAGATION:?}; last: {last:?}");
}

/// A fresh read, which must succeed.
pub async fn fresh(d: &dyn Dcs) -> ClusterView {
    d.load(true).await.expect("load(true)")
}

/// The lock holder's name in `v`.
pub fn holder(v: &ClusterView) -> Option<&str> {
    v.leader.as_ref().map(|l| l.name.as_str())
}

/// A member value with the fields the agent writes (none of them a WAL position alone, which
/// the Kubernetes backend may leave unwritten below its threshold).
pub fn member(state: &str, role: &str) -> Member {
    Member {
        conn_url: Some("postgres://127.0.0.1:5432/postgres".into()),
        api_url: Some("http://127.0.0.1:8008/patroni".into()),
        state: Some(state.into()),
        role: Some(role.into()),
        version: Some("3.0.2".into()),
        timeline: Some(1),
        ..Member::default()
    }
}

pub fn status(optime: u64) -> Status {
    Status {
        optime,
        ..Status::default()
    }
}

pub fn failover(leader: &str, candidate: &str) -> Failover {
    Failover {
        leader: Some(leader.into()),
        member: Some(candidate.into()),
        scheduled_at: None,
    }
}

pub fn sync(leader: &str, standby: Option<&str>) -> SyncState {
    SyncState {
        leader: Some(leader.into()),
        sync_standby: standby.map(str::to_owned),
        quorum: None,
    }
}

pub fn history(timelines: u64) -> Vec<HistoryLine> {
    (1..=timelines)
        .map(|t| {
            HistoryLine::new(
                t,
                t * 1000,
                "no recovery target specified",
                "2026-01-01T00:00:00+00:00",
                "a",
            )
        })
        .collect()
}
