//! The members' `pgwarden run` processes: started as the member user with the store's
//! environment, logging to a file in the cluster's directory, killed or stopped by the test.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Cluster;

/// `(uid, gid)` of the `postgres` user when the tests run as root: PostgreSQL refuses to run as
/// root. `None`: members run as the test's user.
pub(super) fn member_user() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("user postgres");
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

impl Cluster {
    /// A `pgwarden run` command for a config file, as the member user, with the store's
    /// environment, logging to `log`.
    pub fn command(&self, config: &Path, log: &Path) -> Command {
        self.command_in(None, config, log)
    }

    /// Member `i`'s `pgwarden run`, in its network namespace when the cluster has them.
    fn member_command(&self, i: usize) -> Command {
        let ns = self.net.as_ref().map(|n| n.ns_path(i));
        self.command_in(ns.as_deref(), &self.members[i].config, &self.log_path(i))
    }

    /// [`Cluster::command`], entering the network namespace `ns` first when given: `nsenter`
    /// enters it as root, takes the member user, then executes pgwarden, so the process the
    /// test holds (and kills) is pgwarden itself.
    fn command_in(&self, ns: Option<&Path>, config: &Path, log: &Path) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = match ns {
            None => {
                let mut cmd = Command::new(&self.bin);
                if let Some((u, g)) = self.run_as {
                    cmd.uid(u).gid(g);
                }
                cmd
            }
            Some(ns) => {
                let mut cmd = Command::new("/usr/bin/nsenter");
                cmd.arg(format!("--net={}", ns.display()));
                if let Some((u, g)) = self.run_as {
                    cmd.args(["-S", &u.to_string(), "-G", &g.to_string()]);
                }
                cmd.arg("--").arg(&self.bin);
                cmd
            }
        };
        cmd.arg("run")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("PGWARDEN_LOG", "info,pgwarden=debug");
        self.store.member_env(&mut cmd);
        if self.run_as.is_some() {
            cmd.env("HOME", &self.dir);
        }
        cmd
    }

    /// Makes `cmd` run as the members' user (`postgres` when the tests run as root).
    pub fn as_member_user<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if let Some((u, g)) = self.run_as {
            cmd.uid(u).gid(g);
        }
        cmd
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    pub fn spawn(&mut self, i: usize) {
        let mut cmd = self.member_command(i);
        self.members[i].child = Some(cmd.spawn().expect("spawn pgwarden"));
    }

    pub fn spawn_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
    }

    /// Spawns member `i` with its stdout and stderr on one pipe that nobody reads, and
    /// `PGWARDEN_LOG=log_filter`: once the pipe's buffer (64 KiB) is full, every write to it
    /// blocks. Hold the returned reader as long as the member runs (with the reader gone,
    /// writes would fail instead of block); the member's log file stays empty.
    pub fn spawn_unread_pipe(&mut self, i: usize, log_filter: &str) -> std::io::PipeReader {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let mut cmd = self.member_command(i);
        cmd.stdout(writer.try_clone().expect("dup pipe"))
            .stderr(writer)
            .env("PGWARDEN_LOG", log_filter);
        self.members[i].child = Some(cmd.spawn().expect("spawn pgwarden"));
        reader
    }

    /// SIGKILL the member's agent; its PostgreSQL dies with it (parent-death signal).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let mut c = self.members[i].child.take()?;
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}
