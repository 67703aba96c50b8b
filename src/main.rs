//! `pgwarden`: the command line. `pgwarden CONFIG` and `pgwarden run CONFIG` start a member
//! (as `patroni CONFIG` does); `pgwarden demo` runs a local three-member cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "High-availability agent for PostgreSQL, compatible with Patroni"
)]
struct Cli {
    /// Check the configuration file and exit.
    #[arg(long)]
    validate_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
    /// A Patroni configuration file (or directory): the same as `pgwarden run CONFIG`.
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a member with a Patroni configuration file (or a directory of YAML files).
    Run {
        /// The configuration file or directory; `PATRONI_CONFIGURATION` is used when absent.
        config: Option<PathBuf>,
    },
    /// Start etcd and three members on loopback in a temporary directory and show them live.
    Demo(pgwarden::demo::DemoArgs),
    /// patronictl: `pgwarden ctl list`, `pgwarden ctl switchover`, ... (also when run as `patronictl`).
    #[command(disable_help_flag = true)]
    Ctl {
        /// patronictl's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// The log never blocks a thread that logs (see `pgwarden::logging`); keep the guard until
/// exit, when it flushes what is buffered.
fn init_tracing() -> pgwarden::logging::LogGuard {
    pgwarden::logging::init()
}

fn load_config(path: Option<&PathBuf>) -> Result<pgwarden::config::Config, String> {
    let cfg = match path {
        Some(p) => pgwarden::config::load(p),
        None => {
            let env = pgwarden::config::process_env();
            if env.is_empty() {
                return Err("config error: no configuration file given and no PATRONI_CONFIGURATION or PATRONI_* variables set".into());
            }
            pgwarden::config::load_from_env_only(&env)
        }
    };
    let cfg = cfg.map_err(|e| e.to_string())?;
    for key in pgwarden::config::unknown_keys(&cfg.raw) {
        tracing::warn!("unknown configuration key {key}: ignored");
    }
    Ok(cfg)
}

fn run_member(path: Option<PathBuf>, validate_only: bool) -> ExitCode {
    let cfg = match load_config(path.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if validate_only {
        // The section the agent reads only as it starts the fence: checked the same way here.
        let watchdog = pgwarden::config::Watchdog::parse(cfg.watchdog.as_ref())
            .and_then(|w| w.check_startup());
        if let Err(e) = watchdog {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    // One thread runs every task: the agent is mostly idle, every wait in it is an await, and
    // a second scheduler thread only adds memory (its stack, and libm for the multi-thread
    // scheduler's statistics). The kill path does not depend on this thread: the fence process
    // holds the deadline on its own.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        let listen = cfg.restapi.listen.clone();
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on restapi.listen {listen}: {e}"))?;
        pgwarden::agent::run(cfg, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("pgwarden: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// One malloc arena instead of one per thread: the agent is small and mostly idle, so extra
/// arenas would only hold freed memory.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    // Invoked as `patronictl` (a symlink or copy): behave as patronictl.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = argv.first().and_then(|a| {
        PathBuf::from(a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    if invoked_as.as_deref() == Some("patronictl") {
        return pgwarden::ctl::main(argv);
    }
    // The fence process (started by the agent, `pgwarden fence-helper ...`): straight to its
    // loop, before the log's writer thread and the command-line parser, so that it runs, and
    // keeps resident, as little of this binary as it can.
    if argv.get(1).is_some_and(|a| a == "fence-helper") {
        return match pgwarden::agent::FenceHelperArgs::parse(argv.into_iter().skip(2)) {
            Ok(args) => pgwarden::agent::fence_helper_main(args),
            Err(e) => {
                eprintln!("pgwarden fence-helper: {e}");
                ExitCode::from(2)
            }
        };
    }
    let _log = init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Run { config }) => run_member(config, cli.validate_config),
        Some(Command::Demo(args)) => pgwarden::demo::main(args),
        Some(Command::Ctl { args }) => {
            let mut argv = vec![std::ffi::OsString::from("patronictl")];
            argv.extend(args);
            pgwarden::ctl::main(argv)
        }
        None => run_member(cli.config, cli.validate_config),
    }
}
