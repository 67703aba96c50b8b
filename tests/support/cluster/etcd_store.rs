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
    let deleted = try_delete_leader_key(etcd, scope)
        .await
        .expect("delete the leader key");
    assert_eq!(deleted, 1);
}

/// The leader key's value (the holder's name) as the test reads it straight from the store;
/// `None` when nobody holds it, an error when the store does not answer within 2 s.
pub(super) async fn leader(etcd: &EtcdServer, scope: &str) -> Result<Option<String>, String> {
    let read = async {
        let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .map_err(|e| e.to_string())?;
        let r = client
            .get(format!("/service/{scope}/leader"), None)
            .await
            .map_err(|e| e.to_string())?;
        match r.kvs().first() {
            None => Ok(None),
            Some(kv) => kv
                .value_str()
                .map(|v| Some(v.to_owned()))
                .map_err(|e| e.to_string()),
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .map_err(|_| "etcd did not answer in 2 s".to_string())?
}

/// Deletes the leader key; how many keys went (0: nobody held it).
pub(super) async fn try_delete_leader_key(etcd: &EtcdServer, scope: &str) -> Result<i64, String> {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .map_err(|e| e.to_string())?;
    let r = client
        .delete(format!("/service/{scope}/leader"), None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.deleted())
}
