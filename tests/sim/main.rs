//! Deterministic simulation of the whole agent: every member runs the real shell
//! (`pgwarden::agent::supervise`, the binary's observe/execute/publish code and the HA core)
//! on simulated endpoints (`endpoints.rs`: the in-memory store behind a lossy network, a
//! simulated PostgreSQL, fence, peers and clocks), on tokio's paused clock, with the lock on
//! etcd's semantics or on those of a Kubernetes Lease (`lease.rs`). Thousands of random
//! failure schedules (crashes, shutdowns, restarts, partitions, lost and delayed messages,
//! store outages, stalls, clock drift, clocks that jump ahead, wall clocks stepped either way,
//! switchovers, config changes, pauses, deleted locks, broken watchdogs, restart and
//! reinitialize requests, stubborn stops), each checked at every change against the
//! invariants of ha-safety.md:
//! - no two members accept writes at the same instant;
//! - a member accepts writes only while the store says it holds the lock;
//! - PostgreSQL is never writable past its member's lease deadline (plus a stall and the
//!   stop), nor long past a break of its required watchdog;
//! - a switchover scheduled for later never hands over early (by the leader's wall clock);
//! - once every fault is healed, a writable leader exists within ttl + loop_wait (+ the time
//!   promotion and probing take).
//!
//! `SIM_SEEDS=N` sets how many schedules run (default 5000), on every core; `SIM_SEED=S`
//! replays one with a trace on stderr.

mod endpoints;
mod fake_pg;
mod lease;
mod params;
mod replication;
mod run;
mod world;

use run::run_seed;

/// Log lines stamped with the simulated time (seconds since the replayed run began), as the
/// world's own lines are.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(tokio::time::Instant::now);
        write!(
            w,
            "{:>10.3}",
            (tokio::time::Instant::now() - start).as_secs_f64()
        )
    }
}

#[test]
fn random_failure_schedules_keep_one_primary() {
    if let Ok(s) = std::env::var("SIM_SEED") {
        let seed: u64 = s.parse().expect("SIM_SEED must be an integer");
        // The agents' own log lines, between the world's (SIM_LOG=debug shows every action).
        let level = match std::env::var("SIM_LOG").as_deref() {
            Ok("debug") => tracing::Level::DEBUG,
            _ => tracing::Level::INFO,
        };
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_timer(SimTime)
            .with_writer(std::io::stderr)
            .try_init();
        let r = run_seed(seed, true);
        r.result.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let n: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()) as u64;
    let next = std::sync::atomic::AtomicU64::new(0);
    let results = std::sync::Mutex::new((Vec::new(), 0u64));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= n {
                        return;
                    }
                    let r = run_seed(seed, false);
                    let mut g = results.lock().unwrap();
                    g.1 += r.checks;
                    if let Err(e) = r.result {
                        g.0.push((seed, e));
                    }
                }
            });
        }
    });
    let (mut failures, checks) = results.into_inner().unwrap();
    failures.sort();
    eprintln!("{n} schedules, {checks} invariant checks");
    let shown: Vec<String> = failures
        .iter()
        .map(|(seed, e)| {
            format!(
                "seed {seed}: {e}\n  replay: SIM_SEED={seed} cargo test --test sim -- --nocapture"
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} schedules failed:\n{}",
        failures.len(),
        shown.join("\n")
    );
}

#[test]
fn a_schedule_replays_identically() {
    for seed in [1u64, 7, 42] {
        let a = run_seed(seed, false);
        let b = run_seed(seed, false);
        assert_eq!(a.result, b.result);
        assert!(
            a.trace.len() > 10,
            "seed {seed}: a trace of {} lines",
            a.trace.len()
        );
        assert_eq!(a.trace, b.trace, "seed {seed} did not replay identically");
    }
}
