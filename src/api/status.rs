//! The status document: `GET /patroni` and the body of every health GET (patroni-compat §1.3).
//!
//! Field order follows Patroni (`get_postgresql_status` then `_write_status_response`). The
//! document is data-driven: fields the agent left unset (PostgreSQL down) are omitted, so a
//! stopped member reports only `state`, `role`, `dcs_last_seen`, ... as Patroni does.
//! Differences from Patroni: `tags` are sorted by key; `pending_restart_reason`,
//! `scheduled_restart` and the logger counters are not reported yet.

use serde_json::Value;
use tokio::time::Instant;

use super::json::{Node, Obj};
use super::state::Snapshot;

/// Builds the status document of `s` at `now`.
pub fn status_document(s: &Snapshot, now: Instant) -> Obj {
    let pg = &s.pg;
    let st = pg.status.as_ref();
    let mut o = Obj::new();
    o.push("state", pg.state.as_str());
    if let Some(st) = st {
        o.push("postmaster_start_time", st.postmaster_start_time.as_str());
    }
    o.push("role", pg.role.as_str());
    if let Some(st) = st {
        o.push("server_version", st.server_version);
        let xlog = if st.in_recovery {
            Obj::new()
                .with("received_location", s.received_location())
                .with("replayed_location", s.replayed_location())
                .with(
                    "replayed_timestamp",
                    st.replayed_timestamp
                        .clone()
                        .map(Value::String)
                        .unwrap_or(Value::Null),
                )
                .with("paused", st.replay_paused)
        } else {
            Obj::new().with("location", st.wal_position)
        };
        o.push("xlog", xlog);
        o.push("timeline", st.timeline);
    }
    if let Some(r) = pg.replication_state() {
        o.push("replication_state", r);
    }
    let replication = st.map(|st| st.replication.as_slice()).unwrap_or_default();
    if !replication.is_empty() {
        let rows = replication
            .iter()
            .map(|r| {
                Node::Obj(
                    Obj::new()
                        .with("usename", r.usename.as_str())
                        .with("application_name", r.application_name.as_str())
                        .with(
                            "client_addr",
                            r.client_addr
                                .clone()
                                .map(Value::String)
                                .unwrap_or(Value::Null),
                        )
                        .with("state", r.state.as_str())
                        .with("sync_state", r.sync_state.as_str())
                        .with("sync_priority", r.sync_priority),
                )
            })
            .collect();
        o.push("replication", Node::Arr(rows));
    }
    let cluster = s.valid_cluster(now);
    if cluster.is_none_or(|c| c.leader.is_none()) {
        o.push("cluster_unlocked", true);
    }
    o.push("dcs_last_seen", s.dcs_last_seen.unwrap_or(0));
    if s.failsafe_active {
        o.push("failsafe_mode_is_active", true);
    }
    if s.pause {
        o.push("pause", true);
    }
    match s.sync_flags(now) {
        (true, _) => o.push("sync_standby", true),
        (_, true) => o.push("quorum_standby", true),
        _ => {}
    }
    if !s.tags.is_empty() {
        o.push("tags", Value::Object(s.tags.clone()));
    }
    if let Some(id) = &pg.sysid {
        o.push("database_system_identifier", id.as_str());
    }
    if pg.pending_restart() {
        o.push("pending_restart", true);
    }
    o.push(
        "patroni",
        Obj::new()
            .with("version", s.version.as_str())
            .with("scope", s.scope.as_str())
            .with("name", s.name.as_str()),
    );
    if s.watchdog_failed {
        o.push("watchdog_failed", true);
    }
    o
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::json::to_python_json;
    use crate::api::state::PgView;
    use crate::dcs::model::{ClusterView, Version};
    use crate::postgres::{PgStatus, ReplicationRow};
    use std::time::Duration;

    /// Reads a copied Patroni 3.0.2 capture: (first line, body).
    pub(crate) fn capture(name: &str) -> (String, String) {
        let path = format!("{}/tests/fixtures/api/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let (head, body) = text.split_once('\n').unwrap();
        (head.to_owned(), body.trim_end_matches('\n').to_owned())
    }

    /// A `ClusterView` from one of the copied `*.etcd.json` dumps.
    pub(crate) fn etcd_view(name: &str) -> ClusterView {
        let path = format!("{}/tests/fixtures/api/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        let entries: Vec<(String, String)> = map
            .into_iter()
            .map(|(k, v)| {
                (
                    k.trim_start_matches("/service/bars/").to_owned(),
                    v.as_str().unwrap().to_owned(),
                )
            })
            .collect();
        ClusterView::from_raw(
            entries
                .iter()
                .enumerate()
                .map(|(i, (k, v))| (k.as_str(), v.as_str(), Version(i.to_string()))),
        )
    }

    fn base(now: Instant) -> Snapshot {
        let mut s = Snapshot::new("bars", "m0");
        s.version = "3.0.2".into();
        s.cluster = Some(etcd_view("01-steady-sync-mode.etcd.json"));
        s.cluster_valid_until = Some(now + Duration::from_secs(30));
        s.dcs_last_seen = Some(1795497229);
        s.pg = PgView {
            state: "running".into(),
            role: "master".into(),
            status: Some(PgStatus {
                server_version: 150018,
                postmaster_start_time: "2026-11-24 05:13:38.632305+00:00".into(),
                timeline: 1,
                wal_position: 67108960,
                replication: ["m1", "m2"]
                    .iter()
                    .map(|n| ReplicationRow {
                        usename: "repl".into(),
                        application_name: (*n).into(),
                        client_addr: Some("127.0.0.1".into()),
                        state: "streaming".into(),
                        sync_state: "async".into(),
                        sync_priority: 0,
                        ack_lsn: Some(67108960),
                    })
                    .collect(),
                ..PgStatus::default()
            }),
            sysid: Some("7711601831702346954".into()),
        };
        s
    }

    /// 3.0.2 has no `patroni.name`; pgwarden adds it (as Patroni ≥ 3.1 does).
    fn with_name(capture: &str, name: &str) -> String {
        capture.replace(
            r#""scope": "bars"}"#,
            &format!(r#""scope": "bars", "name": "{name}"}}"#),
        )
    }

    #[test]
    fn leader_document_matches_capture_byte_for_byte() {
        let now = Instant::now();
        let s = base(now);
        let (head, body) = capture("leader-patroni.txt");
        assert_eq!(head, "GET /patroni -> 200");
        assert_eq!(
            to_python_json(&status_document(&s, now)),
            with_name(&body, "m0")
        );
    }

    #[test]
    fn pending_restart_document_matches_capture() {
        let now = Instant::now();
        let mut s = base(now);
        s.dcs_last_seen = Some(1795497237);
        let st = s.pg.status.as_mut().unwrap();
        st.wal_position = 67109000;
        st.replication[0].sync_state = "sync".into();
        st.replication[0].sync_priority = 1;
        st.pending_restart = true;
        let (_, body) = capture("leader-patroni-pending-restart.txt");
        assert_eq!(
            to_python_json(&status_document(&s, now)),
            with_name(&body, "m0")
        );
    }

    #[test]
    fn replica_document_matches_capture() {
        let now = Instant::now();
        let mut s = base(now);
        s.name = "m1".into();
        s.pg.role = "replica".into();
        let st = s.pg.status.as_mut().unwrap();
        st.postmaster_start_time = "2026-11-24 05:13:40.660957+00:00".into();
        st.in_recovery = true;
        st.receive_lsn = Some(67108960);
        st.replay_lsn = Some(67108960);
        st.replication.clear();
        let (_, body) = capture("replica-patroni.txt");
        assert_eq!(
            to_python_json(&status_document(&s, now)),
            with_name(&body, "m1")
        );
    }

    #[test]
    fn optional_flags() {
        let now = Instant::now();
        let mut s = base(now);
        // Expired view: unlocked as far as the API knows.
        s.cluster_valid_until = Some(now);
        s.pause = true;
        s.failsafe_active = true;
        s.watchdog_failed = true;
        s.tags.insert("nofailover".into(), true.into());
        let doc = status_document(&s, now);
        let keys = doc.keys();
        for k in [
            "cluster_unlocked",
            "pause",
            "failsafe_mode_is_active",
            "tags",
            "watchdog_failed",
        ] {
            assert!(keys.contains(&k), "{k} missing in {keys:?}");
        }
        assert_eq!(keys.last(), Some(&"watchdog_failed"));
        // PostgreSQL down: only what is known.
        let mut down = Snapshot::new("bars", "m0");
        down.pg.role = "replica".into();
        let doc = status_document(&down, now);
        assert_eq!(
            doc.keys(),
            [
                "state",
                "role",
                "cluster_unlocked",
                "dcs_last_seen",
                "patroni"
            ]
        );
    }
}
