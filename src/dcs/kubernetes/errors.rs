//! Mapping kube-client failures onto [`DcsError`], and the time bound on every call.

use std::future::Future;
use std::time::Duration;

use crate::dcs::DcsError;

/// The HTTP status of an API error, if the server answered.
pub(super) fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An answer with a 5xx (etcd behind the API server is down, a timeout inside it) or no answer
/// at all is "unreachable": the store cannot confirm anything. Other API errors are real errors.
pub(super) fn classify(what: &str, e: kube::Error) -> DcsError {
    match &e {
        kube::Error::Api(s) if s.code < 500 && s.code != 429 => {
            DcsError::Failed(format!("{what}: {} {}: {}", s.code, s.reason, s.message))
        }
        _ => DcsError::Unreachable(format!("{what}: {e}")),
    }
}

/// Runs `fut` for at most `limit`; a timeout is an unreachable store.
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
