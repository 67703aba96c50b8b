//! The store a test cluster runs on, chosen when it is created, and everything about a cluster
//! that depends on it: how the store is started or reached, the `dcs` section of a member's
//! configuration, the member's environment, the test's own observer, a member's Pod, and the
//! leader lock deleted by hand.

use std::path::Path;
use std::process::Command;

use pgwarden::dcs::Dcs;

use super::Timings;
use super::etcd_store;
use super::etcd_support::EtcdServer;
use super::k8s;
use super::kube_namespace::KubeNamespace;

/// The store a cluster is created on.
pub enum Backend {
    /// A throwaway etcd of the cluster's own.
    Etcd,
    /// A fresh namespace on a real kube-apiserver.
    Kubernetes(ControlPlane),
}

/// Which control plane a cluster on Kubernetes uses.
pub enum ControlPlane {
    /// The one the tests share (`support/k8s.rs`: `PGWARDEN_TEST_KUBECONFIG`, or started on
    /// first use).
    Shared,
    /// One of the cluster's own, started with it and stopped when it is dropped: for a test
    /// that pauses it.
    Own,
}

impl Backend {
    /// A short name for the cluster's directory.
    pub fn tag(&self) -> &'static str {
        match self {
            Backend::Etcd => "etcd",
            Backend::Kubernetes(_) => "k8s",
        }
    }
}

/// The started store of a cluster.
pub enum Store {
    Etcd(EtcdServer),
    Kubernetes(KubeNamespace),
}

impl Store {
    /// Starts or reaches the store; etcd listens for members at `host` too. `None` (skip)
    /// when etcd is missing outside CI; a control plane that cannot be had fails the test, as
    /// every Kubernetes test does.
    pub(super) async fn start(
        backend: Backend,
        scope: &str,
        dir: &Path,
        host: &str,
    ) -> Option<Store> {
        match backend {
            Backend::Etcd => EtcdServer::start_or_skip_on(scope, host)
                .await
                .map(Store::Etcd),
            Backend::Kubernetes(ControlPlane::Shared) => Some(Store::Kubernetes(
                KubeNamespace::create(&k8s::kubeconfig(), None, scope, dir).await,
            )),
            Backend::Kubernetes(ControlPlane::Own) => {
                let own = k8s::OwnControlPlane::start(scope);
                let admin = own.kubeconfig();
                Some(Store::Kubernetes(
                    KubeNamespace::create(&admin, Some(own), scope, dir).await,
                ))
            }
        }
    }

    /// The `dcs` section of the configuration of the member whose PostgreSQL listens on
    /// `pg_port`.
    pub(super) fn dcs_section(&self, pg_port: u16) -> String {
        match self {
            Store::Etcd(e) => etcd_store::dcs_section(e),
            Store::Kubernetes(k) => k.dcs_section(pg_port),
        }
    }

    /// What the store needs in a member's environment.
    pub(super) fn member_env(&self, cmd: &mut Command) {
        if let Store::Kubernetes(k) = self {
            k.member_env(cmd);
        }
    }

    /// The test's own view of the store, as a member named `test-observer`.
    pub(super) async fn observer(&self, scope: &str, t: &Timings) -> Box<dyn Dcs> {
        match self {
            Store::Etcd(e) => Box::new(etcd_store::observer(e, scope).await),
            Store::Kubernetes(k) => Box::new(k.observer(scope, t)),
        }
    }

    /// What the store holds for a member before it starts: its Pod, on Kubernetes.
    pub(super) async fn add_member(&mut self, name: &str, index: usize) {
        if let Store::Kubernetes(k) = self {
            k.add_pod(name, index).await;
        }
    }

    pub(super) async fn delete_leader_lock(&self, scope: &str) {
        match self {
            Store::Etcd(e) => etcd_store::delete_leader_key(e, scope).await,
            Store::Kubernetes(k) => k.delete_lease().await,
        }
    }

    /// What a failed wait prints beside the view: on Kubernetes the Pods' role labels, which
    /// the view does not show.
    pub(super) async fn diagnostics(&self) -> String {
        match self {
            Store::Etcd(_) => String::new(),
            Store::Kubernetes(k) => format!("; labels: {:?}", k.role_labels().await),
        }
    }
}
