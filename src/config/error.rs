//! The one error type of the config module.
//!
//! Every message is a single line that starts with `config error:` and names the offending key by its
//! dotted path, because the agent prints it verbatim before exiting and operators grep for the key.

/// Why a configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("config error: cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    /// A file (or `PATRONI_CONFIGURATION`) is not valid YAML.
    #[error("config error: {source_name}: invalid YAML: {reason}")]
    Yaml { source_name: String, reason: String },
    /// A required key is absent or empty.
    #[error("config error: {key}: is required")]
    Missing { key: String },
    /// A key holds a value of the wrong type.
    #[error("config error: {key}: expected {expected}, got {got}")]
    WrongType {
        key: String,
        expected: &'static str,
        got: String,
    },
    /// A key holds a value of the right type that is not acceptable.
    #[error("config error: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    pub(crate) fn missing(key: impl Into<String>) -> Self {
        ConfigError::Missing { key: key.into() }
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: one_line(&reason.into()),
        }
    }

    pub(crate) fn wrong_type(
        key: impl Into<String>,
        expected: &'static str,
        got: &serde_json::Value,
    ) -> Self {
        ConfigError::WrongType {
            key: key.into(),
            expected,
            got: one_line(&got.to_string()),
        }
    }

    /// Puts `prefix.` in front of the key, so that errors found while parsing a sub-document
    /// (e.g. `bootstrap.dcs` through [`super::DynamicConfig::from_json`]) name the full path.
    pub(crate) fn under(self, prefix: &str) -> Self {
        let join = |key: String| format!("{prefix}.{key}");
        match self {
            ConfigError::Missing { key } => ConfigError::Missing { key: join(key) },
            ConfigError::WrongType { key, expected, got } => ConfigError::WrongType {
                key: join(key),
                expected,
                got,
            },
            ConfigError::Invalid { key, reason } => ConfigError::Invalid {
                key: join(key),
                reason,
            },
            other => other,
        }
    }
}

/// Collapses line breaks so that the Display stays one line (YAML parser messages span several).
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_key() {
        let e = ConfigError::wrong_type("ttl", "an integer", &serde_json::json!("abc"));
        assert_eq!(
            e.under("bootstrap.dcs").to_string(),
            "config error: bootstrap.dcs.ttl: expected an integer, got \"abc\""
        );
        let e = ConfigError::invalid("x", "a\nb");
        assert_eq!(e.to_string(), "config error: x: a b");
    }
}
