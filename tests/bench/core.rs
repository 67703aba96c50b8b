//! The core benchmark (issue 2): a three-member cluster on loopback (real PostgreSQL 15 and
//! etcd) with a client inserting a row every 20 ms through libpq-style multi-host connection
//! strings with `target_session_attrs=read-write`. It reports:
//! (a) the longest write gap of planned switchovers (`POST /switchover`);
//! (b) crash-to-first-write: the primary's agent and postmaster killed with SIGKILL, until the
//!     first write commits on the new primary, at ttl 5, loop_wait 1, retry_timeout 2;
//! (c) steady-state RSS of each member's agent.
//!
//! Run: `cargo bench --bench core` (as root it runs members as `postgres`). Prints figures;
//! asserts nothing about time.

#[path = "../support/cluster.rs"]
mod cluster;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Backend, Cluster, Timings};
use reqwest::Method;

/// Instants of committed writes.
type Log = Arc<Mutex<Vec<Instant>>>;

/// A client that inserts a row every 20 ms, reconnecting through the host list when its
/// connection breaks, as an application using libpq's read-write host list does.
fn start_writer(
    ports: Vec<u16>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Log, tokio::task::JoinHandle<()>) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let out = log.clone();
    let h = tokio::spawn(async move {
        let cfg = cluster::read_write_config(&ports);
        let mut client: Option<tokio_postgres::Client> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            tick.tick().await;
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match cfg.connect(tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        Some(c)
                    }
                    Err(_) => None,
                };
            }
            let Some(c) = &client else { continue };
            match tokio::time::timeout(
                Duration::from_secs(1),
                c.simple_query("INSERT INTO bench VALUES (now())"),
            )
            .await
            {
                Ok(Ok(_)) => out.lock().unwrap().push(Instant::now()),
                _ => client = None,
            }
        }
    });
    (log, h)
}

/// Longest gap between consecutive writes in [from, to].
fn longest_gap(log: &Log, from: Instant, to: Instant) -> Duration {
    let l = log.lock().unwrap();
    let w: Vec<Instant> = l
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    w.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(to - from)
}

fn first_write_after(log: &Log, t: Instant) -> Option<Instant> {
    log.lock().unwrap().iter().copied().find(|w| *w > t)
}

/// The agent's fence process: its child running `fence-helper`.
fn fence_of(agent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: u32 = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (ppid == agent && String::from_utf8_lossy(&cmd).contains("fence-helper")).then_some(pid)
    })
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn healthy(c: &Cluster) -> String {
    let long = Duration::from_secs(120);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    c.wait_for("all members streaming", long, || async {
        let v = c.view().await?;
        let ok = v.members.len() == c.members.len()
            && v.members.iter().all(|(n, m)| {
                m.state.as_deref() == Some("running")
                    && (*n == leader || m.replication_state.as_deref() == Some("streaming"))
            });
        ok.then_some(())
    })
    .await;
    leader
}

fn summary(name: &str, xs: &[f64]) {
    if xs.is_empty() {
        println!("{name}: no data");
        return;
    }
    let min = xs.iter().cloned().fold(f64::MAX, f64::min);
    let max = xs.iter().cloned().fold(0.0, f64::max);
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let list: Vec<String> = xs.iter().map(|x| format!("{x:.3}")).collect();
    println!(
        "{name}: min {min:.3} s, mean {mean:.3} s, max {max:.3} s over {} runs [{}]",
        xs.len(),
        list.join(", ")
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let t = Timings {
        ttl: 5,
        loop_wait: 1,
        retry_timeout: 2,
    };
    let Some(mut c) = Cluster::start(Backend::Etcd, "bench", 3, t).await else {
        eprintln!("components missing");
        return;
    };
    let leader = healthy(&c).await;
    let l = c.index(&leader);
    c.sql(l, "CREATE TABLE IF NOT EXISTS bench (at timestamptz)")
        .await
        .expect("create table");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ports: Vec<u16> = c.members.iter().map(|m| m.pg_port).collect();
    let (log, writer) = start_writer(ports, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // (c) steady state RSS, 30 s after the cluster is healthy (with the client writing):
    // each agent, and its fence process (a separate, single-threaded process).
    tokio::time::sleep(Duration::from_secs(27)).await;
    let leader = c.leader().await.unwrap_or_default();
    for m in &c.members {
        if let Some(ch) = &m.child {
            let fence = fence_of(ch.id());
            println!(
                "rss {}{}: agent {} kB, fence process {} kB",
                m.name,
                if m.name == leader { " (leader)" } else { "" },
                rss_kb(ch.id()).unwrap_or(0),
                fence.and_then(rss_kb).unwrap_or(0)
            );
        }
    }

    // (a) planned switchovers.
    let mut gaps = Vec::new();
    for _ in 0..runs {
        let leader = healthy(&c).await;
        let l = c.index(&leader);
        let candidate = c
            .members
            .iter()
            .find(|m| m.name != leader)
            .unwrap()
            .name
            .clone();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t0 = Instant::now();
        let body = format!(r#"{{"leader": "{leader}", "candidate": "{candidate}"}}"#);
        let (code, text) = c.api(l, Method::POST, "/switchover", Some(&body)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let gap = longest_gap(&log, t0 - Duration::from_millis(100), Instant::now());
        println!(
            "switchover {leader} -> {candidate}: {code} {text}; longest write gap {:.3} s",
            gap.as_secs_f64()
        );
        gaps.push(gap.as_secs_f64());
    }

    // (b) crash to first write.
    let mut crash = Vec::new();
    for _ in 0..runs.min(3) {
        let leader = healthy(&c).await;
        let l = c.index(&leader);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let t0 = Instant::now();
        c.kill9(l);
        let first = c
            .wait_for(
                "a write on the new primary",
                Duration::from_secs(60),
                || async {
                    let new = c.leader().await.filter(|n| *n != leader);
                    new.and(first_write_after(&log, t0))
                },
            )
            .await;
        let d = (first - t0).as_secs_f64();
        println!("crash of {leader}: first write on the new primary after {d:.3} s");
        crash.push(d);
        c.spawn(l);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = writer.await;
    println!();
    summary(
        "planned switchover, longest write gap (target <= 0.3 s; Patroni 3.0.2: 1.27-1.37 s)",
        &gaps,
    );
    summary(
        "crash to first write at ttl 5 (target <= 6 s; Patroni 3.0.2: 5.2 s)",
        &crash,
    );
    healthy(&c).await;
    for m in &c.members {
        if let Some(ch) = &m.child {
            println!(
                "rss after the runs {}: {} kB (target <= 10 MB; Patroni 3.0.2: 59-61 MB)",
                m.name,
                rss_kb(ch.id()).unwrap_or(0)
            );
        }
    }
}
