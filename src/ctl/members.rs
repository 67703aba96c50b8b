//! Commands addressed to members over REST: `restart`, `reload`, `reinit`.

use reqwest::Method;
use serde_json::{Map, Value};

use super::CtlError;
use super::context::{Ctx, confirm, prompt};
use crate::dcs::{ClusterView, Member};

/// `--role` values (patronictl 3 and 4 spellings).
pub fn role_matches(role: &str, name: &str, view: &ClusterView) -> bool {
    let is_leader = view.leader.as_ref().is_some_and(|l| l.name == name);
    match role {
        "any" => true,
        "leader" | "primary" | "master" | "standby-leader" | "standby_leader" => is_leader,
        "replica" | "standby" => !is_leader,
        _ => false,
    }
}

/// Members named (all when none named) filtered by role. The first positional may be the
/// cluster name, as patronictl 3 requires it there.
pub fn select<'a>(
    ctx: &Ctx,
    view: &'a ClusterView,
    names: &[String],
    role: &str,
) -> Result<Vec<(&'a String, &'a Member)>, CtlError> {
    let names: Vec<&String> = names
        .iter()
        .filter(|n| **n != ctx.scope || view.members.contains_key(*n))
        .collect();
    for n in &names {
        if !view.members.contains_key(*n) {
            return Err(CtlError::msg(format!("{n} is not a member of cluster")));
        }
    }
    let out: Vec<_> = view
        .members
        .iter()
        .filter(|(n, _)| names.is_empty() || names.contains(n))
        .filter(|(n, _)| role_matches(role, n, view))
        .collect();
    if out.is_empty() {
        return Err(CtlError::msg(format!("No {role} among provided members")));
    }
    Ok(out)
}

fn member_list(ms: &[(&String, &Member)]) -> String {
    ms.iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `restart` options.
pub struct RestartOpts {
    /// `--role`.
    pub role: String,
    /// `--pending`.
    pub pending: bool,
    /// `--scheduled`.
    pub scheduled: Option<String>,
    /// `--pg-version`.
    pub pg_version: Option<String>,
    /// `--timeout`.
    pub timeout: Option<String>,
    /// `--force`.
    pub force: bool,
}

/// `restart [CLUSTER] [MEMBERS...]`.
pub async fn restart(ctx: &Ctx, names: &[String], o: RestartOpts) -> Result<(), CtlError> {
    let view = ctx.cluster().await?;
    let members = select(ctx, &view, names, &o.role)?;
    let mut scheduled = o.scheduled.clone();
    if scheduled.is_none() && !o.force {
        scheduled = Some(prompt(
            "When should the restart take place (e.g. 2030-01-01T12:00+00)",
            "now",
        ));
    }
    let scheduled = scheduled.filter(|s| s != "now");
    if !o.force
        && !confirm(&format!(
            "Are you sure you want to restart members {}?",
            member_list(&members)
        ))
    {
        return Err(CtlError::msg("Aborted restart"));
    }
    let mut body = Map::new();
    if o.pending {
        body.insert("restart_pending".into(), Value::Bool(true));
    }
    if o.role != "any" {
        let role = match o.role.as_str() {
            "leader" | "master" => "primary",
            "standby-leader" => "standby_leader",
            "standby" => "replica",
            r => r,
        };
        // A standby leader is "the leader" to the user; the member checks its own role.
        if role != "primary"
            || !crate::api::state::is_standby_cluster(view.config.as_ref().map(|c| &c.value))
        {
            body.insert("role".into(), Value::String(role.into()));
        }
    }
    if let Some(s) = &scheduled {
        body.insert("schedule".into(), Value::String(s.clone()));
    }
    if let Some(v) = &o.pg_version {
        body.insert("postgres_version".into(), Value::String(v.clone()));
    }
    if let Some(t) = &o.timeout {
        body.insert("timeout".into(), Value::String(t.clone()));
    }
    let body = Value::Object(body);
    let mut failed = false;
    for (name, m) in &members {
        if o.force && scheduled.is_some() {
            let _ = ctx.request(m, Method::DELETE, "restart", None).await;
        }
        match ctx.request(m, Method::POST, "restart", Some(&body)).await {
            Ok((200, _)) => println!("Success: restart on member {name}"),
            Ok((202, _)) => println!("Success: restart scheduled on member {name}"),
            Ok((409, _)) => {
                println!("Failed: another restart is already scheduled on member {name}");
                failed = true;
            }
            Ok((code, text)) => {
                println!("Failed: restart for member {name}, status code={code}, ({text})");
                failed = true;
            }
            Err(e) => {
                println!("Failed: restart for member {name}, ({e})");
                failed = true;
            }
        }
    }
    if failed {
        Err(CtlError::Silent)
    } else {
        Ok(())
    }
}

/// `reload [CLUSTER] [MEMBERS...]`.
pub async fn reload(ctx: &Ctx, names: &[String], role: &str, force: bool) -> Result<(), CtlError> {
    let view = ctx.cluster().await?;
    let members = select(ctx, &view, names, role)?;
    if !force
        && !confirm(&format!(
            "Are you sure you want to reload members {}?",
            member_list(&members)
        ))
    {
        return Err(CtlError::msg("Aborted reload"));
    }
    let loop_wait = view
        .config
        .as_ref()
        .and_then(|c| c.value.get("loop_wait"))
        .and_then(Value::as_u64)
        .unwrap_or(10);
    let mut failed = false;
    for (name, m) in &members {
        match ctx.request(m, Method::POST, "reload", None).await {
            Ok((200, _)) => println!("No changes to apply on member {name}"),
            Ok((202, _)) => println!(
                "Reload request received for member {name} and will be processed within {loop_wait} seconds"
            ),
            Ok((code, text)) => {
                println!("Failed: reload for member {name}, status code={code}, ({text})");
                failed = true;
            }
            Err(e) => {
                println!("Failed: reload for member {name}, ({e})");
                failed = true;
            }
        }
    }
    if failed {
        Err(CtlError::Silent)
    } else {
        Ok(())
    }
}

/// `reinit [CLUSTER] MEMBERS... [--force] [--wait] [--from-leader]`.
pub async fn reinit(
    ctx: &Ctx,
    names: &[String],
    force: bool,
    wait: bool,
    from_leader: bool,
) -> Result<(), CtlError> {
    let view = ctx.cluster().await?;
    let members = select(ctx, &view, names, "replica")?;
    if !force
        && !confirm(&format!(
            "Are you sure you want to reinitialize members {}?",
            member_list(&members)
        ))
    {
        return Err(CtlError::msg("Aborted reinitialization"));
    }
    let mut body = Map::new();
    body.insert("force".into(), Value::Bool(force));
    if from_leader {
        body.insert("from_leader".into(), Value::Bool(true));
    }
    let body = Value::Object(body);
    let mut failed = false;
    let mut started = Vec::new();
    for (name, m) in &members {
        match ctx
            .request(m, Method::POST, "reinitialize", Some(&body))
            .await
        {
            Ok((200, _)) => {
                println!("Success: reinitialize for member {name}");
                started.push((*name, *m));
            }
            Ok((code, text)) => {
                println!("Failed: reinitialize for member {name}, status code={code}, ({text})");
                failed = true;
            }
            Err(e) => {
                println!("Failed: reinitialize for member {name}, ({e})");
                failed = true;
            }
        }
    }
    if wait {
        println!(
            "Waiting for reinitialize to complete on: {}",
            started
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (name, m) in started {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                if let Ok((200, text)) = ctx.request(m, Method::GET, "patroni", None).await
                    && let Ok(doc) = serde_json::from_str::<Value>(&text)
                    && doc.get("state").and_then(Value::as_str) == Some("running")
                {
                    println!("Reinitialize is completed on: {name}");
                    break;
                }
            }
        }
    }
    if failed {
        Err(CtlError::Silent)
    } else {
        Ok(())
    }
}
