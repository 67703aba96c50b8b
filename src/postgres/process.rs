//! The postmaster as our child process.
//!
//! The postmaster is forked from one dedicated, never-ending std thread: `PR_SET_PDEATHSIG`
//! fires when the *thread* that forked the child dies, and tokio worker or blocking-pool
//! threads may come and go. With `PDEATHSIG = SIGQUIT` PostgreSQL does an immediate shutdown
//! when pgwarden dies, even by `kill -9`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use super::error::PgError;

const STDERR_LINES: usize = 30;

type SpawnReply = mpsc::Sender<std::io::Result<Child>>;

fn spawner() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                // The static keeps a sender alive, so this loop runs for the life of the process.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the pg-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` from the long-lived spawner thread, with PDEATHSIG=SIGQUIT and its own
/// process group (so terminal signals to pgwarden's group do not reach it).
fn spawn_with_pdeathsig(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGQUIT as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // the parent may have died before prctl took effect
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("pg-spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("pg-spawner thread is gone"))?
}

/// Our running (or exited but not yet reaped) postmaster.
#[derive(Debug)]
pub struct Postmaster {
    child: Child,
    pid: u32,
    stderr: Arc<Mutex<VecDeque<String>>>,
    exit: Option<ExitStatus>,
}

impl Postmaster {
    /// Starts `postgres` with `args`; its stderr/stdout go to tracing and a small ring buffer.
    pub fn spawn(program: &Path, args: &[String]) -> Result<Postmaster, PgError> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LC_MESSAGES", "C");
        let command = super::error::describe(program, args);
        tracing::info!(%command, "starting postmaster");
        let mut child = spawn_with_pdeathsig(cmd).map_err(|source| PgError::Spawn {
            command: command.clone(),
            source,
        })?;
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            forward(out, stderr.clone(), pid);
        }
        if let Some(err) = child.stderr.take() {
            forward(err, stderr.clone(), pid);
        }
        Ok(Postmaster {
            child,
            pid,
            stderr,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Non-blocking: has it exited? (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    tracing::info!(pid = self.pid, status = %st, "postmaster exited");
                    self.exit = Some(st)
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(pid = self.pid, "try_wait on postmaster failed: {e}"),
            }
        }
        self.exit
    }

    pub fn is_alive(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Sends a signal to the postmaster (not its group).
    pub fn signal(&mut self, sig: libc::c_int) -> Result<(), PgError> {
        if !self.is_alive() {
            return Err(PgError::NotRunning);
        }
        signal_pid(self.pid as i32, sig)
    }

    /// SIGKILL everything of this server: the postmaster (stopped first, so it cannot fork
    /// more), its process group, its direct children and every postgres process whose working
    /// directory is the postmaster's data directory (backends are session leaders of their own,
    /// so neither the group nor the postmaster's death reaches them); then reap. Logs after.
    pub fn kill_hard(&mut self) {
        if !self.is_alive() {
            return;
        }
        let pid = self.pid as i32;
        // The postmaster chdirs into its data directory early; before that its cwd is ours.
        let dir = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .filter(|d| d.join("PG_VERSION").is_file());
        let killed = kill_all(Some(pid), dir.as_deref());
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        match self.child.wait() {
            Ok(st) => self.exit = Some(st),
            Err(e) => tracing::warn!("waiting for the killed postmaster: {e}"),
        }
        tracing::warn!(
            pid,
            killed,
            "sent SIGKILL to the postmaster and its processes"
        );
    }

    /// The last lines the postmaster wrote to stdout/stderr.
    pub fn output_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

/// Forwards one of the postmaster's output pipes, line by line, to tracing (non-blocking and
/// lossy, see `crate::logging`) and to the ring buffer of its last lines. It never stops reading
/// before EOF: a stalled reader would fill the pipe and block PostgreSQL's own logging.
/// Invalid UTF-8 is replaced, and a line longer than 8 KiB is passed on in pieces, so neither
/// ends the forwarding nor grows memory without bound.
fn forward<R: std::io::Read + Send + 'static>(r: R, buf: Arc<Mutex<VecDeque<String>>>, pid: u32) {
    const MAX_LINE: u64 = 8192;
    let _ = std::thread::Builder::new()
        .name(format!("pg-log-{pid}"))
        .spawn(move || {
            use std::io::Read;
            let mut reader = BufReader::new(r);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut raw) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                let text = String::from_utf8_lossy(&raw);
                let line = text.trim_end_matches(['\n', '\r']);
                tracing::info!(target: "postgres", pid, "{line}");
                let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                if b.len() >= STDERR_LINES {
                    b.pop_front();
                }
                b.push_back(line.to_owned());
            }
        });
}

/// `kill(pid, sig)` with a readable error.
pub fn signal_pid(pid: i32, sig: libc::c_int) -> Result<(), PgError> {
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(PgError::io(
            format!("kill({pid}, {sig})"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether a process exists (EPERM counts as alive). Zombies count as alive too.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Direct children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // "pid (comm) state ppid ..." — comm may contain spaces and parentheses
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The pid recorded in `<data_dir>/postmaster.pid` if that process is alive and looks like a
/// postgres process.
pub fn postmaster_pid_file_alive(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 || !pid_alive(pid) {
        return None;
    }
    // guard against pid reuse: the process must be a postgres/postmaster binary
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => {
            let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
            let argv0 = String::from_utf8_lossy(argv0);
            (argv0.contains("postgres") || argv0.contains("postmaster")).then_some(pid)
        }
        // no /proc access: trust kill(pid, 0)
        Err(_) => Some(pid),
    }
}

/// Stops PostgreSQL in `data_dir` dead, whatever state the agent is in: SIGSTOP the postmaster
/// named in `postmaster.pid` (so it forks no more backends), then SIGKILL it, its direct
/// children and every process whose working directory is `data_dir` and that looks like
/// postgres (a backend calls `setsid()`, so only this reaches one that is committing). Our
/// own pid is never signalled; zombies (which commit nothing) do not count.
///
/// Returns how many processes were alive and signalled: 0 means PostgreSQL is confirmed
/// down. Takes no lock, does not log, blocks on nothing but a scan of /proc.
pub fn kill_data_dir_processes(data_dir: &Path) -> usize {
    let dir = std::fs::canonicalize(data_dir).ok();
    let postmaster = postmaster_pid_file_alive(data_dir).filter(|&pid| {
        // pid reuse: a postgres of another data directory is not ours
        match (&dir, cwd_of(pid)) {
            (Some(dir), Some(cwd)) => cwd == *dir,
            _ => true,
        }
    });
    kill_all(postmaster, dir.as_deref())
}

/// [`kill_data_dir_processes`] every `every` until it finds nothing alive (true) or `give_up`
/// has passed (false).
pub fn kill_data_dir_processes_confirmed(
    data_dir: &Path,
    every: std::time::Duration,
    give_up: std::time::Duration,
) -> bool {
    let until = std::time::Instant::now() + give_up;
    loop {
        if kill_data_dir_processes(data_dir) == 0 {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// SIGSTOP `postmaster`, then SIGKILL it, its children and the postgres processes in `dir`.
fn kill_all(postmaster: Option<i32>, dir: Option<&Path>) -> usize {
    let me = std::process::id() as i32;
    let postmaster = postmaster.filter(|&p| p > 0 && p != me);
    if let Some(pm) = postmaster {
        // SAFETY: kill(2) with a pid; no memory is involved.
        unsafe {
            libc::kill(pm, libc::SIGSTOP);
        }
    }
    let mut victims: Vec<i32> = Vec::new();
    if let Some(pm) = postmaster {
        victims.push(pm);
        victims.extend(children_of(pm));
    }
    if let Some(dir) = dir {
        victims.extend(postgres_processes_in(dir));
    }
    victims.sort_unstable();
    victims.dedup();
    victims.retain(|&p| p > 0 && p != me && !is_zombie_or_gone(p));
    for &p in &victims {
        // SAFETY: as above.
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
    victims.len()
}

fn cwd_of(pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// No /proc entry, or exited and not yet reaped.
fn is_zombie_or_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

/// Live processes whose working directory is `dir` (canonical) and that look like postgres.
pub fn postgres_processes_in(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| cwd_of(p).is_some_and(|c| c == dir) && looks_like_postgres(p))
        .collect()
}

/// The executable is `postgres` (or `postmaster`), or the command line is a postgres process
/// title (`postgres: checkpointer`, `/usr/lib/postgresql/15/bin/postgres -D ...`).
fn looks_like_postgres(pid: i32) -> bool {
    let is_pg_name = |name: &str| name == "postgres" || name == "postmaster";
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe"))
        && let Some(name) = exe.file_name().and_then(|n| n.to_str())
        && is_pg_name(name.trim_end_matches(" (deleted)"))
    {
        return true;
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    if argv0.starts_with("postgres:") || argv0.starts_with("postmaster:") {
        return true;
    }
    let program = argv0.split(' ').next().unwrap_or_default();
    is_pg_name(program.rsplit('/').next().unwrap_or_default())
}
