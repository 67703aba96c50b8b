//! `switchover` and `failover`: checks against the store, then `POST /switchover|/failover` to
//! the leader (or the candidate when there is no leader); if the REST call cannot be made, the
//! request is written to the store's `failover` key, as patronictl does.

use reqwest::Method;
use serde_json::{Map, Value};

use super::CtlError;
use super::context::{Ctx, confirm, prompt, timestamp};
use super::list::output_members;
use super::table::Format;
use crate::dcs::Failover;

/// The options of both commands.
pub struct Request {
    /// `failover` rather than `switchover`.
    pub failover: bool,
    /// `--leader/--primary/--master`.
    pub leader: Option<String>,
    /// `--candidate`.
    pub candidate: Option<String>,
    /// `--scheduled`.
    pub scheduled: Option<String>,
    /// `--force`.
    pub force: bool,
}

/// Runs a switchover or failover.
pub async fn run(ctx: &Ctx, mut req: Request) -> Result<(), CtlError> {
    let action = if req.failover {
        "failover"
    } else {
        "switchover"
    };
    let view = ctx.cluster().await?;
    let leader = view.leader.as_ref().map(|l| l.name.clone());
    if !req.failover && leader.is_none() {
        return Err(CtlError::msg("This cluster has no leader"));
    }
    if !req.failover {
        let current = leader.clone().unwrap_or_default();
        let given = match req.leader.take() {
            Some(l) => l,
            None if req.force => current.clone(),
            None => prompt("Primary", &current),
        };
        if given != current {
            return Err(CtlError::msg(format!(
                "Member {given} is not the leader of cluster {}",
                ctx.scope
            )));
        }
        req.leader = Some(given);
    }
    let candidates: Vec<String> = view
        .members
        .keys()
        .filter(|n| Some(*n) != leader.as_ref())
        .cloned()
        .collect();
    if candidates.is_empty() {
        return Err(CtlError::msg(format!("No candidates found to {action} to")));
    }
    if req.candidate.is_none() && !req.force {
        let answer = prompt(&format!("Candidate {candidates:?}"), "");
        req.candidate = Some(answer).filter(|a| !a.is_empty());
    }
    if req.failover && req.candidate.is_none() {
        return Err(CtlError::msg(
            "Failover could be performed only to a specific candidate",
        ));
    }
    if let Some(c) = &req.candidate {
        if Some(c) == req.leader.as_ref() || Some(c) == leader.as_ref() {
            return Err(CtlError::msg(format!(
                "Member {c} is already the leader of cluster {}",
                ctx.scope
            )));
        }
        if !candidates.contains(c) {
            return Err(CtlError::msg(format!(
                "Member {c} does not exist in cluster {} or is tagged as nofailover",
                ctx.scope
            )));
        }
    }
    let paused = crate::api::state::config_paused(view.config.as_ref().map(|c| &c.value));
    let mut scheduled = req.scheduled.clone();
    if !req.failover && scheduled.is_none() && !req.force {
        scheduled = Some(prompt(
            "When should the switchover take place (e.g. 2030-01-01T12:00+00)",
            "now",
        ));
    }
    let scheduled = scheduled.filter(|s| s != "now");
    if scheduled.is_some() && paused {
        return Err(CtlError::msg(
            "Can't schedule switchover in the paused state",
        ));
    }
    if req.failover && scheduled.is_some() {
        return Err(CtlError::msg("Failover can't be scheduled"));
    }
    if !req.force {
        let q = match &leader {
            Some(l) => format!(
                "Are you sure you want to {action} cluster {}, demoting current leader {l}?",
                ctx.scope
            ),
            None => format!("Are you sure you want to {action} cluster {}?", ctx.scope),
        };
        if !confirm(&q) {
            return Err(CtlError::msg("Aborting ".to_owned() + action));
        }
    }
    let mut body = Map::new();
    if let Some(l) = req.leader.clone().filter(|_| !req.failover) {
        body.insert("leader".into(), Value::String(l));
    }
    if let Some(c) = &req.candidate {
        body.insert("candidate".into(), Value::String(c.clone()));
    }
    if let Some(s) = &scheduled {
        body.insert("scheduled_at".into(), Value::String(s.clone()));
    }
    let target = leader
        .clone()
        .or_else(|| req.candidate.clone())
        .and_then(|n| view.members.get(&n).cloned());
    let endpoint = if req.failover {
        "failover"
    } else {
        "switchover"
    };
    let sent = match &target {
        Some(m) => {
            ctx.request(m, Method::POST, endpoint, Some(&Value::Object(body)))
                .await
        }
        None => Err("no member to send the request to".into()),
    };
    let mut failed = false;
    match sent {
        Ok((200 | 202, text)) => println!("{} {text}", timestamp()),
        Ok((code, text)) => {
            println!("{} failed, details: {code}, {text}", capitalize(action));
            failed = true;
        }
        Err(e) => {
            tracing::warn!("REST call failed: {e}; falling back to DCS");
            println!(
                "{} Could not {action} using Patroni api, falling back to DCS",
                timestamp()
            );
            let f = Failover {
                leader: req.leader.clone(),
                member: req.candidate.clone(),
                scheduled_at: scheduled.clone(),
            };
            ctx.dcs
                .set_failover(&f, None)
                .await
                .map_err(|e| CtlError::msg(e.to_string()))?;
        }
    }
    let view = ctx.cluster().await?;
    output_members(ctx, &view, Format::Pretty, false);
    if failed {
        Err(CtlError::Silent)
    } else {
        Ok(())
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
