//! The etcd v3 backend, with Patroni's key layout and semantics (patroni-compat §3.1, §3.2).
//!
//! Keys live under `/<namespace>/<scope>/`. The process holds one lease with TTL = `ttl`;
//! `leader` and `members/<name>` are bound to it, every other key is permanent. Reads come from a
//! watch-fed cache ([`cache`]); writes go straight to the store, each call bounded by
//! `retry_timeout`.

mod cache;
mod errors;
mod keys;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::cache::Shared;
use self::errors::{bounded, classify, lease_gone};
use crate::dcs::model::history_to_json;
use crate::dcs::{
    ClusterView, Dcs, DcsError, Failover, HistoryLine, Member, Status, SyncState, Version,
};

/// How to reach etcd and which cluster to serve.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// `http://127.0.0.1:2379` or `127.0.0.1:2379`; several for a multi-node etcd.
    pub endpoints: Vec<String>,
    /// Key namespace, Patroni's default `/service`; slashes are normalised.
    pub namespace: String,
    /// The cluster's name.
    pub scope: String,
    /// This member's name.
    pub name: String,
    /// Lifetime of the lease that carries `leader` and `members/<name>`.
    pub ttl: Duration,
    /// Bound on every store call.
    pub retry_timeout: Duration,
    /// etcd user, when authentication is on.
    pub username: Option<String>,
    /// etcd password.
    pub password: Option<String>,
}

/// What this process knows about its own lease and its last writes.
#[derive(Debug, Default)]
struct LeaseState {
    /// The lease id, while believed alive.
    id: Option<i64>,
    /// The TTL (seconds) it was granted with.
    granted_ttl: i64,
    /// Send time of the last keepalive (or grant) that succeeded.
    refreshed_at: Option<Instant>,
    /// The member value last written, and the lease it was bound to.
    last_member: Option<(String, i64)>,
    /// The status value last written.
    last_status: Option<String>,
}

/// The etcd v3 [`Dcs`].
pub struct EtcdDcs {
    client: Client,
    prefix: String,
    name: String,
    retry_timeout: Duration,
    several_endpoints: bool,
    ttl: Mutex<Duration>,
    lease: tokio::sync::Mutex<LeaseState>,
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

impl Drop for EtcdDcs {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl EtcdDcs {
    /// Connects (lazily, unless authentication needs a round trip) and starts the watch task.
    pub async fn connect(s: EtcdSettings) -> Result<EtcdDcs, DcsError> {
        let endpoints = keys::normalize_endpoints(&s.endpoints)?;
        if s.scope.trim_matches('/').is_empty() || s.name.is_empty() {
            return Err(DcsError::Failed(
                "etcd: scope and name must not be empty".into(),
            ));
        }
        let retry_timeout = if s.retry_timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            s.retry_timeout
        };
        // HTTP/2 pings find a dead peer under a long-lived watch. etcd refuses pings more often
        // than every 5 s (`--grpc-keepalive-min-time`), hence 10 s.
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(retry_timeout)
            .with_keep_alive(Duration::from_secs(10), retry_timeout);
        if let Some(user) = &s.username {
            opts = opts
                .with_user(user.clone(), s.password.clone().unwrap_or_default())
                .with_auto_token_refresh(true);
        }
        let client = bounded(retry_timeout, "etcd connect", async {
            Client::connect(&endpoints, Some(opts))
                .await
                .map_err(|e| classify("etcd connect", e))
        })
        .await?;
        let prefix = keys::cluster_prefix(&s.namespace, &s.scope);
        let shared = Arc::new(Shared::empty());
        let watcher = tokio::spawn(cache::run(
            client.clone(),
            prefix.clone(),
            retry_timeout,
            shared.clone(),
        ));
        Ok(EtcdDcs {
            client,
            prefix,
            name: s.name,
            retry_timeout,
            several_endpoints: endpoints.len() > 1,
            ttl: Mutex::new(s.ttl),
            lease: tokio::sync::Mutex::new(LeaseState::default()),
            shared,
            watcher,
        })
    }

    /// Whether the prefix watch is established, so that `load(false)` answers from the cache.
    pub fn watching(&self) -> bool {
        self.shared.healthy()
    }

    /// The cluster's key prefix (`/service/batman/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn leader_key(&self) -> String {
        self.key("leader")
    }

    fn member_key(&self) -> String {
        self.key(&format!("members/{}", self.name))
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one operation under `retry_timeout`; an unreachable store also stops the cache from
    /// answering until the watch is re-established.
    ///
    /// A request that could not even connect (one endpoint of several is down: the balanced
    /// channel may pick it) was never sent, so it is tried again, on whichever endpoint the
    /// channel picks next, until the deadline. With a single endpoint it fails at once.
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, DcsError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, DcsError>>,
    {
        let r = bounded(self.retry_timeout, what, async {
            loop {
                match op().await {
                    Err(DcsError::Unreachable(m)) if self.several_endpoints && errors::never_sent(&m) => {
                        tracing::debug!(error = %m, "etcd endpoint refused the connection; retrying");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    r => return r,
                }
            }
        })
        .await;
        if let Err(DcsError::Unreachable(e)) = &r {
            tracing::warn!(prefix = %self.prefix, error = %e, "etcd unreachable");
            self.shared.invalidate();
        }
        r
    }

    /// Makes sure the lease is alive. `force` sends a keepalive even if one succeeded recently
    /// (the leader's renewal); otherwise a keepalive younger than ttl/4 is trusted. A lost or
    /// expired lease, or one granted with another TTL, is replaced by a new grant.
    async fn refresh_lease(&self, st: &mut LeaseState, force: bool) -> Result<i64, DcsError> {
        let ttl = self.ttl();
        let want = keys::ttl_secs(ttl);
        if let Some(id) = st.id.filter(|_| st.granted_ttl == want) {
            let recent = st.refreshed_at.is_some_and(|t| t.elapsed() < ttl / 4);
            if recent && !force {
                return Ok(id);
            }
            let sent = Instant::now();
            match self.client.lease_client().keep_alive(id).await {
                Ok(_) => {
                    st.refreshed_at = Some(sent);
                    return Ok(id);
                }
                Err(e) if lease_gone(&e) => {
                    tracing::info!(lease = id, "etcd lease expired; granting a new one");
                    st.id = None;
                }
                Err(e) => return Err(classify("lease keepalive", e)),
            }
        }
        let sent = Instant::now();
        let resp = self
            .client
            .lease_client()
            .grant(want, None)
            .await
            .map_err(|e| classify("lease grant", e))?;
        if !resp.error().is_empty() {
            return Err(DcsError::Failed(format!("lease grant: {}", resp.error())));
        }
        st.id = Some(resp.id());
        st.granted_ttl = want;
        st.refreshed_at = Some(sent);
        Ok(resp.id())
    }

    /// Runs a txn that binds a key to `lease`; if the server no longer knows the lease, grants a
    /// new one and tries once more. Returns whether the txn's compare held, and the lease used.
    async fn txn_with_lease(
        &self,
        st: &mut LeaseState,
        mut lease: i64,
        what: &str,
        build: impl Fn(i64) -> Txn,
    ) -> Result<(bool, i64), DcsError> {
        for attempt in 0..2 {
            match self.client.kv_client().txn(build(lease)).await {
                Ok(r) => return Ok((r.succeeded(), lease)),
                Err(e) if attempt == 0 && lease_gone(&e) => {
                    st.id = None;
                    lease = self.refresh_lease(st, true).await?;
                }
                Err(e) => return Err(classify(what, e)),
            }
        }
        Err(DcsError::Failed(format!("{what}: lease lost twice")))
    }

    /// Whether the leader key holds our name, on `lease` (just refreshed by the caller): 1. a
    /// read-only check; 2. our name on another (lost, or replaced after a ttl change) lease:
    /// moved to `lease`. Never creates the key.
    async fn renew_own(
        &self,
        st: &mut LeaseState,
        lease: i64,
        what: &str,
    ) -> Result<bool, DcsError> {
        let key = self.leader_key();
        let name = self.name.clone();
        let (ok, lease) = self
            .txn_with_lease(st, lease, what, |lease| {
                Txn::new().when([
                    Compare::value(key.clone(), CompareOp::Equal, name.clone()),
                    Compare::lease(key.clone(), CompareOp::Equal, lease),
                ])
            })
            .await?;
        if ok {
            return Ok(true);
        }
        let (ok, _) = self
            .txn_with_lease(st, lease, what, |lease| {
                Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, name.clone())])
                    .and_then([TxnOp::put(
                        key.clone(),
                        name.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
            })
            .await?;
        Ok(ok)
    }

    async fn put(&self, what: &str, key: String, value: String) -> Result<(), DcsError> {
        self.client
            .kv_client()
            .put(key, value, None)
            .await
            .map(|_| ())
            .map_err(|e| classify(what, e))
    }

    /// One transaction; whether its comparisons held.
    async fn txn(&self, what: &str, txn: Txn) -> Result<bool, DcsError> {
        self.client
            .kv_client()
            .txn(txn)
            .await
            .map(|r| r.succeeded())
            .map_err(|e| classify(what, e))
    }

    /// `put` if the key's mod_revision still equals `expected`, or unconditionally without one.
    async fn cas_put(
        &self,
        what: &str,
        rel: &str,
        value: String,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let key = self.key(rel);
        let Some(v) = expected else {
            return self
                .run(what, || self.put(what, key.clone(), value.clone()))
                .await
                .map(|()| true);
        };
        let rev: i64 = v.0.trim().parse().map_err(|_| {
            DcsError::Failed(format!("{what}: version {:?} is not an etcd revision", v.0))
        })?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, value, None)]);
        self.run(what, || self.txn(what, txn.clone())).await
    }

    /// The holder of a leader key deleted while its lease lives (by hand, or a release), for at
    /// most the lease's granted ttl after the deletion was seen: the holder's deadline came
    /// from a renewal sent before the deletion, on that lease. The lease is checked once per
    /// deletion; a check that fails is tried again at the next read, the configured ttl
    /// bounding the wait meanwhile.
    async fn vanished_leader(&self) -> Option<String> {
        let v = self.shared.vanished()?;
        let ttl = match v.lease_ttl {
            Some(t) => t,
            None if v.lease == 0 => Some(self.ttl()),
            None => {
                let mut leases = self.client.lease_client();
                let check = leases.time_to_live(v.lease, None);
                match tokio::time::timeout(self.retry_timeout, check).await {
                    Ok(Ok(r)) => {
                        let t = (r.ttl() > 0)
                            .then(|| Duration::from_secs(r.granted_ttl().max(1) as u64));
                        self.shared.set_vanished_lease(&v, t);
                        t
                    }
                    Ok(Err(e)) if lease_gone(&e) => {
                        self.shared.set_vanished_lease(&v, None);
                        None
                    }
                    _ => Some(self.ttl()),
                }
            }
        };
        ttl.filter(|t| v.seen.elapsed() < *t).map(|_| v.holder)
    }

    async fn read(&self) -> Result<ClusterView, DcsError> {
        let resp = self
            .client
            .kv_client()
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| classify("read cluster", e))?;
        let entries = resp
            .kvs()
            .iter()
            .filter_map(|kv| cache::entry_of(&self.prefix, kv))
            .collect();
        Ok(cache::view_of(&entries))
    }

    /// Writes `status` if it differs from what this process wrote last.
    async fn write_status(&self, st: &mut LeaseState, status: &Status) -> Result<(), DcsError> {
        let json = status.to_json();
        if st.last_status.as_deref() == Some(json.as_str()) {
            return Ok(());
        }
        self.put("write status", self.key("status"), json.clone())
            .await?;
        st.last_status = Some(json);
        Ok(())
    }
}

#[async_trait]
impl Dcs for EtcdDcs {
    async fn load(&self, fresh: bool) -> Result<ClusterView, DcsError> {
        let mut view = match self.shared.view() {
            Some(v) if !fresh => v,
            _ => self.run("read cluster", || self.read()).await?,
        };
        if view.leader.is_none() {
            view.vanished_leader = self.vanished_leader().await;
        }
        Ok(view)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }

    fn set_ttl(&self, ttl: Duration) {
        // The next lease operation notices the different TTL and grants a new lease; the keys
        // move to it on their next write (the old lease just runs out).
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner()) = ttl;
    }

    async fn touch_member(&self, member: &Member) -> Result<(), DcsError> {
        let json = member.to_json();
        let key = self.member_key();
        let rel = format!("members/{}", self.name);
        self.run("touch member", || async {
            let mut st = self.lease.lock().await;
            let lease = self.refresh_lease(&mut st, false).await?;
            let written = st.last_member.as_ref() == Some(&(json.clone(), lease));
            // The cache, when healthy, also catches a key deleted behind our back.
            let still_there = match self.shared.entry(&rel) {
                Some(Some(e)) => e.value == json.as_bytes() && e.lease == lease,
                Some(None) => false,
                None => true,
            };
            if written && still_there {
                return Ok(());
            }
            let (_, lease) = self
                .txn_with_lease(&mut st, lease, "touch member", |lease| {
                    Txn::new().and_then([TxnOp::put(
                        key.clone(),
                        json.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                })
                .await?;
            st.last_member = Some((json.clone(), lease));
            Ok(())
        })
        .await
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let key = self.leader_key();
        self.run("acquire leader lock", || async {
            let mut st = self.lease.lock().await;
            // A fresh keepalive first: the lock lasts a full ttl from about now.
            let lease = self.refresh_lease(&mut st, true).await?;
            let (won, lease) = self
                .txn_with_lease(&mut st, lease, "acquire leader lock", |lease| {
                    Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key.clone(),
                            self.name.clone(),
                            Some(PutOptions::new().with_lease(lease)),
                        )])
                })
                .await?;
            if won {
                return Ok(true);
            }
            // Already ours (an acquisition whose answer was lost, or the holder asking again):
            // held, and for a full ttl from the keepalive above. `Ok(false)` would tell the HA
            // core somebody else holds it.
            self.renew_own(&mut st, lease, "acquire leader lock").await
        })
        .await
    }

    async fn update_leader(&self, status: Option<&Status>) -> Result<bool, DcsError> {
        let held = self
            .run("update leader lock", || async {
                let mut st = self.lease.lock().await;
                // A keepalive (or a new lease) first. If the key is gone altogether (deleted by
                // hand, or its lease ran out) the lock is lost: never take it again here, the
                // holder must stop writing first and a new lock is taken only through the race.
                let lease = self.refresh_lease(&mut st, true).await?;
                self.renew_own(&mut st, lease, "update leader lock").await
            })
            .await?;
        if let (true, Some(s)) = (held, status) {
            // The lock is renewed whatever happens here: a failed status write is logged and
            // retried on the next cycle, not reported as a lost lock.
            let r = self
                .run("write status", || async {
                    let mut st = self.lease.lock().await;
                    self.write_status(&mut st, s).await
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not write the status key");
            }
        }
        Ok(held)
    }

    async fn release_leader(
        &self,
        status: Option<&Status>,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let key = self.leader_key();
        let revision = match expected {
            Some(v) => Some(v.0.parse::<i64>().map_err(|_| {
                DcsError::Failed(format!(
                    "release leader lock: version {:?} is not a revision",
                    v.0
                ))
            })?),
            None => None,
        };
        let status = status.map(Status::to_json);
        let mut when = vec![Compare::value(
            key.clone(),
            CompareOp::Equal,
            self.name.clone(),
        )];
        if let Some(rev) = revision {
            when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
        }
        self.run("release leader lock", || async {
            let mut st = self.lease.lock().await;
            // The last position first, and only while the lock is still this instance of ours:
            // a release that releases nothing must not overwrite the status of whoever holds
            // the lock. Written before the deletion, not in its txn, so that the candidate
            // (woken by the deletion) already has it; one txn for both was measured to lengthen
            // planned switchovers.
            if let Some(s) = &status {
                let put = Txn::new().when(when.clone()).and_then([TxnOp::put(
                    self.key("status"),
                    s.clone(),
                    None,
                )]);
                if !self.txn("release leader lock", put).await? {
                    return Ok(false);
                }
                st.last_status = Some(s.clone());
            }
            let txn = Txn::new()
                .when(when.clone())
                .and_then([TxnOp::delete(key.clone(), None)]);
            self.txn("release leader lock", txn).await
        })
        .await
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError> {
        let key = self.key("initialize");
        if !create_new {
            return self
                .run("initialize", || {
                    self.put("initialize", key.clone(), sysid.to_owned())
                })
                .await
                .map(|()| true);
        }
        // The claim is bound to this member's session: if its claimant dies mid-bootstrap it
        // expires instead of blocking the cluster for good, and a claimant whose answer was
        // lost finds its own claim by claiming again (same value, same lease).
        self.run("initialize", || async {
            let mut st = self.lease.lock().await;
            let lease = self.refresh_lease(&mut st, false).await?;
            let (won, lease) = self
                .txn_with_lease(&mut st, lease, "initialize", |lease| {
                    Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key.clone(),
                            sysid,
                            Some(PutOptions::new().with_lease(lease)),
                        )])
                })
                .await?;
            if won {
                return Ok(true);
            }
            let (mine, _) = self
                .txn_with_lease(&mut st, lease, "initialize", |lease| {
                    Txn::new().when([
                        Compare::lease(key.clone(), CompareOp::Equal, lease),
                        Compare::value(key.clone(), CompareOp::Equal, sysid),
                    ])
                })
                .await?;
            Ok(mine)
        })
        .await
    }

    async fn cancel_initialization(&self) -> Result<(), DcsError> {
        let key = self.key("initialize");
        self.run("cancel initialization", || async {
            self.client
                .kv_client()
                .delete(key.as_str(), None)
                .await
                .map(|_| ())
                .map_err(|e| classify("cancel initialization", e))
        })
        .await
    }

    async fn set_config(&self, json: &str, expected: Option<&Version>) -> Result<bool, DcsError> {
        self.cas_put("set config", "config", json.to_owned(), expected)
            .await
    }

    async fn set_failover(
        &self,
        value: &Failover,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        // An empty value serialises to `{}`, which is how Patroni clears the key on etcd.
        self.cas_put("set failover", "failover", value.to_json(), expected)
            .await
    }

    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError> {
        let key = self.key("history");
        let json = history_to_json(lines);
        self.run("set history", || {
            self.put("set history", key.clone(), json.clone())
        })
        .await
    }

    async fn set_sync(
        &self,
        value: &SyncState,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let json =
            serde_json::to_string(value).map_err(|e| DcsError::Failed(format!("set sync: {e}")))?;
        self.cas_put("set sync", "sync", json, expected).await
    }

    /// One txn: `failsafe` is written (permanent, no lease, as Patroni's) only if the leader
    /// key still holds this member's name.
    async fn set_failsafe(&self, value: &BTreeMap<String, String>) -> Result<bool, DcsError> {
        let json = serde_json::to_string(value)
            .map_err(|e| DcsError::Failed(format!("set failsafe: {e}")))?;
        let txn = Txn::new()
            .when([Compare::value(
                self.leader_key(),
                CompareOp::Equal,
                self.name.clone(),
            )])
            .and_then([TxnOp::put(self.key("failsafe"), json, None)]);
        self.run("set failsafe", || self.txn("set failsafe", txn.clone()))
            .await
    }

    async fn delete_cluster(&self) -> Result<(), DcsError> {
        let prefix = self.prefix.clone();
        self.run("delete cluster", || async {
            let mut st = self.lease.lock().await;
            self.client
                .kv_client()
                .delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
                .await
                .map_err(|e| classify("delete cluster", e))?;
            st.last_member = None;
            st.last_status = None;
            Ok(())
        })
        .await
    }

    async fn delete_member(&self) -> Result<(), DcsError> {
        let key = self.member_key();
        self.run("delete member", || async {
            let mut st = self.lease.lock().await;
            self.client
                .kv_client()
                .delete(key.as_str(), None)
                .await
                .map_err(|e| classify("delete member", e))?;
            st.last_member = None;
            Ok(())
        })
        .await
    }
}
