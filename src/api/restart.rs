//! `POST /restart` and `DELETE /restart` (patroni-compat §1.7).
//!
//! An immediate restart is synchronous, as in Patroni: the request waits for the agent's answer
//! (bounded). A scheduled restart lives here, in the server: a timer that fires the same
//! conditional restart at the requested time, cancelled by `DELETE /restart`. It is shown as
//! `scheduled_restart` in this member's status document.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

use super::cluster::{Schedule, isoformat, parse_schedule};
use super::state::{ApiCommand, ApiContext, Reply, Snapshot};

/// How long an immediate restart request waits for the agent before answering 503.
const RESTART_WAIT: Duration = Duration::from_secs(180);

/// A validated restart request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartRequest {
    /// Only restart a member running in this role (`primary`, `replica`, `standby_leader`).
    pub role: Option<String>,
    /// Only restart if the running server is older than this `server_version_num`.
    pub postgres_version: Option<u32>,
    /// Only restart if a restart is pending.
    pub restart_pending: bool,
    /// When to restart; `None`: now.
    pub schedule: Option<DateTime<FixedOffset>>,
    /// The request's keys as given (shown in `scheduled_restart`).
    pub raw: Map<String, Value>,
}

/// `X.Y[.Z]` → `server_version_num` (`15.4` → 150004, `9.6.3` → 90603).
pub fn parse_pg_version(s: &str) -> Option<u32> {
    let parts: Vec<u32> = s
        .trim()
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [major, minor] if *major >= 10 => Some(major * 10000 + minor),
        [major, minor, patch] if *major < 10 => Some(major * 10000 + minor * 100 + patch),
        [major, _minor, patch] => Some(major * 10000 + patch),
        _ => None,
    }
}

/// Validates a body; `Err((code, message))` on bad input.
pub fn validate(
    body: &Map<String, Value>,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<RestartRequest, (u16, String)> {
    let bad = |m: String| Err((400, m));
    let mut req = RestartRequest {
        raw: body.clone(),
        ..RestartRequest::default()
    };
    for (k, v) in body {
        match k.as_str() {
            "schedule" => {
                let Some(s) = v.as_str() else {
                    return bad("schedule must be a string".into());
                };
                if paused {
                    return Err((500, "Can't schedule restart in the paused state".into()));
                }
                match parse_schedule(s) {
                    Schedule::At(t) if t.with_timezone(&Utc) < now => {
                        return Err((422, "Cannot schedule restart in the past".into()));
                    }
                    Schedule::At(t) => req.schedule = Some(t),
                    Schedule::NoTimezone => {
                        return bad(
                            "Timezone information is mandatory for the scheduled restart".into(),
                        );
                    }
                    Schedule::Invalid => {
                        return Err((422, "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601".into()));
                    }
                }
            }
            "role" => match v.as_str() {
                // `master` is what patronictl 3.x sends.
                Some(r @ ("primary" | "replica" | "standby_leader")) => req.role = Some(r.into()),
                Some("master") => req.role = Some("primary".into()),
                _ => {
                    return bad(format!(
                        "PostgreSQL role should be one of primary, replica, standby_leader; got {v}"
                    ));
                }
            },
            "postgres_version" => match v.as_str().and_then(parse_pg_version) {
                Some(n) => req.postgres_version = Some(n),
                None => {
                    return bad(format!(
                        "PostgreSQL version should be in the first.major.minor format; got {v}"
                    ));
                }
            },
            "restart_pending" => {
                req.restart_pending = v.as_bool().unwrap_or(true) || !v.is_boolean()
            }
            "timeout" => {
                let ok = match v {
                    Value::Number(n) => n.as_f64().is_some_and(|f| f > 0.0),
                    Value::String(s) => {
                        humantime::parse_duration(s.trim()).is_ok_and(|d| !d.is_zero())
                            || s.trim().parse::<f64>().is_ok_and(|f| f > 0.0)
                    }
                    _ => false,
                };
                if !ok {
                    return bad(format!(
                        "timeout should be a positive number of seconds; got {v}"
                    ));
                }
            }
            other => return bad(format!("Unknown filter for the scheduled restart: {other}")),
        }
    }
    Ok(req)
}

/// Patroni's restart conditions against what this member runs now.
pub fn conditions_met(req: &RestartRequest, s: &Snapshot) -> bool {
    if let Some(role) = &req.role {
        let current = if s.pg.role == "master" {
            "primary"
        } else {
            s.pg.role.as_str()
        };
        if role != current {
            return false;
        }
    }
    if let Some(v) = req.postgres_version
        && s.pg.server_version().is_none_or(|running| running >= v)
    {
        return false;
    }
    if req.restart_pending && !s.pg.pending_restart() {
        return false;
    }
    true
}

/// Asks the agent to restart and waits (bounded) for its answer.
pub async fn restart_now(ctx: &ApiContext) -> (u16, String) {
    let (reply, rx) = Reply::new();
    if ctx.commands.try_send(ApiCommand::Restart(reply)).is_err() {
        return (503, "restart failed: the agent is busy".into());
    }
    match tokio::time::timeout(RESTART_WAIT, rx).await {
        Ok(Ok(Ok(()))) => (200, "restarted successfully".into()),
        Ok(Ok(Err(msg))) => (503, msg),
        _ => (503, "restart failed".into()),
    }
}

/// A pending scheduled restart: its `scheduled_restart` document and its timer.
type Pending = (Map<String, Value>, JoinHandle<()>);

/// The scheduled restart of this member, if any.
#[derive(Default)]
pub struct Scheduled {
    slot: Mutex<Option<Pending>>,
}

impl Scheduled {
    /// `scheduled_restart` of the status document: `{"schedule": iso, ...request keys}`.
    pub fn document(&self) -> Option<Map<String, Value>> {
        let g = self.slot.lock().ok()?;
        let (doc, handle) = g.as_ref()?;
        (!handle.is_finished()).then(|| doc.clone())
    }

    /// Starts the timer unless one is pending; `false` if one is.
    pub fn schedule(
        &self,
        ctx: &ApiContext,
        req: RestartRequest,
        at: DateTime<FixedOffset>,
    ) -> bool {
        let Ok(mut g) = self.slot.lock() else {
            return false;
        };
        if g.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return false;
        }
        let mut doc = req.raw.clone();
        doc.insert("schedule".into(), Value::String(isoformat(&at)));
        let ctx = ctx.clone();
        let handle = tokio::spawn(async move {
            let wait = (at.with_timezone(&Utc) - Utc::now())
                .to_std()
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            let snap = ctx.state.snapshot();
            if conditions_met(&req, &snap) {
                let (code, msg) = restart_now(&ctx).await;
                tracing::info!(code, "scheduled restart: {msg}");
            } else {
                tracing::info!("scheduled restart skipped: restart conditions are not satisfied");
            }
        });
        *g = Some((doc, handle));
        true
    }

    /// Cancels a pending scheduled restart; `false` if there was none.
    pub fn cancel(&self) -> bool {
        let Ok(mut g) = self.slot.lock() else {
            return false;
        };
        match g.take() {
            Some((_, h)) if !h.is_finished() => {
                h.abort();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::PgStatus;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn versions() {
        assert_eq!(parse_pg_version("15.4"), Some(150004));
        assert_eq!(parse_pg_version("9.6.3"), Some(90603));
        assert_eq!(parse_pg_version("x"), None);
        assert_eq!(parse_pg_version("15"), None);
    }

    #[test]
    fn validation() {
        let now = Utc::now();
        assert_eq!(
            validate(&body(json!({"role": "boss"})), false, now)
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            validate(&body(json!({"foo": 1})), false, now)
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            validate(&body(json!({"timeout": -1})), false, now)
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            validate(
                &body(json!({"schedule": "2020-01-01T00:00:00+00:00"})),
                false,
                now
            )
            .unwrap_err()
            .0,
            422
        );
        assert_eq!(
            validate(
                &body(json!({"schedule": "2999-01-01T00:00:00"})),
                false,
                now
            )
            .unwrap_err()
            .0,
            400
        );
        assert_eq!(
            validate(
                &body(json!({"schedule": "2999-01-01T00:00:00Z"})),
                true,
                now
            )
            .unwrap_err()
            .0,
            500
        );
        let r = validate(
            &body(json!({"role": "master", "restart_pending": true, "postgres_version": "16.1"})),
            false,
            now,
        )
        .unwrap();
        let mut s = Snapshot::new("c", "m");
        s.pg.role = "primary".into();
        s.pg.status = Some(PgStatus {
            server_version: 150004,
            ..PgStatus::default()
        });
        assert!(!conditions_met(&r, &s));
        s.pg.status.as_mut().unwrap().pending_restart = true;
        assert!(conditions_met(&r, &s));
        s.pg.role = "replica".into();
        assert!(!conditions_met(&r, &s));
    }
}
