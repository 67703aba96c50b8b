//! What a live Patroni 3.0.2 writes in `synchronous_mode: on`, where the captures have nothing:
//! `synchronous_standby_names` naming two standbys (`synchronous_node_count: 2`), with member
//! names PostgreSQL would misread unquoted, and the `sync` key naming both. Three members of
//! Debian's Patroni on a throwaway etcd (the members' configuration is the one pgwarden's tests
//! use: pgwarden reads Patroni's); pgwarden must write the same value (but for the order of the
//! names) and the same key for the same standbys, and read Patroni's.

#[path = "support/cluster.rs"]
mod cluster;

use std::process::Command;
use std::time::Duration;

use cluster::{Backend, Cluster, Timings};
use pgwarden::dcs::SyncState;
use pgwarden::postgres::sync_names::{self, SyncRule};

const PATRONI: &str = "/usr/bin/patroni";
const PGBIN: &str = "/usr/lib/postgresql/15/bin";
const T: Timings = Timings {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 3,
};

/// Patroni is installed; without it the test skips, except under `CI=true`, where it fails.
fn patroni_available() -> bool {
    let ok = std::path::Path::new(PATRONI).is_file();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        ok || !ci,
        "CI=true but {PATRONI} is missing (Debian's patroni)"
    );
    if !ok {
        eprintln!("SKIPPED: {PATRONI} is missing");
    }
    ok
}

/// The cluster's members run Patroni; on drop each gets SIGTERM, so Patroni stops its
/// PostgreSQL (which is not its child, and would outlive a SIGKILL).
struct PatroniMembers(Cluster);

impl Drop for PatroniMembers {
    fn drop(&mut self) {
        for i in 0..self.0.members.len() {
            self.0.terminate(i);
        }
    }
}

/// Member `i`'s name: a dash makes PostgreSQL need it quoted.
fn name(i: usize) -> String {
    format!("db-{i}")
}

/// Patroni member `i`, from the harness's configuration with its name, Patroni's `bin_dir`
/// and `synchronous_node_count: 2`.
fn spawn_patroni(c: &mut Cluster, i: usize) {
    let m = &c.members[i];
    let yaml = std::fs::read_to_string(&m.config)
        .unwrap()
        .replacen(
            &format!("\nname: {}\n", m.name),
            &format!("\nname: {}\n", name(i)),
            1,
        )
        .replacen(
            "\n  dcs:\n",
            "\n  dcs:\n    synchronous_mode: true\n    synchronous_node_count: 2\n",
            1,
        )
        .replacen(
            "\npostgresql:\n",
            &format!("\npostgresql:\n  bin_dir: {PGBIN}\n"),
            1,
        );
    let config = c.dir.join(format!("patroni-{i}.yml"));
    std::fs::write(&config, yaml).unwrap();
    let log = std::fs::File::create(c.log_path(i)).unwrap();
    let mut cmd = Command::new(PATRONI);
    cmd.arg(&config)
        .current_dir(c.dir.join(&m.name))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env("HOME", &c.dir);
    c.as_member_user(&mut cmd);
    c.members[i].child = Some(cmd.spawn().expect("spawn patroni"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_synchronous_standbys_as_a_live_patroni_writes_them() {
    if !patroni_available() {
        return;
    }
    let Some(mut c) = Cluster::prepare(Backend::Etcd, "patsync", 3, T).await else {
        return;
    };
    for i in 0..3 {
        spawn_patroni(&mut c, i);
    }
    let c = PatroniMembers(c);
    let c = &c.0;
    // Patroni lists both standbys, then writes the key once PostgreSQL reports them.
    let (leader, key) = c
        .wait_for(
            "a sync key naming two standbys",
            Duration::from_secs(180),
            || async {
                let raw = c
                    .etcd()
                    .raw_value(&format!("/service/{}/sync", c.scope))
                    .await?;
                let key = SyncState::parse(&raw).ok()?;
                let leader = key.leader.clone()?;
                (key.members().len() == 2).then_some((leader, raw))
            },
        )
        .await;
    let l = (0..3).find(|i| name(*i) == leader).expect("leader's index");
    let ssn = c
        .sql(l, "SHOW synchronous_standby_names")
        .await
        .expect("ask the leader")
        .remove(0);
    eprintln!("Patroni 3.0.2 wrote synchronous_standby_names = {ssn:?}, sync = {key}");

    let standbys: Vec<String> = (0..3).filter(|i| *i != l).map(name).collect();
    let parsed = sync_names::parse(&ssn).expect("pgwarden reads Patroni's value");
    assert_eq!((parsed.num, parsed.names), (2, standbys.clone()));
    // The same form, count and quoting. The order is the one difference: Patroni lists the
    // standbys as it ranked them when it changed the list (synchronous first, then the most
    // advanced), pgwarden by name, so its list does not change when only positions do. Every
    // listed standby must confirm (the count is the list's length), so PostgreSQL treats both
    // alike.
    let (count, list) = ssn.split_once(" (").expect("N (names)");
    let mut names: Vec<&str> = list.trim_end_matches(')').split(',').collect();
    names.sort();
    assert_eq!(
        format!("{count} ({})", names.join(",")),
        sync_names::render(SyncRule::Priority, 2, &standbys, false),
        "pgwarden writes synchronous_standby_names as Patroni does, in name order"
    );
    let ours = SyncState {
        leader: Some(leader.clone()),
        sync_standby: Some(standbys.join(",")),
        quorum: None,
    };
    let theirs: serde_json::Value = serde_json::from_str(&key).unwrap();
    assert_eq!(
        serde_json::to_value(&ours).unwrap(),
        theirs,
        "pgwarden writes the sync key as Patroni does"
    );
}
