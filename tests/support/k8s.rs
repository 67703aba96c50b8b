//! A real Kubernetes control plane for tests.
//!
//! `PGWARDEN_TEST_KUBECONFIG` names the admin kubeconfig of a running control plane (CI starts
//! one per run with `tests/k8s/cluster.sh up`). Without it, the first test starts one through
//! the same script in a shared temporary directory and later tests reuse it. Tests never skip:
//! a control plane that cannot be had fails them (one using [`try_kubeconfig`] may skip
//! outside CI instead).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub const KUBECONFIG_VAR: &str = "PGWARDEN_TEST_KUBECONFIG";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/cluster.sh")
}

/// The admin kubeconfig of the control plane the tests use.
pub fn kubeconfig() -> PathBuf {
    try_kubeconfig().unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`kubeconfig`], but a control plane the script cannot start is an `Err` (for tests
/// that skip outside CI); a `PGWARDEN_TEST_KUBECONFIG` naming no file still panics.
pub fn try_kubeconfig() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(KUBECONFIG_VAR) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{KUBECONFIG_VAR}={} does not exist",
            p.display()
        );
        return Ok(p);
    }
    let dir = std::env::temp_dir().join("pgwarden-k8s-tests");
    std::fs::create_dir_all(&dir).expect("control plane dir");
    // flock: several test binaries may start at once; `up` is idempotent. -o: the daemons
    // `up` starts must not inherit (and so hold forever) the lock.
    let out = Command::new("flock")
        .arg("-o")
        .arg(dir.with_extension("lock"))
        .arg(script())
        .arg("up")
        .arg(&dir)
        .output()
        .map_err(|e| format!("run tests/k8s/cluster.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no Kubernetes control plane: set {KUBECONFIG_VAR} or make `tests/k8s/cluster.sh up` work: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dir.join("kubeconfig"))
}

/// The directory of a control plane started by the script (pid files, audit log).
pub fn control_plane_dir() -> PathBuf {
    kubeconfig()
        .parent()
        .expect("kubeconfig has a directory")
        .to_owned()
}

pub fn script_path() -> PathBuf {
    script()
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(path).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig usable");
    kube::Client::try_from(cfg).expect("client")
}

pub async fn admin() -> kube::Client {
    client_from(&kubeconfig()).await
}

/// A namespace of its own for one test (never deleted: no controller would finish it).
pub async fn fresh_namespace(client: &kube::Client, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000
    );
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// A Pod object standing for a member (nothing runs it), with `status.podIP` set.
pub async fn create_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    ip: &str,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "postgres".into(),
                image: Some("postgres:15".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let status =
        serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("set pod status");
}

/// Writes a kubeconfig for members into `dir` (readable by the member user): the control
/// plane's server and CA (copied), and `token` (default: the admin's).
pub fn member_kubeconfig(dir: &Path, src: &Path, token: Option<&str>) -> PathBuf {
    let kc = Kubeconfig::read_from(src).expect("kubeconfig parses");
    let cluster = kc.clusters[0].cluster.as_ref().expect("cluster");
    let server = cluster.server.clone().expect("server");
    let ca = cluster.certificate_authority.clone().expect("CA path");
    let admin_token = std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:").map(|t| t.trim().to_owned()))
        .expect("admin token");
    let token = token.map(str::to_owned).unwrap_or(admin_token);
    let ca_copy = dir.join("k8s-ca.crt");
    std::fs::copy(&ca, &ca_copy).expect("copy CA");
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = dir.join(format!("kubeconfig-{n}"));
    std::fs::write(
        &out,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context: {{cluster: t, user: u}}\ncurrent-context: t\n",
            ca_copy.display()
        ),
    )
    .unwrap();
    out
}

/// Polls `check` until it returns `Some`, or panics after `timeout` (the includer declares
/// `poll`, tests/support/poll.rs, beside this module).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    super::poll::poll_until(timeout, Duration::from_millis(100), check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// A control plane of the test's own (for tests that stop the API server). Stopped on drop.
pub struct OwnControlPlane {
    pub dir: PathBuf,
    /// The network namespace it runs in, its address there and the extra addresses its
    /// certificate names (`None`: the test's own namespace, on loopback).
    netns: Option<(PathBuf, String, String)>,
}

impl OwnControlPlane {
    pub fn start(tag: &str) -> OwnControlPlane {
        OwnControlPlane::start_on(tag, None)
    }

    /// A control plane running in the network namespace `netns`, its API server at `addr`,
    /// with a certificate valid for `sans` too (the addresses of proxies in front of it).
    pub fn start_in(tag: &str, netns: &Path, addr: &str, sans: &[String]) -> OwnControlPlane {
        OwnControlPlane::start_on(tag, Some((netns.to_owned(), addr.into(), sans.join(","))))
    }

    fn start_on(tag: &str, netns: Option<(PathBuf, String, String)>) -> OwnControlPlane {
        let dir =
            std::env::temp_dir().join(format!("pgwarden-k8s-own-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cp = OwnControlPlane { dir, netns };
        let out = cp.script_command("up").output().expect("run cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cp
    }

    /// `cluster.sh cmd DIR`, in the control plane's namespace when it has one.
    fn script_command(&self, cmd: &str) -> Command {
        let mut c = match &self.netns {
            None => Command::new(script()),
            Some((ns, addr, sans)) => {
                let mut c = Command::new("/usr/bin/nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(script())
                    .env("K8S_ADDR", addr)
                    .env("K8S_SANS", sans);
                c
            }
        };
        c.arg(cmd).arg(&self.dir);
        c
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn run(&self, cmd: &str) {
        let st = self.script_command(cmd).status().expect("run cluster.sh");
        assert!(st.success(), "cluster.sh {cmd} failed");
    }

    /// SIGSTOP the API server: requests hang, as in a real outage.
    pub fn pause(&self) {
        self.run("pause");
    }

    pub fn resume(&self) {
        self.run("resume");
    }

    /// SIGKILL the API server (its etcd keeps the data) until [`OwnControlPlane::start`].
    pub fn kill(&self) {
        self.run("kill");
    }

    /// The API server started again after [`OwnControlPlane::kill`], once it is ready.
    pub fn restart(&self) {
        self.run("start");
    }

    /// The API server's address, `host:port`.
    pub fn api_addr(&self) -> String {
        let port = std::fs::read_to_string(self.dir.join("apiserver.port")).expect("port file");
        let host = self.netns.as_ref().map_or("127.0.0.1", |n| n.1.as_str());
        format!("{host}:{}", port.trim())
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        // By the pids it recorded: from any namespace (the control plane's may be gone).
        let _ = Command::new(script()).arg("down").arg(&self.dir).status();
        // Its etcd data and logs (some 60 MB) are kept only when a test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
