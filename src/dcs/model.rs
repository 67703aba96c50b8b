//! Patroni's DCS values, byte-compatible: the same keys, the same JSON shapes.
//!
//! Every value written by another agent is parsed here, and only here. A value that does not parse
//! becomes a [`Problem`] in the [`ClusterView`]: pgwarden never acts on a value it cannot read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An opaque version token of one stored value: etcd's `mod_revision`, Kubernetes'
/// `resourceVersion`. Compare-and-set writes carry the version they saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version(pub String);

/// A value together with the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The parsed value.
    pub value: T,
    /// The version it was read at.
    pub version: Version,
}

/// A member's key (`members/<name>`), as Patroni writes it (§3.4). Unknown fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// `postgres://host:port/postgres`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_url: Option<String>,
    /// `http://host:port/patroni`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// PostgreSQL state string (`running`, `stopped`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `primary` (Patroni 3: `master`), `replica`, `standby_leader`, `demoted`, `uninitialized`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Primary: flush LSN; replica: max(receive, replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    /// Replica's last received LSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    /// Replica's last replayed LSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    /// `streaming` or `in archive recovery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// PostgreSQL timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u64>,
    /// Effective tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
    /// A restart is needed for a changed parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<bool>,
    /// `false` on a new leader until its post-promote CHECKPOINT finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_after_promote: Option<bool>,
    /// The member runs in maintenance mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    /// Fields pgwarden does not interpret, kept so that a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Member {
    /// Parses a member value; Patroni also accepts the legacy raw `postgres://...` form, where the
    /// api_url travels as `application_name`.
    pub fn parse(raw: &str) -> Result<Member, String> {
        let trimmed = raw.trim();
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            let (conn, query) = trimmed.split_once('?').unwrap_or((trimmed, ""));
            let api = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("application_name="))
                .map(str::to_owned);
            return Ok(Member {
                conn_url: Some(conn.to_owned()),
                api_url: api,
                ..Member::default()
            });
        }
        serde_json::from_str(trimmed).map_err(|e| format!("member value is not valid JSON: {e}"))
    }

    /// Compact JSON, as Patroni writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// A tag value, if set.
    pub fn tag(&self, key: &str) -> Option<&Value> {
        self.tags.as_ref().and_then(|t| t.get(key))
    }

    /// `nofailover` set (or `failover_priority` <= 0): never a leader.
    pub fn nofailover(&self) -> bool {
        tags_nofailover(self.tags.as_ref())
    }

    /// `failover_priority` tag, default 1.
    pub fn failover_priority(&self) -> i64 {
        tags_failover_priority(self.tags.as_ref())
    }

    /// `nosync` set (or `sync_priority` <= 0): never a synchronous standby.
    pub fn nosync(&self) -> bool {
        tag_flag(self.tags.as_ref(), "nosync", "sync_priority")
    }

    /// Running and not `nosync`: a member a synchronous leader may list (when it streams from
    /// it).
    pub fn may_be_sync_standby(&self) -> bool {
        self.state.as_deref() == Some("running") && !self.nosync()
    }

    /// `sync_priority` tag, default 1: the higher, the sooner chosen as a synchronous standby.
    pub fn sync_priority(&self) -> i64 {
        tag_priority(self.tags.as_ref(), "nosync", "sync_priority")
    }

    /// The role says the member runs as a primary (`primary` or Patroni 3's `master`).
    pub fn is_primary_role(&self) -> bool {
        matches!(self.role.as_deref(), Some("primary") | Some("master"))
    }

    /// The member's WAL position as a candidate: xlog_location.
    pub fn wal_position(&self) -> u64 {
        self.xlog_location
            .unwrap_or(0)
            .max(self.receive_lsn.unwrap_or(0))
            .max(self.replay_lsn.unwrap_or(0))
    }
}

/// Patroni's truthiness for tag values (`true`, `"true"`, `"on"`, `1`).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().map(|f| f != 0.0).unwrap_or(false),
        Value::String(s) => matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "on" | "yes" | "1" | "y"
        ),
        _ => false,
    }
}

/// `nofailover` from a tag map: set, or `failover_priority` <= 0.
pub fn tags_nofailover(tags: Option<&Map<String, Value>>) -> bool {
    tag_flag(tags, "nofailover", "failover_priority")
}

/// `failover_priority` from a tag map, default 1.
pub fn tags_failover_priority(tags: Option<&Map<String, Value>>) -> i64 {
    tag_priority(tags, "nofailover", "failover_priority")
}

/// A `no...` flag tag (`nofailover`, `nosync`): set, or else its priority tag <= 0.
fn tag_flag(tags: Option<&Map<String, Value>>, flag: &str, priority: &str) -> bool {
    let Some(t) = tags else { return false };
    if let Some(v) = t.get(flag) {
        return truthy(v);
    }
    tag_priority(Some(t), flag, priority) <= 0
}

/// A priority tag (`failover_priority`, `sync_priority`), default 1; 0 when its flag is set.
fn tag_priority(tags: Option<&Map<String, Value>>, flag: &str, priority: &str) -> i64 {
    let Some(t) = tags else { return 1 };
    if t.get(flag).map(truthy).unwrap_or(false) {
        return 0;
    }
    match t.get(priority) {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(1),
        _ => 1,
    }
}

/// The `failover` key: a requested switchover (`leader` set) or failover (`member` only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The leader to move away from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// ISO 8601 time with zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

impl Failover {
    /// Parses the key; `{}` or an empty string means "no failover". Accepts the legacy `a:b` form.
    pub fn parse(raw: &str) -> Result<Option<Failover>, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if !trimmed.starts_with('{')
            && let Some((l, m)) = trimmed.split_once(':')
        {
            let f = Failover {
                leader: Some(l.to_owned()).filter(|s| !s.is_empty()),
                member: Some(m.to_owned()).filter(|s| !s.is_empty()),
                scheduled_at: None,
            };
            return Ok(Some(f).filter(|f| !f.is_empty()));
        }
        let f: Failover = serde_json::from_str(trimmed)
            .map_err(|e| format!("failover value is not valid: {e}"))?;
        Ok(Some(f).filter(|f| !f.is_empty()))
    }

    /// Neither leader nor candidate named.
    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.member.is_none()
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// The leader's `status` key: last known WAL position and slots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Leader's flush LSN.
    #[serde(default)]
    pub optime: u64,
    /// Permanent (and member) slot positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<BTreeMap<String, u64>>,
    /// Member slots kept after their member left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_slots: Option<Vec<String>>,
}

impl Status {
    /// Parses the key.
    pub fn parse(raw: &str) -> Result<Status, String> {
        serde_json::from_str(raw).map_err(|e| format!("status value is not valid: {e}"))
    }
    /// Compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// The `sync` key of synchronous replication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    /// The primary that owns the state.
    #[serde(default)]
    pub leader: Option<String>,
    /// Comma-separated sorted names, or null.
    #[serde(default)]
    pub sync_standby: Option<String>,
    /// Quorum mode: number of votes needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u64>,
}

impl SyncState {
    /// Parses the key.
    pub fn parse(raw: &str) -> Result<SyncState, String> {
        serde_json::from_str(raw).map_err(|e| format!("sync value is not valid: {e}"))
    }
    /// The named sync standbys.
    pub fn members(&self) -> Vec<&str> {
        self.sync_standby
            .as_deref()
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One line of the `history` key: `[timeline, lsn, reason, timestamp, new_leader]`; old lines
/// may be shorter, so the raw JSON array is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HistoryLine(pub Vec<Value>);

impl HistoryLine {
    /// Builds a complete line.
    pub fn new(timeline: u64, lsn: u64, reason: &str, timestamp: &str, leader: &str) -> Self {
        HistoryLine(vec![
            timeline.into(),
            lsn.into(),
            reason.into(),
            timestamp.into(),
            leader.into(),
        ])
    }
    /// The timeline the line ends.
    pub fn timeline(&self) -> Option<u64> {
        self.0.first().and_then(Value::as_u64)
    }
}

/// The `history` key.
pub fn parse_history(raw: &str) -> Result<Vec<HistoryLine>, String> {
    serde_json::from_str(raw).map_err(|e| format!("history value is not valid: {e}"))
}

/// Compact JSON for the `history` key.
pub fn history_to_json(h: &[HistoryLine]) -> String {
    serde_json::to_string(h).unwrap_or_else(|_| "[]".into())
}

/// The leader lock as seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Holder's member name.
    pub name: String,
    /// Version of the lock value.
    pub version: Version,
}

/// A value that could not be parsed; pgwarden reports it and does not act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The logical key (`config`, `members/x`, ...).
    pub key: String,
    /// What is wrong.
    pub error: String,
}

/// Everything under the cluster's prefix, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// The `initialize` key: `Some("")` while bootstrapping, `Some(sysid)` after.
    pub initialize: Option<String>,
    /// Dynamic configuration (a JSON object).
    pub config: Option<Versioned<Map<String, Value>>>,
    /// The leader lock, if held (and, on Kubernetes, not expired for this observer).
    pub leader: Option<Leader>,
    /// Members by name.
    pub members: BTreeMap<String, Member>,
    /// A pending switchover or failover.
    pub failover: Option<Versioned<Failover>>,
    /// Version of the failover key even when empty, for compare-and-set clearing.
    pub failover_version: Option<Version>,
    /// The `history` key.
    pub history: Option<Vec<HistoryLine>>,
    /// The `status` key.
    pub status: Option<Status>,
    /// The `sync` key.
    pub sync: Option<Versioned<SyncState>>,
    /// The `failsafe` key.
    pub failsafe: Option<BTreeMap<String, String>>,
    /// The former holder of a lock that was removed while that holder may still be writable
    /// (the key or Lease deleted by hand, or released by a holder still alive): on etcd, the
    /// leader key was deleted while the lease it was bound to lives, for at most ttl after the
    /// deletion was seen; on Kubernetes, the Lease was deleted before it expired for this
    /// observer. A racer takes the lock only once this member has answered that it is not a
    /// primary: otherwise it may still commit until its own deadline.
    pub vanished_leader: Option<String>,
    /// Values that did not parse.
    pub problems: Vec<Problem>,
}

impl ClusterView {
    /// Cluster timeline = last history timeline + 1 (1 for `[]` or no history).
    pub fn timeline(&self) -> u64 {
        match &self.history {
            Some(h) => h
                .last()
                .and_then(HistoryLine::timeline)
                .map(|t| t + 1)
                .unwrap_or(1),
            None => 1,
        }
    }

    /// The key holds a value that did not parse (a [`Problem`]): never written over.
    pub fn unreadable(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }

    /// The leader's member entry.
    pub fn leader_member(&self) -> Option<(&str, &Member)> {
        let l = self.leader.as_ref()?;
        self.members.get(&l.name).map(|m| (l.name.as_str(), m))
    }

    /// Builds a view from raw key/value pairs (keys relative to the cluster prefix, such as
    /// `leader` or `members/m1`) with their versions. Shared by every backend so they parse alike.
    pub fn from_raw<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str, Version)>) -> Self {
        let mut v = ClusterView::default();
        for (key, raw, version) in entries {
            v.apply_raw(key, raw, version);
        }
        v
    }

    fn apply_raw(&mut self, key: &str, raw: &str, version: Version) {
        let problem = |e: String| Problem {
            key: key.to_owned(),
            error: e,
        };
        match key {
            "initialize" => self.initialize = Some(raw.to_owned()),
            "leader" => {
                if !raw.is_empty() {
                    self.leader = Some(Leader {
                        name: raw.to_owned(),
                        version,
                    });
                }
            }
            "config" => match serde_json::from_str::<Value>(raw) {
                Ok(Value::Object(m)) => self.config = Some(Versioned { value: m, version }),
                Ok(_) => self
                    .problems
                    .push(problem("config is not a JSON object".into())),
                Err(e) => self
                    .problems
                    .push(problem(format!("config is not valid JSON: {e}"))),
            },
            "failover" => {
                self.failover_version = Some(version.clone());
                match Failover::parse(raw) {
                    Ok(Some(f)) => self.failover = Some(Versioned { value: f, version }),
                    Ok(None) => {}
                    Err(e) => self.problems.push(problem(e)),
                }
            }
            "history" => match parse_history(raw) {
                Ok(h) => self.history = Some(h),
                Err(e) => self.problems.push(problem(e)),
            },
            "status" => match Status::parse(raw) {
                Ok(s) => self.status = Some(s),
                Err(e) => self.problems.push(problem(e)),
            },
            "optime/leader" => {
                // Legacy key from Patroni < 2.1; used only when `status` is absent.
                if self.status.is_none()
                    && let Ok(o) = raw.trim().parse::<u64>()
                {
                    self.status = Some(Status {
                        optime: o,
                        ..Status::default()
                    });
                }
            }
            "sync" => match SyncState::parse(raw) {
                Ok(s) => self.sync = Some(Versioned { value: s, version }),
                Err(e) => self.problems.push(problem(e)),
            },
            "failsafe" => match serde_json::from_str::<BTreeMap<String, String>>(raw) {
                Ok(f) => self.failsafe = Some(f),
                Err(e) => self
                    .problems
                    .push(problem(format!("failsafe value is not valid: {e}"))),
            },
            other => {
                if let Some(name) = other.strip_prefix("members/") {
                    match Member::parse(raw) {
                        Ok(m) => {
                            self.members.insert(name.to_owned(), m);
                        }
                        Err(e) => self.problems.push(problem(e)),
                    }
                }
            }
        }
    }
}

/// Patroni's slot name for a member: lowercase; `-` and `.` → `_`; other characters outside
/// `[a-z0-9_]` → `u%04x`; cut to 63 bytes.
pub fn slot_name(member: &str) -> String {
    let mut s = String::new();
    for c in member.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => s.push(c),
            '-' | '.' => s.push('_'),
            other => s.push_str(&format!("u{:04x}", other as u32)),
        }
    }
    s.truncate(63);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_roundtrip_keeps_patroni_bytes() {
        let raw = r#"{"conn_url":"postgres://127.0.0.1:26010/postgres","api_url":"http://127.0.0.1:26020/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":67108864,"timeline":1}"#;
        let m = Member::parse(raw).unwrap();
        assert!(m.is_primary_role());
        assert_eq!(m.to_json(), raw);
    }

    #[test]
    fn legacy_member_and_failover_forms() {
        let m = Member::parse("postgres://h:5432/postgres?application_name=http://h:8008/patroni")
            .unwrap();
        assert_eq!(m.api_url.as_deref(), Some("http://h:8008/patroni"));
        let f = Failover::parse("m0:m1").unwrap().unwrap();
        assert_eq!(f.leader.as_deref(), Some("m0"));
        assert_eq!(f.member.as_deref(), Some("m1"));
        assert_eq!(Failover::parse("{}").unwrap(), None);
    }

    #[test]
    fn bad_values_become_problems() {
        let v = ClusterView::from_raw([
            ("members/a", "{not json", Version("1".into())),
            ("config", "[1]", Version("2".into())),
            ("leader", "a", Version("3".into())),
        ]);
        assert_eq!(v.problems.len(), 2);
        assert!(v.members.is_empty());
        assert!(v.config.is_none());
        assert_eq!(v.leader.unwrap().name, "a");
    }

    #[test]
    fn slot_names() {
        assert_eq!(slot_name("Postgres-1.x"), "postgres_1_x");
        assert_eq!(slot_name("a b"), "au0020b");
    }
}
