//! Retention applied: in the destination and in every copy (a copy's own rules, or the
//! Backup's), over rsync too; pinned archives are kept everywhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tend_specs::backup::CopyTo;
use tend_specs::desired::Backup;
use tracing::info;

use crate::backup::catalog::{self, EntryState};
use crate::backup::retention;
use crate::support::{chain, now_ms};

use super::error::{BackupError, io};

pub(crate) fn rules_of(r: &tend_specs::backup::Retention) -> retention::Rules {
    retention::Rules {
        keep_last: r.keep_last,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
    }
}

/// Applies retention in the destination and in every copy (a copy's own `retention`, else
/// the Backup's; none: everything is kept). Pinned archives are kept everywhere. Returns
/// what was removed and the problems (each a warning: the archive of this run is whole).
pub(crate) async fn apply_retention(backup: &Backup, dest: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let (mut pruned, mut problems) = (Vec::new(), Vec::new());
    // Pins are kept with the local archives; they hold in every copy.
    let pinned: BTreeSet<PathBuf> = archives(backup)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| catalog::is_pinned(&e.path))
        .filter_map(|e| e.path.strip_prefix(dest).ok().map(Path::to_path_buf))
        .collect();
    if let Some(r) = &backup.spec.retention {
        match prune(dest, backup, &rules_of(r), &pinned) {
            Ok(p) => pruned.extend(p),
            Err(e) => problems.push(format!("retention in {}: {}", dest.display(), chain(&e))),
        }
    }
    for c in &backup.spec.copies {
        let Some(r) = c.retention.as_ref().or(backup.spec.retention.as_ref()) else { continue };
        let done = match c.to() {
            CopyTo::Dir(dir) => prune(Path::new(dir), backup, &rules_of(r), &pinned),
            CopyTo::Rsync(target) => prune_remote(target, backup, &rules_of(r), &pinned).await,
        };
        match done {
            Ok(p) => pruned.extend(p),
            Err(e) => problems.push(format!("retention in copy {c}: {}", chain(&e))),
        }
    }
    (pruned, problems)
}

/// Applies retention to the complete archives of `backup` in `dir`, keeping those whose path
/// relative to `dir` is `pinned` or that are pinned here; returns what was removed.
pub(crate) fn prune(
    dir: &Path,
    backup: &Backup,
    rules: &retention::Rules,
    pinned: &BTreeSet<PathBuf>,
) -> Result<Vec<PathBuf>, BackupError> {
    let entries = catalog::list(dir, &backup.name, backup.spec.layout())?;
    let kept_by_pin = |p: &Path| catalog::is_pinned(p) || p.strip_prefix(dir).is_ok_and(|r| pinned.contains(r));
    let good: Vec<(PathBuf, tend_specs::calendar::Timestamp)> = entries
        .iter()
        .filter(|e| e.state == EntryState::Complete && !kept_by_pin(&e.path))
        .map(|e| (e.path.clone(), e.time()))
        .collect();
    let keep = retention::select(&good, rules, &tend_specs::calendar::LocalZone::from_env());
    let mut removed = Vec::new();
    for (path, _) in good.iter().filter(|(p, _)| !keep.contains(p)) {
        std::fs::remove_file(path).map_err(io("removing", path))?;
        let _ = std::fs::remove_file(catalog::manifest_path(path));
        info!(archive = %path.display(), "removed by retention");
        removed.push(path.clone());
    }
    Ok(removed)
}

/// [`prune`] of a copy on another host, through rsync: its archives are listed, the rules
/// applied to the complete ones, and the rest removed with their manifests.
pub(crate) async fn prune_remote(
    target: &str,
    backup: &Backup,
    rules: &retention::Rules,
    pinned: &BTreeSet<PathBuf>,
) -> Result<Vec<PathBuf>, BackupError> {
    let zone = tend_specs::calendar::LocalZone::from_env();
    let root = catalog::fixed_root(backup.spec.layout(), &backup.name)?;
    let listed = crate::backup::remote::list(target, &root, &zone).await?;
    let good: Vec<(PathBuf, tend_specs::calendar::Timestamp)> =
        catalog::archives_in_listing(&listed, &backup.name, backup.spec.layout())?
            .into_iter()
            .filter(|(path, _, complete)| *complete && !pinned.contains(&root.join(path)))
            .map(|(path, time, _)| (path, time))
            .collect();
    let keep = retention::select(&good, rules, &zone);
    let drop: Vec<PathBuf> = good.iter().filter(|(p, _)| !keep.contains(p)).map(|(p, _)| p.clone()).collect();
    crate::backup::remote::remove(target, &root, &drop).await?;
    for p in &drop {
        info!(copy = target, archive = %root.join(p).display(), "removed by retention");
    }
    Ok(drop.into_iter().map(|p| PathBuf::from(format!("{target}/{}", root.join(p).display()))).collect())
}

/// The complete archive of `backup` named `given`: its path, or its file name.
pub fn find_archive(backup: &Backup, given: &str) -> Result<catalog::Entry, BackupError> {
    let as_path = std::path::absolute(given).unwrap_or_else(|_| PathBuf::from(given));
    let entries = archives(backup)?;
    let found = entries
        .into_iter()
        .filter(|e| e.state == EntryState::Complete)
        .find(|e| e.path == as_path || e.path.file_name().is_some_and(|n| n == std::ffi::OsStr::new(given)));
    found.ok_or_else(|| {
        BackupError::Refused(format!(
            "{given} is not a complete archive of {} (see `tend backup list {}`)",
            backup.name, backup.name
        ))
    })
}

/// Pins an archive of `backup`: retention keeps it, here and in every copy, until unpinned.
pub fn pin_archive(backup: &Backup, given: &str, reason: Option<String>) -> Result<PathBuf, BackupError> {
    let entry = find_archive(backup, given)?;
    if catalog::is_pinned(&entry.path) {
        return Ok(entry.path);
    }
    let (user, _) = crate::maintain::locks::current_user();
    catalog::pin(&entry.path, &catalog::Pin { since_ms: now_ms(), user, reason })?;
    info!(archive = %entry.path.display(), "pinned");
    Ok(entry.path)
}

/// Unpins an archive of `backup`; the next run's retention may remove it. Returns its path
/// and whether it was pinned.
pub fn unpin_archive(backup: &Backup, given: &str) -> Result<(PathBuf, bool), BackupError> {
    let entry = find_archive(backup, given)?;
    let was = catalog::unpin(&entry.path)?;
    Ok((entry.path, was))
}

/// The complete archives of a backup, newest last (for `list`, `verify`, `restore`).
pub fn archives(backup: &Backup) -> Result<Vec<catalog::Entry>, BackupError> {
    Ok(catalog::list(Path::new(&backup.spec.destination.dir), &backup.name, backup.spec.layout())?)
}
