//! The shell's I/O endpoints, behind traits: PostgreSQL control, the processes of its data
//! directory, the fence, peers' REST APIs and the clocks. The binary plugs in the real ones
//! ([`Endpoints::local`]); the simulation (`tests/sim`) plugs in simulated ones and runs this
//! same shell, so the code that decides what to do with an observation, an outcome or a
//! command is the code the binary runs. (The store is the [`Dcs`] trait already.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::fence::{Armed, Fence};
use super::watchdog::DeviceStatus;
use crate::api::peer_client::PeerClient;
use crate::dcs::Dcs;
use crate::ha::{PeerReport, WatchdogState};
use crate::postgres::{
    DataDirState, PgError, PgSettings, PgStatus, Postgres, StartAs, StopMode, TimelineSwitch,
};

/// PostgreSQL as the shell drives it, through the handle a task holds while it runs.
#[async_trait]
pub trait PgControl: Send + Sync + 'static {
    async fn data_dir_state(&self) -> DataDirState;
    /// A postmaster runs (ours, or one we did not start).
    fn is_running(&mut self) -> bool;
    /// The running postmaster is not our child.
    fn is_foreign(&self) -> bool;
    async fn status(&self) -> Result<PgStatus, PgError>;
    async fn initdb(&self) -> Result<(), PgError>;
    /// The bootstrap users, then `bootstrap.post_bootstrap`'s `script` if there is one.
    async fn post_bootstrap(&self, script: Option<&str>) -> Result<(), String>;
    async fn basebackup(&self, conninfo: &str) -> Result<(), PgError>;
    async fn rewind(&self, conninfo: &str) -> Result<(), PgError>;
    fn remove_data_dir(&self) -> Result<(), PgError>;
    fn wipe_data_dir(&self) -> Result<(), PgError>;
    async fn start(&mut self, how: StartAs) -> Result<(), PgError>;
    async fn stop(&mut self, mode: StopMode, timeout: Duration) -> Result<(), PgError>;
    async fn promote(&mut self) -> Result<(), PgError>;
    async fn follow(
        &mut self,
        conninfo: Option<String>,
        slot: Option<String>,
    ) -> Result<(), PgError>;
    async fn reload(&self) -> Result<(), PgError>;
    /// `synchronous_standby_names` over the settings' own (`None`: theirs again).
    async fn set_sync_standby_names(&mut self, value: Option<String>) -> Result<(), PgError>;
    async fn checkpoint(&self) -> Result<(), PgError>;
    async fn ensure_replication_slots(&self, names: &[String]) -> Result<(), PgError>;
    /// The timeline switches that led to `timeline`, oldest first (its history file).
    fn timeline_history(&self, timeline: u64) -> Result<Vec<TimelineSwitch>, PgError>;
    fn update_settings(&mut self, settings: PgSettings);
}

/// What is read or done without the handle (a task may hold it): files of the data directory
/// and the immediate kill, which never waits (ha-safety rule 2).
pub trait PgProcesses: Send + Sync + 'static {
    /// SIGKILL to every process of the data directory, then (off the HA loop) again until
    /// none is left.
    fn kill_all(&self);
    /// `postmaster.pid` names a live process.
    fn postmaster_alive(&self) -> bool;
    /// The data directory holds file `name` (`standby.signal`, `backup_label`).
    fn has_file(&self, name: &str) -> bool;
}

/// The fence (see [`super::fence`]) and the watchdog it drives.
pub trait Fencing: Send + Sync + 'static {
    /// Arms the fence for `armed`, or disarms it. Never blocks.
    fn set(&self, armed: Option<Armed>);
    fn watchdog_state(&self) -> WatchdogState;
    /// Changes of the device's status (they wake the HA loop).
    fn watchdog_changes(&self) -> watch::Receiver<DeviceStatus>;
}

/// Peers' `GET /patroni`, for the race and switchovers.
#[async_trait]
pub trait PeerProbe: Send + Sync + 'static {
    /// Every `(name, api_url)` at once; `None` for a peer without a URL or no answer in time.
    async fn probe(&self, targets: Vec<(String, Option<String>)>) -> PeerReport;
    /// `POST /failsafe` with `body` to every `(name, api_url)` at once (each within 2 s, one
    /// retry); the names that did not answer `200`.
    async fn confirm_failsafe(
        &self,
        targets: Vec<(String, String)>,
        body: serde_json::Value,
    ) -> Vec<String>;
}

/// The agent's clocks.
pub trait Clock: Send + Sync + 'static {
    /// Boot time (see [`super::clock`]): what deadlines and the fence are measured on.
    fn boottime(&self) -> Duration;
    /// The wall clock: scheduled switchovers, `history` and `dcs_last_seen`.
    fn wall(&self) -> chrono::DateTime<chrono::Utc>;
}

/// Everything the shell talks to.
pub struct Endpoints {
    pub dcs: Arc<dyn Dcs>,
    pub pg: Box<dyn PgControl>,
    pub processes: Arc<dyn PgProcesses>,
    pub fence: Arc<dyn Fencing>,
    pub peers: Arc<dyn PeerProbe>,
    pub clock: Arc<dyn Clock>,
}

impl Endpoints {
    /// The real ones: this machine's PostgreSQL, fence process, HTTP peers and clocks.
    pub fn local(dcs: Arc<dyn Dcs>, pg: Postgres, fence: Fence, http: PeerClient) -> Endpoints {
        let data_dir = pg.settings().data_dir.clone();
        Endpoints {
            dcs,
            pg: Box::new(pg),
            processes: Arc::new(LocalProcesses { data_dir }),
            fence: Arc::new(fence),
            peers: Arc::new(HttpPeers(http)),
            clock: Arc::new(SystemClock),
        }
    }
}

#[async_trait]
impl PgControl for Postgres {
    async fn data_dir_state(&self) -> DataDirState {
        Postgres::data_dir_state(self).await
    }
    fn is_running(&mut self) -> bool {
        Postgres::is_running(self)
    }
    fn is_foreign(&self) -> bool {
        self.foreign_postmaster().is_some()
    }
    async fn status(&self) -> Result<PgStatus, PgError> {
        Postgres::status(self).await
    }
    async fn initdb(&self) -> Result<(), PgError> {
        Postgres::initdb(self).await
    }
    async fn post_bootstrap(&self, script: Option<&str>) -> Result<(), String> {
        Postgres::post_bootstrap(self)
            .await
            .map_err(|e| e.to_string())?;
        match script {
            Some(script) => run_post_bootstrap(script, self).await,
            None => Ok(()),
        }
    }
    async fn basebackup(&self, conninfo: &str) -> Result<(), PgError> {
        Postgres::basebackup(self, conninfo).await
    }
    async fn rewind(&self, conninfo: &str) -> Result<(), PgError> {
        Postgres::rewind(self, conninfo).await
    }
    fn remove_data_dir(&self) -> Result<(), PgError> {
        Postgres::remove_data_dir(self)
    }
    fn wipe_data_dir(&self) -> Result<(), PgError> {
        Postgres::wipe_data_dir(self)
    }
    async fn start(&mut self, how: StartAs) -> Result<(), PgError> {
        Postgres::start(self, how).await
    }
    async fn stop(&mut self, mode: StopMode, timeout: Duration) -> Result<(), PgError> {
        Postgres::stop(self, mode, timeout).await
    }
    async fn promote(&mut self) -> Result<(), PgError> {
        Postgres::promote(self).await
    }
    async fn follow(
        &mut self,
        conninfo: Option<String>,
        slot: Option<String>,
    ) -> Result<(), PgError> {
        Postgres::follow(self, conninfo, slot).await.map(|_| ())
    }
    async fn reload(&self) -> Result<(), PgError> {
        Postgres::reload(self).await
    }
    async fn set_sync_standby_names(&mut self, value: Option<String>) -> Result<(), PgError> {
        Postgres::set_sync_standby_names(self, value).await
    }
    async fn checkpoint(&self) -> Result<(), PgError> {
        self.query_one_shot("CHECKPOINT").await
    }
    async fn ensure_replication_slots(&self, names: &[String]) -> Result<(), PgError> {
        Postgres::ensure_replication_slots(self, names).await
    }
    fn timeline_history(&self, timeline: u64) -> Result<Vec<TimelineSwitch>, PgError> {
        Postgres::timeline_history(self, timeline)
    }
    fn update_settings(&mut self, settings: PgSettings) {
        Postgres::update_settings(self, settings)
    }
}

/// `bootstrap.post_bootstrap`: a script run with the superuser connection URL.
async fn run_post_bootstrap(script: &str, pg: &Postgres) -> Result<(), String> {
    let s = pg.settings();
    let host = if s.listen_host.is_empty() || s.listen_host == "0.0.0.0" || s.listen_host == "*" {
        "127.0.0.1".to_owned()
    } else {
        s.listen_host
            .split(',')
            .next()
            .unwrap_or("127.0.0.1")
            .trim()
            .to_owned()
    };
    let url = format!(
        "postgres://{}@{}:{}/postgres",
        s.superuser.username, host, s.port
    );
    let mut parts = script.split_whitespace();
    let Some(cmd) = parts.next() else {
        return Ok(());
    };
    let status = tokio::process::Command::new(cmd)
        .args(parts)
        .arg(&url)
        .env("PGPASSFILE", &s.pgpass)
        .status()
        .await
        .map_err(|e| format!("post_bootstrap {script}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("post_bootstrap {script} exited with {status}"))
    }
}

/// The processes and files of this machine's data directory.
struct LocalProcesses {
    data_dir: PathBuf,
}

impl PgProcesses for LocalProcesses {
    fn kill_all(&self) {
        // Kill first, log after (confirm_down): every process of the data directory, backends
        // included (they are session leaders of their own).
        let killed = crate::postgres::kill_data_dir_processes(&self.data_dir);
        super::fence::confirm_down(self.data_dir.clone(), killed);
    }
    fn postmaster_alive(&self) -> bool {
        crate::postgres::postmaster_pid_file_alive(&self.data_dir).is_some()
    }
    fn has_file(&self, name: &str) -> bool {
        Path::new(&self.data_dir).join(name).exists()
    }
}

impl Fencing for Fence {
    fn set(&self, armed: Option<Armed>) {
        Fence::set(self, armed)
    }
    fn watchdog_state(&self) -> WatchdogState {
        Fence::watchdog_state(self)
    }
    fn watchdog_changes(&self) -> watch::Receiver<DeviceStatus> {
        Fence::watchdog_changes(self)
    }
}

/// Peers over HTTP(S).
struct HttpPeers(PeerClient);

#[async_trait]
impl PeerProbe for HttpPeers {
    async fn probe(&self, targets: Vec<(String, Option<String>)>) -> PeerReport {
        super::observe::probe_all(&self.0, targets).await
    }
    async fn confirm_failsafe(
        &self,
        targets: Vec<(String, String)>,
        body: serde_json::Value,
    ) -> Vec<String> {
        super::observe::confirm_failsafe_all(&self.0, targets, &body).await
    }
}

/// `CLOCK_BOOTTIME` and the system's wall clock.
struct SystemClock;

impl Clock for SystemClock {
    fn boottime(&self) -> Duration {
        super::clock::boottime_now()
    }
    fn wall(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}
