//! Gathering an observation: the store's view, PostgreSQL's facts, and peers' answers.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::peer_client::PeerClient;
use crate::dcs::Member;
use crate::ha::{Countdown, DataDir, PeerFacts, PeerReport, PgFacts};
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
        let standby_signal = self.processes.has_file("standby.signal");
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
                let data = match pg.data_dir_state().await {
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
                        ) && !self.processes.has_file("backup_label"),
                    },
                };
                let up = pg.is_running();
                let foreign = up && pg.is_foreign();
                let status = if up {
                    tokio::time::timeout_at(self.bound_within(Duration::from_secs(2)), pg.status())
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
                self.seen.up = self.processes.postmaster_alive();
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
            synchronous_standby_names: status.and_then(|s| s.synchronous_standby_names.clone()),
            replication: status.map(|s| s.replication.clone()).unwrap_or_default(),
            // While a task holds the handle, the last look decides (a task only ever starts
            // our own child).
            supervised: !(self.seen.up && self.seen.foreign),
        }
    }

    /// Asks peers for `GET /patroni` concurrently, each bounded by two seconds (Patroni's).
    pub(crate) async fn probe_peers(&self, names: &[String]) -> PeerReport {
        let members: BTreeMap<String, Member> = self
            .view
            .as_ref()
            .map(|v| v.members.clone())
            .unwrap_or_default();
        // A member the failsafe key lists may have no member key (it expired with its session).
        let failsafe = self.view.as_ref().and_then(|v| v.failsafe.clone());
        let targets = names
            .iter()
            .map(|name| {
                let url = members
                    .get(name)
                    .and_then(|m| m.api_url.clone())
                    .or_else(|| failsafe.as_ref().and_then(|f| f.get(name).cloned()));
                (name.clone(), url)
            })
            .collect();
        self.peers.probe(targets).await
    }
}

/// Probes every `(name, api_url)` at once: the whole probe takes as long as the slowest peer
/// (at most its two-second bound), not the sum. A peer without a URL, or that does not answer
/// in time, is `None`.
pub(crate) async fn probe_all(
    client: &PeerClient,
    targets: Vec<(String, Option<String>)>,
) -> PeerReport {
    let probes = targets.into_iter().map(|(name, url)| async move {
        let facts = match url {
            Some(url) => probe_one(client, &url).await,
            None => None,
        };
        (name, facts)
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .collect()
}

/// Failsafe mode's `POST /failsafe` to every target at once (Patroni: 2 s, one retry); the
/// names that did not accept. The URL is the member's `api_url` with `/patroni` replaced.
pub(crate) async fn confirm_failsafe_all(
    client: &PeerClient,
    targets: Vec<(String, String)>,
    body: &serde_json::Value,
) -> Vec<String> {
    let asks = targets.into_iter().map(|(name, api_url)| async move {
        let url = match api_url.strip_suffix("/patroni") {
            Some(base) => format!("{base}/failsafe"),
            None => format!("{}/failsafe", api_url.trim_end_matches('/')),
        };
        for _ in 0..2 {
            let Ok(request) = client.for_url(&url).map(|c| c.post(&url)) else {
                break;
            };
            let sent = request
                .timeout(Duration::from_secs(2))
                .json(body)
                .send()
                .await;
            if let Ok(r) = sent {
                // An answer other than 200 is a refusal: asking again changes nothing.
                return r.status().is_success().then_some(()).ok_or(name);
            }
        }
        Err(name)
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

async fn probe_one(client: &PeerClient, url: &str) -> Option<PeerFacts> {
    let resp = client
        .get(url)
        .ok()?
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = resp.json().await.ok()?;
    Some(peer_facts(&v))
}

/// How far `scheduled_at` (a failover key's, as Patroni writes it) is from `now`.
pub fn countdown(scheduled_at: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> Countdown {
    use crate::api::cluster::{Schedule, parse_schedule};
    let Some(at) = scheduled_at else {
        return Countdown::Unscheduled;
    };
    let Schedule::At(t) = parse_schedule(at) else {
        return Countdown::Unreadable;
    };
    let ahead = t.with_timezone(&chrono::Utc) - now;
    match (ahead.to_std(), (-ahead).to_std()) {
        (Ok(d), _) => Countdown::In(d),
        (_, Ok(d)) => Countdown::Passed(d),
        _ => Countdown::Unreadable,
    }
}

/// Reads a peer's status document (Patroni's or ours).
pub fn peer_facts(v: &serde_json::Value) -> PeerFacts {
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
        // "promoted": Patroni's (and pgwarden's) role while a promotion is under way.
        is_primary: matches!(role, "primary" | "master" | "promoted"),
        wal_position,
        timeline: v.get("timeline").and_then(|t| t.as_u64()),
        // A peer whose required watchdog is unusable cannot become the primary (Patroni's
        // `watchdog_failed`): it is weighed like a nofailover one.
        nofailover: crate::dcs::model::tags_nofailover(tags)
            || v.get("watchdog_failed").and_then(|w| w.as_bool()) == Some(true),
        failover_priority: crate::dcs::model::tags_failover_priority(tags),
        running: state == "running",
        starting: state == "starting",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_counts_down_on_the_wall_clock() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let s = Duration::from_secs;
        assert_eq!(countdown(None, now), Countdown::Unscheduled);
        assert_eq!(
            countdown(Some("2026-12-02T10:00:30+00:00"), now),
            Countdown::In(s(30))
        );
        assert_eq!(
            countdown(Some("2026-12-02T11:59:50+02:00"), now),
            Countdown::Passed(s(10))
        );
        assert_eq!(countdown(Some("soon"), now), Countdown::Unreadable);
        assert_eq!(
            countdown(Some("2026-12-02T10:00:30"), now),
            Countdown::Unreadable,
            "no zone: Patroni refuses it too"
        );
    }

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

    /// A fake peer: answers one `GET /patroni` per connection, but only once `arrived` has
    /// seen `expected` requests (across all fake peers), so it answers only if it is asked
    /// while the others are being asked too.
    async fn stalling_peer(arrived: std::sync::Arc<tokio::sync::Barrier>, wal: u64) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/patroni", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(req.starts_with(b"GET /patroni "), "{req:?}");
                    arrived.wait().await;
                    let body = format!(
                        r#"{{"state": "running", "role": "replica", "xlog": {{"received_location": {wal}}}}}"#
                    );
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn peers_are_probed_concurrently() {
        // Each peer answers only after both requests have arrived: probed one after the
        // other, the first would time out (2 s) before the second is even asked.
        let arrived = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let a = stalling_peer(arrived.clone(), 100).await;
        let b = stalling_peer(arrived.clone(), 200).await;
        let client = PeerClient::plain(None, None);
        let report = probe_all(
            &client,
            vec![
                ("a".into(), Some(a)),
                ("b".into(), Some(b)),
                ("no-url".into(), None),
            ],
        )
        .await;
        assert_eq!(report.len(), 3);
        let wal = |n: &str| report[n].as_ref().map(|f| f.wal_position);
        assert_eq!(wal("a"), Some(100), "{report:?}");
        assert_eq!(wal("b"), Some(200), "{report:?}");
        assert!(report["no-url"].is_none());
    }
}
