//! YAML in and out, as patronictl shows and reads configuration (block style, sorted keys).

use serde_json::Value;

/// Block-style YAML of `v` (keys sorted: `serde_json::Map` is ordered by key).
pub fn dump(v: &Value) -> String {
    if v.as_object().is_some_and(|m| m.is_empty()) {
        return "{}\n".into();
    }
    serde_norway::to_string(v).unwrap_or_default()
}

/// Parses YAML (or JSON, a subset) into a JSON value; an empty document is `null`.
pub fn load(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_norway::from_str::<Value>(text).map_err(|e| format!("invalid YAML: {e}"))
}
