//! The agent's log: tracing's fmt output to stdout through a bounded, lossy, non-blocking
//! buffer.
//!
//! No thread that logs ever waits on stdout. Formatted lines go into a buffer of
//! [`BUFFERED_LINES`] lines that one writer thread drains to stdout; when stdout stops
//! draining (a full pipe, a stuck log collector) and the buffer is full, new lines are dropped
//! instead of blocking the caller. This matters for safety: the lease fence and the HA loop log
//! on their way to stopping PostgreSQL, and PostgreSQL's own output is forwarded through
//! tracing (`postgres::process`), so a blocking writer could freeze them all.

use std::time::Duration;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Formatted lines that may wait for stdout before new ones are dropped. The buffer's slots
/// are allocated up front (32 bytes each: 128 KiB); a full buffer of typical lines holds
/// about 1 MB more, and only while stdout is stuck.
pub const BUFFERED_LINES: usize = 4096;

/// How long dropping the [`LogGuard`] waits for the buffer to reach stdout.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Keeps the log's writer thread; dropping it flushes what is buffered (waiting at most
/// [`FLUSH_WAIT`], so a stuck stdout cannot hold up the exit). Keep it for the process's
/// lifetime.
#[must_use = "dropping the guard stops the log's writer thread"]
pub struct LogGuard {
    worker: Option<WorkerGuard>,
}

/// The filter used when `PGWARDEN_LOG` is unset or cannot be parsed.
const DEFAULT_FILTER: &str = "info";

/// The log filter named by `PGWARDEN_LOG`: a default level and per-module levels, e.g.
/// `info,pgwarden::ha=debug`. An unparsable value falls back to `info` with a note on stderr.
///
/// This is tracing's `Targets` syntax, not `EnvFilter`'s: span and field filters are not
/// accepted. `EnvFilter` brings a regex engine into every agent's resident memory for a
/// feature an HA agent's log does not need.
fn filter_from_env() -> Targets {
    if let Ok(text) = std::env::var("PGWARDEN_LOG") {
        match parse_filter(&text) {
            Ok(filter) => return filter,
            Err(e) => eprintln!(
                "pgwarden: PGWARDEN_LOG={text:?} is not a log filter ({e}); using {DEFAULT_FILTER:?}"
            ),
        }
    }
    DEFAULT_FILTER.parse().expect("the default filter parses")
}

fn parse_filter(text: &str) -> Result<Targets, String> {
    text.trim().parse::<Targets>().map_err(|e| e.to_string())
}

/// Installs the global subscriber: filter from `PGWARDEN_LOG` (default `info`), no targets,
/// written to stdout without ever blocking the caller.
pub fn init() -> LogGuard {
    let filter = filter_from_env();
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("pgwarden-log")
        .finish(std::io::stdout());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(writer),
        )
        .with(filter)
        .init();
    LogGuard {
        worker: Some(worker),
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        // tracing-appender's guard waits up to about 1.1 s for the writer thread, then prints a
        // note to stdout, which blocks for good if stdout is the stuck pipe: drop it on a
        // helper thread and give up waiting after FLUSH_WAIT.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("pgwarden-log-flush".into())
            .spawn(move || {
                drop(worker);
                let _ = done_tx.send(());
            });
        if spawned.is_ok() {
            let _ = done_rx.recv_timeout(FLUSH_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn the_filter_takes_a_default_level_and_per_module_levels() {
        let f = parse_filter("info,pgwarden::ha=debug").unwrap();
        assert!(f.would_enable("pgwarden::ha::cycle", &Level::DEBUG));
        assert!(!f.would_enable("pgwarden::agent", &Level::DEBUG));
        assert!(f.would_enable("pgwarden::agent", &Level::INFO));
        assert_eq!(
            parse_filter("warn").unwrap().default_level(),
            Some(LevelFilter::WARN)
        );
    }

    #[test]
    fn a_filter_that_does_not_parse_is_an_error() {
        assert!(parse_filter("pgwarden=loud").is_err());
    }
}
