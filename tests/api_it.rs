//! The REST API over real sockets: `serve` on 127.0.0.1:0, a fake in-memory `Dcs`, reqwest.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgwarden::api::{Access, ApiCommand, ApiContext, ApiState, PgView, Snapshot, serve};
use pgwarden::dcs::model::{
    ClusterView, Failover, HistoryLine, Member, Status, SyncState, Version,
};
use pgwarden::dcs::{Dcs, DcsError};
use pgwarden::postgres::PgStatus;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Keys relative to the cluster prefix, with a revision counter.
struct FakeDcs {
    keys: Mutex<BTreeMap<String, String>>,
    revision: Mutex<u64>,
    changes: watch::Sender<u64>,
    /// When set, an immediate switchover is carried out at once: the candidate takes the lock
    /// and the failover key is cleared (what the leader's agent would do).
    promote_on_failover: bool,
}

impl FakeDcs {
    fn new(keys: &[(&str, String)], promote_on_failover: bool) -> Self {
        FakeDcs {
            keys: Mutex::new(
                keys.iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            ),
            revision: Mutex::new(1),
            changes: watch::channel(0).0,
            promote_on_failover,
        }
    }
    fn put(&self, key: &str, value: String) {
        self.keys.lock().unwrap().insert(key.to_owned(), value);
        *self.revision.lock().unwrap() += 1;
    }
    fn get(&self, key: &str) -> Option<String> {
        self.keys.lock().unwrap().get(key).cloned()
    }
}

#[async_trait]
impl Dcs for FakeDcs {
    async fn load(&self, _fresh: bool) -> Result<ClusterView, DcsError> {
        let keys = self.keys.lock().unwrap().clone();
        let rev = self.revision.lock().unwrap().to_string();
        Ok(ClusterView::from_raw(keys.iter().map(|(k, v)| {
            (k.as_str(), v.as_str(), Version(rev.clone()))
        })))
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
    fn set_ttl(&self, _ttl: Duration) {}
    async fn touch_member(&self, _member: &Member) -> Result<(), DcsError> {
        Ok(())
    }
    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        Ok(true)
    }
    async fn update_leader(&self, _status: Option<&Status>) -> Result<bool, DcsError> {
        Ok(true)
    }
    async fn release_leader(
        &self,
        _status: Option<&Status>,
        _expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        Ok(true)
    }
    async fn initialize(&self, _create_new: bool, _sysid: &str) -> Result<bool, DcsError> {
        Ok(true)
    }
    async fn cancel_initialization(&self) -> Result<(), DcsError> {
        Ok(())
    }
    async fn set_config(&self, json: &str, _expected: Option<&Version>) -> Result<bool, DcsError> {
        self.put("config", json.to_owned());
        Ok(true)
    }
    async fn set_failover(
        &self,
        value: &Failover,
        _expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        if self.promote_on_failover && value.scheduled_at.is_none() {
            if let Some(m) = &value.member {
                self.put("leader", m.clone());
            }
            self.put("failover", "{}".into());
        } else {
            self.put("failover", value.to_json());
        }
        Ok(true)
    }
    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError> {
        self.put("history", serde_json::to_string(lines).unwrap());
        Ok(())
    }
    async fn set_sync(
        &self,
        value: &SyncState,
        _expected: Option<&Version>,
    ) -> Result<bool, DcsError> {
        self.put("sync", serde_json::to_string(value).unwrap());
        Ok(true)
    }
    async fn set_failsafe(&self, value: &BTreeMap<String, String>) -> Result<bool, DcsError> {
        self.put("failsafe", serde_json::to_string(value).unwrap());
        Ok(true)
    }
    async fn delete_cluster(&self) -> Result<(), DcsError> {
        self.keys.lock().unwrap().clear();
        Ok(())
    }
    async fn delete_member(&self) -> Result<(), DcsError> {
        Ok(())
    }
}

struct Harness {
    base: String,
    http: reqwest::Client,
    dcs: Arc<FakeDcs>,
    state: ApiState,
    commands: mpsc::Receiver<ApiCommand>,
    _stop: oneshot::Sender<()>,
}

fn member(port: u16, pg_port: u16, role: &str) -> String {
    json!({
        "conn_url": format!("postgres://127.0.0.1:{pg_port}/postgres"),
        "api_url": format!("http://127.0.0.1:{port}/patroni"),
        "state": "running", "role": role, "version": "0.1.0",
        "xlog_location": 67108864, "timeline": 1
    })
    .to_string()
}

async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A leader `m0` serving the API; `m1` answers on the same API (reachable), `m2` is down.
async fn start(with_config: bool, promote_on_failover: bool) -> Harness {
    start_with(with_config, promote_on_failover, Access::default()).await
}

/// [`start`] with access rules.
async fn start_with(with_config: bool, promote_on_failover: bool, access: Access) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dead = closed_port().await;
    let mut keys = vec![
        ("initialize", "7711601831702346954".to_owned()),
        ("leader", "m0".to_owned()),
        ("members/m0", member(port, 5432, "primary")),
        ("members/m1", member(port, 5433, "replica")),
        ("members/m2", member(dead, 5434, "replica")),
        ("status", r#"{"optime":67108864}"#.to_owned()),
    ];
    if with_config {
        keys.push((
            "config",
            r#"{"ttl":30,"loop_wait":10,"retry_timeout":10}"#.to_owned(),
        ));
    }
    let dcs = Arc::new(FakeDcs::new(&keys, promote_on_failover));
    let now = Instant::now();
    let mut snap = Snapshot::new("bars", "m0");
    snap.pg = PgView {
        state: "running".into(),
        role: "primary".into(),
        status: Some(PgStatus {
            server_version: 150018,
            postmaster_start_time: "2026-11-24 05:13:38.632305+00:00".into(),
            timeline: 1,
            wal_position: 67108864,
            ..PgStatus::default()
        }),
        sysid: None,
    };
    snap.lock_valid_until = Some(now + Duration::from_secs(3600));
    snap.cluster = Some(dcs.load(true).await.unwrap());
    snap.cluster_valid_until = Some(now + Duration::from_secs(3600));
    snap.next_cycle_at = Some(now + Duration::from_secs(10));
    let state = ApiState::new(snap);
    let (tx, rx) = mpsc::channel(8);
    let ctx = ApiContext {
        state: state.clone(),
        dcs: dcs.clone(),
        commands: tx,
        peer_timeout: Duration::from_secs(2),
        access,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, ctx, async {
        let _ = stopped.await;
    }));
    Harness {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        dcs,
        state,
        commands: rx,
        _stop: stop,
    }
}

impl Harness {
    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
    async fn post(&self, path: &str, body: &str) -> (u16, String, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (r.status().as_u16(), r.text().await.unwrap(), ct)
    }
    /// A raw HTTP/1.1 request, for what reqwest would not send (no Content-Length).
    async fn raw(&self, request: &str) -> String {
        let addr = self.base.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

#[tokio::test]
async fn health_checks_and_probes() {
    let h = start(true, false).await;
    let r = h
        .http
        .get(format!("{}/primary", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["role"], "primary");
    assert_eq!(doc["patroni"]["name"], "m0");

    assert_eq!(h.get("/").await.0, 200);
    assert_eq!(h.get("/leader").await.0, 200);
    assert_eq!(h.get("/replica").await.0, 503);
    assert_eq!(h.get("/health").await.0, 200);
    assert_eq!(h.get("/read-only").await.0, 200);
    assert_eq!(h.get("/patroni").await.0, 200);

    // Unknown GET path: the status document with 503 (Patroni's quirk).
    let (code, body) = h.get("/no-such-endpoint").await;
    assert_eq!(code, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["state"],
        "running"
    );

    // Probes: status only.
    assert_eq!(h.get("/liveness").await, (200, String::new()));
    assert_eq!(h.get("/readiness").await, (200, String::new()));

    // HEAD and OPTIONS: status line, no body.
    let r = h
        .http
        .head(format!("{}/primary", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    let raw = h
        .raw("HEAD /replica HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "HEAD sent a body: {raw:?}");
    let r = h
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/primary", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.unwrap().is_empty());

    // The agent publishes a new snapshot: answers follow without a restart.
    let mut s = (*h.state.snapshot()).clone();
    s.lock_valid_until = None;
    s.pg.role = "replica".into();
    let st = s.pg.status.as_mut().unwrap();
    st.in_recovery = true;
    st.receive_lsn = Some(67108864);
    st.replay_lsn = Some(67108864);
    h.state.publish(s);
    assert_eq!(h.get("/primary").await.0, 503);
    assert_eq!(h.get("/replica").await.0, 200);
    assert_eq!(h.get("/replica?lag=1kB").await.0, 200);

    // Metrics.
    let (code, body) = h.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("patroni_replica{scope=\"bars\",name=\"m0\"} 1\n"),
        "{body}"
    );
}

#[tokio::test]
async fn read_endpoints() {
    let h = start(false, false).await;
    let (code, body) = h.get("/config").await;
    assert_eq!(code, 502);
    assert!(body.contains("Error code: 502"));
    assert_eq!(h.get("/history").await, (200, "[]".into()));
    let (code, body) = h.get("/cluster").await;
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m0", "m1", "m2"]);
    assert_eq!(doc["members"][0]["role"], "leader");
    assert_eq!(doc["members"][1]["lag"], 0);
    assert_eq!(doc["members"][1]["port"], 5433);

    let h = start(true, false).await;
    let (code, body) = h.get("/config").await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["loop_wait"],
        10
    );
}

#[tokio::test]
async fn switchover_errors_and_schedule() {
    let mut h = start(true, false).await;

    // Missing Content-Length on a mandatory body → 411.
    let raw = h
        .raw("POST /switchover HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 411"), "{raw}");

    let raw = h.raw("POST /switchover HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    for bad in ["{}", "not json", "[1]", "\"x\""] {
        let (code, body, _) = h.post("/switchover", bad).await;
        assert_eq!(code, 400, "{bad:?}");
        assert!(body.contains("<p>Error code: 400</p>"), "{body}");
    }
    let (code, _, _) = h.post("/switchover", &" ".repeat(70 * 1024)).await;
    assert_eq!(code, 413);

    let cases = [
        (
            "/switchover",
            json!({"candidate": "m1"}),
            400,
            "Switchover could be performed only from a specific leader",
        ),
        (
            "/failover",
            json!({"leader": "m0"}),
            400,
            "Failover could be performed only to a specific candidate",
        ),
        (
            "/failover",
            json!({"candidate": "m1", "scheduled_at": "2099-01-01T00:00:00+00:00"}),
            400,
            "Failover can't be scheduled",
        ),
        (
            "/switchover",
            json!({"leader": "m0", "candidate": "m0"}),
            400,
            "Switchover target and source are the same",
        ),
        (
            "/switchover",
            json!({"leader": "m9", "candidate": "m1"}),
            412,
            "leader name does not match",
        ),
        (
            "/switchover",
            json!({"leader": "m0", "candidate": "m7"}),
            412,
            "candidate does not exists",
        ),
        (
            "/switchover",
            json!({"leader": "m0", "candidate": "m2"}),
            412,
            "switchover is not possible: no good candidates have been found",
        ),
    ];
    for (path, body, code, msg) in cases {
        let (c, text, ct) = h.post(path, &body.to_string()).await;
        assert_eq!((c, text.as_str()), (code, msg), "{path} {body}");
        assert_eq!(ct, "text/html");
    }
    assert_eq!(
        h.dcs.get("failover"),
        None,
        "nothing written by rejected requests"
    );

    let body =
        json!({"leader": "m0", "candidate": "m1", "scheduled_at": "2099-01-01T00:00:00+00:00"});
    let (code, text, _) = h.post("/switchover", &body.to_string()).await;
    assert_eq!((code, text.as_str()), (202, "Switchover scheduled"));
    let written: Value = serde_json::from_str(&h.dcs.get("failover").unwrap()).unwrap();
    assert_eq!(
        written,
        json!({"leader": "m0", "member": "m1", "scheduled_at": "2099-01-01T00:00:00+00:00"})
    );
    assert_eq!(h.commands.recv().await, Some(ApiCommand::Wake));

    // /cluster shows it.
    let (_, body) = h.get("/cluster").await;
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["scheduled_switchover"],
        json!({"at": "2099-01-01T00:00:00+00:00", "from": "m0", "to": "m1"})
    );

    // Other methods: 405 with the allowed ones (Patroni: 501).
    let r = h
        .http
        .delete(format!("{}/nothing", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD, OPTIONS");
    let r = h
        .http
        .request(reqwest::Method::TRACE, format!("{}/config", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD, OPTIONS, PATCH, PUT");
}

#[tokio::test]
async fn immediate_switchover_reports_the_new_leader() {
    let mut h = start(true, true).await;
    let body = json!({"leader": "m0", "candidate": "m1"});
    let (code, text, _) = h.post("/switchover", &body.to_string()).await;
    assert_eq!(
        (code, text.as_str()),
        (200, "Successfully switched over to \"m1\"")
    );
    assert_eq!(h.dcs.get("leader").as_deref(), Some("m1"));
    assert_eq!(h.commands.recv().await, Some(ApiCommand::Wake));
}

/// One request with optional basic credentials: `(code, WWW-Authenticate, body)`.
async fn with_auth(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    creds: Option<(&str, &str)>,
) -> (u16, String, String) {
    let mut rq = h.http.request(method, format!("{}{path}", h.base));
    if let Some((u, p)) = creds {
        rq = rq.basic_auth(u, Some(p));
    }
    if path == "/config" {
        rq = rq.body(r#"{"ttl":30}"#);
    }
    let r = rq.send().await.unwrap();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), www, r.text().await.unwrap())
}

#[tokio::test]
async fn basic_auth_and_allowlist_over_sockets() {
    use reqwest::Method;
    let auth = || Some(("admin".to_owned(), "s3cret".to_owned()));

    // Basic auth: unsafe requests need it (401 + WWW-Authenticate), safe ones stay open.
    let h = start_with(
        true,
        false,
        Access {
            auth: auth(),
            ..Access::default()
        },
    )
    .await;
    for path in ["/health", "/patroni", "/config", "/cluster"] {
        let (code, _, body) = with_auth(&h, Method::GET, path, None).await;
        assert_eq!(code, 200, "GET {path} stays open: {body}");
    }
    let (code, www, body) = with_auth(&h, Method::POST, "/reload", None).await;
    assert_eq!((code, www.as_str()), (401, "Basic realm=\"Patroni\""));
    assert_eq!(body, "no auth header received");
    let (code, www, body) = with_auth(&h, Method::PATCH, "/config", Some(("admin", "x"))).await;
    assert_eq!((code, www.as_str()), (401, "Basic realm=\"Patroni\""));
    assert_eq!(body, "not authenticated");
    let (code, _, body) = with_auth(&h, Method::DELETE, "/restart", Some(("x", "s3cret"))).await;
    assert_eq!(code, 401, "{body}");
    let (code, _, body) = with_auth(&h, Method::POST, "/reload", Some(("admin", "s3cret"))).await;
    assert_eq!((code, body.as_str()), (202, "reload scheduled"));
    drop(h);

    // An allowlist without this client: 403 before authentication is even looked at.
    let h = start_with(
        true,
        false,
        Access {
            auth: auth(),
            allowlist: vec!["10.0.0.0/8".into(), "192.0.2.7".into()],
            include_members: false,
        },
    )
    .await;
    let (code, www, body) = with_auth(&h, Method::POST, "/reload", Some(("admin", "s3cret"))).await;
    assert_eq!((code, body.as_str()), (403, "Access is denied"));
    assert!(www.is_empty());
    let (code, _, _) = with_auth(&h, Method::POST, "/restart", None).await;
    assert_eq!(code, 403);
    let (code, _, _) = with_auth(&h, Method::OPTIONS, "/primary", None).await;
    assert_eq!(code, 200, "health checks stay open");
    drop(h);

    // An allowlist with this client (CIDR): authentication is next.
    let h = start_with(
        true,
        false,
        Access {
            auth: auth(),
            allowlist: vec!["127.0.0.0/8".into()],
            include_members: false,
        },
    )
    .await;
    let (code, _, _) = with_auth(&h, Method::POST, "/reload", None).await;
    assert_eq!(code, 401);
    let (code, _, _) = with_auth(&h, Method::POST, "/reload", Some(("admin", "s3cret"))).await;
    assert_eq!(code, 202);
    drop(h);

    // allowlist_include_members: members' api_url hosts (127.0.0.1 here) are allowed, except
    // for /failsafe, whose sender Patroni does not check against the members.
    let h = start_with(
        true,
        false,
        Access {
            auth: None,
            allowlist: vec![],
            include_members: true,
        },
    )
    .await;
    let (code, _, body) = with_auth(&h, Method::POST, "/reload", None).await;
    assert_eq!(code, 202, "{body}");
    let (code, _, body) = with_auth(&h, Method::POST, "/failsafe", None).await;
    assert_eq!((code, body.as_str()), (403, "Access is denied"));
}
