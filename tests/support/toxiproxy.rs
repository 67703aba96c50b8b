//! A throwaway Toxiproxy server for tests: a TCP proxy between test processes that adds
//! latency, jitter and bandwidth limits to a link (this machine's kernel has no tc/netem, so
//! slow networks cannot be made with qdiscs). Include it with
//! `#[path = "support/toxiproxy.rs"] mod toxiproxy;`.
//!
//! The server is built from its Go module by `tests/toxiproxy/build.sh` (once, then cached
//! outside the repository) and started on a free loopback port; it is killed on drop. When it
//! cannot be built (no Go), [`Toxiproxy::start`] fails the test under `CI=true` and otherwise
//! prints a skip note and returns `None`.
//!
//! Each proxy has two directions: `upstream` (client to server) and `downstream` (server to
//! client). [`Toxiproxy::latency`] and [`Toxiproxy::bandwidth`] act on both, so a request and
//! its answer are each delayed (a round trip takes at least twice the latency).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running `toxiproxy-server` on loopback, with a client for its HTTP API.
pub struct Toxiproxy {
    child: Child,
    /// `127.0.0.1:<port>` of the HTTP API.
    api: SocketAddr,
    http: reqwest::Client,
    /// The server's stdout and stderr.
    log: PathBuf,
}

/// Builds (or reuses) `toxiproxy-server` with `tests/toxiproxy/build.sh`; its path, or why not.
async fn build() -> Result<PathBuf, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/toxiproxy/build.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{script} failed ({}): {}",
            out.status,
            stderr.trim()
        ));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!(
            "{script} printed {path:?}, which is not a file: {}",
            stderr.trim()
        ));
    }
    Ok(path)
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

impl Toxiproxy {
    /// Builds and starts the server, or explains why not: panics under `CI=true` when it
    /// cannot be built, else prints `SKIPPED: ...` and returns `None`. A server that was built
    /// but does not start panics in any case.
    pub async fn start() -> Option<Toxiproxy> {
        let binary = match build().await {
            Ok(b) => b,
            Err(why) => {
                let msg = format!("toxiproxy-server is not available: {why}");
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{msg}");
                }
                eprintln!("SKIPPED: {msg}");
                return None;
            }
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build an HTTP client");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let log =
            std::env::temp_dir().join(format!("pgwarden-toxiproxy-{}-{n}.log", std::process::id()));
        let mut last = String::new();
        // Another process may take the free port before the server binds it: try another.
        for _ in 0..3 {
            match Toxiproxy::try_start(&binary, &http, &log).await {
                Ok(t) => return Some(t),
                Err(e) => last = e,
            }
        }
        panic!("toxiproxy-server did not start: {last}");
    }

    async fn try_start(
        binary: &Path,
        http: &reqwest::Client,
        log: &Path,
    ) -> Result<Toxiproxy, String> {
        let port = free_port();
        let file = std::fs::File::create(log).map_err(|e| format!("create {log:?}: {e}"))?;
        let file2 = file.try_clone().map_err(|e| format!("dup {log:?}: {e}"))?;
        let child = Command::new(binary)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .map_err(|e| format!("spawn {binary:?}: {e}"))?;
        // From here on, dropping `t` kills and reaps the server.
        let mut t = Toxiproxy {
            child,
            api: SocketAddr::from(([127, 0, 0, 1], port)),
            http: http.clone(),
            log: log.to_owned(),
        };
        // The log goes with `t` when it is dropped: quote it in the error.
        let output = || std::fs::read_to_string(log).unwrap_or_default();
        let url = format!("http://{}/version", t.api);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = t.child.try_wait() {
                return Err(format!("exited with {status} (port {port}):\n{}", output()));
            }
            if let Ok(r) = t.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "its API on port {port} did not answer in 15 s:\n{}",
                    output()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:<port>` of the server's HTTP API.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }

    /// The file that holds the server's output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Creates the enabled proxy `name`, listening on `listen` ("ip:port" of this machine's;
    /// port 0 picks a free one) and forwarding to `upstream` ("host:port"). Returns the address
    /// it listens on.
    pub async fn proxy(&self, name: &str, listen: &str, upstream: &str) -> SocketAddr {
        let body = json!({
            "name": name,
            "listen": listen,
            "upstream": upstream,
            "enabled": true,
        });
        let v = self
            .call(
                reqwest::Method::POST,
                "/proxies",
                Some(body),
                name,
                "create",
            )
            .await;
        let addr = v["listen"].as_str().unwrap_or_default();
        addr.parse().unwrap_or_else(|e| {
            panic!("toxiproxy: proxy {name:?}: created, but its listen address {addr:?}: {e}")
        })
    }

    /// Adds, or replaces, a `latency` toxic on both directions of proxy `name` (toxics
    /// `lat_up` and `lat_down`): each chunk is held `latency_ms` ± `jitter_ms` milliseconds.
    pub async fn latency(&self, name: &str, latency_ms: u64, jitter_ms: u64) {
        let attributes = json!({ "latency": latency_ms, "jitter": jitter_ms });
        self.set_both(name, "latency", "lat", attributes).await;
    }

    /// Adds, or replaces, a `bandwidth` toxic on both directions of proxy `name` (toxics
    /// `bw_up` and `bw_down`): each direction passes at most `kb_per_s` KB per second.
    pub async fn bandwidth(&self, name: &str, kb_per_s: u64) {
        let attributes = json!({ "rate": kb_per_s });
        self.set_both(name, "bandwidth", "bw", attributes).await;
    }

    /// Removes every toxic of proxy `name`: the link passes data untouched again.
    pub async fn clear(&self, name: &str) {
        let path = format!("/proxies/{name}/toxics");
        let list = self
            .call(reqwest::Method::GET, &path, None, name, "list toxics")
            .await;
        for toxic in list.as_array().into_iter().flatten() {
            let Some(toxic) = toxic["name"].as_str() else {
                continue;
            };
            self.call(
                reqwest::Method::DELETE,
                &format!("{path}/{toxic}"),
                None,
                name,
                &format!("remove toxic {toxic:?}"),
            )
            .await;
        }
    }

    /// One toxic of `kind` per direction, named `<prefix>_up` and `<prefix>_down`: updated in
    /// place when it exists (open connections keep going), created otherwise.
    async fn set_both(&self, name: &str, kind: &str, prefix: &str, attributes: Value) {
        for (stream, suffix) in [("upstream", "up"), ("downstream", "down")] {
            let toxic = format!("{prefix}_{suffix}");
            let path = format!("/proxies/{name}/toxics/{toxic}");
            let update = json!({ "attributes": attributes, "toxicity": 1.0 });
            let (status, text) = self
                .request(reqwest::Method::POST, &path, Some(update))
                .await
                .unwrap_or_else(|e| panic!("toxiproxy: proxy {name:?}: update {toxic:?}: {e}"));
            if status.is_success() {
                continue;
            }
            // 404: no such toxic yet (or no such proxy, which the creation below reports).
            if status != reqwest::StatusCode::NOT_FOUND {
                panic!(
                    "toxiproxy: proxy {name:?}: update {kind} toxic {toxic:?} (POST {path}): \
                     HTTP {status}: {}",
                    text.trim()
                );
            }
            let create = json!({
                "name": toxic,
                "type": kind,
                "stream": stream,
                "toxicity": 1.0,
                "attributes": attributes,
            });
            self.call(
                reqwest::Method::POST,
                &format!("/proxies/{name}/toxics"),
                Some(create),
                name,
                &format!("add {kind} toxic {toxic:?}"),
            )
            .await;
        }
    }

    /// Sends a request to the API; its status and body, or the transport error.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(reqwest::StatusCode, String), reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.api));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        Ok((status, resp.text().await?))
    }

    /// As [`Toxiproxy::request`], panicking on anything but a success with a message that
    /// names the proxy, what was being done, and the status and body; the body as JSON (`Null`
    /// when empty).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        proxy: &str,
        what: &str,
    ) -> Value {
        let m = method.clone();
        let (status, text) = self
            .request(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("toxiproxy: proxy {proxy:?}: {what} ({m} {path}): {e}"));
        if !status.is_success() {
            panic!(
                "toxiproxy: proxy {proxy:?}: {what} ({m} {path}): HTTP {status}: {}",
                text.trim()
            );
        }
        if text.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("toxiproxy: proxy {proxy:?}: {what} ({m} {path}): bad JSON {text:?}: {e}")
        })
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("toxiproxy-server's log is kept in {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
