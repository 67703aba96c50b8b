//! A real cluster for tests: one etcd and N `pgwarden run` processes with real PostgreSQL 15 on
//! loopback. Started by root, members run as the `postgres` user, from a copy of the binary in
//! the cluster's directory (the build directory may not be readable by that user).
#![allow(dead_code)]

#[path = "member_io.rs"]
pub mod member_io;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden::dcs::etcd::{EtcdDcs, EtcdSettings};
use pgwarden::dcs::{ClusterView, Dcs};

use super::etcd_support::EtcdServer;

pub struct MemberProc {
    pub name: String,
    pub config: PathBuf,
    pub pg_port: u16,
    pub api_port: u16,
    pub child: Option<Child>,
}

pub struct Timings {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

pub struct Cluster {
    pub etcd: EtcdServer,
    pub dir: PathBuf,
    pub scope: String,
    bin: PathBuf,
    pub members: Vec<MemberProc>,
    run_as: Option<(u32, u32)>,
    observer: EtcdDcs,
    http: reqwest::Client,
}

/// `n` different free loopback ports: all listeners are held until every port is chosen, so
/// no two members get the same one.
pub fn distinct_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn pg_bin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

impl Cluster {
    /// Starts etcd and `n` members; `None` (skip) when components are missing outside CI.
    pub async fn start(scope: &str, n: usize, t: Timings) -> Option<Cluster> {
        let mut c = Cluster::prepare(scope, n, t).await?;
        for i in 0..n {
            c.spawn(i);
        }
        Some(c)
    }

    /// As [`Cluster::start`], but without spawning the members: the test spawns each one
    /// ([`Cluster::spawn`], [`Cluster::spawn_unread_pipe`]).
    pub async fn prepare(scope: &str, n: usize, t: Timings) -> Option<Cluster> {
        if !pg_bin_dir().join("postgres").is_file() {
            assert!(!in_ci(), "CI=true but PostgreSQL 15 is missing");
            eprintln!("SKIPPED: PostgreSQL 15 is missing");
            return None;
        }
        let etcd = EtcdServer::start_or_skip(scope).await?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("user postgres");
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("pgwarden-it-{scope}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("pgwarden");
        std::fs::copy(env!("CARGO_BIN_EXE_pgwarden"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let observer = EtcdDcs::connect(EtcdSettings {
            endpoints: vec![etcd.endpoint()],
            namespace: "/service".into(),
            scope: scope.into(),
            name: "test-observer".into(),
            ttl: Duration::from_secs(30),
            retry_timeout: Duration::from_secs(3),
            username: None,
            password: None,
        })
        .await
        .expect("observer connects");
        let mut c = Cluster {
            etcd,
            dir,
            scope: scope.into(),
            bin,
            members: Vec::new(),
            run_as,
            observer,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let mut ports = distinct_ports(2 * n).into_iter();
        for i in 0..n {
            let (pg, api) = (ports.next().unwrap(), ports.next().unwrap());
            c.add_member(&format!("m{i}"), pg, api, &t);
        }
        Some(c)
    }

    fn add_member(&mut self, name: &str, pg_port: u16, api_port: u16, t: &Timings) {
        let mdir = self.dir.join(name);
        std::fs::create_dir_all(&mdir).unwrap();
        if let Some((u, g)) = self.run_as {
            nix::unistd::chown(&mdir, Some(u.into()), Some(g.into())).unwrap();
        }
        let config = self.dir.join(format!("{name}.yml"));
        std::fs::write(&config, self.member_yaml(name, pg_port, api_port, t)).unwrap();
        self.members.push(MemberProc {
            name: name.into(),
            config,
            pg_port,
            api_port,
            child: None,
        });
    }

    pub fn member_yaml(&self, name: &str, pg_port: u16, api_port: u16, t: &Timings) -> String {
        let etcd = self
            .etcd
            .endpoint()
            .trim_start_matches("http://")
            .to_owned();
        pgwarden::demo::member_config(&pgwarden::demo::LocalMember {
            dir: &self.dir,
            scope: &self.scope,
            name,
            dcs: &pgwarden::demo::etcd3_section(&etcd),
            pg_port,
            api_port,
            timings: (t.ttl, t.loop_wait, t.retry_timeout),
        })
    }

    /// A `pgwarden run` command for a config file, as the member user.
    pub fn command(&self, config: &Path, log: &Path) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("PGWARDEN_LOG", "info,pgwarden=debug");
        if let Some((u, g)) = self.run_as {
            cmd.uid(u).gid(g).env("HOME", &self.dir);
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
        let cmd = self.command(&self.members[i].config.clone(), &self.log_path(i));
        let mut cmd = cmd;
        self.members[i].child = Some(cmd.spawn().expect("spawn pgwarden"));
    }

    /// Spawns member `i` with its stdout and stderr on one pipe that nobody reads, and
    /// `PGWARDEN_LOG=log_filter`: once the pipe's buffer (64 KiB) is full, every write to it
    /// blocks. Hold the returned reader as long as the member runs (with the reader gone,
    /// writes would fail instead of block); the member's log file stays empty.
    pub fn spawn_unread_pipe(&mut self, i: usize, log_filter: &str) -> std::io::PipeReader {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let mut cmd = self.command(&self.members[i].config.clone(), &self.log_path(i));
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

    pub fn index(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == name)
            .expect("known member")
    }

    pub async fn view(&self) -> Option<ClusterView> {
        self.observer.load(true).await.ok()
    }

    pub async fn leader(&self) -> Option<String> {
        self.view().await.and_then(|v| v.leader.map(|l| l.name))
    }

    /// Polls `check` until it returns `Some`, or fails the test with the members' logs.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let until = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if Instant::now() > until {
                self.dump_logs();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; view: {:?}",
                    self.view().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn dump_logs(&self) {
        for (i, m) in self.members.iter().enumerate() {
            member_io::dump_log(&m.name, &self.log_path(i));
        }
    }

    pub async fn sql(&self, i: usize, sql: &str) -> Result<Vec<String>, String> {
        member_io::sql(self.members[i].pg_port, sql).await
    }

    pub async fn api(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        member_io::api(&self.http, self.members[i].api_port, method, path, body).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
        std::thread::sleep(Duration::from_millis(300));
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
