//! What every command needs: logging, the spec set (loaded with this host's salt, scheduled
//! Backups added), the engines it uses, the options of a pass, and a running agent's answer.

use super::*;

pub(super) fn init_logging(format: LogFormat, default_level: &str) {
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
    // The journal when asked for and reachable; text otherwise.
    let journal = matches!(format, LogFormat::Journal).then(tracing_journald::layer).and_then(Result::ok);
    let _ = match (journal, format) {
        (Some(journal), _) => {
            registry.with(journal.with_syslog_identifier("tend".into()).with_filter(own_detail_only())).try_init()
        }
        (None, LogFormat::Json) => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(own_detail_only()))
            .try_init(),
        (None, _) => registry
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
pub(super) fn own_detail_only() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    Targets::new().with_default(LevelFilter::INFO).with_target("tend", LevelFilter::TRACE)
}

/// A running agent's answer to `GET path`; `None` when no agent runs.
pub(super) async fn from_agent<T: serde::de::DeserializeOwned>(
    socket: &Path,
    path: &str,
) -> Result<Option<T>, CliError> {
    let Some(mut client) = crate::daemon::api::Client::connect(socket).await? else { return Ok(None) };
    let value = client.get(path).await?;
    serde_json::from_value(value).map(Some).map_err(CliError::AgentReply)
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(CliError::Runtime)
}

/// Loads specs, printing every problem. The digests of secrets in hashes are keyed by the
/// host's salt ([`crate::support::redact::host_salt`]), made by the first command that changes the
/// host; the read-only ones (`plan`, `status`, `job list`) never make it.
pub(super) fn load(cli: &Cli, path: &Path) -> Result<Desired, CliError> {
    let read_only = matches!(
        &cli.command,
        Command::Plan { .. } | Command::Status { .. } | Command::Job { command: JobCommand::List { .. } }
    );
    let salt = crate::support::redact::host_salt(&cli.state_dir, !read_only)?;
    load_with(path, &tend_specs::LoadOptions { secret_salt: &salt })
}

/// Loads specs with `options`, printing every problem.
pub(super) fn load_with(path: &Path, options: &tend_specs::LoadOptions<'_>) -> Result<Desired, CliError> {
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

/// Loads specs as [`load`], prepared for this host (scheduled Backups become Timers).
pub(super) fn load_with_backups(cli: &Cli, path: &Path) -> Result<Desired, CliError> {
    let mut desired = load(cli, path)?;
    cli.host().prepare(&mut desired, &absolute(path));
    Ok(desired)
}

/// This binary: Timers' units, hooks and scheduled backups run it (`tend job run`, …).
pub(super) fn tend_bin() -> PathBuf {
    std::env::current_exe().and_then(|p| p.canonicalize()).unwrap_or_else(|_| PathBuf::from("/usr/local/bin/tend"))
}

/// The options of a pass from the command line.
pub(super) fn options(cli: &Cli, specs: &Path, parallel: usize) -> Options {
    Options::new(cli.host(), absolute(specs), parallel, tokio_util::sync::CancellationToken::new())
}

/// Connects to the engines the specs need. Docker is required when the specs hold docker
/// services (and used when it answers, so containers of removed specs are removed). systemd
/// is used when it runs as PID 1; when the specs hold units and it does not, the second value
/// says so: the rest is still planned and applied, and the command fails.
pub(super) async fn connect(
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

/// The spec set a command acts on: `--specs`, else the running agent's, else the default.
pub(super) fn specs_for(cli: &Cli, specs: Option<&Path>) -> Result<PathBuf, CliError> {
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
