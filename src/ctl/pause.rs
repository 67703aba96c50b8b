//! `pause` and `resume`: `PATCH /config {"pause": true|null}` on the leader first, then on the
//! other members until one answers; `--wait` polls the members' `pause` flags.

use reqwest::Method;
use serde_json::{Value, json};

use super::CtlError;
use super::context::Ctx;

/// Pauses (`paused == true`) or resumes cluster management.
pub async fn toggle(ctx: &Ctx, paused: bool, wait: bool) -> Result<(), CtlError> {
    let view = ctx.cluster().await?;
    let now_paused = crate::api::state::config_paused(view.config.as_ref().map(|c| &c.value));
    if now_paused == paused {
        return Err(CtlError::msg(if paused {
            "Cluster is already paused"
        } else {
            "Cluster is not paused"
        }));
    }
    let leader = view.leader.as_ref().map(|l| l.name.clone());
    let mut order: Vec<_> = view.members.iter().collect();
    order.sort_by_key(|(n, _)| Some(*n) != leader.as_ref());
    let body = json!({"pause": if paused { Value::Bool(true) } else { Value::Null }});
    let mut last = String::from("Can not find accessible cluster member");
    let mut done = false;
    for (_, m) in &order {
        match ctx.request(m, Method::PATCH, "config", Some(&body)).await {
            Ok((200, _)) => {
                done = true;
                break;
            }
            Ok((code, text)) => last = format!("Failed: {code}, {text}"),
            Err(e) => last = e,
        }
    }
    if !done {
        return Err(CtlError::msg(last));
    }
    if wait {
        println!(
            "'{}' request sent, waiting until it is recognized by all nodes",
            if paused { "pause" } else { "resume" }
        );
        loop {
            let v = ctx.cluster().await?;
            let all = v
                .members
                .values()
                .all(|m| m.pause.unwrap_or(false) == paused);
            if all {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    println!(
        "Success: cluster management is {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(())
}
