//! The command line: argument definitions and the commands, each a thin layer over load,
//! observe, plan and apply. Human output is a table, coloured only on a terminal.

pub mod output;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tend_specs::{Desired, Diagnostic};

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
    Drain {
        /// Why (shown by `tend status` and `tend plan`).
        #[arg(long)]
        reason: Option<String>,
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
    /// The agent's answer was not understood.
    #[error("reading the agent's answer")]
    AgentReply(#[source] serde_json::Error),
    /// A backup or restore failed.
    #[error(transparent)]
    Backup(#[from] crate::backup::run::BackupError),
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
    /// The agent's configuration has problems (already printed).
    #[error("{count} problem(s) in the agent configuration {path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
    },
}

/// What a failed connection says about Docker.
fn docker_state(e: &EngineError) -> &'static str {
    if e.kind == EngineErrorKind::Timeout { "Docker is unresponsive" } else { "Docker is not available" }
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
        Command::Validate { path } => {
            // Nothing is compared with live state: no salt is needed, nor made.
            let desired = load_with(path, &tend_specs::LoadOptions::default())?;
            let timers = match desired.timers.len() {
                0 => String::new(),
                n => format!(" and {n} timer(s)"),
            };
            let timers = match desired.backups.len() {
                0 => timers,
                n => format!("{timers} and {n} backup(s)"),
            };
            outln!("ok: {} service(s){timers} in {}", desired.services.len(), path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Release { name } => {
            if let Some(code) = runtime()?.block_on(release_by_agent(&cli.socket, name))? {
                return Ok(code);
            }
            release(&cli.state_dir, name)
        }
        Command::Drain { reason } => drain(&cli, reason.clone()),
        Command::Undrain => undrain(&cli),
        Command::Calendar { expr, iterations, from } => calendar(expr, *iterations, from.as_deref()),
        Command::Job { command } => job(&cli, command),
        Command::Maintain { targets, selector, reason, window, wait, specs, command } => {
            maintain(&cli, targets, selector, reason.clone(), *window, *wait, specs.as_deref(), command)
        }
        Command::Locks { output } => locks(&cli, *output),
        Command::Backup { command } => backup(&cli, command),
        Command::Restore { name, from, to, set, without_manifest, yes, specs } => {
            let target =
                RestoreTarget { from: from.as_deref(), to: to.as_deref(), without_manifest: *without_manifest };
            restore(&cli, name, target, set, *yes, specs.as_deref())
        }
        Command::Plan { path, output } => {
            if path.is_none()
                && let Some(plan) = runtime()?.block_on(from_agent::<Plan>(&cli.socket, "/v1/plan"))?
            {
                return show_plan(&plan, *output);
            }
            let path = &path.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SPECS));
            let desired = load_with_backups(&cli, path)?;
            warn_if_empty(&desired, path, &cli.scope);
            runtime()?.block_on(async {
                let options = options(&cli, path, 1);
                let (engines, missing) = connect(&desired, cli.timeouts()).await?;
                let observed = crate::reconcile::observe::observe_all(&engines, &options, &desired).await?;
                if let Some(m) = crate::daemon::mass_removal(&observed, &desired, &cli.scope, MAX_REMOVAL_PERCENT) {
                    eoutln!(
                        "{} this plan {m}: `tend apply` refuses it without --allow-mass-removal",
                        Paint::stderr().yellow("warning:")
                    );
                }
                let st = state::read_state(&cli.state_dir)?;
                let mut plan = apply::plan_for(&desired, &observed, &st, &options, &Default::default());
                plan.unchecked = missing;
                show_plan(&plan, *output)
            })
        }
        Command::Apply { path, output, parallel, now, allow_mass_removal } => {
            let desired = Arc::new(load_with_backups(&cli, path)?);
            warn_if_empty(&desired, path, &cli.scope);
            runtime()?.block_on(async {
                let (engines, missing) = connect(&desired, cli.timeouts()).await?;
                let options = Options { ignore_windows: *now, ..options(&cli, path, *parallel) };
                if !allow_mass_removal {
                    let observed = crate::reconcile::observe::observe_all(&engines, &options, &desired).await?;
                    if let Some(m) = crate::daemon::mass_removal(&observed, &desired, &cli.scope, MAX_REMOVAL_PERCENT) {
                        return Err(CliError::MassRemoval { specs: path.clone(), what: m });
                    }
                }
                let state_dir = StateDir::open(&cli.state_dir)?;
                // A backup killed while its services were stopped: they are started again first.
                let options = Options {
                    stopped_by_backup: crate::backup::quiesce::recover_before_pass(&engines, &desired, &cli.state_dir)
                        .await,
                    ..options
                };
                let report = apply::apply(Arc::new(engines), desired, &state_dir, &options).await?;
                match output {
                    Output::Json => print_json(&report)?,
                    Output::Text => print_report(&report),
                }
                let unmet = unmet(&report.plan.notes);
                if unmet > 0 {
                    eoutln!(
                        "{} the specs are not met: {unmet} name conflict(s) or missing image(s) need an operator (see the notes)",
                        Paint::stderr().red("error:")
                    );
                }
                if let Some(why) = &missing {
                    eoutln!("{} {why}", Paint::stderr().red("error:"));
                }
                Ok(if report.ok() && unmet == 0 && missing.is_none() { ExitCode::SUCCESS } else { ExitCode::from(1) })
            })
        }
        Command::Status { path, output } => {
            if path.is_none()
                && let Some(status) = runtime()?.block_on(from_agent::<Status>(&cli.socket, "/v1/status"))?
            {
                match output {
                    Output::Json => print_json(&status)?,
                    Output::Text => print_status(&status),
                }
                let troubled =
                    status.agent.as_ref().is_some_and(|a| !a.spec_errors.is_empty() || a.mass_removal.is_some());
                return Ok(if status.unchecked.is_some() || troubled { ExitCode::from(1) } else { ExitCode::SUCCESS });
            }
            let path = &path.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SPECS));
            let desired = load_with_backups(&cli, path)?;
            runtime()?.block_on(async {
                let options = options(&cli, path, 1);
                let (engines, missing) = connect(&desired, cli.timeouts()).await?;
                let observed = crate::reconcile::observe::observe_all(&engines, &options, &desired).await?;
                let st = state::read_state(&cli.state_dir)?;
                let plan = apply::plan_for(&desired, &observed, &st, &options, &Default::default());
                let mut status = crate::reconcile::status::build(&desired, &observed, &st, &plan);
                status.timers = crate::jobs::list(&cli.state_dir, &desired, tend_specs::calendar::Timestamp::now());
                status.backups = desired
                    .backups
                    .values()
                    .map(|b| crate::backup::run::health(&cli.state_dir, b, crate::support::now_ms()))
                    .collect();
                status.unchecked = missing.clone();
                match output {
                    Output::Json => print_json(&status)?,
                    Output::Text => print_status(&status),
                }
                // Part of the specs could not be observed: the host is not known to match.
                Ok(if missing.is_some() { ExitCode::from(1) } else { ExitCode::SUCCESS })
            })
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::stderr().is_terminal();
    let _ = match format {
        LogFormat::Journal => match tracing_journald::layer() {
            Ok(journal) => {
                registry.with(journal.with_syslog_identifier("tend".into()).with_filter(own_detail_only())).try_init()
            }
            Err(_) => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(ansi)
                        .with_filter(own_detail_only()),
                )
                .try_init(),
        },
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(own_detail_only()))
            .try_init(),
        _ => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_filter(own_detail_only()),
            )
            .try_init(),
    };
}

/// Whatever `TEND_LOG` asks for, other crates log at most `info`: below it, bollard logs
/// every request and response body (a container's create request holds its environment,
/// secrets included; an inspect answer too), and hyper, zbus and the rest their traffic.
/// `debug` and `trace` are for tend's own modules, which never log a secret.
fn own_detail_only() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    Targets::new().with_default(LevelFilter::INFO).with_target("tend", LevelFilter::TRACE)
}

/// A running agent's answer to `GET path`; `None` when no agent runs.
async fn from_agent<T: serde::de::DeserializeOwned>(socket: &Path, path: &str) -> Result<Option<T>, CliError> {
    let Some(mut client) = crate::daemon::api::Client::connect(socket).await? else { return Ok(None) };
    let value = client.get(path).await?;
    serde_json::from_value(value).map(Some).map_err(CliError::AgentReply)
}

/// `tend release` through a running agent (which passes at once); `None` when no agent runs.
async fn release_by_agent(socket: &Path, name: &str) -> Result<Option<ExitCode>, CliError> {
    let Some(mut client) = crate::daemon::api::Client::connect(socket).await? else { return Ok(None) };
    match client.post(&format!("/v1/release/{name}")).await {
        Ok(v) => {
            for k in v["released"].as_array().into_iter().flatten().filter_map(|k| k.as_str()) {
                outln!("released {k}: the agent starts it again now");
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        Err(crate::daemon::api::ApiError::Agent { status: 404, .. }) => Err(CliError::NotHeld(name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// The agent's settings: the configuration file, overridden by explicit options.
fn agent_settings(
    cli: &Cli,
    config: Option<&Path>,
    specs: Option<&Path>,
    allow_mass_removal: bool,
    metrics_listen: Option<std::net::SocketAddr>,
) -> Result<crate::daemon::Settings, CliError> {
    use crate::daemon::{Settings, SourceSettings};
    use tend_specs::agent_config::{AgentConfig, load_agent_config};
    const DEFAULT_CONFIG: &str = "/etc/tend/agent.yaml";
    let path = match (config, specs) {
        (Some(p), _) => Some(p.to_path_buf()),
        (None, None) if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
        _ => None,
    };
    let file = match &path {
        Some(p) => load_agent_config(p).map_err(|diags| {
            let paint = Paint::stderr();
            for d in &diags {
                eoutln!("{} {d}", paint.red("error:"));
            }
            CliError::Config { path: p.clone(), count: diags.len() }
        })?,
        None => AgentConfig::default(),
    };
    let explicit = |id: &str| cli.explicit.iter().any(|e| e == id);
    let pick = |id: &str, flag: &PathBuf, file: &Option<PathBuf>| match file {
        Some(f) if !explicit(id) => f.clone(),
        _ => flag.clone(),
    };
    let scope = match &file.scope {
        Some(s) if !explicit("scope") => s.clone(),
        _ => cli.scope.clone(),
    };
    let source = match (specs, &file.source.git, &file.source.dir) {
        (Some(dir), _, _) => SourceSettings::Dir(absolute(dir)),
        (None, Some(git), _) => SourceSettings::Git(crate::daemon::source::GitConfig {
            url: git.url.clone(),
            reference: match (&git.branch, &git.tag) {
                (_, Some(tag)) => crate::daemon::source::GitRef::Tag(tag.clone()),
                (Some(branch), None) => crate::daemon::source::GitRef::Branch(branch.clone()),
                (None, None) => crate::daemon::source::GitRef::Branch("main".into()),
            },
            path: git.path.clone(),
            interval: git.interval.get(),
            ssh_key: git.ssh_key.clone(),
            token_file: git.token_file.clone(),
        }),
        (None, None, Some(dir)) => SourceSettings::Dir(dir.clone()),
        (None, None, None) => SourceSettings::Dir(PathBuf::from(DEFAULT_SPECS)),
    };
    let tend_bin = tend_bin();
    Ok(Settings {
        scope,
        state_dir: absolute(&pick("state_dir", &cli.state_dir, &file.state_dir)),
        lock_dir: absolute(&cli.lock_dir),
        unit_dir: pick("unit_dir", &cli.unit_dir, &file.unit_dir),
        env_dir: absolute(&pick("env_dir", &cli.env_dir, &file.env_dir)),
        source,
        resync: file.resync.get(),
        debounce: file.debounce.get(),
        parallel: file.parallel,
        socket: absolute(&pick("socket", &cli.socket, &file.socket.path)),
        socket_group: file.socket.group.clone(),
        metrics_listen: metrics_listen.or_else(|| file.metrics.as_ref().and_then(|m| m.listen.parse().ok())),
        allow_mass_removal: allow_mass_removal || file.mass_removal.allow,
        max_removal_percent: file.mass_removal.max_percent,
        timeouts: Timeouts::new(
            if explicit("engine_timeout") { cli.engine_timeout } else { file.engine_timeout }.get(),
        ),
        tend_bin,
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(CliError::Runtime)
}

/// Loads specs, printing every problem. The digests of secrets in hashes are keyed by the
/// host's salt ([`crate::support::redact::host_salt`]), made by the first command that changes the
/// host; the read-only ones (`plan`, `status`, `job list`) never make it.
fn load(cli: &Cli, path: &Path) -> Result<Desired, CliError> {
    let read_only = matches!(
        &cli.command,
        Command::Plan { .. } | Command::Status { .. } | Command::Job { command: JobCommand::List { .. } }
    );
    let salt = crate::support::redact::host_salt(&cli.state_dir, !read_only)?;
    load_with(path, &tend_specs::LoadOptions { secret_salt: &salt })
}

/// Loads specs with `options`, printing every problem.
fn load_with(path: &Path, options: &tend_specs::LoadOptions<'_>) -> Result<Desired, CliError> {
    tend_specs::load_path_with(path, options).map_err(|diags: Vec<Diagnostic>| {
        let paint = Paint::stderr();
        for d in &diags {
            match &d.location {
                Some(loc) => eoutln!("{loc}: {} {}", paint.red("error:"), d.message),
                None => eoutln!("{} {}", paint.red("error:"), d.message),
            }
        }
        CliError::Invalid { count: diags.len() }
    })
}

/// The largest share of the managed services and Timers `tend apply` removes at once
/// without `--allow-mass-removal` (the agent's default `massRemoval.maxPercent`).
const MAX_REMOVAL_PERCENT: u8 = 50;

/// Says so when a spec directory holds no spec at all: a wrong path, or a checkout that
/// lost its files, would otherwise read as "remove everything".
fn warn_if_empty(desired: &Desired, path: &Path, scope: &str) {
    if desired.services.is_empty() && desired.timers.is_empty() && desired.backups.is_empty() {
        eoutln!(
            "{} {} holds no spec at all: applied, it would remove everything tend manages in scope `{scope}`",
            Paint::stderr().yellow("warning:"),
            path.display()
        );
    }
}

/// Loads specs as [`load`], with the Timers of scheduled Backups added.
fn load_with_backups(cli: &Cli, path: &Path) -> Result<Desired, CliError> {
    let mut desired = load(cli, path)?;
    let tend_bin = tend_bin();
    let (state_dir, lock_dir, specs) = (absolute(&cli.state_dir), absolute(&cli.lock_dir), absolute(path));
    let ctx = crate::backup::run::TimerContext {
        tend_bin: &tend_bin,
        scope: &cli.scope,
        state_dir: &state_dir,
        lock_dir: &lock_dir,
        specs: &specs,
    };
    crate::backup::run::add_schedule_timers(&mut desired, &ctx);
    Ok(desired)
}

/// This binary: Timers' units, hooks and scheduled backups run it (`tend job run`, …).
fn tend_bin() -> PathBuf {
    std::env::current_exe().and_then(|p| p.canonicalize()).unwrap_or_else(|_| PathBuf::from("/usr/local/bin/tend"))
}

/// The options of a pass from the command line.
fn options(cli: &Cli, specs: &Path, parallel: usize) -> Options {
    // Timers' service units run this very binary (`tend job run NAME`).
    let tend_bin = tend_bin();
    Options {
        scope: cli.scope.clone(),
        parallel,
        locks: crate::maintain::locks::LockDir::new(&cli.lock_dir),
        stop: tokio_util::sync::CancellationToken::new(),
        skip_owners: Default::default(),
        ignore_windows: false,
        stopped_by_backup: Default::default(),
        specs: std::path::absolute(specs).unwrap_or_else(|_| specs.to_path_buf()),
        units: apply::UnitsConfig {
            scope: cli.scope.clone(),
            unit_dir: cli.unit_dir.clone(),
            env_dir: cli.env_dir.clone(),
            state_dir: std::path::absolute(&cli.state_dir).unwrap_or_else(|_| cli.state_dir.clone()),
            tend_bin,
            specs: std::path::absolute(specs).unwrap_or_else(|_| specs.to_path_buf()),
            timeouts: cli.timeouts(),
        },
    }
}

/// Connects to the engines the specs need. Docker is required when the specs hold docker
/// services (and used when it answers, so containers of removed specs are removed). systemd
/// is used when it runs as PID 1; when the specs hold units and it does not, the second value
/// says so: the rest is still planned and applied, and the command fails.
async fn connect(
    desired: &Desired,
    timeouts: Timeouts,
) -> Result<(Engines<DockerEngine, SystemdEngine>, Option<String>), CliError> {
    let docker = match DockerEngine::connect(timeouts).await {
        Ok(d) => Some(Arc::new(d)),
        Err(e) if desired.docker_services().next().is_some() => return Err(CliError::Engine(e)),
        Err(_) => None,
    };
    let mut missing = None;
    let systemd = match SystemdEngine::connect(timeouts).await {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            // systemd services cannot run without systemd; scheduled Timers are the agent's
            // scheduler's then (a fact worth a note, not a failure).
            let why = crate::support::chain(&e);
            missing = crate::reconcile::observe::unmet_without_systemd(desired, &why);
            let scheduled = crate::reconcile::observe::scheduled_timers(desired);
            if scheduled > 0 {
                eoutln!(
                    "{} {scheduled} scheduled Timer(s) run by the agent's own scheduler here, not by systemd ({why})",
                    Paint::stderr().yellow("note:")
                );
            }
            None
        }
    };
    Ok((Engines { docker, systemd }, missing))
}

fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    outln!("{}", serde_json::to_string_pretty(v).map_err(CliError::Output)?);
    Ok(())
}

/// ANSI colours, only on a terminal and without NO_COLOR.
#[derive(Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn stdout() -> Self {
        Self(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
    fn stderr() -> Self {
        Self(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
    fn code(self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    fn red(self, s: &str) -> String {
        self.code("31", s)
    }
    fn green(self, s: &str) -> String {
        self.code("32", s)
    }
    fn yellow(self, s: &str) -> String {
        self.code("33", s)
    }
    fn bold(self, s: &str) -> String {
        self.code("1", s)
    }
}

/// Prints rows as aligned columns.
fn table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| visible_len(c)).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - visible_len(cell) + 2));
            }
        }
        outln!("  {}", line.trim_end());
    }
}

fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

fn step_row(step: &plan::Step) -> Vec<String> {
    let mut what = crate::reconcile::execute::target(&step.action);
    if let plan::Action::Await { condition, .. } = &step.action {
        what = format!("{what} ({condition})");
    }
    let mut after = step.after.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    if step.pause_ms > 0 {
        after = format!("{after} +{}", tend_specs::quantity::Duration::from_millis(step.pause_ms));
    }
    vec![
        step.id.to_string(),
        crate::reconcile::execute::action_name(&step.action).to_string(),
        what,
        step.reason.to_string(),
        after,
    ]
}

/// How many notes say the specs cannot be met until an operator acts (a name taken by a
/// container tend does not own, an image that is missing and may not be pulled). Apply
/// fails on them; holds, backoffs and policy-stopped instances are intended states.
fn unmet(notes: &[Note]) -> usize {
    notes
        .iter()
        .filter(|n| matches!(n, Note::Conflict { .. } | Note::UnitConflict { .. } | Note::ImageNotPresent { .. }))
        .count()
}

/// The line shown when there are no steps: the host matches only when nothing is left alone.
fn no_steps_line(notes: &[Note]) -> &'static str {
    if notes.is_empty() {
        "No changes: the host matches the specs."
    } else if unmet(notes) > 0 {
        "No changes can be made now, but the host does not match the specs (see below)."
    } else {
        "No changes to make now; some instances are left alone (see below)."
    }
}

fn print_notes(notes: &[Note]) {
    if notes.is_empty() {
        return;
    }
    let paint = Paint::stdout();
    outln!("{}", paint.bold("Left alone:"));
    for n in notes {
        outln!("  {} {n}", paint.yellow("!"));
    }
}

/// Prints a plan (from the agent or made here) and says by the exit code what it means:
/// 0 nothing to do, 2 changes, 1 part of the specs cannot be planned here.
fn show_plan(plan: &Plan, output: Output) -> Result<ExitCode, CliError> {
    match output {
        Output::Json => print_json(plan)?,
        Output::Text => print_plan(plan),
    }
    if let Some(why) = &plan.unchecked {
        eoutln!("{} {why}", Paint::stderr().red("error:"));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::from(if plan.is_empty() { 0 } else { 2 }))
}

fn print_plan(plan: &Plan) {
    let paint = Paint::stdout();
    if plan.steps.is_empty() {
        outln!("{}", no_steps_line(&plan.notes));
    } else {
        outln!("{}", paint.bold(&format!("Plan: {} step(s)", plan.steps.len())));
        let mut rows = vec![vec!["#".into(), "ACTION".into(), "TARGET".into(), "REASON".into(), "AFTER".into()]];
        rows.extend(plan.steps.iter().map(step_row));
        table(&rows);
    }
    print_notes(&plan.notes);
}

fn print_report(report: &Report) {
    let paint = Paint::stdout();
    let mut rows = Vec::new();
    let mut counts = [0usize; 3];
    for (step, outcome) in report.steps() {
        let mut row = step_row(step);
        row.pop();
        let result = match outcome {
            Some(Outcome::Done { ms }) => {
                counts[0] += 1;
                paint.green(&format!("done {:.1}s", *ms as f64 / 1000.0))
            }
            Some(Outcome::Failed { error }) => {
                counts[1] += 1;
                paint.red(&format!("FAILED: {error}"))
            }
            Some(Outcome::Skipped { because_of }) => {
                counts[2] += 1;
                paint.yellow(&format!("skipped: step {because_of} did not succeed"))
            }
            Some(Outcome::Cancelled) => {
                counts[2] += 1;
                paint.yellow("cancelled: tend is stopping")
            }
            None => "not run".into(),
        };
        row.push(result);
        rows.push(row);
    }
    if rows.is_empty() {
        outln!("{}", no_steps_line(&report.plan.notes));
    } else {
        table(&rows);
        outln!("{} done, {} failed, {} skipped", counts[0], counts[1], counts[2]);
    }
    print_notes(&report.plan.notes);
}

fn print_status(status: &Status) {
    let paint = Paint::stdout();
    if let Some(a) = &status.agent {
        print_agent(paint, a);
    }
    if let Some(d) = &status.drain {
        outln!("{}\n", paint.yellow(&drained_line(d)));
    }
    if !status.timers.is_empty() {
        print_job_list(&status.timers);
    }
    if !status.backups.is_empty() {
        let mut rows = vec![vec!["BACKUP".into(), "LAST SUCCESS".into(), "FREE".into(), "HEALTH".into()]];
        for b in &status.backups {
            let problems = b.problems();
            let health = if problems.is_empty() { paint.green("ok") } else { paint.red(&problems.join("; ")) };
            rows.push(vec![
                b.name.clone(),
                b.last_success_ms.map(crate::support::time::format_ms).unwrap_or_else(|| "never".into()),
                b.free_bytes.map(|f| format!("{} MiB", f / (1024 * 1024))).unwrap_or_else(|| "-".into()),
                health,
            ]);
        }
        table(&rows);
    }
    if !status.units.is_empty() {
        let mut rows = vec![vec!["UNIT".into(), "STATE".into(), "ENABLED".into()]];
        for u in &status.units {
            let state = match (u.held, u.state.as_str()) {
                _ if u.maintenance.is_some() => paint.yellow(&format!(
                    "maintenance ({})",
                    u.maintenance.as_ref().map(ToString::to_string).unwrap_or_default()
                )),
                (true, st) => paint.yellow(&format!("held ({st})")),
                (false, "active") => paint.green("active"),
                (false, st) => paint.red(st),
            };
            rows.push(vec![u.unit.clone(), state, if u.enabled { "yes".into() } else { "no".into() }]);
        }
        table(&rows);
    }
    let mut rows = vec![vec!["SERVICE".into(), "INSTANCE".into(), "STATE".into(), "HEALTH".into(), "SPEC".into()]];
    for s in &status.services {
        for i in &s.instances {
            let state = match (i.held, i.state.as_str(), i.exit_code) {
                _ if i.maintenance.is_some() => paint.yellow(&format!(
                    "maintenance ({})",
                    i.maintenance.as_ref().map(ToString::to_string).unwrap_or_default()
                )),
                (true, st, _) => paint.yellow(&format!("held ({st})")),
                (false, "running", _) => paint.green("running"),
                (false, st, Some(code)) => paint.red(&format!("{st} ({code})")),
                (false, st, None) => paint.red(st),
            };
            let health = i.health.map(|h| format!("{h:?}").to_lowercase()).unwrap_or_else(|| "-".into());
            let spec = if s.replicas == 0 {
                "removed".to_string()
            } else if i.up_to_date {
                "current".to_string()
            } else if i.state == "missing" {
                "-".to_string()
            } else {
                paint.yellow("outdated")
            };
            rows.push(vec![s.name.clone(), i.name.clone(), state, health, spec]);
        }
        if s.instances.is_empty() {
            rows.push(vec![s.name.clone(), "-".into(), "scaled to 0".into(), "-".into(), "-".into()]);
        }
    }
    if rows.len() > 1 {
        table(&rows);
    }
    if status.pending_steps > 0 {
        outln!("{} step(s) pending: run `tend plan` to see them", status.pending_steps);
    } else if let Some(why) = &status.unchecked {
        outln!("Not all of the specs could be checked here: {why}");
    } else if status.notes.is_empty() {
        outln!("Converged: the host matches the specs.");
    } else {
        outln!("{}", no_steps_line(&status.notes));
    }
    print_notes(&status.notes);
}

fn print_agent(paint: Paint, a: &crate::reconcile::status::AgentStatus) {
    let commit = a.commit.as_deref().map(|c| format!(" at commit {}", c.get(..12).unwrap_or(c))).unwrap_or_default();
    outln!(
        "agent: pid {}, running since {}, specs from {}{commit}",
        a.pid,
        crate::support::time::format_ms(a.started_ms),
        a.source
    );
    if let (Some(at), Some(result)) = (a.last_pass_ms, &a.last_result) {
        outln!(
            "last pass: {} at {} ({} ms); {} pass(es) so far",
            result,
            crate::support::time::format_ms(at),
            a.last_pass_duration_ms.unwrap_or(0),
            a.passes
        );
    } else if let Some(result) = &a.last_result {
        outln!("last pass: {result}");
    }
    if !a.spec_errors.is_empty() {
        let commit =
            a.rejected_commit.as_deref().map(|c| format!(" (commit {})", c.get(..12).unwrap_or(c))).unwrap_or_default();
        outln!(
            "{} the newest spec set{commit} was rejected; the last good set stays in use:",
            paint.red("spec errors:")
        );
        for e in &a.spec_errors {
            outln!("  {e}");
        }
    }
    if let Some(why) = &a.mass_removal {
        outln!("{} {why}", paint.red("mass removal blocked:"));
    }
    for (engine, p) in &a.engines {
        let name = if engine == "docker" { "Docker" } else { engine.as_str() };
        let since = crate::support::time::format_ms(p.since_ms);
        outln!("{} since {since}: {}", paint.red(&format!("{name} is {}", p.state)), p.error);
    }
    for (name, until) in &a.backoff {
        outln!("{} {name}: next attempt at {}", paint.yellow("backing off:"), crate::support::time::format_ms(*until));
    }
    if a.unclean_boot {
        outln!("{} services marked holdAfterUncleanBoot are held (see the notes)", paint.yellow("unclean boot:"));
    }
    outln!();
}

fn calendar(expr: &str, iterations: usize, from: Option<&str>) -> Result<ExitCode, CliError> {
    use tend_specs::calendar;
    let from = match from {
        Some(text) => calendar::parse_time(text).map_err(|source| CliError::Calendar {
            what: "time",
            text: text.to_string(),
            source,
        })?,
        None => calendar::Timestamp::now(),
    };
    let text = calendar::describe(expr, from, iterations.max(1)).map_err(|source| CliError::Calendar {
        what: "calendar expression",
        text: expr.to_string(),
        source,
    })?;
    out!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `tend drain`: records the drain in the state directory, then has a running agent act on
/// it at once; without an agent, the next `tend apply` stops the services.
fn drain(cli: &Cli, reason: Option<String>) -> Result<ExitCode, CliError> {
    let user = crate::maintain::locks::current_user().0;
    let (drain, already) =
        state::drain(&cli.state_dir, state::Drain { reason, since_ms: crate::support::now_ms(), user })?;
    let line = drained_line(&drain);
    outln!("{}{line}", if already { "already " } else { "" });
    match runtime()?.block_on(pass_by_agent(&cli.socket, true))? {
        Some(true) => outln!("the agent stops the services now, dependents first (see `tend status`)"),
        Some(false) => return Ok(agent_elsewhere(cli)),
        None => outln!("no agent runs here: `tend apply` stops the services, dependents first"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `tend undrain`: lifts the drain; a running agent starts the services again at once.
fn undrain(cli: &Cli) -> Result<ExitCode, CliError> {
    let Some(lifted) = state::undrain(&cli.state_dir)? else {
        outln!("not drained: nothing to do");
        return Ok(ExitCode::SUCCESS);
    };
    outln!("undrained (was {})", drained_line(&lifted));
    match runtime()?.block_on(pass_by_agent(&cli.socket, false))? {
        Some(true) => outln!("the agent starts the services again now, dependencies first (see `tend status`)"),
        Some(false) => return Ok(agent_elsewhere(cli)),
        None => outln!("no agent runs here: `tend apply` starts the services again, dependencies first"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `drained since TIME by USER: REASON`.
fn drained_line(d: &state::Drain) -> String {
    let reason = d.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    format!("drained since {} by {}{reason}", crate::support::time::format_ms(d.since_ms), d.user)
}

/// Has a running agent pass now, once it sees the drain as `drained`: `None` when no agent
/// runs; `Some(false)` when the agent keeps its state elsewhere (it does not see the change).
async fn pass_by_agent(socket: &Path, drained: bool) -> Result<Option<bool>, CliError> {
    let Some(mut client) = crate::daemon::api::Client::connect(socket).await? else { return Ok(None) };
    let status = client.get("/v1/status").await?;
    if status.get("drain").is_some_and(|d| !d.is_null()) != drained {
        return Ok(Some(false));
    }
    client.post("/v1/pass").await?;
    Ok(Some(true))
}

/// The agent on the socket uses another state directory than this command did: say so.
fn agent_elsewhere(cli: &Cli) -> ExitCode {
    eoutln!(
        "{} the agent on {} does not see this change: it keeps its state in another directory than {} (give the agent's --state-dir)",
        Paint::stderr().red("error:"),
        cli.socket.display(),
        cli.state_dir.display()
    );
    ExitCode::from(1)
}

fn release(state_dir: &Path, name: &str) -> Result<ExitCode, CliError> {
    let released = state::release(state_dir, name, crate::support::now_ms())?;
    if released.is_empty() {
        return Err(CliError::NotHeld(name.to_string()));
    }
    for k in &released {
        outln!("released {k}: the next apply starts it again");
    }
    Ok(ExitCode::SUCCESS)
}

/// The spec set a command acts on: `--specs`, else the running agent's, else the default.
fn specs_for(cli: &Cli, specs: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(p) = specs {
        return Ok(p.to_path_buf());
    }
    let agent = runtime()?.block_on(from_agent::<Status>(&cli.socket, "/v1/status"));
    match agent {
        Ok(Some(status)) => {
            if let Some(dir) = status.agent.map(|a| a.specs).filter(|d| !d.is_empty()) {
                return Ok(PathBuf::from(dir));
            }
        }
        Ok(None) => {}
        // No access to the agent (not root, not in its group): the default set still works.
        Err(e) => eoutln!("{} {}: using {DEFAULT_SPECS}", Paint::stderr().yellow("note:"), crate::support::chain(&e)),
    }
    Ok(PathBuf::from(DEFAULT_SPECS))
}

/// `tend maintain`.
#[allow(clippy::too_many_arguments)]
fn maintain(
    cli: &Cli,
    targets: &[String],
    selectors: &[String],
    reason: Option<String>,
    window: Option<tend_specs::quantity::Duration>,
    wait: bool,
    specs: Option<&Path>,
    command: &[String],
) -> Result<ExitCode, CliError> {
    let path = specs_for(cli, specs)?;
    let desired = load(cli, &path)?;
    let keys = crate::maintain::resolve(&desired, targets, selectors)?;
    let (user, uid) = crate::maintain::locks::current_user();
    let since_ms = crate::support::now_ms();
    let until_ms = window.map(|w| since_ms + w.get().as_millis() as u64);
    let holder = crate::maintain::locks::Holder { user, uid, pid: std::process::id(), reason, since_ms, until_ms };
    let dir = crate::maintain::locks::LockDir::new(&cli.lock_dir);
    if wait {
        eoutln!("waiting for {} …", keys.join(", "));
    }
    let held = dir.take_exclusive(&keys, &holder, wait).map_err(crate::maintain::MaintainError::from)?;
    // What the operator stops in the window is not a crash: not held for triage after it.
    crate::maintain::mark_stopped_on_purpose(&cli.state_dir, &keys)?;
    let paint = Paint::stderr();
    eoutln!(
        "{} {} ({}): tend leaves {} alone until this {} exits",
        paint.green("holding"),
        held.keys().join(", "),
        holder.describe(),
        if held.keys().len() == 1 { "it" } else { "them" },
        if command.is_empty() { "shell" } else { "command" },
    );
    let rt = runtime()?;
    let status = rt.block_on(crate::maintain::run_window(
        held,
        command,
        window.map(|w| w.get()),
        std::time::Duration::from_secs(10),
    ))?;
    eoutln!("{} {}: the agent reconciles them on its next pass", paint.green("released"), keys.join(", "));
    // The agent looks at once (best effort: it also notices the release by itself).
    rt.block_on(async {
        if let Ok(Some(mut client)) = crate::daemon::api::Client::connect(&cli.socket).await {
            let _ = client.post("/v1/pass").await;
        }
    });
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(128 + 15),
    })
}

/// `tend locks`.
fn locks(cli: &Cli, output: Output) -> Result<ExitCode, CliError> {
    let held =
        crate::maintain::locks::LockDir::new(&cli.lock_dir).list().map_err(crate::maintain::MaintainError::from)?;
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> =
                held.iter().map(|(k, h)| serde_json::json!({"target": k, "holder": h})).collect();
            print_json(&v)?;
        }
        Output::Text => {
            if held.is_empty() {
                outln!("No target is held for maintenance.");
            } else {
                let mut rows = vec![vec![
                    "TARGET".into(),
                    "BY".into(),
                    "SINCE".into(),
                    "UNTIL".into(),
                    "PID".into(),
                    "REASON".into(),
                ]];
                for (k, h) in &held {
                    rows.push(vec![
                        k.clone(),
                        h.user.clone(),
                        crate::support::time::format_ms(h.since_ms),
                        h.until_ms.map(crate::support::time::format_ms).unwrap_or_else(|| "-".into()),
                        h.pid.to_string(),
                        h.reason.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                table(&rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tend backup`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Run the Backup now (quiesce, archive, start again, copies, retention).
    Run {
        /// The Backup.
        name: String,
        /// Pin the new archive: retention keeps it (here and in the copies) until
        /// `tend backup unpin` — a snapshot before an upgrade, say.
        #[arg(long)]
        keep: bool,
        /// Why it is kept (with --keep; shown by `tend backup list`).
        #[arg(long, requires = "keep")]
        reason: Option<String>,
        /// The spec set (default: the running agent's, else /etc/tend/specs).
        #[arg(long)]
        specs: Option<PathBuf>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// List the Backup's archives: age, size, checksum, state.
    List {
        /// The Backup.
        name: String,
        /// The spec set.
        #[arg(long)]
        specs: Option<PathBuf>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Run the Backup's restore drill now: the newest archive restored into a scratch
    /// directory (paths) or a scratch container (exec), its check run, the scratch removed.
    Drill {
        /// The Backup.
        name: String,
        /// The spec set.
        #[arg(long)]
        specs: Option<PathBuf>,
    },
    /// Pin an archive: retention keeps it, here and in every copy, until it is unpinned.
    Pin {
        /// The Backup.
        name: String,
        /// The archive: its path or its file name.
        archive: String,
        /// Why (shown by `tend backup list`).
        #[arg(long)]
        reason: Option<String>,
        /// The spec set.
        #[arg(long)]
        specs: Option<PathBuf>,
    },
    /// Unpin an archive: the next run's retention may remove it.
    Unpin {
        /// The Backup.
        name: String,
        /// The archive: its path or its file name.
        archive: String,
        /// The spec set.
        #[arg(long)]
        specs: Option<PathBuf>,
    },
    /// Verify archives: checksum against the manifest and a full read.
    Verify {
        /// The Backup (all its archives), or an archive file.
        target: String,
        /// The spec set.
        #[arg(long)]
        specs: Option<PathBuf>,
    },
}

fn backup_ctx(cli: &Cli) -> crate::backup::run::Context {
    crate::backup::run::Context {
        state_dir: cli.state_dir.clone(),
        locks: crate::maintain::locks::LockDir::new(&cli.lock_dir),
        scope: cli.scope.clone(),
        progress: None,
        keep: None,
    }
}

/// Bytes, rate and ETA of a backup or restore on a terminal (stderr), until dropped.
struct ProgressLine {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shower: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    /// Counts through `ctx.progress` and shows the count against `total()` when stderr is a
    /// terminal; does nothing otherwise.
    fn start(ctx: &mut crate::backup::run::Context, total: impl FnOnce() -> Option<u64>) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shower = std::io::stderr().is_terminal().then(|| {
            let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            ctx.progress = Some(counter.clone());
            show_progress(counter, total(), done.clone())
        });
        ProgressLine { done, shower }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.shower.take() {
            let _ = h.join();
        }
    }
}

/// Shows bytes, rate and ETA on a terminal (stderr) while `done` is false.
fn show_progress(
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    total: Option<u64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let n = counter.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = n as f64 / secs;
            let mut line = format!("\r{:.1} MiB", mib(n));
            if let Some(t) = total.filter(|t| *t > 0) {
                line.push_str(&format!(" of {:.1} MiB", mib(t)));
                if rate > 0.0 && t > n {
                    line.push_str(&format!(", ETA {:.0}s", (t - n) as f64 / rate));
                }
            }
            line.push_str(&format!(", {:.1} MiB/s   ", mib(rate as u64)));
            eout!("{line}");
        }
        eoutln!();
    })
}

fn the_backup<'a>(desired: &'a Desired, name: &str) -> Result<&'a tend_specs::desired::Backup, CliError> {
    desired
        .backups
        .get(name)
        .ok_or_else(|| CliError::Backup(crate::backup::run::BackupError::Unknown(name.to_string())))
}

/// `tend backup …`.
fn backup(cli: &Cli, command: &BackupCommand) -> Result<ExitCode, CliError> {
    match command {
        BackupCommand::Run { name, keep, reason, specs, output } => {
            let keep = keep.then(|| reason.clone().unwrap_or_else(|| "kept with tend backup run --keep".into()));
            backup_run(cli, name, keep, specs.as_deref(), *output)
        }
        BackupCommand::Pin { name, archive, reason, specs } => {
            let desired = load(cli, &specs_for(cli, specs.as_deref())?)?;
            let path = crate::backup::run::pin_archive(the_backup(&desired, name)?, archive, reason.clone())?;
            outln!(
                "{} {}: retention keeps it until `tend backup unpin {name} {archive}`",
                Paint::stdout().green("pinned"),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Unpin { name, archive, specs } => {
            let desired = load(cli, &specs_for(cli, specs.as_deref())?)?;
            let (path, was) = crate::backup::run::unpin_archive(the_backup(&desired, name)?, archive)?;
            match was {
                true => outln!("unpinned {}: the next run's retention may remove it", path.display()),
                false => outln!("{} was not pinned", path.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::List { name, specs, output } => {
            let desired = load(cli, &specs_for(cli, specs.as_deref())?)?;
            let b = the_backup(&desired, name)?;
            let entries = crate::backup::run::archives(b)?;
            let now = tend_specs::calendar::Timestamp::now();
            let rows: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| {
                    let age_s = (now.as_second() - e.time().as_second()).max(0);
                    let pin = crate::backup::catalog::is_pinned(&e.path).then(|| {
                        let pin = crate::backup::catalog::read_pin(&e.path);
                        pin.and_then(|p| p.reason).unwrap_or_else(|| "pinned".into())
                    });
                    serde_json::json!({
                        "pinned": pin,
                        "archive": e.path,
                        "ageSeconds": age_s,
                        "bytes": e.size,
                        "sha256": e.manifest.as_ref().map(|m| m.sha256.clone()),
                        "state": match &e.state {
                            crate::backup::catalog::EntryState::Complete => "complete".to_string(),
                            crate::backup::catalog::EntryState::MissingManifest => "incomplete (no manifest)".to_string(),
                            crate::backup::catalog::EntryState::BadManifest { problem } => format!("bad manifest: {problem}"),
                            crate::backup::catalog::EntryState::Partial => "leftover of an interrupted run".to_string(),
                        },
                    })
                })
                .collect();
            match output {
                Output::Json => print_json(&rows)?,
                Output::Text => {
                    let mut table_rows =
                        vec![vec!["ARCHIVE".into(), "AGE".into(), "SIZE".into(), "SHA256".into(), "STATE".into()]];
                    for r in &rows {
                        let age = std::time::Duration::from_secs(r["ageSeconds"].as_u64().unwrap_or(0));
                        table_rows.push(vec![
                            r["archive"].as_str().unwrap_or_default().to_string(),
                            crate::support::time::format_duration(age),
                            r["bytes"].to_string(),
                            r["sha256"]
                                .as_str()
                                .map(|s| s[..12.min(s.len())].to_string())
                                .unwrap_or_else(|| "-".into()),
                            match r["pinned"].as_str() {
                                Some(why) => format!("{}, pinned ({why})", r["state"].as_str().unwrap_or_default()),
                                None => r["state"].as_str().unwrap_or_default().to_string(),
                            },
                        ]);
                    }
                    if rows.is_empty() {
                        outln!("No archives of {name} yet.");
                    } else {
                        table(&table_rows);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Drill { name, specs } => backup_drill(cli, name, specs.as_deref()),
        BackupCommand::Verify { target, specs } => {
            let as_file = Path::new(target);
            let results = if as_file.is_file() {
                crate::backup::run::verify_all(None, Some(as_file))
            } else {
                let desired = load(cli, &specs_for(cli, specs.as_deref())?)?;
                crate::backup::run::verify_all(Some(the_backup(&desired, target)?), None)
            };
            let paint = Paint::stdout();
            let mut bad = 0;
            for (path, r) in &results {
                match r {
                    Ok(entries) => outln!("{} {} ({entries} entries)", paint.green("ok"), path.display()),
                    Err(e) => {
                        bad += 1;
                        outln!("{} {}: {}", paint.red("BAD"), path.display(), crate::support::chain(e));
                    }
                }
            }
            if results.is_empty() {
                outln!("No archives to verify.");
            }
            Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// `tend backup run NAME`: the run, its report, and a line in the history of the Backup's
/// Timer when it has one (so its last run is this one).
fn backup_run(
    cli: &Cli,
    name: &str,
    keep: Option<String>,
    specs: Option<&Path>,
    output: Output,
) -> Result<ExitCode, CliError> {
    let desired = load_with_backups(cli, &specs_for(cli, specs)?)?;
    let b = the_backup(&desired, name)?;
    let started_ms = crate::support::now_ms();
    let rt = runtime()?;
    let mut ctx = backup_ctx(cli);
    let paths: Vec<PathBuf> = b.spec.paths().iter().map(PathBuf::from).collect();
    let progress = ProgressLine::start(&mut ctx, || {
        (!paths.is_empty()).then(|| crate::backup::archive::estimate_size(&paths).ok()).flatten()
    });
    ctx.keep = keep;
    let result = rt.block_on(async {
        let (engines, _) = connect(&desired, cli.timeouts()).await?;
        crate::backup::run::run(&engines, &desired, name, &ctx).await.map_err(CliError::Backup)
    });
    drop(progress);
    let copy_failed = |r: &crate::backup::run::RunReport| r.warnings.iter().find(|w| w.starts_with("copy")).cloned();
    let outcome = match &result {
        Ok(r) => copy_failed(r).map_or(Ok(()), Err),
        Err(e) => Err(crate::support::chain(e)),
    };
    record_timer_run(cli, &desired, &b.unit_name(), started_ms, outcome);
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            crate::backup::run::record_failure(&cli.state_dir, name, &crate::support::chain(&e));
            return Err(e);
        }
    };
    match output {
        Output::Json => print_json(&report)?,
        Output::Text => {
            outln!(
                "{} {} ({} bytes, sha256 {}, {} ms)",
                Paint::stdout().green("archived"),
                report.archive.display(),
                report.bytes,
                &report.sha256[..12.min(report.sha256.len())],
                report.duration_ms
            );
            for c in &report.copies {
                outln!("copied to {c} (checksum verified)");
            }
            if let Some(why) = &ctx.keep {
                outln!("pinned: retention keeps it until `tend backup unpin {name}` ({why})");
            }
            for p in &report.pruned {
                outln!("removed by retention: {}", p.display());
            }
            for w in &report.warnings {
                outln!("{} {w}", Paint::stdout().yellow("warning:"));
            }
        }
    }
    Ok(if copy_failed(&report).is_some() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `tend backup drill NAME`, recorded in the history of the drill's Timer when it has one.
fn backup_drill(cli: &Cli, name: &str, specs: Option<&Path>) -> Result<ExitCode, CliError> {
    let desired = load_with_backups(cli, &specs_for(cli, specs)?)?;
    let b = the_backup(&desired, name)?;
    let started_ms = crate::support::now_ms();
    let result = runtime()?.block_on(async {
        let (engines, _) = connect(&desired, cli.timeouts()).await?;
        crate::backup::run::drill(&engines, &desired, b, &backup_ctx(cli)).await.map_err(CliError::Backup)
    });
    let outcome = result.as_ref().map(|_| ()).map_err(|e| crate::support::chain(e));
    record_timer_run(cli, &desired, &b.drill_unit_name(), started_ms, outcome);
    let report = result?;
    let entries = report.entries.map(|n| format!(", {n} entries")).unwrap_or_default();
    outln!(
        "{} {name}: {} restored into {}{entries} and checked in {} ms (scratch removed)",
        Paint::stdout().green("drill passed"),
        report.archive.display(),
        report.restored_into,
        report.duration_ms
    );
    Ok(ExitCode::SUCCESS)
}

/// Records a run made by hand in the history of Timer `timer`, when the specs have it; a
/// failure to record is a warning (the run itself happened).
fn record_timer_run(cli: &Cli, desired: &Desired, timer: &str, started_ms: u64, outcome: Result<(), String>) {
    let Some(t) = desired.timers.get(timer) else { return };
    if let Err(e) = crate::jobs::record_outside(&cli.state_dir, t, started_ms, outcome) {
        eoutln!(
            "{} recording the run in {timer}'s history: {}",
            Paint::stderr().yellow("warning:"),
            crate::support::chain(&e)
        );
    }
}

/// Which archive `tend restore` reads and where it puts it.
#[derive(Debug, Clone, Copy)]
struct RestoreTarget<'a> {
    /// The archive (default: the newest complete one).
    from: Option<&'a Path>,
    /// A new directory instead of the live paths.
    to: Option<&'a Path>,
    /// An archive without a manifest is restored on purpose.
    without_manifest: bool,
}

/// `tend restore`: everything that can be checked without stopping anything is checked
/// before the plan is shown; a refusal says nothing was changed.
fn restore(
    cli: &Cli,
    name: &str,
    target: RestoreTarget<'_>,
    set: &[String],
    yes: bool,
    specs: Option<&Path>,
) -> Result<ExitCode, CliError> {
    use crate::backup::run::BackupError;
    let desired = load(cli, &specs_for(cli, specs)?)?;
    let b = the_backup(&desired, name)?;
    let refused =
        |e: BackupError| CliError::Backup(BackupError::Unchanged { backup: name.to_string(), source: Box::new(e) });
    let vars: Vec<(String, String)> = set
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| refused(BackupError::Refused(format!("--set {kv}: write VAR=VALUE"))))
        })
        .collect::<Result<_, _>>()?;
    let RestoreTarget { from, to, without_manifest } = target;
    let plan = crate::backup::run::plan_restore(b, from, to, &vars, without_manifest).map_err(refused)?;
    crate::backup::run::check_restore(&plan).map_err(refused)?;
    let age = match plan.age_ms {
        Some(ms) => format!("made {} ago", crate::support::time::format_duration(std::time::Duration::from_millis(ms))),
        None => "no manifest: when it was made is unknown".to_string(),
    };
    outln!("Restore {name} from {} ({age})", plan.archive.display());
    if !plan.stop.is_empty() {
        outln!("  stop first (and start after): {}", plan.stop.join(", "));
    }
    for (from, aside) in &plan.move_aside {
        outln!("  move aside (kept, not deleted): {} → {}", from.display(), aside.display());
    }
    outln!("  restore into: {}", plan.into);
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(refused(BackupError::Refused(
                "not confirmed: run it on a terminal to answer, or pass --yes".into(),
            )));
        }
        eout!("Go ahead? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            outln!("Nothing was changed.");
            return Ok(ExitCode::from(1));
        }
    }
    let mut ctx = backup_ctx(cli);
    let progress = ProgressLine::start(&mut ctx, || Some(crate::backup::run::restore_read_bytes(b, &plan)));
    let result = runtime()?.block_on(async {
        let (engines, _) = connect(&desired, cli.timeouts()).await?;
        crate::backup::run::restore(&engines, &desired, b, &plan, to, &vars, &ctx).await.map_err(CliError::Backup)
    });
    drop(progress);
    result?;
    outln!("{} {name}", Paint::stdout().green("restored"));
    Ok(ExitCode::SUCCESS)
}

/// `tend job`: a Timer's job run now, its runs, the Timers.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Run a Timer's job now, even when `enabled: false`.
    ///
    /// The run follows the Timer's concurrency and timeout and is recorded in the history.
    /// Exit: the job's status (0 ok); 75 skipped (concurrency `forbid` and a run in
    /// progress); 124 timed out; 1 tend's own error.
    Run {
        /// The Timer.
        name: String,
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
        /// What started the run (recorded in the history).
        #[arg(long, value_enum, default_value_t)]
        trigger: crate::jobs::Trigger,
    },
    /// Show a Timer's recorded runs, newest first.
    ///
    /// Reads the state directory only: no specs, no engine.
    History {
        /// The Timer.
        name: String,
        /// Show at most this many runs.
        #[arg(long)]
        limit: Option<usize>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Run scheduled Timers from tend's own scheduler, in the foreground, for hosts where
    /// systemd is not PID 1 (where it is, systemd's timers do this). Persistent Timers catch
    /// up a run missed since their last recorded run. Stops on SIGINT/SIGTERM.
    Schedule {
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
        /// Stop after this long (e.g. `1h`); runs until stopped when not given.
        #[arg(long = "for")]
        duration: Option<tend_specs::quantity::Duration>,
    },
    /// List every Timer: schedule, whether it is enabled, next elapse, last run.
    List {
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs a `tend job` command. Unlike `plan` and `apply`, it accepts any valid spec set: a
/// job needs Docker (docker jobs) or nothing (host jobs), not the systemd backend.
fn job(cli: &Cli, command: &JobCommand) -> Result<ExitCode, CliError> {
    match command {
        JobCommand::Schedule { path, duration } => {
            let desired = load_with_backups(cli, path)?;
            let timers: Vec<tend_specs::Timer> =
                desired.timers.values().filter(|t| crate::jobs::scheduler::scheduled(t)).cloned().collect();
            if timers.is_empty() {
                outln!("No scheduled Timers in {}: nothing to do.", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            if crate::engine::systemd::booted().is_ok() {
                eoutln!(
                    "{} systemd is PID 1 here: its timers already run these jobs once `tend apply` wrote them; running both would run each job twice",
                    Paint::stderr().yellow("warning:")
                );
            }
            let options = options(cli, path, 1);
            let config = crate::jobs::scheduler::Config {
                tend_bin: options.units.tend_bin.clone(),
                scope: cli.scope.clone(),
                state_dir: options.units.state_dir.clone(),
                specs: options.specs.clone(),
                timeouts: cli.timeouts(),
            };
            outln!(
                "Scheduling {} Timer(s): {}",
                timers.len(),
                timers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            );
            runtime()?.block_on(async {
                let stop = tokio_util::sync::CancellationToken::new();
                let stopper = stop.clone();
                let limit = duration.map(|d| d.get());
                tokio::spawn(async move {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                    let sigterm = async {
                        match term.as_mut() {
                            Some(t) => {
                                t.recv().await;
                            }
                            None => std::future::pending().await,
                        }
                    };
                    let until = async {
                        match limit {
                            Some(d) => tokio::time::sleep(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        () = sigterm => {}
                        () = until => {}
                    }
                    stopper.cancel();
                });
                crate::jobs::scheduler::schedule(config, timers, stop).await;
            });
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Run { name, path, trigger } => {
            let desired = load_with_backups(cli, path)?;
            let timer = match crate::jobs::find_timer(&desired, name) {
                Ok(timer) => timer,
                Err(e) => return Ok(job_error(&e)),
            };
            let options = crate::jobs::RunOptions {
                state_dir: cli.state_dir.clone(),
                scope: cli.scope.clone(),
                trigger: *trigger,
            };
            let rt = runtime()?;
            // Jobs never connect themselves: a docker job is handed Docker (or why not).
            let docker = match timer.spec.job.runtime {
                tend_specs::timer::JobRuntime::Host => crate::jobs::Docker::NotNeeded,
                tend_specs::timer::JobRuntime::Docker => match rt.block_on(DockerEngine::connect(cli.timeouts())) {
                    Ok(engine) => crate::jobs::Docker::Connected(Arc::new(engine)),
                    Err(e) => crate::jobs::Docker::Failed(e),
                },
            };
            match rt.block_on(crate::jobs::run(&options, timer, docker)) {
                Ok(outcome) => {
                    print_job_run(&timer.name, &outcome.record);
                    Ok(ExitCode::from(outcome.record.exit_status()))
                }
                Err(e) => Ok(job_error(&e)),
            }
        }
        JobCommand::History { name, limit, output } => {
            let records = match crate::jobs::history(&cli.state_dir, name, *limit) {
                Ok(records) => records,
                Err(e) => return Ok(job_error(&e)),
            };
            match output {
                Output::Json => print_json(&records)?,
                Output::Text if records.is_empty() => {
                    outln!("No runs of `{name}` are recorded in {}.", cli.state_dir.join("jobs").display());
                    let known = crate::jobs::recorded_timers(&cli.state_dir);
                    if let Some(near) = crate::jobs::near_name(name, &known).filter(|n| *n != name) {
                        outln!("Did you mean `{near}`?");
                    }
                }
                Output::Text => print_job_history(&records),
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::List { path, output } => {
            let desired = load_with_backups(cli, path)?;
            let entries = crate::jobs::list(&cli.state_dir, &desired, tend_specs::calendar::Timestamp::now());
            match output {
                Output::Json => print_json(&entries)?,
                Output::Text => print_job_list(&entries),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a job error with its causes, as `main` prints the others; exit status 1.
fn job_error(e: &crate::jobs::JobError) -> ExitCode {
    eoutln!("{} {}", Paint::stderr().red("error:"), crate::jobs::error_chain(e));
    ExitCode::from(1)
}

/// One line on the run (stdout when it succeeded, stderr otherwise), then its log.
fn print_job_run(name: &str, r: &crate::jobs::Record) {
    use crate::jobs::RunResult;
    let mut line = match r.result {
        RunResult::Skipped => format!("{name}: skipped"),
        RunResult::Timeout => {
            format!("{name}: run {} timed out after {}", r.run, crate::jobs::format_duration(r.duration_ms()))
        }
        result => format!("{name}: run {} {result} after {}", r.run, crate::jobs::format_duration(r.duration_ms())),
    };
    if let Some(code) = r.exit_code {
        line.push_str(&format!(" (exit {code})"));
    }
    if let Some(detail) = &r.detail {
        line.push_str(&format!(": {detail}"));
    }
    if let Some(log) = &r.log {
        line.push_str(&format!("\n  log: {}", log.display()));
    }
    match r.result {
        RunResult::Ok => outln!("{line}"),
        RunResult::Error => eoutln!("{} {line}", Paint::stderr().red("error:")),
        _ => eoutln!("{line}"),
    }
}

fn job_result(paint: Paint, r: &crate::jobs::Record) -> String {
    use crate::jobs::RunResult;
    let text = r.result.to_string();
    match r.result {
        RunResult::Ok => paint.green(&text),
        RunResult::Skipped => paint.yellow(&text),
        RunResult::Failed | RunResult::Timeout | RunResult::Error => paint.red(&text),
    }
}

fn print_job_history(records: &[crate::jobs::Record]) {
    let paint = Paint::stdout();
    let notes = records.iter().any(|r| r.detail.is_some());
    let mut header: Vec<String> = ["START", "DURATION", "TRIGGER", "RESULT", "EXIT", "LOG"].map(String::from).into();
    if notes {
        header.push("NOTE".into());
    }
    let mut rows = vec![header];
    for r in records {
        let mut row = vec![
            crate::support::time::format_ms(r.start_ms),
            crate::jobs::format_duration(r.duration_ms()),
            r.trigger.to_string(),
            job_result(paint, r),
            r.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
            r.log.as_ref().map_or_else(|| "-".into(), |l| l.display().to_string()),
        ];
        if notes {
            row.push(r.detail.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    table(&rows);
}

fn print_job_list(entries: &[crate::jobs::TimerEntry]) {
    let paint = Paint::stdout();
    if entries.is_empty() {
        outln!("No Timers in the specs.");
        return;
    }
    let mut rows =
        vec![["TIMER", "SCHEDULE", "ENABLED", "NEXT", "LAST RUN", "RESULT"].map(String::from).into_iter().collect()];
    for e in entries {
        let next = match (&e.next, &e.schedule, e.enabled) {
            (Some(next), _, _) => next.clone(),
            (None, None, _) | (None, Some(_), false) => "on demand".into(),
            (None, Some(_), true) => "never".into(),
        };
        let (last, result) = match &e.last {
            Some(r) => {
                let code = r.exit_code.filter(|c| *c != 0).map(|c| format!(" ({c})")).unwrap_or_default();
                (crate::support::time::format_ms(r.start_ms), format!("{}{code}", job_result(paint, r)))
            }
            None => ("never".into(), "-".into()),
        };
        rows.push(vec![
            e.name.clone(),
            e.schedule.clone().unwrap_or_else(|| "-".into()),
            if e.enabled { "yes".into() } else { "no".into() },
            next,
            last,
            result,
        ]);
    }
    table(&rows);
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
