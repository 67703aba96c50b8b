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
use super::netns::TestNet;

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
    /// Boxed: far larger than an etcd.
    Kubernetes(Box<KubeNamespace>),
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
            Backend::Kubernetes(ControlPlane::Shared) => Some(Store::Kubernetes(Box::new(
                KubeNamespace::create(&k8s::kubeconfig(), None, scope, dir).await,
            ))),
            Backend::Kubernetes(ControlPlane::Own) => {
                let own = k8s::OwnControlPlane::start(scope);
                let admin = own.kubeconfig();
                Some(Store::Kubernetes(Box::new(
                    KubeNamespace::create(&admin, Some(own), scope, dir).await,
                )))
            }
        }
    }

    /// Starts the store in the store host of `net`, where the members reach it through
    /// proxies at the gateway (whose address its certificate names, on Kubernetes).
    pub(super) async fn start_in(
        backend: Backend,
        scope: &str,
        dir: &Path,
        net: &TestNet,
    ) -> Option<Store> {
        let (ns, addr) = (net.store_ns_path(), net.store_addr());
        match backend {
            Backend::Etcd => EtcdServer::start_or_skip_in(scope, &ns, &addr)
                .await
                .map(Store::Etcd),
            Backend::Kubernetes(_) => {
                let own = tokio::task::block_in_place(|| {
                    k8s::OwnControlPlane::start_in(scope, &ns, &addr, &[net.gateway()])
                });
                let admin = own.kubeconfig();
                Some(Store::Kubernetes(Box::new(
                    KubeNamespace::create(&admin, Some(own), scope, dir).await,
                )))
            }
        }
    }

    /// Where the store takes clients, `host:port`: a proxy's upstream.
    pub(super) fn client_addr(&self) -> String {
        match self {
            Store::Etcd(e) => e.client_addr(),
            Store::Kubernetes(k) => k.own_control_plane().api_addr(),
        }
    }

    /// The `dcs` section of the configuration of the member at `host` whose PostgreSQL
    /// listens on `pg_port`, reaching the store through `via` when given.
    pub(super) fn dcs_section(&self, pg_port: u16, host: &str, via: Option<&str>) -> String {
        match self {
            Store::Etcd(e) => match via {
                Some(via) => pgwarden::demo::etcd3_section(via),
                None => etcd_store::dcs_section(e),
            },
            Store::Kubernetes(k) => k.dcs_section(pg_port, host),
        }
    }

    /// What the store needs in a member's environment; `via`: as in [`Store::dcs_section`].
    pub(super) fn member_env(&self, cmd: &mut Command, via: Option<&str>) {
        if let Store::Kubernetes(k) = self {
            k.member_env(cmd, via);
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
    pub(super) async fn add_member(&mut self, name: &str, index: usize, host: &str) {
        if let Store::Kubernetes(k) = self {
            k.add_pod(name, index, host).await;
        }
    }

    /// Deletes the leader lock; why not, when it could not (nobody held it, the store did
    /// not answer).
    pub(super) async fn try_delete_leader_lock(&self, scope: &str) -> Result<(), String> {
        match self {
            Store::Etcd(e) => match etcd_store::try_delete_leader_key(e, scope).await? {
                0 => Err("no leader key".into()),
                _ => Ok(()),
            },
            Store::Kubernetes(k) => k.try_delete_lease().await,
        }
    }

    /// Who holds the leader lock, read by the test straight from the store (`patroni`: the
    /// lock is Patroni 3.0.2's, a ConfigMap's annotation on Kubernetes).
    pub(super) async fn leader(
        &self,
        scope: &str,
        patroni: bool,
    ) -> Result<Option<String>, String> {
        match self {
            Store::Etcd(e) => etcd_store::leader(e, scope).await,
            Store::Kubernetes(k) => k.lock_holder(patroni).await,
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
