//! The container image (docker/Dockerfile) on a real Docker engine: three members, each a
//! container of the image on the host's network configured by `PATRONI_*` variables alone,
//! on a real etcd in a container of its own (Debian's etcd-server on the same base).
//! Bootstrap, `patronictl list` inside a container, the HEALTHCHECK, the primary's container
//! killed (failover, then the old primary rejoining), the primary's container stopped with
//! SIGTERM (a clean stop within the grace period, no acknowledged row lost), the entrypoint
//! without any configuration, and the pgBouncer image in front of the primary. The engine and
//! images are the test's own (`tests/docker/`).

#[path = "docker/engine.rs"]
mod engine;
#[path = "docker/member.rs"]
mod member;
#[path = "support/member_io.rs"]
mod member_io;
#[path = "support/poll.rs"]
mod poll;

use std::time::{Duration, Instant};

use engine::Engine;
use member::Member;
use member_io::distinct_ports;
use pgwarden::dcs::etcd::{EtcdDcs, EtcdSettings};
use pgwarden::dcs::{ClusterView, Dcs};

const SCOPE: &str = "containers";
/// Bounds for what should take seconds: a failure, never a speed measurement.
const LONG: Duration = Duration::from_secs(180);
/// `docker stop`'s grace period: SIGTERM, then SIGKILL if the container still runs.
const STOP_GRACE_S: u64 = 60;

struct Scenario {
    engine: Engine,
    /// Where the etcd container listens: `127.0.0.1:<port>`.
    etcd: String,
    observer: EtcdDcs,
    members: Vec<Member>,
    http: reqwest::Client,
}

impl Scenario {
    async fn view(&self) -> Option<ClusterView> {
        self.observer.load(true).await.ok()
    }

    fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .expect("a member")
    }

    /// Polls `check` until it gives `Some`; on time out, fails with the containers' logs.
    async fn wait_for<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        if let Some(v) = member_io::poll_until(LONG, Duration::from_millis(300), check).await {
            return v;
        }
        self.dump_logs();
        panic!(
            "timed out after {LONG:?} waiting for {what}; view: {:?}",
            self.view().await
        );
    }

    fn dump_logs(&self) {
        for m in &self.members {
            let log = self.engine.logs(&m.name);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines.len().saturating_sub(60);
            eprintln!(
                "===== {} (last lines) =====\n{}",
                m.name,
                lines[tail..].join("\n")
            );
        }
    }

    /// A leader other than `not`, and every member of `replicas` streaming from it.
    async fn healthy(&self, not: Option<&str>, replicas: &[&str]) -> String {
        self.wait_for("a leader and streaming replicas", || async {
            let v = self.view().await?;
            let leader = v.leader.as_ref()?.name.clone();
            let ok = Some(leader.as_str()) != not
                && replicas
                    .iter()
                    .filter(|r| **r != leader)
                    .all(|r| member_io::streaming_on(&v, r, v.timeline()));
            ok.then_some(leader)
        })
        .await
    }

    async fn sql(&self, name: &str, sql: &str) -> Result<Vec<String>, String> {
        member_io::sql("127.0.0.1", self.member(name).pg_port, sql).await
    }

    /// Runs `sql` on `name` until it succeeds (the member may still be promoting).
    async fn sql_ok(&self, name: &str, sql: &str) -> Vec<String> {
        self.wait_for(&format!("{sql} on {name}"), || async {
            self.sql(name, sql).await.ok()
        })
        .await
    }

    /// Waits until every id in `ids` is on `name`.
    async fn has_rows(&self, name: &str, ids: std::ops::RangeInclusive<i32>) {
        let q = format!(
            "SELECT count(*) FROM acked WHERE id BETWEEN {} AND {}",
            ids.start(),
            ids.end()
        );
        let want = (ids.end() - ids.start() + 1).to_string();
        self.wait_for(&format!("rows {ids:?} on {name}"), || async {
            (self.sql(name, &q).await.ok()?.first()? == &want).then_some(())
        })
        .await;
    }
}

/// etcd as a container `etcd` on the host's network, clients at `127.0.0.1:client_port`;
/// its address.
fn run_etcd(engine: &Engine, client_port: u16, peer_port: u16) -> String {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        "etcd",
        "--network",
        "host",
        &engine.etcd_image,
        "--name=test",
        "--data-dir=/tmp/etcd",
        &format!("--listen-client-urls={client}"),
        &format!("--advertise-client-urls={client}"),
        &format!("--listen-peer-urls={peer}"),
        &format!("--initial-advertise-peer-urls={peer}"),
        &format!("--initial-cluster=test={peer}"),
    ]);
    format!("127.0.0.1:{client_port}")
}

/// The test's own view of the store, once the etcd container answers.
async fn connect_observer(etcd: &str) -> EtcdDcs {
    let until = Instant::now() + LONG;
    loop {
        let observer = EtcdDcs::connect(EtcdSettings {
            endpoints: vec![format!("http://{etcd}")],
            namespace: "/service".into(),
            scope: SCOPE.into(),
            name: "test-observer".into(),
            ttl: Duration::from_secs(30),
            retry_timeout: Duration::from_secs(3),
            username: None,
            password: None,
        })
        .await;
        if let Ok(o) = observer
            && o.load(true).await.is_ok()
        {
            return o;
        }
        assert!(Instant::now() < until, "the etcd container did not answer");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_a_cluster_configured_by_environment() {
    let Some(engine) = Engine::start_or_skip("container_it") else {
        return;
    };
    let ports = distinct_ports(8);
    let etcd = run_etcd(&engine, ports[6], ports[7]);
    let observer = connect_observer(&etcd).await;
    let members: Vec<Member> = (0..3)
        .map(|i| Member {
            name: format!("m{i}"),
            pg_port: ports[2 * i],
            api_port: ports[2 * i + 1],
            // The last one started as `patroni` (the symlink, no argument: environment only),
            // the others through the image's own entrypoint.
            args: if i == 2 {
                vec!["patroni".into()]
            } else {
                vec![]
            },
        })
        .collect();
    let s = Scenario {
        engine,
        etcd,
        observer,
        members,
        http: reqwest::Client::builder().no_proxy().build().expect("http"),
    };
    entrypoint_without_configuration(&s.engine);
    let etcd_addr = s.etcd.clone();
    for m in &s.members {
        m.run(&s.engine, SCOPE, &etcd_addr);
    }
    let leader = bootstrap(&s).await;
    let leader = kill_the_primary(&s, leader).await;
    let leader = stop_the_primary(&s, leader).await;
    pgbouncer_in_front_of(&s, &leader).await;
    member_from_a_mounted_file(&s).await;
}

/// A fourth member configured by a YAML file mounted at /etc/pgwarden/patroni.yml (no
/// `PATRONI_*` variable) joins as a streaming replica, and its HEALTHCHECK passes.
async fn member_from_a_mounted_file(s: &Scenario) {
    let ports = distinct_ports(2);
    let yaml = s.engine.dir().join("patroni.yml");
    std::fs::write(
        &yaml,
        format!(
            "scope: {SCOPE}\n\
             name: m3\n\
             etcd3:\n  hosts: {etcd}\n\
             restapi:\n  listen: 127.0.0.1:{api}\n  connect_address: 127.0.0.1:{api}\n\
             postgresql:\n\
             \x20 listen: 127.0.0.1:{pg}\n\
             \x20 connect_address: 127.0.0.1:{pg}\n\
             \x20 data_dir: /var/lib/postgresql/data/pgdata\n\
             \x20 authentication:\n\
             \x20   superuser: {{username: postgres, password: postgres}}\n\
             \x20   replication: {{username: replicator, password: replicator}}\n",
            etcd = s.etcd,
            api = ports[1],
            pg = ports[0],
        ),
    )
    .expect("write patroni.yml");
    let mount = format!("{}:/etc/pgwarden/patroni.yml:ro", yaml.display());
    s.engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        "m3",
        "--network",
        "host",
        "-v",
        "m3-data:/var/lib/postgresql/data",
        "-v",
        &mount,
        &s.engine.pgwarden_image,
    ]);
    s.wait_for("m3 (configured by a file) streaming", || async {
        let v = s.view().await?;
        member_io::streaming_on(&v, "m3", v.timeline()).then_some(())
    })
    .await;
    let n = member_io::sql("127.0.0.1", ports[0], "SELECT count(*) FROM acked").await;
    assert_eq!(n, Ok(vec!["300".to_owned()]), "rows on m3");
    // The HEALTHCHECK finds the REST API's address in the file.
    s.wait_for("m3 healthy (HEALTHCHECK)", || async {
        (s.engine.inspect("m3", "{{.State.Health.Status}}") == "healthy").then_some(())
    })
    .await;
}

const NAMES: [&str; 3] = ["m0", "m1", "m2"];

/// One leader, two streaming replicas; `patronictl list` inside a container sees them; every
/// container healthy. Then shorter timings for the failovers to come, and pg_rewind for the
/// killed primary's return. The leader.
async fn bootstrap(s: &Scenario) -> String {
    let leader = s.healthy(None, &NAMES).await;
    eprintln!("bootstrapped: {leader} leads");
    let list = s.engine.docker_ok(&["exec", "m1", "patronictl", "list"]);
    eprintln!("{list}");
    for n in NAMES {
        assert!(
            list.contains(&format!("| {n} ")),
            "{n} missing from:\n{list}"
        );
    }
    assert_eq!(list.matches("| Leader ").count(), 1, "{list}");
    assert_eq!(list.matches("| Replica ").count(), 2, "{list}");
    assert_eq!(list.matches("| running ").count(), 3, "{list}");
    let (code, body) = member_io::api(
        &s.http,
        "127.0.0.1",
        s.member(&leader).api_port,
        reqwest::Method::PATCH,
        "/config",
        Some(r#"{"ttl": 10, "loop_wait": 2, "retry_timeout": 3, "postgresql": {"use_pg_rewind": true}}"#),
    )
    .await;
    assert_eq!(code, 200, "PATCH /config: {body}");
    for n in NAMES {
        s.wait_for(&format!("{n} healthy (HEALTHCHECK)"), || async {
            (s.engine.inspect(n, "{{.State.Health.Status}}") == "healthy").then_some(())
        })
        .await;
    }
    leader
}

/// The primary's container killed: a replica takes over and takes writes; the old primary's
/// container started again rejoins as a replica. The new leader.
async fn kill_the_primary(s: &Scenario, leader: String) -> String {
    s.sql_ok(
        &leader,
        "CREATE TABLE acked (id int PRIMARY KEY, phase text)",
    )
    .await;
    s.sql_ok(
        &leader,
        "INSERT INTO acked SELECT g, 'before kill' FROM generate_series(1, 100) g",
    )
    .await;
    for r in NAMES.iter().filter(|n| **n != leader) {
        s.has_rows(r, 1..=100).await;
    }
    s.engine.docker_ok(&["kill", &leader]);
    let killed = leader;
    let leader = s.healthy(Some(&killed), &[]).await;
    eprintln!("{killed} killed: {leader} leads");
    s.sql_ok(
        &leader,
        "INSERT INTO acked SELECT g, 'after kill' FROM generate_series(101, 200) g",
    )
    .await;
    s.has_rows(&leader, 1..=200).await;
    s.engine.docker_ok(&["start", &killed]);
    let again = s.healthy(None, &NAMES).await;
    assert_eq!(again, leader, "the leader changed while {killed} rejoined");
    s.has_rows(&killed, 1..=200).await;
    eprintln!("{killed} rejoined as a replica");
    leader
}

/// The primary's container stopped (SIGTERM): pgwarden stops PostgreSQL cleanly within the
/// grace period (exit status 0, not SIGKILL's 137), every row acknowledged before is on the
/// new primary, and the old one started again rejoins. The new leader.
async fn stop_the_primary(s: &Scenario, leader: String) -> String {
    for id in 201..=300 {
        s.sql(
            &leader,
            &format!("INSERT INTO acked VALUES ({id}, 'before stop')"),
        )
        .await
        .unwrap_or_else(|e| panic!("insert {id} on {leader}: {e}"));
    }
    let grace = STOP_GRACE_S.to_string();
    s.engine.docker_ok(&["stop", "-t", &grace, &leader]);
    let exit = s
        .engine
        .inspect(&leader, "{{.State.ExitCode}} {{.State.OOMKilled}}");
    let log = s.engine.logs(&leader);
    if exit != "0 false" {
        s.dump_logs();
    }
    assert_eq!(exit, "0 false", "{leader} did not exit cleanly on SIGTERM");
    assert!(
        log.contains("database system is shut down"),
        "{leader}'s log shows no clean PostgreSQL shutdown:\n{log}"
    );
    let stopped = leader;
    let leader = s.healthy(Some(&stopped), &[]).await;
    eprintln!("{stopped} stopped (SIGTERM, exit 0): {leader} leads");
    s.has_rows(&leader, 1..=300).await;
    s.engine.docker_ok(&["start", &stopped]);
    s.healthy(None, &NAMES).await;
    s.has_rows(&stopped, 1..=300).await;
    leader
}

/// The image started with no configuration at all says what it needs and exits 2.
fn entrypoint_without_configuration(engine: &Engine) {
    let out = engine.docker(&["run", "--rm", "--network", "host", &engine.pgwarden_image]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needed in [
        "/etc/pgwarden/patroni.yml",
        "PATRONI_CONFIGURATION",
        "PATRONI_SCOPE",
    ] {
        assert!(stderr.contains(needed), "no mention of {needed}: {stderr}");
    }
}

/// The pgBouncer image, configured by a mounted file, passes a client through to the primary.
async fn pgbouncer_in_front_of(s: &Scenario, leader: &str) {
    let port = distinct_ports(1)[0];
    let ini = s.engine.dir().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n\
             postgres = host=127.0.0.1 port={} dbname=postgres user=postgres password=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             unix_socket_dir =\n\
             logfile =\n\
             pidfile =\n",
            s.member(leader).pg_port
        ),
    )
    .expect("write pgbouncer.ini");
    let mount = format!("{}:/etc/pgbouncer/pgbouncer.ini:ro", ini.display());
    s.engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        "pgbouncer",
        "--network",
        "host",
        "-v",
        &mount,
        &s.engine.pgbouncer_image,
    ]);
    let uid = s.engine.docker_ok(&["exec", "pgbouncer", "id", "-u"]);
    assert_eq!(uid.trim(), "999", "pgBouncer runs as root");
    let count = s
        .wait_for("a query through pgBouncer", || async {
            member_io::sql("127.0.0.1", port, "SELECT count(*) FROM acked")
                .await
                .ok()
        })
        .await;
    assert_eq!(count, ["300"]);
}
