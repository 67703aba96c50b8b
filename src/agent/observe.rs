//! Gathering an observation: the store's view, PostgreSQL's facts, and peers' answers.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::dcs::Member;
use crate::ha::{DataDir, PeerFacts, PeerReport, PgFacts};
use crate::postgres::{DataDirState, PgStatus};

use super::Agent;

/// What PostgreSQL looked like at the last successful look.
#[derive(Debug, Clone, Default)]
pub(crate) struct PgSeen {
    pub data: Option<DataDir>,
    pub status: Option<PgStatus>,
    pub up: bool,
    /// The running postmaster is not our child.
    pub foreign: bool,
}

impl Agent {
    /// PostgreSQL's facts, without ever waiting on a task: while a task holds the handle, the
    /// facts come from files (postmaster.pid, standby.signal) and the last look.
    pub(crate) async fn observe_pg(&mut self) -> PgFacts {
        let data_dir = self.cfg.postgresql.data_dir.clone();
        let standby_signal = data_dir.join("standby.signal").exists();
        // With no task in flight the handle is free (or about to be: a task reports its end
        // just before letting go of it), so wait for it: the core must not decide on stale
        // facts. With a task in flight, never wait.
        let handle = if self.core.task_in_flight().is_none() {
            Ok(self.pg.clone().lock_owned().await)
        } else {
            self.pg.clone().try_lock_owned()
        };
        match handle {
            Ok(mut pg) => {
                let data = match pg.data_dir_state() {
                    DataDirState::Empty => DataDir::Empty,
                    DataDirState::Invalid(r) => DataDir::Invalid(r),
                    DataDirState::Initialized(cd) => DataDir::Ready {
                        sysid: cd.sysid.clone(),
                        // A fresh base backup carries the primary's control file ("in
                        // production") and a backup_label: it is a replica-to-be, not a former
                        // primary, and must never be crash-recovered on its own.
                        was_primary: matches!(
                            cd.cluster_state.as_str(),
                            "in production" | "shut down"
                        ) && !data_dir.join("backup_label").exists(),
                    },
                };
                let up = pg.is_running();
                let foreign = up && pg.foreign_postmaster().is_some();
                let status = if up {
                    tokio::time::timeout(Duration::from_secs(2), pg.status())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                self.seen = PgSeen {
                    data: Some(data),
                    status,
                    up,
                    foreign,
                };
            }
            Err(_) => {
                self.seen.up = super::fence::postmaster_pid(&data_dir).is_some();
                self.seen.status = None;
            }
        }
        let status = self.seen.status.as_ref();
        let in_recovery = match status {
            Some(s) => Some(s.in_recovery),
            // A server started with standby.signal cannot accept writes until promoted.
            None if self.seen.up && standby_signal => Some(true),
            None => None,
        };
        PgFacts {
            data: self
                .seen
                .data
                .clone()
                .unwrap_or(DataDir::Invalid("not inspected yet".into())),
            up: self.seen.up,
            in_recovery: if self.seen.up { in_recovery } else { None },
            timeline: status.map(|s| s.timeline),
            wal_position: status.map(|s| s.wal_position).unwrap_or(0),
            upstream: if self.seen.up {
                self.upstream.clone()
            } else {
                None
            },
            streaming: status.and_then(|s| s.replication_state.as_deref()) == Some("streaming"),
            // While a task holds the handle, the last look decides (a task only ever starts
            // our own child).
            supervised: !(self.seen.up && self.seen.foreign),
        }
    }

    /// Asks peers for `GET /patroni` in parallel, each bounded by two seconds (Patroni's).
    pub(crate) async fn probe_peers(&self, names: &[String]) -> PeerReport {
        let members: BTreeMap<String, Member> = self
            .view
            .as_ref()
            .map(|v| v.members.clone())
            .unwrap_or_default();
        let futures = names.iter().map(|name| {
            let url = members.get(name).and_then(|m| m.api_url.clone());
            let client = self.http.clone();
            let name = name.clone();
            async move {
                let facts = match url {
                    Some(url) => probe_one(&client, &url).await,
                    None => None,
                };
                (name, facts)
            }
        });
        futures_join_all(futures).await.into_iter().collect()
    }
}

async fn futures_join_all<F: std::future::Future>(
    fs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = fs.into_iter().collect();
    let mut out = Vec::with_capacity(handles.len());
    // Each probe is bounded; run them concurrently on this task.
    let mut set = Vec::new();
    for f in handles {
        set.push(Box::pin(f));
    }
    for f in set {
        out.push(f.await);
    }
    out
}

async fn probe_one(client: &reqwest::Client, url: &str) -> Option<PeerFacts> {
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = resp.json().await.ok()?;
    Some(peer_facts(&v))
}

/// Reads a peer's status document (Patroni's or ours).
pub(crate) fn peer_facts(v: &serde_json::Value) -> PeerFacts {
    let role = v.get("role").and_then(|r| r.as_str()).unwrap_or("");
    let state = v.get("state").and_then(|r| r.as_str()).unwrap_or("");
    let xlog = v.get("xlog");
    let num = |k: &str| {
        xlog.and_then(|x| x.get(k))
            .and_then(|n| n.as_u64())
            .unwrap_or(0)
    };
    let wal_position = num("location")
        .max(num("received_location"))
        .max(num("replayed_location"));
    let tags = v.get("tags").and_then(|t| t.as_object());
    PeerFacts {
        is_primary: matches!(role, "primary" | "master"),
        wal_position,
        nofailover: crate::dcs::model::tags_nofailover(tags),
        failover_priority: crate::dcs::model::tags_failover_priority(tags),
        running: state == "running",
        starting: state == "starting",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_patroni_status_documents() {
        let replica: serde_json::Value = serde_json::from_str(
            r#"{"state": "running", "role": "replica", "xlog": {"received_location": 67108960, "replayed_location": 67108900, "replayed_timestamp": null, "paused": false}, "timeline": 1}"#,
        )
        .unwrap();
        let f = peer_facts(&replica);
        assert!(!f.is_primary && f.running);
        assert_eq!(f.wal_position, 67108960);
        let primary: serde_json::Value =
            serde_json::from_str(r#"{"state": "running", "role": "master", "xlog": {"location": 5}, "tags": {"nofailover": true}}"#).unwrap();
        let f = peer_facts(&primary);
        assert!(f.is_primary && f.nofailover);
    }
}
