//! `pgwarden ctl` (also the binary invoked as `patronictl`): patronictl's commands, flags,
//! output and exit codes. Reads go to the store directly; actions are REST calls to members.
//!
//! - [`context`]: configuration file, `--dcs-url`, store connection, REST client, prompts;
//! - [`table`], [`yaml`], [`diff`]: output formats;
//! - [`list`]: `list`, `topology`; [`switchover`]: `switchover`, `failover`;
//! - [`members`]: `restart`, `reload`, `reinit`; [`pause`]: `pause`, `resume`;
//! - [`config`]: `edit-config`, `show-config`; [`history`]: `history`, `remove`.

pub mod config;
pub mod context;
pub mod diff;
pub mod history;
pub mod list;
pub mod members;
pub mod pause;
pub mod switchover;
pub mod table;
pub mod yaml;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use table::Format;

/// A command's failure: printed as `Error: ...` with exit code 1 (click's convention), or
/// already reported (`Silent`, exit 1).
#[derive(Debug)]
pub enum CtlError {
    /// A message for `Error: `.
    Msg(String),
    /// The command printed its own failure.
    Silent,
}

impl CtlError {
    /// A message error.
    pub fn msg(m: impl Into<String>) -> CtlError {
        CtlError::Msg(m.into())
    }
}

/// patronictl's command line.
#[derive(Parser, Debug)]
#[command(
    name = "patronictl",
    about = "Command-line interface for interacting with a pgwarden/Patroni cluster",
    version
)]
pub struct CtlArgs {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config-file",
        env = "PATRONICTL_CONFIG_FILE",
        global = true
    )]
    pub config_file: Option<PathBuf>,
    /// The DCS connect url (`etcd3://host:port/namespace`).
    #[arg(
        short = 'd',
        long = "dcs-url",
        alias = "dcs",
        env = "DCS_URL",
        global = true
    )]
    pub dcs_url: Option<String>,
    /// Allow connections to SSL sites without certs.
    #[arg(short = 'k', long = "insecure", global = true)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// List the Patroni members for a given Patroni.
    List {
        /// Cluster names.
        cluster_names: Vec<String>,
        /// Show some extra information.
        #[arg(short = 'e', long)]
        extended: bool,
        /// Print timestamp.
        #[arg(short = 't', long = "timestamp")]
        ts: bool,
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        fmt: Format,
        /// Auto update the screen every X seconds.
        #[arg(short = 'w', long = "watch")]
        watch: Option<f64>,
        /// Auto update the screen every 2 seconds.
        #[arg(short = 'W')]
        w: bool,
    },
    /// Prints ASCII topology for given cluster.
    Topology {
        /// Cluster names.
        cluster_names: Vec<String>,
        /// Auto update the screen every X seconds.
        #[arg(short = 'w', long = "watch")]
        watch: Option<f64>,
        /// Auto update the screen every 2 seconds.
        #[arg(short = 'W')]
        w: bool,
    },
    /// Perform a controlled switchover.
    Switchover {
        /// Cluster name.
        cluster_name: Option<String>,
        /// The name of the current leader.
        #[arg(long = "leader", visible_aliases = ["primary", "master"])]
        leader: Option<String>,
        /// The name of the candidate.
        #[arg(long)]
        candidate: Option<String>,
        /// Timestamp of a scheduled switchover in unambiguous format (e.g. ISO 8601), or `now`.
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask for confirmation at any point.
        #[arg(long)]
        force: bool,
    },
    /// Failover to a replica.
    Failover {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Accepted for compatibility (patronictl 3 had `--leader` on failover).
        #[arg(long = "leader", visible_aliases = ["primary", "master"], hide = true)]
        leader: Option<String>,
        /// The name of the candidate.
        #[arg(long)]
        candidate: Option<String>,
        /// Do not ask for confirmation at any point.
        #[arg(long)]
        force: bool,
    },
    /// Restart cluster member.
    Restart {
        /// Cluster name, then member names.
        names: Vec<String>,
        /// Restart only members with this role.
        #[arg(short = 'r', long, default_value = "any")]
        role: String,
        /// Restart with any role (the default).
        #[arg(long)]
        any: bool,
        /// Timestamp of a scheduled restart in unambiguous format (e.g. ISO 8601).
        #[arg(long)]
        scheduled: Option<String>,
        /// Restart if the PostgreSQL version is less than provided (e.g. 9.5.2).
        #[arg(long = "pg-version")]
        pg_version: Option<String>,
        /// Restart if pending.
        #[arg(long)]
        pending: bool,
        /// Return error and fail over if necessary when restarting takes longer than this.
        #[arg(long)]
        timeout: Option<String>,
        /// Do not ask for confirmation at any point.
        #[arg(long)]
        force: bool,
    },
    /// Reload cluster member configuration.
    Reload {
        /// Cluster name, then member names.
        names: Vec<String>,
        /// Reload only members with this role.
        #[arg(short = 'r', long, default_value = "any")]
        role: String,
        /// Do not ask for confirmation at any point.
        #[arg(long)]
        force: bool,
    },
    /// Reinitialize cluster member.
    Reinit {
        /// Cluster name, then member names.
        names: Vec<String>,
        /// Do not ask for confirmation at any point.
        #[arg(long)]
        force: bool,
        /// Wait until reinitialization completes.
        #[arg(long)]
        wait: bool,
        /// Clone from the leader.
        #[arg(long = "from-leader")]
        from_leader: bool,
    },
    /// Disable auto failover.
    Pause {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Wait until pause is applied on all nodes.
        #[arg(long)]
        wait: bool,
    },
    /// Resume auto failover.
    Resume {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Wait until pause is cleared on all nodes.
        #[arg(long)]
        wait: bool,
    },
    /// Edit cluster configuration.
    #[command(name = "edit-config")]
    EditConfig {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Do not show changes.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Set specific configuration value. Can be specified multiple times.
        #[arg(short = 's', long = "set")]
        set: Vec<String>,
        /// Set specific PostgreSQL parameter value. Can be specified multiple times.
        #[arg(short = 'p', long = "pg")]
        pg: Vec<String>,
        /// Apply configuration from file. Use - for stdin.
        #[arg(long)]
        apply: Option<String>,
        /// Apply configuration from file, replacing existing configuration. Use - for stdin.
        #[arg(long)]
        replace: Option<String>,
        /// Do not ask for confirmation at any point.
        #[arg(long)]
        force: bool,
    },
    /// Show cluster configuration.
    #[command(name = "show-config")]
    ShowConfig {
        /// Cluster name.
        cluster_name: Option<String>,
    },
    /// Show the history of failovers/switchovers.
    History {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        fmt: Format,
    },
    /// Remove cluster from DCS.
    Remove {
        /// Cluster name.
        cluster_name: String,
    },
}

/// The cluster named by the first positional of `names`, if it is not a member name we can
/// recognise later (patronictl 3 requires the cluster name first; 4 makes it optional).
fn split_cluster(cfg: &context::CtlConfig, names: &[String]) -> (Option<String>, Vec<String>) {
    match (names.first(), &cfg.scope) {
        (Some(first), Some(scope)) if first == scope => (Some(first.clone()), names[1..].to_vec()),
        (Some(first), None) => (Some(first.clone()), names[1..].to_vec()),
        _ => (None, names.to_vec()),
    }
}

async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let cfg = context::CtlConfig::load(
        args.config_file.clone(),
        args.dcs_url.as_deref(),
        args.insecure,
    )?;
    let connect = |scope: Option<String>| {
        let cfg = cfg.clone();
        async move { context::Ctx::connect(cfg, scope.as_deref()).await }
    };
    match args.command {
        Cmd::List {
            cluster_names,
            extended,
            ts,
            fmt,
            watch,
            w,
        } => {
            let watch = watch.or(w.then_some(2.0));
            let names = if cluster_names.is_empty() {
                vec![None]
            } else {
                cluster_names.into_iter().map(Some).collect()
            };
            for n in names {
                if ts {
                    println!("{}", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"));
                }
                let ctx = connect(n).await?;
                list::list(&ctx, fmt, extended, watch).await?;
            }
            Ok(())
        }
        Cmd::Topology {
            cluster_names,
            watch,
            w,
        } => {
            let ctx = connect(cluster_names.first().cloned()).await?;
            list::list(&ctx, Format::Topology, false, watch.or(w.then_some(2.0))).await
        }
        Cmd::Switchover {
            cluster_name,
            leader,
            candidate,
            scheduled,
            force,
        } => {
            let ctx = connect(cluster_name).await?;
            switchover::run(
                &ctx,
                switchover::Request {
                    failover: false,
                    leader,
                    candidate,
                    scheduled,
                    force,
                },
            )
            .await
        }
        Cmd::Failover {
            cluster_name,
            leader,
            candidate,
            force,
        } => {
            let ctx = connect(cluster_name).await?;
            // patronictl 3: `failover --leader X` is a switchover.
            let failover = leader.is_none();
            switchover::run(
                &ctx,
                switchover::Request {
                    failover,
                    leader,
                    candidate,
                    scheduled: None,
                    force,
                },
            )
            .await
        }
        Cmd::Restart {
            names,
            role,
            any,
            scheduled,
            pg_version,
            pending,
            timeout,
            force,
        } => {
            let (cluster, members) = split_cluster(&cfg, &names);
            let ctx = connect(cluster).await?;
            let role = if any { "any".to_owned() } else { role };
            members::restart(
                &ctx,
                &members,
                members::RestartOpts {
                    role,
                    pending,
                    scheduled,
                    pg_version,
                    timeout,
                    force,
                },
            )
            .await
        }
        Cmd::Reload { names, role, force } => {
            let (cluster, members) = split_cluster(&cfg, &names);
            let ctx = connect(cluster).await?;
            members::reload(&ctx, &members, &role, force).await
        }
        Cmd::Reinit {
            names,
            force,
            wait,
            from_leader,
        } => {
            let (cluster, members) = split_cluster(&cfg, &names);
            if members.is_empty() {
                return Err(CtlError::msg("Missing argument 'MEMBER_NAMES...'"));
            }
            let ctx = connect(cluster).await?;
            members::reinit(&ctx, &members, force, wait, from_leader).await
        }
        Cmd::Pause { cluster_name, wait } => {
            pause::toggle(&connect(cluster_name).await?, true, wait).await
        }
        Cmd::Resume { cluster_name, wait } => {
            pause::toggle(&connect(cluster_name).await?, false, wait).await
        }
        Cmd::EditConfig {
            cluster_name,
            quiet,
            set,
            pg,
            apply,
            replace,
            force,
        } => {
            let ctx = connect(cluster_name).await?;
            config::edit(
                &ctx,
                config::EditOpts {
                    quiet,
                    set,
                    pg,
                    apply,
                    replace,
                    force,
                },
            )
            .await
        }
        Cmd::ShowConfig { cluster_name } => config::show(&connect(cluster_name).await?).await,
        Cmd::History { cluster_name, fmt } => {
            history::history(&connect(cluster_name).await?, fmt).await
        }
        Cmd::Remove { cluster_name } => history::remove(&connect(Some(cluster_name)).await?).await,
    }
}

/// Runs `patronictl`/`pgwarden ctl` with `argv` (the program name first).
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args = match CtlArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CtlError::Silent) => ExitCode::from(1),
        Err(CtlError::Msg(m)) => {
            eprintln!("Error: {m}");
            ExitCode::from(1)
        }
    }
}
