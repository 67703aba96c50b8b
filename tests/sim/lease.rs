//! The Kubernetes backend's lock semantics over the in-memory store, beside etcd's: the leader
//! record (a Lease) never expires in the store; every member judges expiry itself, on its own
//! clock, from when it last saw the record change (client-go's rule, which
//! `pgwarden::dcs::kubernetes` follows), and takes, renews and releases it by compare-and-set on
//! the version it saw (a conflict is Kubernetes' 409). A release writes an empty holder; a
//! record deleted by hand names its holder as vanished until it would have expired. Members see
//! each change as their watch delivers it (`World::notify`), or only the version current when
//! they are connected again.
//!
//! Member records do not expire either (on Kubernetes they are Pod annotations). Everything else
//! is the in-memory store's own ([`MemDcs`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pgwarden::dcs::mem::{MemDcs, MemStore};
use pgwarden::dcs::model::Leader;
use pgwarden::dcs::{
    ClusterView, Dcs, DcsError, Failover, HistoryLine, Member, Status, SyncState, Version,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// The store key of the record (the etcd layout's, so the world reads either alike).
const KEY: &str = "leader";

/// The Lease as stored: `holder|instance|duration_ms`, an empty holder once released.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    /// Which holding of the lock this is (`acquireTime`): kept by renewals, new at each take.
    instance: u64,
    duration: Duration,
    /// The store's version of it (`resourceVersion`): moves with every write.
    rv: Version,
}

impl Record {
    fn read(s: &mut MemStore, now: Duration) -> Option<Record> {
        let (value, rv) = s.get_versioned(KEY, now)?;
        let mut parts = value.split('|');
        let holder = parts.next().filter(|h| !h.is_empty()).map(str::to_owned);
        let instance = parts.next()?.parse().ok()?;
        let duration = Duration::from_millis(parts.next()?.parse().ok()?);
        Some(Record {
            holder,
            instance,
            duration,
            rv,
        })
    }

    /// Writes `holder` over the version `base` saw (`None`: only if no record exists).
    fn write(
        s: &mut MemStore,
        now: Duration,
        base: Option<&Version>,
        holder: &str,
        instance: u64,
        duration: Duration,
    ) -> bool {
        let value = format!("{holder}|{instance}|{}", duration.as_millis());
        s.compare_and_put(KEY, &value, base, now)
    }
}

/// The holder a stored record names (either layout), for the world's invariants.
pub fn holder_of(value: &str) -> Option<String> {
    value
        .split('|')
        .next()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// One sighting of a version of the record.
#[derive(Debug, Clone)]
struct Seen {
    record: Record,
    at: Instant,
}

/// The expiry judge of one member.
#[derive(Debug, Default)]
struct Observer {
    last: Option<Seen>,
    /// The last record seen before it was deleted (by hand), while it named a holder.
    deleted: Option<Seen>,
}

impl Observer {
    fn observe(&mut self, record: Option<&Record>, now: Instant) {
        let Some(r) = record else {
            if let Some(had) = self.last.take()
                && had.record.holder.is_some()
            {
                self.deleted = Some(had);
            }
            return;
        };
        self.deleted = None;
        if self.last.as_ref().is_some_and(|s| s.record.rv == r.rv) {
            return;
        }
        self.last = Some(Seen {
            record: r.clone(),
            at: now,
        });
    }

    fn holder(&self, now: Instant) -> Option<Leader> {
        let s = self.last.as_ref()?;
        let name = s.record.holder.clone()?;
        (now < s.at + s.record.duration).then(|| Leader {
            name,
            version: Version(format!("acquired {}", s.record.instance)),
        })
    }

    fn vanished(&self, now: Instant) -> Option<String> {
        let s = self.deleted.as_ref()?;
        (now < s.at + s.record.duration).then(|| s.record.holder.clone())?
    }
}

/// One member's handle: the in-memory store with a Lease lock.
pub struct LeaseDcs {
    inner: MemDcs,
    name: String,
    ttl: Mutex<Duration>,
    observer: Mutex<Observer>,
}

impl LeaseDcs {
    pub fn new(inner: MemDcs, name: &str, ttl: Duration) -> LeaseDcs {
        LeaseDcs {
            inner,
            name: name.to_owned(),
            ttl: Mutex::new(ttl),
            observer: Mutex::new(Observer::default()),
        }
    }

    /// Reads the record on the store (observing it) and hands it, with the store, to `f`.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut MemStore, Duration, Option<Record>, &Observer) -> T,
    ) -> T {
        let mut observer = self.observer.lock().unwrap();
        self.inner.edit(|s, now| {
            let record = Record::read(s, now);
            observer.observe(record.as_ref(), Instant::now());
            let r = f(s, now, record, &observer);
            // The answer to our own write is a sighting too.
            let after = Record::read(s, now);
            observer.observe(after.as_ref(), Instant::now());
            r
        })
    }

    /// A change the member's watch delivers: the record's current version is seen now.
    pub fn observe_now(&self) {
        self.with(|_, _, _, _| ());
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock().unwrap()
    }

    fn put_status(s: &mut MemStore, now: Duration, status: Option<&Status>) {
        if let Some(st) = status.map(Status::to_json)
            && s.get("status", now).as_deref() != Some(st.as_str())
        {
            s.put("status", &st, None, now);
        }
    }
}

#[async_trait]
impl Dcs for LeaseDcs {
    async fn load(&self, fresh: bool) -> Result<ClusterView, DcsError> {
        let mut view = self.inner.load(fresh).await?;
        let (leader, vanished) = self.with(|_, _, _, o| {
            let now = Instant::now();
            (o.holder(now), o.vanished(now))
        });
        view.leader = leader;
        view.vanished_leader = vanished;
        Ok(view)
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }
    fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap() = ttl;
        self.inner.set_ttl(ttl);
    }
    /// A member's record is its Pod's annotations: they outlive the agent (no session).
    async fn touch_member(&self, member: &Member) -> Result<(), DcsError> {
        let key = format!("members/{}", self.name);
        let value = member.to_json();
        self.inner.edit(|s, now| {
            if s.get(&key, now).as_deref() != Some(value.as_str()) {
                s.put(&key, &value, None, now);
            }
        });
        Ok(())
    }
    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let ttl = self.ttl();
        Ok(self.with(|s, now, record, o| {
            let fresh = s.revision() + 1;
            let Some(r) = record else {
                return Record::write(s, now, None, &self.name, fresh, ttl);
            };
            let live = o.holder(Instant::now()).map(|l| l.name == self.name);
            if live == Some(false) {
                return false;
            }
            // Our own live holding (an answer lost, or asking again) stays the same instance.
            let instance = if live == Some(true) {
                r.instance
            } else {
                fresh
            };
            Record::write(s, now, Some(&r.rv), &self.name, instance, ttl)
        }))
    }
    async fn update_leader(&self, status: Option<&Status>) -> Result<bool, DcsError> {
        let ttl = self.ttl();
        Ok(self.with(|s, now, record, _| {
            let Some(r) = record.filter(|r| r.holder.as_deref() == Some(self.name.as_str())) else {
                return false;
            };
            let ok = Record::write(s, now, Some(&r.rv), &self.name, r.instance, ttl);
            if ok {
                Self::put_status(s, now, status);
            }
            ok
        }))
    }
    async fn release_leader(
        &self,
        status: Option<&Status>,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        Ok(self.with(|s, now, record, _| {
            let Some(r) = record.filter(|r| r.holder.as_deref() == Some(self.name.as_str())) else {
                return false;
            };
            if expected.is_some_and(|v| v.0 != format!("acquired {}", r.instance)) {
                return false;
            }
            let ok = Record::write(s, now, Some(&r.rv), "", r.instance, r.duration);
            if ok {
                Self::put_status(s, now, status);
            }
            ok
        }))
    }
    /// An annotation of the Lease: written over the version seen, while the record names this
    /// member, as a new version of the record (unchanged otherwise) that observers see as a
    /// change of the Lease.
    async fn set_failsafe(&self, value: &BTreeMap<String, String>) -> Result<bool, DcsError> {
        let json = serde_json::to_string(value).map_err(|e| DcsError::Failed(e.to_string()))?;
        Ok(self.with(|s, now, record, _| {
            let Some(r) = record.filter(|r| r.holder.as_deref() == Some(self.name.as_str())) else {
                return false;
            };
            let ok = Record::write(s, now, Some(&r.rv), &self.name, r.instance, r.duration);
            if ok {
                s.put("failsafe", &json, None, now);
            }
            ok
        }))
    }
    async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError> {
        self.inner.initialize(create_new, sysid).await
    }
    async fn cancel_initialization(&self) -> Result<(), DcsError> {
        self.inner.cancel_initialization().await
    }
    async fn set_config(&self, json: &str, expected: Option<&Version>) -> Result<bool, DcsError> {
        self.inner.set_config(json, expected).await
    }
    async fn set_failover(
        &self,
        value: &Failover,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        self.inner.set_failover(value, expected).await
    }
    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError> {
        self.inner.set_history(lines).await
    }
    async fn set_sync(
        &self,
        value: &SyncState,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        self.inner.set_sync(value, expected).await
    }
    async fn delete_cluster(&self) -> Result<(), DcsError> {
        self.inner.delete_cluster().await
    }
    async fn delete_member(&self) -> Result<(), DcsError> {
        self.inner.delete_member().await
    }
}
