//! One schedule, run: every member's real shell (`pgwarden::agent::supervise`) on simulated
//! endpoints, on tokio's paused clock in a single-threaded runtime (so that a seed replays
//! exactly), with the schedule's faults injected, until the end of its quiet phase or the
//! first broken invariant.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden::api::{ApiCommand, Reply};
use pgwarden::dcs::mem::{MemDcs, MemStore};
use pgwarden::dcs::{Dcs, Failover};
use pgwarden::ha::Request;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::endpoints::{Me, endpoints};
use crate::fake_pg::Run;
use crate::lease::LeaseDcs;
use crate::params::{Fault, PG_CTL_TIMEOUT, Params};
use crate::world::{Shared, World, wall_clock};

/// What a run found: the first broken invariant (or `Ok`), its trace, how many checks ran.
pub struct Outcome {
    pub result: Result<(), String>,
    pub trace: Vec<String>,
    pub checks: u64,
}

pub fn run_seed(seed: u64, verbose: bool) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let params = Params::random(&mut rng);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let raw = Arc::new(Mutex::new(MemStore::new()));
        let operator = MemDcs::new(raw.clone(), "operator", params.timings.ttl);
        let heal_at = params.fault_phase + params.max_ttl * 3;
        let end = heal_at + params.quiet_phase;
        let max_ttl = params.max_ttl;
        let max_loop_wait = params.max_loop_wait;
        let faults = params.faults.clone();
        let w: Shared = Arc::new(Mutex::new(World::new(seed, params, operator)));
        {
            let mut g = w.lock().unwrap();
            g.verbose = verbose;
            let lock = match g.params.lease_lock {
                true => "a Kubernetes Lease",
                false => "an etcd key",
            };
            let (n, t) = (g.params.members, g.params.timings);
            let sync = g.params.sync;
            g.log(format!("{n} members, the lock {lock}, {t:?}, {sync:?}"));
        }
        let n = w.lock().unwrap().members.len();
        {
            // The store's one watcher: it hands every change on to the members.
            let mut changes = w.lock().unwrap().store.changes();
            let w = w.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    w.lock().unwrap().notify();
                }
            });
        }
        for who in 0..n {
            let d = w.lock().unwrap().millis(0, 500);
            let (w, raw) = (w.clone(), raw.clone());
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                start_member(&w, &raw, who);
            });
        }
        {
            let (w, raw) = (w.clone(), raw.clone());
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                for (at, f) in faults {
                    tokio::time::sleep_until(start + at).await;
                    inject(&w, &raw, f);
                }
            });
        }
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut g = w.lock().unwrap();
            let now = g.now();
            if !g.quiet && now >= heal_at {
                g.quiet = true;
                g.pause = 0;
                g.write_config();
                g.log("quiet phase: every fault healed".into());
            }
            g.tick();
            if g.violation.is_some() || now >= end {
                break;
            }
        }
        let mut g = w.lock().unwrap();
        // Stop every agent before the runtime goes (their tasks hold the world).
        for m in &mut g.members {
            if let Some(t) = m.task.take() {
                t.abort();
            }
        }
        let result = match g.violation.take() {
            Some(v) => Err(v),
            None => {
                // Liveness: with everything healed and connected, a leader that takes writes
                // exists within ttl + loop_wait (plus promotion and probing peers) of the heal,
                // or of the last agent start after it.
                let mut bound = max_ttl + max_loop_wait + Duration::from_secs(5);
                if g.params.failsafe {
                    // An agent in failsafe mode holds off for a ttl from its first look at
                    // the store, which its start-up wait for the store (a read of up to 10 s,
                    // then 5 s between tries) may put 15 s after its start.
                    bound += max_ttl + Duration::from_secs(15);
                }
                let healed = heal_at.max(g.last_agent_start);
                match g.leader_seen_after_heal {
                    Some(t) if t <= healed + bound => Ok(()),
                    Some(t) => Err(format!(
                        "liveness: a writable leader only {:.1}s after healing (bound {:.1}s)",
                        t.saturating_sub(healed).as_secs_f64(),
                        bound.as_secs_f64()
                    )),
                    None => Err(format!(
                        "liveness: no writable leader after healing; {}",
                        g.describe()
                    )),
                }
            }
        };
        Outcome {
            result,
            trace: std::mem::take(&mut g.trace),
            checks: g.checks,
        }
    })
}

/// A member's configuration file.
fn config_of(w: &World, who: usize) -> pgwarden::config::Config {
    let t = w.params.timings;
    let tags = w.params.tags[who];
    let watchdog = if w.members[who].watchdog_required {
        "required"
    } else {
        "off"
    };
    let yaml = format!(
        r#"
scope: sim
name: m{who}
restapi:
  listen: 0.0.0.0:8008
  connect_address: m{who}:8008
etcd3:
  hosts: ["127.0.0.1:2379"]
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
{sync}    failsafe_mode: {failsafe}
    primary_start_timeout: {start_timeout}
    shutdown_handover_timeout: {handover}
    postgresql:
      use_slots: true
      use_pg_rewind: true
postgresql:
  data_dir: /nonexistent/sim/m{who}
  listen: 0.0.0.0:5432
  connect_address: m{who}:5432
  pg_ctl_timeout: {pg_ctl}
  authentication:
    superuser: {{username: postgres, password: sim}}
    replication: {{username: replicator, password: sim}}
tags:
  nofailover: {nofailover}
  failover_priority: {priority}
watchdog:
  mode: {watchdog}
"#,
        ttl = t.ttl.as_secs(),
        loop_wait = t.loop_wait.as_secs(),
        retry = t.retry_timeout.as_secs(),
        pg_ctl = PG_CTL_TIMEOUT.as_secs(),
        nofailover = tags.nofailover,
        priority = tags.failover_priority,
        sync = w.params.sync.yaml(),
        failsafe = w.params.failsafe,
        start_timeout = w.params.primary_start_timeout,
        handover = w.params.shutdown_handover_timeout,
    );
    pgwarden::config::load_from_str(&yaml).expect("the simulation's configuration is valid")
}

/// Starts a new incarnation of member `who`'s agent: the real shell on simulated endpoints.
fn start_member(w: &Shared, raw: &Arc<Mutex<MemStore>>, who: usize) {
    let mut g = w.lock().unwrap();
    if g.members[who].alive {
        return;
    }
    let cfg = config_of(&g, who);
    let ttl = g.timings.ttl;
    let lease_lock = g.params.lease_lock;
    let m = &mut g.members[who];
    m.inc += 1;
    m.alive = true;
    m.deadline_real = None;
    m.fence_armed = false;
    m.watchdog_tx = watch::channel(pgwarden::agent::DeviceStatus::Closed).0;
    let (cmd_tx, cmd_rx) = mpsc::channel::<ApiCommand>(16);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    m.cmds = Some(cmd_tx);
    m.shutdown = Some(stop_tx);
    m.api
        .publish(pgwarden::api::Snapshot::new("sim", m.name.as_str()));
    let api = m.api.clone();
    let me = Me {
        w: w.clone(),
        who,
        inc: m.inc,
    };
    let name = m.name.clone();
    g.log(format!("{name} agent starts"));
    g.last_agent_start = g.now();
    drop(g);
    let store = MemDcs::new(raw.clone(), &name, ttl);
    let store: Arc<dyn Dcs> = match lease_lock {
        true => {
            let lease = Arc::new(LeaseDcs::new(store, &name, ttl));
            let watcher = lease.clone();
            w.lock().unwrap().members[who].watch = Some(Arc::new(move || watcher.observe_now()));
            lease
        }
        false => Arc::new(store),
    };
    let ends = endpoints(me.clone(), store);
    let (w2, raw2) = (w.clone(), raw.clone());
    let task = tokio::spawn(async move {
        let view = pgwarden::agent::wait_for_store(ends.dcs.as_ref()).await;
        let r = pgwarden::agent::supervise(cfg, ends, view, api, cmd_rx, async move {
            let _ = stop_rx.await;
        })
        // Every line the agent logs names its member.
        .instrument(tracing::info_span!("agent", member = %name))
        .await;
        // The agent exited: PostgreSQL, its child, dies with it.
        let restart = {
            let mut g = w2.lock().unwrap();
            if g.members[who].inc != me.inc {
                return;
            }
            g.log(format!("m{who} agent exited: {r:?}"));
            let m = &mut g.members[who];
            m.alive = false;
            m.inc += 1;
            let asked_to_stop = m.shutdown.is_none();
            if m.pg.alive() {
                m.pg.set(Run::Down);
            }
            g.check();
            !asked_to_stop
        };
        // A fatal exit: the supervisor (systemd, the kubelet) starts it again.
        if restart {
            tokio::time::sleep(Duration::from_secs(5)).await;
            start_member(&w2, &raw2, who);
        }
    });
    w.lock().unwrap().members[who].task = Some(task);
}

/// Kills member `who`'s agent (and with it PostgreSQL).
fn crash(g: &mut World, who: usize) {
    let m = &mut g.members[who];
    if let Some(t) = m.task.take() {
        t.abort();
    }
    m.alive = false;
    m.inc += 1;
    m.cmds = None;
    m.shutdown = None;
    if m.pg.alive() {
        m.pg.set(Run::Down);
    }
    g.check();
}

/// Heals `f` after `d`.
fn later(w: &Shared, d: Duration, f: impl FnOnce(&mut World) + Send + 'static) {
    let w = w.clone();
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        let mut g = w.lock().unwrap();
        f(&mut g);
        g.check();
    });
}

fn inject(w: &Shared, raw: &Arc<Mutex<MemStore>>, f: Fault) {
    let mut g = w.lock().unwrap();
    if g.quiet {
        return;
    }
    g.log(format!("fault {f:?}"));
    let now = g.now();
    match f {
        Fault::CrashMember { who, down_for } => {
            if !g.members[who].alive {
                return;
            }
            crash(&mut g, who);
            let (w, raw) = (w.clone(), raw.clone());
            tokio::spawn(async move {
                tokio::time::sleep(down_for).await;
                start_member(&w, &raw, who);
            });
        }
        Fault::Shutdown { who, down_for } => {
            let Some(stop) = g.members[who].shutdown.take() else {
                return;
            };
            let _ = stop.send(());
            let (w, raw) = (w.clone(), raw.clone());
            let inc = g.members[who].inc;
            tokio::spawn(async move {
                tokio::time::sleep(down_for.max(PG_CTL_TIMEOUT * 3)).await;
                {
                    // Not stopped in time: killed, as a supervisor would.
                    let mut g = w.lock().unwrap();
                    if g.members[who].inc == inc {
                        g.log(format!("m{who} did not stop: killed"));
                        crash(&mut g, who);
                    }
                }
                start_member(&w, &raw, who);
            });
        }
        Fault::CrashPg { who } => {
            if g.members[who].pg.alive() {
                g.members[who].pg.set(Run::Down);
            }
        }
        Fault::CutFromStore { who, for_ } => {
            g.members[who].store_cut += 1;
            later(w, for_, move |g| g.members[who].store_cut -= 1);
        }
        Fault::CutFromPeers { who, for_ } => {
            g.cut_peers(who);
            later(w, for_, move |g| g.heal_peers(who));
        }
        Fault::Isolate { who, for_ } => {
            g.members[who].store_cut += 1;
            g.cut_peers(who);
            later(w, for_, move |g| {
                g.members[who].store_cut -= 1;
                g.heal_peers(who);
            });
        }
        Fault::StoreOutage { for_ } => {
            g.store_down += 1;
            later(w, for_, |g| g.store_down -= 1);
        }
        Fault::Stall { who, for_ } => {
            let m = &mut g.members[who];
            m.frozen_until = m.frozen_until.max(now + for_);
        }
        Fault::Switchover { to, after } => {
            // One request at a time: a new one while the last is still being carried out
            // would move the goalposts of the invariant that judges it.
            let pending = g.store.edit(|s, now| s.get("failover", now)).is_some();
            if let Some(leader) = g.holder().filter(|_| !pending) {
                let f = Failover {
                    leader: Some(leader),
                    member: Some(format!("m{to}")),
                    scheduled_at: after.map(|a| wall_clock(now + a).to_rfc3339()),
                };
                g.store
                    .edit(|s, now| s.put("failover", &f.to_json(), None, now));
            }
        }
        Fault::ChangeTimings { timings } => {
            g.timings = timings;
            g.write_config();
        }
        Fault::DeleteLock => {
            if let Some(h) = g.holder() {
                g.deleted_holder = Some(h);
            }
            g.store.edit(|s, now| s.delete("leader", now));
        }
        Fault::Pause { for_ } => {
            g.pause += 1;
            g.write_config();
            later(w, for_, |g| {
                g.pause = g.pause.saturating_sub(1);
                g.write_config();
            });
        }
        Fault::BreakWatchdog { who, for_ } => {
            let m = &mut g.members[who];
            m.watchdog_broken += 1;
            m.watchdog_broken_since.get_or_insert(now);
            // The fence's next keepalive (at most a second away) fails, and it says so.
            let d = g.millis(1, 1000);
            later(w, d, move |g| g.report_device(who));
            later(w, for_, move |g| {
                let m = &mut g.members[who];
                m.watchdog_broken -= 1;
                if m.watchdog_broken == 0 {
                    m.watchdog_broken_since = None;
                }
                g.report_device(who);
            });
        }
        Fault::Request { who, request } => {
            let Some(cmds) = g.members[who].cmds.clone() else {
                return;
            };
            g.members[who].restart_asked = Some(now);
            // Through the REST API, which hands it to the shell; the answer is not awaited.
            let (reply, _answer) = Reply::new();
            let cmd = match request {
                Request::Restart => ApiCommand::Restart(reply),
                Request::Reinitialize => ApiCommand::Reinitialize(reply),
                Request::Failsafe { leader, ttl } => {
                    ApiCommand::Failsafe(pgwarden::api::FailsafePing { name: leader, ttl }, reply)
                }
            };
            let _ = cmds.try_send(cmd);
        }
        Fault::StubbornStop { who, for_ } => {
            g.members[who].pg.stubborn_until = now + for_;
        }
        Fault::ClockJump { who, by } => g.members[who].clock_jump += by,
        Fault::WallStep { who, by_ms } => g.members[who].wall_step_ms += by_ms,
    }
}
