//! A test cluster's etcd: the members' `etcd3` section, the test's observer, the leader key.

use std::time::Duration;

use pgwarden::dcs::etcd::{EtcdDcs, EtcdSettings};

use super::etcd_support::EtcdServer;

pub(super) fn dcs_section(etcd: &EtcdServer) -> String {
    pgwarden::demo::etcd3_section(etcd.endpoint().trim_start_matches("http://"))
}

pub(super) async fn observer(etcd: &EtcdServer, scope: &str) -> EtcdDcs {
    EtcdDcs::connect(EtcdSettings {
        endpoints: vec![etcd.endpoint()],
        namespace: "/service".into(),
        scope: scope.into(),
        name: "test-observer".into(),
        ttl: Duration::from_secs(30),
        retry_timeout: Duration::from_secs(3),
        username: None,
        password: None,
    })
    .await
    .expect("observer connects")
}

pub(super) async fn delete_leader_key(etcd: &EtcdServer, scope: &str) {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd client");
    let r = client
        .delete(format!("/service/{scope}/leader"), None)
        .await
        .expect("delete the leader key");
    assert_eq!(r.deleted(), 1);
}
