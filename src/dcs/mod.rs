//! The distributed configuration store: where the cluster's shared state and the leader lock live.
//!
//! [`Dcs`] is what the agent needs from a store; `etcd` implements it on etcd v3 with Patroni's
//! key layout, `kubernetes` on a Lease and ConfigMaps, `mem` in memory for tests and the
//! simulation. All backends parse values through [`model::ClusterView::from_raw`], so they agree
//! on what a value means, and `tests/dcs_conformance.rs` holds each of them to the contract
//! below.

pub mod etcd;
pub mod kubernetes;
pub mod mem;
pub mod model;
mod watch_cache;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use model::{
    ClusterView, Failover, HistoryLine, Member, Status, SyncState, Version, Versioned,
};

/// A failed store operation. Losing a compare-and-set race is not an error: those calls return
/// `Ok(false)`.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// The store did not answer in time or the connection failed.
    #[error("DCS is not accessible: {0}")]
    Unreachable(String),
    /// The store answered with an error.
    #[error("DCS error: {0}")]
    Failed(String),
}

/// The cluster's store, seen by one member (`name`) of one cluster (`scope`).
///
/// Calls are bounded by the backend's own timeout (`retry_timeout`); the agent adds a tighter
/// deadline where the lease requires it (ha-safety rule 3).
#[async_trait]
pub trait Dcs: Send + Sync {
    /// The cluster as last seen. `fresh` forces a read from the store; otherwise the backend
    /// may answer from its watch-fed cache.
    async fn load(&self, fresh: bool) -> Result<ClusterView, DcsError>;

    /// A counter that moves whenever another member (or an expiry) changes something under the
    /// cluster's prefix; the agent waits on it instead of polling. Whether this member's own
    /// writes move it is up to the backend.
    fn changes(&self) -> watch::Receiver<u64>;

    /// The lock's lifetime for the next lease this member takes (from dynamic `ttl`).
    fn set_ttl(&self, ttl: Duration);

    /// Writes this member's key, bound to the member's session (expires with it; on Kubernetes
    /// the Pod's annotation, which lives as long as the Pod).
    async fn touch_member(&self, member: &Member) -> Result<(), DcsError>;

    /// Takes the leader lock if nobody holds it, for a full ttl from about the call. Also
    /// `Ok(true)` when this member holds it already, renewed and still the same instance (its
    /// version unchanged): an acquisition whose answer was lost must not read as lost.
    /// `Ok(false)`: somebody else holds it.
    async fn acquire_leader(&self) -> Result<bool, DcsError>;

    /// Renews the lock this member holds and, when given, writes the `status` key.
    /// `Ok(false)`: the lock is not ours (any more), and nothing is written. Never creates the
    /// lock: one deleted behind the holder's back is lost.
    async fn update_leader(&self, status: Option<&Status>) -> Result<bool, DcsError>;

    /// Releases the lock if this member holds it, writing the last position to `status` first.
    /// With `expected`, only that instance of the lock (its version as seen; renewals keep it,
    /// except one that moves the key to a new lease after a ttl change, on etcd and in memory):
    /// a release that arrives late must not delete a lock taken again since. A release that
    /// releases nothing writes nothing.
    async fn release_leader(
        &self,
        status: Option<&Status>,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError>;

    /// The `initialize` key: `create_new` races with create-if-absent, and the claimant claiming
    /// again (same value) wins again, which is how one whose answer was lost finds its claim;
    /// otherwise it overwrites, which ends the claim.
    async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError>;

    /// Deletes the `initialize` key after a failed bootstrap.
    async fn cancel_initialization(&self) -> Result<(), DcsError>;

    /// Writes `config`; with `expected`, only if its version is still that one.
    async fn set_config(&self, json: &str, expected: Option<&Version>) -> Result<bool, DcsError>;

    /// Writes `failover`; with `expected`, only if its version is still that one.
    async fn set_failover(
        &self,
        value: &Failover,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError>;

    /// Writes `history`.
    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError>;

    /// Writes `sync`; with `expected`, only if its version is still that one.
    async fn set_sync(
        &self,
        value: &SyncState,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError>;

    /// Writes the `failsafe` key (Patroni's `{"name": "api_url", ...}`), only while this member
    /// holds the leader lock: `Ok(false)` when it does not (nothing written), so that a deposed
    /// leader never rewrites the topology its successor published.
    async fn set_failsafe(&self, value: &BTreeMap<String, String>) -> Result<bool, DcsError>;

    /// Deletes every key of the cluster (`patronictl remove`); on Kubernetes the member Pods'
    /// annotations stay, as with Patroni.
    async fn delete_cluster(&self) -> Result<(), DcsError>;

    /// Deletes this member's key (clean shutdown).
    async fn delete_member(&self) -> Result<(), DcsError>;
}
