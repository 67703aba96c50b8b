//! The agent's logging never blocks it: a member whose stdout and stderr are a pipe nobody
//! reads (full at 64 KiB) keeps answering REST, still fences its PostgreSQL when the store goes
//! away, and becomes a writable primary again when the store returns. Real PostgreSQL 15, real
//! etcd, a real `pgwarden run` process.

#[path = "support/cluster.rs"]
mod cluster;

use std::os::fd::AsRawFd;
use std::time::Duration;

use cluster::{Backend, Cluster, Timings};

const T: Timings = Timings {
    ttl: 6,
    loop_wait: 1,
    retry_timeout: 2,
};

/// Bytes waiting in the pipe and the pipe's capacity.
fn pipe_fill(reader: &std::io::PipeReader) -> (usize, usize) {
    let fd = reader.as_raw_fd();
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; F_GETPIPE_SZ takes no argument. `fd` is open.
    let (r, cap) = unsafe {
        (
            libc::ioctl(fd, libc::FIONREAD, &mut queued),
            libc::fcntl(fd, libc::F_GETPIPE_SZ),
        )
    };
    assert!(
        r == 0 && cap > 0,
        "FIONREAD/F_GETPIPE_SZ on the pipe failed"
    );
    (queued as usize, cap as usize)
}

/// Full: a line that does not fit any more (at most one page: writes up to PIPE_BUF are
/// atomic) blocks its writer.
fn pipe_full(reader: &std::io::PipeReader) -> bool {
    let (queued, cap) = pipe_fill(reader);
    queued + 4096 >= cap
}

fn vm_rss(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l.trim_start_matches("VmRSS:").trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// `GET /health` answered at all (any status) within 5 s.
async fn health_answers(http: &reqwest::Client, port: u16) -> Option<u16> {
    http.get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// The member's PostgreSQL was fenced: stopped (its port refuses connections) or running
/// read-only. A server that merely hangs (say, on its own full stderr pipe) is not fenced.
async fn fenced(c: &Cluster) -> Option<&'static str> {
    let port = c.members[0].pg_port;
    if tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        return Some("the postmaster is gone");
    }
    match c.sql(0, "SELECT pg_is_in_recovery()").await {
        Ok(r) if r == ["t"] => Some("PostgreSQL runs read-only"),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_with_stuck_stdout_keeps_answering_and_fences() {
    let Some(mut c) = Cluster::prepare(Backend::Etcd, "itlog", 1, T).await else {
        return;
    };
    let pipe = c.spawn_unread_pipe(0, "debug");
    let pid = c.members[0].child.as_ref().expect("spawned").id();
    let port = c.members[0].api_port;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let long = Duration::from_secs(120);

    // The member bootstraps and leads; at debug level its output fills the pipe on the way.
    c.wait_for("the member to lead", long, || async { c.leader().await })
        .await;
    c.wait_for("writes on the leader", long, || async {
        c.sql(
            0,
            "CREATE TABLE IF NOT EXISTS t (id int); INSERT INTO t VALUES (1)",
        )
        .await
        .ok()
    })
    .await;
    c.wait_for("the unread pipe to fill", long, || async {
        pipe_full(&pipe).then_some(())
    })
    .await;
    eprintln!(
        "pipe full ({:?}); agent VmRSS {}",
        pipe_fill(&pipe),
        vm_rss(pid)
    );
    // Let every thread that logs run into the full pipe.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // With stdout stuck the agent keeps working: REST answers, the leader keeps its lock.
    for _ in 0..10 {
        let code = health_answers(&http, port).await;
        assert_eq!(code, Some(200), "GET /health with stdout stuck");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(c.leader().await.as_deref(), Some("m0"));
    c.sql(0, "INSERT INTO t VALUES (2)")
        .await
        .expect("write on the leader with its agent's stdout stuck");

    // The store goes away: by its lease deadline (ttl − margin after the last renewal) the
    // leader's PostgreSQL must stop accepting writes. Generous bound: ttl plus a minute.
    c.etcd_mut().stop();
    let how = c
        .wait_for(
            "the leader's PostgreSQL to be fenced without the store",
            Duration::from_secs(T.ttl + 60),
            || async { fenced(&c).await },
        )
        .await;
    eprintln!("fenced: {how}");
    assert!(
        c.sql(0, "INSERT INTO t VALUES (3)").await.is_err(),
        "no writes without the store"
    );
    assert!(
        health_answers(&http, port).await.is_some(),
        "GET /health answers during the store outage"
    );

    // The store returns: the member leads again and its PostgreSQL takes writes.
    c.etcd_mut().start().await;
    c.wait_for("the member to lead again", long, || async {
        c.leader().await
    })
    .await;
    c.wait_for("writes after the store returned", long, || async {
        c.sql(0, "INSERT INTO t VALUES (4)").await.ok()
    })
    .await;
    assert!(
        c.members[0]
            .child
            .as_mut()
            .is_some_and(|ch| matches!(ch.try_wait(), Ok(None))),
        "the agent is still running"
    );
    assert!(
        pipe_full(&pipe),
        "the pipe stayed full all along: nobody read it"
    );
    eprintln!(
        "at the end: pipe {:?}; agent VmRSS {}",
        pipe_fill(&pipe),
        vm_rss(pid)
    );
    drop(c);
    drop(pipe);
}
