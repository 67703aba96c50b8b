//! pgwarden under a ServiceAccount token bound to exactly the Role documented in
//! docs/kubernetes.md: bootstrap, labels, and a switchover (which releases the Lease) work.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{Backend, Cluster, ControlPlane, Timings, k8s};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use reqwest::Method;

const T: Timings = Timings {
    ttl: 8,
    loop_wait: 1,
    retry_timeout: 3,
};

fn documented_role() -> Role {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/kubernetes.md"))
        .unwrap();
    let block = doc
        .split("<!-- role:begin -->")
        .nth(1)
        .and_then(|s| s.split("<!-- role:end -->").next())
        .expect("the Role block in docs/kubernetes.md");
    let yaml = block
        .trim()
        .trim_start_matches("```yaml")
        .trim_end_matches("```");
    serde_norway::from_str(yaml).expect("the documented Role parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_under_the_documented_role() {
    let shared = Backend::Kubernetes(ControlPlane::Shared);
    let Some(mut c) = Cluster::prepare(shared, "k8srbac", 3, T).await else {
        return;
    };
    let (admin, ns) = (c.kubernetes().client.clone(), c.kubernetes().ns.clone());
    let pp = PostParams::default();
    let role = documented_role();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&pp, &role)
        .await
        .unwrap();
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("pgwarden".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    sas.create(&pp, &sa).await.unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("pgwarden".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "pgwarden".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "pgwarden".into(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&pp, &binding)
        .await
        .unwrap();
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = sas
        .create_token_request("pgwarden", &pp, &tr)
        .await
        .unwrap()
        .status
        .expect("token")
        .token
        .expect("token");

    c.kubernetes_mut().use_token(&token);
    // The token really is that narrow: it cannot read Secrets.
    let sa_client = k8s::client_from(&c.kubernetes().kubeconfig).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(sa_client, &ns);
    assert!(
        secrets.list(&Default::default()).await.is_err(),
        "the SA must not list secrets"
    );

    c.spawn_all();
    let long = Duration::from_secs(120);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    let others: Vec<&str> = ["m0", "m1", "m2"]
        .into_iter()
        .filter(|m| *m != leader)
        .collect();
    c.wait_for("role labels", long, || async {
        c.kubernetes()
            .labels_are(&leader, &others)
            .await
            .then_some(())
    })
    .await;
    for m in &others {
        c.wait_for(&format!("{m} streaming"), long, || async {
            c.view()
                .await
                .and_then(|v| v.members.get(*m).cloned())
                .and_then(|x| x.replication_state)
                .map(|_| ())
        })
        .await;
    }
    let l = c.index(&leader);
    let target = others[0];
    let body = format!(r#"{{"leader": "{leader}", "candidate": "{target}"}}"#);
    let (code, text) = c.api(l, Method::POST, "/switchover", Some(&body)).await;
    assert_eq!(code, 200, "{text}");
    let t = c.index(target);
    c.wait_for("writes on the new primary", long, || async {
        c.writable(t).await.then_some(())
    })
    .await;
    for i in 0..3 {
        let log = std::fs::read_to_string(c.log_path(i)).unwrap_or_default();
        assert!(
            !log.contains("Forbidden") && !log.contains("forbidden"),
            "member {i} was refused something:\n{log}"
        );
    }
}
