//! Restore drills: the newest archive restored into a scratch directory or a scratch
//! container, its check run, the scratch removed; nothing live touched.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tend_specs::Desired;
use tend_specs::backup::SourceKind;
use tend_specs::desired::Backup;
use tracing::info;

use crate::backup::archive;
use crate::engine::ContainerRuns;
use crate::engine::Engines;
use crate::engine::systemd::UnitEngine;

use super::error::io;
use super::restore::*;
use super::run::*;

/// What a drill did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    /// The archive restored.
    pub archive: PathBuf,
    /// Where it was restored: the scratch directory or the scratch container (both removed).
    pub restored_into: String,
    /// Entries restored (paths sources).
    pub entries: Option<u64>,
    /// The check's exit code.
    pub check_code: i32,
    /// How long (ms).
    pub duration_ms: u64,
}

/// A restore drill: the newest complete archive restored somewhere scratch, a check run on
/// the host, the scratch removed. Nothing live is stopped or touched.
///
/// - paths sources: restored into the directory `STATE/drills/NAME`; the check gets it as its
///   last argument and in `TEND_DRILL_DIR`.
/// - exec sources: a scratch container `NAME-drill` is made from the image of the service
///   `restore.exec` runs in (its command, environment and health check; no ports, no mounts,
///   no network), waited for until healthy (or running, without a health check), and the
///   archive is streamed into `restore.exec` there with the default `restore.vars`; the check
///   gets the container's name as its last argument and in `TEND_DRILL_CONTAINER` (so it can
///   `docker exec` a query), then the container is removed with its anonymous volumes.
pub async fn drill<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    ctx: &Context,
) -> Result<DrillReport, BackupError> {
    let started = Instant::now();
    let d = backup.spec.drill.as_ref().ok_or_else(|| BackupError::Refused(format!("{} has no drill", backup.name)))?;
    let mut report = match backup.spec.source_kind() {
        SourceKind::Paths => paths_drill(backup, d, ctx).await?,
        SourceKind::Exec => exec_drill(engines, desired, backup, d, ctx).await?,
    };
    report.duration_ms = started.elapsed().as_millis() as u64;
    if report.check_code != 0 {
        return Err(BackupError::Command {
            command: d.check.join(" "),
            code: i64::from(report.check_code),
            stderr: String::new(),
            what: "the restored archive failed its check",
        });
    }
    Ok(report)
}

/// Runs a drill's check on the host with `target` as its last argument and `env` set.
pub(crate) async fn run_check(
    d: &tend_specs::backup::Drill,
    target: &str,
    env: (&str, &str),
) -> Result<i32, BackupError> {
    let status = tokio::process::Command::new(&d.check[0])
        .args(&d.check[1..])
        .arg(target)
        .env(env.0, env.1)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .map_err(io("running the drill check", Path::new(&d.check[0])))?;
    Ok(status.code().unwrap_or(-1))
}

pub(crate) async fn paths_drill(
    backup: &Backup,
    d: &tend_specs::backup::Drill,
    ctx: &Context,
) -> Result<DrillReport, BackupError> {
    let plan = plan_restore(backup, None, Some(Path::new("/")), &[], false)?;
    let scratch = ctx.host.state_dir.join("drills").join(&backup.name);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(io("clearing the drill directory", &scratch))?;
    }
    std::fs::create_dir_all(scratch.parent().unwrap_or(Path::new("/"))).map_err(io("creating", &scratch))?;
    let sha = plan.manifest.as_ref().map(|m| m.sha256.clone());
    let limits = restore_limits(backup, &plan, &scratch)?;
    let (a, t) = (plan.archive.clone(), scratch.clone());
    let extracted =
        tokio::task::spawn_blocking(move || archive::extract_counted(&a, &t, sha.as_deref(), None, &limits))
            .await
            .map_err(|source| BackupError::Task { what: "drill", source })??;
    let dir = scratch.display().to_string();
    let code = run_check(d, &dir, ("TEND_DRILL_DIR", &dir)).await;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(DrillReport {
        archive: plan.archive,
        restored_into: dir,
        entries: Some(extracted.entries),
        check_code: code?,
        duration_ms: 0,
    })
}

pub(crate) async fn exec_drill<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    d: &tend_specs::backup::Drill,
    ctx: &Context,
) -> Result<DrillReport, BackupError> {
    let exec = backup.spec.restore.as_ref().and_then(|r| r.exec.as_ref()).ok_or_else(|| {
        BackupError::Refused(format!("{} has no restore.exec: a drill restores through it", backup.name))
    })?;
    let service = docker_service(desired, exec.runs_in()).ok_or_else(|| {
        BackupError::Refused(format!(
            "a drill of {} needs a scratch container made from the image of the Docker service restore.exec runs in; a restore on the host or into a systemd service has no scratch place (run the drill's restore by hand)",
            backup.name
        ))
    })?;
    let docker = engines.docker.as_deref().ok_or(BackupError::NoDocker)?;
    let plan = plan_restore(backup, None, None, &[], false)?;
    let command = restore_command(backup, &[])?;
    let sha = plan.manifest.as_ref().map(|m| m.sha256.clone());
    // A drill that was killed leaves its container: remove it first.
    for (id, name) in docker.drill_containers(&ctx.host.scope, &backup.name).await? {
        docker.remove_drill(&id, &name).await?;
    }
    let name = format!("{}-drill", backup.name);
    let id = docker.start_drill(&ctx.host.scope, &backup.name, service, &name).await?;
    info!(backup = %backup.name, container = %name, "scratch container started for the drill");
    let result = async {
        crate::reconcile::execute::await_ready(docker, &name, service)
            .await
            .map_err(|e| BackupError::NotReady { container: name.clone(), source: Box::new(e) })?;
        let (code, stderr) = stream_into(engines, Some(&name), &command, &plan.archive, sha, None).await?;
        if code != 0 {
            return Err(BackupError::Command {
                command: command.join(" "),
                code,
                stderr,
                what: "the archive could not be restored into the scratch container",
            });
        }
        run_check(d, &name, ("TEND_DRILL_CONTAINER", &name)).await
    }
    .await;
    let removed = docker.remove_drill(&id, &name).await;
    let code = result?;
    removed?;
    Ok(DrillReport { archive: plan.archive, restored_into: name, entries: None, check_code: code, duration_ms: 0 })
}
