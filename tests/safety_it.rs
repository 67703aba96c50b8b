//! Split-brain paths around the HA core, on real PostgreSQL 15 and etcd: a ttl lowered before a
//! partition, a leader lock deleted by hand (also on a real kube-apiserver: the Lease), a
//! postmaster pgwarden did not start.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster::{Backend, Cluster, ControlPlane, Timings};
use pgwarden::postgres::postmaster_pid_file_alive;
use proxy::Proxy;
use reqwest::Method;

const LONG: Duration = Duration::from_secs(120);

/// Whether the PostgreSQL at `port` accepts a write right now (bounded by a second).
async fn accepts_write(port: u16) -> bool {
    let w = cluster::member_io::sql("127.0.0.1", port, "INSERT INTO probe VALUES (1)");
    matches!(
        tokio::time::timeout(Duration::from_secs(1), w).await,
        Ok(Ok(_))
    )
}

/// Members' configurations rewritten so that member `i` reaches etcd through `etcd[i]` and its
/// peers reach its REST API through `api[i]`: cutting both partitions it from everything but
/// its PostgreSQL port (which the test's write probes use).
async fn behind_proxies(c: &mut Cluster) -> Vec<(Proxy, Proxy)> {
    let etcd: SocketAddr = c
        .etcd()
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("etcd address");
    let mut proxies = Vec::new();
    for i in 0..c.members.len() {
        let api: SocketAddr = ([127, 0, 0, 1], c.members[i].api_port).into();
        let (e, a) = (Proxy::start(etcd).await, Proxy::start(api).await);
        let path = c.members[i].config.clone();
        let yaml = std::fs::read_to_string(&path).expect("config");
        let yaml = yaml
            .replace(
                &format!("hosts: {etcd}"),
                &format!("hosts: 127.0.0.1:{}", e.port),
            )
            .replace(
                &format!("connect_address: 127.0.0.1:{}", c.members[i].api_port),
                &format!("connect_address: 127.0.0.1:{}", a.port),
            );
        assert!(yaml.contains(&format!(":{}", e.port)), "{yaml}");
        std::fs::write(&path, yaml).expect("write config");
        proxies.push((e, a));
    }
    proxies
}

/// Lowering `ttl` with PATCH /config and then cutting the leader off: before the fix the
/// leader kept the old ttl's deadline while its lock sat on a lease of the new, shorter ttl,
/// and two members accepted writes for most of the old ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_ttl_shortens_a_partitioned_leaders_deadline() {
    let t = Timings {
        ttl: 30,
        loop_wait: 2,
        retry_timeout: 3,
    };
    let Some(mut c) = Cluster::start(Backend::Etcd, "itttl", 2, t).await else {
        return;
    };
    let (l, _) = c.healthy(LONG).await;
    c.sql(l, "CREATE TABLE probe (x int)")
        .await
        .expect("create the probe table");
    // Restart both members behind proxies (the data stays).
    for i in 0..2 {
        c.terminate(i);
    }
    let proxies = behind_proxies(&mut c).await;
    for i in 0..2 {
        c.spawn(i);
    }
    let (l, others) = c.healthy(LONG).await;
    let r = others[0];
    let (code, body) = c
        .api(
            l,
            Method::PATCH,
            "/config",
            Some(r#"{"ttl": 6, "loop_wait": 1, "retry_timeout": 2}"#),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // A few renewals with the new ttl (one every loop_wait / 2).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(accepts_write(c.members[l].pg_port).await);

    let (lp, rp) = (c.members[l].pg_port, c.members[r].pg_port);
    let cut = Instant::now();
    proxies[l].0.cut();
    proxies[l].1.cut();
    let mut old_stopped = None;
    let mut new_writes = None;
    let mut both = Vec::new();
    while cut.elapsed() < Duration::from_secs(60) && (old_stopped.is_none() || new_writes.is_none())
    {
        let round = cut.elapsed();
        let (ol, nr) = tokio::join!(accepts_write(lp), accepts_write(rp));
        if ol && nr {
            both.push(round);
        }
        if !ol && old_stopped.is_none() {
            old_stopped = Some(round);
        }
        if nr && new_writes.is_none() {
            new_writes = Some(round);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "after the cut: old leader refused writes at {old_stopped:?}, new leader wrote at {new_writes:?}"
    );
    if !both.is_empty() {
        c.dump_logs();
    }
    assert!(
        both.is_empty(),
        "two members accepted writes at {} probe rounds, from {:?} to {:?} after the cut",
        both.len(),
        both.first(),
        both.last()
    );
    assert!(new_writes.is_some(), "the replica never took over");
    // Healed: the old leader rejoins as a replica of the new one.
    proxies[l].0.heal();
    proxies[l].1.heal();
    let name = c.members[l].name.clone();
    c.wait_for("the old leader streaming again", LONG, || async {
        c.streaming(&name).await.then_some(())
    })
    .await;
}

/// The leader lock deleted by hand (etcd's leader key, or `kubectl delete lease`): the holder
/// stops writing at once, well before its deadline, and the cluster elects a leader again.
/// Before the fix, on etcd its next renewal re-created the key and it went on as if nothing
/// happened; on Kubernetes it carried on until a renewal answered 404, which it counted as a
/// store error that keeps the old deadline.
async fn a_leader_whose_lock_is_deleted_stops_writing(backend: Backend) {
    let t = Timings {
        ttl: 30,
        loop_wait: 2,
        retry_timeout: 3,
    };
    let Some(c) = Cluster::start(backend, "itdel", 2, t).await else {
        return;
    };
    let (l, _) = c.healthy(LONG).await;
    c.sql(l, "CREATE TABLE probe (x int)")
        .await
        .expect("create the probe table");
    assert!(accepts_write(c.members[l].pg_port).await);
    let deleted = Instant::now();
    c.delete_leader_lock().await;
    // Well before the lease deadline (ttl 30): its next renewal (every loop_wait / 2) finds the
    // lock gone. Refusals are asked of `writable`, which waits out a slow write instead of
    // counting it as refused.
    c.wait_for(
        "the old leader to refuse writes",
        Duration::from_secs(20),
        || async { (!c.writable(l).await).then_some(()) },
    )
    .await;
    eprintln!(
        "the old leader stopped writing {:?} after the deletion",
        deleted.elapsed()
    );
    // Then one leader again, and exactly one member writable.
    let leader = c
        .wait_for("a leader again", LONG, || async { c.leader().await })
        .await;
    let n = c.index(&leader);
    c.wait_for("writes on the leader", LONG, || async {
        accepts_write(c.members[n].pg_port).await.then_some(())
    })
    .await;
    for i in 0..2 {
        if i != n {
            assert!(
                !c.writable(i).await,
                "member {i} is writable beside the leader {leader}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lock_is_deleted_stops_writing_on_etcd() {
    a_leader_whose_lock_is_deleted_stops_writing(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lock_is_deleted_stops_writing_on_kubernetes() {
    a_leader_whose_lock_is_deleted_stops_writing(Backend::Kubernetes(ControlPlane::Shared)).await;
}

/// The hand-started postmaster, killed when the test ends whatever happened.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A replica's postmaster started by hand (as one left by Patroni or an earlier agent would
/// be): pgwarden restarts it as its own child, so it dies with the agent, before it may ever
/// be promoted. Before the fix it adopted it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postmaster_pgwarden_did_not_start_is_restarted_under_it() {
    let t = Timings {
        ttl: 10,
        loop_wait: 1,
        retry_timeout: 2,
    };
    let Some(mut c) = Cluster::start(Backend::Etcd, "itadopt", 2, t).await else {
        return;
    };
    let (_, others) = c.healthy(LONG).await;
    let r = others[0];
    let data = c.dir.join(&c.members[r].name).join("data");
    let pm = postmaster_pid_file_alive(&data).expect("the replica's postmaster");
    let argv: Vec<String> = std::fs::read(format!("/proc/{pm}/cmdline"))
        .expect("cmdline")
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    c.terminate(r);
    assert!(
        postmaster_pid_file_alive(&data).is_none(),
        "SIGTERM stops PostgreSQL"
    );
    // The same postmaster, started by the test in its own session as the postgres user.
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c.as_member_user(&mut cmd);
    let mut by_hand = KillOnDrop(cmd.spawn().expect("start postgres by hand"));
    let foreign = c
        .wait_for("the hand-started postmaster", LONG, || async {
            postmaster_pid_file_alive(&data)
        })
        .await;
    assert_eq!(foreign, by_hand.0.id() as i32);
    c.spawn(r);
    let agent = c.members[r].child.as_ref().expect("agent").id() as i32;
    let own = c
        .wait_for("a postmaster that is the agent's child", LONG, || async {
            postmaster_pid_file_alive(&data).filter(|p| parent_of(*p) == Some(agent))
        })
        .await;
    assert_ne!(own, foreign);
    assert!(
        by_hand.0.try_wait().expect("wait").is_some(),
        "the hand-started postmaster was stopped"
    );
    let name = c.members[r].name.clone();
    c.wait_for("the replica streaming again", LONG, || async {
        c.streaming(&name).await.then_some(())
    })
    .await;
}
