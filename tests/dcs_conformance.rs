//! The `Dcs` contract (tests/support/conformance/) run against each backend: the in-memory
//! store, a real etcd, a real kube-apiserver. One test per backend; they run in parallel, each
//! on clusters (scopes, namespaces) of its own.
//!
//! etcd: skipped with a note when no etcd binary exists, failed under `CI=true`. Kubernetes:
//! `PGWARDEN_TEST_KUBECONFIG`, else a control plane started by `tests/k8s/cluster.sh`; skipped
//! with a note when it cannot be had, failed under `CI=true`.

#[path = "support/conformance/mod.rs"]
mod conformance;
#[path = "support/etcd.rs"]
mod etcd_support;
#[path = "support/k8s.rs"]
mod k8s;
#[path = "support/poll.rs"]
mod poll;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use pgwarden::config::Kubernetes;
use pgwarden::dcs::Dcs;
use pgwarden::dcs::etcd::{EtcdDcs, EtcdSettings};
use pgwarden::dcs::kubernetes::{KubernetesDcs, KubernetesSettings};
use pgwarden::dcs::mem::{MemDcs, MemStore};

use conformance::{Backend, Cluster};
use etcd_support::EtcdServer;

/// How long a backend may take to establish its watches.
const WATCH_LIMIT: Duration = Duration::from_secs(30);

async fn until_watching(what: &str, watching: impl Fn() -> bool) {
    let start = Instant::now();
    while !watching() {
        assert!(
            start.elapsed() < WATCH_LIMIT,
            "{what}: watch not established"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `MemStore` per cluster.
#[derive(Default)]
struct Mem {
    stores: Mutex<BTreeMap<String, Arc<Mutex<MemStore>>>>,
}

impl Mem {
    fn store(&self, c: &Cluster) -> Arc<Mutex<MemStore>> {
        let mut stores = self.stores.lock().unwrap();
        stores.entry(c.scope.clone()).or_default().clone()
    }
}

#[async_trait]
impl Backend for Mem {
    async fn cluster(&self, tag: &str) -> Cluster {
        Cluster {
            scope: tag.into(),
            space: String::new(),
        }
    }
    async fn neighbour(&self, _of: &Cluster, scope: &str) -> Cluster {
        self.cluster(scope).await
    }
    async fn member(&self, c: &Cluster, name: &str, ttl: Duration) -> Arc<dyn Dcs> {
        Arc::new(MemDcs::new(self.store(c), name, ttl))
    }
    async fn delete_lock(&self, c: &Cluster) {
        let store = self.store(c);
        let now = MemDcs::new(store.clone(), "operator", Duration::ZERO).clock();
        store.lock().unwrap().delete("leader", now);
    }
}

/// One etcd server; clusters are scopes under one key namespace.
struct Etcd {
    server: EtcdServer,
}

const ETCD_NAMESPACE: &str = "/conformance";

#[async_trait]
impl Backend for Etcd {
    async fn cluster(&self, tag: &str) -> Cluster {
        Cluster {
            scope: tag.into(),
            space: ETCD_NAMESPACE.into(),
        }
    }
    async fn neighbour(&self, of: &Cluster, scope: &str) -> Cluster {
        Cluster {
            scope: scope.into(),
            space: of.space.clone(),
        }
    }
    async fn member(&self, c: &Cluster, name: &str, ttl: Duration) -> Arc<dyn Dcs> {
        let d = EtcdDcs::connect(EtcdSettings {
            endpoints: vec![self.server.endpoint()],
            namespace: c.space.clone(),
            scope: c.scope.clone(),
            name: name.into(),
            ttl,
            retry_timeout: Duration::from_secs(5),
            username: None,
            password: None,
        })
        .await
        .expect("connect to etcd");
        until_watching(name, || d.watching()).await;
        Arc::new(d)
    }
    async fn delete_lock(&self, c: &Cluster) {
        let mut raw = etcd_client::Client::connect([self.server.endpoint()], None)
            .await
            .expect("raw etcd client");
        let key = format!("{}/{}/leader", c.space, c.scope);
        let r = raw.delete(key.as_str(), None).await.expect("delete");
        assert_eq!(r.deleted(), 1, "{key} was there to delete");
    }
}

/// A kube-apiserver; each cluster in a namespace of its own, a neighbour beside it. Members are
/// Pods named like them, created on first use.
struct K8s {
    client: kube::Client,
    namespaces: Mutex<BTreeSet<String>>,
}

#[async_trait]
impl Backend for K8s {
    async fn cluster(&self, tag: &str) -> Cluster {
        let ns = k8s::fresh_namespace(&self.client, &format!("dcs-{tag}")).await;
        assert!(
            self.namespaces.lock().unwrap().insert(ns.clone()),
            "{ns}: reused"
        );
        Cluster {
            scope: tag.into(),
            space: ns,
        }
    }
    async fn neighbour(&self, of: &Cluster, scope: &str) -> Cluster {
        Cluster {
            scope: scope.into(),
            space: of.space.clone(),
        }
    }
    async fn member(&self, c: &Cluster, name: &str, ttl: Duration) -> Arc<dyn Dcs> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &c.space);
        if pods.get_opt(name).await.expect("read pod").is_none() {
            let labels = [("cluster-name".to_owned(), c.scope.clone())].into();
            k8s::create_pod(&self.client, &c.space, name, labels, "10.1.0.1").await;
        }
        let d = KubernetesDcs::with_client(
            self.client.clone(),
            KubernetesSettings {
                k8s: Kubernetes {
                    namespace: c.space.clone(),
                    ..Kubernetes::default()
                },
                scope: c.scope.clone(),
                name: name.into(),
                ttl,
                retry_timeout: Duration::from_secs(5),
            },
        )
        .expect("kubernetes member");
        until_watching(name, || d.watching()).await;
        Arc::new(d)
    }
    async fn delete_lock(&self, c: &Cluster) {
        Api::<Lease>::namespaced(self.client.clone(), &c.space)
            .delete(&format!("{}-leader", c.scope), &DeleteParams::default())
            .await
            .expect("delete the Lease");
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store_keeps_the_contract() {
    conformance::run_all("mem", &Mem::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keeps_the_contract() {
    let Some(server) = EtcdServer::start_or_skip("etcd_keeps_the_contract").await else {
        return;
    };
    conformance::run_all("etcd", &Etcd { server }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_keeps_the_contract() {
    let kubeconfig = match k8s::try_kubeconfig() {
        Ok(p) => p,
        Err(e) if ci() => panic!("kubernetes_keeps_the_contract: {e}"),
        Err(e) => {
            eprintln!("SKIPPED kubernetes_keeps_the_contract: {e}");
            return;
        }
    };
    let backend = K8s {
        client: k8s::client_from(&kubeconfig).await,
        namespaces: Mutex::default(),
    };
    conformance::run_all("kubernetes", &backend).await;
}
