//! The one polling loop the test harnesses wait with.
#![allow(dead_code)]

use std::time::Duration;

/// Polls `check` every `every` until it gives `Some`; `None` once `timeout` has passed (the
/// caller says what it waited for, with what it knows).
pub async fn poll_until<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if std::time::Instant::now() > until {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
