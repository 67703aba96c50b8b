//! Three `pgwarden run` members with real PostgreSQL 15 on loopback, each paired with a Pod
//! object in a fresh namespace of a real kube-apiserver. Members run as the `postgres` user from
//! a copy of the binary, with `KUBECONFIG` pointing at a kubeconfig in the cluster directory.
#![allow(dead_code)]

#[path = "../support/member_io.rs"]
pub mod member_io;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use pgwarden::config::Kubernetes;
use pgwarden::dcs::kubernetes::{KubernetesDcs, KubernetesSettings};
use pgwarden::dcs::{ClusterView, Dcs};

use super::k8s;

pub struct Member {
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

pub struct K8sCluster {
    pub client: kube::Client,
    pub ns: String,
    pub dir: PathBuf,
    pub scope: String,
    pub kubeconfig: PathBuf,
    admin_kubeconfig: PathBuf,
    bin: PathBuf,
    pub members: Vec<Member>,
    run_as: Option<(u32, u32)>,
    observer: KubernetesDcs,
    http: reqwest::Client,
}

fn distinct_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

pub fn pg_available() -> bool {
    let ok = Path::new("/usr/lib/postgresql/15/bin/postgres").is_file();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(ok || !ci, "CI=true but PostgreSQL 15 is missing");
    if !ok {
        eprintln!("SKIPPED: PostgreSQL 15 is missing");
    }
    ok
}

impl K8sCluster {
    /// `n` Pods in namespace `ns` and `n` members (not yet started: call
    /// [`K8sCluster::spawn`]), on the control plane of `admin_kubeconfig`.
    pub async fn new(
        scope: &str,
        n: usize,
        t: &Timings,
        admin_kubeconfig: &Path,
        ns: String,
    ) -> K8sCluster {
        let client = k8s::client_from(admin_kubeconfig).await;
        let run_as = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("user postgres");
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("pgwarden-k8s-{scope}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("pgwarden");
        std::fs::copy(env!("CARGO_BIN_EXE_pgwarden"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kubeconfig = k8s::member_kubeconfig(&dir, admin_kubeconfig, None);
        let observer = KubernetesDcs::with_client(
            client.clone(),
            KubernetesSettings {
                k8s: Kubernetes {
                    namespace: ns.clone(),
                    ..Kubernetes::default()
                },
                scope: scope.into(),
                name: "test-observer".into(),
                ttl: Duration::from_secs(t.ttl),
                retry_timeout: Duration::from_secs(5),
            },
        )
        .expect("observer");
        let mut c = K8sCluster {
            client,
            ns,
            dir,
            scope: scope.into(),
            kubeconfig,
            admin_kubeconfig: admin_kubeconfig.to_owned(),
            bin,
            members: Vec::new(),
            run_as,
            observer,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let mut ports = distinct_ports(2 * n).into_iter();
        for i in 0..n {
            let (pg, api) = (ports.next().unwrap(), ports.next().unwrap());
            let name = format!("m{i}");
            let labels: BTreeMap<String, String> = [
                ("cluster-name".to_owned(), scope.to_owned()),
                ("application".to_owned(), "pgwarden-it".to_owned()),
            ]
            .into();
            k8s::create_pod(
                &c.client,
                &c.ns,
                &name,
                labels,
                &format!("10.9.0.{}", i + 1),
            )
            .await;
            c.add_member(&name, pg, api, t);
        }
        c
    }

    /// Replaces the kubeconfig members use (e.g. with a ServiceAccount token).
    pub fn use_token(&mut self, token: &str) {
        self.kubeconfig = k8s::member_kubeconfig(&self.dir, &self.admin_kubeconfig, Some(token));
    }

    fn add_member(&mut self, name: &str, pg_port: u16, api_port: u16, t: &Timings) {
        let mdir = self.dir.join(name);
        std::fs::create_dir_all(&mdir).unwrap();
        if let Some((u, g)) = self.run_as {
            nix::unistd::chown(&mdir, Some(u.into()), Some(g.into())).unwrap();
        }
        let config = self.dir.join(format!("{name}.yml"));
        std::fs::write(&config, self.member_yaml(name, pg_port, api_port, t)).unwrap();
        self.members.push(Member {
            name: name.into(),
            config,
            pg_port,
            api_port,
            child: None,
        });
    }

    fn member_yaml(&self, name: &str, pg_port: u16, api_port: u16, t: &Timings) -> String {
        let dcs = format!(
            "kubernetes:\n  namespace: {ns}\n  labels:\n    application: pgwarden-it\n  pod_ip: 127.0.0.1\n  ports:\n  - name: postgresql\n    port: {pg_port}\n",
            ns = self.ns
        );
        pgwarden::demo::member_config(&pgwarden::demo::LocalMember {
            dir: &self.dir,
            scope: &self.scope,
            name,
            dcs: &dcs,
            pg_port,
            api_port,
            timings: (t.ttl, t.loop_wait, t.retry_timeout),
        })
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    pub fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg(&self.members[i].config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("PGWARDEN_LOG", "info,pgwarden=debug");
        if let Some((u, g)) = self.run_as {
            cmd.uid(u).gid(g).env("HOME", &self.dir);
        }
        self.members[i].child = Some(cmd.spawn().expect("spawn pgwarden"));
    }

    pub fn spawn_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
    }

    /// SIGKILL the member's agent; its PostgreSQL dies with it (parent-death signal).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

    pub async fn lease(&self) -> Option<Lease> {
        let name = format!("{}-leader", self.scope);
        Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&name)
            .await
            .ok()
            .flatten()
    }

    /// `(holder, leaseTransitions)` of the Lease.
    pub async fn lease_state(&self) -> Option<(Option<String>, i32)> {
        let s = self.lease().await?.spec?;
        Some((s.holder_identity, s.lease_transitions.unwrap_or(0)))
    }

    /// Role labels of all member pods.
    pub async fn role_labels(&self) -> BTreeMap<String, Option<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let mut out = BTreeMap::new();
        for m in &self.members {
            let l = pods
                .get(&m.name)
                .await
                .ok()
                .and_then(|p| p.metadata.labels)
                .and_then(|l| l.get("role").cloned());
            out.insert(m.name.clone(), l);
        }
        out
    }

    /// Labels say `leader` is the primary and every member in `replicas` a replica.
    pub async fn labels_are(&self, leader: &str, replicas: &[&str]) -> bool {
        let l = self.role_labels().await;
        l.get(leader).cloned().flatten().as_deref() == Some("primary")
            && replicas
                .iter()
                .all(|r| l.get(*r).cloned().flatten().as_deref() == Some("replica"))
    }

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
                    "timed out after {timeout:?} waiting for {what}; view: {:?}; labels: {:?}",
                    self.view().await,
                    self.role_labels().await
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

    /// Waits for a leader whose PostgreSQL takes writes; its index.
    pub async fn writable_leader(&self, timeout: Duration) -> usize {
        let leader = self
            .wait_for("a leader", timeout, || async { self.leader().await })
            .await;
        let l = self.index(&leader);
        self.wait_for(
            &format!("writes on the leader {leader}"),
            timeout,
            || async { self.writable(l).await.then_some(()) },
        )
        .await;
        l
    }

    /// Whether member `i`'s PostgreSQL accepts a write now.
    pub async fn writable(&self, i: usize) -> bool {
        self.sql(
            i,
            "CREATE TABLE IF NOT EXISTS probe (x int); INSERT INTO probe VALUES (1)",
        )
        .await
        .is_ok()
    }
}

impl Drop for K8sCluster {
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
