//! `GET /cluster` rendering (Patroni's `cluster_as_json`, patroni-compat §1.6) and the
//! schedule-time helpers shared with `/switchover`.
//!
//! Differences from Patroni 3.0.2 (the captures): non-leaders carry Patroni 4's
//! `receive_lsn`/`receive_lag`, `replay_lsn`/`replay_lag` and `lsn` next to `lag` (`"unknown"`
//! when the member key does not report them, as 3.0.2 members don't). Member `tags` are sorted
//! by key.

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use serde_json::Value;

use super::json::{Node, Obj};
use super::state::{config_paused, is_standby_cluster};
use crate::config::SyncMode;
use crate::dcs::model::{ClusterView, Member};
use crate::postgres::format_lsn;

/// `(host, port)` of a `postgres://[user[:pw]@]host[:port][/db][?...]` connection URL.
pub fn conn_host_port(conn_url: &str) -> (Option<String>, Option<String>) {
    let Some((_, rest)) = conn_url.split_once("://") else {
        return (None, None);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (v6, None),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let host = (!host.is_empty()).then(|| host.to_owned());
    let port = port.filter(|p| !p.is_empty()).map(str::to_owned);
    (host, port)
}

/// Python's `datetime.isoformat()` of a parsed schedule: `2099-01-01T00:00:00+00:00`,
/// microseconds only when non-zero.
pub fn isoformat(t: &DateTime<FixedOffset>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string()
    }
}

/// Outcome of parsing a schedule the way `dateutil.parser.parse` is used by Patroni.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A time with a zone.
    At(DateTime<FixedOffset>),
    /// A time without a zone.
    NoTimezone,
    /// Not a time.
    Invalid,
}

/// Parses an ISO 8601 schedule (`T` or space separator, optional fraction, `Z` or `±HH:MM`
/// or `±HHMM`).
pub fn parse_schedule(s: &str) -> Schedule {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Schedule::At(t);
    }
    let normalized = s.replacen(' ', "T", 1);
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%dT%H:%M%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(&normalized, f) {
            return Schedule::At(t);
        }
    }
    if let Some(base) = normalized.strip_suffix('Z') {
        for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(base, f) {
                return Schedule::At(t.and_utc().fixed_offset());
            }
        }
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if NaiveDateTime::parse_from_str(&normalized, f).is_ok() {
            return Schedule::NoTimezone;
        }
    }
    Schedule::Invalid
}

fn lsn_field(v: Option<u64>) -> Option<u64> {
    v.filter(|l| *l != 0)
}

fn member_json(name: &str, m: &Member, role: &str, leader: bool, cluster_lsn: u64) -> Obj {
    let state = if role != "leader" {
        m.replication_state.as_deref().unwrap_or("")
    } else {
        ""
    };
    let state = if state.is_empty() {
        m.state.as_deref().unwrap_or("")
    } else {
        state
    };
    let mut o = Obj::new()
        .with("name", name)
        .with("role", role)
        .with("state", state)
        .with(
            "api_url",
            m.api_url.clone().map(Value::String).unwrap_or(Value::Null),
        );
    if let (Some(host), port) = conn_host_port(m.conn_url.as_deref().unwrap_or("")) {
        o.push("host", host);
        if let Some(p) = port.and_then(|p| p.parse::<u64>().ok()) {
            o.push("port", p);
        }
    }
    if let Some(t) = m.timeline {
        o.push("timeline", t);
    }
    if let Some(p) = m.pending_restart {
        o.push("pending_restart", p);
    }
    for k in ["pending_restart_reason", "scheduled_restart"] {
        if let Some(v) = m.extra.get(k) {
            o.push(k, v.clone());
        }
    }
    if let Some(t) = &m.tags {
        o.push("tags", Value::Object(t.clone()));
    }
    if !leader {
        for (lsn_key, lag_key, lsn) in [
            ("receive_lsn", "receive_lag", m.receive_lsn),
            ("replay_lsn", "replay_lag", m.replay_lsn),
            ("lsn", "lag", m.xlog_location),
        ] {
            match lsn_field(lsn) {
                None => {
                    o.push(lsn_key, "unknown");
                    o.push(lag_key, "unknown");
                }
                Some(l) => {
                    o.push(lag_key, cluster_lsn.saturating_sub(l));
                    o.push(lsn_key, format_lsn(l));
                }
            }
        }
    }
    o
}

/// The `/cluster` document of a view (members sorted by name).
pub fn cluster_json(view: &ClusterView) -> Obj {
    let config = view.config.as_ref().map(|c| &c.value);
    let mode = SyncMode::of(config);
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let cluster_lsn = view.status.as_ref().map_or(0, |s| s.optime);
    let sync_members: Vec<&str> = view
        .sync
        .as_ref()
        .map(|s| s.value.members())
        .unwrap_or_default();
    let members = view
        .members
        .iter()
        .map(|(name, m)| {
            let is_leader = Some(name.as_str()) == leader;
            let role = if is_leader {
                if is_standby_cluster(config) {
                    "standby_leader"
                } else {
                    "leader"
                }
            } else if mode != SyncMode::Off && sync_members.contains(&name.as_str()) {
                if mode == SyncMode::Quorum {
                    "quorum_standby"
                } else {
                    "sync_standby"
                }
            } else {
                "replica"
            };
            Node::Obj(member_json(name, m, role, is_leader, cluster_lsn))
        })
        .collect();
    let mut o = Obj::new().with("members", Node::Arr(members));
    if config_paused(config) {
        o.push("pause", true);
    }
    if let Some(f) = view.failover.as_ref().map(|f| &f.value)
        && let Some(at) = f.scheduled_at.as_deref().filter(|a| !a.is_empty())
    {
        let at = match parse_schedule(at) {
            Schedule::At(t) => isoformat(&t),
            _ => at.to_owned(),
        };
        let mut s = Obj::new().with("at", at);
        if let Some(l) = &f.leader {
            s.push("from", l.as_str());
        }
        if let Some(m) = &f.member {
            s.push("to", m.as_str());
        }
        o.push("scheduled_switchover", s);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::json::to_python_json;
    use crate::api::status::tests::{capture, etcd_view};

    /// Drops the Patroni 4 fields 3.0.2 did not have.
    fn as_302(mut doc: Obj) -> Obj {
        if let Some((_, Node::Arr(ms))) = doc.0.iter_mut().find(|(k, _)| k == "members") {
            for m in ms {
                if let Node::Obj(m) = m {
                    for k in [
                        "receive_lsn",
                        "receive_lag",
                        "replay_lsn",
                        "replay_lag",
                        "lsn",
                    ] {
                        m.remove(k);
                    }
                }
            }
        }
        doc
    }

    #[test]
    fn steady_view_matches_capture() {
        let doc = cluster_json(&etcd_view("01-steady-sync-mode.etcd.json"));
        // The 4.x extras, for a 3.0.2 member key.
        let Some(Node::Arr(ms)) = doc.get("members") else {
            panic!()
        };
        let Node::Obj(m2) = &ms[2] else { panic!() };
        assert_eq!(
            m2.keys(),
            [
                "name",
                "role",
                "state",
                "api_url",
                "host",
                "port",
                "timeline",
                "receive_lsn",
                "receive_lag",
                "replay_lsn",
                "replay_lag",
                "lag",
                "lsn"
            ]
        );
        assert_eq!(
            m2.get("lsn").and_then(Node::as_value),
            Some(&Value::from("0/3000000"))
        );
        let (head, body) = capture("leader-cluster.txt");
        assert_eq!(head, "GET /cluster -> 200");
        assert_eq!(to_python_json(&as_302(doc)), body);
    }

    #[test]
    fn after_switchover_view_matches_capture() {
        let doc = cluster_json(&etcd_view("03-after-switchover.etcd.json"));
        let (_, body) = capture("after-switchover-cluster.txt");
        assert_eq!(to_python_json(&as_302(doc)), body);
    }

    #[test]
    fn scheduled_switchover_and_pause() {
        let mut v = etcd_view("02-scheduled-switchover-pending.etcd.json");
        v.config
            .as_mut()
            .unwrap()
            .value
            .insert("pause".into(), true.into());
        let doc = cluster_json(&v);
        assert_eq!(doc.keys(), ["members", "pause", "scheduled_switchover"]);
        assert_eq!(
            to_python_json(doc.get("scheduled_switchover").unwrap()),
            r#"{"at": "2099-01-01T00:00:00+00:00", "from": "m0", "to": "m1"}"#
        );
    }

    #[test]
    fn urls_and_schedules() {
        assert_eq!(
            conn_host_port("postgres://127.0.0.1:26010/postgres"),
            (Some("127.0.0.1".into()), Some("26010".into()))
        );
        assert_eq!(
            conn_host_port("postgresql://u:p@[::1]:5432/db?x=1"),
            (Some("::1".into()), Some("5432".into()))
        );
        assert_eq!(
            conn_host_port("postgres://db.example"),
            (Some("db.example".into()), None)
        );
        assert_eq!(conn_host_port("garbage"), (None, None));
        let Schedule::At(t) = parse_schedule("2099-01-01T00:00:00+00:00") else {
            panic!()
        };
        assert_eq!(isoformat(&t), "2099-01-01T00:00:00+00:00");
        let Schedule::At(t) = parse_schedule("2099-01-01 10:00:00.5Z") else {
            panic!()
        };
        assert_eq!(isoformat(&t), "2099-01-01T10:00:00.500000+00:00");
        let Schedule::At(t) = parse_schedule("2099-01-01T10:00+0200") else {
            panic!()
        };
        assert_eq!(isoformat(&t), "2099-01-01T10:00:00+02:00");
        assert_eq!(parse_schedule("2099-01-01T10:00:00"), Schedule::NoTimezone);
        assert_eq!(parse_schedule("tomorrow"), Schedule::Invalid);
    }
}
