//! Entry points: where the YAML comes from (file, directory, string, `PATRONI_CONFIGURATION`) and in
//! what order the layers apply (files in sorted order, then `PATRONI_*` overrides, then validation).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::env::env_config;
use super::error::ConfigError;
use super::local::parse_config;
use super::types::Config;
use super::yaml::{parse_yaml, patch};

/// Variable holding the whole configuration as YAML text.
const CONFIGURATION_VAR: &str = "PATRONI_CONFIGURATION";

/// Loads a file, or a directory of `*.yml`/`*.yaml` files merged in sorted name order, applies the
/// process's `PATRONI_*` variables over it and validates the result.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut raw = read_path(path)?;
    patch(&mut raw, env_config(&process_env())?);
    parse_config(raw)
}

/// Parses YAML text with no environment overrides (tests, `--validate-config` of a string).
pub fn load_from_str(yaml: &str) -> Result<Config, ConfigError> {
    parse_config(as_mapping("<string>", parse_yaml("<string>", yaml)?)?)
}

/// Parses YAML text and applies the overrides found in `env` (an injected environment).
pub fn load_with_env(yaml: &str, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let mut raw = as_mapping("<string>", parse_yaml("<string>", yaml)?)?;
    apply_env_overrides(&mut raw, env)?;
    parse_config(raw)
}

/// Loads without a config file, as Patroni does when started with no argument: the YAML text in
/// `PATRONI_CONFIGURATION` if set (used as is, like Patroni, without other overrides), otherwise a
/// configuration built purely from the `PATRONI_*` variables. Pass [`process_env`] for the real one.
pub fn load_from_env_only(env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    match env.get(CONFIGURATION_VAR).filter(|t| !t.trim().is_empty()) {
        Some(text) => parse_config(as_mapping(
            CONFIGURATION_VAR,
            parse_yaml(CONFIGURATION_VAR, text)?,
        )?),
        None => parse_config(env_config(env)?),
    }
}

/// Patches the `PATRONI_*` overrides found in `env` over `raw`, a configuration tree not yet
/// validated (patronictl's: Patroni's `Config` applies the environment over the file there too).
pub fn apply_env_overrides(
    raw: &mut Value,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    patch(raw, env_config(env)?);
    Ok(())
}

/// The process environment's `PATRONI_*` variables (values that are not UTF-8 are skipped).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("PATRONI_"))
        .collect()
}

/// An empty document is an empty mapping; anything but a mapping is an error.
fn as_mapping(source: &str, v: Value) -> Result<Value, ConfigError> {
    match v {
        Value::Null => Ok(Value::Object(Map::new())),
        m @ Value::Object(_) => Ok(m),
        _ => Err(ConfigError::invalid(
            source,
            "the configuration must be a YAML mapping",
        )),
    }
}

fn read_error(path: &Path, e: &std::io::Error) -> ConfigError {
    // Drop the " (os error 2)" suffix: the message is for operators.
    let reason = e.to_string();
    let reason = reason
        .split(" (os error")
        .next()
        .unwrap_or(&reason)
        .to_string();
    ConfigError::Read {
        path: path.display().to_string(),
        reason,
    }
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| read_error(path, &e))?;
    let name = path.display().to_string();
    as_mapping(&name, parse_yaml(&name, &text)?)
}

fn read_path(path: &Path) -> Result<Value, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, &e))?;
    if !meta.is_dir() {
        return read_file(path);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| read_error(path, &e))? {
        let p = entry.map_err(|e| read_error(path, &e))?.path();
        let is_yaml = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yml" || e == "yaml");
        if is_yaml && p.is_file() {
            files.push(p);
        }
    }
    // Sorted by file name, like Patroni's `sorted(os.listdir(path))`.
    files.sort();
    let mut merged = Value::Object(Map::new());
    for f in files {
        patch(&mut merged, read_file(&f)?);
    }
    Ok(merged)
}
