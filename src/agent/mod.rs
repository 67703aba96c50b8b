//! The tokio shell around the HA core: it observes, asks [`HaCore`] what to do, does it, and
//! sleeps until the next deadline, a store change, an API command or a task completion. It
//! never decides anything itself.

pub mod clock;
mod commands;
mod execute;
mod fence;
pub mod io;
mod observe;
mod publish;
pub mod settings;
mod watchdog;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::api::peer_client::PeerClient;
use crate::api::{self, ApiCommand, ApiContext, ApiState, Snapshot};
use crate::config::{Config, DynamicConfig};
use crate::dcs::etcd::{EtcdDcs, EtcdSettings};
use crate::dcs::{ClusterView, Dcs, Member};
use crate::ha::{ActionId, HaCore, Input, MonoTime, Observation, Outcome, Policy};
use crate::postgres::Postgres;

use execute::TaskNote;
use fence::Fence;
pub use fence::{Armed, FenceHelperArgs, fence_helper_main};
use io::{Clock, Endpoints, Fencing, PeerProbe, PgControl, PgProcesses};
use observe::PgSeen;
pub use observe::{countdown, peer_facts};
pub use watchdog::DeviceStatus;

/// A finished PostgreSQL task.
pub(crate) struct TaskDone {
    id: ActionId,
    outcome: Outcome,
    note: TaskNote,
}

/// One member's agent.
pub struct Agent {
    cfg: Config,
    dynamic: DynamicConfig,
    dynamic_version: Option<crate::dcs::Version>,
    core: HaCore,
    dcs: Arc<dyn Dcs>,
    pg: Arc<Mutex<Box<dyn PgControl>>>,
    processes: Arc<dyn PgProcesses>,
    seen: PgSeen,
    /// The member PostgreSQL streams from, as configured by the last start or follow.
    upstream: Option<String>,
    view: Option<ClusterView>,
    view_read_at: Option<Instant>,
    dcs_last_seen: Option<i64>,
    api: ApiState,
    fence: Arc<dyn Fencing>,
    /// The fence's reports of the watchdog device: a change reaches the core between any two
    /// steps of the loop (a failed required device must not wait behind a slow store call).
    watchdog_rx: tokio::sync::watch::Receiver<watchdog::DeviceStatus>,
    /// The lease deadline the fence was last given (boot time, ns; 0: none), for tasks.
    lease_until: Arc<std::sync::atomic::AtomicU64>,
    peers: Arc<dyn PeerProbe>,
    clock: Arc<dyn Clock>,
    tasks_tx: mpsc::UnboundedSender<TaskDone>,
    tasks_rx: mpsc::UnboundedReceiver<TaskDone>,
    fatal: Option<String>,
    /// The core asked to be published as `nosync` (leaving the synchronous standbys before a
    /// stop).
    sync_released: bool,
    /// Boot time ([`Clock::boottime`]) at start: `MonoTime` zero.
    start: Duration,
    last_member: Option<Member>,
    last_member_shape: Option<String>,
    last_member_write: Option<Instant>,
    last_message: String,
    /// API requests handed to the core and not answered yet, and the last id given.
    replies: std::collections::BTreeMap<crate::ha::RequestId, crate::api::Reply>,
    last_request: u64,
    /// The REST API's commands: taken between the loop's steps and while it waits for the
    /// store (a leader in failsafe mode waits for this member's confirmation).
    cmds: mpsc::Receiver<ApiCommand>,
}

/// Connects to the store named in the configuration.
pub async fn connect_dcs(cfg: &Config, dynamic: &DynamicConfig) -> anyhow::Result<Arc<dyn Dcs>> {
    if let Some(raw) = &cfg.kubernetes {
        let k8s = crate::config::Kubernetes::parse(raw)?;
        let dcs = crate::dcs::kubernetes::KubernetesDcs::connect(
            crate::dcs::kubernetes::KubernetesSettings {
                k8s,
                scope: cfg.scope.clone(),
                name: cfg.name.clone(),
                ttl: dynamic.ttl,
                retry_timeout: dynamic.retry_timeout,
            },
        )
        .await
        .context("connecting to the Kubernetes API")?;
        return Ok(Arc::new(dcs));
    }
    let Some(etcd) = &cfg.etcd3 else {
        bail!("no DCS configured: etcd3 or kubernetes is required");
    };
    let endpoints = etcd
        .hosts
        .iter()
        .map(|h| format!("{}://{h}", etcd.protocol))
        .collect();
    let dcs = EtcdDcs::connect(EtcdSettings {
        endpoints,
        namespace: cfg.namespace.clone(),
        scope: cfg.scope.clone(),
        name: cfg.name.clone(),
        ttl: dynamic.ttl,
        retry_timeout: dynamic.retry_timeout,
        username: etcd.username.clone(),
        password: etcd.password.clone(),
    })
    .await
    .context("connecting to etcd")?;
    Ok(Arc::new(dcs))
}

/// The dynamic configuration in force: the store's `config`, else bootstrap.dcs.
fn dynamic_from(cfg: &Config, view: Option<&ClusterView>) -> DynamicConfig {
    let from_store = view
        .and_then(|v| v.config.as_ref())
        .map(|c| DynamicConfig::from_json(&c.value));
    match from_store {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            tracing::warn!("ignoring the store's config: {e}");
            bootstrap_dynamic(cfg)
        }
        None => bootstrap_dynamic(cfg),
    }
}

fn bootstrap_dynamic(cfg: &Config) -> DynamicConfig {
    cfg.bootstrap
        .as_ref()
        .map(|b| DynamicConfig::from_json(&b.dcs).unwrap_or_default())
        .unwrap_or_default()
}

/// Runs a member until `shutdown` resolves (then stops PostgreSQL and releases the lock) or a
/// fatal condition. The REST API is served on `api_listener`.
pub async fn run(
    cfg: Config,
    api_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        bail!(
            "refusing to run as root: PostgreSQL cannot run as root; run pgwarden as the postgres user"
        );
    }
    // SIGHUP's default action ends the process, and its PostgreSQL with it (`systemctl reload`
    // and log rotators send it): taken from the start, and answered as `POST /reload` is.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?;
    // TLS problems are configuration errors: report them before touching the store.
    let api_tls = api::tls::server_config(&cfg.restapi)?;
    let peer_tls = api::tls::ClientTls::of_agent(&cfg);
    let http = PeerClient::new(peer_tls.clone(), None, None)?;
    // The API's own client (switchover candidate probes): only when peers need TLS settings,
    // so that the plain setup stays exactly as it was.
    let api_peer_client = if peer_tls.is_default() {
        None
    } else {
        Some(PeerClient::new(
            peer_tls.clone(),
            Some(Duration::from_secs(2)),
            Some(format!("Patroni/{} pgwarden", api::state::VERSION)),
        )?)
    };

    let dynamic = bootstrap_dynamic(&cfg);
    let dcs = connect_dcs(&cfg, &dynamic).await?;

    // Patroni's start-up rule: wait for the store, and refuse a name that is already running.
    let view = wait_for_store(dcs.as_ref()).await;
    if let Some(m) = view.members.get(&cfg.name)
        && let Some(url) = &m.api_url
    {
        let live = url.replace("/patroni", "/liveness");
        if let Ok(request) = http.get(&live)
            && let Ok(r) = request.timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            bail!(
                "Can't start; there is already a node named '{}' running",
                cfg.name
            );
        }
    }
    let dynamic = dynamic_from(&cfg, Some(&view));
    let pg = Postgres::new(settings::pg_settings(&cfg, &dynamic));
    let fence = Fence::spawn(cfg.postgresql.data_dir.clone(), cfg.watchdog.as_ref())?;
    let api_state = ApiState::new(Snapshot::new(cfg.scope.clone(), cfg.name.clone()));
    let (cmd_tx, cmd_rx) = mpsc::channel::<ApiCommand>(16);
    let reload_tx = cmd_tx.clone();
    let hangup_task = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP: reloading PostgreSQL's configuration (pgwarden's own file is read at start only)"
            );
            let _ = reload_tx.try_send(ApiCommand::Reload);
        }
    });
    let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ctx = ApiContext {
        state: api_state.clone(),
        dcs: dcs.clone(),
        commands: cmd_tx,
        peer_timeout: Duration::from_secs(2),
        access: commands::access_of(&cfg),
    };
    let opts = api::ServeOptions {
        tls: api_tls,
        peer_client: api_peer_client,
        client_cert: api::tls::client_cert_required(&cfg.restapi),
    };
    let api_task = tokio::spawn(api::serve_with(api_listener, ctx, opts, async move {
        let _ = api_stop_rx.await;
    }));
    let endpoints = Endpoints::local(dcs, pg, fence, http);
    let result = supervise(cfg, endpoints, view, api_state, cmd_rx, shutdown).await;
    let _ = api_stop_tx.send(());
    let _ = api_task.await;
    hangup_task.abort();
    result
}

/// Reads the cluster until the store answers (each read bounded by 10 s, retried 5 s apart).
pub async fn wait_for_store(dcs: &dyn Dcs) -> ClusterView {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), dcs.load(true)).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => tracing::warn!("waiting for the DCS: {e}"),
            Err(_) => tracing::warn!("waiting for the DCS: no answer in 10s"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The HA loop of one member, on `endpoints`, from the store's first `view`, publishing to
/// `api` and taking `cmds`, until `shutdown` resolves or a fatal condition. What [`run`]
/// runs, and what the simulation runs on simulated endpoints.
pub async fn supervise(
    cfg: Config,
    endpoints: Endpoints,
    view: ClusterView,
    api: ApiState,
    cmds: mpsc::Receiver<ApiCommand>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let dynamic = dynamic_from(&cfg, Some(&view));
    endpoints.dcs.set_ttl(dynamic.ttl);
    let (tasks_tx, tasks_rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        core: HaCore::new(settings::identity(&cfg)),
        dynamic_version: view.config.as_ref().map(|c| c.version.clone()),
        view: Some(view),
        view_read_at: Some(Instant::now()),
        dcs_last_seen: Some(endpoints.clock.wall().timestamp()),
        cfg,
        dynamic,
        dcs: endpoints.dcs,
        pg: Arc::new(Mutex::new(endpoints.pg)),
        processes: endpoints.processes,
        seen: PgSeen::default(),
        upstream: None,
        api,
        watchdog_rx: endpoints.fence.watchdog_changes(),
        fence: endpoints.fence,
        lease_until: Arc::default(),
        peers: endpoints.peers,
        start: endpoints.clock.boottime(),
        clock: endpoints.clock,
        tasks_tx,
        tasks_rx,
        fatal: None,
        sync_released: false,
        last_member: None,
        last_member_shape: None,
        last_member_write: None,
        last_message: String::new(),
        replies: std::collections::BTreeMap::new(),
        last_request: 0,
        cmds,
    };
    agent.main_loop(shutdown).await
}

impl Agent {
    fn policy(&self) -> Policy {
        settings::policy(&self.cfg, &self.dynamic)
    }

    /// The core's clock: boot time since start, so that time spent suspended counts and a
    /// leader resumed after a suspend finds its deadline passed.
    fn mono_now(&self) -> MonoTime {
        MonoTime(self.clock.boottime().saturating_sub(self.start))
    }

    /// `t` as a tokio `Instant` (for sleeps and timeouts), measured from now.
    fn instant_of(&self, t: MonoTime) -> Instant {
        let now = self.mono_now();
        let at = Instant::now();
        if t >= now {
            at + (t.0 - now.0)
        } else {
            at.checked_sub(now.0 - t.0).unwrap_or(at)
        }
    }

    /// When a call the loop waits for, started now, must give up: after `retry_timeout` and,
    /// while we hold the lock, at its deadline, so the loop is back in time to stop PostgreSQL
    /// itself. Every wait of the loop (the store, PostgreSQL, peers) is bounded by it.
    fn call_bound(&self) -> Instant {
        self.bound_within(self.policy().retry_timeout)
    }

    /// [`Self::call_bound`] for a call with its own, shorter limit.
    fn bound_within(&self, limit: Duration) -> Instant {
        let at = Instant::now() + limit;
        match self.core.lease_deadline() {
            Some(d) => self.instant_of(d).min(at),
            None => at,
        }
    }

    /// The watchdog's new state, fed to the core (once per change the fence reported).
    fn watchdog_input(&mut self) -> Vec<(crate::ha::ActionId, crate::ha::Action)> {
        self.watchdog_rx.borrow_and_update();
        let state = self.fence.watchdog_state();
        tracing::debug!(?state, "the watchdog changed");
        let actions = self.core.step(Input::Watchdog(state), self.mono_now());
        // A required watchdog that fails demotes between cycles: its reason is said now, before
        // the next cycle's message replaces it.
        self.log_message();
        actions
    }

    /// Logs the core's message at info when it changed, else at debug (Patroni's one line per
    /// cycle).
    fn log_message(&mut self) {
        let msg = self.core.message();
        if msg != self.last_message {
            tracing::info!("{msg}");
            self.last_message = msg.to_owned();
        } else {
            tracing::debug!("{msg}");
        }
    }

    /// Waits for a store call until `until`; `None` when it timed out. A watchdog change
    /// reported meanwhile is fed to the core at once: a required watchdog that fails stops
    /// PostgreSQL now, not once a store that lost the request has been given up on. So are the
    /// API's commands: a leader in failsafe mode asks for this member's confirmation exactly
    /// when the store is slow to answer.
    async fn wait_store<T>(&mut self, until: Instant, call: impl Future<Output = T>) -> Option<T> {
        let mut call = std::pin::pin!(tokio::time::timeout_at(until, call));
        loop {
            tokio::select! {
                biased;
                Ok(()) = self.watchdog_rx.changed() => {
                    let actions = self.watchdog_input();
                    self.execute(actions).await;
                }
                r = &mut call => return r.ok(),
                // (A `Wake` taken here needs nothing more: the cycle under way, or the store
                // change the API made, which wakes the loop anyway, sees what it was for.)
                Some(cmd) = self.cmds.recv() => {
                    self.command(cmd).await;
                }
            }
        }
    }

    /// One command of the REST API; whether it asks for a cycle now.
    async fn command(&mut self, cmd: ApiCommand) -> bool {
        match cmd {
            ApiCommand::Wake => true,
            ApiCommand::Reload => {
                // Not while a task holds PostgreSQL, and bounded like every wait of the loop.
                let until = self.call_bound();
                if let Ok(pg) = self.pg.try_lock() {
                    let _ = tokio::time::timeout_at(until, pg.reload()).await;
                }
                false
            }
            ApiCommand::Restart(reply) => {
                self.request(crate::ha::Request::Restart, reply).await;
                false
            }
            ApiCommand::Reinitialize(reply) => {
                self.request(crate::ha::Request::Reinitialize, reply).await;
                false
            }
            ApiCommand::Failsafe(ping, reply) => {
                let request = crate::ha::Request::Failsafe {
                    leader: ping.name,
                    ttl: ping.ttl,
                };
                self.request(request, reply).await;
                false
            }
        }
    }

    /// `t` on the boot-time clock (what the fence process compares).
    fn boottime_of(&self, t: MonoTime) -> Duration {
        self.start + t.0
    }

    async fn main_loop(&mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut changes = self.dcs.changes();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut run_cycle = true;
        loop {
            if run_cycle {
                self.cycle().await;
            }
            if let Some(reason) = self.fatal.take() {
                self.stop_postgres_now().await;
                bail!(reason);
            }
            let wake = self.instant_of(self.core.next_wakeup());
            // Biased, in this order: the same inputs are taken in the same order every time
            // (the simulation replays a schedule exactly), a due deadline is never starved by a
            // stream of store changes, and a failed watchdog never by a due deadline.
            run_cycle = tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    return self.shutdown().await;
                }
                // Before the deadline's wake-up, which a slow store can keep due: a required
                // watchdog became active (a promotion waits for it) or failed (a
                // primary stops before the store is read).
                Ok(()) = self.watchdog_rx.changed() => {
                    let actions = self.watchdog_input();
                    self.execute(actions).await;
                    true
                }
                _ = tokio::time::sleep_until(wake) => true,
                Some(done) = self.tasks_rx.recv() => {
                    self.task_finished(done).await;
                    self.core.take_cycle_now()
                }
                Some(cmd) = self.cmds.recv() => self.command(cmd).await,
                r = changes.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    self.relevant_change().await
                }
            };
        }
    }

    /// A store change wakes the loop only when it matters to the decision: the lock, the
    /// failover request, the configuration, the cluster's identity or membership. Our own
    /// member and status writes do not.
    async fn relevant_change(&mut self) -> bool {
        let until = self.call_bound();
        let dcs = self.dcs.clone();
        let Some(Ok(v)) = self
            .wait_store(until, async move { dcs.load(false).await })
            .await
        else {
            return true;
        };
        let Some(old) = &self.view else { return true };
        let key = |v: &ClusterView| {
            (
                v.leader.as_ref().map(|l| l.name.clone()),
                v.failover.as_ref().map(|f| f.value.clone()),
                v.config.as_ref().map(|c| c.version.clone()),
                v.initialize.clone(),
                v.members.keys().cloned().collect::<Vec<_>>(),
            )
        };
        let relevant = key(old) != key(&v);
        self.view = Some(v);
        self.view_read_at = Some(Instant::now());
        relevant
    }

    async fn task_finished(&mut self, done: TaskDone) {
        match &done.note {
            TaskNote::Started { upstream } => self.upstream = upstream.clone(),
            TaskNote::Stopped => {
                self.upstream = None;
                // Say so on the REST API before the lock can be released: the next leader
                // takes a released lock only once this member answers that it is not a primary.
                self.seen.up = false;
                self.seen.status = None;
                self.publish_snapshot();
            }
            TaskNote::None => {}
        }
        let actions = self.core.step(
            Input::Completed {
                id: done.id,
                outcome: done.outcome,
            },
            self.mono_now(),
        );
        self.execute(actions).await;
    }

    /// One HA cycle.
    async fn cycle(&mut self) {
        let now = self.mono_now();
        // The deadline first (ha-safety rule 2): before any slow call.
        let actions = self.core.step(Input::Tick, now);
        self.execute(actions).await;
        let bound = self.call_bound();
        let dcs = self.dcs.clone();
        let view = match self
            .wait_store(bound, async move { dcs.load(false).await })
            .await
        {
            Some(Ok(v)) => {
                self.dcs_last_seen = Some(self.clock.wall().timestamp());
                self.view_read_at = Some(Instant::now());
                Some(v)
            }
            Some(Err(e)) => {
                tracing::warn!("{e}");
                None
            }
            None => {
                tracing::warn!("DCS is not accessible: read timed out");
                None
            }
        };
        if let Some(v) = &view {
            self.apply_dynamic_config(v).await;
            for p in &v.problems {
                tracing::warn!("ignoring unreadable DCS value {}: {}", p.key, p.error);
            }
            self.view = Some(v.clone());
        }
        let pg = self.observe_pg().await;
        let scheduled_at = view
            .as_ref()
            .and_then(|v| v.failover.as_ref())
            .and_then(|f| f.value.scheduled_at.as_deref());
        let switchover_at = observe::countdown(scheduled_at, self.clock.wall());
        let obs = Observation {
            dcs: view,
            pg,
            policy: self.policy(),
            watchdog: self.fence.watchdog_state(),
            switchover_at,
        };
        let actions = self
            .core
            .step(Input::Observed(Box::new(obs)), self.mono_now());
        self.execute(actions).await;
        self.log_message();
        // The REST API first: it is instant, the member key may wait for the store.
        self.publish_snapshot();
        if self.view.is_some() {
            self.publish_member().await;
        }
    }

    /// Applies a changed `config` key: new timings, new PostgreSQL parameters (reloaded).
    async fn apply_dynamic_config(&mut self, v: &ClusterView) {
        let version = v.config.as_ref().map(|c| c.version.clone());
        if version == self.dynamic_version || v.config.is_none() {
            return;
        }
        self.dynamic_version = version;
        let new = dynamic_from(&self.cfg, Some(v));
        if new.ttl != self.dynamic.ttl {
            self.dcs.set_ttl(new.ttl);
        }
        // PostgreSQL's side of it is the core's `ApplyConfig`, between tasks.
        self.dynamic = new;
    }

    async fn stop_postgres_now(&mut self) {
        self.processes.kill_all();
        let mut pg = self.pg.lock().await;
        let _ = pg
            .stop(
                crate::postgres::StopMode::Immediate,
                Duration::from_secs(10),
            )
            .await;
    }

    /// Patroni's shutdown: stop PostgreSQL (fast), then release the lock if we hold it.
    async fn shutdown(&mut self) -> anyhow::Result<()> {
        let actions = self.core.step(Input::Shutdown, self.mono_now());
        self.execute(actions).await;
        let give_up = Instant::now() + self.cfg.postgresql.pg_ctl_timeout + Duration::from_secs(10);
        while !self.core.is_finished() {
            if self.core.wants_observation() {
                // Leaving the synchronous standbys: cycles go on (publishing, reading the
                // store) until the core lets the stop begin.
                self.cycle().await;
                let wake = self.instant_of(self.core.next_wakeup()).min(give_up);
                let pause = wake.min(Instant::now() + Duration::from_millis(250));
                let pause = pause.max(Instant::now() + Duration::from_millis(10));
                // A task ending ends the pause: the stop that a cycle started is followed at
                // once by the lock's release, which the next leader is waiting for.
                if let Ok(Some(done)) = tokio::time::timeout_at(pause, self.tasks_rx.recv()).await {
                    self.task_finished(done).await;
                }
                continue;
            }
            // The lease deadline still holds while we stop: a stop that hangs (a postmaster
            // ignoring the fast-stop signal) must not keep a primary writable past it.
            // (At least 10 ms apart: the core's next wake-up may be due already.)
            let wake = self
                .instant_of(self.core.next_wakeup())
                .max(Instant::now() + Duration::from_millis(10))
                .min(give_up);
            match tokio::time::timeout_at(wake, self.tasks_rx.recv()).await {
                Ok(Some(done)) => self.task_finished(done).await,
                Err(_) if Instant::now() < give_up => {
                    let actions = self.core.step(Input::Tick, self.mono_now());
                    self.execute(actions).await;
                }
                _ => {
                    tracing::warn!(
                        "shutdown did not finish in time: stopping PostgreSQL immediately"
                    );
                    self.stop_postgres_now().await;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        self.dcs.release_leader(None, None),
                    )
                    .await;
                    break;
                }
            }
        }
        self.fence.set(None);
        Ok(())
    }
}
