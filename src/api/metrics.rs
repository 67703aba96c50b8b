//! `GET /metrics`: Prometheus text in Patroni's names and order (patroni-compat §2).
//!
//! HELP texts are Patroni 3.0.2's where the capture has the metric; labels are Patroni 4's
//! `{scope="..",name=".."}`. 3.0.2's `patroni_master` is not emitted (4.x dropped it), nor its
//! stray space in `patroni_postgres_server_version {scope=..}`.

use std::fmt::Write;

use chrono::DateTime;
use tokio::time::Instant;

use super::state::Snapshot;
use crate::dcs::model::{tags_failover_priority, truthy};

/// Patroni's numeric PostgreSQL states (§2.1), in code order.
pub const PG_STATES: [(&str, &str); 15] = [
    ("initializing new cluster", "initdb"),
    ("initdb failed", "initdb_failed"),
    ("running custom bootstrap script", "custom_bootstrap"),
    ("custom bootstrap failed", "custom_bootstrap_failed"),
    ("creating replica", "creating_replica"),
    ("running", "running"),
    ("starting", "starting"),
    ("starting after custom bootstrap", "bootstrap_starting"),
    ("start failed", "start_failed"),
    ("restarting", "restarting"),
    ("restart failed", "restart_failed"),
    ("stopping", "stopping"),
    ("stopped", "stopped"),
    ("stop failed", "stop_failed"),
    ("crashed", "crashed"),
];

/// `4.1.4` → `040104`: every component zero-padded to two digits.
pub fn version_number(v: &str) -> String {
    v.split(['.', '-', '+'])
        .take(3)
        .map(|c| format!("{:02}", c.parse::<u64>().unwrap_or(0)))
        .collect()
}

fn epoch(ts: Option<&str>) -> String {
    let parsed = ts.and_then(|t| {
        DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%:z")
            .or_else(|_| DateTime::parse_from_rfc3339(t))
            .ok()
    });
    match parsed {
        // Python's float repr of `secs.micros`, without float rounding.
        Some(t) => {
            let frac = format!("{:06}", t.timestamp_subsec_micros());
            let frac = frac.trim_end_matches('0');
            format!(
                "{}.{}",
                t.timestamp(),
                if frac.is_empty() { "0" } else { frac }
            )
        }
        None => "0".into(),
    }
}

fn b(v: bool) -> String {
    if v { "1".into() } else { "0".into() }
}

/// Renders the metrics page of `s` at `now`.
pub fn render_metrics(s: &Snapshot, now: Instant) -> String {
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let labels = format!("{{scope=\"{}\",name=\"{}\"}}", esc(&s.scope), esc(&s.name));
    let pg = &s.pg;
    let running = pg.state == "running";
    let (received, replayed, replay_ts, paused) = match pg.replica() {
        Some(st) => (
            s.received_location(),
            s.replayed_location(),
            st.replayed_timestamp.as_deref(),
            st.replay_paused,
        ),
        None => (0, 0, None, false),
    };
    let location = match pg.primary() {
        Some(st) if pg.role == "primary" || pg.role == "master" => st.wal_position,
        _ => 0,
    };
    let (sync, quorum) = s.sync_flags(now);
    let config = s.global_config();
    let failsafe_enabled = config
        .and_then(|c| c.get("failsafe_mode"))
        .is_some_and(truthy);
    let failsafe_member = s
        .cluster
        .as_ref()
        .and_then(|c| c.failsafe.as_ref())
        .is_some_and(|f| f.contains_key(&s.name));
    let unlocked = s.valid_cluster(now).is_none_or(|c| c.leader.is_none());
    let state_code = PG_STATES
        .iter()
        .position(|(n, _)| *n == pg.state)
        .map_or(-1, |i| i as i64);
    let priority = if crate::dcs::model::tags_nofailover(Some(&s.tags)) {
        0
    } else {
        tags_failover_priority(Some(&s.tags))
    };

    let mut rows: Vec<(&str, &str, &str, String)> = vec![
        (
            "patroni_version",
            "gauge",
            "Patroni semver without periods.",
            version_number(&s.version),
        ),
        (
            "patroni_postgres_running",
            "gauge",
            "Value is 1 if Postgres is running, 0 otherwise.",
            b(running),
        ),
        (
            "patroni_postmaster_start_time",
            "gauge",
            "Epoch seconds since Postgres started.",
            epoch(
                pg.status
                    .as_ref()
                    .map(|st| st.postmaster_start_time.as_str()),
            ),
        ),
        (
            "patroni_primary",
            "gauge",
            "Value is 1 if this node is the leader, 0 otherwise.",
            b(pg.role == "primary" || pg.role == "master"),
        ),
        (
            "patroni_xlog_location",
            "counter",
            "Current location of the Postgres transaction log, 0 if this node is not the leader.",
            location.to_string(),
        ),
        (
            "patroni_standby_leader",
            "gauge",
            "Value is 1 if this node is the standby_leader, 0 otherwise.",
            b(pg.role == "standby_leader"),
        ),
        (
            "patroni_replica",
            "gauge",
            "Value is 1 if this node is a replica, 0 otherwise.",
            b(pg.role == "replica"),
        ),
        (
            "patroni_sync_standby",
            "gauge",
            "Value is 1 if this node is a sync standby replica, 0 otherwise.",
            b(sync),
        ),
        (
            "patroni_quorum_standby",
            "gauge",
            "Value is 1 if this node is a quorum standby replica, 0 otherwise.",
            b(quorum),
        ),
        (
            "patroni_xlog_received_location",
            "counter",
            "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
            received.to_string(),
        ),
        (
            "patroni_xlog_replayed_location",
            "counter",
            "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
            replayed.to_string(),
        ),
        (
            "patroni_xlog_replayed_timestamp",
            "gauge",
            "Current timestamp of the replayed Postgres transaction log, 0 if null.",
            epoch(replay_ts),
        ),
        (
            "patroni_xlog_paused",
            "gauge",
            "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
            b(paused),
        ),
    ];
    if pg.server_version().unwrap_or(0) >= 90600 {
        let rs = pg.replication_state();
        rows.push((
            "patroni_postgres_streaming",
            "gauge",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            b(rs == Some("streaming")),
        ));
        rows.push((
            "patroni_postgres_in_archive_recovery",
            "gauge",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            b(rs == Some("in archive recovery")),
        ));
    }
    rows.extend([
        (
            "patroni_postgres_server_version",
            "gauge",
            "Version of Postgres (if running), 0 otherwise.",
            pg.server_version().unwrap_or(0).to_string(),
        ),
        (
            "patroni_cluster_unlocked",
            "gauge",
            "Value is 1 if the cluster is unlocked, 0 if locked.",
            b(unlocked),
        ),
        (
            "patroni_failsafe_mode_is_active",
            "gauge",
            "Value is 1 if failsafe mode is active, 0 if inactive.",
            b(s.failsafe_active),
        ),
        (
            "patroni_failsafe_mode_enabled",
            "gauge",
            "Value is 1 if failsafe mode is enabled, 0 otherwise.",
            b(failsafe_enabled),
        ),
        (
            "patroni_failsafe_member",
            "gauge",
            "Value is 1 if this node is a member of the failsafe topology, 0 otherwise.",
            b(failsafe_member),
        ),
        (
            "patroni_postgres_timeline",
            "counter",
            "Postgres timeline of this node (if running), 0 otherwise.",
            pg.status.as_ref().map_or(0, |st| st.timeline).to_string(),
        ),
        (
            "patroni_dcs_last_seen",
            "gauge",
            "Epoch timestamp when DCS was last contacted successfully by Patroni.",
            s.dcs_last_seen.unwrap_or(0).to_string(),
        ),
        (
            "patroni_pending_restart",
            "gauge",
            "Value is 1 if the node needs a restart, 0 otherwise.",
            b(pg.pending_restart()),
        ),
        (
            "patroni_is_paused",
            "gauge",
            "Value is 1 if auto failover is disabled, 0 otherwise.",
            b(s.pause),
        ),
        (
            "patroni_postgres_state",
            "gauge",
            "Numeric representation of Postgres state.",
            state_code.to_string(),
        ),
        (
            "patroni_failover_priority",
            "gauge",
            "Value is 0 or negative if node is not allowed to promote, otherwise its priority.",
            priority.to_string(),
        ),
    ]);

    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        if name == "patroni_postgres_state" {
            let values: Vec<String> = PG_STATES
                .iter()
                .enumerate()
                .map(|(i, (_, short))| format!("{i}={short}"))
                .collect();
            let _ = writeln!(out, "# Values: {}", values.join(", "));
        }
        let _ = writeln!(out, "{name}{labels} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::state::PgView;
    use crate::api::status::tests::capture;
    use crate::postgres::PgStatus;

    #[test]
    fn leader_metrics_follow_capture() {
        let mut s = Snapshot::new("bars", "m0");
        s.version = "3.0.2".into();
        s.dcs_last_seen = Some(1795497233);
        s.pg = PgView {
            state: "running".into(),
            role: "master".into(),
            status: Some(PgStatus {
                server_version: 150018,
                postmaster_start_time: "2026-11-24 05:13:38.632305+00:00".into(),
                timeline: 1,
                wal_position: 67108960,
                ..PgStatus::default()
            }),
            sysid: None,
        };
        let now = Instant::now();
        s.cluster = Some(crate::api::status::tests::etcd_view(
            "01-steady-sync-mode.etcd.json",
        ));
        s.cluster_valid_until = Some(now + std::time::Duration::from_secs(5));
        let ours = render_metrics(&s, now);
        // Every sample of the 3.0.2 capture (but the dropped `patroni_master`) appears with the
        // same HELP, TYPE and value, in the same relative order; labels gain `name`.
        let (_, body) = capture("leader-metrics.txt");
        let mut pos = 0;
        for line in body.lines().filter(|l| !l.contains("patroni_master")) {
            let line = line.replace(" {scope=\"bars\"}", "{scope=\"bars\"}");
            let line = line.replace("{scope=\"bars\"}", "{scope=\"bars\",name=\"m0\"}");
            // 3.0.2 copied the unlocked HELP onto failsafe; 4.x fixed it.
            if line.starts_with("# HELP patroni_failsafe_mode_is_active") {
                continue;
            }
            let found = ours[pos..]
                .find(&format!("{line}\n"))
                .unwrap_or_else(|| panic!("missing or out of order: {line}"));
            pos += found + line.len();
        }
        assert!(ours.contains("patroni_postgres_state{scope=\"bars\",name=\"m0\"} 5\n"));
        assert!(ours.contains("# Values: 0=initdb, 1=initdb_failed,"));
        assert_eq!(version_number("4.1.4"), "040104");
        assert_eq!(version_number("0.1.0"), "000100");
    }
}
