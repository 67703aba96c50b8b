//! An in-memory store with etcd's semantics (revisions, leases with TTLs, create-if-absent and
//! compare-and-set), on an injected clock. It serves the HA simulation, which moves time
//! itself, and tests of the shell through [`MemDcs`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::model::{
    ClusterView, Failover, HistoryLine, Member, Status, SyncState, Version, history_to_json,
};
use super::{Dcs, DcsError};

/// A lease identifier.
pub type LeaseId = u64;

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    mod_revision: u64,
    lease: Option<LeaseId>,
}

/// The store itself. Every call takes `now`, a point on the store's own clock (in the
/// simulation: real simulated time). Keys are relative to the cluster prefix.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    keys: BTreeMap<String, Entry>,
    /// Lease → (ttl, expiry instant).
    leases: BTreeMap<LeaseId, (Duration, Duration)>,
    revision: u64,
    next_lease: LeaseId,
    /// The last leader key removed by a delete (not by its lease running out): holder, lease,
    /// when. Cleared when a leader key is written again.
    deleted_leader: Option<(String, Option<LeaseId>, Duration)>,
    /// What the [`MemDcs`] handles on this store share, created by the first one.
    handles: Option<Arc<Handles>>,
}

/// What every [`MemDcs`] handle on one store shares: one clock, so that all members judge
/// leases alike (a clock per handle made a lease granted by a later handle expire early for an
/// earlier one), and one change counter, so that each member sees the others' writes.
#[derive(Debug)]
struct Handles {
    epoch: tokio::time::Instant,
    changes: watch::Sender<u64>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current revision; moves with every change, including expiries.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Drops expired leases and the keys bound to them, as etcd does.
    pub fn expire(&mut self, now: Duration) {
        let dead: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.leases.remove(&id);
            let before = self.keys.len();
            self.keys.retain(|_, e| e.lease != Some(id));
            if self.keys.len() != before {
                self.revision += 1;
            }
        }
    }

    /// Grants a lease of `ttl`.
    pub fn grant(&mut self, ttl: Duration, now: Duration) -> LeaseId {
        self.expire(now);
        self.next_lease += 1;
        self.leases.insert(self.next_lease, (ttl, now + ttl));
        self.next_lease
    }

    /// Extends a lease to `now + ttl`; false when it has expired.
    pub fn keepalive(&mut self, lease: LeaseId, now: Duration) -> bool {
        self.expire(now);
        match self.leases.get_mut(&lease) {
            Some((ttl, exp)) => {
                *exp = now + *ttl;
                true
            }
            None => false,
        }
    }

    /// The lease a key is bound to.
    pub fn lease_of(&mut self, key: &str, now: Duration) -> Option<LeaseId> {
        self.expire(now);
        self.keys.get(key).and_then(|e| e.lease)
    }

    /// The ttl a lease was granted with, while it exists.
    pub fn lease_ttl(&self, lease: LeaseId) -> Option<Duration> {
        self.leases.get(&lease).map(|(ttl, _)| *ttl)
    }

    /// Whether a lease is alive.
    pub fn lease_alive(&mut self, lease: LeaseId, now: Duration) -> bool {
        self.expire(now);
        self.leases.contains_key(&lease)
    }

    /// A key's value.
    pub fn get(&mut self, key: &str, now: Duration) -> Option<String> {
        self.expire(now);
        self.keys.get(key).map(|e| e.value.clone())
    }

    /// A key's value and version (what [`Self::compare_and_put`] compares).
    pub fn get_versioned(&mut self, key: &str, now: Duration) -> Option<(String, Version)> {
        self.expire(now);
        self.keys
            .get(key)
            .map(|e| (e.value.clone(), Version(e.mod_revision.to_string())))
    }

    /// Unconditional write.
    pub fn put(&mut self, key: &str, value: &str, lease: Option<LeaseId>, now: Duration) {
        self.expire(now);
        if key == "leader" {
            self.deleted_leader = None;
        }
        self.revision += 1;
        let e = Entry {
            value: value.to_owned(),
            mod_revision: self.revision,
            lease,
        };
        self.keys.insert(key.to_owned(), e);
    }

    /// Create-if-absent.
    pub fn create(
        &mut self,
        key: &str,
        value: &str,
        lease: Option<LeaseId>,
        now: Duration,
    ) -> bool {
        self.expire(now);
        if self.keys.contains_key(key) {
            return false;
        }
        self.put(key, value, lease, now);
        true
    }

    /// Create-if-absent bound to `lease`; also true when the key already holds `value` bound to
    /// that same lease (the caller's earlier claim, whose answer it may have missed), as the etcd
    /// backend answers.
    pub fn create_or_owned(
        &mut self,
        key: &str,
        value: &str,
        lease: LeaseId,
        now: Duration,
    ) -> bool {
        self.expire(now);
        match self.keys.get(key) {
            Some(e) => e.lease == Some(lease) && e.value == value,
            None => self.create(key, value, Some(lease), now),
        }
    }

    /// Write if the key's version is `expected` (`None`: if absent).
    pub fn compare_and_put(
        &mut self,
        key: &str,
        value: &str,
        expected: Option<&Version>,
        now: Duration,
    ) -> bool {
        self.expire(now);
        let current = self.keys.get(key).map(|e| e.mod_revision.to_string());
        if current.as_deref() != expected.map(|v| v.0.as_str()) {
            return false;
        }
        self.put(key, value, None, now);
        true
    }

    /// Delete if the key holds `value`.
    pub fn delete_if_value(&mut self, key: &str, value: &str, now: Duration) -> bool {
        self.expire(now);
        self.keys.get(key).is_some_and(|e| e.value == value) && self.remove(key, now)
    }

    /// Delete if the key holds `value` and, when given, is still at version `expected`.
    pub fn delete_if_value_at(
        &mut self,
        key: &str,
        value: &str,
        expected: Option<&Version>,
        now: Duration,
    ) -> bool {
        self.expire(now);
        let at = self.keys.get(key).map(|e| e.mod_revision.to_string());
        if expected.is_some_and(|v| Some(&v.0) != at.as_ref()) {
            return false;
        }
        self.delete_if_value(key, value, now)
    }

    /// Delete a key.
    pub fn delete(&mut self, key: &str, now: Duration) {
        self.expire(now);
        self.remove(key, now);
    }

    fn remove(&mut self, key: &str, now: Duration) -> bool {
        let Some(e) = self.keys.remove(key) else {
            return false;
        };
        self.revision += 1;
        if key == "leader" {
            self.deleted_leader = Some((e.value, e.lease, now));
        }
        true
    }

    /// The holder of a leader key deleted (by hand, or released) while the lease it was bound
    /// to lives, within that lease's ttl of the deletion, while no leader key exists: what the
    /// etcd backend reports as [`ClusterView::vanished_leader`].
    pub fn vanished_leader(&mut self, now: Duration) -> Option<String> {
        self.expire(now);
        if self.keys.contains_key("leader") {
            return None;
        }
        let (holder, lease, at) = self.deleted_leader.clone()?;
        let ttl = self.lease_ttl(lease?)?;
        (now < at + ttl).then_some(holder)
    }

    /// Rebinds a key that holds `value` to `lease` (the holder renewing under a new lease).
    pub fn rebind_if_value(
        &mut self,
        key: &str,
        value: &str,
        lease: LeaseId,
        now: Duration,
    ) -> bool {
        self.expire(now);
        match self.keys.get(key) {
            Some(e) if e.value == value => {
                if e.lease != Some(lease) {
                    self.put(key, value, Some(lease), now);
                }
                true
            }
            _ => false,
        }
    }

    /// The whole cluster, parsed.
    pub fn view(&mut self, now: Duration) -> ClusterView {
        self.expire(now);
        ClusterView::from_raw(self.keys.iter().map(|(k, e)| {
            (
                k.as_str(),
                e.value.as_str(),
                Version(e.mod_revision.to_string()),
            )
        }))
    }

    /// Every key, for tests.
    pub fn dump(&mut self, now: Duration) -> BTreeMap<String, String> {
        self.expire(now);
        self.keys
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }
}

/// [`MemStore`] behind the [`Dcs`] trait, on tokio's clock, for tests of the shell and API.
#[derive(Clone)]
pub struct MemDcs {
    store: Arc<Mutex<MemStore>>,
    handles: Arc<Handles>,
    name: String,
    ttl: Arc<Mutex<Duration>>,
    lease: Arc<Mutex<Option<LeaseId>>>,
}

impl MemDcs {
    /// A member `name`'s handle on a shared store.
    pub fn new(store: Arc<Mutex<MemStore>>, name: &str, ttl: Duration) -> Self {
        let handles = store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .handles
            .get_or_insert_with(|| {
                Arc::new(Handles {
                    epoch: tokio::time::Instant::now(),
                    changes: watch::channel(0).0,
                })
            })
            .clone();
        MemDcs {
            store,
            handles,
            name: name.to_owned(),
            ttl: Arc::new(Mutex::new(ttl)),
            lease: Arc::new(Mutex::new(None)),
        }
    }

    /// Now on the store's clock, for tests that edit the [`MemStore`] directly.
    pub fn clock(&self) -> Duration {
        self.handles.epoch.elapsed()
    }

    /// Edits the store directly, on its clock, as an operator or a fault would (a key written
    /// or deleted by hand, leases run out), waking the watchers when anything changed.
    pub fn edit<T>(&self, f: impl FnOnce(&mut MemStore, Duration) -> T) -> T {
        let now = self.clock();
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let before = store.revision();
        let r = f(&mut store, now);
        if store.revision() != before {
            self.handles.changes.send_modify(|c| *c += 1);
        }
        r
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut MemStore, Duration, LeaseId) -> T,
    ) -> Result<T, DcsError> {
        let now = self.clock();
        let ttl = *self
            .ttl
            .lock()
            .map_err(|_| DcsError::Failed("lock poisoned".into()))?;
        let mut store = self
            .store
            .lock()
            .map_err(|_| DcsError::Failed("store poisoned".into()))?;
        let mut lease = self
            .lease
            .lock()
            .map_err(|_| DcsError::Failed("lock poisoned".into()))?;
        // A lease granted with another ttl is replaced, as etcd's backend does after `set_ttl`;
        // keys move to the new one on their next write.
        let id = match *lease {
            Some(id) if store.lease_ttl(id) == Some(ttl) && store.keepalive(id, now) => id,
            _ => {
                let id = store.grant(ttl, now);
                *lease = Some(id);
                id
            }
        };
        let before = store.revision();
        let r = f(&mut store, now, id);
        if store.revision() != before {
            self.handles.changes.send_modify(|c| *c += 1);
        }
        Ok(r)
    }
}

#[async_trait]
impl Dcs for MemDcs {
    async fn load(&self, _fresh: bool) -> Result<ClusterView, DcsError> {
        self.with(|s, now, _| {
            let mut view = s.view(now);
            view.vanished_leader = s.vanished_leader(now);
            view
        })
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.handles.changes.subscribe()
    }
    fn set_ttl(&self, ttl: Duration) {
        if let Ok(mut t) = self.ttl.lock() {
            *t = ttl;
        }
    }
    async fn touch_member(&self, member: &Member) -> Result<(), DcsError> {
        let key = format!("members/{}", self.name);
        self.with(|s, now, lease| s.put(&key, &member.to_json(), Some(lease), now))
    }
    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let name = self.name.clone();
        // Already ours (an acquisition whose answer was lost): held, renewed by `with`.
        self.with(|s, now, lease| {
            s.create("leader", &name, Some(lease), now)
                || s.rebind_if_value("leader", &name, lease, now)
        })
    }
    async fn update_leader(&self, status: Option<&Status>) -> Result<bool, DcsError> {
        let name = self.name.clone();
        let status = status.map(Status::to_json);
        self.with(|s, now, lease| {
            let ok = s.rebind_if_value("leader", &name, lease, now);
            if let (true, Some(st)) = (ok, status)
                && s.get("status", now).as_deref() != Some(st.as_str())
            {
                s.put("status", &st, None, now);
            }
            ok
        })
    }
    async fn release_leader(
        &self,
        status: Option<&Status>,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let name = self.name.clone();
        let status = status.map(Status::to_json);
        // Under one lock of the store, so nobody sees the lock gone without the status; a
        // release that releases nothing writes nothing (it would overwrite the new leader's).
        self.with(|s, now, _| {
            let released = s.delete_if_value_at("leader", &name, expected, now);
            if let (true, Some(st)) = (released, status) {
                s.put("status", &st, None, now);
            }
            released
        })
    }
    async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError> {
        self.with(|s, now, lease| {
            if create_new {
                s.create_or_owned("initialize", sysid, lease, now)
            } else {
                s.put("initialize", sysid, None, now);
                true
            }
        })
    }
    async fn cancel_initialization(&self) -> Result<(), DcsError> {
        self.with(|s, now, _| s.delete("initialize", now))
    }
    async fn set_config(&self, json: &str, expected: Option<&Version>) -> Result<bool, DcsError> {
        self.with(|s, now, _| match expected {
            Some(_) => s.compare_and_put("config", json, expected, now),
            None => {
                s.put("config", json, None, now);
                true
            }
        })
    }
    async fn set_failover(
        &self,
        value: &Failover,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let json = value.to_json();
        self.with(|s, now, _| match expected {
            Some(_) => s.compare_and_put("failover", &json, expected, now),
            None => {
                s.put("failover", &json, None, now);
                true
            }
        })
    }
    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError> {
        let json = history_to_json(lines);
        self.with(|s, now, _| s.put("history", &json, None, now))
    }
    async fn set_sync(
        &self,
        value: &SyncState,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let json = serde_json::to_string(value).map_err(|e| DcsError::Failed(e.to_string()))?;
        self.with(|s, now, _| match expected {
            Some(_) => s.compare_and_put("sync", &json, expected, now),
            None => {
                s.put("sync", &json, None, now);
                true
            }
        })
    }
    async fn set_failsafe(&self, value: &BTreeMap<String, String>) -> Result<bool, DcsError> {
        let json = serde_json::to_string(value).map_err(|e| DcsError::Failed(e.to_string()))?;
        let name = self.name.clone();
        self.with(|s, now, _| {
            let held = s.get("leader", now).as_deref() == Some(name.as_str());
            if held {
                s.put("failsafe", &json, None, now);
            }
            held
        })
    }
    async fn delete_cluster(&self) -> Result<(), DcsError> {
        // Key by key, as etcd's prefix delete: revisions go on (a version read before never
        // matches a key written after) and the members' leases survive.
        self.with(|s, now, _| {
            for key in s.dump(now).into_keys() {
                s.delete(&key, now);
            }
        })
    }
    async fn delete_member(&self) -> Result<(), DcsError> {
        let key = format!("members/{}", self.name);
        self.with(|s, now, _| s.delete(&key, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_their_keys() {
        let mut s = MemStore::new();
        let l = s.grant(Duration::from_secs(10), Duration::ZERO);
        assert!(s.create("leader", "a", Some(l), Duration::ZERO));
        assert!(!s.create("leader", "b", None, Duration::from_secs(1)));
        assert!(s.keepalive(l, Duration::from_secs(5)));
        assert_eq!(
            s.get("leader", Duration::from_secs(14)).as_deref(),
            Some("a")
        );
        assert_eq!(s.get("leader", Duration::from_secs(15)), None);
        assert!(!s.keepalive(l, Duration::from_secs(16)));
    }

    #[test]
    fn a_deleted_leader_key_names_its_holder_while_its_lease_lives() {
        let secs = Duration::from_secs;
        let mut s = MemStore::new();
        let l = s.grant(secs(10), Duration::ZERO);
        s.put("leader", "a", Some(l), Duration::ZERO);
        assert_eq!(s.vanished_leader(secs(1)), None, "held");
        s.delete("leader", secs(2));
        assert!(s.keepalive(l, secs(9)));
        assert_eq!(s.vanished_leader(secs(11)).as_deref(), Some("a"));
        assert_eq!(
            s.vanished_leader(secs(12)),
            None,
            "a ttl after the deletion"
        );
        s.put("leader", "a", Some(l), secs(13));
        assert!(s.delete_if_value("leader", "a", secs(14)));
        assert_eq!(
            s.vanished_leader(secs(15)).as_deref(),
            Some("a"),
            "released"
        );
        s.put("leader", "b", None, secs(16));
        assert_eq!(s.vanished_leader(secs(17)), None, "written again");
        s.delete("leader", secs(18));
        assert_eq!(
            s.vanished_leader(secs(19)),
            None,
            "no lease: it cannot be alive"
        );
    }

    #[tokio::test]
    async fn handles_share_one_clock_and_one_change_counter() {
        let store = Arc::new(Mutex::new(MemStore::new()));
        let a = MemDcs::new(store.clone(), "a", Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = MemDcs::new(store, "b", Duration::from_secs(10));
        assert!(
            b.clock() >= Duration::from_millis(50),
            "from the first handle"
        );
        let mut rx = a.changes();
        rx.borrow_and_update();
        assert!(b.set_config("{}", None).await.unwrap());
        assert!(rx.has_changed().unwrap(), "a is told of b's write");
    }

    #[tokio::test]
    async fn a_new_ttl_applies_to_the_next_lease() {
        let store = Arc::new(Mutex::new(MemStore::new()));
        let a = MemDcs::new(store.clone(), "a", Duration::from_secs(30));
        a.touch_member(&Member::default()).await.unwrap();
        a.set_ttl(Duration::from_secs(2));
        assert!(a.acquire_leader().await.unwrap());
        let mut s = store.lock().unwrap();
        let lease = s.lease_of("leader", a.clock()).expect("bound");
        assert_eq!(s.lease_ttl(lease), Some(Duration::from_secs(2)));
    }

    #[test]
    fn compare_and_put_checks_versions() {
        let mut s = MemStore::new();
        s.put("config", "{}", None, Duration::ZERO);
        let v = s.view(Duration::ZERO).config.map(|c| c.version);
        assert!(!s.compare_and_put(
            "config",
            "{\"a\":1}",
            Some(&Version("99".into())),
            Duration::ZERO
        ));
        assert!(s.compare_and_put("config", "{\"a\":1}", v.as_ref(), Duration::ZERO));
    }
}
