//! HAProxy with Patroni's documented health checks (`option httpchk OPTIONS /primary`,
//! `http-check expect status 200`, `/replica` for the read port) in front of a pgwarden cluster
//! sends writes to the leader and follows a switchover and a failover; pgBouncer pointed at
//! HAProxy's primary port keeps serving one client (same target throughout; a failed statement
//! is retried) through the switchover.
//! Skipped outside CI when haproxy, pgbouncer, PostgreSQL or etcd is missing; fails in CI.

#[path = "support/cluster.rs"]
mod cluster;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cluster::{Backend, Cluster, Timings, distinct_ports};

const T: Timings = Timings {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 3,
};
const HAPROXY: &str = "/usr/sbin/haproxy";
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A child process killed when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let f = std::fs::File::create(path).unwrap();
    (f.try_clone().unwrap().into(), f.into())
}

/// Patroni's documented HAProxy configuration: one `listen` per role, checks on the REST API.
/// A stats page (`;csv`) lets the test see what the checks decided.
fn haproxy_cfg(c: &Cluster, primary: u16, replicas: u16, stats: u16) -> String {
    let section = |name: &str, port: u16, check: &str| {
        let mut s = format!(
            "listen {name}\n    bind 127.0.0.1:{port}\n    option httpchk OPTIONS /{check}\n    \
             http-check expect status 200\n    \
             default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n"
        );
        for m in &c.members {
            s.push_str(&format!(
                "    server {} 127.0.0.1:{} maxconn 100 check port {}\n",
                m.name, m.pg_port, m.api_port
            ));
        }
        s
    };
    format!(
        "global\n    maxconn 200\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
         timeout client 30m\n    timeout server 30m\n    timeout check 2s\n\n{}\n{}\n\
         listen stats\n    mode http\n    bind 127.0.0.1:{stats}\n    stats enable\n    \
         stats uri /stats\n",
        section("primary", primary, "primary"),
        section("replicas", replicas, "replica")
    )
}

fn start_haproxy(c: &Cluster, primary: u16, replicas: u16, stats: u16) -> Guard {
    let cfg = c.dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_cfg(c, primary, replicas, stats)).unwrap();
    let (out, err) = log_file(&c.dir.join("haproxy.log"));
    let check = Command::new(HAPROXY)
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy rejects the config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // -db: foreground, no daemon; the guard kills it.
    Guard(
        Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn haproxy"),
    )
}

/// pgBouncer refuses to run as root: it runs as `postgres` then, from files it can read.
fn start_pgbouncer(c: &Cluster, listen: u16, upstream: u16) -> Guard {
    let users = c.dir.join("pgbouncer-users.txt");
    std::fs::write(&users, "\"postgres\" \"postgres\"\n").unwrap();
    let ini = c.dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\npostgres = host=127.0.0.1 port={upstream} dbname=postgres \
             user=postgres password=postgres\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {listen}\nunix_socket_dir =\nauth_type = md5\nauth_file = {}\n\
             pool_mode = transaction\nserver_login_retry = 1\nserver_connect_timeout = 3\n\
             ignore_startup_parameters = extra_float_digits\n",
            users.display()
        ),
    )
    .unwrap();
    let (out, err) = log_file(&c.dir.join("pgbouncer.log"));
    let mut cmd = Command::new(PGBOUNCER);
    cmd.arg(&ini).stdin(Stdio::null()).stdout(out).stderr(err);
    if nix::unistd::geteuid().is_root() {
        let u = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("user postgres");
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    Guard(cmd.spawn().expect("spawn pgbouncer"))
}

/// The servers HAProxy has UP in proxy `px`, from its CSV stats page (`status` column).
async fn haproxy_up(stats: u16, px: &str) -> Option<Vec<String>> {
    let csv = reqwest::Client::builder()
        .no_proxy()
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{stats}/stats;csv"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut up: Vec<String> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > 17 && f[0] == px && f[1] != "FRONTEND" && f[1] != "BACKEND")
        .filter(|f| f[17] == "UP")
        .map(|f| f[1].to_owned())
        .collect();
    up.sort();
    Some(up)
}

/// Waits until HAProxy's checks have `want` (sorted) as the only UP servers of `px`: servers
/// start UP before their first check, so routing is only meaningful after this.
async fn wait_up(c: &Cluster, stats: u16, px: &str, mut want: Vec<String>) {
    want.sort();
    c.wait_for(
        &format!("HAProxy {px} UP = {want:?}"),
        Duration::from_secs(60),
        || async { (haproxy_up(stats, px).await? == want).then_some(()) },
    )
    .await;
}

async fn connect(port: u16) -> Result<tokio_postgres::Client, String> {
    let conn = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres connect_timeout=3"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

/// The first column of each row of `sql` (simple protocol: pgBouncer's transaction mode).
async fn query(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, String> {
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

/// One fresh connection through `port`: the PostgreSQL port that answered a write, or why not.
async fn write_through(port: u16, value: &str) -> Result<u16, String> {
    let client = connect(port).await?;
    let rows = query(
        &client,
        &format!("INSERT INTO routed(v) VALUES ('{value}'); SELECT inet_server_port()"),
    )
    .await?;
    rows.last()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {rows:?}"))
}

/// `(server port, in recovery)` of a fresh connection through `port`.
async fn who_answers(port: u16) -> Result<(u16, bool), String> {
    let client = connect(port).await?;
    let rows = query(
        &client,
        "SELECT inet_server_port() || ',' || pg_is_in_recovery()",
    )
    .await?;
    let row = rows.first().ok_or("no row")?;
    let (p, r) = row.split_once(',').ok_or("bad row")?;
    Ok((p.parse().map_err(|_| "bad port")?, r == "true"))
}

/// What the pgBouncer client has seen so far.
#[derive(Default)]
struct ClientStats {
    ok: AtomicU64,
    failed: AtomicU64,
    /// PostgreSQL port of the last successful write.
    last_port: AtomicU64,
}

/// A client that keeps one pgBouncer address and writes every 100 ms; a failed statement is
/// retried, a dropped connection is reopened to the same address.
async fn bouncer_client(port: u16, stats: Arc<ClientStats>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut n = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(port).await.ok();
        }
        let Some(c) = client.as_ref() else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        n += 1;
        let sql =
            format!("INSERT INTO routed(v) VALUES ('bouncer-{n}'); SELECT inet_server_port()");
        match query(c, &sql).await {
            Ok(rows) => {
                let p = rows.last().and_then(|p| p.parse().ok()).unwrap_or(0);
                stats.last_port.store(p, Ordering::Relaxed);
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn missing_component() -> Option<&'static str> {
    [HAPROXY, PGBOUNCER]
        .into_iter()
        .find(|p| !PathBuf::from(p).is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_and_pgbouncer_follow_the_leader() {
    if let Some(p) = missing_component() {
        assert!(
            !in_ci(),
            "CI=true but {p} is missing (apt-get install haproxy pgbouncer)"
        );
        eprintln!("SKIPPED: {p} is missing");
        return;
    }
    let Some(mut c) = Cluster::start(Backend::Etcd, "haproxy", 3, T).await else {
        return;
    };
    let long = Duration::from_secs(120);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    c.wait_for("two streaming replicas", long, || async {
        let v = c.view().await?;
        let n = v
            .members
            .values()
            .filter(|m| m.replication_state.as_deref() == Some("streaming"))
            .count();
        (n == 2).then_some(())
    })
    .await;
    let li = c.index(&leader);
    c.sql(li, "CREATE TABLE routed(v text)").await.unwrap();

    let ports = distinct_ports(4);
    let (primary, replicas, bouncer, stats_port) = (ports[0], ports[1], ports[2], ports[3]);
    let _haproxy = start_haproxy(&c, primary, replicas, stats_port);
    let others = |l: &str| -> Vec<String> {
        c.members
            .iter()
            .map(|m| m.name.clone())
            .filter(|m| m != l)
            .collect()
    };
    // The checks: the leader alone passes `OPTIONS /primary`, the replicas `OPTIONS /replica`.
    wait_up(&c, stats_port, "primary", vec![leader.clone()]).await;
    wait_up(&c, stats_port, "replicas", others(&leader)).await;
    let _pgbouncer = start_pgbouncer(&c, bouncer, primary);
    let pg_ports: std::collections::HashMap<String, u16> = c
        .members
        .iter()
        .map(|m| (m.name.clone(), m.pg_port))
        .collect();
    let pg_port_of = |name: &str| pg_ports[name];

    // Writes through the primary port land on the leader; the replica port reaches a replica.
    let landed = c
        .wait_for("a write through HAProxy", long, || async {
            write_through(primary, "before").await.ok()
        })
        .await;
    assert_eq!(
        landed,
        pg_port_of(&leader),
        "the write must land on the leader"
    );
    let (port, in_recovery) = c
        .wait_for("a read through the replica port", long, || async {
            who_answers(replicas).await.ok()
        })
        .await;
    assert!(
        in_recovery && port != pg_port_of(&leader),
        "replica port reached {port}"
    );

    // A pgBouncer client starts writing before the switchover.
    let stats = Arc::new(ClientStats::default());
    let client_task = tokio::spawn(bouncer_client(bouncer, stats.clone()));
    c.wait_for("the pgBouncer client writing", long, || async {
        (stats.ok.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;

    // Switchover: HAProxy follows, pgBouncer's client keeps writing to the new leader.
    let candidate = c
        .members
        .iter()
        .map(|m| m.name.clone())
        .find(|m| *m != leader)
        .unwrap();
    let body = format!(r#"{{"leader":"{leader}","candidate":"{candidate}"}}"#);
    let (code, text) = c
        .api(li, reqwest::Method::POST, "/switchover", Some(&body))
        .await;
    assert_eq!(code, 200, "{text}");
    c.wait_for("the candidate leads", long, || async {
        c.leader().await.filter(|l| *l == candidate)
    })
    .await;
    wait_up(&c, stats_port, "primary", vec![candidate.clone()]).await;
    let new_port = pg_port_of(&candidate);
    c.wait_for("HAProxy sends writes to the new leader", long, || async {
        (write_through(primary, "after-switchover").await.ok()? == new_port).then_some(())
    })
    .await;
    let ok_at_switch = stats.ok.load(Ordering::Relaxed);
    c.wait_for(
        "the pgBouncer client writing on the new leader",
        long,
        || async {
            (stats.ok.load(Ordering::Relaxed) >= ok_at_switch + 5
                && stats.last_port.load(Ordering::Relaxed) == u64::from(new_port))
            .then_some(())
        },
    )
    .await;
    eprintln!(
        "pgBouncer client through the switchover: {} writes, {} failed statements (retried)",
        stats.ok.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed)
    );

    // Failover: kill -9 the leader's agent once its writes reached the replicas (asynchronous
    // replication: a write not yet shipped may be lost, which is not what this test is about).
    for m in c
        .members
        .iter()
        .map(|m| m.name.clone())
        .filter(|m| *m != candidate)
    {
        let i = c.index(&m);
        c.wait_for(&format!("the switchover write on {m}"), long, || async {
            let rows = c
                .sql(
                    i,
                    "SELECT count(*) FROM routed WHERE v = 'after-switchover'",
                )
                .await
                .ok()?;
            (rows.first().map(String::as_str) != Some("0")).then_some(())
        })
        .await;
    }
    c.kill9(c.index(&candidate));
    let survivor = c
        .wait_for("a new leader after the kill", long, || async {
            c.leader().await.filter(|l| *l != candidate)
        })
        .await;
    wait_up(&c, stats_port, "primary", vec![survivor.clone()]).await;
    let survivor_port = pg_port_of(&survivor);
    c.wait_for("HAProxy sends writes to the survivor", long, || async {
        (write_through(primary, "after-failover").await.ok()? == survivor_port).then_some(())
    })
    .await;
    client_task.abort();

    // Every write made through HAProxy before the failover is on the survivor.
    let rows = c
        .sql(
            c.index(&survivor),
            "SELECT string_agg(DISTINCT v, ',' ORDER BY v) FROM routed \
             WHERE v IN ('before', 'after-switchover', 'after-failover')",
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec!["after-failover,after-switchover,before".to_owned()]
    );
}
