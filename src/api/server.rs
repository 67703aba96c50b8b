//! The HTTP server: Patroni's dispatch on the first path segment, reply formats and body rules.
//!
//! Every request goes through one handler, [`dispatch`], mounted as the router's fallback, so an
//! access-control middleware (basic auth, allowlist, client certificates: patroni-compat §1.2)
//! slots in as a single `.layer(..)` on [`router`]'s result; [`is_protected`] tells it which
//! requests to check.
//!
//! Deviations from Patroni's HTTP/1.0 server: hyper answers HTTP/1.1 with keep-alive and adds
//! `content-length`/`date` headers to the bare replies of HEAD, OPTIONS, `/liveness` and
//! `/readiness` (they still carry no body; HAProxy and Kubernetes only read the status line).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::access;
use super::cluster::cluster_json;
use super::config::{self as config_ep, ConfigReply};
use super::health::{health_code, liveness_code, readiness_code};
use super::json::to_python_json;
use super::metrics::render_metrics;
use super::peer_client::PeerClient;
use super::restart::{self, Scheduled};
use super::state::{ApiCommand, ApiContext};
use super::status::status_document;
use super::switchover::{self, Action};
use crate::dcs::model::{ClusterView, truthy};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

struct Inner {
    ctx: ApiContext,
    client: PeerClient,
    scheduled_restart: Scheduled,
}

type Shared = Arc<Inner>;

/// The API as an axum router (no listener). Add an access-control layer here when needed.
pub fn router(ctx: ApiContext) -> Router {
    router_with(ctx, None, false)
}

/// [`router`] with the client used for the switchover candidates' probes (`None`: a plain one;
/// members serving https need one that trusts their CA, [`super::tls::ClientTls`]) and whether
/// protected requests need a client certificate ([`super::tls::client_cert_required`]).
pub fn router_with(ctx: ApiContext, peer_client: Option<PeerClient>, client_cert: bool) -> Router {
    let client = peer_client.unwrap_or_else(|| {
        PeerClient::plain(
            Some(ctx.peer_timeout),
            Some(format!("Patroni/{} pgwarden", super::state::VERSION)),
        )
    });
    let guard = access::Guard {
        access: Arc::new(ctx.access.clone()),
        state: ctx.state.clone(),
        client_cert,
    };
    Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(Inner {
            ctx,
            client,
            scheduled_restart: Scheduled::default(),
        }))
        .layer(axum::middleware::from_fn_with_state(guard, access::check))
}

/// How [`serve_with`] serves beyond the plain HTTP defaults.
#[derive(Default)]
pub struct ServeOptions {
    /// TLS on the listener ([`super::tls::server_config`]); `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The client for requests to other members (see [`router_with`]).
    pub peer_client: Option<PeerClient>,
    /// Protected requests need a client certificate (see [`router_with`]).
    pub client_cert: bool,
}

/// Serves the API on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: ApiContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, ctx, ServeOptions::default(), shutdown).await
}

/// [`serve`] with TLS and a peer client. Without TLS the plain HTTP path is unchanged.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    ctx: ApiContext,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router_with(ctx, opts.peer_client, opts.client_cert);
    match opts.tls {
        None => {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(cfg) => {
            let listener = super::tls::TlsListener::new(listener, cfg)?;
            let app = app.into_make_service_with_connect_info::<super::tls::TlsPeer>();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Requests Patroni protects with its access control (§1.2).
pub fn is_protected(method: &Method, path: &str) -> bool {
    let seg = first_segment(path);
    match *method {
        Method::PATCH | Method::PUT => seg == "config",
        Method::POST => matches!(
            seg,
            "reload"
                | "restart"
                | "reinitialize"
                | "failover"
                | "switchover"
                | "sigterm"
                | "citus"
                | "failsafe"
        ),
        Method::DELETE => matches!(seg, "restart" | "switchover"),
        _ => false,
    }
}

fn first_segment(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

fn with_type(code: u16, body: impl Into<Body>, ctype: &'static str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, body.into()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// A JSON reply laid out as Python's `json.dumps`.
fn json_reply<T: serde::Serialize + ?Sized>(code: u16, v: &T) -> Response {
    with_type(code, to_python_json(v), "application/json")
}

/// A text reply; `text/html` like Patroni's `write_response` (quirk kept).
fn text_reply(code: u16, msg: impl Into<String>) -> Response {
    with_type(code, msg.into(), "text/html")
}

/// A status line without a body.
fn bare(code: u16) -> Response {
    StatusCode::from_u16(code)
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
        .into_response()
}

/// Python's `send_error` page.
fn error_page(code: u16, message: Option<&str>) -> Response {
    let (phrase, explain) = match code {
        400 => ("Bad Request", "Bad request syntax or unsupported method"),
        409 => ("Conflict", "Request conflict"),
        411 => ("Length Required", "Client must specify Content-Length"),
        413 => ("Request Entity Too Large", "Entity is too large"),
        405 => (
            "Method Not Allowed",
            "Specified method is invalid for this resource",
        ),
        502 => ("Bad Gateway", "Invalid responses from another server/proxy"),
        _ => (
            "Service Unavailable",
            "The server cannot process the request due to a high load",
        ),
    };
    let body = format!(
        "<!DOCTYPE HTML>\n<html lang=\"en\">\n    <head>\n        <meta charset=\"utf-8\">\n        \
         <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n        \
         <p>Error code: {code}</p>\n        <p>Message: {}.</p>\n        \
         <p>Error code explanation: {code} - {explain}.</p>\n    </body>\n</html>\n",
        message.unwrap_or(phrase)
    );
    with_type(code, body, "text/html;charset=utf-8")
}

/// The methods a path answers: every path is a health check (GET, HEAD, OPTIONS); some take
/// writes too.
fn allowed_methods(path: &str) -> &'static str {
    match first_segment(path) {
        "config" => "GET, HEAD, OPTIONS, PATCH, PUT",
        "switchover" | "restart" => "GET, HEAD, OPTIONS, POST, DELETE",
        "failover" | "reload" | "reinitialize" | "failsafe" | "sigterm" | "citus" | "mpp" => {
            "GET, HEAD, OPTIONS, POST"
        }
        _ => "GET, HEAD, OPTIONS",
    }
}

/// A method the path does not take: 405 with `Allow`. Patroni (Python's `http.server`) answers
/// 501 here; a client error is the truthful code, and no client depends on the 501.
fn not_allowed(method: &Method, path: &str) -> Response {
    let mut r = error_page(405, Some(&format!("Unsupported method ('{method}')")));
    r.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static(allowed_methods(path)),
    );
    r
}

/// Reads a JSON object body by Patroni's rules: no `Content-Length` → 411 (or `{}` when the
/// body is optional); over [`MAX_BODY_BYTES`] → 413; empty, invalid or not an object → 400
/// (an empty object is fine only for optional bodies).
async fn read_json(
    headers: &HeaderMap,
    body: Body,
    optional: bool,
) -> Result<Map<String, Value>, Response> {
    let Some(len) = headers.get(header::CONTENT_LENGTH) else {
        return if optional {
            Ok(Map::new())
        } else {
            Err(error_page(411, None))
        };
    };
    let len: usize = match len.to_str().ok().and_then(|s| s.trim().parse().ok()) {
        Some(n) => n,
        None => return Err(error_page(400, None)),
    };
    let too_large = || {
        error_page(
            413,
            Some(&format!(
                "Request body is larger than {MAX_BODY_BYTES} bytes"
            )),
        )
    };
    if len > MAX_BODY_BYTES {
        return Err(too_large());
    }
    if len == 0 && optional {
        return Ok(Map::new());
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) if optional || !m.is_empty() => Ok(m),
        _ => Err(error_page(400, None)),
    }
}

/// The trusted cached view, else whatever the backend answers without forcing a read.
async fn cached_view(inner: &Inner, now: Instant) -> Result<ClusterView, crate::dcs::DcsError> {
    let snap = inner.ctx.state.snapshot();
    match snap.valid_cluster(now) {
        Some(c) => Ok(c.clone()),
        None => inner.ctx.dcs.load(false).await,
    }
}

/// The single entry point; see the module documentation.
async fn dispatch(State(inner): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let now = Instant::now();
    let method = parts.method.clone();
    match method {
        // Patroni routes every HEAD/OPTIONS through the health router (so `HEAD /liveness` is
        // 503: quirk kept) and writes only the status line.
        Method::HEAD | Method::OPTIONS => {
            bare(health_code(&path, &query, &inner.ctx.state.snapshot(), now))
        }
        Method::GET => get(&inner, &path, &query, now).await,
        Method::POST => match first_segment(&path) {
            "switchover" | "failover" => {
                let action = if first_segment(&path) == "switchover" {
                    Action::Switchover
                } else {
                    Action::Failover
                };
                let body = match read_json(&parts.headers, body, false).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let (code, msg) = switchover::run(&inner.ctx, &inner.client, action, &body).await;
                text_reply(code, msg)
            }
            "reload" => {
                let _ = inner.ctx.commands.try_send(ApiCommand::Reload);
                text_reply(202, "reload scheduled")
            }
            "restart" => match read_json(&parts.headers, body, true).await {
                Ok(b) => post_restart(&inner, &b).await,
                Err(r) => r,
            },
            "reinitialize" => match read_json(&parts.headers, body, true).await {
                Ok(b) => post_reinitialize(&inner, &b).await,
                Err(r) => r,
            },
            "failsafe" => match read_json(&parts.headers, body, false).await {
                Ok(b) => post_failsafe(&inner, &b).await,
                Err(r) => r,
            },
            "sigterm" => text_reply(202, "shutdown scheduled"),
            "citus" | "mpp" => text_reply(200, "OK"),
            _ => not_allowed(&method, &path),
        },
        Method::PATCH | Method::PUT if first_segment(&path) == "config" => {
            let body = match read_json(&parts.headers, body, false).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let reply = if method == Method::PATCH {
                config_ep::patch(&inner.ctx, &body).await
            } else {
                config_ep::put(&inner.ctx, body).await
            };
            match reply {
                ConfigReply::Ok(data) => json_reply(200, &data),
                ConfigReply::Error(code) => error_page(code, None),
            }
        }
        Method::DELETE => match first_segment(&path) {
            "restart" => {
                if inner.scheduled_restart.cancel() {
                    text_reply(200, "scheduled restart deleted")
                } else {
                    text_reply(404, "no restarts are scheduled")
                }
            }
            "switchover" => {
                let (code, msg) = switchover::delete_scheduled(&inner.ctx).await;
                if code == 409 {
                    error_page(409, None)
                } else {
                    text_reply(code, msg)
                }
            }
            _ => not_allowed(&method, &path),
        },
        _ => not_allowed(&method, &path),
    }
}

/// `POST /restart`: validate, then restart now (if the conditions hold) or schedule.
async fn post_restart(inner: &Inner, body: &Map<String, Value>) -> Response {
    let snap = inner.ctx.state.snapshot();
    let req = match restart::validate(body, snap.pause, chrono::Utc::now()) {
        Ok(r) => r,
        Err((code, msg)) => return text_reply(code, msg),
    };
    if let Some(at) = req.schedule {
        return if inner.scheduled_restart.schedule(&inner.ctx, req, at) {
            text_reply(202, "Restart scheduled")
        } else {
            text_reply(409, "Another restart is already scheduled")
        };
    }
    if !restart::conditions_met(&req, &snap) {
        return text_reply(503, "restart conditions are not satisfied");
    }
    let (code, msg) = restart::restart_now(&inner.ctx).await;
    text_reply(code, msg)
}

/// `POST /reinitialize`: a replica of a cluster with a leader wipes and re-clones (the HA core
/// decides whether it may).
async fn post_reinitialize(inner: &Inner, _body: &Map<String, Value>) -> Response {
    let (reply, rx) = super::state::Reply::new();
    if inner
        .ctx
        .commands
        .try_send(ApiCommand::Reinitialize(reply))
        .is_err()
    {
        return text_reply(503, "reinitialize already in progress");
    }
    match tokio::time::timeout(std::time::Duration::from_secs(60), rx).await {
        Ok(Ok(Ok(()))) => text_reply(200, "reinitialize started"),
        Ok(Ok(Err(msg))) => text_reply(503, msg),
        _ => text_reply(503, "reinitialize failed"),
    }
}

/// `POST /failsafe` from a leader whose DCS is unreachable. The HA core decides (it must not
/// confirm a leader while it races or leads itself) and answers at once; an agent too busy to
/// answer within the sender's timeout does not confirm.
async fn post_failsafe(inner: &Inner, body: &Map<String, Value>) -> Response {
    let snap = inner.ctx.state.snapshot();
    let enabled = snap
        .global_config()
        .and_then(|c| c.get("failsafe_mode"))
        .is_some_and(truthy);
    if !enabled {
        return error_page(502, None);
    }
    if snap.pg.role == "primary" && snap.pg.state == "running" {
        return text_reply(500, "Running as a leader");
    }
    let Some(name) = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return text_reply(400, "the failsafe request names no sender (name)");
    };
    let ttl = body
        .get("ttl")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite() && *t > 0.0 && *t < 86_400.0)
        .map(std::time::Duration::from_secs_f64);
    let ping = super::state::FailsafePing {
        name: name.to_owned(),
        ttl,
    };
    let (reply, rx) = super::state::Reply::new();
    if inner
        .ctx
        .commands
        .try_send(ApiCommand::Failsafe(ping, reply))
        .is_err()
    {
        return text_reply(503, "the agent is busy");
    }
    match tokio::time::timeout(std::time::Duration::from_millis(1500), rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(msg))) => return text_reply(500, msg),
        _ => return text_reply(503, "the agent did not answer in time"),
    }
    let snap = inner.ctx.state.snapshot();
    let lsn = match snap.received_location().max(snap.replayed_location()) {
        0 => String::new(),
        n => n.to_string(),
    };
    let mut r = text_reply(200, "Accepted");
    if let Ok(v) = HeaderValue::from_str(&lsn) {
        r.headers_mut().insert("lsn", v);
    }
    r
}

/// The status document plus what only the server knows (`scheduled_restart`).
fn full_status(inner: &Inner, snap: &super::state::Snapshot, now: Instant) -> super::json::Obj {
    let mut doc = status_document(snap, now);
    if let Some(sr) = inner.scheduled_restart.document() {
        doc.push("scheduled_restart", Value::Object(sr));
    }
    doc
}

async fn get(inner: &Inner, path: &str, query: &str, now: Instant) -> Response {
    let snap = inner.ctx.state.snapshot();
    match first_segment(path) {
        "patroni" => json_reply(200, &full_status(inner, &snap, now)),
        "liveness" => bare(liveness_code(&snap, now)),
        "readiness" => bare(readiness_code(query, &snap, now)),
        "metrics" => with_type(200, render_metrics(&snap, now), "text/plain"),
        "cluster" => match inner.ctx.dcs.load(true).await {
            Ok(view) => json_reply(200, &cluster_json(&view)),
            Err(e) => text_reply(503, e.to_string()),
        },
        "history" => match cached_view(inner, now).await {
            Ok(view) => json_reply(200, view.history.as_deref().unwrap_or(&[])),
            Err(e) => text_reply(503, e.to_string()),
        },
        "config" => match cached_view(inner, now).await {
            Ok(ClusterView {
                config: Some(c), ..
            }) => json_reply(200, &c.value),
            _ => error_page(502, None),
        },
        "failsafe" => {
            let enabled = snap
                .global_config()
                .and_then(|c| c.get("failsafe_mode"))
                .is_some_and(truthy);
            match (enabled, snap.cluster.as_ref()) {
                (true, Some(c)) => json_reply(200, &c.failsafe.clone().unwrap_or_default()),
                _ => error_page(502, None),
            }
        }
        // Everything else, including unknown paths, is the health router (503 for an unknown
        // path, never 404: Patroni's quirk, kept because checks may rely on it).
        _ => json_reply(
            health_code(path, query, &snap, now),
            &full_status(inner, &snap, now),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_requests() {
        assert!(is_protected(&Method::POST, "/switchover"));
        assert!(is_protected(&Method::PATCH, "/config"));
        assert!(is_protected(&Method::DELETE, "/switchover"));
        assert!(!is_protected(&Method::GET, "/config"));
        assert!(!is_protected(&Method::POST, "/mpp"));
        assert_eq!(first_segment("/patroni/x"), "patroni");
        assert_eq!(first_segment("/"), "");
    }
}
