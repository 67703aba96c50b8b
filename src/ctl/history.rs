//! `history` (the timeline history table) and `remove` (wipe the cluster from the store).

use serde_json::Value;

use super::CtlError;
use super::context::{Ctx, prompt};
use super::table::{Cell, Format, print};

/// `history [-f fmt]`: TL, LSN, Reason, Timestamp, New Leader.
pub async fn history(ctx: &Ctx, fmt: Format) -> Result<(), CtlError> {
    let view = ctx.cluster().await?;
    let rows: Vec<Vec<Cell>> = view
        .history
        .unwrap_or_default()
        .iter()
        .map(|line| {
            let mut r: Vec<Cell> = line
                .0
                .iter()
                .take(5)
                .map(|v| match v {
                    Value::Number(n) => n
                        .as_i64()
                        .map_or_else(|| Cell::from(n.to_string()), Cell::Int),
                    Value::String(s) => Cell::from(s.as_str()),
                    Value::Null => Cell::from(""),
                    other => Cell::from(other.to_string()),
                })
                .collect();
            r.resize(5, Cell::from(""));
            r
        })
        .collect();
    print(
        fmt,
        &["TL", "LSN", "Reason", "Timestamp", "New Leader"],
        &rows,
        &["TL", "LSN"],
        None,
    );
    Ok(())
}

/// `remove CLUSTER`: three confirmations, then every key of the cluster is deleted.
pub async fn remove(ctx: &Ctx) -> Result<(), CtlError> {
    let view = ctx.cluster().await?;
    super::list::output_members(ctx, &view, Format::Pretty, false);
    if prompt("Please confirm the cluster name to remove", "") != ctx.scope {
        return Err(CtlError::msg("Cluster names specified do not match"));
    }
    let phrase = "Yes I am aware";
    if prompt(
        &format!(
            "You are about to remove all information in DCS for {}, please type: \"{phrase}\"",
            ctx.scope
        ),
        "",
    ) != phrase
    {
        return Err(CtlError::msg("You did not exactly type \"Yes I am aware\""));
    }
    if let Some((name, m)) = view.leader_member()
        && m.state.as_deref() == Some("running")
        && prompt(
            "This cluster currently is healthy. Please specify the leader name to continue",
            "",
        ) != name
    {
        return Err(CtlError::msg(
            "You did not specify the current leader of the cluster",
        ));
    }
    ctx.dcs
        .delete_cluster()
        .await
        .map_err(|e| CtlError::msg(e.to_string()))
}
