//! The health of a Backup for `tend status` and metrics (last success, failures, missed
//! schedules, shrinking archives, leftovers, interrupted runs), and verifying archives.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tend_specs::desired::Backup;

use crate::backup::archive;
use crate::backup::catalog::{self, EntryState};
use crate::backup::quiesce;

use super::prune::archives;
use super::run::*;

/// Verifies every archive of `backup` (or the one file given).
pub fn verify_all(backup: Option<&Backup>, archive: Option<&Path>) -> Vec<(PathBuf, Result<u64, BackupError>)> {
    let targets: Vec<PathBuf> = match (archive, backup) {
        (Some(a), _) => vec![a.to_path_buf()],
        (None, Some(b)) => archives(b).map(|v| v.into_iter().map(|e| e.path).collect()).unwrap_or_default(),
        (None, None) => vec![],
    };
    targets
        .into_iter()
        .map(|p| {
            let r = catalog::read_manifest(&p).map_err(BackupError::from).and_then(|m| {
                // What the manifest says the archive is; by its name only without one.
                let report = match &m {
                    Some(m) => archive::verify_counted(&p, m.content_format(), Some(&m.sha256), None)?,
                    None => archive::verify(&p, None)?,
                };
                Ok(report.entries.unwrap_or(0))
            });
            (p, r)
        })
        .collect()
}

/// The names of backups whose quiesce journal says a run was interrupted (its tend is gone
/// and its services are not all started again yet).
pub fn interrupted(state_dir: &Path) -> BTreeSet<String> {
    quiesce::interrupted(state_dir).into_iter().map(|(_, j)| j.backup).collect()
}

/// The health of a backup, for `tend status` and metrics.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// The Backup.
    pub name: String,
    /// When the last successful run ended (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_ms: Option<u64>,
    /// The last run's error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The copies the last run could not make (the archive itself was written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies_failed: Vec<String>,
    /// The schedule elapsed since the last success without a run succeeding.
    #[serde(default)]
    pub missed: bool,
    /// The newest archive is much smaller than the one before: (previous, newest) bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrunk: Option<(u64, u64)>,
    /// Temporary files and archives without a manifest left by interrupted runs.
    #[serde(default)]
    pub leftovers: usize,
    /// A run was killed while its services were stopped (they are started by the next run
    /// or the agent).
    #[serde(default)]
    pub interrupted: bool,
    /// Free bytes in the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
}

impl Health {
    /// Problems worth a line in `tend status`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.last_success_ms.is_none() {
            p.push("never succeeded".to_string());
        }
        if let Some(e) = &self.last_error {
            p.push(format!("last run failed: {e}"));
        }
        for c in &self.copies_failed {
            p.push(format!("last run: {c}"));
        }
        if self.missed {
            p.push("missed its schedule".to_string());
        }
        if let Some((prev, now)) = self.shrunk {
            p.push(format!("the newest archive is {now} bytes, the one before {prev}"));
        }
        if self.leftovers > 0 {
            p.push(format!("{} leftover(s) of interrupted runs in the destination", self.leftovers));
        }
        if self.interrupted {
            p.push("a run was interrupted with its services stopped".to_string());
        }
        p
    }
}

/// A newest archive smaller than this share of the one before is reported.
pub(crate) const SHRINK_RATIO: f64 = 0.5;

/// The health of `backup` now.
pub fn health(state_dir: &Path, backup: &Backup, now_ms: u64) -> Health {
    let mut h = Health { name: backup.name.clone(), ..Default::default() };
    let history =
        std::fs::read_to_string(state_dir.join("backups").join(&backup.name).join("history.jsonl")).unwrap_or_default();
    let runs: Vec<serde_json::Value> = history.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    h.last_success_ms = runs.iter().filter(|r| r["ok"] == true).filter_map(|r| r["endMs"].as_u64()).max();
    if let Some(last) = runs.last()
        && last["ok"] == false
    {
        h.last_error = last["error"].as_str().map(str::to_string);
    }
    if let Some(last) = runs.last() {
        h.copies_failed = last["copiesFailed"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
    }
    if let (Some(cal), Some(last)) = (&backup.calendar, h.last_success_ms) {
        // Missed: an elapse after the last success that is more than an hour past.
        let after = tend_specs::calendar::Timestamp::from_millisecond(i64::try_from(last).unwrap_or(0)).ok();
        let due = after.and_then(|t| cal.next_after(t)).map(|z| z.timestamp().as_millisecond());
        h.missed = due.is_some_and(|d| i64::try_from(now_ms).unwrap_or(i64::MAX) > d + 3_600_000);
    }
    if let Ok(entries) = archives(backup) {
        h.leftovers = entries.iter().filter(|e| e.state != EntryState::Complete).count();
        let sizes: Vec<u64> = entries.iter().filter(|e| e.state == EntryState::Complete).map(|e| e.size).collect();
        if let [.., prev, newest] = sizes[..]
            && (newest as f64) < (prev as f64) * SHRINK_RATIO
        {
            h.shrunk = Some((prev, newest));
        }
    }
    h.interrupted = interrupted(state_dir).contains(&backup.name);
    h.free_bytes = archive::free_bytes(Path::new(&backup.spec.destination.dir)).ok();
    h
}
