//! A test cluster's namespace on a real kube-apiserver: a Pod object per member (nothing runs
//! it: the member is a process on loopback that reports itself in it), the kubeconfig the
//! members use, and what only this store shows: the Lease and the Pods' role labels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use pgwarden::config::Kubernetes;
use pgwarden::dcs::kubernetes::{KubernetesDcs, KubernetesSettings};

use super::Timings;
use super::k8s;

pub struct KubeNamespace {
    /// The control plane's admin.
    pub client: kube::Client,
    pub ns: String,
    /// What the members use (see [`KubeNamespace::use_token`]).
    pub kubeconfig: PathBuf,
    admin_kubeconfig: PathBuf,
    /// Where the members' kubeconfigs are written (the cluster's directory).
    dir: PathBuf,
    scope: String,
    pods: Vec<String>,
    /// Declared last: stopped after everything above is dropped.
    own_control_plane: Option<k8s::OwnControlPlane>,
}

impl KubeNamespace {
    /// A fresh namespace on the control plane of `admin_kubeconfig` (`own`, when it is the
    /// cluster's own); the members use the admin's credentials until
    /// [`KubeNamespace::use_token`].
    pub(super) async fn create(
        admin_kubeconfig: &Path,
        own: Option<k8s::OwnControlPlane>,
        scope: &str,
        dir: &Path,
    ) -> KubeNamespace {
        let client = k8s::client_from(admin_kubeconfig).await;
        let ns = k8s::fresh_namespace(&client, scope).await;
        KubeNamespace {
            client,
            ns,
            kubeconfig: k8s::member_kubeconfig(dir, admin_kubeconfig, None),
            admin_kubeconfig: admin_kubeconfig.to_owned(),
            dir: dir.to_owned(),
            scope: scope.into(),
            pods: Vec::new(),
            own_control_plane: own,
        }
    }

    /// The control plane of a cluster created with `ControlPlane::Own`, to pause it.
    pub fn own_control_plane(&self) -> &k8s::OwnControlPlane {
        self.own_control_plane.as_ref().expect(
            "a control plane of the cluster's own (pausing the shared one stops every test)",
        )
    }

    /// Replaces the kubeconfig members use (e.g. with a ServiceAccount token); members
    /// spawned afterwards use it.
    pub fn use_token(&mut self, token: &str) {
        self.kubeconfig = k8s::member_kubeconfig(&self.dir, &self.admin_kubeconfig, Some(token));
    }

    /// The Pod of the `index`th member, `name`, at `host`; on loopback, every Pod gets an
    /// address of its own (the member itself is reached on loopback: `pod_ip` in its
    /// configuration).
    pub(super) async fn add_pod(&mut self, name: &str, index: usize, host: &str) {
        let labels: BTreeMap<String, String> = [
            ("cluster-name".to_owned(), self.scope.clone()),
            ("application".to_owned(), "pgwarden-it".to_owned()),
        ]
        .into();
        let ip = if host == "127.0.0.1" {
            format!("10.9.0.{}", index + 1)
        } else {
            host.to_owned()
        };
        k8s::create_pod(&self.client, &self.ns, name, labels, &ip).await;
        self.pods.push(name.into());
    }

    pub(super) fn dcs_section(&self, pg_port: u16, host: &str) -> String {
        format!(
            "kubernetes:\n  namespace: {ns}\n  labels:\n    application: pgwarden-it\n  pod_ip: {host}\n  ports:\n  - name: postgresql\n    port: {pg_port}\n",
            ns = self.ns
        )
    }

    /// The members' kubeconfig, naming the API server at `via` (`host:port`, a proxy in front
    /// of it) when given. Without `KUBERNETES_SERVICE_HOST`: were the tests run in a Pod, a
    /// member would take that Pod's in-cluster credentials instead (as Patroni decides).
    pub(super) fn member_env(&self, cmd: &mut Command, via: Option<&str>) {
        let kubeconfig = match via {
            None => self.kubeconfig.clone(),
            Some(via) => self.kubeconfig_via(via),
        };
        cmd.env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
    }

    /// A copy of the members' kubeconfig whose server is `https://<via>`.
    fn kubeconfig_via(&self, via: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("members' kubeconfig");
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .expect("a server line")
            .trim()
            .to_owned();
        let path = self
            .dir
            .join(format!("kubeconfig-via-{}", via.replace(':', "-")));
        std::fs::write(&path, text.replace(&server, &format!("https://{via}"))).unwrap();
        path
    }

    pub(super) fn observer(&self, scope: &str, t: &Timings) -> KubernetesDcs {
        KubernetesDcs::with_client(
            self.client.clone(),
            KubernetesSettings {
                k8s: Kubernetes {
                    namespace: self.ns.clone(),
                    ..Kubernetes::default()
                },
                scope: scope.into(),
                name: "test-observer".into(),
                ttl: Duration::from_secs(t.ttl),
                retry_timeout: Duration::from_secs(5),
            },
        )
        .expect("observer")
    }

    fn lease_name(&self) -> String {
        format!("{}-leader", self.scope)
    }

    pub(super) async fn delete_lease(&self) {
        self.try_delete_lease().await.expect("delete the Lease");
    }

    /// Deletes the ConfigMap `name` (Patroni 3.0.2 keeps its leader lock in `<scope>-leader`).
    pub async fn try_delete_configmap(&self, name: &str) -> Result<(), String> {
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(self.client.clone(), &self.ns)
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub(super) async fn try_delete_lease(&self) -> Result<(), String> {
        Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .delete(&self.lease_name(), &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub async fn lease(&self) -> Option<Lease> {
        Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&self.lease_name())
            .await
            .ok()
            .flatten()
    }

    /// The lock's holder as the test reads it from the API server: the Lease's
    /// `holderIdentity` (pgwarden), or the `leader` annotation of the `<scope>-leader`
    /// ConfigMap (`in_configmap`: Patroni 3.0.2); an error when the server does not answer.
    pub async fn lock_holder(&self, in_configmap: bool) -> Result<Option<String>, String> {
        let read = async {
            if in_configmap {
                let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
                    self.client.clone(),
                    &self.ns,
                )
                .get_opt(&self.lease_name())
                .await
                .map_err(|e| e.to_string())?;
                Ok(cm
                    .and_then(|c| c.metadata.annotations)
                    .and_then(|a| a.get("leader").cloned()))
            } else {
                let lease = Api::<Lease>::namespaced(self.client.clone(), &self.ns)
                    .get_opt(&self.lease_name())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
            }
        };
        tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .map_err(|_| "the API server did not answer in 2 s".to_string())?
            .map(|h: Option<String>| h.filter(|h| !h.is_empty()))
    }

    /// `(holder, leaseTransitions)` of the Lease.
    pub async fn lease_state(&self) -> Option<(Option<String>, i32)> {
        let s = self.lease().await?.spec?;
        Some((s.holder_identity, s.lease_transitions.unwrap_or(0)))
    }

    /// Role labels of all member pods.
    pub async fn role_labels(&self) -> BTreeMap<String, Option<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let mut out = BTreeMap::new();
        for name in &self.pods {
            let l = pods
                .get(name)
                .await
                .ok()
                .and_then(|p| p.metadata.labels)
                .and_then(|l| l.get("role").cloned());
            out.insert(name.clone(), l);
        }
        out
    }

    /// Labels say `leader` is the primary and every member in `replicas` a replica.
    pub async fn labels_are(&self, leader: &str, replicas: &[&str]) -> bool {
        let l = self.role_labels().await;
        l.get(leader).cloned().flatten().as_deref() == Some("primary")
            && replicas
                .iter()
                .all(|r| l.get(*r).cloned().flatten().as_deref() == Some("replica"))
    }
}
