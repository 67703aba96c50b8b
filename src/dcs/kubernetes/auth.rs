//! Where the API server is and who we are to it.
//!
//! Inside a pod (`KUBERNETES_SERVICE_HOST` set, as Patroni decides) the service account's token
//! and CA; kube-client re-reads the token file every minute, so a rotated token is picked up.
//! Outside a pod, `KUBECONFIG` (or `~/.kube/config`).

use kube::config::{Config, KubeConfigOptions};

use crate::dcs::DcsError;

/// A client for the cluster this process runs against.
pub(super) async fn client() -> Result<kube::Client, DcsError> {
    let cfg = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Config::incluster()
            .map_err(|e| DcsError::Failed(format!("kubernetes: in-cluster configuration: {e}")))?
    } else {
        Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|e| DcsError::Failed(format!("kubernetes: kubeconfig: {e}")))?
    };
    kube::Client::try_from(cfg)
        .map_err(|e| DcsError::Failed(format!("kubernetes: building the client: {e}")))
}
