//! `pgwarden demo`: etcd and three members on loopback in a temporary directory, a live member
//! table, and (optionally) a failover shown by killing the primary's agent with SIGKILL.
//!
//! Started by root, the members run as the `postgres` user (PostgreSQL refuses root); the
//! demo copies its own binary into the temporary directory so that user can run it.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::dcs::{ClusterView, Dcs};
use crate::postgres::format_lsn;

/// Options of `pgwarden demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Kill the primary's agent with SIGKILL after this many seconds of a healthy cluster, to
    /// show a failover; the killed member is restarted and rejoins.
    #[arg(long)]
    pub failover_after: Option<u64>,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Keep the temporary directory afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Leader lock ttl in seconds (loop_wait 1 s, retry_timeout 2 s under 10 s).
    #[arg(long, default_value_t = 10)]
    pub ttl: u64,
}

/// Runs the demo; the exit code says whether it ended cleanly.
pub fn main(args: DemoArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find_etcd() -> anyhow::Result<PathBuf> {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    which("etcd").context("etcd not found: install it with `apt-get install etcd-server`")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The unprivileged user members run as when the demo is started by root.
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as() -> anyhow::Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("looking up the postgres user")?
        .context("started as root, but there is no `postgres` user to run PostgreSQL as")?;
    Ok(Some(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

struct Member {
    name: String,
    config: PathBuf,
    pg_port: u16,
    child: Option<Child>,
}

struct Demo {
    dir: PathBuf,
    bin: PathBuf,
    etcd: Option<Child>,
    etcd_url: String,
    members: Vec<Member>,
    run_as: Option<RunAs>,
}

impl Demo {
    fn spawn_member(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        let mut cmd = Command::new(&self.bin);
        // Its own process group: Ctrl-C reaches only the demo, which then stops the members
        // in order (members first, etcd last), instead of everything dying at once.
        cmd.process_group(0);
        cmd.arg("run")
            .arg(&m.config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        cmd.env("PGWARDEN_LOG", "info");
        if let Some(r) = &self.run_as {
            cmd.uid(r.uid).gid(r.gid).env("HOME", &self.dir);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", m.name))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn stop_all(&mut self) {
        for m in &mut self.members {
            if let Some(c) = &m.child {
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
            }
        }
        let until = Instant::now() + Duration::from_secs(30);
        for m in &mut self.members {
            if let Some(c) = m.child.as_mut() {
                while Instant::now() < until {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            m.child = None;
        }
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

/// Where and how one member on this machine runs: the demo's and the tests' members share it.
pub struct LocalMember<'a> {
    /// The address PostgreSQL and the REST API listen on and give to peers: `127.0.0.1`, or
    /// a test's network namespace's own.
    pub host: &'a str,
    /// The directory holding every member's files.
    pub dir: &'a Path,
    /// Cluster name.
    pub scope: &'a str,
    /// Member name.
    pub name: &'a str,
    /// The DCS section of the configuration, as YAML lines (see [`etcd3_section`]).
    pub dcs: &'a str,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// The REST API's port.
    pub api_port: u16,
    /// Lock ttl, loop_wait and retry_timeout in seconds.
    pub timings: (u64, u64, u64),
}

/// The `etcd3:` section for an etcd at `host:port`.
pub fn etcd3_section(hosts: &str) -> String {
    format!("etcd3:\n  hosts: {hosts}\n")
}

/// A Patroni configuration for a member at `m.host`, with a superuser `postgres` (password
/// `postgres`), replication and rewind users, slots and pg_rewind on.
pub fn member_config(m: &LocalMember<'_>) -> String {
    let LocalMember {
        host,
        dir,
        scope,
        name,
        dcs,
        pg_port,
        api_port,
        timings,
    } = m;
    let (ttl, loop_wait, retry) = *timings;
    // Peers on loopback come from the member's own address; in a namespace, from the subnet
    // it shares with its peers.
    let peers = if *host == "127.0.0.1" {
        "127.0.0.1/32"
    } else {
        "samenet"
    };
    format!(
        r#"scope: {scope}
namespace: /service
name: {name}
restapi:
  listen: {host}:{api_port}
  connect_address: {host}:{api_port}
{dcs}bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_log_hints: "on"
  initdb:
  - encoding: UTF8
  - data-checksums
  pg_hba:
  - local all all trust
  - host replication replicator {peers} md5
  - host all all {peers} md5
postgresql:
  listen: {host}:{pg_port}
  connect_address: {host}:{pg_port}
  data_dir: {dir}/{name}/data
  pgpass: {dir}/{name}/pgpass
  authentication:
    superuser:
      username: postgres
      password: postgres
    replication:
      username: replicator
      password: rep-pass
    rewind:
      username: rewind_user
      password: rewind-pass
  parameters:
    unix_socket_directories: '{dir}/{name}'
"#,
        dir = dir.display()
    )
}

fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.members == 0 || args.members > 9 {
        bail!("--members must be between 1 and 9");
    }
    let run_as = run_as()?;
    let dir = std::env::temp_dir().join(format!("pgwarden-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    // The members must be able to run the binary even when it lives under /root.
    let bin = dir.join("pgwarden");
    std::fs::copy(std::env::current_exe()?, &bin).context("copying the pgwarden binary")?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;

    let etcd_bin = find_etcd()?;
    let (client, peer) = (free_port()?, free_port()?);
    let etcd_url = format!("127.0.0.1:{client}");
    let etcd_log = std::fs::File::create(dir.join("etcd.log"))?;
    let etcd = Command::new(etcd_bin)
        .args([
            "--name",
            "demo",
            "--data-dir",
            &dir.join("etcd").display().to_string(),
            "--listen-client-urls",
            &format!("http://{etcd_url}"),
            "--advertise-client-urls",
            &format!("http://{etcd_url}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("demo=http://127.0.0.1:{peer}"),
        ])
        .stdout(etcd_log.try_clone()?)
        .stderr(etcd_log)
        .process_group(0)
        .spawn()
        .context("starting etcd")?;

    let scope = "demo";
    let mut members = Vec::new();
    for i in 0..args.members {
        let name = format!("member{i}");
        let (pg_port, api_port) = (free_port()?, free_port()?);
        let mdir = dir.join(&name);
        std::fs::create_dir_all(&mdir)?;
        let config = dir.join(format!("{name}.yml"));
        std::fs::write(
            &config,
            member_config(&LocalMember {
                host: "127.0.0.1",
                dir: &dir,
                scope,
                name: &name,
                dcs: &etcd3_section(&etcd_url),
                pg_port,
                api_port,
                timings: (args.ttl, 1, if args.ttl < 10 { 2 } else { 3 }),
            }),
        )?;
        if let Some(r) = &run_as {
            nix::unistd::chown(&mdir, Some(r.uid.into()), Some(r.gid.into()))?;
        }
        members.push(Member {
            name,
            config,
            pg_port,
            child: None,
        });
    }
    let mut demo = Demo {
        dir: dir.clone(),
        bin,
        etcd: Some(etcd),
        etcd_url,
        members,
        run_as,
    };
    let result = drive(&mut demo, &args);
    demo.stop_all();
    if args.keep {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn drive(demo: &mut Demo, args: &DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Wait for etcd.
    let observer = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let dcs = crate::dcs::etcd::EtcdDcs::connect(crate::dcs::etcd::EtcdSettings {
                endpoints: vec![format!("http://{}", demo.etcd_url)],
                namespace: "/service".into(),
                scope: "demo".into(),
                name: "demo-observer".into(),
                ttl: Duration::from_secs(30),
                retry_timeout: Duration::from_secs(2),
                username: None,
                password: None,
            })
            .await;
            if let Ok(d) = dcs
                && d.load(true).await.is_ok()
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("etcd did not start; see {}/etcd.log", demo.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })?;
    for i in 0..demo.members.len() {
        demo.spawn_member(i)?;
    }
    let hosts: Vec<String> = demo
        .members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.pg_port))
        .collect();
    let conn = format!(
        "postgresql://postgres:postgres@{}/postgres?target_session_attrs=read-write",
        hosts.join(",")
    );

    // Ctrl-C and SIGTERM only set a flag; the loop below stops everything cleanly.
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let _ = nix::sys::signal::sigaction(sig, &action);
        }
    }
    let started = Instant::now();
    let mut healthy_since: Option<Instant> = None;
    let mut killed: Option<(usize, Instant)> = None;
    let mut failover_done = false;
    loop {
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            println!("\nstopping the demo...");
            return Ok(());
        }
        if args
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
        {
            return Ok(());
        }
        let view = rt.block_on(observer.load(true)).ok();
        print!("\x1b[2J\x1b[H");
        println!(
            "pgwarden demo: {} members, etcd at {}, files in {}",
            demo.members.len(),
            demo.etcd_url,
            demo.dir.display()
        );
        println!("connect:  psql '{conn}'\n");
        if let Some(v) = &view {
            println!("{}", render_table("demo", v));
        }
        for m in &demo.members {
            if let Some(c) = &m.child {
                println!(
                    "  {} agent pid {}  (kill -9 {} to fail it over)",
                    m.name,
                    c.id(),
                    c.id()
                );
            }
        }
        let leader = view
            .as_ref()
            .and_then(|v| v.leader.as_ref())
            .map(|l| l.name.clone());
        let all_running = view.as_ref().is_some_and(|v| {
            v.members.len() == demo.members.len()
                && v.members
                    .values()
                    .all(|m| m.state.as_deref() == Some("running"))
        });
        if leader.is_some() && all_running {
            healthy_since.get_or_insert(Instant::now());
        } else {
            healthy_since = None;
        }
        if let (Some(after), Some(since), None, false) =
            (args.failover_after, healthy_since, &killed, failover_done)
            && since.elapsed() >= Duration::from_secs(after)
            && let Some(l) = &leader
            && let Some(i) = demo.members.iter().position(|m| &m.name == l)
            && let Some(c) = demo.members[i].child.as_mut()
        {
            println!(
                "\nkilling the primary's agent {} (pid {}) with SIGKILL: its PostgreSQL dies with it",
                l,
                c.id()
            );
            let _ = c.kill();
            let _ = c.wait();
            demo.members[i].child = None;
            killed = Some((i, Instant::now()));
        }
        if let Some((i, at)) = killed
            && let Some(l) = &leader
            && *l != demo.members[i].name
        {
            println!(
                "\nfailover: {} is the new leader, {:.1} s after the kill",
                l,
                at.elapsed().as_secs_f64()
            );
            if demo.members[i].child.is_none() {
                demo.spawn_member(i)?;
                println!(
                    "restarted {}: it rejoins as a replica (pg_rewind)",
                    demo.members[i].name
                );
            }
            failover_done = true;
            killed = None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A `patronictl list`-style table of the cluster.
pub fn render_table(scope: &str, v: &ClusterView) -> String {
    let sysid = v
        .initialize
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "uninitialized".into());
    let leader = v.leader.as_ref().map(|l| l.name.as_str());
    let optime = v.status.as_ref().map(|s| s.optime);
    let mut rows = vec![[
        "Member".to_string(),
        "Host".into(),
        "Role".into(),
        "State".into(),
        "TL".into(),
        "Lag in MB".into(),
    ]];
    for (name, m) in &v.members {
        let host = m
            .conn_url
            .as_deref()
            .and_then(crate::agent::settings::conn_url_host_port);
        let host = host.map(|(h, p)| format!("{h}:{p}")).unwrap_or_default();
        let is_leader = Some(name.as_str()) == leader;
        let role = if is_leader { "Leader" } else { "Replica" };
        let lag = if is_leader {
            String::new()
        } else {
            match (optime, m.xlog_location) {
                (Some(o), Some(x)) => format!("{}", o.saturating_sub(x) / (1024 * 1024)),
                _ => "unknown".into(),
            }
        };
        let state = m
            .replication_state
            .clone()
            .filter(|_| !is_leader)
            .or(m.state.clone())
            .unwrap_or_default();
        rows.push([
            name.clone(),
            host,
            role.into(),
            state,
            m.timeline.map(|t| t.to_string()).unwrap_or_default(),
            lag,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let line = |l: char, m: char, r: char| {
        let mut s = String::from(l);
        for (i, w) in widths.iter().enumerate() {
            s.push_str(&"-".repeat(w + 2));
            s.push(if i + 1 == widths.len() { r } else { m });
        }
        s
    };
    let mut out = format!("+ Cluster: {scope} ({sysid}) +\n");
    out += &line('+', '+', '+');
    out.push('\n');
    for (i, r) in rows.iter().enumerate() {
        out.push('|');
        for (c, cell) in r.iter().enumerate() {
            out += &format!(" {:<w$} |", cell, w = widths[c]);
        }
        out.push('\n');
        if i == 0 {
            out += &line('+', '+', '+');
            out.push('\n');
        }
    }
    out += &line('+', '+', '+');
    if let Some(s) = &v.status {
        out += &format!("\nleader optime {}", format_lsn(s.optime));
    }
    out
}
