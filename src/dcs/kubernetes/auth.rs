//! Where the API server is, who we are to it, and the HTTP client that talks to it.
//!
//! Inside a pod (`KUBERNETES_SERVICE_HOST` set, as Patroni decides): the service account's token
//! and CA; the token file is re-read every minute, so a rotated token is picked up. Outside a
//! pod: `KUBECONFIG` (its files merged, first one wins, as kubectl does) or `~/.kube/config`,
//! with a bearer token, a token file or a client certificate.
//!
//! The client is assembled here instead of by `kube::Client::try_from(Config)`: that path links
//! kube's exec-plugin and auth-provider support, which brings a second YAML parser, a JSONPath
//! engine and a regex engine, about 1 MB of code that every agent would keep resident although
//! an agent in a pod never runs it. A kubeconfig that needs those (an `exec` plugin, an
//! `auth-provider`, a password, impersonation, a proxy) is refused with a message that says so.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::{AUTHORIZATION, HeaderValue};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::Body;
use kube::client::middleware::BaseUriLayer;
use kube::config::{AuthInfo, Config, KubeConfigOptions, Kubeconfig};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::ExposeSecret;
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;

use crate::dcs::DcsError;

/// How long a token read from a file is used before the file is read again.
const TOKEN_REREAD: Duration = Duration::from_secs(60);
/// How long a TCP connection to the API server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the cluster this process runs against.
pub(super) async fn client() -> Result<kube::Client, DcsError> {
    let fail = |e: String| DcsError::Failed(format!("kubernetes: {e}"));
    let cfg = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Config::incluster().map_err(|e| fail(format!("in-cluster configuration: {e}")))?
    } else {
        let kubeconfig = read_kubeconfig().map_err(fail)?;
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| fail(format!("kubeconfig: {e}")))?
    };
    build(cfg).map_err(fail)
}

/// The kubeconfig: the files `KUBECONFIG` lists (missing ones skipped, the rest merged, the
/// first definition of a name winning), else `~/.kube/config`. Relative file names in it are
/// relative to the file that holds them.
fn read_kubeconfig() -> Result<Kubeconfig, String> {
    let listed: Vec<PathBuf> = std::env::var_os("KUBECONFIG")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    let paths = if listed.is_empty() {
        let home = std::env::var_os("HOME")
            .ok_or("no KUBECONFIG and no HOME to find ~/.kube/config in")?;
        vec![Path::new(&home).join(".kube/config")]
    } else {
        listed
    };
    let mut merged: Option<Kubeconfig> = None;
    for path in &paths {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && paths.len() > 1 => continue,
            Err(e) => return Err(format!("kubeconfig {}: {e}", path.display())),
        };
        let mut kc: Kubeconfig = serde_norway::from_str(&text)
            .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
        if let Some(dir) = path.parent() {
            absolute_paths(&mut kc, dir);
        }
        merged = Some(match merged {
            None => kc,
            Some(m) => m
                .merge(kc)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?,
        });
    }
    merged.ok_or_else(|| {
        format!(
            "none of the kubeconfig files exists: {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Makes the file names in `kc` absolute, relative to `dir` (kubectl's rule).
fn absolute_paths(kc: &mut Kubeconfig, dir: &Path) {
    let fix = |p: &mut Option<String>| {
        if let Some(name) = p.as_mut()
            && Path::new(name.as_str()).is_relative()
        {
            *name = dir.join(name.as_str()).to_string_lossy().into_owned();
        }
    };
    for c in kc.clusters.iter_mut().filter_map(|n| n.cluster.as_mut()) {
        fix(&mut c.certificate_authority);
    }
    for a in kc
        .auth_infos
        .iter_mut()
        .filter_map(|n| n.auth_info.as_mut())
    {
        fix(&mut a.client_certificate);
        fix(&mut a.client_key);
        fix(&mut a.token_file);
    }
}

/// The HTTP stack: TLS to the API server, the base URI, and the bearer token if there is one.
fn build(cfg: Config) -> Result<kube::Client, String> {
    refuse_unsupported(&cfg)?;
    let token = Arc::new(Token::of(&cfg.auth_info)?);
    let tls = tls_config(&cfg)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &cfg.tls_server_name {
        Some(name) => {
            let name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("tls-server-name {name:?}: {e}"))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let https = builder.enable_http1().wrap_connector(http);
    let http_client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build::<_, Body>(https);
    let service = ServiceBuilder::new()
        .layer(BaseUriLayer::new(cfg.cluster_url.clone()))
        .layer(MapRequestLayer::new(move |mut req: http::Request<Body>| {
            if let Some(value) = token.header() {
                req.headers_mut().insert(AUTHORIZATION, value);
            }
            req
        }))
        .service(http_client);
    Ok(kube::Client::new(service, cfg.default_namespace))
}

/// Kubeconfig features this client does not implement, named so the user knows what to change.
fn refuse_unsupported(cfg: &Config) -> Result<(), String> {
    let a = &cfg.auth_info;
    let unsupported = [
        (
            a.exec.is_some(),
            "an exec credential plugin (users[].user.exec)",
        ),
        (
            a.auth_provider.is_some(),
            "an auth-provider (users[].user.auth-provider)",
        ),
        (
            a.username.is_some() || a.password.is_some(),
            "a username and password (basic authentication)",
        ),
        (
            a.impersonate.is_some() || a.impersonate_groups.is_some(),
            "impersonation (as / as-groups)",
        ),
        (
            cfg.proxy_url.is_some(),
            "a proxy (clusters[].cluster.proxy-url)",
        ),
        (
            cfg.accept_invalid_certs,
            "insecure-skip-tls-verify (the API server's certificate must be checked)",
        ),
    ];
    match unsupported.iter().find(|(used, _)| *used) {
        Some((_, what)) => Err(format!(
            "the kubeconfig uses {what}, which pgwarden does not support; give it a bearer token, a token file or a client certificate (in a pod, the service account is used)"
        )),
        None => Ok(()),
    }
}

/// The TLS client configuration: the cluster's CA, and the client certificate if there is one.
fn tls_config(cfg: &Config) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for der in cfg.root_cert.iter().flatten() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("certificate-authority: {e}"))?;
    }
    if roots.is_empty() && cfg.cluster_url.scheme_str() == Some("https") {
        return Err(
            "no certificate-authority (or certificate-authority-data) for the cluster: the API server's certificate cannot be checked"
                .into(),
        );
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::api::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let a = &cfg.auth_info;
    let cert = pem_of(
        "client-certificate",
        a.client_certificate_data.as_deref(),
        a.client_certificate.as_deref(),
    )?;
    let key_data = a.client_key_data.as_ref().map(|k| k.expose_secret());
    let key = pem_of("client-key", key_data, a.client_key.as_deref())?;
    match (cert, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client-certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| format!("client-key: no usable private key ({e})"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        (Some(_), None) => Err("client-certificate given without client-key".into()),
        (None, Some(_)) => Err("client-key given without client-certificate".into()),
    }
}

/// PEM bytes from a `*-data` field (base64) or else a file.
fn pem_of(what: &str, data: Option<&str>, file: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    if let Some(data) = data {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Some)
            .map_err(|e| format!("{what}-data is not base64: {e}"));
    }
    file.map(|f| std::fs::read(f).map_err(|e| format!("{what} {f}: {e}")))
        .transpose()
}

/// The bearer token sent with every request.
enum Token {
    None,
    Fixed(HeaderValue),
    /// A service-account token file: projected tokens rotate, so it is read again every
    /// [`TOKEN_REREAD`]; until a read succeeds again the last good token is kept.
    File {
        path: String,
        last: Mutex<Option<(Instant, HeaderValue)>>,
    },
}

impl Token {
    fn of(a: &AuthInfo) -> Result<Token, String> {
        if let Some(t) = &a.token {
            return bearer(t.expose_secret())
                .map(Token::Fixed)
                .ok_or_else(|| "token: not a valid HTTP header value".into());
        }
        let Some(path) = &a.token_file else {
            return Ok(Token::None);
        };
        let first = read_token(path)?;
        Ok(Token::File {
            path: path.clone(),
            last: Mutex::new(Some((Instant::now(), first))),
        })
    }

    fn header(&self) -> Option<HeaderValue> {
        match self {
            Token::None => None,
            Token::Fixed(v) => Some(v.clone()),
            Token::File { path, last } => {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                let stale = last
                    .as_ref()
                    .is_none_or(|(at, _)| at.elapsed() >= TOKEN_REREAD);
                if stale {
                    match read_token(path) {
                        Ok(v) => *last = Some((Instant::now(), v)),
                        Err(e) => tracing::warn!("kubernetes: {e}; using the last token read"),
                    }
                }
                last.as_ref().map(|(_, v)| v.clone())
            }
        }
    }
}

fn read_token(path: &str) -> Result<HeaderValue, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("token file {path}: {e}"))?;
    bearer(text.trim()).ok_or_else(|| format!("token file {path}: not a valid HTTP header value"))
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(user: &str) -> Kubeconfig {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: pki/ca.crt\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user:\n{user}\n"
        );
        serde_norway::from_str(&text).unwrap()
    }

    #[test]
    fn relative_files_are_relative_to_the_kubeconfig() {
        let mut kc = kubeconfig("    client-certificate: a.crt\n    client-key: /abs/a.key");
        absolute_paths(&mut kc, Path::new("/etc/k"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/etc/k/pki/ca.crt")
        );
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate.as_deref(), Some("/etc/k/a.crt"));
        assert_eq!(user.client_key.as_deref(), Some("/abs/a.key"));
    }

    #[tokio::test]
    async fn an_exec_plugin_is_refused_by_name() {
        let mut kc = kubeconfig(
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws",
        );
        kc.clusters[0]
            .cluster
            .as_mut()
            .unwrap()
            .certificate_authority = None;
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        let Err(e) = build(cfg) else {
            panic!("an exec plugin was accepted")
        };
        assert!(e.contains("exec credential plugin"), "{e}");
    }

    #[test]
    fn a_token_file_is_read_again_after_a_minute() {
        let dir = std::env::temp_dir().join(format!("pgwarden-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "one\n").unwrap();
        let a = AuthInfo {
            token_file: Some(path.to_string_lossy().into_owned()),
            ..Default::default()
        };
        let t = Token::of(&a).unwrap();
        assert_eq!(t.header().unwrap(), "Bearer one");
        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(
            t.header().unwrap(),
            "Bearer one",
            "cached within the minute"
        );
        let age = |t: &Token| {
            if let Token::File { last, .. } = t {
                let mut l = last.lock().unwrap();
                let v = l.take().unwrap().1;
                *l = Some((Instant::now().checked_sub(TOKEN_REREAD).unwrap(), v));
            }
        };
        age(&t);
        assert_eq!(t.header().unwrap(), "Bearer two");
        std::fs::remove_file(&path).unwrap();
        age(&t);
        assert_eq!(
            t.header().unwrap(),
            "Bearer two",
            "a failed read keeps the last token"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
