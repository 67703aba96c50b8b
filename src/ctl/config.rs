//! `edit-config` and `show-config`: the dynamic configuration, edited in the store directly
//! with compare-and-set, as patronictl does.

use std::io::Read;

use serde_json::{Map, Value};

use super::CtlError;
use super::context::{Ctx, confirm};
use crate::api::config::patch_config;

/// `edit-config` options.
pub struct EditOpts {
    /// `-q`.
    pub quiet: bool,
    /// `-s a.b=v`.
    pub set: Vec<String>,
    /// `-p guc=v`.
    pub pg: Vec<String>,
    /// `--apply FILE|-`.
    pub apply: Option<String>,
    /// `--replace FILE|-`.
    pub replace: Option<String>,
    /// `--force`.
    pub force: bool,
}

fn read_source(name: &str) -> Result<String, CtlError> {
    if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CtlError::msg(format!("reading stdin: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(name)
            .map_err(|e| CtlError::msg(format!("Could not read {name}: {e}")))
    }
}

fn yaml_object(text: &str, what: &str) -> Result<Map<String, Value>, CtlError> {
    match super::yaml::load(text).map_err(|e| CtlError::msg(format!("{what}: {e}")))? {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(CtlError::msg(format!(
            "{what}: the configuration must be a mapping"
        ))),
    }
}

/// patronictl's `set_path_value`: a dotted path, except that everything after
/// `postgresql.parameters.` is one GUC name; a `null` (empty) value deletes.
fn set_path(config: &mut Map<String, Value>, path: &[&str], value: &Value, prefix: &[&str]) {
    let joined;
    let path: Vec<&str> = if prefix == ["postgresql", "parameters"] {
        joined = path.join(".");
        vec![joined.as_str()]
    } else {
        path.to_vec()
    };
    let key = path[0];
    if path.len() == 1 {
        if value.is_null() {
            config.remove(key);
        } else {
            config.insert(key.to_owned(), value.clone());
        }
        return;
    }
    if !config.get(key).is_some_and(Value::is_object) {
        config.insert(key.to_owned(), Value::Object(Map::new()));
    }
    if let Some(Value::Object(sub)) = config.get_mut(key) {
        let mut p = prefix.to_vec();
        p.push(key);
        set_path(sub, &path[1..], value, &p);
        if sub.is_empty() {
            config.remove(key);
        }
    }
}

/// `edit-config`.
pub async fn edit(ctx: &Ctx, o: EditOpts) -> Result<(), CtlError> {
    let view = ctx.cluster().await?;
    let (current, version) = match &view.config {
        Some(c) => (c.value.clone(), Some(c.version.clone())),
        None => (Map::new(), None),
    };
    let before = super::yaml::dump(&Value::Object(current.clone()));
    let mut changed = current.clone();
    let mut edited = false;
    if let Some(f) = &o.replace {
        changed = yaml_object(&read_source(f)?, f)?;
        edited = true;
    }
    if let Some(f) = &o.apply {
        let patch = yaml_object(&read_source(f)?, f)?;
        patch_config(&mut changed, &patch);
        edited = true;
    }
    let pairs: Vec<String> = o
        .set
        .iter()
        .cloned()
        .chain(
            o.pg.iter()
                .map(|p| format!("postgresql.parameters.{}", p.trim_start())),
        )
        .collect();
    for kv in &pairs {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(CtlError::msg(format!("Invalid parameter setting {kv}")));
        };
        let value = super::yaml::load(v).map_err(|e| CtlError::msg(format!("{kv}: {e}")))?;
        let path: Vec<&str> = k.trim().split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(CtlError::msg(format!("Invalid parameter setting {kv}")));
        }
        set_path(&mut changed, &path, &value, &[]);
        edited = true;
    }
    if !edited {
        changed = invoke_editor(&before, &ctx.scope)?;
    }
    if changed == current {
        if !o.quiet {
            println!("Not changed");
        }
        return Ok(());
    }
    if !o.quiet {
        print!(
            "{}",
            super::diff::unified(&before, &super::yaml::dump(&Value::Object(changed.clone())))
        );
    }
    if (o.apply.as_deref() == Some("-") || o.replace.as_deref() == Some("-")) && !o.force {
        println!("Use --force option to apply changes");
        return Ok(());
    }
    if o.force || confirm("Apply these changes?") {
        let json = Value::Object(changed).to_string();
        match ctx.dcs.set_config(&json, version.as_ref()).await {
            Ok(true) => println!("Configuration changed"),
            Ok(false) => {
                return Err(CtlError::msg(
                    "Config modification aborted due to concurrent changes",
                ));
            }
            Err(e) => return Err(CtlError::msg(e.to_string())),
        }
    }
    Ok(())
}

fn invoke_editor(before: &str, scope: &str) -> Result<Map<String, Value>, CtlError> {
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.is_empty())
        .or_else(|| {
            ["editor", "vi"]
                .iter()
                .find(|e| {
                    std::env::var_os("PATH")
                        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(e).is_file()))
                })
                .map(|e| (*e).to_owned())
        });
    let Some(editor) = editor else {
        return Err(CtlError::msg(
            "EDITOR environment variable is not set. editor or vi are not available",
        ));
    };
    let path = std::env::temp_dir().join(format!("{scope}-config-{}.yaml", std::process::id()));
    std::fs::write(&path, before).map_err(|e| CtlError::msg(format!("{}: {e}", path.display())))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    let after = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(CtlError::msg(format!(
                "Editor exited with return code {}",
                s.code().unwrap_or(-1)
            )));
        }
        Err(e) => {
            return Err(CtlError::msg(format!(
                "cannot run the editor {editor}: {e}"
            )));
        }
    }
    let after = after.map_err(|e| CtlError::msg(e.to_string()))?;
    yaml_object(&after, "edited configuration")
}

/// `show-config`.
pub async fn show(ctx: &Ctx) -> Result<(), CtlError> {
    let view = ctx.cluster().await?;
    let v = view
        .config
        .map(|c| Value::Object(c.value))
        .unwrap_or(Value::Object(Map::new()));
    println!("{}", super::yaml::dump(&v));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths() {
        let mut c = Map::new();
        set_path(
            &mut c,
            &[
                "postgresql",
                "parameters",
                "auto_explain",
                "log_min_duration",
            ],
            &json!(5),
            &[],
        );
        set_path(&mut c, &["ttl"], &json!(20), &[]);
        assert_eq!(
            Value::Object(c.clone()),
            json!({"postgresql": {"parameters": {"auto_explain.log_min_duration": 5}}, "ttl": 20})
        );
        set_path(
            &mut c,
            &[
                "postgresql",
                "parameters",
                "auto_explain",
                "log_min_duration",
            ],
            &Value::Null,
            &[],
        );
        assert_eq!(Value::Object(c), json!({"ttl": 20}));
    }
}
