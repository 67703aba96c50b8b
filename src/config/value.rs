//! Lenient, path-aware access to the parsed YAML tree.
//!
//! Patroni is Python: it reads `ttl: "30"` as 30 and `use_pg_rewind: "on"` as true, and treats a key
//! written with no value (`parameters:`) as absent. A config that works there must work here, so every
//! typed read goes through these helpers, which are lenient in the same ways and otherwise report the
//! full dotted key path and the expected type.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::ConfigError;

/// Patroni's `parse_bool`: on/true/yes/1 and off/false/no/0, case-insensitively.
pub(crate) fn parse_bool_str(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

pub(crate) fn as_bool(path: &str, v: &Value) -> Result<bool, ConfigError> {
    let parsed = match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => parse_bool_str(s),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        _ => None,
    };
    parsed.ok_or_else(|| ConfigError::wrong_type(path, "a boolean", v))
}

/// Like Python's `int(value)`: integers, floats (truncated) and strings holding an integer.
pub(crate) fn as_int(path: &str, v: &Value) -> Result<i64, ConfigError> {
    let parsed = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e18)
                .map(|f| f.trunc() as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ConfigError::wrong_type(path, "an integer", v))
}

/// Scalars become strings (YAML `password: 1234` is a number, but means the string).
pub(crate) fn as_string(path: &str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(ConfigError::wrong_type(path, "a string", v)),
    }
}

/// A view of one mapping in the tree together with its dotted path.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    map: Option<&'a Map<String, Value>>,
    path: &'a str,
}

impl<'a> Obj<'a> {
    /// `v` absent or null is an empty mapping; anything else but a mapping is a type error.
    pub(crate) fn new(path: &'a str, v: Option<&'a Value>) -> Result<Self, ConfigError> {
        match v {
            None | Some(Value::Null) => Ok(Obj { map: None, path }),
            Some(Value::Object(m)) => Ok(Obj { map: Some(m), path }),
            Some(other) => Err(ConfigError::wrong_type(path, "a mapping", other)),
        }
    }

    pub(crate) fn is_present(&self) -> bool {
        self.map.is_some()
    }

    /// The full dotted path of `key` inside this mapping.
    pub(crate) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`, with null treated as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn map(&self) -> Map<String, Value> {
        self.map.cloned().unwrap_or_default()
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.get(key)
            .map(|v| as_string(&self.key(key), v))
            .transpose()
    }

    /// A string that must be present and non-empty.
    pub(crate) fn required_string(&self, key: &str) -> Result<String, ConfigError> {
        match self.string(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(ConfigError::missing(self.key(key))),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|v| as_bool(&self.key(key), v))
            .transpose()
    }

    pub(crate) fn int(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        self.get(key).map(|v| as_int(&self.key(key), v)).transpose()
    }

    /// A list of strings; each item's error names its index (`postgresql.pg_hba.3`).
    pub(crate) fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let path = self.key(key);
        let Value::Array(items) = v else {
            return Err(ConfigError::wrong_type(path, "a list", v));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| as_string(&format!("{path}.{i}"), item))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A mapping of strings to scalars rendered as strings (callbacks, bin_name, headers).
    pub(crate) fn string_map(
        &self,
        key: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
        let path = self.key(key);
        let sub = Obj::new(&path, self.get(key))?;
        let Some(m) = sub.map else {
            return Ok(None);
        };
        let mut out = BTreeMap::new();
        for (k, v) in m {
            if !v.is_null() {
                out.insert(k.clone(), as_string(&sub.key(k), v)?);
            }
        }
        Ok(Some(out))
    }

    /// A mapping kept as raw JSON (parameters, recovery_conf, tags).
    pub(crate) fn raw_map(&self, key: &str) -> Result<Map<String, Value>, ConfigError> {
        match self.get(key) {
            None => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(other) => Err(ConfigError::wrong_type(self.key(key), "a mapping", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_scalars() {
        assert_eq!(as_int("k", &json!("30")).unwrap(), 30);
        assert_eq!(as_int("k", &json!(2.9)).unwrap(), 2);
        assert!(as_bool("k", &json!("ON")).unwrap());
        assert!(!as_bool("k", &json!(0)).unwrap());
        assert_eq!(
            as_bool("a.b", &json!("maybe")).unwrap_err().to_string(),
            "config error: a.b: expected a boolean, got \"maybe\""
        );
        assert_eq!(as_string("k", &json!(1234)).unwrap(), "1234");
    }

    #[test]
    fn null_is_absent_and_paths_nest() {
        let v = json!({"a": null, "b": {"c": [1, {"x": 1}]}});
        let o = Obj::new("", Some(&v)).unwrap();
        assert!(o.get("a").is_none());
        let b = o.key("b");
        let b = Obj::new(&b, o.get("b")).unwrap();
        assert_eq!(
            b.string_list("c").unwrap_err().to_string(),
            "config error: b.c.1: expected a string, got {\"x\":1}"
        );
    }
}
