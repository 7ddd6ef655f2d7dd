//! `tend backup run|list|drill|verify|pin|unpin` and `tend restore`.

use super::*;

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

pub(super) fn backup_ctx(cli: &Cli) -> crate::backup::run::Context {
    crate::backup::run::Context { host: cli.host(), progress: None, keep: None }
}

/// Bytes, rate and ETA of a backup or restore on a terminal (stderr), until dropped.
pub(super) struct ProgressLine {
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
pub(super) fn show_progress(
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

pub(super) fn the_backup<'a>(desired: &'a Desired, name: &str) -> Result<&'a tend_specs::desired::Backup, CliError> {
    desired.backups.get(name).ok_or_else(|| CliError::Backup(crate::backup::BackupError::Unknown(name.to_string())))
}

/// `tend backup …`.
pub(super) fn backup(cli: &Cli, command: &BackupCommand) -> Result<ExitCode, CliError> {
    match command {
        BackupCommand::Run { name, keep, reason, specs, output } => {
            let keep = keep.then(|| reason.clone().unwrap_or_else(|| "kept with tend backup run --keep".into()));
            backup_run(cli, name, keep, specs.as_deref(), *output)
        }
        BackupCommand::Pin { name, archive, reason, specs } => {
            let desired = load(cli, &specs_for(cli, specs.as_deref())?)?;
            let path = crate::backup::prune::pin_archive(the_backup(&desired, name)?, archive, reason.clone())?;
            outln!(
                "{} {}: retention keeps it until `tend backup unpin {name} {archive}`",
                Paint::stdout().green("pinned"),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Unpin { name, archive, specs } => {
            let desired = load(cli, &specs_for(cli, specs.as_deref())?)?;
            let (path, was) = crate::backup::prune::unpin_archive(the_backup(&desired, name)?, archive)?;
            match was {
                true => outln!("unpinned {}: the next run's retention may remove it", path.display()),
                false => outln!("{} was not pinned", path.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::List { name, specs, output } => {
            let desired = load(cli, &specs_for(cli, specs.as_deref())?)?;
            let b = the_backup(&desired, name)?;
            let entries = crate::backup::prune::archives(b)?;
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
                crate::backup::health::verify_all(None, Some(as_file))
            } else {
                let desired = load(cli, &specs_for(cli, specs.as_deref())?)?;
                crate::backup::health::verify_all(Some(the_backup(&desired, target)?), None)
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
pub(super) fn backup_run(
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
pub(super) fn backup_drill(cli: &Cli, name: &str, specs: Option<&Path>) -> Result<ExitCode, CliError> {
    let desired = load_with_backups(cli, &specs_for(cli, specs)?)?;
    let b = the_backup(&desired, name)?;
    let started_ms = crate::support::now_ms();
    let result = runtime()?.block_on(async {
        let (engines, _) = connect(&desired, cli.timeouts()).await?;
        crate::backup::drill::drill(&engines, &desired, b, &backup_ctx(cli)).await.map_err(CliError::Backup)
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
pub(super) fn record_timer_run(
    cli: &Cli,
    desired: &Desired,
    timer: &str,
    started_ms: u64,
    outcome: Result<(), String>,
) {
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
pub(super) struct RestoreTarget<'a> {
    /// The archive (default: the newest complete one).
    pub(super) from: Option<&'a Path>,
    /// A new directory instead of the live paths.
    pub(super) to: Option<&'a Path>,
    /// An archive without a manifest is restored on purpose.
    pub(super) without_manifest: bool,
}

/// `tend restore`: everything that can be checked without stopping anything is checked
/// before the plan is shown; a refusal says nothing was changed.
pub(super) fn restore(
    cli: &Cli,
    name: &str,
    target: RestoreTarget<'_>,
    set: &[String],
    yes: bool,
    specs: Option<&Path>,
) -> Result<ExitCode, CliError> {
    use crate::backup::BackupError;
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
    let plan = crate::backup::restore::plan_restore(b, from, to, &vars, without_manifest).map_err(refused)?;
    crate::backup::restore::check_restore(&plan).map_err(refused)?;
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
    let progress = ProgressLine::start(&mut ctx, || Some(crate::backup::restore::restore_read_bytes(b, &plan)));
    let result = runtime()?.block_on(async {
        let (engines, _) = connect(&desired, cli.timeouts()).await?;
        crate::backup::restore::restore(&engines, &desired, b, &plan, to, &vars, &ctx).await.map_err(CliError::Backup)
    });
    drop(progress);
    result?;
    outln!("{} {name}", Paint::stdout().green("restored"));
    Ok(ExitCode::SUCCESS)
}
