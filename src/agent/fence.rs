//! The fence: stops PostgreSQL when the leader lock's deadline passes, independently of the HA
//! loop. The loop stops PostgreSQL itself at the deadline ([`crate::ha::Action::StopNow`]); the
//! fence is the second line, for a loop stuck in a slow call (ha-safety rule 2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Kills the postmaster whose pid is in `data_dir/postmaster.pid`: SIGQUIT (immediate
/// shutdown: every backend is told to quit at once), then SIGKILL if it is still there
/// shortly after. Works without the `Postgres` handle, so a task holding it cannot delay it.
pub fn kill_postmaster(data_dir: &Path) {
    let Some(pid) = postmaster_pid(data_dir) else { return };
    // SAFETY: kill(2) with a pid read from postmaster.pid; no memory is involved.
    unsafe {
        libc::kill(pid, libc::SIGQUIT);
    }
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above; signal 0 probes for existence.
        unsafe {
            if libc::kill(pid, 0) == 0 {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    });
}

/// The live postmaster's pid, from `postmaster.pid`.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// Arms and disarms the fence.
#[derive(Clone)]
pub struct Fence {
    deadline: watch::Sender<Option<Instant>>,
}

impl Fence {
    /// Starts the fence task for PostgreSQL in `data_dir`.
    pub fn spawn(data_dir: PathBuf) -> Fence {
        let (tx, mut rx) = watch::channel::<Option<Instant>>(None);
        tokio::spawn(async move {
            loop {
                let armed = *rx.borrow_and_update();
                match armed {
                    None => {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {
                                if *rx.borrow() == Some(at) {
                                    tracing::error!("leader lock deadline passed without renewal: fencing PostgreSQL");
                                    kill_postmaster(&data_dir);
                                    if rx.changed().await.is_err() {
                                        return;
                                    }
                                }
                            }
                            r = rx.changed() => if r.is_err() { return },
                        }
                    }
                }
            }
        });
        Fence { deadline: tx }
    }

    /// Arms the fence for `deadline`, or disarms it with `None`.
    pub fn set(&self, deadline: Option<Instant>) {
        self.deadline.send_if_modified(|d| {
            let changed = *d != deadline;
            *d = deadline;
            changed
        });
    }
}
