//! The watch-fed copy of the cluster's objects: its Lease, its ConfigMaps and its Pods.
//!
//! One task per kind lists once, then watches from the listed `resourceVersion` and applies
//! every event; a watch that ends is resumed from the last version seen (bookmarks keep it
//! fresh), so the only LIST after start-up is the one after a `410 Gone` or an outage. The cache
//! answers reads only while all three watches are established.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use crate::dcs::watch_cache::{self, WatchCache};

use super::lease::Observer;

/// Server-side bound of one watch request (the API server closes it then; we resume).
const WATCH_SECS: u32 = 290;

/// Everything the watches keep.
#[derive(Debug, Default)]
pub(super) struct Store {
    pub lease: Option<Lease>,
    pub configmaps: BTreeMap<String, ConfigMap>,
    pub pods: BTreeMap<String, Pod>,
}

/// What the watch tasks and the backend share.
pub(super) struct Shared {
    /// One stream per kind, numbered by [`Cached::SLOT`].
    cache: WatchCache<Store>,
    observer: Mutex<Observer>,
    /// Wakes the expiry timer when the Lease changed.
    pub lease_changed: Notify,
    /// Lease duration assumed when a Lease does not say.
    fallback_ttl: Mutex<Duration>,
    /// Versions this process wrote itself: their watch echoes update the cache but do not
    /// wake the HA loop (it already knows; an extra cycle is only load).
    own: Mutex<std::collections::VecDeque<String>>,
    /// This member's name: changes to its own Pod, and a Lease it holds, never wake the HA
    /// loop either (the echo of a write may arrive before the write's answer).
    me: String,
}

/// A kind the cache keeps.
pub(super) trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const SLOT: usize;
    /// Whether an update of this object is this member's own business only.
    fn mine(&self, _me: &str) -> bool {
        false
    }
    fn replace_all(shared: &Shared, st: &mut Store, items: Vec<Self>);
    fn upsert(shared: &Shared, st: &mut Store, item: Self);
    fn remove(shared: &Shared, st: &mut Store, name: &str);
}

impl Cached for Lease {
    const SLOT: usize = 0;
    fn mine(&self, me: &str) -> bool {
        super::lease::holder_of(self) == Some(me)
    }
    fn replace_all(shared: &Shared, st: &mut Store, items: Vec<Self>) {
        st.lease = items.into_iter().next();
        shared.observe(st.lease.as_ref());
    }
    fn upsert(shared: &Shared, st: &mut Store, item: Self) {
        shared.observe(Some(&item));
        st.lease = Some(item);
    }
    fn remove(shared: &Shared, st: &mut Store, _name: &str) {
        st.lease = None;
        shared.observe(None);
    }
}

impl Cached for ConfigMap {
    const SLOT: usize = 1;
    fn replace_all(_: &Shared, st: &mut Store, items: Vec<Self>) {
        st.configmaps = items.into_iter().map(|c| (c.name_any(), c)).collect();
    }
    fn upsert(_: &Shared, st: &mut Store, item: Self) {
        st.configmaps.insert(item.name_any(), item);
    }
    fn remove(_: &Shared, st: &mut Store, name: &str) {
        st.configmaps.remove(name);
    }
}

impl Cached for Pod {
    const SLOT: usize = 2;
    fn mine(&self, me: &str) -> bool {
        self.meta().name.as_deref() == Some(me)
    }
    fn replace_all(_: &Shared, st: &mut Store, items: Vec<Self>) {
        st.pods = items.into_iter().map(|p| (p.name_any(), p)).collect();
    }
    fn upsert(_: &Shared, st: &mut Store, item: Self) {
        st.pods.insert(item.name_any(), item);
    }
    fn remove(_: &Shared, st: &mut Store, name: &str) {
        st.pods.remove(name);
    }
}

impl Shared {
    pub(super) fn new(ttl: Duration, me: &str) -> Shared {
        Shared {
            cache: WatchCache::new(Store::default(), 3),
            observer: Mutex::new(Observer::default()),
            lease_changed: Notify::new(),
            fallback_ttl: Mutex::new(ttl),
            own: Mutex::new(std::collections::VecDeque::new()),
            me: me.to_owned(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, watch_cache::Cached<Store>> {
        self.cache.lock()
    }

    pub(super) fn observer(&self) -> MutexGuard<'_, Observer> {
        self.observer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_ttl(&self, ttl: Duration) {
        *self.fallback_ttl.lock().unwrap_or_else(|p| p.into_inner()) = ttl;
    }

    /// Feeds one sighting of the Lease to the expiry judge (from a watch, a read or a write).
    pub(super) fn observe(&self, lease: Option<&Lease>) {
        let ttl = *self.fallback_ttl.lock().unwrap_or_else(|p| p.into_inner());
        if self.observer().observe(lease, Instant::now(), ttl) {
            self.lease_changed.notify_one();
        }
    }

    /// Records the version an own write produced.
    pub(super) fn wrote(&self, rv: Option<String>) {
        let Some(rv) = rv else { return };
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        own.push_back(rv);
        while own.len() > 32 {
            own.pop_front();
        }
    }

    /// An own ConfigMap write's result: its version is remembered (its watch echo wakes no
    /// one), and it goes into the cache at once unless the cache already holds a newer version
    /// (or versions that do not compare), so that the cycle an API request wakes right after
    /// writing the failover key reads it, instead of waiting for the echo and then for the
    /// next tick (up to loop_wait late).
    pub(super) fn wrote_configmap(&self, cm: ConfigMap) {
        self.wrote(cm.metadata.resource_version.clone());
        let version = |c: &ConfigMap| c.metadata.resource_version.as_deref()?.parse::<u64>().ok();
        let Some(ours) = version(&cm) else { return };
        let mut st = self.lock();
        let newer_cached = match st.configmaps.get(&cm.name_any()) {
            Some(cached) => version(cached).is_none_or(|v| v >= ours),
            None => false,
        };
        if !newer_cached {
            ConfigMap::upsert(self, &mut st, cm);
        }
    }

    /// Whether `rv` is the echo of an own write (consumed).
    fn is_own(&self, rv: Option<&String>) -> bool {
        let Some(rv) = rv else { return false };
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        match own.iter().position(|r| r == rv) {
            Some(i) => {
                own.remove(i);
                true
            }
            None => false,
        }
    }

    pub(super) fn bump(&self) {
        self.cache.bump();
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.cache.subscribe()
    }

    /// Whether all three watches are established.
    pub(super) fn healthy(&self) -> bool {
        self.cache.healthy()
    }
}

/// The watch task of one kind: runs until aborted.
pub(super) async fn run<K: Cached>(
    api: Api<K>,
    selector: Selector,
    limit: Duration,
    shared: Arc<Shared>,
) {
    let what = format!("kubernetes {}", K::kind(&()));
    shared
        .cache
        .run(K::SLOT, &what, Duration::from_secs(2), || {
            let (api, selector, shared) = (api.clone(), selector.clone(), shared.clone());
            async move { list_and_watch(&api, &selector, limit, &shared).await }
        })
        .await;
}

/// How a watch selects its objects.
#[derive(Debug, Clone)]
pub(super) enum Selector {
    Labels(String),
    Name(String),
}

impl Selector {
    fn list(&self) -> ListParams {
        match self {
            Selector::Labels(l) => ListParams::default().labels(l),
            Selector::Name(n) => ListParams::default().fields(&format!("metadata.name={n}")),
        }
    }
    fn watch(&self) -> WatchParams {
        let wp = WatchParams::default().timeout(WATCH_SECS);
        match self {
            Selector::Labels(l) => wp.labels(l),
            Selector::Name(n) => wp.fields(&format!("metadata.name={n}")),
        }
    }
}

async fn list_and_watch<K: Cached>(
    api: &Api<K>,
    selector: &Selector,
    limit: Duration,
    shared: &Shared,
) -> String {
    let list = match tokio::time::timeout(limit, api.list(&selector.list())).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return format!("list failed: {e}"),
        Err(_) => return "list timed out".into(),
    };
    let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
    {
        let mut st = shared.lock();
        K::replace_all(shared, &mut st, list.items);
        st.establish(K::SLOT);
    }
    shared.bump();
    let wp = selector.watch();
    loop {
        let stream = match tokio::time::timeout(limit, api.watch(&wp, &rv)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return format!("watch failed: {e}"),
            Err(_) => return "watch timed out".into(),
        };
        let mut stream = std::pin::pin!(stream);
        // Bookmarks arrive about once a minute; much longer silence means a dead connection.
        let idle = Duration::from_secs(u64::from(WATCH_SECS) + 30);
        loop {
            let ev = match tokio::time::timeout(idle, stream.next()).await {
                Err(_) | Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(ev))) => ev,
            };
            match ev {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    let own =
                        shared.is_own(o.meta().resource_version.as_ref()) || o.mine(&shared.me);
                    rv = o.resource_version().unwrap_or(rv);
                    K::upsert(shared, &mut shared.lock(), o);
                    if !own {
                        shared.bump();
                    }
                }
                WatchEvent::Deleted(o) => {
                    rv = o.resource_version().unwrap_or(rv);
                    K::remove(shared, &mut shared.lock(), &o.name_any());
                    shared.bump();
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                // 410 Gone (our version was compacted) or another error: list again.
                WatchEvent::Error(s) => return format!("watch error {}: {}", s.code, s.message),
            }
        }
    }
}
