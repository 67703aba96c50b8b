//! Talking to a test member from outside: SQL on its PostgreSQL, requests to its REST API, its
//! log. Used through the cluster harness (`cluster.rs`), and directly by tests that probe a
//! member's port on their own terms.
#![allow(dead_code)]

use std::path::Path;

use pgwarden::dcs::ClusterView;
use std::time::Duration;

// The includer declares `poll` (tests/support/poll.rs) beside this module.
pub use super::poll::poll_until;

/// `n` different free loopback ports: all listeners are held until every port is chosen, so
/// no two members get the same one.
pub fn distinct_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Runs `sql` as the superuser on the PostgreSQL at `host:port`; the first column of every
/// row.
pub async fn sql(host: &str, port: u16, sql: &str) -> Result<Vec<String>, String> {
    let conn = format!(
        "host={host} port={port} user=postgres password=postgres dbname=postgres connect_timeout=3"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let rows = tokio::time::timeout(Duration::from_secs(10), client.simple_query(sql))
        .await
        .map_err(|_| "query timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}

/// One REST request to the API at `host:port`: (status, body), or (0, error) when it failed.
pub async fn api(
    http: &reqwest::Client,
    host: &str,
    port: u16,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("http://{host}:{port}{path}");
    let mut rq = http.request(method, url).timeout(Duration::from_secs(60));
    if let Some(b) = body {
        rq = rq
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    match rq.send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Prints the last 40 lines of a member's log, without PostgreSQL's own LOG lines.
pub fn dump_log(name: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" LOG: ")).collect();
    let tail = lines.len().saturating_sub(40);
    eprintln!(
        "===== {name} (last lines) =====\n{}",
        lines[tail..].join("\n")
    );
}

/// The member's key says it runs as a replica streaming on `timeline`.
pub fn streaming_on(view: &ClusterView, name: &str, timeline: u64) -> bool {
    view.members.get(name).is_some_and(|m| {
        m.state.as_deref() == Some("running")
            && m.replication_state.as_deref() == Some("streaming")
            && m.timeline == Some(timeline)
    })
}
