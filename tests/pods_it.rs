//! pgwarden as the pods it runs in: `helm/pgwarden` installed on a real single-node Kubernetes
//! built on this machine (`tests/k8s/node.sh`: kubelet, containerd, kube-proxy, the controllers
//! and scheduler, CoreDNS), running the images of `docker/` built here. Clients write through a
//! pgBouncer pod found by its Service's DNS name, routed by kube-proxy to the pod the primary
//! Service's endpoints name.
//!
//! Every test is `#[ignore]`d: the node needs root, builds for minutes the first time, and owns
//! host-wide networking while it runs. `scripts/pods.sh` starts it and runs these, one at a time
//! (`--smoke`: the first only). Each test installs a release in a namespace of its own and
//! prints its figures; with `PODS_REPORT` set they are appended to that file too.

#[path = "support/helm.rs"]
mod helm;
#[path = "support/k8s.rs"]
mod k8s;
#[path = "support/node.rs"]
mod node;
#[path = "support/poll.rs"]
mod poll;

use std::io::Write;
use std::time::Duration;

use kube::api::DeleteParams;
use node::{Node, Release, acked_after, attempts, epoch, start_writer, write_gap};

/// Timings of the test releases: a failover within a minute. The chart's defaults are
/// Patroni's (30/10/10).
const TTL: u64 = 15;
const LOOP_WAIT: u64 = 3;
const RETRY_TIMEOUT: u64 = 5;

/// How long a release may take to come up: pods scheduled, images present, bootstrap, two
/// clones, every probe passing, on 2 cores shared with the control plane.
const UP: Duration = Duration::from_secs(300);

fn values(extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        format!("dcs.ttl={TTL}"),
        format!("dcs.loop_wait={LOOP_WAIT}"),
        format!("dcs.retry_timeout={RETRY_TIMEOUT}"),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.into_iter()
        .flat_map(|s| ["--set".to_string(), s])
        .collect()
}

/// A figure for the report: printed, and appended to `PODS_REPORT` when set.
fn report(line: &str) {
    eprintln!("REPORT {line}");
    let line = format!("- {line}");
    if let Some(path) = std::env::var_os("PODS_REPORT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open PODS_REPORT");
        writeln!(f, "{line}").unwrap();
    }
}

async fn pod_ip(r: &Release<'_>, name: &str) -> String {
    let members = r.members().await;
    Release::ip_of(&members[name]).unwrap_or_else(|| panic!("{name} has no IP"))
}

/// The writer's DNS name for the release's pgBouncer Service.
fn pgbouncer_host(r: &Release<'_>) -> String {
    format!("{}-pgbouncer.{}.svc.cluster.local", r.name, r.ns)
}

/// Install, three pods Ready with the Lease and labels right and the Services routing by
/// them, writes through pgBouncer by DNS name; then the primary's container killed once (back
/// in place), and then kept crashing: a failover the Service follows, and the crashed member
/// back as a replica in its restarted container. (The smoke `scripts/pods.sh --smoke` runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the node of scripts/pods.sh"]
async fn install_then_kill_the_primary_container() {
    let node = Node::get().await;
    let started = std::time::Instant::now();
    let r = Release::install(&node, "podsmoke", &values(&[]), 3).await;
    let primary = r.wait_healthy(3, UP).await;
    report(&format!(
        "install → 3 pods Ready, Services routing: {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    // pgBouncer's own pods, three by default, Ready too.
    k8s::eventually("3 pgBouncer pods Ready", UP, || async {
        let lp = kube::api::ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=pgbouncer",
            r.name
        ));
        let pods = r.pods_api().list(&lp).await.ok()?.items;
        (pods.iter().filter(|p| Release::is_ready(p)).count() == 3).then_some(())
    })
    .await;

    start_writer(&r, "writer", &pgbouncer_host(&r), 6432).await;
    let primary_ip = pod_ip(&r, &primary).await;
    acked_after(&r, "writer", 0.0, Some(&primary_ip), UP).await;

    // The primary's postgres container dies (SIGKILL to its PID 1, tini: the agent and
    // PostgreSQL go with it). The kubelet restarts it at once, and the agent, finding the
    // Lease still its own, carries on as the primary after PostgreSQL's crash recovery
    // (Patroni does the same): no failover, and no data to rewind.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = r.members().await;
    let restarts = Release::restarts(&pods[&primary], "postgres");
    let killed_at = epoch();
    node.kill_container(
        &Release::container_id(&pods[&primary], "postgres").expect("a container id"),
    );
    let after = r.wait_healthy(3, UP).await;
    let after_ip = pod_ip(&r, &after).await;
    let acked = acked_after(
        &r,
        "writer",
        killed_at,
        Some(&after_ip),
        Duration::from_secs(120),
    )
    .await;
    let pods = r.members().await;
    assert!(
        Release::restarts(&pods[&primary], "postgres") > restarts,
        "the kubelet restarted it"
    );
    report(&format!(
        "primary container killed once → {}; first write through pgBouncer {:.1} s after the kill",
        if after == primary {
            "restarted in place, still the primary".to_string()
        } else {
            format!("failover to {after}")
        },
        acked.end - killed_at
    ));

    // A container that keeps crashing: killed again each time the kubelet brings it back, so
    // it stays down longer than ttl (the kubelet's back-off grows 10 s, 20 s, ...). Another
    // member takes over, the primary Service follows, and the crashed member, once let be,
    // rejoins as a replica.
    let primary = after;
    let killed_at = epoch();
    let mut killed = std::collections::BTreeSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(8 * TTL);
    let new_primary = loop {
        if let Some(h) = r.lease_holder().await.filter(|h| *h != primary) {
            break h;
        }
        assert!(
            std::time::Instant::now() < until,
            "no other member took the Lease:\n{}",
            r.describe()
        );
        let pods = r.members().await;
        let running = Release::running(&pods[&primary], "postgres");
        if let Some(id) = Release::container_id(&pods[&primary], "postgres").filter(|_| running)
            && killed.insert(id.clone())
        {
            node.kill_container(&id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new_ip = pod_ip(&r, &new_primary).await;
    let routed = r
        .wait_primary_routed_to(&new_ip, Duration::from_secs(60))
        .await;
    let acked = acked_after(
        &r,
        "writer",
        killed_at,
        Some(&new_ip),
        Duration::from_secs(120),
    )
    .await;
    report(&format!(
        "primary container crash-looping ({} kills) → failover to {new_primary}: Service endpoints {:.1} s, first write through pgBouncer {:.1} s after the first kill (ttl {TTL}, loop_wait {LOOP_WAIT})",
        killed.len(),
        routed - killed_at,
        acked.end - killed_at
    ));
    // Whole again once the kubelet's back-off lets it run: the crashed member a replica.
    let now_primary = r.wait_healthy(3, UP).await;
    assert_eq!(now_primary, new_primary);
    let pods = r.members().await;
    assert_eq!(
        Release::role_of(&pods[&primary]).as_deref(),
        Some("replica")
    );
    r.remove().await;
}

/// A release of `name` (with `extra` values), healthy, with a client writing through its
/// pgBouncer Service that has had a write acknowledged; and its primary.
async fn writing_release<'a>(node: &'a Node, name: &str, extra: &[&str]) -> (Release<'a>, String) {
    let r = Release::install(node, name, &values(extra), 3).await;
    let primary = r.wait_healthy(3, UP).await;
    start_writer(&r, "writer", &pgbouncer_host(&r), 6432).await;
    acked_after(&r, "writer", 0.0, None, UP).await;
    (r, primary)
}

/// The primary's pod deleted (SIGTERM, the graceful hand-off): a failover the Service follows,
/// and the StatefulSet's new pod on the same volume back as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the node of scripts/pods.sh"]
async fn delete_the_primary_pod() {
    let node = Node::get().await;
    let (r, primary) = writing_release(&node, "poddelete", &[]).await;
    let old_uid = r.members().await[&primary].metadata.uid.clone();

    let deleted_at = epoch();
    r.pods_api()
        .delete(&primary, &DeleteParams::default())
        .await
        .unwrap();
    let new_primary = k8s::eventually(
        "a new Lease holder",
        Duration::from_secs(4 * TTL + 60),
        || async { r.lease_holder().await.filter(|h| *h != primary) },
    )
    .await;
    let new_ip = pod_ip(&r, &new_primary).await;
    let acked = acked_after(
        &r,
        "writer",
        deleted_at,
        Some(&new_ip),
        Duration::from_secs(120),
    )
    .await;
    let now_primary = r.wait_healthy(3, UP).await;
    assert_eq!(now_primary, new_primary);
    let pods = r.members().await;
    assert_ne!(
        pods[&primary].metadata.uid, old_uid,
        "the StatefulSet made a new pod"
    );
    assert_eq!(
        Release::role_of(&pods[&primary]).as_deref(),
        Some("replica")
    );
    let (gap, failed) = write_gap(&attempts(&r, "writer").await, deleted_at, acked.end);
    report(&format!(
        "primary pod deleted → first write on the new primary: {:.1} s; longest write gap {gap:.1} s, {failed} failed attempts",
        acked.end - deleted_at
    ));
    r.remove().await;
}

/// `kubectl rollout restart statefulset` under a client writing through pgBouncer: every pod
/// replaced, from the highest ordinal down, each once the one before is Ready again; when the
/// primary's pod stops, pgwarden hands the lock over. Reports the write gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the node of scripts/pods.sh"]
async fn rollout_restart_write_gap() {
    let node = Node::get().await;
    let (r, primary) = writing_release(&node, "podroll", &[]).await;
    let uids: Vec<_> = r
        .members()
        .await
        .values()
        .map(|p| p.metadata.uid.clone())
        .collect();

    tokio::time::sleep(Duration::from_secs(5)).await;
    let from = epoch();
    node.kubectl_ok(&["rollout", "restart", "statefulset", &r.name, "-n", &r.ns]);
    node.kubectl_ok(&[
        "rollout",
        "status",
        "statefulset",
        &r.name,
        "-n",
        &r.ns,
        "--timeout=600s",
    ]);
    let after = r.wait_healthy(3, UP).await;
    let pods = r.members().await;
    assert!(
        pods.values().all(|p| !uids.contains(&p.metadata.uid)),
        "every pod replaced"
    );
    // Writes go on after it.
    let acked = acked_after(&r, "writer", epoch(), None, Duration::from_secs(60)).await;
    let all = attempts(&r, "writer").await;
    let (gap, failed) = write_gap(&all, from, acked.end);
    for (n, why) in node::failures(&all, from, acked.end) {
        eprintln!("{n} × {why}");
    }
    let tried = all
        .iter()
        .filter(|a| a.start >= from && a.start <= acked.end)
        .count();
    report(&format!(
        "rollout restart (3 pods, primary {primary} → {after}): {:.0} s; longest write gap {gap:.1} s; {failed} of {tried} attempts failed",
        acked.end - from
    ));
    r.remove().await;
}

/// Switchovers through the Service that follows the role label, then through the primary
/// EndpointSlice pgwarden keeps itself: the time from the request to the Service's endpoints
/// naming the new primary alone, and to the first write through the Service (kube-proxy's
/// rules) landing on it.
async fn switchover_routing(node: &Node, name: &str, slice: bool) -> Vec<(f64, f64)> {
    let extra: &[&str] = if slice {
        &[
            "kubernetes.primaryEndpointSlice=true",
            "pgbouncer.replicas=1",
        ]
    } else {
        &["pgbouncer.replicas=1"]
    };
    let r = Release::install(node, name, &values(extra), 3).await;
    let mut primary = r.wait_healthy(3, UP).await;
    // Straight to the primary Service (no pgBouncer between): what kube-proxy routes.
    let svc = format!("{}-primary.{}.svc.cluster.local", r.name, r.ns);
    start_writer(&r, "writer", &svc, 5432).await;
    acked_after(&r, "writer", 0.0, None, UP).await;
    let mut out = Vec::new();
    let rounds = std::env::var("PODS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let members = r.members().await;
        let candidate = members.keys().find(|m| **m != primary).unwrap().clone();
        let new_ip = pod_ip(&r, &candidate).await;
        let at = epoch();
        let list = r.exec(
            &primary,
            &[
                "patronictl",
                "switchover",
                "--leader",
                &primary,
                "--candidate",
                &candidate,
                "--force",
            ],
        );
        assert!(
            list.status.success(),
            "switchover: {}{}",
            String::from_utf8_lossy(&list.stdout),
            String::from_utf8_lossy(&list.stderr)
        );
        let routed = r
            .wait_primary_routed_to(&new_ip, Duration::from_secs(120))
            .await;
        let acked = acked_after(&r, "writer", at, Some(&new_ip), Duration::from_secs(120)).await;
        eprintln!(
            "{name} round {round}: endpoints {:.2} s, first write {:.2} s",
            routed - at,
            acked.end - at
        );
        out.push((routed - at, acked.end - at));
        primary = r.wait_healthy(3, UP).await;
        assert_eq!(primary, candidate);
    }
    r.remove().await;
    out
}

/// `kubectl exec <pod> -- patronictl list` and a switchover through it; an eviction that the
/// PodDisruptionBudget allows and a second one it refuses while the first pod is away; and the
/// routing time after a switchover with and without the primary EndpointSlice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the node of scripts/pods.sh"]
async fn patronictl_eviction_and_routing() {
    let node = Node::get().await;
    let r = Release::install(&node, "podctl", &values(&[]), 3).await;
    let primary = r.wait_healthy(3, UP).await;

    // patronictl in a pod, on the pod's ServiceAccount.
    let replica = r
        .members()
        .await
        .keys()
        .find(|m| **m != primary)
        .unwrap()
        .clone();
    let list = r.exec(&replica, &["patronictl", "list"]);
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    for m in r.members().await.keys() {
        assert!(text.contains(m.as_str()), "{m} listed:\n{text}");
    }
    let leader_line = text
        .lines()
        .find(|l| l.contains("Leader"))
        .unwrap_or_else(|| panic!("a Leader row:\n{text}"));
    assert!(leader_line.contains(&primary), "{text}");
    // Patroni 3.0.2's table: replicas are `running` (the `streaming` state came later).
    let replicas = text
        .lines()
        .filter(|l| l.contains("| Replica ") && l.contains("| running "))
        .count();
    assert_eq!(replicas, 2, "two running replicas:\n{text}");
    let out = r.exec(
        &replica,
        &[
            "patronictl",
            "switchover",
            "--leader",
            &primary,
            "--candidate",
            &replica,
            "--force",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k8s::eventually("the candidate healthy as primary", UP, || async {
        (r.healthy(3).await.ok()? == replica).then_some(())
    })
    .await;

    // Evictions: the PodDisruptionBudget (maxUnavailable 1) lets one member go at a time.
    let members: Vec<String> = r.members().await.keys().cloned().collect();
    let (a, b) = (&members[0], &members[1]);
    assert_eq!(node.evict(&r.ns, a), 201, "the first eviction is allowed");
    assert_eq!(
        node.evict(&r.ns, b),
        429,
        "a second one, while {a} is away, is refused"
    );
    r.wait_healthy(3, UP).await;
    k8s::eventually(
        "the second eviction, once the first pod is back",
        Duration::from_secs(120),
        || async { (node.evict(&r.ns, b) == 201).then_some(()) },
    )
    .await;
    r.wait_healthy(3, UP).await;
    report(
        "eviction: the second refused (429) while the first pod was away, allowed once it was back",
    );
    r.remove().await;

    // Routing after a switchover: by the role label, then by pgwarden's EndpointSlice.
    let by_label = switchover_routing(&node, "podlabel", false).await;
    let by_slice = switchover_routing(&node, "podslice", true).await;
    let fmt = |v: &[(f64, f64)], i: usize| {
        v.iter()
            .map(|p| format!("{:.2}", if i == 0 { p.0 } else { p.1 }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report(&format!(
        "switchover → primary Service endpoints on the new primary: label selector {} s; EndpointSlice {} s",
        fmt(&by_label, 0),
        fmt(&by_slice, 0)
    ));
    report(&format!(
        "switchover → first write through the primary Service on the new primary: label selector {} s; EndpointSlice {} s",
        fmt(&by_label, 1),
        fmt(&by_slice, 1)
    ));
}
