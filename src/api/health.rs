//! The health router (patroni-compat §1.4) and the probes (§1.5), as pure functions of the
//! snapshot and `now`.
//!
//! Kept Patroni quirks: paths are matched by substring, first rule wins (`/foo-replica-bar` is a
//! replica check); an unknown path is 503, never 404; `/` means `/primary`; query values that
//! are empty are ignored (Python's `parse_qs`), the first of repeated keys wins.

use tokio::time::Instant;

use super::state::Snapshot;

/// A parsed query string (`application/x-www-form-urlencoded`, as `parse_qs`: blank values and
/// keys without `=` are dropped, `+` is a space, `%XX` decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    /// Parses a raw query string (without the `?`).
    pub fn parse(raw: &str) -> Query {
        let pairs = raw
            .split(['&', ';'])
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                let (k, v) = (percent_decode(k), percent_decode(v));
                (!v.is_empty()).then_some((k, v))
            })
            .collect();
        Query(pairs)
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every key, first occurrence only, in order (linear: queries come from anyone).
    fn first_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut seen = std::collections::HashSet::new();
        self.0
            .iter()
            .filter(move |(k, _)| seen.insert(k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Patroni's `parse_int(value, 'B')`: an integer or decimal number with an optional unit
/// `B`, `kB`, `MB`, `GB`, `TB` (powers of 1024, case as PostgreSQL writes them). `None` if it
/// does not parse (callers then treat the lag as unlimited).
pub fn parse_bytes(value: &str) -> Option<i128> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: i128 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    if let Ok(n) = num.parse::<i64>() {
        return Some(i128::from(n) * mult);
    }
    let f: f64 = num.parse().ok()?;
    let r = (f * mult as f64).round();
    (r.is_finite() && r.abs() < 1e30).then_some(r as i128)
}

/// Codes of the three lock-dependent checks.
struct LeaderCodes {
    leader: u16,
    primary: u16,
    standby_leader: u16,
}

fn code(ok: bool) -> u16 {
    if ok { 200 } else { 503 }
}

/// `replica_ok`: no `noloadbalance`, role `replica`, state `running`, not lagging beyond
/// `?lag=`, and `?replication_state=` matching when given.
fn replica_code(query: &Query, s: &Snapshot) -> u16 {
    let max_lag = query
        .get("lag")
        .and_then(parse_bytes)
        .unwrap_or(i128::MAX / 4);
    let optime = i128::from(s.leader_optime.unwrap_or(0));
    let lagging = optime != 0 && optime > i128::from(s.replayed_location()) + max_lag;
    let state_ok = query
        .get("replication_state")
        .is_none_or(|want| s.pg.replication_state() == Some(want));
    code(
        !s.noloadbalance()
            && !lagging
            && state_ok
            && s.pg.role == "replica"
            && s.pg.state == "running",
    )
}

fn leader_codes(s: &Snapshot, now: Instant) -> (LeaderCodes, bool) {
    let role = s.pg.role.as_str();
    if s.valid_cluster(now).is_none() && s.pause {
        let c = LeaderCodes {
            leader: code(matches!(role, "primary" | "standby_leader")),
            primary: code(role == "primary"),
            standby_leader: code(role == "standby_leader"),
        };
        return (c, false);
    }
    if s.is_leader(now) {
        if s.is_standby_cluster() {
            let c = LeaderCodes {
                leader: 200,
                primary: 503,
                standby_leader: code(matches!(role, "replica" | "standby_leader")),
            };
            // In a standby cluster the standby leader is never a load-balanced replica.
            return (c, true);
        }
        return (
            LeaderCodes {
                leader: 200,
                primary: 200,
                standby_leader: 503,
            },
            false,
        );
    }
    (
        LeaderCodes {
            leader: 503,
            primary: 503,
            standby_leader: 503,
        },
        false,
    )
}

/// The health router: the status code for a GET/HEAD/OPTIONS of `path` (without the query
/// string) with `query` (raw, without `?`).
pub fn health_code(path: &str, query: &str, s: &Snapshot, now: Instant) -> u16 {
    let query = Query::parse(query);
    let path = if path == "/" { "/primary" } else { path };
    let (lc, replica_forced_down) = leader_codes(s, now);
    let replica = if replica_forced_down {
        503
    } else {
        replica_code(&query, s)
    };
    let leaderish = lc.primary == 200 || lc.standby_leader == 200;

    let mut ignore_tags = false;
    let status = if path.contains("standby_leader") || path.contains("standby-leader") {
        ignore_tags = true;
        lc.standby_leader
    } else if path.contains("leader") {
        ignore_tags = true;
        lc.leader
    } else if path.contains("master") || path.contains("primary") || path.contains("read-write") {
        ignore_tags = true;
        lc.primary
    } else if path.contains("replica") {
        replica
    } else if path.contains("read-only") && !path.contains("sync") && !path.contains("quorum") {
        if leaderish { 200 } else { replica }
    } else if path.contains("health") {
        code(s.pg.state == "running")
    } else if s.valid_cluster(now).is_some() {
        let (sync, quorum) = s.sync_flags(now);
        match path {
            "/sync" | "/synchronous" if sync => replica,
            "/quorum" if quorum => replica,
            "/async" | "/asynchronous" if !sync && !quorum => replica,
            p if p.starts_with("/read-only") => {
                if leaderish {
                    200
                } else if (p.contains("sync") && sync) || (p.contains("quorum") && quorum) {
                    replica
                } else {
                    503
                }
            }
            _ => 503,
        }
    } else {
        503
    };

    if ignore_tags || status != 200 {
        return status;
    }
    for (k, want) in query.first_pairs() {
        let Some(tag) = k.strip_prefix("tag_") else {
            continue;
        };
        let have = match s.tags.get(tag) {
            None | Some(serde_json::Value::Null) => return 503,
            Some(serde_json::Value::String(v)) => v.clone(),
            Some(other) => other.to_string().to_lowercase(),
        };
        if have != want {
            return 503;
        }
    }
    status
}

/// `GET /liveness`: 200 while paused or while the next HA cycle is no later than `ttl` (running
/// primary) or `2*ttl` (otherwise) overdue.
pub fn liveness_code(s: &Snapshot, now: Instant) -> u16 {
    if s.pause {
        return 200;
    }
    let primary = s.pg.state == "running" && s.pg.role == "primary";
    let grace = if primary { s.ttl } else { s.ttl * 2 };
    code(s.next_cycle_at.is_some_and(|t| t + grace > now))
}

/// `GET /readiness?lag=&mode=apply|write`.
pub fn readiness_code(query: &str, s: &Snapshot, now: Instant) -> u16 {
    if s.is_leader(now) {
        return 200;
    }
    if s.pg.state != "running" || s.pg.replication_state() != Some("streaming") {
        return 503;
    }
    let cluster = s.valid_cluster(now);
    let optime = match (s.leader_optime, cluster.and_then(|c| c.status.as_ref())) {
        (Some(o), _) => o,
        (None, Some(st)) => st.optime,
        (None, None) if cluster.is_some() => 0,
        (None, None) => return code(s.failsafe_active),
    };
    let query = Query::parse(query);
    let max_lag = query
        .get("lag")
        .and_then(parse_bytes)
        .unwrap_or(i128::from(s.maximum_lag_on_failover));
    let position = if query.get("mode") == Some("write") {
        s.received_location()
    } else {
        s.replayed_location()
    };
    code(i128::from(optime) - i128::from(position) <= max_lag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::tests::etcd_view;
    use crate::dcs::model::{SyncState, Version, Versioned};
    use crate::postgres::PgStatus;
    use serde_json::{Value, json};
    use std::time::Duration;

    const S: Duration = Duration::from_secs(1);

    fn primary(now: Instant) -> Snapshot {
        let mut s = Snapshot::new("bars", "m0");
        s.pg.state = "running".into();
        s.pg.role = "primary".into();
        s.pg.status = Some(PgStatus {
            wal_position: 100,
            ..PgStatus::default()
        });
        s.lock_valid_until = Some(now + 10 * S);
        s.cluster = Some(etcd_view("01-steady-sync-mode.etcd.json"));
        s.cluster_valid_until = Some(now + 10 * S);
        s.leader_optime = Some(67108864);
        s
    }

    fn replica(now: Instant, replayed: u64) -> Snapshot {
        let mut s = primary(now);
        s.name = "m1".into();
        s.lock_valid_until = None;
        s.pg.role = "replica".into();
        s.pg.status = Some(PgStatus {
            in_recovery: true,
            wal_position: replayed,
            receive_lsn: Some(replayed),
            replay_lsn: Some(replayed),
            replication_state: Some("streaming".into()),
            ..PgStatus::default()
        });
        s
    }

    fn set_sync(s: &mut Snapshot, mode: Value, members: &str) {
        let c = s.cluster.as_mut().unwrap();
        c.config
            .as_mut()
            .unwrap()
            .value
            .insert("synchronous_mode".into(), mode);
        c.sync = Some(Versioned {
            value: SyncState {
                leader: Some("m0".into()),
                sync_standby: Some(members.into()),
                quorum: None,
            },
            version: Version("9".into()),
        });
    }

    fn codes(s: &Snapshot, now: Instant, paths: &[&str]) -> Vec<u16> {
        paths
            .iter()
            .map(|p| {
                let (path, q) = p.split_once('?').unwrap_or((p, ""));
                health_code(path, q, s, now)
            })
            .collect()
    }

    #[test]
    fn lock_holder_primary() {
        let now = Instant::now();
        let s = primary(now);
        let paths = [
            "/",
            "/primary",
            "/master",
            "/read-write",
            "/leader",
            "/standby-leader",
            "/standby_leader",
            "/replica",
            "/read-only",
            "/health",
            "/sync",
            "/async",
            "/quorum",
            "/read-only-sync",
            "/read-only-quorum",
            "/nonsense",
            "/patroni",
            "/primary?tag_x=1",
        ];
        assert_eq!(
            codes(&s, now, &paths),
            [
                200, 200, 200, 200, 200, 503, 503, 503, 200, 200, 503, 503, 503, 200, 200, 503,
                503, 200
            ]
        );
    }

    #[test]
    fn lock_expired_means_no_primary() {
        let now = Instant::now();
        let mut s = primary(now);
        s.lock_valid_until = Some(now);
        assert_eq!(
            codes(&s, now, &["/primary", "/leader", "/read-only", "/health"]),
            [503, 503, 503, 200]
        );
    }

    #[test]
    fn replica_rows_and_lag_units() {
        let now = Instant::now();
        let optime = 67108864u64;
        let s = replica(now, optime - 16 * 1024);
        let paths = [
            "/replica",
            "/read-only",
            "/primary",
            "/leader",
            "/health",
            "/async",
            "/replica?lag=16kB",
            "/replica?lag=16383",
            "/replica?lag=15kB",
            "/replica?lag=1MB",
            "/replica?lag=64MB",
            "/replica?lag=1GB",
            "/replica?lag=junk",
            "/replica?lag=",
            "/replica?replication_state=streaming",
            "/replica?replication_state=in%20archive%20recovery",
            "/read-only?lag=1kB",
            "/async?lag=1kB",
        ];
        assert_eq!(
            codes(&s, now, &paths),
            [
                200, 200, 503, 503, 200, 200, 200, 503, 503, 200, 200, 200, 200, 200, 200, 503,
                503, 503
            ]
        );
        // Lag is ignored while the leader optime is unknown (Patroni's `leader_optime and ...`).
        let mut s2 = s.clone();
        s2.leader_optime = None;
        assert_eq!(codes(&s2, now, &["/replica?lag=0"]), [200]);
        // Not running, or noloadbalance: no replica traffic.
        let mut s3 = s.clone();
        s3.pg.state = "starting".into();
        assert_eq!(
            codes(&s3, now, &["/replica", "/read-only", "/health"]),
            [503, 503, 503]
        );
        let mut s4 = s.clone();
        s4.tags.insert("noloadbalance".into(), json!(true));
        assert_eq!(codes(&s4, now, &["/replica", "/health"]), [503, 200]);
    }

    #[test]
    fn tag_filters() {
        let now = Instant::now();
        let mut s = replica(now, 67108864);
        s.tags.insert("dc".into(), json!("east"));
        s.tags.insert("clonefrom".into(), json!(true));
        s.tags.insert("weight".into(), json!(1.4));
        let paths = [
            "/replica?tag_dc=east",
            "/replica?tag_dc=west",
            "/replica?tag_missing=1",
            "/replica?tag_clonefrom=true",
            "/replica?tag_clonefrom=True",
            "/replica?tag_weight=1.4",
            "/health?tag_dc=west",
            "/read-only?tag_dc=east&tag_weight=1.4",
            "/replica?tag_dc=east&tag_dc=west",
            "/replica?tag_dc=",
        ];
        assert_eq!(
            codes(&s, now, &paths),
            [200, 503, 503, 200, 503, 200, 503, 200, 200, 200]
        );
        // Tags are ignored on leader checks.
        let mut p = primary(now);
        p.tags.insert("dc".into(), json!("east"));
        assert_eq!(
            codes(
                &p,
                now,
                &[
                    "/leader?tag_dc=west",
                    "/primary?tag_dc=west",
                    "/read-only?tag_dc=west"
                ]
            ),
            [200, 200, 503]
        );
    }

    #[test]
    fn sync_and_quorum() {
        let now = Instant::now();
        let mut s = replica(now, 67108864);
        set_sync(&mut s, json!(true), "m1");
        let paths = [
            "/sync",
            "/synchronous",
            "/async",
            "/asynchronous",
            "/quorum",
            "/read-only-sync",
            "/read-only-synchronous",
            "/read-only-quorum",
            "/read-only",
            "/sync?lag=0",
        ];
        assert_eq!(
            codes(&s, now, &paths),
            [200, 200, 503, 503, 503, 200, 200, 503, 200, 200]
        );
        set_sync(&mut s, json!("quorum"), "m1,m2");
        assert_eq!(
            codes(&s, now, &paths),
            [503, 503, 503, 503, 200, 503, 503, 200, 200, 503]
        );
        set_sync(&mut s, json!(true), "m2");
        assert_eq!(codes(&s, now, &paths[..5]), [503, 503, 200, 200, 503]);
        // Sync mode off: the sync key is not looked at.
        set_sync(&mut s, json!(false), "m1");
        assert_eq!(codes(&s, now, &["/sync", "/async"]), [503, 200]);
        // No trusted view: sync-family checks are 503.
        s.cluster_valid_until = Some(now);
        assert_eq!(
            codes(&s, now, &["/sync", "/async", "/read-only-sync", "/replica"]),
            [503, 503, 503, 200]
        );
    }

    #[test]
    fn standby_cluster_leader() {
        let now = Instant::now();
        let mut s = replica(now, 67108864);
        s.lock_valid_until = Some(now + S);
        s.pg.role = "standby_leader".into();
        s.cluster
            .as_mut()
            .unwrap()
            .config
            .as_mut()
            .unwrap()
            .value
            .insert(
                "standby_cluster".into(),
                json!({"host": "10.0.0.1", "port": 5432}),
            );
        let paths = [
            "/standby-leader",
            "/standby_leader",
            "/leader",
            "/primary",
            "/replica",
            "/read-only",
        ];
        assert_eq!(codes(&s, now, &paths), [200, 200, 200, 503, 503, 200]);
    }

    #[test]
    fn paused_without_dcs_view_uses_role() {
        let now = Instant::now();
        let mut s = primary(now);
        s.pause = true;
        s.lock_valid_until = None;
        s.cluster_valid_until = None;
        assert_eq!(
            codes(&s, now, &["/primary", "/leader", "/standby-leader"]),
            [200, 200, 503]
        );
        s.pg.role = "standby_leader".into();
        assert_eq!(
            codes(&s, now, &["/primary", "/leader", "/standby-leader"]),
            [503, 200, 200]
        );
    }

    #[test]
    fn byte_units() {
        assert_eq!(parse_bytes("16kB"), Some(16384));
        assert_eq!(parse_bytes("64MB"), Some(64 << 20));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes("1TB"), Some(1 << 40));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("1.5kB"), Some(1536));
        assert_eq!(parse_bytes("-1"), Some(-1));
        assert_eq!(parse_bytes("1kb"), None);
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("99999999999999999999999999999999GB"), None);
        assert_eq!(
            Query::parse("a=%41+b&c&d=&e=%zz%"),
            Query(vec![
                ("a".into(), "A b".into()),
                ("e".into(), "%zz%".into())
            ])
        );
    }

    #[test]
    fn liveness() {
        let now = Instant::now();
        let mut s = primary(now);
        s.ttl = 30 * S;
        s.next_cycle_at = Some(now - 29 * S);
        assert_eq!(liveness_code(&s, now), 200);
        s.next_cycle_at = Some(now - 31 * S);
        assert_eq!(liveness_code(&s, now), 503);
        s.pg.role = "replica".into();
        assert_eq!(liveness_code(&s, now), 200);
        s.next_cycle_at = Some(now - 61 * S);
        assert_eq!(liveness_code(&s, now), 503);
        s.pause = true;
        assert_eq!(liveness_code(&s, now), 200);
        s.pause = false;
        s.next_cycle_at = None;
        assert_eq!(liveness_code(&s, now), 503);
    }

    #[test]
    fn readiness() {
        let now = Instant::now();
        assert_eq!(readiness_code("", &primary(now), now), 200);
        let optime = 67108864u64;
        let mut s = replica(now, optime - 2 * 1024 * 1024);
        assert_eq!(readiness_code("", &s, now), 503);
        assert_eq!(readiness_code("lag=2MB", &s, now), 200);
        assert_eq!(readiness_code("lag=junk", &s, now), 503);
        let st = s.pg.status.as_mut().unwrap();
        st.receive_lsn = Some(optime);
        st.wal_position = optime;
        assert_eq!(readiness_code("mode=write", &s, now), 200);
        assert_eq!(readiness_code("mode=apply", &s, now), 503);
        s.pg.status.as_mut().unwrap().replication_state = Some("in archive recovery".into());
        assert_eq!(readiness_code("lag=1GB", &s, now), 503);
        // No view and no receiver position: only failsafe makes it ready.
        let mut f = replica(now, optime);
        f.leader_optime = None;
        f.cluster_valid_until = None;
        assert_eq!(readiness_code("", &f, now), 503);
        f.failsafe_active = true;
        assert_eq!(readiness_code("", &f, now), 200);
    }
}
