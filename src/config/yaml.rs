//! YAML text to JSON values.
//!
//! Everything downstream works on `serde_json::Value` (the DCS stores JSON, the REST API dumps JSON),
//! so YAML is converted once here. Non-string mapping keys (`1: x`) become strings instead of failing,
//! as they would with a direct `serde_json::Value` deserialisation.

use serde_json::{Map, Number, Value};
use serde_norway::Value as Yaml;

use super::error::{ConfigError, one_line};

/// Parses YAML text; `source_name` (a path, or an env variable name) is used in the error.
pub(crate) fn parse_yaml(source_name: &str, text: &str) -> Result<Value, ConfigError> {
    let yaml: Yaml = serde_norway::from_str(text).map_err(|e| ConfigError::Yaml {
        source_name: source_name.to_string(),
        reason: one_line(&e.to_string()),
    })?;
    Ok(to_json(yaml))
}

fn to_json(y: Yaml) -> Value {
    match y {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(seq) => Value::Array(seq.into_iter().map(to_json).collect()),
        Yaml::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                out.insert(key_string(k), to_json(v));
            }
            Value::Object(out)
        }
        Yaml::Tagged(t) => to_json(t.value),
    }
}

fn key_string(k: Yaml) -> String {
    match k {
        Yaml::String(s) => s,
        Yaml::Null => "null".to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        other => serde_json::to_string(&to_json(other)).unwrap_or_default(),
    }
}

/// Patroni's `patch_config`: mappings merge recursively, a null value deletes the key, anything else
/// replaces. Used for directories of YAML files and for environment overrides.
pub(crate) fn patch(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(existing) =
                    b.get_mut(&k).filter(|e| e.is_object() && v.is_object())
                {
                    patch(existing, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_and_stringifies_keys() {
        let v = parse_yaml("t", "a: 1\n2: [x, {y: true}]\nc: 1.5\nd:\n").unwrap();
        assert_eq!(
            v,
            json!({"a": 1, "2": ["x", {"y": true}], "c": 1.5, "d": null})
        );
    }

    #[test]
    fn yaml_error_is_one_line() {
        let e = parse_yaml("/x.yml", "a: [1,\n b: c")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config error: /x.yml: invalid YAML: "), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn patch_merges_deeply() {
        let mut base = json!({"a": {"b": 1, "c": 2}, "d": [1], "e": 1});
        patch(&mut base, json!({"a": {"c": 3}, "d": [2], "e": null}));
        assert_eq!(base, json!({"a": {"b": 1, "c": 3}, "d": [2]}));
    }
}
