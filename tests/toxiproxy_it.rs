//! The Toxiproxy harness (`support/toxiproxy.rs`) against the real server: a TCP echo server on
//! loopback behind a proxy, slowed by latency and bandwidth toxics and then cleared. Only lower
//! bounds on time are asserted: a loaded machine may always be slower.
//!
//! Without Go (so no `toxiproxy-server`) the tests print `SKIPPED` and pass, except under
//! `CI=true`, where they fail.

#[path = "support/toxiproxy.rs"]
mod toxiproxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use toxiproxy::Toxiproxy;

/// Bound on any one exchange, so that a broken proxy fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(30);

/// A TCP server on 127.0.0.1 that sends back whatever it receives, until the test ends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `data` on `conn` and reads the echo, concurrently; the time it took.
async fn round_trip(conn: &mut TcpStream, data: &[u8]) -> Duration {
    let started = Instant::now();
    let (mut r, mut w) = conn.split();
    let mut back = vec![0u8; data.len()];
    let exchange =
        async { tokio::try_join!(w.write_all(data), r.read_exact(&mut back)).map(|_| ()) };
    tokio::time::timeout(STEP, exchange)
        .await
        .expect("round trip through the proxy timed out")
        .expect("round trip through the proxy");
    assert!(back == data, "the echo differs from what was sent");
    let took = started.elapsed();
    eprintln!("round trip of {} bytes: {took:?}", data.len());
    took
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let conn = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect to the proxy timed out")
        .expect("connect to the proxy");
    conn.set_nodelay(true).unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_applies_each_way_and_clears() {
    let Some(tp) = Toxiproxy::start().await else {
        return;
    };
    let upstream = echo_server().await;
    let listen = tp.proxy("echo", "127.0.0.1:0", &upstream.to_string()).await;
    let mut conn = connect(listen).await;
    round_trip(&mut conn, b"before").await;

    tp.latency("echo", 200, 0).await;
    let took = round_trip(&mut conn, b"slow").await;
    assert!(
        took >= Duration::from_millis(400),
        "200 ms each way, yet the round trip took {took:?}"
    );
    // A new connection gets the toxics as well.
    let mut fresh = connect(listen).await;
    let took = round_trip(&mut fresh, b"fresh").await;
    assert!(
        took >= Duration::from_millis(400),
        "new connection: {took:?}"
    );

    // Replacing the toxics (in place, on the open connections) changes the delay.
    tp.latency("echo", 350, 50).await;
    let took = round_trip(&mut conn, b"slower").await;
    assert!(
        took >= Duration::from_millis(600),
        "350 ± 50 ms each way, yet the round trip took {took:?}"
    );

    tp.clear("echo").await;
    round_trip(&mut conn, b"after clear").await;
    round_trip(&mut connect(listen).await, b"new after clear").await;
    // Clearing a proxy without toxics is fine.
    tp.clear("echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_throughput() {
    let Some(tp) = Toxiproxy::start().await else {
        return;
    };
    let upstream = echo_server().await;
    let listen = tp.proxy("bulk", "127.0.0.1:0", &upstream.to_string()).await;
    let mut conn = connect(listen).await;
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    round_trip(&mut conn, &data).await;

    // 40 KB at 40 KB/s: at least a second one way, so the echo cannot be back sooner.
    tp.bandwidth("bulk", 40).await;
    let took = round_trip(&mut conn, &data).await;
    assert!(
        took >= Duration::from_millis(800),
        "40 KB at 40 KB/s, yet the round trip took {took:?}"
    );

    tp.clear("bulk").await;
    round_trip(&mut conn, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_proxy_and_status() {
    let Some(tp) = Toxiproxy::start().await else {
        return;
    };
    let tp = std::sync::Arc::new(tp);
    let t = tp.clone();
    let err = tokio::spawn(async move { t.latency("missing", 10, 0).await })
        .await
        .expect_err("a toxic on a proxy that does not exist");
    let payload = err.into_panic();
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("proxy \"missing\"") && msg.contains("404"),
        "unclear error: {msg}"
    );
}
