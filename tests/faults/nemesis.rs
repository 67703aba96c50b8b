//! The nemesis: makes a round's faults real on a running cluster and heals them. Network faults
//! are iptables rules inside a member's namespace (dropped packets, as a real partition does)
//! or toxics on its proxy to the store; process faults are signals; state faults go through the
//! store or the REST API, as an operator's hand would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;

use super::cluster::{Agent, Cluster, Timings};
use super::schedule::{Fault, Operation, Target};
use super::workload::Endpoint;

/// A fault as applied: on whom (a member's index), and whether it took.
#[derive(Clone, Debug)]
pub struct Applied {
    pub fault: Fault,
    pub member: Option<usize>,
    /// Why it could not be applied (the REST API of every member refused, say).
    pub skipped: Option<String>,
}

pub struct Nemesis {
    /// Per member: nobody reads its output while set ([`Cluster::spawn_relayed`]).
    pub stalled: Vec<Arc<AtomicBool>>,
    /// The cluster's timings at bootstrap, restored after a retiming.
    pub base: Timings,
    /// The flapping link's task, while one flaps.
    flapping: Option<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)>,
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// The member's link to the store: the port of its proxy at the gateway.
fn store_port(c: &Cluster, m: usize) -> String {
    let via = c.members[m]
        .store_via
        .as_deref()
        .expect("a proxied store link");
    via.rsplit(':').next().unwrap().to_owned()
}

/// iptables rules dropping the member's packets to (`out`) and from (`inn`) the store: its
/// proxy, and the store's own address too (no agent should go around its proxy, but a cut
/// must not depend on it).
fn store_rules(c: &Cluster, m: usize, out: bool, inn: bool) -> Vec<Vec<String>> {
    let net = c.net.as_ref().unwrap();
    let (gw, port, store) = (net.gateway(), store_port(c, m), net.store_addr());
    let mut rules = Vec::new();
    if out {
        rules.push(vec![
            "OUTPUT", "-o", "eth0", "-p", "tcp", "-d", &gw, "--dport", &port,
        ]);
        rules.push(vec!["OUTPUT", "-o", "eth0", "-d", &store]);
    }
    if inn {
        rules.push(vec![
            "INPUT", "-i", "eth0", "-p", "tcp", "-s", &gw, "--sport", &port,
        ]);
        rules.push(vec!["INPUT", "-i", "eth0", "-s", &store]);
    }
    rules
        .into_iter()
        .map(|r| {
            r.into_iter()
                .chain(["-j", "DROP"])
                .map(String::from)
                .collect()
        })
        .collect()
}

fn iptables(c: &Cluster, m: usize, op: &str, rules: &[Vec<String>]) {
    let net = c.net.as_ref().unwrap();
    for r in rules {
        let mut args = vec![op];
        args.extend(r.iter().map(String::as_str));
        net.iptables(m, &args);
    }
}

/// One REST request with a short timeout: (status, body), 0 when it failed.
pub async fn api(
    c: &Cluster,
    i: usize,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    match tokio::time::timeout(Duration::from_secs(5), c.api(i, method, path, body)).await {
        Ok(r) => r,
        Err(_) => (0, "timed out".into()),
    }
}

/// The same request to each member in turn until one takes it (2xx).
async fn api_any(c: &Cluster, method: Method, path: &str, body: &str) -> Result<usize, String> {
    let mut last = String::new();
    for i in 0..c.members.len() {
        let (code, text) = api(c, i, method.clone(), path, Some(body)).await;
        if (200..300).contains(&code) {
            return Ok(i);
        }
        last = format!("{}: {code} {}", c.members[i].name, text.trim());
    }
    Err(last)
}

/// The member accepting writes now, by asking each (one that does not answer is not it).
pub async fn primary(members: &[Endpoint]) -> Option<usize> {
    for (i, m) in members.iter().enumerate() {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            super::cluster::member_io::sql(&m.host, m.port, "SELECT pg_is_in_recovery()::text"),
        )
        .await;
        if let Ok(Ok(v)) = r
            && v.first().map(String::as_str) == Some("false")
        {
            return Some(i);
        }
    }
    None
}

/// How many WAL segments a full disk is given to fill: more than a member keeps ready for
/// reuse, and few enough (96 MB) for the other members' volumes to take without filling up.
const WAL_PUSH: usize = 6;

/// Moves the primary `p` on to a new WAL segment up to `n` times, each after a record of its
/// own (a switch with nothing written since the last one does nothing); how many it made
/// before it stopped answering.
async fn push_wal(p: &Endpoint, n: usize) -> usize {
    let sql = "SELECT pg_logical_emit_message(false, 'faults', 'disk full')::text; \
               SELECT pg_switch_wal()::text";
    for k in 0..n {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            super::cluster::member_io::sql(&p.host, p.port, sql),
        )
        .await;
        if !matches!(r, Ok(Ok(_))) {
            return k;
        }
    }
    n
}

/// Whom `t` names now: `None` when there is no primary (or synchronous standby) to name.
pub async fn resolve(c: &Cluster, t: Target, members: &[Endpoint]) -> Option<usize> {
    let p = primary(members).await;
    match t {
        Target::Primary => p,
        Target::Replica(k) => {
            let replicas: Vec<usize> = (0..members.len()).filter(|i| Some(*i) != p).collect();
            Some(replicas[k % replicas.len()])
        }
        Target::SyncStandby => {
            let m = &members[p?];
            let sql = "SELECT application_name FROM pg_stat_replication \
                       WHERE sync_state IN ('sync', 'quorum') ORDER BY application_name LIMIT 1";
            let names = super::cluster::member_io::sql(&m.host, m.port, sql)
                .await
                .ok()?;
            let name = names.first()?;
            c.members.iter().position(|m| &m.name == name)
        }
    }
}

fn target_of(f: &Fault) -> Option<Target> {
    use Fault::*;
    match *f {
        CutFromStore(t)
        | StoreRepliesLost(t)
        | StoreRequestsLost(t)
        | CutFromPeers(t)
        | Isolated(t)
        | FlappingStoreLink(t, _)
        | SlowStore(t, _, _)
        | NarrowStoreLink(t, _)
        | KillAgent(t)
        | KillPostmaster(t)
        | FreezeAgent(t)
        | StallOutput(t)
        | ClockSkew(t, _)
        | DiskFull(t) => Some(t),
        StoreDown | StoreFrozen | DeleteLeaderLock | RetimeCluster { .. } => None,
    }
}

/// A member that may take over from the primary `p`: a synchronous standby when the cluster
/// has one (in the synchronous modes no other may), else the next member.
async fn candidate(c: &Cluster, p: usize) -> String {
    for i in 0..c.members.len() {
        let (code, body) = api(c, i, Method::GET, "/cluster", None).await;
        if code != 200 {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let sync = v["members"].as_array().into_iter().flatten().find(|m| {
            m["role"]
                .as_str()
                .is_some_and(|r| r.contains("sync") || r.contains("quorum"))
        });
        if let Some(name) = sync.and_then(|m| m["name"].as_str()) {
            return name.to_owned();
        }
        break;
    }
    c.members[(p + 1) % c.members.len()].name.clone()
}

impl Nemesis {
    pub fn new(members: usize, base: Timings) -> Nemesis {
        Nemesis {
            stalled: (0..members)
                .map(|_| Arc::new(AtomicBool::new(false)))
                .collect(),
            base,
            flapping: None,
        }
    }

    /// Makes `fault` real.
    pub async fn apply(&mut self, c: &mut Cluster, fault: Fault, members: &[Endpoint]) -> Applied {
        use Fault::*;
        let member = match target_of(&fault) {
            Some(t) => match resolve(c, t, members).await {
                Some(m) => Some(m),
                None => {
                    return Applied {
                        fault,
                        member: None,
                        skipped: Some(format!("no {t:?} to aim at")),
                    };
                }
            },
            None => None,
        };
        let m = member.unwrap_or(0);
        let mut skipped = None;
        match fault {
            CutFromStore(_) => iptables(c, m, "-A", &store_rules(c, m, true, true)),
            StoreRepliesLost(_) => iptables(c, m, "-A", &store_rules(c, m, false, true)),
            StoreRequestsLost(_) => iptables(c, m, "-A", &store_rules(c, m, true, false)),
            CutFromPeers(_) => {
                let net = c.net.as_ref().unwrap();
                for j in (0..c.members.len()).filter(|j| *j != m) {
                    let a = net.addr(j);
                    net.iptables(m, &["-A", "OUTPUT", "-o", "eth0", "-d", &a, "-j", "DROP"]);
                    net.iptables(m, &["-A", "INPUT", "-i", "eth0", "-s", &a, "-j", "DROP"]);
                }
            }
            Isolated(_) => {
                let port = c.members[m].pg_port;
                c.net.as_ref().unwrap().isolate(m, Some(port));
            }
            FlappingStoreLink(_, period_ms) => self.start_flapping(c, m, period_ms),
            SlowStore(_, latency, jitter) => {
                let name = c.members[m].name.clone();
                c.links
                    .as_ref()
                    .unwrap()
                    .latency(&name, latency, jitter)
                    .await;
            }
            NarrowStoreLink(_, kb) => {
                let name = c.members[m].name.clone();
                c.links.as_ref().unwrap().bandwidth(&name, kb).await;
            }
            KillAgent(_) => c.kill9(m),
            KillPostmaster(_) => {
                match pgwarden::postgres::postmaster_pid_file_alive(&c.data_dir(m)) {
                    Some(pid) => signal(pid, nix::sys::signal::Signal::SIGKILL),
                    None => skipped = Some("no postmaster running".into()),
                }
            }
            FreezeAgent(_) => match c.members[m].child.as_ref() {
                Some(ch) => signal(ch.id() as i32, nix::sys::signal::Signal::SIGSTOP),
                None => skipped = Some("no agent running".into()),
            },
            StallOutput(_) => self.stalled[m].store(true, Ordering::Relaxed),
            ClockSkew(_, secs) if c.has_clock_files() => {
                std::fs::write(c.clock_file(m), format!("{secs:+}\n")).unwrap()
            }
            ClockSkew(..) => skipped = Some("no clock files (not under Patroni)".into()),
            DiskFull(_) => {
                let taken = tokio::task::block_in_place(|| c.fill_data_volume(m));
                // WAL goes on: the member needs new segments on its full disk, for the WAL
                // it writes as the primary or receives as a standby.
                let switched = match primary(members).await {
                    Some(p) => push_wal(&members[p], WAL_PUSH).await,
                    None => 0,
                };
                eprintln!(
                    "faults: {} MB taken on {}, then {switched} WAL segments switched",
                    taken >> 20,
                    c.members[m].name
                );
            }
            StoreDown => {
                if c.on_kubernetes() {
                    let k = c.kubernetes();
                    tokio::task::block_in_place(|| k.own_control_plane().kill());
                } else {
                    c.etcd_mut().stop();
                }
            }
            StoreFrozen => {
                if c.on_kubernetes() {
                    let k = c.kubernetes();
                    tokio::task::block_in_place(|| k.own_control_plane().pause());
                } else if let Some(pid) = c.etcd().pid() {
                    signal(pid, nix::sys::signal::Signal::SIGSTOP);
                }
            }
            DeleteLeaderLock => {
                let delete = async {
                    if c.on_kubernetes() && c.agent == Agent::Patroni {
                        // Patroni 3.0.2 holds its lock in a ConfigMap's annotations.
                        let name = format!("{}-leader", c.scope);
                        c.kubernetes().try_delete_configmap(&name).await
                    } else {
                        c.try_delete_leader_lock().await
                    }
                };
                match tokio::time::timeout(Duration::from_secs(5), delete).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => skipped = Some(e.chars().take(120).collect()),
                    Err(_) => skipped = Some("the store did not answer".into()),
                }
            }
            RetimeCluster {
                ttl,
                loop_wait,
                retry_timeout,
            } => {
                let body = format!(
                    r#"{{"ttl": {ttl}, "loop_wait": {loop_wait}, "retry_timeout": {retry_timeout}}}"#
                );
                if let Err(e) = api_any(c, Method::PATCH, "/config", &body).await {
                    skipped = Some(format!("PATCH /config refused: {e}"));
                }
            }
        }
        Applied {
            fault,
            member,
            skipped,
        }
    }

    fn start_flapping(&mut self, c: &Cluster, m: usize, period_ms: u64) {
        let rules = store_rules(c, m, true, true);
        let net_ns = c.net.as_ref().unwrap().ns_path(m);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut cut = false;
            while !stop2.load(Ordering::Relaxed) {
                let op = if cut { "-D" } else { "-A" };
                for r in &rules {
                    let _ = tokio::process::Command::new("/usr/bin/nsenter")
                        .arg(format!("--net={}", net_ns.display()))
                        .arg("--")
                        .arg("iptables")
                        .arg(op)
                        .args(r)
                        .status()
                        .await;
                }
                cut = !cut;
                tokio::time::sleep(Duration::from_millis(period_ms)).await;
            }
        });
        self.flapping = Some((stop, task));
    }

    /// Undoes `a` (the heal of a one-shot fault does nothing).
    pub async fn heal(&mut self, c: &mut Cluster, a: &Applied) {
        use Fault::*;
        if a.skipped.is_some() {
            return;
        }
        let m = a.member.unwrap_or(0);
        match a.fault {
            CutFromStore(_) | StoreRepliesLost(_) | StoreRequestsLost(_) | CutFromPeers(_)
            | Isolated(_) => c.net.as_ref().unwrap().heal(m),
            FlappingStoreLink(..) => {
                if let Some((stop, task)) = self.flapping.take() {
                    stop.store(true, Ordering::Relaxed);
                    let _ = task.await;
                }
                c.net.as_ref().unwrap().heal(m);
            }
            SlowStore(..) | NarrowStoreLink(..) => {
                let name = c.members[m].name.clone();
                c.links.as_ref().unwrap().clear(&name).await;
            }
            KillAgent(_) => {
                if c.members[m].child.is_none() {
                    c.spawn_relayed(m, self.stalled[m].clone());
                }
            }
            KillPostmaster(_) | DeleteLeaderLock => {}
            FreezeAgent(_) => {
                if let Some(ch) = c.members[m].child.as_ref() {
                    signal(ch.id() as i32, nix::sys::signal::Signal::SIGCONT);
                }
            }
            StallOutput(_) => self.stalled[m].store(false, Ordering::Relaxed),
            ClockSkew(..) => std::fs::write(c.clock_file(m), "+0\n").unwrap(),
            DiskFull(_) => c.drain_data_volume(m),
            StoreDown => {
                if c.on_kubernetes() {
                    let k = c.kubernetes();
                    tokio::task::block_in_place(|| k.own_control_plane().restart());
                } else {
                    c.etcd_mut().start().await;
                }
            }
            StoreFrozen => {
                if c.on_kubernetes() {
                    let k = c.kubernetes();
                    tokio::task::block_in_place(|| k.own_control_plane().resume());
                } else if let Some(pid) = c.etcd().pid() {
                    signal(pid, nix::sys::signal::Signal::SIGCONT);
                }
            }
            RetimeCluster { .. } => self.restore_timings(c).await,
        }
    }

    /// Puts the cluster's timings back, until a member reads them back from the store. The
    /// change the fault sent may land after a first restore: sent while the store was frozen,
    /// it waits in the store's sockets and is applied when the store resumes (seed 3000 ended
    /// so, with ttl 8, loop_wait 2, retry_timeout 1 in force for good; Patroni 3.0.2 cannot
    /// take the leader key on etcd3 with a retry_timeout of 1 s, so no member led again).
    async fn restore_timings(&self, c: &Cluster) {
        let t = self.base;
        let body = format!(
            r#"{{"ttl": {}, "loop_wait": {}, "retry_timeout": {}}}"#,
            t.ttl, t.loop_wait, t.retry_timeout
        );
        let restored = |v: &serde_json::Value| {
            v["ttl"].as_u64() == Some(t.ttl)
                && v["loop_wait"].as_u64() == Some(t.loop_wait)
                && v["retry_timeout"].as_u64() == Some(t.retry_timeout)
        };
        for _ in 0..60 {
            self.until_taken(c, Method::PATCH, "/config", &body).await;
            // Time for a late change to land, then the store's value as a member reads it.
            tokio::time::sleep(Duration::from_secs(2)).await;
            for i in 0..c.members.len() {
                let (code, text) = api(c, i, Method::GET, "/config", None).await;
                if code != 200 {
                    continue;
                }
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(v) if restored(&v) => return,
                    _ => break,
                }
            }
        }
        eprintln!("faults: the timings were never read back as {body}");
    }

    /// Retries a request every second, for up to two minutes, until a member takes it: a heal
    /// must not be lost to a member still recovering.
    async fn until_taken(&self, c: &Cluster, method: Method, path: &str, body: &str) {
        for _ in 0..120 {
            if api_any(c, method.clone(), path, body).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!("faults: {path} {body} was never taken");
    }

    /// Runs `op`; what it answered, for the report.
    pub async fn operate(&self, c: &Cluster, op: Operation, members: &[Endpoint]) -> String {
        match op {
            Operation::Switchover | Operation::Failover => {
                let Some(p) = primary(members).await else {
                    return "no primary".into();
                };
                let leader = c.members[p].name.clone();
                let candidate = candidate(c, p).await;
                let (path, body) = if op == Operation::Switchover {
                    ("/switchover", format!(r#"{{"leader": "{leader}"}}"#))
                } else {
                    ("/failover", format!(r#"{{"candidate": "{candidate}"}}"#))
                };
                match api_any(c, Method::POST, path, &body).await {
                    Ok(i) => format!("{path} taken by {}", c.members[i].name),
                    Err(e) => format!("{path} refused: {e}"),
                }
            }
            Operation::Pause => {
                match api_any(c, Method::PATCH, "/config", r#"{"pause": true}"#).await {
                    Ok(_) => "paused".into(),
                    Err(e) => format!("pause refused: {e}"),
                }
            }
            Operation::Restart(t) => {
                let Some(m) = resolve(c, t, members).await else {
                    return "no primary".into();
                };
                let (code, body) = api(c, m, Method::POST, "/restart", Some("{}")).await;
                format!("restart of {}: {code} {}", c.members[m].name, body.trim())
            }
        }
    }

    /// Undoes what `op` left behind (a pause).
    pub async fn after(&self, c: &Cluster, op: Operation) {
        if op == Operation::Pause {
            self.until_taken(c, Method::PATCH, "/config", r#"{"pause": false}"#)
                .await;
        }
    }
}
