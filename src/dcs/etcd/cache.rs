//! The watch-fed copy of the cluster's prefix.
//!
//! One background task lists the prefix at revision R, then watches it from R+1 and applies every
//! event. On a compaction, a cancelled watch, a stream error or an explicit request it lists
//! again ([`WatchCache::run`]). The cache answers reads only while its watch is established.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};

use super::keys;
use crate::dcs::watch_cache::WatchCache;
use crate::dcs::{ClusterView, Version};

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

/// Keys relative to the cluster prefix → values.
pub(super) type Entries = BTreeMap<String, Entry>;

/// What the cache keeps (in a [`WatchCache`] of one stream).
#[derive(Debug, Default)]
pub(super) struct State {
    entries: Entries,
    vanished: Option<Vanished>,
}

/// The leader key as it was when a watch event deleted it: a deletion by hand (or a release)
/// leaves the holder's lease alive, a lapsed lease takes the key with it. See
/// [`crate::dcs::ClusterView::vanished_leader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Vanished {
    pub holder: String,
    pub lease: i64,
    pub seen: std::time::Instant,
    /// The lease's granted ttl if it was found alive (checked once), `Some(None)` if it was
    /// found gone; `None` until checked.
    pub lease_ttl: Option<Option<std::time::Duration>>,
}

impl Vanished {
    fn of(leader: &Entry, seen: std::time::Instant) -> Vanished {
        Vanished {
            holder: String::from_utf8_lossy(&leader.value).into_owned(),
            lease: leader.lease,
            seen,
            lease_ttl: None,
        }
    }
}

impl State {
    /// A fresh listing replaces the entries. A leader key the old entries had and the listing
    /// lacks was deleted while the watch was down: as vanished as one a watch event deleted.
    fn relisted(&mut self, entries: Entries, now: std::time::Instant) {
        match (self.entries.get("leader"), entries.get("leader")) {
            (Some(old), None) => self.vanished = Some(Vanished::of(old, now)),
            (_, Some(_)) => self.vanished = None,
            (None, None) => {}
        }
        self.entries = entries;
    }
}

/// What the watch task and the backend share.
pub(super) type Shared = WatchCache<State>;

impl WatchCache<State> {
    pub(super) fn empty() -> Self {
        WatchCache::new(State::default(), 1)
    }

    /// The cached view, if the watch is established.
    pub(super) fn view(&self) -> Option<ClusterView> {
        let c = self.lock();
        c.healthy().then(|| view_of(&c.entries))
    }

    /// The last deleted leader key, while no leader key has been written since.
    pub(super) fn vanished(&self) -> Option<Vanished> {
        self.lock().vanished.clone()
    }

    /// Records the result of the lease check of the vanished leader key `v`.
    pub(super) fn set_vanished_lease(&self, v: &Vanished, ttl: Option<std::time::Duration>) {
        let mut c = self.lock();
        if let Some(cur) = c.vanished.as_mut()
            && cur.lease == v.lease
            && cur.seen == v.seen
        {
            cur.lease_ttl = Some(ttl);
        }
    }

    /// The cached entry for `key`, `Some(None)` if known absent, `None` if the cache is not healthy.
    pub(super) fn entry(&self, key: &str) -> Option<Option<Entry>> {
        let c = self.lock();
        c.healthy().then(|| c.entries.get(key).cloned())
    }
}

/// Converts a range/watch key-value into a cache entry, if it lies under `prefix`.
pub(super) fn entry_of(prefix: &str, kv: &KeyValue) -> Option<(String, Entry)> {
    let rel = keys::relative(prefix, kv.key())?;
    let key = String::from_utf8_lossy(rel).into_owned();
    Some((
        key,
        Entry {
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        },
    ))
}

/// Parses entries through the shared model.
pub(super) fn view_of(entries: &Entries) -> ClusterView {
    let owned: Vec<(&str, String, Version)> = entries
        .iter()
        .map(|(k, e)| {
            (
                k.as_str(),
                String::from_utf8_lossy(&e.value).into_owned(),
                Version(e.mod_revision.to_string()),
            )
        })
        .collect();
    ClusterView::from_raw(
        owned
            .iter()
            .map(|(k, v, ver)| (*k, v.as_str(), ver.clone())),
    )
}

/// The watch task: runs until aborted.
pub(super) async fn run(client: Client, prefix: String, limit: Duration, shared: Arc<Shared>) {
    let what = format!("etcd {prefix}");
    shared
        .run(0, &what, Duration::from_secs(1), || {
            let (client, prefix, shared) = (client.clone(), prefix.clone(), shared.clone());
            async move { list_and_watch(&client, &prefix, limit, &shared).await }
        })
        .await;
}

/// Lists the prefix, watches it from the next revision, applies events. Returns why it stopped.
async fn list_and_watch(client: &Client, prefix: &str, limit: Duration, shared: &Shared) -> String {
    let mut kv = client.kv_client();
    let listed =
        match tokio::time::timeout(limit, kv.get(prefix, Some(GetOptions::new().with_prefix())))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return format!("list failed: {e}"),
            Err(_) => return "list timed out".into(),
        };
    let revision = listed.header().map(|h| h.revision()).unwrap_or_else(|| {
        listed
            .kvs()
            .iter()
            .map(KeyValue::mod_revision)
            .max()
            .unwrap_or(0)
    });
    let mut entries: Entries = listed
        .kvs()
        .iter()
        .filter_map(|kv| entry_of(prefix, kv))
        .collect();

    let mut wc = client.watch_client();
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision.saturating_add(1));
    let mut stream = match tokio::time::timeout(limit, wc.watch(prefix, Some(opts))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("watch failed: {e}"),
        Err(_) => return "watch timed out".into(),
    };

    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return "watch stream closed".into(),
            Err(e) => return format!("watch stream error: {e}"),
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            return format!(
                "watch cancelled (compacted at {}): {}",
                resp.compact_revision(),
                resp.cancel_reason()
            );
        }
        if resp.created() {
            // Established: from now on every change after `revision` reaches us.
            let mut st = shared.lock();
            st.relisted(std::mem::take(&mut entries), std::time::Instant::now());
            st.establish(0);
            drop(st);
            shared.bump();
        }
        if resp.events().is_empty() {
            continue;
        }
        let mut st = shared.lock();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => {
                    if let Some((k, e)) = entry_of(prefix, kv) {
                        if k == "leader" {
                            st.vanished = None;
                        }
                        st.entries.insert(k, e);
                    }
                }
                EventType::Delete => {
                    if let Some(rel) = keys::relative(prefix, kv.key()) {
                        let key = String::from_utf8_lossy(rel);
                        if let Some(old) = st.entries.remove(key.as_ref())
                            && key == "leader"
                        {
                            st.vanished = Some(Vanished::of(&old, std::time::Instant::now()));
                        }
                    }
                }
            }
        }
        drop(st);
        shared.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &str, lease: i64) -> Entry {
        Entry {
            value: value.as_bytes().to_vec(),
            mod_revision: 7,
            lease,
        }
    }

    #[test]
    fn a_leader_key_deleted_while_the_watch_was_down_is_vanished() {
        let mut st = State::default();
        let now = std::time::Instant::now();
        st.relisted(Entries::from([("leader".into(), entry("m0", 42))]), now);
        assert_eq!(st.vanished, None);
        // The stream broke; meanwhile the key was deleted by hand: the next listing lacks it.
        st.relisted(Entries::from([("config".into(), entry("{}", 0))]), now);
        let v = st.vanished.clone().expect("vanished");
        assert_eq!((v.holder.as_str(), v.lease), ("m0", 42));
        // Listed again without it: still the same vanished key.
        st.relisted(Entries::new(), now);
        assert_eq!(st.vanished, Some(v));
        // A leader key again: nothing vanished any more.
        st.relisted(Entries::from([("leader".into(), entry("m1", 43))]), now);
        assert_eq!(st.vanished, None);
    }
}
