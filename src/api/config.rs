//! `PATCH /config` and `PUT /config` (patroni-compat §1.7): edits of the dynamic configuration
//! in the store. PATCH merges into a fresh read and writes with compare-and-set; PUT replaces.

use serde_json::{Map, Value};

use super::state::{ApiCommand, ApiContext};

/// Patroni's `patch_config`: `null` deletes a key, objects merge recursively, other values
/// replace the old one when their text differs. Returns whether anything changed.
pub fn patch_config(config: &mut Map<String, Value>, patch: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (k, v) in patch {
        match v {
            Value::Null => changed |= config.remove(k).is_some(),
            Value::Object(sub) => {
                let entry = config
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                    changed = true;
                }
                if let Value::Object(inner) = entry {
                    changed |= patch_config(inner, sub);
                }
            }
            _ => {
                // Patroni compares `str()` of both: `5` and `"5"` count as equal.
                if config.get(k).map(python_str) != Some(python_str(v)) {
                    config.insert(k.clone(), v.clone());
                    changed = true;
                }
            }
        }
    }
    changed
}

fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// What a config request ends in.
pub enum ConfigReply {
    /// 200 with this body.
    Ok(Map<String, Value>),
    /// An error status with Python's error page (`send_error`).
    Error(u16),
}

/// `PATCH /config`: merge into a fresh read; no config → 503; lost compare-and-set → 409.
pub async fn patch(ctx: &ApiContext, body: &Map<String, Value>) -> ConfigReply {
    let Ok(view) = ctx.dcs.load(true).await else {
        return ConfigReply::Error(503);
    };
    let Some(current) = view.config else {
        return ConfigReply::Error(503);
    };
    let mut data = current.value.clone();
    if patch_config(&mut data, body) {
        let json = Value::Object(data.clone()).to_string();
        match ctx.dcs.set_config(&json, Some(&current.version)).await {
            Ok(true) => {}
            Ok(false) => return ConfigReply::Error(409),
            Err(_) => return ConfigReply::Error(503),
        }
    }
    let _ = ctx.commands.try_send(ApiCommand::Wake);
    ConfigReply::Ok(data)
}

/// `PUT /config`: unconditional overwrite (skipped when equal); a failed write → 502.
pub async fn put(ctx: &ApiContext, body: Map<String, Value>) -> ConfigReply {
    let current = ctx
        .dcs
        .load(false)
        .await
        .ok()
        .and_then(|v| v.config)
        .map(|c| c.value);
    if current.as_ref() != Some(&body) {
        let json = Value::Object(body.clone()).to_string();
        match ctx.dcs.set_config(&json, None).await {
            Ok(true) => {}
            _ => return ConfigReply::Error(502),
        }
        let _ = ctx.commands.try_send(ApiCommand::Wake);
    }
    ConfigReply::Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn merge_rules() {
        let mut c = obj(json!({"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}, "x": 1}));
        let p = obj(
            json!({"ttl": "30", "postgresql": {"parameters": {"a": null, "c": "on"}}, "x": {"y": 1}}),
        );
        assert!(patch_config(&mut c, &p));
        assert_eq!(
            Value::Object(c),
            json!({"ttl": 30, "postgresql": {"parameters": {"b": 2, "c": "on"}}, "x": {"y": 1}})
        );
        let mut c = obj(json!({"pause": true}));
        assert!(!patch_config(&mut c, &obj(json!({"pause": true}))));
        assert!(patch_config(&mut c, &obj(json!({"pause": null}))));
        assert!(c.is_empty());
    }
}
