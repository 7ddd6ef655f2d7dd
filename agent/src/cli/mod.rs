//! The command line: argument definitions and the commands, each a thin layer over load,
//! observe, plan and apply, in a file per command group. Human output is a table,
//! coloured only on a terminal (`render`).

mod agent;
mod backup;
mod budget;
mod cluster;
mod context;
mod holds;
mod job;
mod maintain;
pub mod output;
mod render;
mod specs;

use crate::cli::output::{eout, eoutln, out, outln};
use crate::engine::Engines;
use crate::engine::docker::DockerEngine;
use crate::engine::systemd::SystemdEngine;
use crate::engine::{EngineError, EngineErrorKind, Timeouts};
use crate::reconcile::apply::{self, ApplyError, Options, Report};
use crate::reconcile::execute::Outcome;
use crate::reconcile::plan::{self, Note, Plan};
use crate::reconcile::state::{self, StateDir, StateError};
use crate::reconcile::status::Status;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tend_specs::{Desired, Diagnostic};

use agent::*;
pub use backup::BackupCommand;
use backup::*;
pub use cluster::ClusterCommand;
use cluster::*;
use context::*;
use holds::*;
pub use job::JobCommand;
use job::*;
use maintain::*;
use render::*;
use specs::*;

/// Where specs are read from when no PATH is given.
pub const DEFAULT_SPECS: &str = "/etc/tend/specs";

/// tend: keeps this host's containers matching the specs.
#[derive(Debug, Parser)]
#[command(name = "tend", version, about, propagate_version = true)]
pub struct Cli {
    /// State directory (holds, restart history).
    #[arg(long, global = true, env = "TEND_STATE_DIR", default_value = "/var/lib/tend")]
    pub state_dir: PathBuf,
    /// The scope this tend owns: objects labelled tend.scope=SCOPE. One per agent.
    #[arg(long, global = true, env = "TEND_SCOPE", default_value = "default")]
    pub scope: String,
    /// Where systemd unit files are written.
    #[arg(long, global = true, env = "TEND_UNIT_DIR", default_value = crate::engine::systemd::UNIT_DIR)]
    pub unit_dir: PathBuf,
    /// Where environment files holding secrets of systemd services are written (mode 0600).
    #[arg(long, global = true, env = "TEND_ENV_DIR", default_value = "/etc/tend/env")]
    pub env_dir: PathBuf,
    /// Where maintenance lock files live (one per target; tmpfs, so none survives a reboot).
    #[arg(long, global = true, env = "TEND_LOCK_DIR", default_value = crate::maintain::locks::DEFAULT_LOCK_DIR)]
    pub lock_dir: PathBuf,
    /// The agent's API socket: `status`, `plan`, `release`, `drain` and `undrain` use a
    /// running agent through it.
    #[arg(long, global = true, env = "TEND_SOCKET", default_value = crate::daemon::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// How long to wait for an engine (Docker, systemd) to answer one call before taking it
    /// for unresponsive: 1s to 10m. A stop gets its grace period on top, a pull may run as
    /// long as it progresses.
    #[arg(long, global = true, env = crate::engine::TIMEOUT_ENV, value_name = "DURATION",
          default_value_t = tend_specs::agent_config::DEFAULT_ENGINE_TIMEOUT, value_parser = engine_timeout)]
    pub engine_timeout: tend_specs::quantity::Duration,
    /// The global options given on the command line or in the environment, not defaulted
    /// (they override the agent's configuration file).
    #[arg(skip)]
    pub explicit: Vec<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the command line, noting which global options were given explicitly.
pub fn parse() -> Cli {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sub = matches.subcommand().map(|(_, m)| m);
    for id in ["state_dir", "scope", "unit_dir", "env_dir", "socket", "engine_timeout"] {
        let explicit = [Some(&matches), sub].into_iter().flatten().any(|m| {
            matches!(m.try_get_raw(id), Ok(Some(_)))
                && matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
        });
        if explicit {
            cli.explicit.push(id.to_string());
        }
    }
    cli
}

/// Parses `--engine-timeout` within its bounds.
fn engine_timeout(text: &str) -> Result<tend_specs::quantity::Duration, String> {
    let d: tend_specs::quantity::Duration = text.parse().map_err(|e| format!("{e}"))?;
    tend_specs::agent_config::check_engine_timeout(d)?;
    Ok(d)
}

impl Cli {
    /// This host as the command line says it (the state and lock directories made absolute:
    /// Timers' units and scheduled Backups run tend with them).
    pub fn host(&self) -> crate::host::Host {
        crate::host::Host {
            scope: self.scope.clone(),
            state_dir: absolute(&self.state_dir),
            locks: crate::maintain::locks::LockDir::new(absolute(&self.lock_dir)),
            unit_dir: self.unit_dir.clone(),
            env_dir: self.env_dir.clone(),
            tend_bin: tend_bin(),
            timeouts: self.timeouts(),
            agent_config: None,
        }
    }

    /// How long stand-alone commands wait for an engine.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts::new(self.engine_timeout.get())
    }
}

/// How the agent logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// The journal when started by systemd (JOURNAL_STREAM is set), else text.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// The systemd journal, with structured fields.
    Journal,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// A table for people.
    #[default]
    Text,
    /// JSON for programs.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check specs and report every problem with its file:line:column.
    Validate {
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
    },
    /// Show what apply would do, and why. Exit 0: nothing to do; 2: changes; 1: error.
    /// Without PATH, a running agent's plan (or /etc/tend/specs when no agent runs).
    Plan {
        /// A spec file or directory.
        path: Option<PathBuf>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Make the host match the specs.
    Apply {
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
        /// Steps run at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Apply changes now, even outside the services' update windows.
        #[arg(long)]
        now: bool,
        /// Apply even when the specs remove more than half of the managed services and
        /// Timers at once (an empty or wrong directory would remove them all).
        #[arg(long)]
        allow_mass_removal: bool,
    },
    /// Show services, instances, health, holds and conflicts. Without PATH, a running
    /// agent's status (or /etc/tend/specs when no agent runs).
    Status {
        /// A spec file or directory.
        path: Option<PathBuf>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Release a hold: SERVICE (all its instances) or an instance's container name.
    Release {
        /// The service or instance.
        name: String,
    },
    /// Drain this node: its services are stopped (dependents first) and stay stopped, and
    /// nothing new starts, until `tend undrain`. A running agent acts at once; otherwise the
    /// next `tend apply` does.
    ///
    /// On a node of a cluster, the drain first takes a slot of the disruption budget for
    /// each placed instance the node runs, and is refused when the budget is spent.
    Drain {
        /// Why (shown by `tend status` and `tend plan`).
        #[arg(long)]
        reason: Option<String>,
        /// In a cluster: wait for free slots of the disruption budget instead of failing.
        #[arg(long)]
        wait: bool,
        /// In a cluster: the spec set of the placed services (default: the running agent's,
        /// else /etc/tend/specs).
        #[arg(long)]
        specs: Option<PathBuf>,
    },
    /// Undrain this node: what the drain stopped is started again, dependencies first.
    Undrain,
    /// Print the JSON Schema of spec documents (or of the agent's configuration file).
    Schema {
        /// The schema of /etc/tend/agent.yaml instead.
        #[arg(long)]
        agent_config: bool,
    },
    /// Run the agent: keep the host converged, fed by a spec directory or a git repository.
    Agent {
        /// The configuration file (default /etc/tend/agent.yaml, when it exists).
        #[arg(long, env = "TEND_CONFIG")]
        config: Option<PathBuf>,
        /// Run on this spec directory, without a configuration file.
        #[arg(long, conflicts_with = "config")]
        specs: Option<PathBuf>,
        /// Apply a spec set even when it removes more than the configured share of the
        /// managed services and Timers at once.
        #[arg(long)]
        allow_mass_removal: bool,
        /// Also serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9713).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Log format.
        #[arg(long, value_enum, default_value_t)]
        log_format: LogFormat,
    },
    /// Show how systemd reads a calendar expression and when it next elapses, in the layout
    /// of `systemd-analyze calendar` (without its "From now" lines).
    Calendar {
        /// The expression, e.g. `Mon..Fri 09:00` or `daily`.
        expr: String,
        /// How many elapses to show.
        #[arg(long, default_value_t = 1)]
        iterations: usize,
        /// Count from this time (`2026-11-22 00:00:00 UTC`, `@EPOCH`) instead of now.
        #[arg(long)]
        from: Option<String>,
    },
    /// Run a Timer's job now, show its runs, list the Timers.
    Job {
        /// The job command.
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Hold targets for maintenance: take their locks (all or none), run COMMAND or a shell,
    /// release when it exits (or is killed). tend leaves held targets alone.
    Maintain {
        /// SERVICE (all its instances), SERVICE/INSTANCE, or a Timer (its job).
        targets: Vec<String>,
        /// Also every Service and Timer whose metadata.labels has KEY=VALUE.
        #[arg(long, value_name = "KEY=VALUE")]
        selector: Vec<String>,
        /// Why (shown to others in `tend status`, `tend plan` and `tend locks`).
        #[arg(long)]
        reason: Option<String>,
        /// End the window after this long: COMMAND gets SIGTERM, then SIGKILL 10s later.
        #[arg(long = "for", value_name = "DURATION")]
        window: Option<tend_specs::quantity::Duration>,
        /// Wait for targets that are busy (held by another operator, or tend is acting on
        /// them) instead of failing.
        #[arg(long)]
        wait: bool,
        /// The spec set naming the targets (default: the running agent's, else /etc/tend/specs).
        #[arg(long)]
        specs: Option<PathBuf>,
        /// The command to run while holding the locks (default: $SHELL).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a Backup now, list its archives, verify them.
    Backup {
        /// The backup command.
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore a Backup: shows what will be stopped, moved aside and replaced, and how old
    /// the archive is, then asks (or `--yes`).
    Restore {
        /// The Backup.
        name: String,
        /// The archive (default: the newest complete one).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Extract into this new directory instead (nothing is stopped or moved).
        #[arg(long, conflicts_with = "set")]
        to: Option<PathBuf>,
        /// A value for a `${var}` of restore.exec (e.g. `--set db=pipeline_dev`); a name
        /// restore.exec does not have is an error.
        #[arg(long, value_name = "VAR=VALUE")]
        set: Vec<String>,
        /// Restore an archive that has no manifest (nothing then says which Backup made it,
        /// when, or what its checksum is).
        #[arg(long)]
        without_manifest: bool,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// The spec set (default: the running agent's, else /etc/tend/specs).
        #[arg(long)]
        specs: Option<PathBuf>,
    },
    /// The cluster this node's agent is in: its members, its leader, etcd and the
    /// placements, as the running agent sees them.
    Cluster {
        /// The cluster command.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// List the targets held for maintenance.
    Locks {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

/// Errors of the commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The specs have problems (already printed).
    #[error("{count} problem(s) in the specs; nothing was changed")]
    Invalid {
        /// How many.
        count: usize,
    },
    /// The scope name is not usable.
    #[error("invalid scope `{0}`: use a DNS label (lowercase letters, digits, `-`)")]
    Scope(String),
    /// Docker, which the specs need, did not answer or could not be reached.
    #[error("{} (nothing was changed)", docker_state(.0))]
    Engine(#[source] EngineError),
    /// A pass failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Observing failed.
    #[error(transparent)]
    Observe(#[from] crate::reconcile::observe::ObserveError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// No hold matched.
    #[error("nothing is held under `{0}` (see `tend status`)")]
    NotHeld(String),
    /// A calendar expression or time is not valid.
    #[error("invalid {what} `{text}`")]
    Calendar {
        /// "calendar expression" or "time".
        what: &'static str,
        /// The text given.
        text: String,
        /// What is wrong, with its column.
        #[source]
        source: tend_specs::calendar::CalendarError,
    },
    /// The async runtime could not start.
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    /// Printing failed.
    #[error("writing output")]
    Output(#[source] serde_json::Error),
    /// Talking to the running agent failed.
    #[error(transparent)]
    Api(#[from] crate::daemon::api::ApiError),
    /// No agent answers on the socket (a command that needs one).
    #[error("no agent answers on {}: `tend cluster` asks the agent running on this node (start it, or give its --socket)", socket.display())]
    NoAgent {
        /// The socket.
        socket: PathBuf,
    },
    /// The agent is not in a cluster.
    #[error("the agent on {}: {message}", socket.display())]
    NotInCluster {
        /// The socket.
        socket: PathBuf,
        /// The agent's words.
        message: String,
    },
    /// The agent's answer was not understood.
    #[error("reading the agent's answer")]
    AgentReply(#[source] serde_json::Error),
    /// A backup or restore failed.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// `tend maintain` failed.
    #[error(transparent)]
    Maintain(#[from] crate::maintain::MaintainError),
    /// The agent stopped with an error.
    #[error(transparent)]
    Agent(#[from] crate::daemon::AgentError),
    /// `tend apply` would remove too much at once.
    #[error("{specs} {what}: nothing was changed (apply it anyway with --allow-mass-removal)")]
    MassRemoval {
        /// The spec set.
        specs: PathBuf,
        /// What it would remove.
        what: crate::daemon::MassRemoval,
    },
    /// The host's salt of secrets' digests cannot be had.
    #[error(transparent)]
    Salt(#[from] crate::support::redact::SaltError),
    /// A disruption budget could not be taken.
    #[error(transparent)]
    Budget(#[from] crate::cluster::budget::BudgetError),
    /// etcd failed.
    #[error("the cluster")]
    Etcd(#[source] crate::engine::etcd::EtcdError),
    /// This node has no name in its cluster.
    #[error("the agent configuration's cluster block")]
    NodeName(#[source] tend_specs::agent_config::cluster::NodeNameError),
    /// The agent's configuration has problems (already printed).
    #[error("{count} problem(s) in the agent configuration {path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
    },
}

/// Runs a command; returns the exit code.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match &cli.command {
        Command::Agent { log_format, .. } => init_logging(*log_format, "info"),
        _ => init_logging(LogFormat::Text, "warn"),
    }
    if !tend_specs::load::is_dns_label(&cli.scope) {
        return Err(CliError::Scope(cli.scope));
    }
    match &cli.command {
        Command::Schema { agent_config } => {
            if *agent_config {
                out!("{}", tend_specs::agent_config::json_schema_text());
            } else {
                out!("{}", tend_specs::schema::json_schema_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent { config, specs, allow_mass_removal, metrics_listen, .. } => {
            let settings =
                agent_settings(&cli, config.as_deref(), specs.as_deref(), *allow_mass_removal, *metrics_listen)?;
            let rt = runtime()?;
            let result = rt.block_on(crate::daemon::run(settings));
            // Threads waiting for maintenance windows to end must not keep the agent alive.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { path } => specs::validate(path),
        Command::Plan { path, output } => specs::plan(&cli, path.as_deref(), *output),
        Command::Apply { path, output, parallel, now, allow_mass_removal } => specs::apply(
            &cli,
            specs::ApplyArgs {
                path,
                output: *output,
                parallel: *parallel,
                now: *now,
                allow_mass_removal: *allow_mass_removal,
            },
        ),
        Command::Status { path, output } => specs::status(&cli, path.as_deref(), *output),
        Command::Release { name } => {
            if let Some(code) = runtime()?.block_on(release_by_agent(&cli.socket, name))? {
                return Ok(code);
            }
            release(&cli.state_dir, name)
        }
        Command::Drain { reason, wait, specs } => drain(&cli, reason.clone(), *wait, specs.as_deref()),
        Command::Undrain => undrain(&cli),
        Command::Calendar { expr, iterations, from } => calendar(expr, *iterations, from.as_deref()),
        Command::Job { command } => job(&cli, command),
        Command::Maintain { targets, selector, reason, window, wait, specs, command } => {
            maintain(&cli, targets, selector, reason.clone(), *window, *wait, specs.as_deref(), command)
        }
        Command::Locks { output } => locks(&cli, *output),
        Command::Cluster { command } => cluster(&cli, command),
        Command::Backup { command } => backup(&cli, command),
        Command::Restore { name, from, to, set, without_manifest, yes, specs } => {
            let target =
                RestoreTarget { from: from.as_deref(), to: to.as_deref(), without_manifest: *without_manifest };
            restore(&cli, name, target, set, *yes, specs.as_deref())
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    #[test]
    fn other_crates_never_log_below_info_whatever_tend_log_says() {
        let filter = super::own_detail_only();
        // bollard logs request and response bodies (environments, secrets) at debug/trace.
        for target in
            ["bollard::docker", "bollard::uri", "hyper_util::client::legacy::client", "zbus::connection", "h2"]
        {
            assert!(!filter.would_enable(target, &Level::DEBUG), "{target}");
            assert!(filter.would_enable(target, &Level::INFO), "{target}");
        }
        assert!(filter.would_enable("tend::reconcile::apply", &Level::TRACE));
        assert!(filter.would_enable("tend::daemon", &Level::DEBUG));
    }
}
