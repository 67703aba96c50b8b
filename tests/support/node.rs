//! The single-node Kubernetes of `tests/k8s/node.sh` (kubelet, containerd, kube-proxy,
//! controllers, scheduler, CoreDNS), as the pod tests see it: a client, `kubectl`, containerd's
//! socket, and one Helm release of `helm/pgwarden` per test, in a namespace of its own.
//!
//! `scripts/pods.sh` starts the node and names it in `PGWARDEN_NODE_ENV` (the `env` file `up`
//! writes); the tests never start one themselves, since a node owns host-wide networking.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ContainerStatus, PersistentVolume, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use super::helm;
use super::k8s;

pub const ENV_VAR: &str = "PGWARDEN_NODE_ENV";

/// What `tests/k8s/node.sh up` wrote in its `env` file.
pub struct Node {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub ctr: PathBuf,
    pub containerd: PathBuf,
    pub dir: PathBuf,
    /// The API server's URL (evictions go to it directly).
    pub server: String,
    pub client: kube::Client,
}

impl Node {
    /// The node `scripts/pods.sh` started; panics naming the script when there is none.
    pub async fn get() -> Node {
        let env = std::env::var_os(ENV_VAR).unwrap_or_else(|| {
            panic!("{ENV_VAR} is not set: these tests run on a node that scripts/pods.sh starts")
        });
        let text = std::fs::read_to_string(&env)
            .unwrap_or_else(|e| panic!("{ENV_VAR}={}: {e}", Path::new(&env).display()));
        let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let var =
            |k: &str| PathBuf::from(*vars.get(k).unwrap_or_else(|| panic!("no {k} in {text}")));
        let kubeconfig = var("KUBECONFIG");
        let bins = var("PGWARDEN_NODE_BINS");
        let server = kube::config::Kubeconfig::read_from(&kubeconfig)
            .ok()
            .and_then(|k| k.clusters.into_iter().next()?.cluster?.server)
            .expect("the node's kubeconfig names its API server");
        Node {
            client: k8s::client_from(&kubeconfig).await,
            kubectl: bins.join("kubectl"),
            ctr: bins.join("ctr"),
            containerd: var("PGWARDEN_NODE_CONTAINERD"),
            dir: kubeconfig.parent().unwrap().to_owned(),
            server,
            kubeconfig,
        }
    }

    /// `kubectl args...`: its output, whatever its exit status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// `kubectl args...`, which must succeed: its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asks the API server to evict a pod: its HTTP status (201 evicted, 429 refused by a
    /// PodDisruptionBudget). With curl, since kube's client retries a 429 until it passes.
    pub fn evict(&self, ns: &str, pod: &str) -> u16 {
        let body = serde_json::json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": ns},
        });
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "30",
                "--cacert",
            ])
            .arg(self.dir.join("cp/pki/ca.crt"))
            .args(["-H", "Authorization: Bearer pgwarden-admin-token"])
            .args(["-H", "Content-Type: application/json", "-X", "POST", "-d"])
            .arg(body.to_string())
            .arg(format!(
                "{}/api/v1/namespaces/{ns}/pods/{pod}/eviction",
                self.server
            ))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Kills a container's process with SIGKILL through containerd, as a crash would: the
    /// kubelet sees it exit and restarts it.
    pub fn kill_container(&self, container_id: &str) {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let out = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.containerd)
            .args(["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id])
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr tasks kill {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The StorageClass name of the node's volumes: the test makes a hostPath PersistentVolume for
/// each claim it expects (no provisioner runs here).
pub const STORAGE_CLASS: &str = "pgwarden-node-local";

/// One `helm install` of the chart, in a fresh namespace.
pub struct Release<'a> {
    pub node: &'a Node,
    pub name: String,
    pub ns: String,
    pub helm: PathBuf,
}

/// The values every release here gets: the locally built images (never pulled) and the node's
/// volumes.
pub fn base_values() -> Vec<String> {
    [
        "image.repository=pgwarden-test/pgwarden",
        "image.tag=latest",
        "image.pullPolicy=Never",
        "pgbouncer.image.repository=pgwarden-test/pgbouncer",
        "pgbouncer.image.tag=latest",
        "pgbouncer.image.pullPolicy=Never",
        "users.superuser.password=postgres",
    ]
    .iter()
    .flat_map(|v| ["--set".to_string(), v.to_string()])
    .chain([
        "--set".into(),
        format!("persistence.storageClass={STORAGE_CLASS}"),
    ])
    .collect()
}

impl<'a> Release<'a> {
    /// Installs the chart as `name` with `values` (`--set` pairs) on top of [`base_values`],
    /// after making `volumes` PersistentVolumes for its claims.
    pub async fn install(
        node: &'a Node,
        name: &str,
        values: &[String],
        volumes: usize,
    ) -> Release<'a> {
        let helm = helm::helm().expect("helm").to_owned();
        let ns = k8s::fresh_namespace(&node.client, name).await;
        let r = Release {
            node,
            name: name.to_owned(),
            ns,
            helm,
        };
        r.make_volumes(volumes).await;
        let chart = helm::chart_dir();
        let mut args: Vec<String> = vec![
            "install".into(),
            r.name.clone(),
            chart.to_string_lossy().into_owned(),
            "--namespace".into(),
            r.ns.clone(),
        ];
        args.extend(base_values());
        args.extend_from_slice(values);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helm::ok(&r.helm, Some(&node.kubeconfig), &args);
        r
    }

    /// hostPath volumes under the node's directory, owned by the image's postgres user (uid
    /// 999: fsGroup does not apply to hostPath).
    async fn make_volumes(&self, n: usize) {
        let pvs: Api<PersistentVolume> = Api::all(self.node.client.clone());
        for i in 0..n {
            let name = format!("{}-{i}", self.ns);
            let path = self.node.dir.join("volumes").join(&name);
            std::fs::create_dir_all(&path).unwrap();
            std::os::unix::fs::chown(&path, Some(999), Some(999)).unwrap();
            let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "hostPath": {"path": path, "type": "Directory"},
                }
            }))
            .unwrap();
            pvs.create(&PostParams::default(), &pv).await.unwrap();
        }
    }

    pub fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.node.client.clone(), &self.ns)
    }

    /// The StatefulSet's pods by name.
    pub async fn members(&self) -> BTreeMap<String, Pod> {
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=postgresql",
            self.name
        ));
        self.pods_api()
            .list(&lp)
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The holder of the leader Lease, if any.
    pub async fn lease_holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.node.client.clone(), &self.ns);
        leases
            .get_opt(&format!("{}-leader", self.name))
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    }

    /// Pod names by the IPs of the endpoints of Service `svc` (every EndpointSlice of it) that
    /// are ready: where the Service routes.
    pub async fn service_endpoints(&self, svc: &str) -> Vec<String> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.node.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
        let mut ips: Vec<String> = slices
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.endpoints.into_iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|e| e.addresses)
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// A member pod's IP.
    pub fn ip_of(pod: &Pod) -> Option<String> {
        pod.status.as_ref()?.pod_ip.clone()
    }

    pub fn role_of(pod: &Pod) -> Option<String> {
        pod.metadata.labels.as_ref()?.get("role").cloned()
    }

    pub fn is_ready(pod: &Pod) -> bool {
        pod.metadata.deletion_timestamp.is_none()
            && pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }

    /// The status of a pod's container named `name`.
    pub fn container<'p>(pod: &'p Pod, name: &str) -> Option<&'p ContainerStatus> {
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == name)
    }

    /// The id of a pod's container named `name` (`containerd://...`).
    pub fn container_id(pod: &Pod, name: &str) -> Option<String> {
        Self::container(pod, name)?.container_id.clone()
    }

    /// Whether that container runs now.
    pub fn running(pod: &Pod, name: &str) -> bool {
        Self::container(pod, name)
            .and_then(|c| c.state.as_ref())
            .is_some_and(|st| st.running.is_some())
    }

    pub fn restarts(pod: &Pod, name: &str) -> i32 {
        Self::container(pod, name).map_or(0, |c| c.restart_count)
    }

    /// Waits until the primary Service's endpoints are `ip` alone; when that was seen (epoch
    /// seconds).
    pub async fn wait_primary_routed_to(&self, ip: &str, timeout: Duration) -> f64 {
        let svc = format!("{}-primary", self.name);
        k8s::eventually(
            &format!("the primary Service on {ip} alone"),
            timeout,
            || async { (self.service_endpoints(&svc).await == [ip]).then(epoch) },
        )
        .await
    }

    /// Waits until `n` members are Ready, one of them labelled primary and holding the Lease,
    /// the others labelled replica, and the primary Service routes to the primary alone and
    /// the replicas Service to the others. Returns the primary's name.
    pub async fn wait_healthy(&self, n: usize, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        loop {
            let last = match self.healthy(n).await {
                Ok(primary) => return primary,
                Err(why) => why,
            };
            assert!(
                Instant::now() < until,
                "not healthy within {timeout:?}: {last}\n{}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `Ok(primary)` when the release is as [`Self::wait_healthy`] waits for; else why not.
    pub async fn healthy(&self, n: usize) -> Result<String, String> {
        let members = self.members().await;
        let ready: Vec<&Pod> = members.values().filter(|p| Self::is_ready(p)).collect();
        if ready.len() != n {
            return Err(format!("{} of {n} members Ready", ready.len()));
        }
        let primaries: Vec<&Pod> = ready
            .iter()
            .copied()
            .filter(|p| Self::role_of(p).as_deref() == Some("primary"))
            .collect();
        let [primary] = primaries[..] else {
            return Err(format!("{} pods labelled primary", primaries.len()));
        };
        let name = primary.metadata.name.clone().unwrap();
        let holder = self.lease_holder().await;
        if holder.as_deref() != Some(name.as_str()) {
            return Err(format!(
                "the Lease is held by {holder:?}, the label says {name}"
            ));
        }
        let replicas: Vec<&Pod> = ready
            .iter()
            .copied()
            .filter(|p| Self::role_of(p).as_deref() == Some("replica"))
            .collect();
        if replicas.len() != n - 1 {
            return Err(format!("{} pods labelled replica", replicas.len()));
        }
        let primary_ip = Self::ip_of(primary).unwrap_or_default();
        let routed = self
            .service_endpoints(&format!("{}-primary", self.name))
            .await;
        if routed != [primary_ip.clone()] {
            return Err(format!(
                "the primary Service routes to {routed:?}, not {primary_ip}"
            ));
        }
        let mut replica_ips: Vec<String> = replicas.iter().filter_map(|p| Self::ip_of(p)).collect();
        replica_ips.sort();
        let routed = self
            .service_endpoints(&format!("{}-replicas", self.name))
            .await;
        if routed != replica_ips {
            return Err(format!(
                "the replicas Service routes to {routed:?}, not {replica_ips:?}"
            ));
        }
        Ok(name)
    }

    /// Pods, Lease, endpoints and recent events, for a failure's message.
    pub fn describe(&self) -> String {
        let out = self.node.kubectl(&[
            "get",
            "pods,lease,endpointslices,pvc",
            "-n",
            &self.ns,
            "-o",
            "wide",
            "--show-labels",
        ]);
        let events =
            self.node
                .kubectl(&["get", "events", "-n", &self.ns, "--sort-by=.lastTimestamp"]);
        let tail: Vec<&str> = std::str::from_utf8(&events.stdout)
            .unwrap_or_default()
            .lines()
            .collect();
        format!(
            "{}{}\nevents (last 30):\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail[tail.len().saturating_sub(30)..].join("\n")
        )
    }

    /// `kubectl exec` in a member's postgres container.
    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", "-n", &self.ns, pod, "-c", "postgres", "--"];
        args.extend_from_slice(cmd);
        self.node.kubectl(&args)
    }

    /// Uninstalls the release, then deletes its namespace (the node's controllers finish it)
    /// and the volumes made for it.
    pub async fn remove(self) {
        let kc = self.node.kubeconfig.clone();
        let _ = helm::run(
            &self.helm,
            Some(&kc),
            &["uninstall", &self.name, "--namespace", &self.ns],
        );
        let _ = self
            .node
            .kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
        let pvs: Api<PersistentVolume> = Api::all(self.node.client.clone());
        let lp = ListParams::default();
        for pv in pvs.list(&lp).await.map(|l| l.items).unwrap_or_default() {
            let name = pv.metadata.name.unwrap_or_default();
            if name.starts_with(&format!("{}-", self.ns)) {
                let _ = pvs.delete(&name, &DeleteParams::default()).await;
            }
        }
    }
}

/// A pod that writes a row every 50 ms through `host:port` (a Service's DNS name) with psql,
/// and logs each attempt as `<start> <end> ok <i> <server address>` or `<start> <end> err <i>
/// <why>` (epoch seconds): the acknowledged writes and the gaps between them.
pub async fn start_writer(r: &Release<'_>, pod: &str, host: &str, port: u16) {
    let script = format!(
        r#"export PGPASSWORD=postgres PGCONNECT_TIMEOUT=2
until psql -XAtq -h {host} -p {port} -U postgres -d postgres -c 'CREATE TABLE IF NOT EXISTS writes (i bigint, at timestamptz DEFAULT now())' >/dev/null 2>&1; do sleep 0.2; done
i=0
while true; do
  i=$((i+1))
  t0=$(date +%s.%N)
  if out=$(timeout 1.5 psql -XAtq -h {host} -p {port} -U postgres -d postgres -c "INSERT INTO writes (i) VALUES ($i) RETURNING inet_server_addr()" 2>&1); then
    echo "$t0 $(date +%s.%N) ok $i $out"
  else
    echo "$t0 $(date +%s.%N) err $i $(echo "$out" | tr '\n' ' ' | cut -c1-120)"
  fi
  sleep 0.05
done"#
    );
    let spec: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "writer",
                "image": "pgwarden-test/pgwarden:latest",
                "imagePullPolicy": "Never",
                "command": ["bash", "-c", script],
            }]
        }
    }))
    .unwrap();
    r.pods_api()
        .create(&PostParams::default(), &spec)
        .await
        .unwrap();
}

/// One write attempt from a writer's log.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub start: f64,
    pub end: f64,
    pub ok: bool,
    /// The server's address (`inet_server_addr()`) of a write, or why an attempt failed.
    pub server: String,
}

/// The writer's attempts so far.
pub async fn attempts(r: &Release<'_>, pod: &str) -> Vec<Attempt> {
    let log = r
        .pods_api()
        .logs(pod, &Default::default())
        .await
        .unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let start = f.next()?.parse().ok()?;
            let end = f.next()?.parse().ok()?;
            let ok = f.next()? == "ok";
            let _i = f.next()?;
            Some(Attempt {
                start,
                end,
                ok,
                server: f.collect::<Vec<_>>().join(" "),
            })
        })
        .collect()
}

/// Seconds since the epoch, as the writer's log has them.
pub fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until the writer has acknowledged a write that started after `after` (epoch
/// seconds), optionally on `server`; returns that attempt.
pub async fn acked_after(
    r: &Release<'_>,
    pod: &str,
    after: f64,
    server: Option<&str>,
    timeout: Duration,
) -> Attempt {
    k8s::eventually(
        &format!("a write acknowledged after {after} (on {server:?})"),
        timeout,
        || async {
            attempts(r, pod)
                .await
                .into_iter()
                .find(|a| a.ok && a.start >= after && server.is_none_or(|s| a.server == s))
        },
    )
    .await
}

/// How often each reason of failure occurred in `[from, to]`, most frequent first.
pub fn failures(attempts: &[Attempt], from: f64, to: f64) -> Vec<(usize, String)> {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for a in attempts
        .iter()
        .filter(|a| !a.ok && a.start >= from && a.start <= to)
    {
        *by.entry(a.server.chars().take(90).collect()).or_default() += 1;
    }
    let mut v: Vec<(usize, String)> = by.into_iter().map(|(k, n)| (n, k)).collect();
    v.sort_by(|a, b| b.cmp(a));
    v
}

/// The longest time between two consecutive acknowledgements in `[from, to]` (epoch seconds),
/// and how many attempts in it failed.
pub fn write_gap(attempts: &[Attempt], from: f64, to: f64) -> (f64, usize) {
    let mut last_ack = from;
    let mut gap: f64 = 0.0;
    let mut failed = 0;
    for a in attempts.iter().filter(|a| a.start >= from && a.start <= to) {
        if a.ok {
            gap = gap.max(a.end - last_ack);
            last_ack = a.end;
        } else {
            failed += 1;
        }
    }
    (gap.max(to - last_ack), failed)
}
