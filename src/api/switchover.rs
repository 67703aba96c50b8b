//! `POST /switchover` and `POST /failover` (patroni-compat §1.7).
//!
//! [`validate`] is pure: the 400/422 checks in Patroni's order, then the DCS-side feasibility
//! checks (412) that need no network. [`run`] adds the candidate probes, the `failover` key write,
//! the wake-up and the result poll.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use super::cluster::{Schedule, isoformat, parse_schedule};
use super::peer_client::PeerClient;
use super::state::{ApiCommand, ApiContext, config_paused};
use crate::dcs::model::{ClusterView, Failover, Member, tags_nofailover};

/// Which endpoint was called (a failover naming a leader becomes a switchover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /switchover`
    Switchover,
    /// `POST /failover`
    Failover,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Switchover => "switchover",
            Action::Failover => "failover",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Action::Switchover => "Switchover",
            Action::Failover => "Failover",
        }
    }
}

/// A text reply: status code and message (sent as `text/html`, as Patroni does).
pub type Reply = (u16, String);

/// What remains to do once a request passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The action after the leader-implies-switchover rule.
    pub action: Action,
    /// Requested leader.
    pub leader: Option<String>,
    /// Requested candidate.
    pub candidate: Option<String>,
    /// `isoformat()` of the schedule, if any.
    pub scheduled_at: Option<String>,
    /// Members to probe (`GET <api_url>`); one good answer makes the action possible.
    /// Empty when scheduled (Patroni does not check feasibility then).
    pub probe: Vec<(String, Member)>,
    /// The leader at validation time (to detect a change while polling).
    pub current_leader: Option<String>,
}

/// A request field as Patroni reads it: missing, `null`, `""`, `false`, `0` count as absent;
/// other non-string values are taken as their JSON text.
fn field(body: &Map<String, Value>, key: &str) -> Option<String> {
    match body.get(key)? {
        Value::Null | Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        Value::Array(a) if a.is_empty() => None,
        Value::Object(o) if o.is_empty() => None,
        other => Some(other.to_string()),
    }
}

fn bad(msg: impl Into<String>) -> Reply {
    (400, msg.into())
}

/// The validation sequence, in Patroni's order. `view` is a fresh DCS read; `paused_fallback`
/// is used when the view has no configuration.
pub fn validate(
    action: Action,
    body: &Map<String, Value>,
    view: &ClusterView,
    paused_fallback: bool,
    now: DateTime<Utc>,
) -> Result<Plan, Reply> {
    let leader = field(body, "leader");
    let candidate = field(body, "candidate").or_else(|| field(body, "member"));
    let schedule = body
        .get("scheduled_at")
        .filter(|v| !matches!(v, Value::Null | Value::Bool(false)));
    let schedule = schedule.filter(|v| v.as_str() != Some(""));
    let config = view.config.as_ref().map(|c| &c.value);
    let paused = if config.is_some() {
        config_paused(config)
    } else {
        paused_fallback
    };

    if action == Action::Failover && candidate.is_none() {
        return Err(bad(
            "Failover could be performed only to a specific candidate",
        ));
    }
    if action == Action::Switchover && leader.is_none() {
        return Err(bad(
            "Switchover could be performed only from a specific leader",
        ));
    }
    let mut scheduled_at = None;
    if let Some(raw) = schedule {
        if action == Action::Failover {
            return Err(bad("Failover can't be scheduled"));
        }
        if paused {
            return Err(bad("Can't schedule switchover in the paused state"));
        }
        let parsed = match raw.as_str() {
            Some(s) => parse_schedule(s),
            None => Schedule::Invalid,
        };
        match parsed {
            Schedule::At(t) if t < now => {
                return Err((
                    422,
                    format!("Cannot schedule {} in the past", action.name()),
                ));
            }
            Schedule::At(t) => scheduled_at = Some(isoformat(&t)),
            Schedule::NoTimezone => {
                return Err(bad(format!(
                    "Timezone information is mandatory for the scheduled {}",
                    action.name()
                )));
            }
            Schedule::Invalid => {
                return Err((
                    422,
                    "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601"
                        .into(),
                ));
            }
        }
    }
    if paused && candidate.is_none() {
        return Err(bad(
            "Switchover is possible only to a specific candidate in a paused state",
        ));
    }
    let action = if action == Action::Failover && leader.is_some() {
        Action::Switchover
    } else {
        action
    };
    if leader == candidate {
        return Err(bad("Switchover target and source are the same"));
    }
    let current_leader = view.leader.as_ref().map(|l| l.name.clone());
    let mut plan = Plan {
        action,
        leader,
        candidate,
        scheduled_at,
        probe: Vec::new(),
        current_leader,
    };
    if plan.scheduled_at.is_none() {
        plan.probe = feasible_members(&plan, view).map_err(|m| (412, m))?;
    }
    Ok(plan)
}

/// Patroni's `is_failover_possible` up to the peer probes: the members worth probing (the
/// core's rule, [`crate::ha::switchover::candidates`]).
fn feasible_members(plan: &Plan, view: &ClusterView) -> Result<Vec<(String, Member)>, String> {
    let current = plan.current_leader.as_deref();
    if let Some(l) = &plan.leader
        && current != Some(l.as_str())
    {
        return Err("leader name does not match".into());
    }
    let names = crate::ha::switchover::candidates(
        view,
        current,
        plan.candidate.as_deref(),
        plan.action == Action::Switchover,
    )
    .map_err(|e| e.message(plan.action.name()))?;
    Ok(names
        .into_iter()
        .filter_map(|n| Some((n.to_owned(), view.members.get(n)?.clone())))
        .collect())
}

/// Probes one member: reachable (any JSON object answer), not `nofailover` (member key or
/// reported tags), not `watchdog_failed`.
async fn member_ok(client: PeerClient, member: Member) -> bool {
    let Some(url) = member.api_url.clone() else {
        return false;
    };
    let Ok(request) = client.get(&url) else {
        return false;
    };
    let Ok(resp) = request.send().await else {
        return false;
    };
    let Ok(Value::Object(doc)) = resp.json::<Value>().await else {
        return false;
    };
    let reported_tags = match doc.get("tags") {
        Some(Value::Object(t)) => Some(t),
        _ => None,
    };
    let watchdog_failed = doc
        .get("watchdog_failed")
        .is_some_and(|v| v == &Value::Bool(true));
    !member.nofailover() && !tags_nofailover(reported_tags) && !watchdog_failed
}

async fn any_good_candidate(client: &PeerClient, members: &[(String, Member)]) -> bool {
    let mut set = JoinSet::new();
    for (_, m) in members {
        set.spawn(member_ok(client.clone(), m.clone()));
    }
    while let Some(r) = set.join_next().await {
        if r.unwrap_or(false) {
            set.abort_all();
            return true;
        }
    }
    false
}

/// Runs a validated request to its reply.
pub async fn run(
    ctx: &ApiContext,
    client: &PeerClient,
    action: Action,
    body: &Map<String, Value>,
) -> Reply {
    let view = match ctx.dcs.load(true).await {
        Ok(v) => v,
        Err(e) => return (503, e.to_string()),
    };
    let snap = ctx.state.snapshot();
    let plan = match validate(action, body, &view, snap.pause, Utc::now()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    tracing::info!(
        action = plan.action.name(), leader = ?plan.leader, candidate = ?plan.candidate,
        scheduled_at = ?plan.scheduled_at, "received {} request", plan.action.name()
    );
    if plan.scheduled_at.is_none() && !any_good_candidate(client, &plan.probe).await {
        return (
            412,
            format!(
                "{} is not possible: no good candidates have been found",
                plan.action.name()
            ),
        );
    }
    let value = Failover {
        leader: plan.leader.clone(),
        member: plan.candidate.clone(),
        scheduled_at: plan.scheduled_at.clone(),
    };
    match ctx.dcs.set_failover(&value, None).await {
        Ok(true) => {}
        Ok(false) | Err(_) => return (503, "failed to write failover key into DCS".into()),
    }
    // The agent may be busy; a full queue already holds a wake-up.
    let _ = ctx.commands.try_send(ApiCommand::Wake);
    if plan.scheduled_at.is_some() {
        return (202, format!("{} scheduled", plan.action.title()));
    }
    let secs = 2 * snap.loop_wait.as_secs().max(10);
    poll(ctx, &plan, secs).await
}

/// `DELETE /switchover`: clears a *scheduled* switchover (compare-and-set on the key).
pub async fn delete_scheduled(ctx: &ApiContext) -> Reply {
    let Ok(view) = ctx.dcs.load(true).await else {
        return (503, "DCS is not accessible".into());
    };
    match view.failover {
        Some(f) if f.value.scheduled_at.is_some() => {
            match ctx
                .dcs
                .set_failover(&Failover::default(), Some(&f.version))
                .await
            {
                Ok(true) => {
                    let _ = ctx.commands.try_send(ApiCommand::Wake);
                    (200, "scheduled switchover deleted".into())
                }
                _ => (409, "Conflict".into()),
            }
        }
        _ => (404, "no switchover is scheduled".into()),
    }
}

/// Polls the DCS once a second for `secs` seconds for the outcome.
async fn poll(ctx: &ApiContext, plan: &Plan, secs: u64) -> Reply {
    let (verb, title) = match plan.action {
        Action::Switchover => ("switched", "Switched"),
        Action::Failover => ("failed", "Failed"),
    };
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(view) = ctx.dcs.load(true).await else {
            continue;
        };
        if let Some(l) = &view.leader
            && Some(&l.name) != plan.current_leader.as_ref()
        {
            return match &plan.candidate {
                Some(c) if c != &l.name => (
                    200,
                    format!("{title} over to \"{}\" instead of \"{c}\"", l.name),
                ),
                _ => (200, format!("Successfully {verb} over to \"{}\"", l.name)),
            };
        }
        if view.failover.is_none() {
            return (503, format!("{} failed", plan.action.title()));
        }
    }
    (
        503,
        format!(
            "{} status unknown after {secs} seconds; operation may still be in progress",
            plan.action.title()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::tests::etcd_view;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T06:00:00+00:00")
            .unwrap()
            .to_utc()
    }

    /// `paused` goes into the view's config (where pause is read from when there is one).
    fn check(action: Action, b: Value, view: &ClusterView, paused: bool) -> Reply {
        let mut view = view.clone();
        if paused {
            view.config
                .as_mut()
                .unwrap()
                .value
                .insert("pause".into(), true.into());
        }
        match validate(action, &body(b), &view, false, now()) {
            Ok(p) => (
                0,
                format!(
                    "{:?}",
                    p.probe.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
                ),
            ),
            Err(r) => r,
        }
    }

    #[test]
    fn messages_in_order() {
        let v = etcd_view("01-steady-sync-mode.etcd.json");
        let sw = Action::Switchover;
        let fo = Action::Failover;
        let cases: Vec<(Action, Value, bool, u16, &str)> = vec![
            (
                fo,
                json!({"leader": "m0"}),
                false,
                400,
                "Failover could be performed only to a specific candidate",
            ),
            (
                fo,
                json!({"candidate": "", "scheduled_at": "junk"}),
                false,
                400,
                "Failover could be performed only to a specific candidate",
            ),
            (
                sw,
                json!({"candidate": "m1"}),
                false,
                400,
                "Switchover could be performed only from a specific leader",
            ),
            (
                fo,
                json!({"candidate": "m1", "leader": "m0", "scheduled_at": "2099-01-01T00:00:00+00:00"}),
                false,
                400,
                "Failover can't be scheduled",
            ),
            (
                sw,
                json!({"leader": "m0", "scheduled_at": "2099-01-01T00:00:00+00:00"}),
                true,
                400,
                "Can't schedule switchover in the paused state",
            ),
            (
                sw,
                json!({"leader": "m0", "scheduled_at": "2099-01-01T00:00:00"}),
                false,
                400,
                "Timezone information is mandatory for the scheduled switchover",
            ),
            (
                sw,
                json!({"leader": "m0", "scheduled_at": "2000-01-01T00:00:00+00:00"}),
                false,
                422,
                "Cannot schedule switchover in the past",
            ),
            (
                sw,
                json!({"leader": "m0", "scheduled_at": "soon"}),
                false,
                422,
                "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601",
            ),
            (
                sw,
                json!({"leader": "m0", "scheduled_at": 12}),
                false,
                422,
                "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601",
            ),
            (
                sw,
                json!({"leader": "m0"}),
                true,
                400,
                "Switchover is possible only to a specific candidate in a paused state",
            ),
            (
                sw,
                json!({"leader": "m0", "candidate": "m0"}),
                false,
                400,
                "Switchover target and source are the same",
            ),
            (
                fo,
                json!({"leader": "m1", "member": "m1"}),
                false,
                400,
                "Switchover target and source are the same",
            ),
            (
                sw,
                json!({"leader": "m9", "candidate": "m1"}),
                false,
                412,
                "leader name does not match",
            ),
            (
                sw,
                json!({"leader": "m0", "candidate": "m1"}),
                false,
                412,
                "candidate name does not match with sync_standby",
            ),
            (
                fo,
                json!({"candidate": "m7"}),
                false,
                412,
                "candidate does not exists",
            ),
            (
                sw,
                json!({"leader": "m0"}),
                false,
                412,
                "switchover is not possible: can not find sync_standby",
            ),
        ];
        for (action, b, paused, code, msg) in cases {
            assert_eq!(
                check(action, b.clone(), &v, paused),
                (code, msg.to_owned()),
                "{action:?} {b}"
            );
        }
    }

    #[test]
    fn feasible_candidates() {
        let mut v = etcd_view("01-steady-sync-mode.etcd.json");
        // Failover ignores sync membership for a named candidate.
        assert_eq!(
            check(Action::Failover, json!({"candidate": "m1"}), &v, false),
            (0, r#"["m1"]"#.into())
        );
        v = etcd_view("03-after-switchover.etcd.json");
        assert_eq!(
            check(Action::Switchover, json!({"leader": "m1"}), &v, false),
            (0, r#"["m2"]"#.into())
        );
        v.config.as_mut().unwrap().value.remove("synchronous_mode");
        assert_eq!(
            check(Action::Switchover, json!({"leader": "m1"}), &v, false),
            (0, r#"["m0", "m2"]"#.into())
        );
        v.members.retain(|n, _| n == "m1");
        assert_eq!(
            check(Action::Switchover, json!({"leader": "m1"}), &v, false),
            (
                412,
                "switchover is not possible: cluster does not have members except leader".into()
            )
        );
        // Scheduled: no feasibility check, schedule normalized.
        let p = validate(
            Action::Switchover,
            &body(json!({"leader": "m1", "candidate": "m7", "scheduled_at": "2099-01-01 00:00Z"})),
            &v,
            false,
            now(),
        )
        .unwrap();
        assert_eq!(p.scheduled_at.as_deref(), Some("2099-01-01T00:00:00+00:00"));
        assert!(p.probe.is_empty());
        // Pause comes from the fresh view's config when it has one.
        v.config
            .as_mut()
            .unwrap()
            .value
            .insert("pause".into(), true.into());
        assert_eq!(
            check(Action::Switchover, json!({"leader": "m1"}), &v, false).1,
            "Switchover is possible only to a specific candidate in a paused state"
        );
    }
}
