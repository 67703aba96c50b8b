//! The Helm chart `helm/pgwarden`: linted, rendered with its defaults and with every option on,
//! its values schema refusing bad values by name, every rendered object accepted by a real
//! kube-apiserver (server-side dry-run apply), and installed into a fresh namespace where three
//! pgwarden members on real PostgreSQL 15 stand in for the StatefulSet's pods (the test control
//! plane has no controllers and no nodes: the test makes the pods the StatefulSet would, from
//! its template). The members run on the chart's patroni.yml and environment, under a token of
//! the chart's ServiceAccount; the test checks the Lease, the role labels, which pods the
//! chart's Services select, and pgBouncer's configuration, run by a real pgBouncer. The
//! chart's pgBackRest configuration and certificate run on pgBackRest itself.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/helm.rs"]
mod helm;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster::{Backend, Cluster, ControlPlane, MemberProc, Timings, k8s};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaimVolumeSource, Pod, Secret, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::params::ValidationDirective;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

/// Short timings so the cluster settles fast; the chart's defaults are Patroni's (30/10/10).
const T: Timings = Timings {
    ttl: 8,
    loop_wait: 1,
    retry_timeout: 3,
};

/// Every optional part of the chart on.
const ALL_ON: &[&str] = &[
    "--set",
    "pgbackrest.enabled=true",
    "--set",
    "metrics.exporter.enabled=true",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "restapi.authentication=true",
    "--set",
    "podAntiAffinity=hard",
    "--set",
    "kubernetes.primaryEndpointSlice=true",
];

fn chart() -> String {
    helm::chart_dir().display().to_string()
}

fn template(helm: &Path, release: &str, ns: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", release, chart.as_str(), "--namespace", ns];
    args.extend_from_slice(extra);
    helm::documents(&helm::ok(helm, None, &args))
}

/// The Role's rules in docs/kubernetes.md (what `k8s_rbac_it` runs the agent under).
fn documented_rules() -> Vec<PolicyRule> {
    let yaml = documented_block("role");
    let role: Role = serde_norway::from_str(&yaml).expect("the documented Role parses");
    role.rules.expect("rules")
}

/// The rule docs/kubernetes.md adds for `kubernetes.primary_endpoint_slice`.
fn documented_slice_rules() -> Vec<PolicyRule> {
    serde_norway::from_str(&documented_block("slice-role")).expect("the documented rule parses")
}

/// The YAML between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in docs/kubernetes.md.
fn documented_block(name: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/kubernetes.md"))
        .unwrap();
    let block = doc
        .split(&format!("<!-- {name}:begin -->"))
        .nth(1)
        .and_then(|s| s.split(&format!("<!-- {name}:end -->")).next())
        .unwrap_or_else(|| panic!("the {name} block in docs/kubernetes.md"));
    block
        .trim()
        .trim_start_matches("```yaml")
        .trim_end_matches("```")
        .to_owned()
}

/// The container `name` of a pod spec.
fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_of<'a>(c: &'a Value, var: &str) -> &'a Value {
    c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == var))
        .unwrap_or_else(|| panic!("no {var} in the environment of {}", c["name"]))
}

/// patroni.yml as the chart renders it.
fn patroni_yml(docs: &[Value], fullname: &str) -> Value {
    let cm = helm::find(docs, "ConfigMap", &format!("{fullname}-config-file"));
    serde_norway::from_str(cm["data"]["patroni.yml"].as_str().expect("patroni.yml"))
        .expect("patroni.yml parses")
}

#[test]
fn chart_lints_renders_and_refuses_bad_values() {
    let Some(helm) = helm::helm() else {
        return;
    };
    let chart = chart();
    helm::ok(helm, None, &["lint", "--strict", &chart]);
    let mut on = vec!["lint", "--strict", chart.as_str()];
    on.extend_from_slice(ALL_ON);
    helm::ok(helm, None, &on);

    // Defaults: the topology of the operators' default cluster.
    let docs = template(helm, "db", "prod", &[]);
    let sts = helm::find(&docs, "StatefulSet", "db");
    assert_eq!(sts["spec"]["replicas"], 3);
    let pod = &sts["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    // What pgwarden finds its member Pods by: kubernetes.labels and the scope label.
    assert_eq!(labels["cluster-name"], "db");
    assert_eq!(labels["application"], "pgwarden");
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "db");
    assert!(
        spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );
    let pg = container(spec, "postgres");
    assert_eq!(pg["image"], "pgwarden:0.1.0");
    assert_eq!(pg["imagePullPolicy"], "IfNotPresent");
    assert_eq!(pg["readinessProbe"]["httpGet"]["path"], "/readiness");
    assert_eq!(pg["livenessProbe"]["httpGet"]["path"], "/liveness");
    let ports = pg["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "patroni" && p["containerPort"] == 8008)
    );
    assert_eq!(
        env_of(pg, "PATRONI_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_of(pg, "PATRONI_KUBERNETES_POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        env_of(pg, "PATRONI_SUPERUSER_PASSWORD")["valueFrom"]["secretKeyRef"]["name"],
        "db-secret"
    );
    // The grace period covers a clean stop of PostgreSQL and the hand-over of the lock.
    let cfg = patroni_yml(&docs, "db");
    let dcs = &cfg["bootstrap"]["dcs"];
    let grace = spec["terminationGracePeriodSeconds"].as_i64().unwrap();
    let handover = dcs["shutdown_handover_timeout"].as_i64().unwrap();
    let pg_ctl = cfg["postgresql"]["pg_ctl_timeout"].as_i64().unwrap();
    assert!(grace >= pg_ctl + handover, "grace period {grace}");
    assert_eq!(dcs["ttl"], 30);
    assert_eq!(dcs["loop_wait"], 10);
    assert_eq!(dcs["retry_timeout"], 10);
    assert_eq!(
        dcs["postgresql"]["parameters"]["shared_preload_libraries"],
        "pg_stat_statements"
    );
    assert_eq!(cfg["scope"], "db");
    assert_eq!(cfg["kubernetes"]["scope_label"], "cluster-name");
    assert!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            .is_string()
    );

    // pgwarden itself accepts the rendered configuration with the pod's environment.
    let dir = tempdir("chart-validate");
    let file = dir.join("patroni.yml");
    std::fs::write(&file, serde_norway::to_string(&cfg).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("--validate-config")
        .arg(&file)
        .env("PATRONI_NAME", "db-0")
        .env("PATRONI_KUBERNETES_NAMESPACE", "prod")
        .env("PATRONI_KUBERNETES_POD_IP", "10.1.2.3")
        .env("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "10.1.2.3:5432")
        .env("PATRONI_RESTAPI_CONNECT_ADDRESS", "10.1.2.3:8008")
        .env("PATRONI_SUPERUSER_USERNAME", "postgres")
        .env("PATRONI_SUPERUSER_PASSWORD", "x")
        .env("PATRONI_REPLICATION_USERNAME", "replicator")
        .env("PATRONI_REPLICATION_PASSWORD", "y")
        .env("PATRONI_REWIND_USERNAME", "rewind_user")
        .env("PATRONI_REWIND_PASSWORD", "z")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgwarden --validate-config refuses the chart's patroni.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The Role grants exactly what docs/kubernetes.md documents (and k8s_rbac_it runs under).
    let role: Role = serde_json::from_value(helm::find(&docs, "Role", "db").clone()).unwrap();
    assert_eq!(role.rules.unwrap(), documented_rules());
    let binding = helm::find(&docs, "RoleBinding", "db");
    assert_eq!(binding["subjects"][0]["name"], "db");
    assert_eq!(binding["roleRef"]["name"], "db");

    // Services: the primary and the replicas by role label, the members' headless one.
    let primary = helm::find(&docs, "Service", "db-primary");
    assert_eq!(primary["spec"]["selector"]["role"], "primary");
    assert_eq!(primary["spec"]["selector"]["cluster-name"], "db");
    let replicas = helm::find(&docs, "Service", "db-replicas");
    assert_eq!(replicas["spec"]["selector"]["role"], "replica");
    let members = helm::find(&docs, "Service", "db-members");
    assert_eq!(members["spec"]["clusterIP"], "None");
    assert_eq!(sts["spec"]["serviceName"], "db-members");
    let pdb = helm::find(&docs, "PodDisruptionBudget", "db");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let bouncer = helm::find(&docs, "Deployment", "db-pgbouncer");
    assert_eq!(bouncer["spec"]["replicas"], 3);
    assert_eq!(
        container(&bouncer["spec"]["template"]["spec"], "pgbouncer")["image"],
        "pgwarden-pgbouncer:0.1.0"
    );
    let ini = helm::find(&docs, "ConfigMap", "db-pgbouncer")["data"]["pgbouncer.ini"]
        .as_str()
        .unwrap();
    assert!(
        ini.contains("* = host=db-primary.prod.svc port=5432"),
        "{ini}"
    );
    // A failed login to a stopping primary must not shut the pool for pgBouncer's 15 s.
    assert!(ini.contains("server_login_retry = 1\n"), "{ini}");
    helm::find(&docs, "Service", "db-pgbouncer");
    // The optional parts are off by default.
    for kind in ["CronJob", "ServiceMonitor"] {
        assert!(!docs.iter().any(|d| d["kind"] == kind), "{kind} rendered");
    }

    // Every option on.
    let docs = template(helm, "db", "prod", ALL_ON);
    let sts = helm::find(&docs, "StatefulSet", "db");
    let spec = &sts["spec"]["template"]["spec"];
    assert!(
        spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );
    container(spec, "pgbackrest");
    container(spec, "exporter");
    let cfg = patroni_yml(&docs, "db");
    let params = &cfg["bootstrap"]["dcs"]["postgresql"]["parameters"];
    assert_eq!(params["archive_mode"], "on");
    assert_eq!(
        params["archive_command"],
        "pgbackrest --stanza=db archive-push %p"
    );
    helm::find(&docs, "StatefulSet", "db-repo-host");
    for t in ["full", "diff"] {
        let cj = helm::find(&docs, "CronJob", &format!("db-backup-{t}"));
        let cmd =
            &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"];
        assert!(
            cmd.as_array()
                .unwrap()
                .iter()
                .any(|a| a == &Value::from(format!("--type={t}"))),
            "{cmd}"
        );
    }
    let conf = helm::find(&docs, "ConfigMap", "db-pgbackrest")["data"]["repo.conf"]
        .as_str()
        .unwrap();
    for i in 0..3 {
        assert!(
            conf.contains(&format!("pg{}-host=db-{i}.db-members.prod.svc", i + 1)),
            "{conf}"
        );
    }
    // The primary EndpointSlice: pgwarden keeps it, so the primary Service has no selector, the
    // Role adds exactly the documented rule, and the configuration turns it on.
    assert!(cfg["kubernetes"]["primary_endpoint_slice"] == true, "{cfg}");
    let primary = helm::find(&docs, "Service", "db-primary");
    assert!(primary["spec"]["selector"].is_null(), "{primary}");
    let role: Role = serde_json::from_value(helm::find(&docs, "Role", "db").clone()).unwrap();
    let mut want = documented_rules();
    want.extend(documented_slice_rules());
    assert_eq!(role.rules.unwrap(), want);
    let sm = helm::find(&docs, "ServiceMonitor", "db");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        env_of(container(spec, "postgres"), "PATRONI_RESTAPI_PASSWORD")["valueFrom"]["secretKeyRef"]
            ["key"],
        "restapi-password"
    );

    // Bad values fail at install, with a message naming the key.
    for (set, key) in [
        ("replicas=0", "/replicas"),
        ("replicas=three", "/replicas"),
        ("pgbouncer.replicas=-1", "/pgbouncer/replicas"),
        ("podAntiAffinity=sometimes", "/podAntiAffinity"),
        ("dcs.ttl=1", "/dcs/ttl"),
        (
            "kubernetes.primaryEndpointSlice=maybe",
            "/kubernetes/primaryEndpointSlice",
        ),
        ("persistence.size=", "/persistence/size"),
        ("pgbouncer.poolMode=pooled", "/pgbouncer/poolMode"),
        ("replica=3", "'replica'"),
        ("dcs.loop_wait=10,dcs.retry_timeout=15", "retry_timeout"),
    ] {
        let out = helm::run(helm, None, &["template", "db", &chart, "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            err.contains(key),
            "--set {set}: the message does not name {key}: {err}"
        );
    }
}

/// Every object the chart renders, with its defaults and with every option on, is accepted
/// by a real kube-apiserver (a server-side apply, dry run, strict field validation). The
/// ServiceMonitor's CRD is made first (a minimal one, as the Prometheus operator's would be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_objects_pass_a_server_side_dry_run() {
    let Some(helm) = helm::helm() else {
        return;
    };
    let client = k8s::admin().await;
    ensure_service_monitor_crd(&client).await;
    let ns = k8s::fresh_namespace(&client, "chartdry").await;
    for extra in [&[][..], ALL_ON] {
        let docs = template(helm, "db", &ns, extra);
        assert!(docs.len() > 10, "{} objects rendered", docs.len());
        for d in docs {
            let (api_version, kind) = (
                d["apiVersion"].as_str().unwrap(),
                d["kind"].as_str().unwrap(),
            );
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
            let obj: DynamicObject = serde_json::from_value(d.clone()).unwrap();
            let name = obj.metadata.name.clone().unwrap();
            let pp = PatchParams::apply("pgwarden-chart-it")
                .dry_run()
                .validation(ValidationDirective::Strict);
            if let Err(e) = api.patch(&name, &pp, &Patch::Apply(&obj)).await {
                panic!("{kind} {name} refused by the API server: {e}\n{d:#}");
            }
        }
    }
}

/// The CRD of the Prometheus operator's ServiceMonitor, reduced to what the API server needs
/// to take one (the real one has the full schema); applied, so every run may make it again.
async fn ensure_service_monitor_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                      "plural": "servicemonitors", "singular": "servicemonitor"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {"type": "object",
                        "x-kubernetes-preserve-unknown-fields": true}}
                }}
            }]
        }
    }))
    .unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        "servicemonitors.monitoring.coreos.com",
        &PatchParams::apply("pgwarden-chart-it").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the ServiceMonitor CRD");
    k8s::eventually(
        "the ServiceMonitor CRD established",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let crd = api
                    .get("servicemonitors.monitoring.coreos.com")
                    .await
                    .ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;
}

/// A directory of the test's own, readable by the member user.
fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pgwarden-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The release (and so the scope, and the prefix of every object name).
const RELEASE: &str = "chartit";

/// `helm install` on the shared control plane, then three members standing in for the
/// StatefulSet's pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_chart_runs_three_members() {
    let Some(helm) = helm::helm() else {
        return;
    };
    // No members yet: they are made below, from what the chart installed.
    let shared = Backend::Kubernetes(ControlPlane::Shared);
    let Some(mut c) = Cluster::prepare(shared, RELEASE, 0, T).await else {
        return;
    };
    let (admin, ns) = (c.kubernetes().client.clone(), c.kubernetes().ns.clone());
    let admin_kubeconfig = k8s::kubeconfig();
    // One socket directory for the three PostgreSQL servers (their ports differ), where the
    // chart's /var/run/postgresql would be each pod's own.
    let sockets = c.dir.join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    chown_to_member_user(&sockets);
    let extra_config = serde_json::json!({
        "postgresql": {"parameters": {"unix_socket_directories": sockets}}
    })
    .to_string();
    let chart = chart();
    let values = [
        "--set",
        &format!("dcs.ttl={}", T.ttl),
        "--set",
        &format!("dcs.loop_wait={}", T.loop_wait),
        "--set",
        &format!("dcs.retry_timeout={}", T.retry_timeout),
        // What the harness's SQL helper logs in with; the other passwords are generated.
        "--set",
        "users.superuser.password=postgres",
        "--set-json",
        &format!("extraConfig={extra_config}"),
    ];
    let mut install = vec![
        "install",
        RELEASE,
        chart.as_str(),
        "--namespace",
        ns.as_str(),
    ];
    install.extend_from_slice(&values);
    let notes = helm::ok(helm, Some(&admin_kubeconfig), &install);
    assert!(notes.contains("patronictl"), "NOTES: {notes}");
    assert!(
        notes.contains(&format!("{RELEASE}-primary.{ns}.svc:5432")),
        "NOTES: {notes}"
    );

    // Generated passwords are kept by an upgrade (read back with `lookup`).
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let secret_name = format!("{RELEASE}-secret");
    let before = secrets.get(&secret_name).await.unwrap().data.unwrap();
    assert_eq!(before["superuser-password"].0, b"postgres");
    assert_eq!(before["replication-password"].0.len(), 32);
    let mut upgrade = vec![
        "upgrade",
        RELEASE,
        chart.as_str(),
        "--namespace",
        ns.as_str(),
    ];
    upgrade.extend_from_slice(&values);
    helm::ok(helm, Some(&admin_kubeconfig), &upgrade);
    let data = secrets.get(&secret_name).await.unwrap().data.unwrap();
    assert_eq!(data, before, "an upgrade changed the generated passwords");
    let secret_value =
        |key: &str| String::from_utf8(data[key].0.clone()).expect("a UTF-8 secret value");

    // The pods the StatefulSet controller would make from its template.
    let sts = Api::<StatefulSet>::namespaced(admin.clone(), &ns)
        .get(RELEASE)
        .await
        .unwrap();
    let sts_spec = sts.spec;
    assert_eq!(sts_spec.replicas, Some(3));
    let template = sts_spec.template.clone();
    let mut ips = BTreeMap::new();
    for i in 0..3 {
        let name = format!("{RELEASE}-{i}");
        let ip = format!("10.9.0.{}", i + 1);
        create_stateful_pod(
            &admin,
            &ns,
            &sts_spec.service_name,
            &template,
            &sts_spec,
            i,
            &ip,
        )
        .await;
        ips.insert(name, ip);
    }

    // The members' credentials: a token of the chart's ServiceAccount.
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create_token_request(
            RELEASE,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            },
        )
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token");
    c.kubernetes_mut().use_token(&token);

    // The chart's patroni.yml, as each pod mounts it.
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .get(&format!("{RELEASE}-config-file"))
        .await
        .unwrap();
    let config = c.dir.join("patroni.yml");
    std::fs::write(&config, &cm.data.unwrap()["patroni.yml"]).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let pg_container = template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == "postgres")
        .expect("the postgres container")
        .clone();
    let ports = cluster::distinct_ports(6);
    let mut envs = Vec::new();
    for i in 0..3 {
        let name = format!("{RELEASE}-{i}");
        let (pg_port, api_port) = (ports[2 * i], ports[2 * i + 1]);
        let mdir = c.dir.join(&name);
        std::fs::create_dir_all(&mdir).unwrap();
        chown_to_member_user(&mdir);
        // The container's environment as the kubelet resolves it for this pod...
        let mut env = pod_env(&pg_container, &name, &ns, &ips[&name], &secret_value);
        // ...except where a pod's own network and volume are: a member on loopback.
        for (k, v) in [
            ("PATRONI_POSTGRESQL_LISTEN", format!("127.0.0.1:{pg_port}")),
            (
                "PATRONI_POSTGRESQL_CONNECT_ADDRESS",
                format!("127.0.0.1:{pg_port}"),
            ),
            ("PATRONI_RESTAPI_LISTEN", format!("127.0.0.1:{api_port}")),
            (
                "PATRONI_RESTAPI_CONNECT_ADDRESS",
                format!("127.0.0.1:{api_port}"),
            ),
            (
                "PATRONI_POSTGRESQL_DATA_DIR",
                mdir.join("data").display().to_string(),
            ),
            (
                "PATRONI_POSTGRESQL_PGPASS",
                mdir.join("pgpass").display().to_string(),
            ),
        ] {
            env.insert(k.into(), v);
        }
        c.members.push(MemberProc {
            name: name.clone(),
            host: "127.0.0.1".into(),
            config: config.clone(),
            pg_port,
            api_port,
            store_via: None,
            child: None,
        });
        let mut cmd = c.command(&config, &c.log_path(i));
        cmd.envs(&env);
        envs.push(env);
        c.members[i].child = Some(cmd.spawn().expect("spawn pgwarden"));
    }

    let long = Duration::from_secs(150);
    let (l, others) = c.healthy(long).await;
    let leader = c.members[l].name.clone();
    let replicas: Vec<String> = others.iter().map(|&i| c.members[i].name.clone()).collect();

    // The Lease is held by the leader.
    let (holder, _) = c.kubernetes().lease_state().await.expect("the Lease");
    assert_eq!(holder.as_deref(), Some(leader.as_str()));

    // Role labels, and which pods each of the chart's Services selects.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let selected = |svc: String| {
        let (pods, services) = (pods.clone(), services.clone());
        async move {
            let s = services.get(&svc).await.ok()?;
            let sel = s.spec?.selector?;
            let sel: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut names: Vec<String> = pods
                .list(&ListParams::default().labels(&sel.join(",")))
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            names.sort();
            Some(names)
        }
    };
    c.wait_for(
        "the Services to select the primary and the replicas",
        long,
        || async {
            let primary = selected(format!("{RELEASE}-primary")).await?;
            let reps = selected(format!("{RELEASE}-replicas")).await?;
            (primary == vec![leader.clone()] && reps == replicas).then_some(())
        },
    )
    .await;
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let name = p.metadata.name.unwrap();
        let role = p.metadata.labels.unwrap_or_default().get("role").cloned();
        let want = if name == leader { "primary" } else { "replica" };
        assert_eq!(role.as_deref(), Some(want), "{name}'s role label");
    }
    // `patronictl` in a pod: the pod's own configuration and credentials find the cluster in
    // Kubernetes; it lists the members and switches over, and the primary Service follows.
    let patronictl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .arg("ctl")
            .arg("-c")
            .arg(&config)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", c.dir.display().to_string())
            .env("KUBECONFIG", &c.kubernetes().kubeconfig)
            .envs(&envs[0])
            .output()
            .expect("run pgwarden ctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "patronictl {args:?}: {text}");
        text
    };
    let list = patronictl(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(&format!("| {leader} ")) && l.contains("| Leader ")),
        "{list}"
    );
    assert_eq!(list.matches("| Replica ").count(), 2, "{list}");
    let candidate = replicas[0].clone();
    patronictl(&[
        "switchover",
        "--leader",
        &leader,
        "--candidate",
        &candidate,
        "--force",
    ]);
    c.wait_for(
        "the primary Service to follow the switchover",
        long,
        || async {
            let primary = selected(format!("{RELEASE}-primary")).await?;
            (primary == vec![candidate.clone()]).then_some(())
        },
    )
    .await;
    let (holder, _) = c.kubernetes().lease_state().await.expect("the Lease");
    assert_eq!(holder.as_deref(), Some(candidate.as_str()));
    let leader = candidate;
    let l = c
        .members
        .iter()
        .position(|m| m.name == leader)
        .expect("the new leader");
    c.healthy(long).await;

    // The headless Service selects every member.
    assert_eq!(
        selected(format!("{RELEASE}-members")).await.unwrap().len(),
        3
    );

    // Query statistics are on, by the chart's dynamic configuration.
    let libs = c.sql(l, "SHOW shared_preload_libraries").await.unwrap();
    assert_eq!(libs, vec!["pg_stat_statements".to_owned()]);
    c.sql(l, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .unwrap();

    // pgBouncer: its configuration points at the primary Service; a real pgBouncer run on it
    // (the Service's name resolved to what it selects, the leader) serves a query with the
    // chart's userlist.
    let ini = Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .get(&format!("{RELEASE}-pgbouncer"))
        .await
        .unwrap()
        .data
        .unwrap()["pgbouncer.ini"]
        .clone();
    let target = format!("host={RELEASE}-primary.{ns}.svc port=5432");
    assert!(ini.contains(&format!("* = {target}")), "{ini}");
    services
        .get(&format!("{RELEASE}-primary"))
        .await
        .expect("the Service pgBouncer points at");
    run_pgbouncer(&c, &ini, &target, l, &secret_value("userlist.txt")).await;

    // The chart's ServiceAccount was enough: nothing was refused.
    for i in 0..3 {
        let log = std::fs::read_to_string(c.log_path(i)).unwrap_or_default();
        assert!(
            !log.contains("Forbidden") && !log.contains("forbidden"),
            "member {i} was refused something:\n{log}"
        );
    }
}

/// Creates pod `i` of the StatefulSet as its controller would: named `<sts>-<i>`, the
/// template's labels and spec, the volume of each claim template, the hostname and subdomain
/// of the headless Service; then gives it `ip` (no kubelet does here).
async fn create_stateful_pod(
    client: &kube::Client,
    ns: &str,
    service_name: &Option<String>,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    sts: &k8s_openapi::api::apps::v1::StatefulSetSpec,
    i: usize,
    ip: &str,
) {
    let name = format!("{RELEASE}-{i}");
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(name.clone());
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
    labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
    let mut spec = template.spec.clone().expect("a pod spec");
    spec.hostname = Some(name.clone());
    spec.subdomain = service_name.clone();
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for claim in sts.volume_claim_templates.iter().flatten() {
        let claim_name = claim.metadata.name.clone().expect("claim name");
        volumes.push(Volume {
            name: claim_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{claim_name}-{name}"),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = Pod {
        metadata: meta,
        spec: Some(spec),
        ..Pod::default()
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name} from the StatefulSet's template: {e}"));
    let status =
        serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("set pod status");
}

/// The container's environment as the kubelet gives it to pod `pod`: field references,
/// Secret keys (from the installed Secret) and `$(VAR)` references to variables before it.
fn pod_env(
    c: &k8s_openapi::api::core::v1::Container,
    pod: &str,
    ns: &str,
    ip: &str,
    secret: &dyn Fn(&str) -> String,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            let mut v = v.clone();
            for (k, known) in &env {
                v = v.replace(&format!("$({k})"), known);
            }
            v
        } else {
            let from = e.value_from.as_ref().expect("value or valueFrom");
            if let Some(f) = &from.field_ref {
                match f.field_path.as_str() {
                    "metadata.name" => pod.to_owned(),
                    "metadata.namespace" => ns.to_owned(),
                    "status.podIP" => ip.to_owned(),
                    other => panic!("a field the test does not resolve: {other}"),
                }
            } else if let Some(s) = &from.secret_key_ref {
                assert_eq!(s.name, format!("{RELEASE}-secret"));
                secret(&s.key)
            } else {
                panic!("an env source the test does not resolve: {e:?}");
            }
        };
        env.insert(e.name.clone(), value);
    }
    env
}

/// Gives `path` to the member user (members run as `postgres` when the tests run as root).
fn chown_to_member_user(path: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let u = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("user postgres");
    nix::unistd::chown(path, Some(u.uid), Some(u.gid)).unwrap();
}

/// Runs pgBouncer on the chart's pgbouncer.ini and userlist.txt, `target` (the primary
/// Service) replaced by member `l`'s address, and queries the primary through it.
async fn run_pgbouncer(c: &Cluster, ini: &str, target: &str, l: usize, userlist: &str) {
    let bin = Path::new("/usr/sbin/pgbouncer");
    if !bin.is_file() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "CI=true but pgBouncer is missing");
        eprintln!("NOTE: no pgBouncer: its configuration was only read");
        return;
    }
    let dir = c.dir.join("pgbouncer");
    std::fs::create_dir_all(&dir).unwrap();
    let port = cluster::distinct_ports(1)[0];
    let m = &c.members[l];
    let ini = ini
        .replace(target, &format!("host=127.0.0.1 port={}", m.pg_port))
        .replace(
            "/etc/pgbouncer/userlist.txt",
            &dir.join("userlist.txt").display().to_string(),
        )
        .replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")
        .replace("listen_port = 6432", &format!("listen_port = {port}"));
    std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
    std::fs::write(dir.join("userlist.txt"), userlist).unwrap();
    for f in ["", "pgbouncer.ini", "userlist.txt"] {
        chown_to_member_user(&dir.join(f));
    }
    let log = std::fs::File::create(dir.join("pgbouncer.log")).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg(dir.join("pgbouncer.ini"))
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    c.as_member_user(&mut cmd);
    let mut child = cmd.spawn().expect("spawn pgbouncer");
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        match cluster::member_io::sql("127.0.0.1", port, "SELECT pg_is_in_recovery()::text").await {
            Ok(rows) => break Ok(rows),
            Err(e) if std::time::Instant::now() > until => break Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
    let got = got.unwrap_or_else(|e| panic!("no query through pgBouncer: {e}\n{log}"));
    assert_eq!(got, vec!["false".to_owned()], "pgBouncer reached a replica");
}

/// The pgBackRest design of the chart, on pgBackRest itself (Debian's, the image's): the
/// rendered configurations and certificate, the repository host's and a member's TLS servers
/// as in their pods (one member: `replicas=1`, so that no absent host slows the run), the
/// chart's archive_command on a real PostgreSQL 15, and `stanza-create`, `check` and a full
/// `backup` run on the repository host (`tests/helm/pgbackrest-check.sh`). Paths and ports move
/// into the test's directory; the host names and the certificate stay the chart's (a private
/// mount namespace gives them loopback addresses), so TLS checks them as in the cluster.
#[test]
fn pgbackrest_design_archives_and_backs_up() {
    let Some(helm) = helm::helm() else {
        return;
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let have = Path::new("/usr/bin/pgbackrest").is_file()
        && Path::new("/usr/lib/postgresql/15/bin/postgres").is_file();
    let root = nix::unistd::geteuid().is_root();
    if !have || !root {
        assert!(
            !ci,
            "CI=true but pgBackRest or PostgreSQL 15 is missing, or the test is not root"
        );
        eprintln!("SKIPPED: needs root, /usr/bin/pgbackrest and PostgreSQL 15");
        return;
    }
    let docs = template(
        helm,
        "db",
        "prod",
        &["--set", "pgbackrest.enabled=true", "--set", "replicas=1"],
    );
    let w = tempdir("chart-pgbackrest");
    for d in ["conf", "certs", "data", "sock", "repo"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    let tls = helm::find(&docs, "Secret", "db-pgbackrest-tls");
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(tls["data"][key].as_str().unwrap())
            .unwrap();
        let f = w.join("certs").join(key);
        std::fs::write(&f, pem).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // A free port on each loopback address the two servers listen on, and PostgreSQL's.
    let tls_port = {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let p = l.local_addr().unwrap().port();
        std::net::TcpListener::bind(("127.0.0.3", p)).expect("the same port free on 127.0.0.3");
        p
    };
    let pg_port = cluster::distinct_ports(1)[0];
    let cm = &helm::find(&docs, "ConfigMap", "db-pgbackrest")["data"];
    let wd = w.display().to_string();
    for (key, addr) in [("member.conf", "127.0.0.2"), ("repo.conf", "127.0.0.3")] {
        let conf = cm[key]
            .as_str()
            .unwrap()
            .replace("/etc/pgbackrest/", &format!("{wd}/certs/"))
            .replace("/pgdata/pgroot/data", &format!("{wd}/data/pgroot/data"))
            .replace("/var/run/postgresql", &format!("{wd}/sock"))
            .replace("repo1-path=/pgbackrest", &format!("repo1-path={wd}/repo"))
            .replace("port=5432", &format!("port={pg_port}"))
            .replace("port=8432", &format!("port={tls_port}"))
            .replace(
                "tls-server-address=*",
                &format!("tls-server-address={addr}"),
            );
        assert!(conf.contains("-host-type=tls"), "{key}: {conf}");
        std::fs::write(w.join("conf").join(key), conf).unwrap();
    }
    std::fs::write(
        w.join("hosts"),
        "127.0.0.1 localhost\n127.0.0.2 db-0.db-members.prod.svc\n\
         127.0.0.3 db-repo-host-0.db-repo-host.prod.svc\n",
    )
    .unwrap();
    for entry in walk(&w) {
        chown_to_member_user(&entry);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/pgbackrest-check.sh");
    let out = Command::new("/usr/bin/timeout")
        .args([
            "300",
            "/usr/bin/unshare",
            "--mount",
            "--propagation",
            "private",
        ])
        .arg(&script)
        .arg(&w)
        .arg(pg_port.to_string())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let step = |name: &str| -> String {
        text.split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n== ").next())
            .unwrap_or_else(|| panic!("no step {name} in:\n{text}"))
            .to_owned()
    };
    for s in ["stanza-create", "check", "backup"] {
        assert!(
            step(s).contains("completed successfully"),
            "{s} failed:\n{text}"
        );
    }
    assert!(step("archive").contains(" failed 0"), "{text}");
    let info = step("info");
    assert!(
        info.contains("status: ok") && info.contains("full backup:"),
        "{text}"
    );
    assert!(
        step("member backup").contains("backup command must be run on the repository host"),
        "{text}"
    );
    assert!(text.contains("== end"), "{text}");
    let _ = std::fs::remove_dir_all(&w);
}

/// `dir` and everything under it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
