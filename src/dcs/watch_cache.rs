//! The watch-fed copy of a store that both real backends keep (etcd: the cluster's prefix;
//! Kubernetes: its Lease, ConfigMaps and Pods).
//!
//! The block holds what the two have in common: the cached state, which of its watch streams
//! are established, the change counter the HA loop sleeps on, a request to list again, and the
//! loop that lists and watches again with back-off whenever a stream ends. What is cached, and
//! how one stream is listed and watched, stay in each backend. Reads are answered from the
//! cache only while every stream is established ([`Cached::healthy`]).

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// The first pause before listing again; it doubles up to the backend's maximum and starts
/// over once a stream was established again.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A watch-fed cache of state `S`, fed by a fixed number of streams.
pub(crate) struct WatchCache<S> {
    cached: Mutex<Cached<S>>,
    changes: watch::Sender<u64>,
    relist: Notify,
}

/// The state and the health of its streams, behind one lock: a reader never sees the entries
/// of one listing with the health of another.
pub(crate) struct Cached<S> {
    state: S,
    established: Vec<bool>,
}

impl<S> Cached<S> {
    /// Whether every stream is established, so the state is current.
    pub(crate) fn healthy(&self) -> bool {
        self.established.iter().all(|e| *e)
    }

    /// Marks `stream` established: its listing is in the state and its watch runs.
    pub(crate) fn establish(&mut self, stream: usize) {
        self.established[stream] = true;
    }
}

impl<S> Deref for Cached<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S> DerefMut for Cached<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.state
    }
}

impl<S> WatchCache<S> {
    /// An empty, unhealthy cache of `streams` streams.
    pub(crate) fn new(state: S, streams: usize) -> Self {
        WatchCache {
            cached: Mutex::new(Cached {
                state,
                established: vec![false; streams],
            }),
            changes: watch::channel(0).0,
            relist: Notify::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Cached<S>> {
        // A poisoned lock only means a panic elsewhere; the state itself is still consistent.
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the HA loop the cache changed.
    pub(crate) fn bump(&self) {
        self.changes.send_modify(|c| *c = c.wrapping_add(1));
    }

    /// A receiver that wakes on every change (and on every change of health).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether every stream is established.
    pub(crate) fn healthy(&self) -> bool {
        self.lock().healthy()
    }

    /// The store looks unreachable to a request: stop answering from the cache and make every
    /// stream list again (which also proves the connection before the cache is trusted again).
    pub(crate) fn invalidate(&self) {
        let was = {
            let mut c = self.lock();
            let was = c.healthy();
            c.established.iter_mut().for_each(|e| *e = false);
            was
        };
        if was {
            self.bump();
        }
        self.relist.notify_waiters();
    }

    /// Marks `stream` down; returns whether it was established.
    fn lose(&self, stream: usize) -> bool {
        let was = std::mem::replace(&mut self.lock().established[stream], false);
        if was {
            self.bump();
        }
        was
    }

    /// Runs stream `stream` until the task is aborted: `attempt` lists and watches (calling
    /// [`Cached::establish`] once the watch runs) and returns why it stopped; then the stream is
    /// down, and after a pause (doubling up to `max_backoff` while attempts fail) it starts over.
    pub(crate) async fn run<F, Fut>(
        &self,
        stream: usize,
        what: &str,
        max_backoff: Duration,
        mut attempt: F,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = String>,
    {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let reason = tokio::select! {
                r = attempt() => r,
                _ = self.relist.notified() => "relist requested".to_owned(),
            };
            if self.lose(stream) {
                backoff = FIRST_BACKOFF;
            }
            tracing::debug!(%what, %reason, "watch ended; listing again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn healthy_only_when_every_stream_is_established() {
        let c = WatchCache::new(0u32, 2);
        assert!(!c.healthy());
        c.lock().establish(0);
        assert!(!c.healthy());
        c.lock().establish(1);
        assert!(c.healthy());
        let rx = c.subscribe();
        c.invalidate();
        assert!(!c.healthy());
        assert!(rx.has_changed().unwrap(), "losing health is a change");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_stream_backs_off_and_an_established_one_starts_over() {
        let c = Arc::new(WatchCache::new((), 1));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (c2, n) = (c.clone(), attempts.clone());
        let task = tokio::spawn(async move {
            c2.run(0, "test", Duration::from_millis(400), || {
                let (c, n) = (c2.clone(), n.clone());
                async move {
                    // The fourth attempt establishes and then fails; the others fail at once.
                    if n.fetch_add(1, Ordering::SeqCst) == 3 {
                        c.lock().establish(0);
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    "failed".to_owned()
                }
            })
            .await
        });
        let at = |ms| tokio::time::sleep(Duration::from_millis(ms));
        // Attempts at 0, 100, 300 (back-off 100, 200), then 700 (capped at 400).
        at(50).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        at(100).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        at(200).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        at(400).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 4);
        assert!(c.healthy());
        // Established at 700, down at 10 700: the pause starts over at 100 ms.
        at(10_000).await;
        assert!(!c.healthy());
        assert_eq!(attempts.load(Ordering::SeqCst), 4);
        at(100).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 5);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_ends_a_running_watch() {
        let c = Arc::new(WatchCache::new((), 1));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (c2, n) = (c.clone(), attempts.clone());
        let task = tokio::spawn(async move {
            c2.run(0, "test", Duration::from_secs(1), || {
                let (c, n) = (c2.clone(), n.clone());
                async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    c.lock().establish(0);
                    std::future::pending::<String>().await
                }
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(c.healthy());
        c.invalidate();
        assert!(!c.healthy());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "listed again");
        assert!(c.healthy());
        task.abort();
    }
}
