//! A throwaway etcd server for tests: free loopback ports, a temporary data directory, killed and
//! removed on drop. Include it with `#[path = "support/etcd.rs"] mod etcd_support;` (the cluster
//! harness, `cluster.rs`, includes it itself).
//!
//! When no etcd binary exists, [`EtcdServer::start_or_skip`] fails the test under `CI=true` and
//! otherwise prints a skip note and returns `None`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running (or stopped) single-node etcd.
pub struct EtcdServer {
    binary: PathBuf,
    dir: PathBuf,
    /// The address it listens on besides loopback, and gives to clients.
    host: String,
    client_port: u16,
    peer_port: u16,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<PathBuf>,
    child: Option<Child>,
}

/// `/usr/bin/etcd`, else `etcd` on PATH.
pub fn find_etcd() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/bin/etcd");
    if fixed.is_file() {
        return Some(fixed);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// The etcd binary; without one, panics under `CI=true`, else `None` with a note.
fn binary_or_skip(test: &str) -> Option<PathBuf> {
    let Some(binary) = find_etcd() else {
        let msg = format!(
            "{test}: no etcd binary (/usr/bin/etcd or on PATH); install Debian's etcd-server"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED {msg}");
        return None;
    };
    Some(binary)
}

impl EtcdServer {
    /// Starts etcd, or explains why not: panics under `CI=true`, else `None` with a note.
    pub async fn start_or_skip(test: &str) -> Option<EtcdServer> {
        EtcdServer::start_or_skip_on(test, "127.0.0.1").await
    }

    /// As [`EtcdServer::start_or_skip`], for clients at `host` (an address of this machine's,
    /// such as a test bridge's) as well as on loopback.
    pub async fn start_or_skip_on(test: &str, host: &str) -> Option<EtcdServer> {
        Some(EtcdServer::start_with(binary_or_skip(test)?, host, None).await)
    }

    /// As [`EtcdServer::start_or_skip_on`], run in the network namespace `netns` (a
    /// [`super::netns::TestNet`]'s store host, at `host`), so that the network between it and
    /// each member can be cut.
    pub async fn start_or_skip_in(test: &str, netns: &Path, host: &str) -> Option<EtcdServer> {
        let binary = binary_or_skip(test)?;
        Some(EtcdServer::start_with(binary, host, Some(netns.to_owned())).await)
    }

    /// Starts etcd from `binary`, for clients on loopback and at `host`, in `netns` when given;
    /// retries with other ports if a port was taken in between.
    pub async fn start_with(binary: PathBuf, host: &str, netns: Option<PathBuf>) -> EtcdServer {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "pgwarden-etcd-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let mut last = String::new();
        for _ in 0..3 {
            let mut s = EtcdServer {
                binary: binary.clone(),
                dir: dir.clone(),
                host: host.into(),
                client_port: free_port(),
                peer_port: free_port(),
                netns: netns.clone(),
                child: None,
            };
            match s.try_start().await {
                Ok(()) => return s,
                Err(e) => last = e,
            }
            // `s` is dropped here: process killed, directory removed.
        }
        panic!("etcd did not start: {last}");
    }

    /// `http://<host>:<client port>`: what clients are given.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    /// The value of `key` exactly as the store holds it; `None` when it is missing or the
    /// store does not answer.
    pub async fn raw_value(&self, key: &str) -> Option<String> {
        let mut client = etcd_client::Client::connect([self.endpoint()], None)
            .await
            .ok()?;
        let r = client.get(key, None).await.ok()?;
        Some(r.kvs().first()?.value_str().ok()?.to_owned())
    }

    /// The data directory (etcd's log is `etcd.log` beside it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server, keeping its data: the store is down until [`EtcdServer::start`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's process id, while it runs (to freeze it with SIGSTOP).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Where clients reach it: `host:port`.
    pub fn client_addr(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    /// Starts the server again on the same ports and data.
    pub async fn start(&mut self) {
        if self.child.is_none()
            && let Err(e) = self.try_start().await
        {
            panic!("etcd did not restart: {e}");
        }
    }

    async fn try_start(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let client = self.endpoint();
        let listen = if self.host == "127.0.0.1" {
            client.clone()
        } else {
            format!("http://127.0.0.1:{},{client}", self.client_port)
        };
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = match &self.netns {
            None => Command::new(&self.binary),
            Some(ns) => {
                let mut c = Command::new("/usr/bin/nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(&self.binary);
                c
            }
        };
        let child = cmd
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "etcd exited with {status}; see {}/etcd.log",
                    self.dir.display()
                ));
            }
            if self.healthy().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop();
        Err(format!(
            "etcd not healthy within 20 s; see {}/etcd.log",
            self.dir.display()
        ))
    }

    /// `GET /health` answers `"health":"true"`.
    pub async fn healthy(&self) -> bool {
        let probe = async {
            let mut s =
                tokio::net::TcpStream::connect((self.host.as_str(), self.client_port)).await?;
            s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).contains("\"health\":\"true\""))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Ok(true))
        )
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
