//! How etcd-client errors map onto [`DcsError`], and the deadline every request runs under.

use std::future::Future;
use std::time::Duration;

use crate::dcs::DcsError;

/// gRPC status codes that mean "no usable answer" rather than "the store said no".
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const DEADLINE_EXCEEDED: i32 = 4;
const UNAVAILABLE: i32 = 14;
const NOT_FOUND: i32 = 5;

/// Connection trouble and timeouts → `Unreachable`; error answers → `Failed`.
pub(super) fn classify(what: &str, e: etcd_client::Error) -> DcsError {
    use etcd_client::Error as E;
    let unreachable = match &e {
        E::GRpcStatus(s) => match i32::from(s.code()) {
            CANCELLED | DEADLINE_EXCEEDED | UNAVAILABLE => true,
            // tonic reports a broken connection as `Unknown: transport error` with the cause
            // attached; etcd's own error answers carry a proper code.
            UNKNOWN => std::error::Error::source(s).is_some() || s.message().contains("transport"),
            _ => false,
        },
        E::TransportError(_)
        | E::IoError(_)
        | E::WatchError(_)
        | E::LeaseKeepAliveError(_)
        | E::EndpointError(_) => true,
        _ => false,
    };
    if unreachable {
        DcsError::Unreachable(format!("{what}: {e}"))
    } else {
        DcsError::Failed(format!("{what}: {e}"))
    }
}

/// The error (as `classify` spelled it) is a failed connection attempt: the request was never
/// sent, so trying again cannot apply it twice.
pub(super) fn never_sent(message: &str) -> bool {
    message.contains("tcp connect error") || message.contains("ConnectError")
}

/// The lease this process holds no longer exists on the server (expired or revoked): either the
/// keepalive's `TTL <= 0` answer or a put's `requested lease not found`.
pub(super) fn lease_gone(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::LeaseKeepAliveError(m) => m.contains("lease not found"),
        E::GRpcStatus(s) => i32::from(s.code()) == NOT_FOUND && s.message().contains("lease"),
        _ => false,
    }
}

/// Runs `fut` under `limit`; a late answer is `Unreachable`, whatever it would have said.
pub(super) async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, DcsError>>,
) -> Result<T, DcsError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(DcsError::Unreachable(format!(
            "{what}: no answer within {limit:?}"
        ))),
    }
}
