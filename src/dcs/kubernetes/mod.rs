//! The Kubernetes backend: Patroni's ConfigMap layout (patroni-compat §3.3), with the leader
//! lock in a `coordination.k8s.io/v1` Lease instead of an annotated ConfigMap.
//!
//! - The lock: Lease `<scope>-leader` ([`lease`]), taken and renewed by update with the observed
//!   `resourceVersion` (409 = someone else won), expiry judged on this process's monotonic clock.
//!   The leader's optime/slots travel as annotations on it.
//! - `<scope>-config`, `<scope>-failover`, `<scope>-sync`: ConfigMaps with annotations
//!   ([`configmaps`]).
//! - Members: Pods with the `status` annotation and the role label ([`pods`], [`labels`]).
//!
//! Reads come from a watch-fed cache ([`cache`]); every call is bounded by `retry_timeout`.

mod auth;
mod cache;
mod configmaps;
mod endpoints;
mod errors;
mod labels;
mod lease;
mod pods;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::cache::{Selector, Shared, Store};
use self::configmaps::Names;
use self::errors::{bounded, classify, code};
use crate::config::Kubernetes;
use crate::dcs::model::history_to_json;
use crate::dcs::{
    ClusterView, Dcs, DcsError, Failover, HistoryLine, Member, Status, SyncState, Version,
};

/// Which cluster to serve, and how.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// The `kubernetes:` section.
    pub k8s: Kubernetes,
    /// The cluster's name.
    pub scope: String,
    /// This member's name, which is also its Pod's name.
    pub name: String,
    /// `leaseDurationSeconds` of the lock this member takes.
    pub ttl: Duration,
    /// Bound on every API call.
    pub retry_timeout: Duration,
}

/// What this process wrote last.
#[derive(Debug, Default)]
struct Mine {
    /// The Lease as the API server returned it after our last accepted write.
    lease: Option<Lease>,
    /// Our Pod's member annotation and role label.
    pod: Option<pods::Written>,
}

/// The Kubernetes [`Dcs`].
pub struct KubernetesDcs {
    k8s: Kubernetes,
    scope: String,
    name: String,
    lease_name: String,
    names: Names,
    retry_timeout: Duration,
    ttl: Mutex<Duration>,
    leases: Api<Lease>,
    configmaps: Api<ConfigMap>,
    pods: Api<Pod>,
    mine: tokio::sync::Mutex<Mine>,
    shared: Arc<Shared>,
    /// What this member wants the primary EndpointSlice to say, when it keeps one.
    primary_slice: Option<watch::Sender<endpoints::Wish>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubernetesDcs {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubernetesDcs {
    /// Replaces the Lease this member holds with `change(lease)`, as a compare-and-set on the
    /// `resourceVersion` it last wrote or saw; `Ok(false)` when the Lease does not name it. One
    /// retry: a 409 with the Lease still ours means only our cached version was old. The answer
    /// is the base of the next write.
    async fn rewrite_held_lease(&self, change: impl Fn(&Lease) -> Lease) -> Result<bool, DcsError> {
        let mut mine = self.mine.lock().await;
        let mut base = self.base_lease(&mine);
        for _ in 0..2 {
            let Some(cur) = base.take() else {
                return Ok(false);
            };
            if lease::holder_of(&cur) != Some(self.name.as_str()) {
                mine.lease = None;
                return Ok(false);
            }
            if let Some(l) = self.replace_lease(&change(&cur)).await? {
                mine.lease = Some(l);
                return Ok(true);
            }
            base = self.read_lease().await?;
        }
        Ok(false)
    }
    /// Builds the client (in-cluster or `KUBECONFIG`) and starts the watches.
    pub async fn connect(s: KubernetesSettings) -> Result<KubernetesDcs, DcsError> {
        let client = auth::client().await?;
        KubernetesDcs::with_client(client, s)
    }

    /// Like [`KubernetesDcs::connect`] with a given client (tests, tools).
    pub fn with_client(
        client: kube::Client,
        s: KubernetesSettings,
    ) -> Result<KubernetesDcs, DcsError> {
        if s.k8s.use_endpoints {
            return Err(DcsError::Failed(
                "kubernetes.use_endpoints is not supported: pgwarden keeps the lock in a Lease and the rest in ConfigMaps".into(),
            ));
        }
        if s.scope.is_empty() || s.name.is_empty() {
            return Err(DcsError::Failed(
                "kubernetes: scope and name must not be empty".into(),
            ));
        }
        let retry_timeout = if s.retry_timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            s.retry_timeout
        };
        let ns = s.k8s.namespace.as_str();
        let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let lease_name = s
            .k8s
            .lease_name
            .clone()
            .unwrap_or_else(|| format!("{}-leader", s.scope));
        // Checked before any task starts: a refused configuration leaves nothing running.
        let slice_spec = if s.k8s.primary_endpoint_slice {
            Some(endpoints::SliceSpec::of(&s.k8s, &s.scope)?)
        } else {
            None
        };
        let shared = Arc::new(Shared::new(s.ttl, &s.name));
        let sel = labels::selector(&s.k8s, &s.scope);
        let mut tasks = vec![
            tokio::spawn(cache::run(
                leases.clone(),
                Selector::Name(lease_name.clone()),
                retry_timeout,
                shared.clone(),
            )),
            tokio::spawn(cache::run(
                configmaps.clone(),
                Selector::Labels(sel.clone()),
                retry_timeout,
                shared.clone(),
            )),
            tokio::spawn(cache::run(
                pods.clone(),
                Selector::Labels(sel),
                retry_timeout,
                shared.clone(),
            )),
            tokio::spawn(expiry_waker(shared.clone())),
        ];
        let primary_slice = if let Some(spec) = slice_spec {
            let (tx, rx) = watch::channel(endpoints::Wish::Unknown);
            tasks.push(tokio::spawn(endpoints::keep(
                Api::namespaced(client, ns),
                spec,
                retry_timeout,
                rx,
            )));
            Some(tx)
        } else {
            None
        };
        Ok(KubernetesDcs {
            names: Names::new(&s.scope),
            k8s: s.k8s,
            scope: s.scope,
            name: s.name,
            lease_name,
            retry_timeout,
            ttl: Mutex::new(s.ttl),
            leases,
            configmaps,
            pods,
            mine: tokio::sync::Mutex::new(Mine::default()),
            shared,
            primary_slice,
            tasks,
        })
    }

    /// Whether all watches are established, so that `load(false)` answers from the cache.
    pub fn watching(&self) -> bool {
        self.shared.healthy()
    }

    /// The Lease's name.
    pub fn lease_name(&self) -> &str {
        &self.lease_name
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view_of(&self, st: &Store) -> ClusterView {
        let mut raw: Vec<(String, String, String)> = Vec::new();
        let now = Instant::now();
        let vanished = {
            let observer = self.shared.observer();
            if let Some((holder, v)) = observer.holder(now) {
                raw.push(("leader".into(), holder.to_owned(), v.0));
            }
            observer.vanished(now).map(str::to_owned)
        };
        if let Some(l) = &st.lease {
            let rv = l.metadata.resource_version.clone().unwrap_or_default();
            if let Some(s) = lease::status_raw(l) {
                raw.push(("status".into(), s, rv.clone()));
            }
            if let Some(f) = lease::failsafe_raw(l) {
                raw.push(("failsafe".into(), f, rv));
            }
        }
        raw.extend(configmaps::raw_entries(&self.names, &st.configmaps));
        raw.extend(pods::raw_entries(&st.pods));
        let mut view = ClusterView::from_raw(
            raw.iter()
                .map(|(k, v, rv)| (k.as_str(), v.as_str(), Version(rv.clone()))),
        );
        view.vanished_leader = vanished;
        view
    }

    /// A fresh read of everything (start-up, REST): one GET and two label-selected LISTs.
    async fn read(&self) -> Result<ClusterView, DcsError> {
        let sel = labels::selector(&self.k8s, &self.scope);
        let lp = ListParams::default().labels(&sel);
        let lease = self
            .leases
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| classify("read lease", e))?;
        let cms = self
            .configmaps
            .list(&lp)
            .await
            .map_err(|e| classify("list configmaps", e))?;
        let pods = self
            .pods
            .list(&lp)
            .await
            .map_err(|e| classify("list pods", e))?;
        self.shared.observe(lease.as_ref());
        let st = Store {
            lease,
            configmaps: cms
                .items
                .into_iter()
                .map(|c| (kube::ResourceExt::name_any(&c), c))
                .collect(),
            pods: pods
                .items
                .into_iter()
                .map(|p| (kube::ResourceExt::name_any(&p), p))
                .collect(),
        };
        Ok(self.view_of(&st))
    }

    async fn run<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, DcsError>>,
    ) -> Result<T, DcsError> {
        let r = bounded(self.retry_timeout, what, fut).await;
        if let Err(DcsError::Unreachable(e)) = &r {
            tracing::warn!(error = %e, "kubernetes API unreachable");
        }
        r
    }

    /// Reads the Lease from the API server (not the cache) and lets the expiry clock see it.
    async fn read_lease(&self) -> Result<Option<Lease>, DcsError> {
        let lease = self
            .leases
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| classify("read lease", e))?;
        self.shared.observe(lease.as_ref());
        Ok(lease)
    }

    /// Writes `lease` (a compare-and-set on its resourceVersion). `Ok(None)`: 409, someone else
    /// wrote first.
    async fn replace_lease(&self, lease: &Lease) -> Result<Option<Lease>, DcsError> {
        match self
            .leases
            .replace(&self.lease_name, &PostParams::default(), lease)
            .await
        {
            Ok(l) => {
                self.shared.wrote(l.metadata.resource_version.clone());
                self.shared.observe(Some(&l));
                Ok(Some(l))
            }
            Err(e) if code(&e) == Some(409) => Ok(None),
            // Deleted behind our back: not ours any more (the caller reads it afresh and
            // finds it gone). Counting this as a store error would keep the old deadline.
            Err(e) if code(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify("write lease", e)),
        }
    }

    /// Merge-patches annotations of one ConfigMap. With `rv`: only if it is still that version
    /// (`Ok(false)` on 409 or when the object is gone). Without: creates the object if missing.
    async fn patch_cm(
        &self,
        name: &str,
        ann: &Map<String, Value>,
        rv: Option<&str>,
    ) -> Result<bool, DcsError> {
        let what = format!("write configmap {name}");
        let body = configmaps::annotation_patch(ann, rv);
        for _ in 0..2 {
            match self
                .configmaps
                .patch(name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(cm) => {
                    self.shared.wrote_configmap(cm);
                    return Ok(true);
                }
                Err(e) if rv.is_some() && matches!(code(&e), Some(409) | Some(404)) => {
                    return Ok(false);
                }
                Err(e) if code(&e) == Some(404) => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(name.to_owned()),
                            labels: Some(labels::object_labels(&self.k8s, &self.scope)),
                            annotations: Some(configmaps::present(ann)),
                            ..ObjectMeta::default()
                        },
                        ..ConfigMap::default()
                    };
                    match self.configmaps.create(&PostParams::default(), &cm).await {
                        Ok(cm) => {
                            self.shared.wrote_configmap(cm);
                            return Ok(true);
                        }
                        // Created by someone else in between: patch it.
                        Err(e) if code(&e) == Some(409) => continue,
                        Err(e) => return Err(classify(&what, e)),
                    }
                }
                Err(e) => return Err(classify(&what, e)),
            }
        }
        Err(DcsError::Failed(format!(
            "{what}: created and deleted concurrently"
        )))
    }

    /// A dead primary cannot take its own role label off, so the new leader does: a Service
    /// selecting on the label then stops routing to it. Best effort; one write per failover.
    fn unlabel_former_leaders(&self) {
        let stale: Vec<String> = {
            let st = self.shared.lock();
            st.pods
                .iter()
                .filter(|(name, p)| {
                    **name != self.name
                        && p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(&self.k8s.role_label))
                            == Some(&self.k8s.leader_label_value)
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        if stale.is_empty() {
            return;
        }
        // In the background: the new leader's promotion must not wait for this.
        let pods = self.pods.clone();
        let label = self.k8s.role_label.clone();
        tokio::spawn(async move {
            for name in stale {
                let body = serde_json::json!({"metadata": {"labels": {label.clone(): null}}});
                if let Err(e) = pods
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                {
                    tracing::warn!(pod = %name, error = %e, "could not remove the former leader's role label");
                }
            }
        });
    }

    /// The Lease to build our next write on: our own last accepted write if the cache has
    /// nothing newer that we know of, else the cached one.
    fn base_lease(&self, mine: &Mine) -> Option<Lease> {
        let cached = self.shared.lock().lease.clone();
        match (&mine.lease, cached) {
            (Some(m), Some(c))
                if c.metadata.resource_version != m.metadata.resource_version
                    && lease::holder_of(&c) != Some(self.name.as_str()) =>
            {
                Some(c)
            }
            (Some(m), _) => Some(m.clone()),
            (None, c) => c,
        }
    }
}

/// Bumps the change counter when the observed holder's time runs out, so that the HA loop
/// wakes exactly then instead of at its next tick.
async fn expiry_waker(shared: Arc<Shared>) {
    loop {
        let at = shared.observer().expires_at();
        match at {
            Some(at) if at > Instant::now() => {
                tokio::select! {
                    _ = shared.lease_changed.notified() => continue,
                    _ = tokio::time::sleep_until(at.into()) => shared.bump(),
                }
            }
            _ => {}
        }
        shared.lease_changed.notified().await;
    }
}

#[async_trait]
impl Dcs for KubernetesDcs {
    async fn load(&self, fresh: bool) -> Result<ClusterView, DcsError> {
        if !fresh && self.shared.healthy() {
            let st = self.shared.lock();
            return Ok(self.view_of(&st));
        }
        self.run("read cluster", self.read()).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }

    fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner()) = ttl;
        self.shared.set_ttl(ttl);
    }

    async fn touch_member(&self, member: &Member) -> Result<(), DcsError> {
        let role = labels::role_value(member, &self.k8s);
        let mut mine = self.mine.lock().await;
        if let Some(slice) = &self.primary_slice {
            // Only the lock's holder (by its last accepted write) routes the primary Service
            // to itself; every touch says what it wants, the task writes only changes.
            let holder = mine.lease.as_ref().and_then(lease::holder_of) == Some(self.name.as_str());
            let wish = match endpoints::wish_of(member) {
                endpoints::Wish::Here if holder => endpoints::Wish::Here,
                _ => endpoints::Wish::NotHere,
            };
            slice.send_if_modified(|w| std::mem::replace(w, wish) != wish);
        }
        let stale = match (&mine.pod, self.shared.healthy()) {
            (Some(w), true) => !self
                .shared
                .lock()
                .pods
                .get(&self.name)
                .is_some_and(|p| pods::pod_matches(p, w, &self.k8s.role_label)),
            _ => false,
        };
        if !stale
            && !pods::needs_write(
                mine.pod.as_ref(),
                member,
                role.as_deref(),
                self.k8s.position_threshold,
            )
        {
            return Ok(());
        }
        let json = member.to_json();
        let body = pods::member_patch(Some(&json), &self.k8s.role_label, role.as_deref());
        let pod = self
            .run("touch member", async {
                self.pods
                    .patch(&self.name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map_err(|e| classify("patch pod", e))
            })
            .await?;
        self.shared.wrote(pod.metadata.resource_version);
        mine.pod = Some(pods::Written {
            member: member.clone(),
            json,
            role,
        });
        Ok(())
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        self.run("acquire leader lock", async {
            let mut mine = self.mine.lock().await;
            // As client-go: read the Lease itself; a version this process has not seen yet
            // restarts its expiry clock, so a stale cache can never make a live holder look gone.
            let current = self.read_lease().await?;
            let now = Timestamp::now();
            let ttl = self.ttl();
            let Some(current) = current else {
                let fresh = lease::fresh(
                    &self.lease_name,
                    labels::object_labels(&self.k8s, &self.scope),
                    &self.name,
                    ttl,
                    now,
                );
                return match self.leases.create(&PostParams::default(), &fresh).await {
                    Ok(l) => {
                        self.shared.wrote(l.metadata.resource_version.clone());
                        self.shared.observe(Some(&l));
                        mine.lease = Some(l);
                        Ok(true)
                    }
                    Err(e) if code(&e) == Some(409) => Ok(false),
                    Err(e) => Err(classify("create lease", e)),
                };
            };
            let mut current = current;
            for _ in 0..2 {
                let live = self
                    .shared
                    .observer()
                    .holder(Instant::now())
                    .map(|(holder, _)| holder == self.name);
                if live == Some(false) {
                    return Ok(false);
                }
                // Our own live holding (an acquisition whose answer was lost, or the holder
                // asking again) is renewed and stays the same instance; one that lapsed starts
                // a new one.
                let next = lease::taken(&current, &self.name, ttl, now, live == Some(true));
                if let Some(l) = self.replace_lease(&next).await? {
                    mine.lease = Some(l);
                    drop(mine);
                    self.unlabel_former_leaders();
                    return Ok(true);
                }
                // A 409 from a write of our own: an API server that was frozen applies the
                // renewals queued meanwhile when it thaws, and the first one moves the version
                // under this acquisition. Only a Lease that still names us is tried again.
                match self.read_lease().await? {
                    Some(l) if lease::holder_of(&l) == Some(self.name.as_str()) => current = l,
                    _ => return Ok(false),
                }
            }
            Ok(false)
        })
        .await
    }

    async fn update_leader(&self, status: Option<&Status>) -> Result<bool, DcsError> {
        self.run(
            "update leader lock",
            self.rewrite_held_lease(|cur| {
                let mut next = lease::taken(cur, &self.name, self.ttl(), Timestamp::now(), true);
                if let Some(s) = status {
                    lease::set_status(&mut next, s);
                }
                next
            }),
        )
        .await
    }

    /// The release is a replace carrying the Lease's `resourceVersion`; after a 409 it reads
    /// the Lease and tries once more, but with `expected` only if the Lease still belongs to
    /// that holding ([`lease::instance`]): a release that arrives late must not release the
    /// lock this member has taken again since.
    async fn release_leader(
        &self,
        status: Option<&Status>,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        self.run("release leader lock", async {
            let mut mine = self.mine.lock().await;
            let mut base = self.base_lease(&mine);
            for _ in 0..2 {
                let Some(cur) = base.take() else {
                    return Ok(false);
                };
                if lease::holder_of(&cur) != Some(self.name.as_str())
                    || expected.is_some_and(|v| *v != lease::instance(&cur))
                {
                    return Ok(false);
                }
                let mut next = lease::released(&cur, Timestamp::now());
                if let Some(s) = status {
                    lease::set_status(&mut next, s);
                }
                if self.replace_lease(&next).await?.is_some() {
                    mine.lease = None;
                    return Ok(true);
                }
                base = self.read_lease().await?;
            }
            Ok(false)
        })
        .await
    }

    /// The `failsafe` annotation of the Lease (Patroni's leader object carries it), written as
    /// a renewal is: a replace carrying the `resourceVersion` this member last wrote or saw,
    /// only while the Lease names this member; after a 409, once more on the Lease as read
    /// afresh. Its answer becomes the base of the next renewal (which would otherwise conflict,
    /// or drop the annotation), and a sighting for the expiry clock: like every new version of
    /// the Lease, observers count the holder's time from when they see it.
    async fn set_failsafe(&self, value: &BTreeMap<String, String>) -> Result<bool, DcsError> {
        let json = serde_json::to_string(value)
            .map_err(|e| DcsError::Failed(format!("set failsafe: {e}")))?;
        self.run(
            "set failsafe",
            self.rewrite_held_lease(|cur| {
                let mut next = cur.clone();
                lease::set_failsafe(&mut next, &json);
                next
            }),
        )
        .await
    }

    /// A claim (`create_new`) names its claimant beside the value: without a session to bind
    /// it to, that is how a claimant whose answer was lost finds its claim its own when it
    /// claims again (as on etcd), instead of waiting for a bootstrap nobody runs. Writing the
    /// value for good ends the claim.
    async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError> {
        let mut ann = Map::new();
        ann.insert("initialize".into(), Value::String(sysid.to_owned()));
        let claimant = create_new.then(|| Value::String(self.name.clone()));
        ann.insert(configmaps::CLAIMANT.into(), claimant.unwrap_or(Value::Null));
        let name = self.names.config.clone();
        self.run("initialize", async {
            if !create_new {
                return self.patch_cm(&name, &ann, None).await;
            }
            let cur = self
                .configmaps
                .get_opt(&name)
                .await
                .map_err(|e| classify("read config", e))?;
            match cur {
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(labels::object_labels(&self.k8s, &self.scope)),
                            annotations: Some(configmaps::present(&ann)),
                            ..ObjectMeta::default()
                        },
                        ..ConfigMap::default()
                    };
                    match self.configmaps.create(&PostParams::default(), &cm).await {
                        Ok(_) => Ok(true),
                        Err(e) if code(&e) == Some(409) => Ok(false),
                        Err(e) => Err(classify("create config", e)),
                    }
                }
                Some(cm)
                    if cm
                        .metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key("initialize")) =>
                {
                    let a = cm.metadata.annotations.unwrap_or_default();
                    Ok(a.get("initialize").map(String::as_str) == Some(sysid)
                        && a.get(configmaps::CLAIMANT) == Some(&self.name))
                }
                Some(cm) => {
                    let rv = cm.metadata.resource_version.unwrap_or_default();
                    self.patch_cm(&name, &ann, Some(&rv)).await
                }
            }
        })
        .await
    }

    async fn cancel_initialization(&self) -> Result<(), DcsError> {
        let mut ann = Map::new();
        ann.insert("initialize".into(), Value::Null);
        ann.insert(configmaps::CLAIMANT.into(), Value::Null);
        let name = self.names.config.clone();
        self.run("cancel initialization", async {
            match self
                .configmaps
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&configmaps::annotation_patch(&ann, None)),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if code(&e) == Some(404) => Ok(()),
                Err(e) => Err(classify("cancel initialization", e)),
            }
        })
        .await
    }

    async fn set_config(&self, json: &str, expected: Option<&Version>) -> Result<bool, DcsError> {
        let mut ann = Map::new();
        ann.insert("config".into(), Value::String(json.to_owned()));
        self.run(
            "set config",
            self.patch_cm(&self.names.config, &ann, expected.map(|v| v.0.as_str())),
        )
        .await
    }

    async fn set_failover(
        &self,
        value: &Failover,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let ann = configmaps::failover_annotations(value);
        self.run(
            "set failover",
            self.patch_cm(&self.names.failover, &ann, expected.map(|v| v.0.as_str())),
        )
        .await
    }

    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError> {
        let mut ann = Map::new();
        ann.insert("history".into(), Value::String(history_to_json(lines)));
        self.run("set history", self.patch_cm(&self.names.config, &ann, None))
            .await
            .map(|_| ())
    }

    async fn set_sync(
        &self,
        value: &SyncState,
        expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        let ann = configmaps::sync_annotations(value);
        self.run(
            "set sync",
            self.patch_cm(&self.names.sync, &ann, expected.map(|v| v.0.as_str())),
        )
        .await
    }

    async fn delete_cluster(&self) -> Result<(), DcsError> {
        self.run("delete cluster", async {
            let dp = DeleteParams::default();
            let ignore_missing = |r: Result<(), kube::Error>, what: &str| match r {
                Err(e) if code(&e) != Some(404) => Err(classify(what, e)),
                _ => Ok(()),
            };
            ignore_missing(
                self.leases.delete(&self.lease_name, &dp).await.map(|_| ()),
                "delete lease",
            )?;
            for name in [&self.names.config, &self.names.failover, &self.names.sync] {
                ignore_missing(
                    self.configmaps.delete(name, &dp).await.map(|_| ()),
                    "delete configmap",
                )?;
            }
            let mut mine = self.mine.lock().await;
            mine.lease = None;
            mine.pod = None;
            Ok(())
        })
        .await
    }

    async fn delete_member(&self) -> Result<(), DcsError> {
        if let Some(slice) = &self.primary_slice {
            slice.send_replace(endpoints::Wish::NotHere);
        }
        let body = pods::member_patch(None, &self.k8s.role_label, None);
        self.run("delete member", async {
            let mut mine = self.mine.lock().await;
            match self
                .pods
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {}
                Err(e) if code(&e) == Some(404) => {}
                Err(e) => return Err(classify("delete member", e)),
            }
            mine.pod = None;
            Ok(())
        })
        .await
    }
}
