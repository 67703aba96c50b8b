//! TLS for the REST API and for the requests made to other members' APIs (patroni-compat §1.1,
//! §1.2), with rustls.
//!
//! Server side: `restapi.certfile` turns TLS on; [`server_config`] loads the chain, the key
//! (`restapi.keyfile`, else the key inside `certfile`) and, for `verify_client`, the CA
//! (`restapi.cafile`). `required` makes the handshake itself demand a client certificate (as
//! Python's `CERT_REQUIRED`); `optional` lets clients without one in, and the access middleware
//! refuses them on protected requests (403 `client certificate required`). [`TlsListener`]
//! handshakes each connection in its own task, so that a slow or silent client never holds up
//! the others, and hands the finished streams to axum with a [`TlsPeer`] saying whether a
//! certificate was presented.
//!
//! Client side: [`ClientTls`] is Patroni's rule for peer and patronictl requests: trust
//! `ctl.cacert` else `restapi.cafile`, present `ctl.certfile`/`ctl.keyfile`.
//!
//! Every failure names the configuration key it comes from, so that a start-up error points at
//! the line to fix. Encrypted private keys are not supported (rustls has no PEM decryption):
//! `keyfile_password` with an encrypted key is a start-up error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{Config, RestApi};

/// A TLS configuration error, naming the key at fault (`restapi.certfile: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn err(key: &str, msg: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{key}: {msg}"))
}

/// `restapi.verify_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyClient {
    /// No client certificate asked for.
    #[default]
    None,
    /// Asked for; protected requests without one get 403.
    Optional,
    /// Demanded by the handshake.
    Required,
}

impl VerifyClient {
    /// Parses `restapi.verify_client` (absent: `none`).
    pub fn parse(v: Option<&str>) -> Result<VerifyClient, TlsError> {
        match v.map(str::trim) {
            None | Some("none") | Some("") => Ok(VerifyClient::None),
            Some("optional") => Ok(VerifyClient::Optional),
            Some("required") => Ok(VerifyClient::Required),
            Some(o) => Err(err(
                "restapi.verify_client",
                format!("'{o}' is not one of none, optional, required"),
            )),
        }
    }
}

/// Is TLS on for this REST API?
pub fn enabled(r: &RestApi) -> bool {
    r.certfile.as_deref().is_some_and(|c| !c.is_empty())
}

/// Do protected requests need a client certificate (TLS on and `verify_client` set)?
pub fn client_cert_required(r: &RestApi) -> bool {
    enabled(r)
        && VerifyClient::parse(r.verify_client.as_deref()).unwrap_or_default() != VerifyClient::None
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| err(key, format!("{path}: {e}")))
}

fn certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, format!("{path}: {e}")))?;
    if certs.is_empty() {
        return Err(err(key, format!("{path}: no PEM certificate found")));
    }
    Ok(certs)
}

/// The private key in `path` (read for `key`). An encrypted key is refused with a message naming
/// `password_key` when a password was configured, since that is the setting that cannot work.
fn private_key(
    key: &str,
    path: &str,
    password_key: &str,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(match password {
            Some(_) => err(
                password_key,
                format!(
                    "encrypted private keys are not supported ({path}); decrypt it, e.g. `openssl pkey -in {path} -out plain.key`"
                ),
            ),
            None => err(
                key,
                format!(
                    "{path}: the private key is encrypted and no password is set; encrypted keys are not supported, decrypt it"
                ),
            ),
        });
    }
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| err(key, format!("{path}: no usable private key ({e})")))
}

fn roots(key: &str, path: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(key, path)? {
        store.add(c).map_err(|e| err(key, format!("{path}: {e}")))?;
    }
    Ok(store)
}

/// The crypto provider of every TLS configuration pgwarden builds.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's TLS configuration from `restapi`, or `None` when TLS is off.
pub fn server_config(r: &RestApi) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let Some(certfile) = r.certfile.as_deref().filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let chain = certs("restapi.certfile", certfile)?;
    let key = match r.keyfile.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => private_key(
            "restapi.keyfile",
            k,
            "restapi.keyfile_password",
            r.keyfile_password.as_deref(),
        )?,
        None => private_key(
            "restapi.certfile",
            certfile,
            "restapi.keyfile_password",
            r.keyfile_password.as_deref(),
        )?,
    };
    let verify = VerifyClient::parse(r.verify_client.as_deref())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("restapi", e))?;
    let builder = if verify == VerifyClient::None {
        builder.with_no_client_auth()
    } else {
        let Some(ca) = r.cafile.as_deref().filter(|c| !c.is_empty()) else {
            return Err(err(
                "restapi.cafile",
                "required to check client certificates (restapi.verify_client is set)",
            ));
        };
        let v = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots("restapi.cafile", ca)?),
            provider(),
        );
        let v = if verify == VerifyClient::Optional {
            v.allow_unauthenticated()
        } else {
            v
        };
        builder.with_client_cert_verifier(v.build().map_err(|e| err("restapi.cafile", e))?)
    };
    let mut cfg = builder.with_single_cert(chain, key).map_err(|e| {
        err(
            "restapi.keyfile",
            format!("does not match restapi.certfile: {e}"),
        )
    })?;
    // Patroni speaks HTTP/1.0 only; no h2 over ALPN keeps every client on the same path.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

/// What a client trusts and presents when it calls a member's API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// `(configuration key, path)` of the CA bundle; `None`: the system's roots.
    pub ca: Option<(String, String)>,
    /// `(certfile, keyfile)` of the client certificate, named by `key_prefix`.
    pub cert: Option<(String, String)>,
    /// The section the certificate keys live in, for error messages (`ctl`).
    pub key_prefix: String,
    /// Accept any server certificate (`ctl.insecure`, `-k`).
    pub insecure: bool,
}

impl ClientTls {
    /// Patroni's rule for the agent's requests to its peers: CA `ctl.cacert` else
    /// `restapi.cafile`, client certificate `ctl.certfile`/`ctl.keyfile`.
    pub fn of_agent(cfg: &Config) -> ClientTls {
        let ctl = cfg.ctl.as_ref();
        let ca = ctl
            .and_then(|c| c.cacert.clone())
            .map(|p| ("ctl.cacert".to_owned(), p))
            .or_else(|| {
                cfg.restapi
                    .cafile
                    .clone()
                    .map(|p| ("restapi.cafile".to_owned(), p))
            })
            .filter(|(_, p)| !p.is_empty());
        let cert = ctl.and_then(|c| {
            let certfile = c.certfile.clone().filter(|p| !p.is_empty())?;
            Some((certfile.clone(), c.keyfile.clone().unwrap_or(certfile)))
        });
        ClientTls {
            ca,
            cert,
            key_prefix: "ctl".into(),
            insecure: ctl.is_some_and(|c| c.insecure),
        }
    }

    /// Nothing to set up: the client keeps reqwest's defaults.
    pub fn is_default(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && !self.insecure
    }

    /// Verifying a server needs the system's CA roots: no CA bundle is named and certificates
    /// are checked.
    pub fn needs_system_roots(&self) -> bool {
        self.ca.is_none() && !self.insecure
    }

    /// Applies the settings to a reqwest client builder.
    pub fn apply(&self, mut b: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, TlsError> {
        if let Some((key, path)) = &self.ca {
            // Like Python requests' `verify=cafile`: that bundle only, not the system's roots.
            let pem = read(key, path)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| err(key, format!("{path}: {e}")))?;
            if certs.is_empty() {
                return Err(err(key, format!("{path}: no PEM certificate found")));
            }
            b = b.tls_certs_only(certs);
        }
        if let Some((certfile, keyfile)) = &self.cert {
            let ck = format!("{}.certfile", self.key_prefix);
            let kk = format!("{}.keyfile", self.key_prefix);
            let pk = format!("{}.keyfile_password", self.key_prefix);
            certs(&ck, certfile)?;
            private_key(&kk, keyfile, &pk, None)?;
            let mut pem = read(&ck, certfile)?;
            if keyfile != certfile {
                pem.push(b'\n');
                pem.extend(read(&kk, keyfile)?);
            }
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| err(&kk, format!("{keyfile}: {e}")))?;
            b = b.identity(id);
        }
        if self.insecure {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        Ok(b)
    }
}

/// The peer of a TLS connection: its address and whether it presented a certificate (verified
/// by the handshake when it did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPeer {
    /// The remote address.
    pub addr: SocketAddr,
    /// A client certificate was presented and verified.
    pub client_cert: bool,
}

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener whose connections come out TLS-handshaked.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` (must be called inside a tokio runtime). Accepting stops when
    /// the listener is dropped.
    pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(cfg), tx));
        Ok(TlsListener { rx, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>,
) {
    loop {
        let (sock, addr) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(p) => p,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!("REST API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(s)) => {
                    let client_cert = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    let _ = tx.send((s, TlsPeer { addr, client_cert })).await;
                }
                Ok(Err(e)) => tracing::debug!("REST API TLS handshake with {addr} failed: {e}"),
                Err(_) => tracing::debug!("REST API TLS handshake with {addr} timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop only ends once this listener is gone: unreachable in practice,
            // and waiting forever is what a listener with no more clients does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            client_cert: false,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_client_values() {
        assert_eq!(VerifyClient::parse(None), Ok(VerifyClient::None));
        assert_eq!(
            VerifyClient::parse(Some("optional")),
            Ok(VerifyClient::Optional)
        );
        assert_eq!(
            VerifyClient::parse(Some("required")),
            Ok(VerifyClient::Required)
        );
        let e = VerifyClient::parse(Some("sometimes")).unwrap_err();
        assert!(e.0.starts_with("restapi.verify_client: "), "{e}");
    }

    fn rest(certfile: Option<&str>) -> RestApi {
        RestApi {
            listen: "127.0.0.1:0".into(),
            connect_address: "127.0.0.1:0".into(),
            authentication: None,
            certfile: certfile.map(str::to_owned),
            keyfile: None,
            keyfile_password: None,
            cafile: None,
            verify_client: None,
            allowlist: Vec::new(),
            allowlist_include_members: false,
            http_extra_headers: Default::default(),
            https_extra_headers: Default::default(),
        }
    }

    #[test]
    fn missing_files_name_the_key() {
        let e = server_config(&rest(Some("/nonexistent/server.crt"))).unwrap_err();
        assert!(
            e.0.starts_with("restapi.certfile: /nonexistent/server.crt: "),
            "{e}"
        );
        assert!(server_config(&rest(None)).unwrap().is_none());
        assert!(!client_cert_required(&rest(None)));
    }
}
