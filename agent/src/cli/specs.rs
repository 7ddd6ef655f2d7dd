//! `tend validate`, `plan`, `apply`, `status` and `calendar`: the spec set against the host.

use super::*;

/// The largest share of the managed services and Timers `tend apply` removes at once
/// without `--allow-mass-removal` (the agent's default `massRemoval.maxPercent`).
pub(super) const MAX_REMOVAL_PERCENT: u8 = 50;

/// Says so when a spec directory holds no spec at all: a wrong path, or a checkout that
/// lost its files, would otherwise read as "remove everything".
pub(super) fn warn_if_empty(desired: &Desired, path: &Path, scope: &str) {
    if desired.services.is_empty() && desired.timers.is_empty() && desired.backups.is_empty() {
        eoutln!(
            "{} {} holds no spec at all: applied, it would remove everything tend manages in scope `{scope}`",
            Paint::stderr().yellow("warning:"),
            path.display()
        );
    }
}

pub(super) fn calendar(expr: &str, iterations: usize, from: Option<&str>) -> Result<ExitCode, CliError> {
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

/// `tend validate PATH`.
pub(super) fn validate(path: &Path) -> Result<ExitCode, CliError> {
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

/// `tend plan [PATH]`: the running agent's plan, or one made here.
pub(super) fn plan(cli: &Cli, path: Option<&Path>, output: Output) -> Result<ExitCode, CliError> {
    if path.is_none()
        && let Some(plan) = runtime()?.block_on(from_agent::<Plan>(&cli.socket, "/v1/plan"))?
    {
        return show_plan(&plan, output);
    }
    let path = &path.map_or_else(|| PathBuf::from(DEFAULT_SPECS), Path::to_path_buf);
    let desired = load_with_backups(cli, path)?;
    warn_if_empty(&desired, path, &cli.scope);
    runtime()?.block_on(async {
        let options = options(cli, path, 1);
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
        show_plan(&plan, output)
    })
}

/// What `tend apply` was asked.
#[derive(Debug, Clone, Copy)]
pub(super) struct ApplyArgs<'a> {
    pub path: &'a Path,
    pub output: Output,
    pub parallel: usize,
    pub now: bool,
    pub allow_mass_removal: bool,
}

/// `tend apply PATH`.
pub(super) fn apply(cli: &Cli, args: ApplyArgs<'_>) -> Result<ExitCode, CliError> {
    let ApplyArgs { path, output, parallel, now, allow_mass_removal } = args;
    let desired = Arc::new(load_with_backups(cli, path)?);
    warn_if_empty(&desired, path, &cli.scope);
    runtime()?.block_on(async {
        let (engines, missing) = connect(&desired, cli.timeouts()).await?;
        let options = Options { ignore_windows: now, ..options(cli, path, parallel) };
        if !allow_mass_removal {
            let observed = crate::reconcile::observe::observe_all(&engines, &options, &desired).await?;
            if let Some(m) = crate::daemon::mass_removal(&observed, &desired, &cli.scope, MAX_REMOVAL_PERCENT) {
                return Err(CliError::MassRemoval { specs: path.to_path_buf(), what: m });
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

/// `tend status [PATH]`: the running agent's status, or one made here.
pub(super) fn status(cli: &Cli, path: Option<&Path>, output: Output) -> Result<ExitCode, CliError> {
    if path.is_none()
        && let Some(status) = runtime()?.block_on(from_agent::<Status>(&cli.socket, "/v1/status"))?
    {
        match output {
            Output::Json => print_json(&status)?,
            Output::Text => print_status(&status),
        }
        let troubled = status.agent.as_ref().is_some_and(|a| !a.spec_errors.is_empty() || a.mass_removal.is_some());
        return Ok(if status.unchecked.is_some() || troubled { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    let path = &path.map_or_else(|| PathBuf::from(DEFAULT_SPECS), Path::to_path_buf);
    let desired = load_with_backups(cli, path)?;
    runtime()?.block_on(async {
        let options = options(cli, path, 1);
        let (engines, missing) = connect(&desired, cli.timeouts()).await?;
        let observed = crate::reconcile::observe::observe_all(&engines, &options, &desired).await?;
        let st = state::read_state(&cli.state_dir)?;
        let plan = apply::plan_for(&desired, &observed, &st, &options, &Default::default());
        let mut status = crate::reconcile::status::build(&desired, &observed, &st, &plan);
        status.timers = crate::jobs::list(&cli.state_dir, &desired, tend_specs::calendar::Timestamp::now());
        status.backups = desired
            .backups
            .values()
            .map(|b| crate::backup::health::health(&cli.state_dir, b, crate::support::now_ms()))
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
