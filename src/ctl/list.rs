//! `list` and `topology`: the members table read from the store (patronictl's columns:
//! Member, Host, Role, State, TL, Lag in MB, and Pending restart, Scheduled restart, Tags when
//! any member has them or with `-e`).

use serde_json::Value;

use super::CtlError;
use super::context::Ctx;
use super::table::{Cell, Format, print};
use crate::api::cluster::conn_host_port;
use crate::config::SyncMode;
use crate::dcs::ClusterView;

/// One member as patronictl's `cluster_as_json` sees it.
struct Row {
    name: String,
    host: Option<String>,
    port: Option<u16>,
    role: &'static str,
    state: String,
    timeline: Option<u64>,
    lag: Option<Result<u64, ()>>,
    pending_restart: bool,
    scheduled_restart: Option<String>,
    tags: Option<serde_json::Map<String, Value>>,
    replicatefrom: Option<String>,
}

fn rows_of(view: &ClusterView) -> Vec<Row> {
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let sync: Vec<&str> = view
        .sync
        .as_ref()
        .map(|s| s.value.members())
        .unwrap_or_default();
    let standby = crate::api::state::is_standby_cluster(view.config.as_ref().map(|c| &c.value));
    let cluster_lsn = view.status.as_ref().map_or(0, |s| s.optime);
    let mode = SyncMode::of(view.config.as_ref().map(|c| &c.value));
    view.members
        .iter()
        .map(|(name, m)| {
            let is_leader = Some(name.as_str()) == leader;
            let role = if is_leader {
                if standby { "Standby Leader" } else { "Leader" }
            } else if mode != SyncMode::Off && sync.contains(&name.as_str()) {
                match mode {
                    SyncMode::Quorum => "Quorum Standby",
                    _ => "Sync Standby",
                }
            } else {
                "Replica"
            };
            let (host, port) = m
                .conn_url
                .as_deref()
                .map(conn_host_port)
                .unwrap_or((None, None));
            let lag = (!is_leader).then(|| match m.xlog_location {
                None => Err(()),
                Some(lsn) => Ok(cluster_lsn.saturating_sub(lsn)),
            });
            let scheduled_restart = m.extra.get("scheduled_restart").and_then(|s| {
                let mut v = s.get("schedule")?.as_str()?.to_owned();
                if let Some(pv) = s.get("postgres_version").and_then(Value::as_str) {
                    v.push_str(&format!(" if version < {pv}"));
                }
                Some(v)
            });
            Row {
                name: name.clone(),
                host,
                port: port.and_then(|p| p.parse().ok()),
                role,
                state: m.state.clone().unwrap_or_default(),
                timeline: m.timeline,
                lag,
                pending_restart: m.pending_restart.unwrap_or(false),
                scheduled_restart,
                tags: m.tags.clone().filter(|t| !t.is_empty()),
                replicatefrom: m
                    .tag("replicatefrom")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }
        })
        .collect()
}

/// Leader first, then each member's cascade under it, names indented with `+ `.
fn topology_order(rows: Vec<Row>, leader: Option<&str>) -> Vec<Row> {
    let mut out = Vec::new();
    let mut rest = rows;
    fn take_children(
        parent: Option<&str>,
        depth: usize,
        rest: &mut Vec<Row>,
        out: &mut Vec<Row>,
        leader: Option<&str>,
    ) {
        let mut i = 0;
        while i < rest.len() {
            let upstream = rest[i]
                .replicatefrom
                .as_deref()
                .filter(|u| Some(*u) != leader);
            let is_child = match parent {
                None => Some(rest[i].name.as_str()) == leader,
                Some(p) if Some(p) == leader => {
                    upstream.is_none() && Some(rest[i].name.as_str()) != leader
                }
                Some(p) => upstream == Some(p),
            };
            if is_child {
                let mut r = rest.remove(i);
                let name = r.name.clone();
                if depth > 0 {
                    r.name = format!("{}+ {}", "  ".repeat(depth - 1), r.name);
                }
                out.push(r);
                take_children(Some(&name), depth + 1, rest, out, leader);
            } else {
                i += 1;
            }
        }
    }
    take_children(None, 0, &mut rest, &mut out, leader);
    if leader.is_none() {
        take_children(Some(""), 0, &mut rest, &mut out, Some(""));
    }
    out.append(&mut rest);
    out
}

/// Prints the members table of `view`.
pub fn output_members(ctx: &Ctx, view: &ClusterView, fmt: Format, extended: bool) {
    let mut rows = rows_of(view);
    if fmt == Format::Topology {
        rows = topology_order(rows, view.leader.as_ref().map(|l| l.name.as_str()));
    }
    let mut columns = vec![
        "Cluster",
        "Member",
        "Host",
        "Role",
        "State",
        "TL",
        "Lag in MB",
    ];
    let with_host: Vec<&Row> = rows.iter().filter(|r| r.host.is_some()).collect();
    let pending = extended || with_host.iter().any(|r| r.pending_restart);
    let scheduled = extended || with_host.iter().any(|r| r.scheduled_restart.is_some());
    let tags = extended || with_host.iter().any(|r| r.tags.is_some());
    for (on, c) in [
        (pending, "Pending restart"),
        (scheduled, "Scheduled restart"),
        (tags, "Tags"),
    ] {
        if on {
            columns.push(c);
        }
    }
    let mut hosts: Vec<&str> = with_host.iter().filter_map(|r| r.host.as_deref()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let append_port = with_host.iter().any(|r| r.port.is_some_and(|p| p != 5432))
        || hosts.len() < with_host.len();
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            let mut host = r.host.clone().unwrap_or_default();
            if append_port
                && !host.is_empty()
                && let Some(p) = r.port
            {
                host = format!("{host}:{p}");
            }
            let mut row = vec![
                Cell::from(ctx.scope.as_str()),
                Cell::from(r.name.as_str()),
                Cell::from(host),
                Cell::from(r.role),
                Cell::from(r.state.as_str()),
                r.timeline.map_or(Cell::from(""), |t| Cell::Int(t as i64)),
                match r.lag {
                    None => Cell::from(""),
                    Some(Err(())) => Cell::from("unknown"),
                    // Python's round() of MB.
                    Some(Ok(b)) => Cell::Int(round_half_even(b as f64 / 1048576.0)),
                },
            ];
            if pending {
                row.push(Cell::from(if r.pending_restart { "*" } else { "" }));
            }
            if scheduled {
                row.push(Cell::from(r.scheduled_restart.clone().unwrap_or_default()));
            }
            if tags {
                let t = r.tags.as_ref().map_or(String::new(), |t| {
                    let yaml = super::yaml::dump(&Value::Object(t.clone()));
                    yaml.trim().to_owned()
                });
                row.push(Cell::from(t));
            }
            row
        })
        .collect();
    let sysid = match view.initialize.as_deref() {
        None => "uninitialized".to_owned(),
        Some("") => "initializing".to_owned(),
        Some(s) => s.to_owned(),
    };
    let title = format!(" Cluster: {} ({sysid}) ", ctx.scope);
    let right = ["TL", "Lag in MB"];
    if matches!(fmt, Format::Pretty | Format::Topology) {
        // The cluster column is the title.
        let cols: Vec<&str> = columns[1..].to_vec();
        let rows: Vec<Vec<Cell>> = cells.into_iter().map(|mut r| r.split_off(1)).collect();
        print(fmt, &cols, &rows, &right, Some(&title));
        for line in service_info(view) {
            println!(" {line}");
        }
    } else {
        print(fmt, &columns, &cells, &right, Some(&title));
    }
}

/// `Maintenance mode: on`, `Switchover scheduled at: ...` footers.
fn service_info(view: &ClusterView) -> Vec<String> {
    let mut out = Vec::new();
    if crate::api::state::config_paused(view.config.as_ref().map(|c| &c.value)) {
        out.push("Maintenance mode: on".to_owned());
    }
    if let Some(f) = &view.failover
        && let Some(at) = &f.value.scheduled_at
    {
        let mut info = format!("Switchover scheduled at: {at}");
        if let Some(l) = &f.value.leader {
            info.push_str(&format!("\n{:>24}: {l}", "from"));
        }
        if let Some(m) = &f.value.member {
            info.push_str(&format!("\n{:>24}: {m}", "to"));
        }
        out.push(info);
    }
    out
}

fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// `list [-e] [-f fmt] [-W | -w N]`.
pub async fn list(
    ctx: &Ctx,
    fmt: Format,
    extended: bool,
    watch: Option<f64>,
) -> Result<(), CtlError> {
    loop {
        let view = ctx.cluster().await?;
        output_members(ctx, &view, fmt, extended);
        let Some(secs) = watch else { return Ok(()) };
        tokio::time::sleep(std::time::Duration::from_secs_f64(secs.max(0.1))).await;
        println!();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn python_round() {
        assert_eq!(super::round_half_even(0.5), 0);
        assert_eq!(super::round_half_even(1.5), 2);
        assert_eq!(super::round_half_even(2.4), 2);
    }
}
