//! Errors of the `postgres` module and running external commands.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Errors name the command or query and carry the tail of stderr where there is one.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr_tail}")]
    Command {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("postmaster exited during start ({status}): {stderr_tail}")]
    Exited { status: String, stderr_tail: String },
    #[error("postmaster (pid {pid}) is still not accepting connections after {after:?}")]
    StartTimeout { pid: u32, after: Duration },
    #[error("postgres is already running (pid {pid})")]
    AlreadyRunning { pid: u32 },
    #[error("a postmaster not started by us (pid {pid}) is running on this data directory")]
    ForeignPostmaster { pid: i32 },
    #[error("postgres is not running")]
    NotRunning,
    #[error("{what} failed: {message}")]
    Query { what: String, message: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("invalid data directory: {0}")]
    InvalidDataDir(String),
    #[error("promote failed: {0}")]
    Promote(String),
}

impl PgError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        PgError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn query(what: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
            None => {
                let mut m = e.to_string();
                let mut src = std::error::Error::source(e);
                while let Some(s) = src {
                    m.push_str(&format!(": {s}"));
                    src = s.source();
                }
                m
            }
        };
        PgError::Query {
            what: what.into(),
            message,
        }
    }
}

/// The last lines of a command's output (at most ~2000 characters).
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines[lines.len().saturating_sub(10)..].join(" | ");
    if out.len() > 2000 {
        let cut = out.len() - 2000;
        let cut = (cut..out.len())
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(out.len());
        out = format!("...{}", &out[cut..]);
    }
    out
}

/// Human-readable command line for messages (no environment, so no passwords).
pub(crate) fn describe(program: &Path, args: &[String]) -> String {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // conninfo arguments may carry passwords: hide their values
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if let Some((k, _)) = a.split_once('=').filter(|(k, _)| {
                k.starts_with("--") && (k.contains("dbname") || k.contains("source-server"))
            }) {
                format!("{k}=<conninfo>")
            } else {
                a.clone()
            }
        })
        .collect();
    format!("{name} {}", args.join(" ")).trim_end().to_string()
}

/// Runs a command to completion with stdin from /dev/null (or `stdin` text), returns stdout.
/// The child is killed if the future is dropped or `timeout` passes.
pub(crate) async fn run(
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    stdin: Option<&str>,
    timeout: Option<Duration>,
) -> Result<String, PgError> {
    use tokio::io::AsyncWriteExt;
    let command = describe(program, args);
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("LANG", "C")
        .env("LC_MESSAGES", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tracing::info!(%command, "running");
    let mut child = cmd.spawn().map_err(|source| PgError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let text = text.to_string();
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let fut = child.wait_with_output();
    let out = match timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| PgError::Timeout {
                what: command.clone(),
                after: t,
            })?,
        None => fut.await,
    }
    .map_err(|e| PgError::io(format!("waiting for {command}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        if text.trim().is_empty() {
            text = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        Err(PgError::Command {
            command,
            status: out.status.to_string(),
            stderr_tail: tail(&text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        let t: String = (0..20).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            tail(&t),
            (10..20)
                .map(|i| format!("line {i}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        assert_eq!(tail(""), "");
    }

    #[test]
    fn describe_hides_conninfo() {
        let d = describe(
            Path::new("/usr/bin/pg_basebackup"),
            &[
                "--pgdata=/d".into(),
                "--dbname=host=x password=secret".into(),
            ],
        );
        assert_eq!(d, "pg_basebackup --pgdata=/d --dbname=<conninfo>");
    }
}
