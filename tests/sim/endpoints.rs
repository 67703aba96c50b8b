//! The simulated endpoints the real shell (`pgwarden::agent::supervise`) runs on: the store
//! behind a network that delays, loses and partitions, a simulated PostgreSQL, the fence and
//! its watchdog, peers' REST APIs and drifting clocks. Each belongs to one incarnation of one
//! member's agent: once that agent has died, every call of it stops where it is.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgwarden::agent::io::{Clock, Fencing, PeerProbe, PgControl, PgProcesses};
use pgwarden::agent::{Armed, DeviceStatus};
use pgwarden::dcs::{
    ClusterView, Dcs, DcsError, Failover, HistoryLine, Member, Status, SyncState, Version,
};
use pgwarden::ha::{DataDir, PeerReport, WatchdogState};
use pgwarden::postgres::{
    DataDirState, PgError, PgSettings, PgStatus, StartAs, StopMode, TimelineSwitch,
};
use tokio::sync::watch;

use crate::fake_pg::Run;
use crate::params::{PG_CTL_TIMEOUT, STOP_MAX};
use crate::world::Shared;

/// One incarnation of one member's agent.
#[derive(Clone)]
pub struct Me {
    pub w: Shared,
    pub who: usize,
    pub inc: u64,
}

impl Me {
    /// Where the agent's every step passes: it waits out a stall, and an agent that has died
    /// goes no further.
    async fn gate(&self) {
        loop {
            let wait = {
                let w = self.w.lock().unwrap();
                if w.members[self.who].inc != self.inc {
                    None
                } else {
                    Some(w.members[self.who].frozen_until.saturating_sub(w.now()))
                }
            };
            match wait {
                None => std::future::pending::<()>().await,
                Some(d) if d.is_zero() => return,
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Sleeps `d`, then passes the gate again.
    async fn after(&self, d: Duration) {
        tokio::time::sleep(d).await;
        self.gate().await;
    }

    fn with<T>(&self, f: impl FnOnce(&mut crate::world::World, usize) -> T) -> T {
        let mut w = self.w.lock().unwrap();
        f(&mut w, self.who)
    }
}

// ---------------------------------------------------------------------------------------------
// The store, behind the network.

pub struct SimDcs {
    me: Me,
    /// The in-memory store, with etcd's lock semantics or Kubernetes' (`lease.rs`).
    inner: Arc<dyn Dcs>,
}

impl SimDcs {
    /// A new session on the store (a new lease). Change notifications reach the member as
    /// `World::notify` delivers them.
    pub fn new(me: Me, inner: Arc<dyn Dcs>) -> SimDcs {
        SimDcs { me, inner }
    }

    /// One request: it may never arrive (a cut, a lost message), its effect lands when it
    /// arrives, and the answer may be lost or late. As every backend, it gives up after
    /// `retry_timeout`; the shell's own, tighter bounds may give up sooner.
    async fn call<R, F, Fut>(&self, op: F) -> Result<R, DcsError>
    where
        F: FnOnce(Arc<dyn Dcs>) -> Fut,
        Fut: std::future::Future<Output = Result<R, DcsError>>,
    {
        let retry = self.me.with(|w, _| w.timings.retry_timeout);
        match tokio::time::timeout(retry, self.exchange(op)).await {
            Ok(r) => r,
            Err(_) => Err(DcsError::Unreachable("timed out".into())),
        }
    }

    async fn exchange<T, F, Fut>(&self, op: F) -> T
    where
        F: FnOnce(Arc<dyn Dcs>) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        self.me.gate().await;
        let there = self.me.with(|w, who| {
            if w.reaches_store(who) {
                w.latency()
            } else {
                None
            }
        });
        let Some(there) = there else {
            return std::future::pending().await;
        };
        tokio::time::sleep(there).await;
        // A request in flight lands even if its sender died or was cut meanwhile.
        if self.me.with(|w, _| w.store_down > 0) {
            return std::future::pending().await;
        }
        let r = op(self.inner.clone()).await;
        let back = self.me.with(|w, who| {
            w.check();
            if w.reaches_store(who) {
                w.latency()
            } else {
                None
            }
        });
        let Some(back) = back else {
            return std::future::pending().await;
        };
        self.me.after(back).await;
        r
    }
}

#[async_trait]
impl Dcs for SimDcs {
    async fn load(&self, fresh: bool) -> Result<ClusterView, DcsError> {
        self.call(|d| async move { d.load(fresh).await }).await
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.me
            .with(|w, who| w.members[who].store_changes.subscribe())
    }
    fn set_ttl(&self, ttl: Duration) {
        self.inner.set_ttl(ttl)
    }
    async fn touch_member(&self, member: &Member) -> Result<(), DcsError> {
        let member = member.clone();
        self.call(|d| async move { d.touch_member(&member).await })
            .await
    }
    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        self.call(|d| async move { d.acquire_leader().await }).await
    }
    async fn update_leader(&self, status: Option<&Status>) -> Result<bool, DcsError> {
        let status = status.cloned();
        self.call(|d| async move { d.update_leader(status.as_ref()).await })
            .await
    }
    async fn release_leader(
        &self,
        status: Option<&Status>,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let (status, expected) = (status.cloned(), expected.cloned());
        self.call(|d| async move { d.release_leader(status.as_ref(), expected.as_ref()).await })
            .await
    }
    async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError> {
        let sysid = sysid.to_owned();
        self.call(|d| async move { d.initialize(create_new, &sysid).await })
            .await
    }
    async fn cancel_initialization(&self) -> Result<(), DcsError> {
        self.call(|d| async move { d.cancel_initialization().await })
            .await
    }
    async fn set_config(&self, json: &str, expected: Option<&Version>) -> Result<bool, DcsError> {
        let (json, expected) = (json.to_owned(), expected.cloned());
        self.call(|d| async move { d.set_config(&json, expected.as_ref()).await })
            .await
    }
    async fn set_failover(
        &self,
        value: &Failover,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let (value, expected) = (value.clone(), expected.cloned());
        self.call(|d| async move { d.set_failover(&value, expected.as_ref()).await })
            .await
    }
    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError> {
        let lines = lines.to_vec();
        self.call(|d| async move { d.set_history(&lines).await })
            .await
    }
    async fn set_sync(
        &self,
        value: &SyncState,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let (value, expected) = (value.clone(), expected.cloned());
        self.call(|d| async move { d.set_sync(&value, expected.as_ref()).await })
            .await
    }
    async fn set_failsafe(
        &self,
        value: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, DcsError> {
        let value = value.clone();
        self.call(|d| async move { d.set_failsafe(&value).await })
            .await
    }
    async fn delete_cluster(&self) -> Result<(), DcsError> {
        self.call(|d| async move { d.delete_cluster().await }).await
    }
    async fn delete_member(&self) -> Result<(), DcsError> {
        self.call(|d| async move { d.delete_member().await }).await
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL.

pub struct SimPg {
    pub me: Me,
    /// `synchronous_standby_names` set by the core (this incarnation's), over the
    /// configuration's.
    pub names: Option<String>,
}

fn failed(what: &str) -> PgError {
    PgError::Query {
        what: what.into(),
        message: "simulated failure".into(),
    }
}

/// The member a conninfo (`host=m1 port=5432 ...`) points at.
fn host_of(conninfo: &str) -> Option<String> {
    conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("host="))
        .map(|h| h.trim_matches('\'').to_owned())
}

impl SimPg {
    /// `synchronous_standby_names` as the agent renders it into the configuration file.
    fn conf_names(&self, w: &crate::world::World) -> String {
        self.names
            .clone()
            .unwrap_or_else(|| w.params.sync.default_names())
    }

    /// Starts the server as `to` (primary or replica): up after a while, unless something
    /// else happened to it meanwhile.
    async fn boot(&self, as_primary: bool) -> Result<(), PgError> {
        let epoch = self.me.with(|w, who| {
            let pg = &mut w.members[who].pg;
            if pg.alive() || pg.data == DataDir::Empty {
                return None;
            }
            pg.set(Run::Starting { as_primary });
            pg.standby_signal = !as_primary;
            // The agent renders the configuration file as it starts the server.
            w.members[who].pg.sync_names = self.conf_names(w);
            let pg = &mut w.members[who].pg;
            let epoch = pg.epoch;
            w.check();
            Some(epoch)
        });
        let Some(epoch) = epoch else {
            return Err(PgError::AlreadyRunning { pid: 1 });
        };
        let d = self.me.with(|w, _| w.millis(100, 1500));
        self.me.after(d).await;
        self.me.with(|w, who| {
            let name = w.members[who].name.clone();
            let pg = &mut w.members[who].pg;
            if pg.epoch != epoch {
                return Err(failed("start"));
            }
            pg.set(if as_primary {
                Run::Primary
            } else {
                Run::Replica
            });
            if as_primary && let DataDir::Ready { sysid, .. } = &pg.data {
                pg.data = DataDir::Ready {
                    sysid: sysid.clone(),
                    was_primary: true,
                };
            }
            w.log(format!(
                "{name} postgres up as {}",
                if as_primary { "primary" } else { "replica" }
            ));
            w.check();
            Ok(())
        })
    }

    /// A stop in `mode`: down after a while (a fast stop of a stubborn postmaster fails after
    /// `pg_ctl_timeout`, the server still up).
    async fn halt(&self, mode: StopMode) -> Result<(), PgError> {
        let started = self.me.with(|w, who| {
            if mode == StopMode::Fast {
                w.check_not_early(who);
            }
            let now = w.now();
            let pg = &mut w.members[who].pg;
            if !pg.alive() {
                return Ok(None);
            }
            // A SIGKILL under way takes the server down whatever pg_ctl asks: wait for it
            // (no epoch of ours to complete).
            if pg.killed_by.is_some() {
                return Ok(Some(None));
            }
            if mode != StopMode::Immediate && pg.stubborn_until > now {
                return Err(());
            }
            let s = pg.stopping();
            pg.set(s);
            let epoch = pg.epoch;
            w.check();
            Ok(Some(Some(epoch)))
        });
        let epoch = match started {
            Ok(None) => return Ok(()),
            Ok(Some(e)) => e,
            Err(()) => {
                self.me.after(PG_CTL_TIMEOUT).await;
                return Err(PgError::Timeout {
                    what: "stop".into(),
                    after: PG_CTL_TIMEOUT,
                });
            }
        };
        let d = self.me.with(|w, _| match mode {
            StopMode::Immediate => w.millis(1, STOP_MAX.as_millis() as u64),
            _ => w.millis(50, 500),
        });
        self.me.after(d).await;
        let since = self.me.with(|w, _| w.now());
        loop {
            // Down now, unless something else (a kill, a start) took over the server since:
            // then, as pg_ctl, done once no postmaster is left.
            let down = self.me.with(|w, who| {
                let name = w.members[who].name.clone();
                let pg = &mut w.members[who].pg;
                if Some(pg.epoch) == epoch {
                    pg.set(Run::Down);
                    w.log(format!("{name} postgres stopped"));
                    w.check();
                }
                !w.members[who].pg.alive()
            });
            if down {
                return Ok(());
            }
            if self.me.with(|w, _| w.now()) >= since + PG_CTL_TIMEOUT {
                return Err(PgError::Timeout {
                    what: "stop".into(),
                    after: PG_CTL_TIMEOUT,
                });
            }
            self.me.after(Duration::from_millis(10)).await;
        }
    }

    /// A copy from `conninfo`'s member (a base backup, or a rewind onto its timeline).
    async fn copy_from(&self, conninfo: &str, what: &str) -> Result<(), PgError> {
        let from = host_of(conninfo);
        let d = self.me.with(|w, _| w.millis(200, 3000));
        self.me.after(d).await;
        self.me.with(|w, who| {
            let j = from.as_deref().and_then(|f| w.index_of(f));
            let Some(j) = j else {
                return Err(failed(what));
            };
            if !w.members[j].pg.running() || !w.peers_linked(who, j) || w.members[who].pg.alive() {
                return Err(failed(what));
            }
            let src = w.members[j].pg.clone();
            let Some(sysid) = src.sysid().map(str::to_owned) else {
                return Err(failed(what));
            };
            let pg = &mut w.members[who].pg;
            pg.data = DataDir::Ready {
                sysid,
                was_primary: false,
            };
            pg.wal = src.wal;
            pg.timeline = src.timeline;
            pg.branch = src.branch;
            pg.epoch += 1;
            Ok(())
        })
    }

    fn wipe(&self) -> Result<(), PgError> {
        self.me.with(|w, who| {
            let pg = &mut w.members[who].pg;
            // Never under a running server.
            if pg.alive() {
                return Err(PgError::AlreadyRunning { pid: 1 });
            }
            pg.data = DataDir::Empty;
            pg.wal = 0;
            pg.timeline = 1;
            pg.standby_signal = false;
            Ok(())
        })
    }
}

#[async_trait]
impl PgControl for SimPg {
    async fn data_dir_state(&self) -> DataDirState {
        self.me.gate().await;
        self.me.with(|w, who| w.members[who].pg.data_dir_state())
    }
    fn is_running(&mut self) -> bool {
        self.me.with(|w, who| w.members[who].pg.alive())
    }
    fn is_foreign(&self) -> bool {
        false
    }
    async fn status(&self) -> Result<PgStatus, PgError> {
        self.me.gate().await;
        let d = self.me.with(|w, _| w.millis(1, 5));
        self.me.after(d).await;
        self.me
            .with(|w, who| {
                let mut st = w.members[who].pg.status()?;
                if !st.in_recovery {
                    let names = &w.members[who].pg.sync_names;
                    st.replication = crate::replication::rows(names, &w.standbys_of(who));
                }
                Some(st)
            })
            .ok_or(PgError::NotRunning)
    }
    async fn initdb(&self) -> Result<(), PgError> {
        self.me.gate().await;
        let d = self.me.with(|w, _| w.millis(500, 1500));
        self.me.after(d).await;
        self.me.with(|w, who| {
            let m = &mut w.members[who];
            if m.pg.alive() || m.pg.data != DataDir::Empty {
                return Err(failed("initdb"));
            }
            m.initdbs += 1;
            // Every initdb makes a new system identifier.
            m.pg.data = DataDir::Ready {
                sysid: format!("7{}{:03}", who + 1, m.initdbs),
                was_primary: true,
            };
            // As a real initdb, the new cluster's WAL does not start at zero (a peer without
            // data reports zero).
            m.pg.wal = 1_000;
            m.pg.timeline = 1;
            let branch = w.repl.root();
            w.members[who].pg.branch = branch;
            Ok(())
        })
    }
    async fn post_bootstrap(&self, _script: Option<&str>) -> Result<(), String> {
        self.me.gate().await;
        Ok(())
    }
    async fn basebackup(&self, conninfo: &str) -> Result<(), PgError> {
        self.me.gate().await;
        self.copy_from(conninfo, "pg_basebackup").await
    }
    async fn rewind(&self, conninfo: &str) -> Result<(), PgError> {
        self.me.gate().await;
        self.copy_from(conninfo, "pg_rewind").await
    }
    fn remove_data_dir(&self) -> Result<(), PgError> {
        self.wipe()
    }
    fn wipe_data_dir(&self) -> Result<(), PgError> {
        self.wipe()
    }
    async fn start(&mut self, how: StartAs) -> Result<(), PgError> {
        self.me.gate().await;
        let as_primary = match how {
            StartAs::Primary => true,
            StartAs::Replica {
                primary_conninfo, ..
            } => {
                let up = primary_conninfo.as_deref().and_then(host_of);
                self.me.with(|w, who| w.members[who].pg.upstream = up);
                false
            }
        };
        self.boot(as_primary).await
    }
    async fn stop(&mut self, mode: StopMode, _timeout: Duration) -> Result<(), PgError> {
        self.me.gate().await;
        self.halt(mode).await
    }
    async fn promote(&mut self) -> Result<(), PgError> {
        self.me.gate().await;
        let epoch = self.me.with(|w, who| {
            let pg = &mut w.members[who].pg;
            (pg.run == Run::Replica).then_some(pg.epoch)
        });
        let Some(epoch) = epoch else {
            return Err(PgError::Promote("not a running replica".into()));
        };
        let d = self.me.with(|w, _| w.millis(50, 800));
        self.me.after(d).await;
        self.me.with(|w, who| {
            let name = w.members[who].name.clone();
            let pg = &mut w.members[who].pg;
            if pg.epoch != epoch {
                return Err(PgError::Promote("the server went away".into()));
            }
            pg.set(Run::Primary);
            pg.timeline += 1;
            let (from, at) = (pg.branch, pg.wal);
            let branch = w.repl.fork(from, at);
            let pg = &mut w.members[who].pg;
            pg.branch = branch;
            pg.upstream = None;
            pg.standby_signal = false;
            if let DataDir::Ready { sysid, .. } = &pg.data {
                pg.data = DataDir::Ready {
                    sysid: sysid.clone(),
                    was_primary: true,
                };
            }
            w.log(format!("{name} promoted"));
            w.check();
            Ok(())
        })
    }
    async fn follow(
        &mut self,
        conninfo: Option<String>,
        _slot: Option<String>,
    ) -> Result<(), PgError> {
        self.me.gate().await;
        let up = conninfo.as_deref().and_then(host_of);
        let run = self.me.with(|w, who| {
            let pg = &mut w.members[who].pg;
            pg.upstream = up;
            pg.standby_signal = true;
            pg.run
        });
        // A running primary is restarted as a replica; a replica reloads; a stopped server
        // only gets the new configuration.
        if run == Run::Primary {
            self.halt(StopMode::Fast).await?;
            return self.boot(false).await;
        }
        let d = self.me.with(|w, _| w.millis(1, 50));
        self.me.after(d).await;
        Ok(())
    }
    async fn reload(&self) -> Result<(), PgError> {
        self.me.gate().await;
        match self.me.with(|w, who| w.members[who].pg.alive()) {
            true => Ok(()),
            false => Err(PgError::NotRunning),
        }
    }
    async fn set_sync_standby_names(&mut self, value: Option<String>) -> Result<(), PgError> {
        self.me.gate().await;
        self.names = value;
        self.me.with(|w, who| {
            w.members[who].pg.sync_names = self.conf_names(w);
            Ok(())
        })
    }
    async fn checkpoint(&self) -> Result<(), PgError> {
        self.me.gate().await;
        let d = self.me.with(|w, _| w.millis(1, 100));
        self.me.after(d).await;
        match self.me.with(|w, who| w.members[who].pg.running()) {
            true => Ok(()),
            false => Err(PgError::NotRunning),
        }
    }
    async fn ensure_replication_slots(&self, _names: &[String]) -> Result<(), PgError> {
        self.me.gate().await;
        match self.me.with(|w, who| w.members[who].pg.run == Run::Primary) {
            true => Ok(()),
            false => Err(failed("slots")),
        }
    }
    fn timeline_history(&self, timeline: u64) -> Result<Vec<TimelineSwitch>, PgError> {
        // Where each timeline ended is not modelled: the core only decides when to copy it.
        Ok((1..timeline)
            .map(|timeline| TimelineSwitch {
                timeline,
                lsn: 0,
                reason: "no recovery target specified".into(),
            })
            .collect())
    }
    fn update_settings(&mut self, _settings: PgSettings) {}
}

/// The processes and files of a member's data directory.
pub struct SimProcesses {
    pub me: Me,
}

impl PgProcesses for SimProcesses {
    /// SIGKILL: down within `STOP_MAX` (a kill under way is not delayed by another). A stalled
    /// agent kills when it resumes.
    fn kill_all(&self) {
        let me = self.me.clone();
        let (at, epoch) = {
            let mut w = me.w.lock().unwrap();
            if w.members[me.who].inc != me.inc {
                return;
            }
            let now = w.now();
            let resume = w.members[me.who].frozen_until.saturating_sub(now);
            let kill_in = resume + w.millis(1, STOP_MAX.as_millis() as u64);
            let name = w.members[me.who].name.clone();
            let pg = &mut w.members[me.who].pg;
            if !pg.alive() {
                return;
            }
            if pg.killed_by.is_some_and(|t| t >= now) && matches!(pg.run, Run::Stopping { .. }) {
                return;
            }
            let s = pg.stopping();
            pg.set(s);
            pg.killed_by = Some(now + kill_in);
            let epoch = pg.epoch;
            w.log(format!("{name} postgres killed"));
            w.check();
            (kill_in, epoch)
        };
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let mut w = me.w.lock().unwrap();
            let pg = &mut w.members[me.who].pg;
            if pg.epoch == epoch {
                pg.set(Run::Down);
            }
            w.check();
        });
    }
    fn postmaster_alive(&self) -> bool {
        self.me.with(|w, who| w.members[who].pg.alive())
    }
    fn has_file(&self, name: &str) -> bool {
        match name {
            "standby.signal" => self.me.with(|w, who| w.members[who].pg.standby_signal),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fence, peers and the clock.

pub struct SimFence {
    pub me: Me,
}

impl Fencing for SimFence {
    /// Records the deadline (for the invariants) and, for a required watchdog, opens or
    /// closes the device. The kill at the deadline is not simulated: the invariants judge the
    /// HA loop's own stop.
    fn set(&self, armed: Option<Armed>) {
        let mut w = self.me.w.lock().unwrap();
        let who = self.me.who;
        if w.members[who].inc != self.me.inc {
            return;
        }
        if let Some(a) = armed {
            let real = w.real_of(who, a.deadline);
            if w.members[who].deadline_real != Some(real) && w.verbose {
                let name = w.members[who].name.clone();
                w.log(format!("{name} fence armed until {real:?}"));
            }
            w.members[who].deadline_real = Some(real);
        }
        w.members[who].fence_armed = armed.is_some();
        w.report_device(who);
    }
    fn watchdog_state(&self) -> WatchdogState {
        self.me.with(|w, who| w.watchdog_state(who))
    }
    fn watchdog_changes(&self) -> watch::Receiver<DeviceStatus> {
        self.me
            .with(|w, who| w.members[who].watchdog_tx.subscribe())
    }
}

pub struct SimPeers {
    pub me: Me,
}

#[async_trait]
impl PeerProbe for SimPeers {
    /// Each peer's `/patroni` document, rendered from the snapshot its shell published, as
    /// the real API would; a peer that is down, stalled or cut off does not answer in the
    /// probe's two seconds.
    async fn probe(&self, targets: Vec<(String, Option<String>)>) -> PeerReport {
        self.me.gate().await;
        let (report, slowest) = self.me.with(|w, who| {
            let now = w.now();
            let mut slowest = Duration::ZERO;
            let mut report = PeerReport::new();
            for (name, url) in targets {
                let j = url
                    .as_deref()
                    .and_then(|u| u.strip_prefix("http://"))
                    .and_then(|u| u.split(':').next())
                    .and_then(|h| w.index_of(h));
                let answers = j.filter(|&j| {
                    let p = &w.members[j];
                    p.alive && p.frozen_until <= now && w.peers_linked(who, j)
                });
                let facts = answers.map(|j| {
                    let doc = pgwarden::api::status::status_document(
                        &w.members[j].api.snapshot(),
                        tokio::time::Instant::now(),
                    );
                    let v = serde_json::to_value(&doc).expect("a JSON document");
                    pgwarden::agent::peer_facts(&v)
                });
                slowest = slowest.max(match facts {
                    Some(_) => w.millis(1, 30),
                    None => Duration::from_secs(2),
                });
                report.insert(name, facts);
            }
            (report, slowest)
        });
        self.me.after(slowest).await;
        report
    }

    /// Each `POST /failsafe` goes to the peer's shell as the real API hands it over (a
    /// command its HA core answers), through the same lossy links: no answer within 2 s, twice,
    /// is a refusal.
    async fn confirm_failsafe(
        &self,
        targets: Vec<(String, String)>,
        body: serde_json::Value,
    ) -> Vec<String> {
        self.me.gate().await;
        let ping = pgwarden::api::FailsafePing {
            name: body["name"].as_str().unwrap_or_default().to_owned(),
            ttl: body["ttl"].as_f64().map(Duration::from_secs_f64),
        };
        let asks = targets.into_iter().map(|(name, url)| {
            let ping = ping.clone();
            async move {
                for _ in 0..2 {
                    if self.ask_failsafe(&url, ping.clone()).await {
                        return None;
                    }
                }
                Some(name)
            }
        });
        let refused = futures::future::join_all(asks).await;
        self.me.gate().await;
        refused.into_iter().flatten().collect()
    }
}

impl SimPeers {
    /// One `POST /failsafe` to the member at `url`: accepted within 2 s or not.
    async fn ask_failsafe(&self, url: &str, ping: pgwarden::api::FailsafePing) -> bool {
        let sent = self.me.with(|w, who| {
            let j = url
                .strip_prefix("http://")
                .and_then(|u| u.split(':').next())
                .and_then(|h| w.index_of(h))?;
            let now = w.now();
            let p = &w.members[j];
            if !(p.alive && p.frozen_until <= now && w.peers_linked(who, j)) {
                return None;
            }
            let cmds = w.members[j].cmds.clone()?;
            Some((cmds, w.latency()?, w.latency()))
        });
        let Some((cmds, there, back)) = sent else {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return false;
        };
        let asked = async {
            tokio::time::sleep(there).await;
            let (reply, rx) = pgwarden::api::Reply::new();
            cmds.try_send(pgwarden::api::ApiCommand::Failsafe(ping, reply))
                .ok()?;
            let accepted = matches!(rx.await, Ok(Ok(())));
            tokio::time::sleep(back?).await;
            Some(accepted)
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), asked).await,
            Ok(Some(true))
        )
    }
}

pub struct SimClock {
    pub me: Me,
}

impl Clock for SimClock {
    fn boottime(&self) -> Duration {
        self.me.with(|w, who| {
            let now = w.now();
            w.boottime_at(who, now)
        })
    }
    fn wall(&self) -> chrono::DateTime<chrono::Utc> {
        self.me.with(|w, who| w.wall_of(who, w.now()))
    }
}

/// The endpoints of one incarnation.
pub fn endpoints(me: Me, store: Arc<dyn Dcs>) -> pgwarden::agent::io::Endpoints {
    pgwarden::agent::io::Endpoints {
        dcs: Arc::new(SimDcs::new(me.clone(), store)),
        pg: Box::new(SimPg {
            me: me.clone(),
            names: None,
        }),
        processes: Arc::new(SimProcesses { me: me.clone() }),
        fence: Arc::new(SimFence { me: me.clone() }),
        peers: Arc::new(SimPeers { me: me.clone() }),
        clock: Arc::new(SimClock { me }),
    }
}
