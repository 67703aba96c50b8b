//! Access control on unsafe requests (patroni-compat §1.2): IP allowlist (403), then a client
//! certificate under TLS with `verify_client` (403), then basic authentication (401 with
//! `WWW-Authenticate`). Health GETs and every other safe request stay
//! open, as in Patroni: load balancers and probes never carry credentials.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::server::is_protected;
use super::state::ApiState;
use super::tls::TlsPeer;

/// The access rules of one server.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `restapi.authentication` as `(username, password)`.
    pub auth: Option<(String, String)>,
    /// `restapi.allowlist`: CIDRs, addresses or host names. Empty: everybody.
    pub allowlist: Vec<String>,
    /// `restapi.allowlist_include_members`: members' `api_url` hosts are allowed too.
    pub include_members: bool,
}

impl Access {
    /// Nothing to check.
    pub fn is_open(&self) -> bool {
        self.auth.is_none() && self.allowlist.is_empty() && !self.include_members
    }
}

/// Does `ip` match an allowlist entry (CIDR, address or host name)?
async fn entry_matches(entry: &str, ip: IpAddr) -> bool {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<ipnet::IpNet>() {
        return net.contains(&normalize(ip));
    }
    if let Ok(a) = entry.parse::<IpAddr>() {
        return normalize(a) == normalize(ip);
    }
    // A host name: resolved on each check, bounded so that a slow resolver cannot hold a
    // request for long (the request is then refused).
    let lookup = tokio::net::lookup_host((entry, 0));
    match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
        Ok(Ok(addrs)) => addrs
            .into_iter()
            .any(|a| normalize(a.ip()) == normalize(ip)),
        _ => false,
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The host part of an `api_url` (`http://host:port/patroni`).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    Some(host.to_owned()).filter(|h| !h.is_empty())
}

async fn allowed(access: &Access, state: &ApiState, ip: IpAddr, path: &str) -> bool {
    if access.allowlist.is_empty() && !access.include_members {
        return true;
    }
    for e in &access.allowlist {
        if entry_matches(e, ip).await {
            return true;
        }
    }
    // Patroni skips the members part for /failsafe (its sender is checked by the protocol).
    if access.include_members && !path.trim_start_matches('/').starts_with("failsafe") {
        let hosts: Vec<String> = state
            .snapshot()
            .cluster
            .as_ref()
            .map(|c| {
                c.members
                    .values()
                    .filter_map(|m| m.api_url.as_deref().and_then(url_host))
                    .collect()
            })
            .unwrap_or_default();
        for h in hosts {
            if entry_matches(&h, ip).await {
                return true;
            }
        }
    }
    false
}

fn authenticated(access: &Access, header_value: Option<&HeaderValue>) -> Result<(), &'static str> {
    let Some((user, pass)) = &access.auth else {
        return Ok(());
    };
    let Some(v) = header_value.and_then(|v| v.to_str().ok()) else {
        return Err("no auth header received");
    };
    let ok = v
        .strip_prefix("Basic ")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|s| s == format!("{user}:{pass}"));
    if ok { Ok(()) } else { Err("not authenticated") }
}

fn denied(code: StatusCode, msg: &'static str) -> Response {
    let mut r = (code, msg).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Patroni\""),
        );
    }
    r
}

/// What the middleware needs: the rules and the snapshot (for members' addresses).
#[derive(Clone)]
pub struct Guard {
    /// The rules.
    pub access: Arc<Access>,
    /// The snapshot handle.
    pub state: ApiState,
    /// TLS with `restapi.verify_client` `optional`/`required`: protected requests need a client
    /// certificate. Only a [`TlsPeer`] connection can carry one, so a plain one is refused.
    pub client_cert: bool,
}

/// The middleware: checks protected requests, passes everything else through.
pub async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if (g.access.is_open() && !g.client_cert) || !is_protected(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    // A TLS connection says whether a certificate came with it; a plain one never has one.
    let (peer, has_cert) = match req.extensions().get::<ConnectInfo<TlsPeer>>() {
        Some(ConnectInfo(p)) => (Some(p.addr.ip()), p.client_cert),
        None => (
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            false,
        ),
    };
    match peer {
        Some(ip) if allowed(&g.access, &g.state, ip, req.uri().path()).await => {}
        // Without a known peer address (no connect info) only an empty allowlist passes.
        None if g.access.allowlist.is_empty() && !g.access.include_members => {}
        _ => return denied(StatusCode::FORBIDDEN, "Access is denied"),
    }
    if g.client_cert && !has_cert {
        return denied(StatusCode::FORBIDDEN, "client certificate required");
    }
    if let Err(msg) = authenticated(&g.access, req.headers().get(header::AUTHORIZATION)) {
        return denied(StatusCode::UNAUTHORIZED, msg);
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allowlist_entries() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(entry_matches("10.0.0.0/8", ip).await);
        assert!(entry_matches("10.1.2.3", ip).await);
        assert!(!entry_matches("192.168.0.0/16", ip).await);
        assert!(entry_matches("127.0.0.1", "::ffff:127.0.0.1".parse().unwrap()).await);
        assert_eq!(url_host("http://db1:8008/patroni").as_deref(), Some("db1"));
        assert_eq!(
            url_host("https://[::1]:8008/patroni").as_deref(),
            Some("::1")
        );
    }

    #[test]
    fn basic_auth() {
        let a = Access {
            auth: Some(("u".into(), "p".into())),
            ..Access::default()
        };
        assert_eq!(authenticated(&a, None), Err("no auth header received"));
        let good = HeaderValue::from_static("Basic dTpw");
        assert_eq!(authenticated(&a, Some(&good)), Ok(()));
        let bad = HeaderValue::from_static("Basic dTpx");
        assert_eq!(authenticated(&a, Some(&bad)), Err("not authenticated"));
    }
}
