//! The REST API over TLS: `serve_with` on 127.0.0.1:0 with certificates made at test time by
//! the `openssl` command (a CA, a server certificate for IP 127.0.0.1, a client certificate),
//! an in-memory store, reqwest as the client.
//!
//! Without `openssl` the tests are skipped, except under CI=true where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden::api::tls::{ClientTls, server_config};
use pgwarden::api::{Access, ApiContext, ApiState, PgView, ServeOptions, Snapshot};
use pgwarden::config::RestApi;
use pgwarden::dcs::mem::{MemDcs, MemStore};
use pgwarden::postgres::PgStatus;
use tokio::sync::{mpsc, oneshot};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate (SAN IP 127.0.0.1) and a client certificate, both signed by the CA;
/// `None` when openssl is missing outside CI.
fn make_certs() -> Option<PathBuf> {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is required for the TLS tests"
        );
        eprintln!("skipped: no openssl command");
        return None;
    }
    let dir = std::env::temp_dir().join(format!(
        "pgwarden-tls-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=pgwarden test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(&dir, &ca);
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "pgwarden-client")] {
        let subj = format!("/CN={cn}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut req = vec!["req", "-subj", &subj];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(&dir, &req);
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
    }
    openssl(
        &dir,
        &[
            "pkey",
            "-in",
            "server.key",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "encrypted.key",
        ],
    );
    Some(dir)
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn path(dir: &Path, f: &str) -> String {
    dir.join(f).to_string_lossy().into_owned()
}

fn restapi(dir: &Path, verify_client: Option<&str>) -> RestApi {
    RestApi {
        listen: "127.0.0.1:0".into(),
        connect_address: "127.0.0.1:0".into(),
        authentication: None,
        certfile: Some(path(dir, "server.crt")),
        keyfile: Some(path(dir, "server.key")),
        keyfile_password: None,
        cafile: Some(path(dir, "ca.crt")),
        verify_client: verify_client.map(str::to_owned),
        allowlist: Vec::new(),
        allowlist_include_members: false,
        http_extra_headers: Default::default(),
        https_extra_headers: Default::default(),
    }
}

struct Server {
    port: u16,
    _stop: oneshot::Sender<()>,
}

/// A healthy leader's API over TLS with `r`'s settings and `access`.
async fn start(r: &RestApi, access: Access) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = Arc::new(Mutex::new(MemStore::new()));
    let dcs = Arc::new(MemDcs::new(store, "m0", Duration::from_secs(30)));
    let mut snap = Snapshot::new("bars", "m0");
    snap.pg = PgView {
        state: "running".into(),
        role: "primary".into(),
        status: Some(PgStatus {
            server_version: 150018,
            postmaster_start_time: "2026-11-24 05:13:38.632305+00:00".into(),
            timeline: 1,
            wal_position: 1,
            ..PgStatus::default()
        }),
        sysid: None,
    };
    let (tx, rx) = mpsc::channel(8);
    // Keep the command channel open for the server's lifetime (reload sends on it).
    std::mem::forget(rx);
    let ctx = ApiContext {
        state: ApiState::new(snap),
        dcs,
        commands: tx,
        peer_timeout: Duration::from_secs(2),
        access,
    };
    let opts = ServeOptions {
        tls: server_config(r).unwrap(),
        peer_client: None,
        client_cert: pgwarden::api::tls::client_cert_required(r),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(pgwarden::api::serve_with(listener, ctx, opts, async {
        let _ = stopped.await;
    }));
    Server { port, _stop: stop }
}

/// A client trusting the test CA, presenting the client certificate when `with_cert`.
fn client(dir: &Path, with_cert: bool) -> reqwest::Client {
    let tls = ClientTls {
        ca: Some(("ctl.cacert".into(), path(dir, "ca.crt"))),
        cert: with_cert.then(|| (path(dir, "client.crt"), path(dir, "client.key"))),
        key_prefix: "ctl".into(),
        insecure: false,
    };
    tls.apply(reqwest::Client::builder().no_proxy())
        .unwrap()
        .build()
        .unwrap()
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    auth: bool,
) -> Result<(u16, String), reqwest::Error> {
    let mut rq = c.request(method, url);
    if auth {
        rq = rq.basic_auth("admin", Some("s3cret"));
    }
    let r = rq.send().await?;
    let code = r.status().as_u16();
    Ok((code, r.text().await.unwrap_or_default()))
}

#[tokio::test]
async fn https_health_and_no_plain_http() {
    let Some(dir) = make_certs() else { return };
    let s = start(&restapi(&dir, None), Access::default()).await;
    let c = client(&dir, false);
    let (code, body) = call(
        &c,
        reqwest::Method::GET,
        format!("https://127.0.0.1:{}/health", s.port),
        false,
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"role\": \"primary\""), "{body}");
    // No client certificate needed anywhere with verify_client unset.
    let (code, _) = call(
        &c,
        reqwest::Method::POST,
        format!("https://127.0.0.1:{}/reload", s.port),
        false,
    )
    .await
    .unwrap();
    assert_eq!(code, 202);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{}/health", s.port))
        .send()
        .await;
    assert!(
        r.is_err(),
        "plain http answered: {:?}",
        r.map(|r| r.status())
    );
    // A client that does not trust the CA (system roots only) refuses the server.
    let r = plain
        .get(format!("https://127.0.0.1:{}/health", s.port))
        .send()
        .await;
    assert!(r.is_err(), "untrusted server accepted");
}

#[tokio::test]
async fn verify_client_optional() {
    let Some(dir) = make_certs() else { return };
    let access = Access {
        auth: Some(("admin".into(), "s3cret".into())),
        ..Access::default()
    };
    let s = start(&restapi(&dir, Some("optional")), access).await;
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", s.port);
    let anon = client(&dir, false);
    // Health checks stay open without a certificate.
    let (code, _) = call(&anon, reqwest::Method::GET, url("/health"), false)
        .await
        .unwrap();
    assert_eq!(code, 200);
    // Protected without a certificate: 403 before authentication is even looked at.
    let (code, body) = call(&anon, reqwest::Method::POST, url("/reload"), true)
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (403, "client certificate required"));
    // With the certificate the request goes on to basic authentication.
    let certified = client(&dir, true);
    let (code, body) = call(&certified, reqwest::Method::POST, url("/reload"), false)
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (401, "no auth header received"));
    let (code, body) = call(&certified, reqwest::Method::POST, url("/reload"), true)
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (202, "reload scheduled"));
}

#[tokio::test]
async fn verify_client_required_demands_a_certificate_in_the_handshake() {
    let Some(dir) = make_certs() else { return };
    let s = start(&restapi(&dir, Some("required")), Access::default()).await;
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", s.port);
    // Without a certificate nothing gets through, not even a health check (Patroni: "client
    // certificates are required for all REST API calls").
    let r = call(
        &client(&dir, false),
        reqwest::Method::GET,
        url("/health"),
        false,
    )
    .await;
    assert!(r.is_err(), "answered without a client certificate: {r:?}");
    let certified = client(&dir, true);
    let (code, _) = call(&certified, reqwest::Method::GET, url("/health"), false)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (code, _) = call(&certified, reqwest::Method::POST, url("/reload"), false)
        .await
        .unwrap();
    assert_eq!(code, 202);
}

#[test]
fn configuration_errors_name_the_key() {
    let Some(dir) = make_certs() else { return };
    let err = |r: RestApi| server_config(&r).expect_err("an error").to_string();

    let mut r = restapi(&dir, None);
    r.certfile = Some(path(&dir, "missing.crt"));
    assert!(err(r).starts_with("restapi.certfile: "), "missing certfile");

    let mut r = restapi(&dir, None);
    r.keyfile = Some(path(&dir, "ca.crt"));
    let e = err(r);
    assert!(e.starts_with("restapi.keyfile: "), "{e}");

    let mut r = restapi(&dir, None);
    r.certfile = Some(path(&dir, "server.key"));
    let e = err(r);
    assert!(
        e.contains("restapi.certfile: ") && e.contains("no PEM certificate"),
        "{e}"
    );

    let mut r = restapi(&dir, None);
    r.keyfile = Some(path(&dir, "encrypted.key"));
    r.keyfile_password = Some("secret".into());
    let e = err(r);
    assert!(
        e.starts_with("restapi.keyfile_password: encrypted private keys are not supported"),
        "{e}"
    );

    let mut r = restapi(&dir, Some("required"));
    r.cafile = None;
    assert!(err(r).starts_with("restapi.cafile: "));

    let r = restapi(&dir, Some("always"));
    assert!(err(r).starts_with("restapi.verify_client: "));

    let bad = ClientTls {
        ca: Some(("ctl.cacert".into(), path(&dir, "nope.crt"))),
        ..ClientTls::default()
    };
    let e = bad
        .apply(reqwest::Client::builder())
        .expect_err("an error")
        .to_string();
    assert!(e.starts_with("ctl.cacert: "), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
