//! Patroni's REST API, answered from a snapshot the agent keeps fresh.
//!
//! - [`state`]: the [`Snapshot`] the agent publishes, [`ApiState`], [`ApiCommand`], [`ApiContext`];
//! - [`status`]: the status document (`GET /patroni`, body of the health checks);
//! - [`health`]: the health router and the probes, pure functions of a snapshot and `now`;
//! - [`cluster`]: `GET /cluster` rendering and schedule parsing;
//! - [`switchover`]: `POST /switchover` and `POST /failover`;
//! - [`config`]: `PATCH`/`PUT /config`;
//! - [`restart`]: `POST`/`DELETE /restart`, scheduled restarts;
//! - [`access`]: allowlist, client certificates and basic authentication on unsafe requests;
//! - [`tls`]: rustls for the server and for requests to other members;
//! - [`metrics`]: `GET /metrics`;
//! - [`server`]: dispatch, reply formats, body rules, [`serve`];
//! - [`json`]: ordered objects and Python's `json.dumps` layout.
//!
//! Only `/cluster`, `/switchover` and `/failover` (and `/history`, `/config` when the cached view
//! has expired) touch the DCS while a request waits; nothing ever waits on PostgreSQL.

pub mod access;
pub mod cluster;
pub mod config;
pub mod health;
pub mod json;
pub mod metrics;
pub mod peer_client;
pub mod restart;
pub mod server;
pub mod state;
pub mod status;
pub mod switchover;
pub mod tls;

pub use access::Access;
pub use health::health_code;
pub use server::{
    MAX_BODY_BYTES, ServeOptions, is_protected, router, router_with, serve, serve_with,
};
pub use state::{ApiCommand, ApiContext, ApiState, FailsafePing, PgView, Reply, Snapshot};
