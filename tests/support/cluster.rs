//! A real cluster for tests: N `pgwarden run` processes with real PostgreSQL 15 on loopback, on
//! the store chosen when the cluster is created ([`Backend`]): a throwaway etcd, or a fresh
//! namespace of a real kube-apiserver in which each member is paired with a Pod object. Started
//! by root, members run as the `postgres` user, from a copy of the binary in the cluster's
//! directory (the build directory may not be readable by that user).
//!
//! What differs per store lives in `cluster/backend.rs` (and the `cluster/etcd_store.rs` and
//! `cluster/kube_namespace.rs` it dispatches to); the rest exists once, whatever the store: the
//! members' processes (`cluster/processes.rs`) and what a test sees of them
//! (`cluster/observe.rs`).
#![allow(dead_code)]

#[path = "cluster/backend.rs"]
mod backend;
#[path = "cluster/etcd_store.rs"]
mod etcd_store;
#[path = "etcd.rs"]
pub mod etcd_support;
#[path = "k8s.rs"]
pub mod k8s;
#[path = "cluster/kube_namespace.rs"]
pub mod kube_namespace;
#[path = "member_io.rs"]
pub mod member_io;
#[path = "netns.rs"]
pub mod netns;
#[path = "cluster/observe.rs"]
mod observe;
#[path = "poll.rs"]
pub mod poll;
#[path = "cluster/processes.rs"]
mod processes;
#[path = "toxiproxy.rs"]
pub mod toxiproxy;
#[path = "cluster/volumes.rs"]
mod volumes;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Child;

use pgwarden::dcs::Dcs;

pub use backend::{Backend, Store};
// Named only by the tests that start a cluster on Kubernetes.
#[allow(unused_imports)]
pub use backend::ControlPlane;
use etcd_support::EtcdServer;
use kube_namespace::KubeNamespace;
use netns::TestNet;

pub struct MemberProc {
    pub name: String,
    /// The address its PostgreSQL and REST API listen on: `127.0.0.1`, or its network
    /// namespace's.
    pub host: String,
    pub config: PathBuf,
    pub pg_port: u16,
    pub api_port: u16,
    /// Where it reaches the store, `host:port`, when that is not the store's own address: its
    /// link through the cluster's proxy ([`Cluster::prepare_faultable`]).
    pub store_via: Option<String>,
    pub child: Option<Child>,
}

impl MemberProc {
    /// Where its PostgreSQL listens.
    pub fn pg_addr(&self) -> (&str, u16) {
        (&self.host, self.pg_port)
    }
}

/// Debian's libfaketime, for members whose clock a test moves.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The HA agent the members run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Agent {
    Pgwarden,
    /// Debian's Patroni (`/usr/bin/patroni`), on the same configuration, for figures side by
    /// side. Its PostgreSQL is not its child: a SIGKILL leaves it running.
    Patroni,
}

#[derive(Clone, Copy)]
pub struct Timings {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub scope: String,
    pub members: Vec<MemberProc>,
    timings: Timings,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    observer: Box<dyn Dcs>,
    http: reqwest::Client,
    /// Which agent the members run.
    pub agent: Agent,
    /// Members read the wall clock through libfaketime, offset by their clock file
    /// ([`Cluster::use_clock_files`]).
    clock_files: bool,
    /// The members' data directories are tmpfs mounts ([`Cluster::use_data_volumes`]).
    data_volumes: bool,
    /// Each member's link to the store through a proxy that can slow it down, when the
    /// cluster has them ([`Cluster::prepare_faultable`]).
    pub links: Option<toxiproxy::Toxiproxy>,
    /// The members' network namespaces, when the test cuts members off the network
    /// ([`Cluster::start_partitionable`]).
    pub net: Option<TestNet>,
    /// Matched on by scenarios that check what only one store shows; tests of one backend
    /// use [`Cluster::etcd`] or [`Cluster::kubernetes`]. Declared last: the store goes after
    /// the observer watching it.
    pub store: Store,
}

/// A client's configuration for the members' PostgreSQL on `ports`, as an application with
/// libpq's read-write host list connects: whichever member accepts writes.
pub fn read_write_config(ports: &[u16]) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    for p in ports {
        cfg.host("127.0.0.1").port(*p);
    }
    cfg.user("postgres")
        .password("postgres")
        .dbname("postgres")
        .connect_timeout(std::time::Duration::from_millis(500))
        .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    cfg
}

pub use member_io::distinct_ports;

/// PostgreSQL 15 is installed; without it a test skips, except under `CI=true`, where it fails.
fn postgres_available() -> bool {
    let ok = std::path::Path::new("/usr/lib/postgresql/15/bin/postgres").is_file();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(ok || !ci, "CI=true but PostgreSQL 15 is missing");
    if !ok {
        eprintln!("SKIPPED: PostgreSQL 15 is missing");
    }
    ok
}

impl Cluster {
    /// The store and `n` running members; `None` (skip) when components are missing outside
    /// CI.
    pub async fn start(backend: Backend, scope: &str, n: usize, t: Timings) -> Option<Cluster> {
        let mut c = Cluster::prepare(backend, scope, n, t).await?;
        c.spawn_all();
        Some(c)
    }

    /// As [`Cluster::start`], but without spawning the members: the test spawns each one
    /// ([`Cluster::spawn`], [`Cluster::spawn_unread_pipe`]), or changes what they will use
    /// first (a ServiceAccount token, say).
    pub async fn prepare(backend: Backend, scope: &str, n: usize, t: Timings) -> Option<Cluster> {
        Cluster::prepare_with(backend, None, None, Agent::Pgwarden, scope, n, t).await
    }

    /// `n` running members on etcd, each in a network namespace of its own
    /// ([`netns::TestNet`]), so the test can cut any of them off the network; `None` (skip)
    /// when components are missing outside CI.
    pub async fn start_partitionable(scope: &str, n: usize, t: Timings) -> Option<Cluster> {
        if !postgres_available() {
            return None;
        }
        let net = TestNet::create()?;
        let mut c =
            Cluster::prepare_with(Backend::Etcd, Some(net), None, Agent::Pgwarden, scope, n, t)
                .await?;
        c.spawn_all();
        Some(c)
    }

    /// `n` members, not started, for a fault suite: each member in a network namespace of its
    /// own and the store in another ([`netns::TestNet::add_store_host`]; on Kubernetes a
    /// control plane of the cluster's own runs there), each member reaching the store through
    /// a proxy of its own at the test's address ([`toxiproxy::Toxiproxy`], proxy `m<i>`), so a
    /// test can cut or slow down any one link. `None` (skip) when components are missing
    /// outside CI.
    pub async fn prepare_faultable(
        backend: Backend,
        agent: Agent,
        scope: &str,
        n: usize,
        t: Timings,
    ) -> Option<Cluster> {
        if !postgres_available() {
            return None;
        }
        let mut net = TestNet::create()?;
        net.add_store_host();
        let links = toxiproxy::Toxiproxy::start().await?;
        Cluster::prepare_with(backend, Some(net), Some(links), agent, scope, n, t).await
    }

    async fn prepare_with(
        backend: Backend,
        net: Option<TestNet>,
        links: Option<toxiproxy::Toxiproxy>,
        agent: Agent,
        scope: &str,
        n: usize,
        t: Timings,
    ) -> Option<Cluster> {
        if !postgres_available() {
            return None;
        }
        assert!(
            net.is_none() || links.is_some() || matches!(backend, Backend::Etcd),
            "members in network namespaces run on etcd, unless the store has a namespace of its own"
        );
        // The backend in the name: a scenario runs on both stores in one test binary, and
        // `cargo test` runs them side by side.
        let dir = std::env::temp_dir().join(format!(
            "pgwarden-it-{}-{scope}-{}",
            backend.tag(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The store listens where the members reach it: on the test bridge when they have
        // namespaces.
        let store = match (&net, &links) {
            // The store in its own namespace, reached through the proxies at the gateway.
            (Some(net), Some(_)) => Store::start_in(backend, scope, &dir, net).await,
            _ => {
                let store_host = net.as_ref().map_or("127.0.0.1".into(), TestNet::gateway);
                Store::start(backend, scope, &dir, &store_host).await
            }
        };
        let Some(store) = store else {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        };
        let bin = dir.join("pgwarden");
        std::fs::copy(env!("CARGO_BIN_EXE_pgwarden"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let observer = store.observer(scope, &t).await;
        let mut c = Cluster {
            dir,
            scope: scope.into(),
            members: Vec::new(),
            timings: t,
            bin,
            run_as: processes::member_user(),
            observer,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            agent,
            clock_files: false,
            data_volumes: false,
            links,
            net,
            store,
        };
        let mut ports = distinct_ports(2 * n).into_iter();
        for _ in 0..n {
            let (pg, api) = (ports.next().unwrap(), ports.next().unwrap());
            c.add_member_on(pg, api, "").await;
        }
        Some(c)
    }

    /// One more member, `m<index>`, not started, whose configuration ends with `extra` (YAML
    /// sections the default configuration lacks); its index.
    pub async fn add_member(&mut self, extra: &str) -> usize {
        let ports = distinct_ports(2);
        self.add_member_on(ports[0], ports[1], extra).await
    }

    async fn add_member_on(&mut self, pg_port: u16, api_port: u16, extra: &str) -> usize {
        let i = self.members.len();
        let name = format!("m{i}");
        let host = match self.net.as_mut() {
            Some(net) => {
                let h = net.add_host();
                net.addr(h)
            }
            None => "127.0.0.1".into(),
        };
        let mdir = self.dir.join(&name);
        std::fs::create_dir_all(&mdir).unwrap();
        if let Some((u, g)) = self.run_as {
            nix::unistd::chown(&mdir, Some(u.into()), Some(g.into())).unwrap();
        }
        self.store.add_member(&name, i, &host).await;
        let store_via = match (&self.links, &self.net) {
            (Some(links), Some(net)) => {
                let via = format!("{}:{}", net.gateway(), distinct_ports(1)[0]);
                links.proxy(&name, &via, &self.store.client_addr()).await;
                Some(via)
            }
            _ => None,
        };
        let t = self.timings;
        let yaml = pgwarden::demo::member_config(&pgwarden::demo::LocalMember {
            host: &host,
            dir: &self.dir,
            scope: &self.scope,
            name: &name,
            dcs: &self.store.dcs_section(pg_port, &host, store_via.as_deref()),
            pg_port,
            api_port,
            timings: (t.ttl, t.loop_wait, t.retry_timeout),
        }) + extra;
        let config = self.dir.join(format!("{name}.yml"));
        std::fs::write(&config, yaml).unwrap();
        self.members.push(MemberProc {
            name,
            host,
            config,
            pg_port,
            api_port,
            store_via,
            child: None,
        });
        i
    }

    /// Adds `lines` (YAML, indented for the section) under `bootstrap.dcs` in every member's
    /// configuration, before the members first start: settings a fresh cluster starts with.
    pub fn add_bootstrap_dcs(&self, lines: &str) {
        for m in &self.members {
            let yaml = std::fs::read_to_string(&m.config).unwrap().replacen(
                "\n  dcs:\n",
                &format!("\n  dcs:\n{lines}"),
                1,
            );
            std::fs::write(&m.config, yaml).unwrap();
        }
    }

    /// The cluster runs on Kubernetes.
    pub fn on_kubernetes(&self) -> bool {
        matches!(self.store, Store::Kubernetes(_))
    }

    /// Members spawned from now on read the wall clock (not the monotonic one) through
    /// Debian's libfaketime, offset by the contents of [`Cluster::clock_file`] (`+0` at
    /// first; re-read every second), so a test can move one member's clock while it runs.
    /// Their PostgreSQL inherits it, as on a host whose clock is off.
    pub fn use_clock_files(&mut self) {
        assert!(self.net.is_some(), "clock files need members in namespaces");
        assert!(
            std::path::Path::new(LIBFAKETIME).is_file(),
            "{LIBFAKETIME} is missing (Debian's libfaketime; scripts/install-deps.sh installs it)"
        );
        for i in 0..self.members.len() {
            std::fs::write(self.clock_file(i), "+0\n").unwrap();
        }
        self.clock_files = true;
    }

    /// Members read their clock files ([`Cluster::use_clock_files`]).
    pub fn has_clock_files(&self) -> bool {
        self.clock_files
    }

    /// Member `i`'s clock offset, as libfaketime reads it (`+300`, `-120`: seconds).
    pub fn clock_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.clock", self.members[i].name))
    }

    /// Member `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.members[i].name).join("data")
    }

    /// The etcd of a cluster on etcd, for tests that stop it or reach it another way.
    pub fn etcd(&self) -> &EtcdServer {
        match &self.store {
            Store::Etcd(e) => e,
            Store::Kubernetes(_) => panic!("{} runs on Kubernetes, not etcd", self.scope),
        }
    }

    pub fn etcd_mut(&mut self) -> &mut EtcdServer {
        match &mut self.store {
            Store::Etcd(e) => e,
            Store::Kubernetes(_) => panic!("{} runs on Kubernetes, not etcd", self.scope),
        }
    }

    /// The namespace of a cluster on Kubernetes: its Lease, its Pods' labels, the members'
    /// credentials.
    pub fn kubernetes(&self) -> &KubeNamespace {
        match &self.store {
            Store::Kubernetes(k) => k,
            Store::Etcd(_) => panic!("{} runs on etcd, not Kubernetes", self.scope),
        }
    }

    pub fn kubernetes_mut(&mut self) -> &mut KubeNamespace {
        match &mut self.store {
            Store::Kubernetes(k) => k,
            Store::Etcd(_) => panic!("{} runs on etcd, not Kubernetes", self.scope),
        }
    }

    /// Who holds the leader lock, as the test reads it straight from the store; an error when
    /// the store does not answer.
    pub async fn store_leader(&self) -> Result<Option<String>, String> {
        self.store
            .leader(&self.scope, self.agent == Agent::Patroni)
            .await
    }

    /// Deletes the leader lock behind its holder's back, as an operator would by hand (etcd's
    /// leader key, or `kubectl delete lease`).
    pub async fn delete_leader_lock(&self) {
        self.store.delete_leader_lock(&self.scope).await;
    }

    /// As [`Cluster::delete_leader_lock`], when the lock may be missing or the store down.
    pub async fn try_delete_leader_lock(&self) -> Result<(), String> {
        self.store.try_delete_leader_lock(&self.scope).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
            // Patroni's PostgreSQL outlives its agent.
            if self.agent == Agent::Patroni {
                pgwarden::postgres::kill_data_dir_processes(&self.data_dir(i));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.unmount_data_volumes();
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
