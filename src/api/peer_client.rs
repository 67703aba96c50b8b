//! The HTTP client for other members' REST APIs: the agent's `/patroni` probes and the API's
//! switchover checks.
//!
//! Members usually serve plain http, and most clusters never make an https request. The
//! system's CA roots (a few hundred certificates parsed into memory, in every agent) are
//! loaded only when a member is first reached over https and no CA bundle is configured;
//! until then a container image without a CA bundle works too.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::tls::{ClientTls, TlsError};

/// Cheap to clone: clones share the underlying clients.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

struct Inner {
    tls: ClientTls,
    timeout: Option<Duration>,
    user_agent: Option<String>,
    /// For http, and for https too when the TLS settings name what to trust.
    ready: reqwest::Client,
    /// For https trusting the system's roots: built at its first use.
    system_roots: OnceLock<Result<reqwest::Client, String>>,
}

impl PeerClient {
    /// A client with `tls`'s settings, a whole-request `timeout` and a `User-Agent` when given.
    /// Errors are those of the TLS settings (unreadable or invalid files).
    pub fn new(
        tls: ClientTls,
        timeout: Option<Duration>,
        user_agent: Option<String>,
    ) -> Result<PeerClient, TlsError> {
        let mut b = tls.apply(builder(timeout, user_agent.as_deref()))?;
        if tls.needs_system_roots() {
            // used only for http (https goes to `system_roots`): trust nothing, load nothing
            b = b.tls_certs_only(Vec::new());
        }
        let ready = b
            .build()
            .map_err(|e| TlsError(format!("building the HTTP client: {e}")))?;
        Ok(PeerClient {
            inner: Arc::new(Inner {
                tls,
                timeout,
                user_agent,
                ready,
                system_roots: OnceLock::new(),
            }),
        })
    }

    /// A plain client (no TLS settings) with the given timeout and `User-Agent`.
    pub fn plain(timeout: Option<Duration>, user_agent: Option<String>) -> PeerClient {
        PeerClient::new(ClientTls::default(), timeout, user_agent)
            .expect("default TLS settings read no files")
    }

    /// The client to reach `url` with.
    pub fn for_url(&self, url: &str) -> Result<&reqwest::Client, String> {
        let https = url
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("https:"));
        if !https || !self.inner.tls.needs_system_roots() {
            return Ok(&self.inner.ready);
        }
        let inner = &self.inner;
        inner
            .system_roots
            .get_or_init(|| {
                let b = builder(inner.timeout, inner.user_agent.as_deref());
                inner
                    .tls
                    .apply(b)
                    .map_err(|e| e.to_string())?
                    .build()
                    .map_err(|e| format!("building the HTTPS client (system CA roots): {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A GET of `url`, or why no request can be made.
    pub fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, String> {
        Ok(self.for_url(url)?.get(url))
    }
}

fn builder(timeout: Option<Duration>, user_agent: Option<&str>) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder().no_proxy();
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    if let Some(ua) = user_agent {
        b = b.user_agent(ua);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_never_builds_the_system_roots_client() {
        let c = PeerClient::plain(None, None);
        c.for_url("http://127.0.0.1:8008/patroni").unwrap();
        assert!(c.inner.system_roots.get().is_none());
    }

    #[test]
    fn https_without_a_configured_ca_uses_the_system_roots_client() {
        let c = PeerClient::plain(None, None);
        let first = c
            .for_url("HTTPS://127.0.0.1:8008/patroni")
            .map(|c| c as *const _);
        // built once (or failed once, on a machine without a CA bundle), then shared
        assert!(c.inner.system_roots.get().is_some());
        let again = c
            .for_url("https://127.0.0.1:8009/patroni")
            .map(|c| c as *const _);
        assert_eq!(first, again);
    }

    #[test]
    fn a_configured_ca_is_used_for_https_at_once() {
        let tls = ClientTls {
            insecure: true,
            ..ClientTls::default()
        };
        let c = PeerClient::new(tls, None, None).unwrap();
        c.for_url("https://127.0.0.1:8008/patroni").unwrap();
        assert!(c.inner.system_roots.get().is_none());
    }
}
