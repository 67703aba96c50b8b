//! The members' `pgwarden run` processes: started as the member user with the store's
//! environment, logging to a file in the cluster's directory, killed or stopped by the test.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Agent, Cluster};

/// Debian's Patroni, for members running it ([`Agent::Patroni`]).
pub const PATRONI: &str = "/usr/bin/patroni";

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

    /// Member `i`'s agent, in its network namespace when the cluster has them.
    fn member_command(&self, i: usize) -> Command {
        let ns = self.net.as_ref().map(|n| n.ns_path(i));
        let m = &self.members[i];
        let mut cmd = match self.agent {
            Agent::Pgwarden => self.command_in(ns.as_deref(), &m.config, &self.log_path(i)),
            Agent::Patroni => {
                let mut cmd =
                    self.agent_command(ns.as_deref(), Path::new(PATRONI), &self.log_path(i));
                cmd.arg(self.patroni_config(i))
                    .current_dir(self.dir.join(&m.name));
                cmd
            }
        };
        self.store.member_env(&mut cmd, m.store_via.as_deref());
        if self.clock_files {
            // LD_PRELOAD is set by `env` after nsenter (see `agent_command`).
            cmd.env("FAKETIME_TIMESTAMP_FILE", self.clock_file(i))
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd
    }

    /// Member `i`'s configuration as Debian's Patroni takes it: pgwarden's with Patroni's
    /// `bin_dir` (pgwarden finds PostgreSQL 15 by itself), the members' kubeconfig context,
    /// and the etcd hosts taken as proxies (pgwarden never looks past the hosts it is given).
    fn patroni_config(&self, i: usize) -> PathBuf {
        let m = &self.members[i];
        let yaml = std::fs::read_to_string(&m.config)
            .unwrap()
            .replacen(
                "\npostgresql:\n",
                "\npostgresql:\n  bin_dir: /usr/lib/postgresql/15/bin\n",
                1,
            )
            // Patroni reads the kubeconfig's context by name (`kind-kind` unless told).
            .replacen("\nkubernetes:\n", "\nkubernetes:\n  context: t\n", 1)
            // Without it, Patroni asks etcd for its members and talks to the addresses they
            // advertise: around the member's proxy, past a fault cut or slowed there.
            .replacen("\netcd3:\n", "\netcd3:\n  use_proxies: true\n", 1);
        // Patroni 3.0.2 gives the top-level `namespace` (a key prefix in etcd) to its
        // kubernetes DCS too, where it replaces `kubernetes.namespace`; pgwarden keeps the
        // two apart.
        let yaml = if yaml.contains("\nkubernetes:\n") {
            yaml.replacen("\nnamespace: /service\n", "\n", 1)
        } else {
            yaml
        };
        let path = self.dir.join(format!("{}-patroni.yml", m.name));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// [`Cluster::command`], entering the network namespace `ns` first when given: `nsenter`
    /// enters it as root, takes the member user, then executes pgwarden, so the process the
    /// test holds (and kills) is pgwarden itself.
    fn command_in(&self, ns: Option<&Path>, config: &Path, log: &Path) -> Command {
        let mut cmd = self.agent_command(ns, &self.bin, log);
        cmd.arg("run")
            .arg(config)
            .env("PGWARDEN_LOG", "info,pgwarden=debug");
        self.store.member_env(&mut cmd, None);
        cmd
    }

    /// `program`, as the member user, in the network namespace `ns` when given, logging to
    /// `log`.
    fn agent_command(&self, ns: Option<&Path>, program: &Path, log: &Path) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = match ns {
            None => {
                let mut cmd = Command::new(program);
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
                cmd.arg("--");
                if self.clock_files {
                    // Preloaded into the member's processes only: in nsenter (root) it would
                    // make shared memory the member user may not open.
                    cmd.arg("/usr/bin/env")
                        .arg(format!("LD_PRELOAD={}", super::LIBFAKETIME));
                }
                cmd.arg(program);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
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

    /// Spawns member `i` with its stdout and stderr on a pipe that a thread copies to its log
    /// file, unless `stalled` is set: then nobody reads the pipe, and once its buffer (64 KiB)
    /// is full every write to it blocks, as when a container runtime stops reading a pod's
    /// output. The thread ends when the agent's end of the pipe closes.
    pub fn spawn_relayed(&mut self, i: usize, stalled: Arc<AtomicBool>) {
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let mut cmd = self.member_command(i);
        cmd.stdout(writer.try_clone().expect("dup pipe"))
            .stderr(writer);
        self.members[i].child = Some(cmd.spawn().expect("spawn the agent"));
        // The command (and with it the parent's copies of the pipe's write end) is gone here.
        drop(cmd);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if stalled.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let _ = log.write_all(&buf[..n]);
                    }
                }
            }
        });
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
