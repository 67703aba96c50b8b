//! Patroni's configuration: `patroni.yml` (a file, a directory of YAML files or `PATRONI_CONFIGURATION`),
//! `PATRONI_*` environment overrides, validation, and the dynamic configuration kept in the DCS.
//!
//! A configuration that works with Patroni 3.x/4.x loads unchanged. Errors are one line naming the
//! key; keys Patroni would not know are returned by [`unknown_keys`] for the caller to warn about.

mod addr;
mod dynamic;
mod effective;
mod env;
mod error;
mod kubernetes;
mod load;
mod local;
mod types;
mod unknown;
mod value;
mod watchdog;
mod yaml;

pub use dynamic::{DynamicConfig, SyncMode};
pub use effective::{effective_parameters, effective_pg_hba, effective_use_pg_rewind};
pub use error::ConfigError;
pub use kubernetes::{Kubernetes, KubernetesPort};
pub use load::{
    apply_env_overrides, load, load_from_env_only, load_from_str, load_with_env, process_env,
};
pub use types::{
    BasicAuth, Bootstrap, Config, CtlConfig, Etcd3, InitdbOption, PgAuthentication, PgUser,
    Postgresql, RestApi,
};
pub use unknown::unknown_keys;
pub use watchdog::{Watchdog, WatchdogMode};

#[cfg(test)]
mod tests;
