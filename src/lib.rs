//! pgwarden: a high-availability agent for PostgreSQL, compatible with Patroni.
//!
//! Module map (each directory holds one concern):
//! - [`config`]: Patroni's YAML configuration, `PATRONI_*` overrides, validation, dynamic merge.
//! - [`dcs`]: the distributed store: a byte-compatible data model, the [`dcs::Dcs`] trait,
//!   the etcd v3 backend and an in-memory backend for the simulation.
//! - [`ha`]: the pure decision engine (no I/O, no clock, no randomness).
//! - [`postgres`]: the supervised PostgreSQL server: process, control commands, queries.
//! - [`api`]: Patroni's REST API.
//! - [`agent`]: the tokio shell that feeds observations to [`ha`] and carries out its actions.
//! - [`ctl`]: the `patronictl`-compatible command line.
//! - [`demo`]: `pgwarden demo`, a local three-member cluster.

pub mod agent;
pub mod api;
pub mod config;
pub mod ctl;
pub mod dcs;
pub mod demo;
pub mod ha;
pub mod logging;
pub mod postgres;
pub mod util;
