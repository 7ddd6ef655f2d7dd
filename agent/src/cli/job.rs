//! `tend job run|history|list|schedule`: Timers' jobs on the command line.

use super::*;

/// `tend job`: a Timer's job run now, its runs, the Timers.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Run a Timer's job now, even when `enabled: false`.
    ///
    /// The run follows the Timer's concurrency and timeout and is recorded in the history.
    /// A `runOn: leader` Timer's run, on a node in a cluster, holds the cluster's run key
    /// while it runs and does not start while a run elsewhere holds it.
    /// Exit: the job's status (0 ok); 75 skipped (concurrency `forbid` and a run in
    /// progress); 76 skipped (a run elsewhere in the cluster holds the run key); 124 timed
    /// out; 1 tend's own error.
    Run {
        /// The Timer.
        name: String,
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
        /// What started the run (recorded in the history).
        #[arg(long, value_enum, default_value_t)]
        trigger: crate::jobs::Trigger,
        /// The agent's configuration file, read for its `cluster:` block when the Timer is
        /// `runOn: leader` (default: $TEND_AGENT_CONFIG, else /etc/tend/agent.yaml when it
        /// exists).
        #[arg(long, env = agent::AGENT_CONFIG_ENV)]
        config: Option<PathBuf>,
    },
    /// Show a Timer's recorded runs, newest first.
    ///
    /// Reads the state directory (no specs, no engine) and, on a node in a cluster, the
    /// cluster's history of the Timer in etcd: the runs of `runOn: leader` Timers on every
    /// node, marked by node.
    History {
        /// The Timer.
        name: String,
        /// Show at most this many runs.
        #[arg(long)]
        limit: Option<usize>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
        /// The agent's configuration file, read for its `cluster:` block (default:
        /// $TEND_AGENT_CONFIG, else /etc/tend/agent.yaml when it exists).
        #[arg(long, env = agent::AGENT_CONFIG_ENV)]
        config: Option<PathBuf>,
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
pub(super) fn job(cli: &Cli, command: &JobCommand) -> Result<ExitCode, CliError> {
    match command {
        JobCommand::Schedule { path, duration } => job_schedule(cli, path, *duration),
        JobCommand::Run { name, path, trigger, config } => job_run(cli, name, path, *trigger, config.as_deref()),
        JobCommand::History { name, limit, output, config } => {
            job_history(cli, name, *limit, *output, config.as_deref())
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

/// `tend job schedule`: runs the scheduled Timers here until SIGTERM, Ctrl-C or `duration`.
fn job_schedule(
    cli: &Cli,
    path: &Path,
    duration: Option<tend_specs::quantity::Duration>,
) -> Result<ExitCode, CliError> {
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
        tend_bin: options.host.tend_bin.clone(),
        scope: cli.scope.clone(),
        state_dir: options.host.state_dir.clone(),
        specs: options.specs.clone(),
        timeouts: cli.timeouts(),
        agent_config: None,
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

/// `tend job run`: the Timer's job now, with the cluster's run key for a leader-only Timer.
fn job_run(
    cli: &Cli,
    name: &str,
    path: &Path,
    trigger: crate::jobs::Trigger,
    config: Option<&Path>,
) -> Result<ExitCode, CliError> {
    let desired = load_with_backups(cli, path)?;
    let timer = match crate::jobs::find_timer(&desired, name) {
        Ok(timer) => timer,
        Err(e) => return Ok(job_error(&e)),
    };
    let options = crate::jobs::RunOptions { state_dir: cli.state_dir.clone(), scope: cli.scope.clone(), trigger };
    // Only a leader-only Timer's run needs the cluster; any other runs as on its own.
    let settings = match timer.spec.run_on {
        tend_specs::timer::RunOn::Leader => node_cluster(config)?,
        tend_specs::timer::RunOn::Node => None,
    };
    let rt = runtime()?;
    let cluster = match settings {
        None => crate::jobs::Cluster::Outside,
        Some(settings) => {
            let node = settings.identity.node.clone();
            match rt.block_on(run_once(settings)) {
                Ok(joined) => crate::jobs::Cluster::Joined(joined),
                Err(error) => crate::jobs::Cluster::Failed { node, error },
            }
        }
    };
    // Jobs never connect themselves: a docker job is handed Docker (or why not).
    let docker = match timer.spec.job.runtime {
        tend_specs::timer::JobRuntime::Host => crate::jobs::Docker::NotNeeded,
        tend_specs::timer::JobRuntime::Docker => match rt.block_on(DockerEngine::connect(cli.timeouts())) {
            Ok(engine) => crate::jobs::Docker::Connected(Arc::new(engine)),
            Err(e) => crate::jobs::Docker::Failed(e),
        },
    };
    match rt.block_on(crate::jobs::run(&options, timer, docker, cluster)) {
        Ok(outcome) => {
            print_job_run(&timer.name, &outcome.record);
            Ok(ExitCode::from(outcome.record.exit_status()))
        }
        Err(e) => Ok(job_error(&e)),
    }
}

/// `tend job history`: this node's runs, merged with the cluster's history when the node is
/// in a cluster.
fn job_history(
    cli: &Cli,
    name: &str,
    limit: Option<usize>,
    output: Output,
    config: Option<&Path>,
) -> Result<ExitCode, CliError> {
    let mut records = match crate::jobs::history(&cli.state_dir, name, None) {
        Ok(records) => records,
        Err(e) => return Ok(job_error(&e)),
    };
    if let Some(settings) = node_cluster(config)? {
        let read = async {
            let joined = run_once(settings).await.map_err(crate::jobs::JobError::from)?;
            crate::jobs::cluster_history(&joined, name).await
        };
        match runtime()?.block_on(read) {
            Ok(shared) => records = crate::jobs::merge_history(records, shared),
            Err(e) => eoutln!(
                "{} the cluster's history of `{name}` could not be read, so only this node's runs are shown: {}",
                Paint::stderr().yellow("warning:"),
                crate::support::chain(&e)
            ),
        }
    }
    records.truncate(limit.unwrap_or(usize::MAX));
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

/// This node's part in runs that happen once per cluster: the cluster's store (connected
/// lazily: only authentication needs an answer now), keys, this node's name, the lease TTL.
async fn run_once(
    settings: crate::daemon::cluster::ClusterSettings,
) -> Result<crate::cluster::runonce::RunOnce<crate::engine::etcd::EtcdStore>, crate::engine::etcd::EtcdError> {
    let store = crate::engine::etcd::EtcdStore::connect(&settings.etcd).await?;
    Ok(crate::cluster::runonce::RunOnce {
        store: Arc::new(store),
        keys: crate::cluster::keys::Keys::new(&settings.identity.cluster),
        node: settings.identity.node,
        ttl: settings.identity.ttl,
    })
}

/// Prints a job error with its causes, as `main` prints the others; exit status 1.
pub(super) fn job_error(e: &crate::jobs::JobError) -> ExitCode {
    eoutln!("{} {}", Paint::stderr().red("error:"), crate::support::chain(e));
    ExitCode::from(1)
}

/// One line on the run (stdout when it succeeded, stderr otherwise), then its log.
pub(super) fn print_job_run(name: &str, r: &crate::jobs::Record) {
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

pub(super) fn job_result(paint: Paint, r: &crate::jobs::Record) -> String {
    use crate::jobs::RunResult;
    let text = r.result.to_string();
    match r.result {
        RunResult::Ok => paint.green(&text),
        RunResult::Skipped => paint.yellow(&text),
        RunResult::Failed | RunResult::Timeout | RunResult::Error => paint.red(&text),
    }
}

pub(super) fn print_job_history(records: &[crate::jobs::Record]) {
    let paint = Paint::stdout();
    let notes = records.iter().any(|r| r.detail.is_some());
    let nodes = records.iter().any(|r| r.node.is_some());
    let mut header: Vec<String> = ["START", "DURATION", "TRIGGER", "RESULT", "EXIT", "LOG"].map(String::from).into();
    if nodes {
        header.insert(0, "NODE".into());
    }
    if notes {
        header.push("NOTE".into());
    }
    let mut rows = vec![header];
    for r in records {
        let mut row = Vec::new();
        if nodes {
            row.push(r.node.clone().unwrap_or_else(|| "-".into()));
        }
        row.extend([
            crate::support::time::format_ms(r.start_ms),
            crate::jobs::format_duration(r.duration_ms()),
            r.trigger.to_string(),
            job_result(paint, r),
            r.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
            r.log.as_ref().map_or_else(|| "-".into(), |l| l.display().to_string()),
        ]);
        if notes {
            row.push(r.detail.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    table(&rows);
}

pub(super) fn print_job_list(entries: &[crate::jobs::TimerEntry]) {
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
