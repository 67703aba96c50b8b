//! Split-brain paths on the Kubernetes backend (real kube-apiserver, real PostgreSQL 15).

#[path = "k8s/harness.rs"]
mod harness;
#[path = "support/k8s.rs"]
mod k8s;

use std::time::{Duration, Instant};

use harness::{K8sCluster, Timings};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::DeleteParams;

/// The Lease deleted by hand (`kubectl delete lease`): the holder stops writing at once, well
/// before its deadline, instead of carrying on until a renewal that answers 404, which it
/// counted as a store error that keeps the old deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_deleted_stops_writing() {
    if !harness::pg_available() {
        return;
    }
    let t = Timings {
        ttl: 30,
        loop_wait: 2,
        retry_timeout: 3,
    };
    let client = k8s::admin().await;
    let ns = k8s::fresh_namespace(&client, "safety").await;
    let mut c = K8sCluster::new("k8sdel", 2, &t, &k8s::kubeconfig(), ns).await;
    c.spawn_all();
    let long = Duration::from_secs(120);
    let l = c.writable_leader(long).await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.ns);
    let deleted = Instant::now();
    leases
        .delete(&format!("{}-leader", c.scope), &DeleteParams::default())
        .await
        .expect("delete the Lease");
    c.wait_for(
        "the old leader to refuse writes",
        Duration::from_secs(20),
        || async { (!c.writable(l).await).then_some(()) },
    )
    .await;
    eprintln!(
        "the old leader stopped writing {:?} after the deletion",
        deleted.elapsed()
    );
    let n = c.writable_leader(long).await;
    for i in 0..2 {
        if i != n {
            assert!(
                !c.writable(i).await,
                "member {i} is writable beside member {n}"
            );
        }
    }
}
