//! Spec sets: loading a set from the source (a watched directory, or the commits of a git
//! source), telling whether a re-read changed anything (its fingerprint), rejecting a set
//! with errors whole (the last good set stays in use), and putting a new set in use —
//! after the mass-removal guard, and for git by promoting its checkout.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tend_specs::Desired;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::daemon::engine_health::{LiveEngines, engine_failure, note_engine};
use crate::daemon::guard::mass_removal;
pub(super) use crate::daemon::shared::SpecSet;
use crate::daemon::shared::{Shared, lock};
use crate::daemon::source::{GitConfig, Revision};
use crate::daemon::{AgentError, SourceSettings, watch};

fn fingerprint(desired: &Desired) -> String {
    let mut s = String::new();
    for svc in desired.services.values() {
        s.push_str(&format!("s:{}:{};", svc.name, svc.hash));
        // Fields outside the template hash (replicas, rollout, restart, dependsOn, ...)
        // matter too: compare the whole spec.
        s.push_str(&serde_json::to_string(&svc.spec).unwrap_or_default());
    }
    for t in desired.timers.values() {
        s.push_str(&format!("t:{}:{};", t.name, t.hash));
    }
    // A Backup's schedule, drill, retention and copies shape its Timers and runs, not only
    // its archive hash: compare the whole spec.
    for b in desired.backups.values() {
        s.push_str(&format!("b:{}:{};", b.name, b.hash));
        s.push_str(&serde_json::to_string(&b.spec).unwrap_or_default());
    }
    tend_specs::hash::sha256_hex(s.as_bytes())
}

pub(super) use crate::support::short;

/// Opens the spec source: reads a directory (its set is returned, pending for the first
/// pass) and watches it, or puts the last promoted commit of a git source in use again at
/// once (even with the remote down) and polls it.
pub(super) async fn open_source(shared: &Arc<Shared>, stop: &CancellationToken) -> Result<Option<SpecSet>, AgentError> {
    let settings = &shared.settings;
    match (&settings.source, shared.git.clone()) {
        (SourceSettings::Dir(dir), _) => {
            let pending = reload_dir(shared, dir);
            watch::watch_dir(dir, settings.debounce, shared.wake.clone(), stop.clone())?;
            Ok(pending)
        }
        // The git source was made with the shared state.
        (SourceSettings::Git(_), None) => Ok(None),
        (SourceSettings::Git(config), Some(git)) => {
            let current = git.lock().await.current();
            if let Some(rev) = current {
                let dir = stable_dir(&settings.host.state_dir, config);
                match load(shared, &dir) {
                    Ok(desired) => set_current(shared, desired, dir, rev.commit.clone()),
                    Err(errors) => reject(shared, errors, rev.commit.clone()),
                }
            }
            watch::spawn_git_poller(git, shared.wake.clone(), stop.clone());
            Ok(None)
        }
    }
}

/// The path through which a git source's promoted checkout is read: stable across
/// commits, so paths in the specs (bind mounts next to them) do not change with each commit.
fn stable_dir(state_dir: &Path, config: &GitConfig) -> PathBuf {
    let current = state_dir.join("git").join("current");
    match &config.path {
        Some(p) => current.join(p),
        None => current,
    }
}

/// Loads the specs in `dir`, secrets' digests keyed by the host's salt.
fn load(shared: &Shared, dir: &Path) -> Result<Desired, Vec<String>> {
    let options = tend_specs::LoadOptions { secret_salt: &shared.secret_salt };
    tend_specs::load_path_with(dir, &options).map_err(|diags| diags.iter().map(ToString::to_string).collect())
}

fn set_current(shared: &Shared, mut desired: Desired, dir: PathBuf, commit: Option<String>) {
    let fingerprint = fingerprint(&desired);
    // Scheduled Backups run as Timers (`tend backup run NAME`).
    shared.settings.host.prepare(&mut desired, &dir);
    info!(dir = %dir.display(), commit = commit.as_deref().unwrap_or("-"), services = desired.services.len(), timers = desired.timers.len(), "spec set in use");
    shared.metrics.applied_commit(commit.as_deref());
    shared.metrics.spec_errors(0);
    {
        let mut a = lock(&shared.agent);
        a.specs = dir.display().to_string();
        a.commit = commit.clone();
        a.spec_errors.clear();
        a.rejected_commit = None;
        a.mass_removal = None;
    }
    // Timers' job services are left out: asking about a unit that never runs makes systemd
    // load and unload it, and those signals must not wake the loop.
    let units: BTreeSet<String> = desired
        .systemd_services()
        .map(|s| format!("{}.service", s.name))
        .chain(desired.timers.keys().map(|t| format!("{t}.timer")))
        .collect();
    *shared.units_of_interest.write().unwrap_or_else(std::sync::PoisonError::into_inner) = units;
    *shared.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some(SpecSet { desired: Arc::new(desired), dir, commit, fingerprint, rev: None });
}

fn reject(shared: &Shared, errors: Vec<String>, commit: Option<String>) {
    for e in &errors {
        warn!(error = %e, "spec set rejected: the last good set stays in use");
    }
    shared.metrics.spec_errors(errors.len() as u64);
    let mut a = lock(&shared.agent);
    a.spec_errors = errors;
    a.rejected_commit = commit;
}

/// Reads a directory source again: the set, when it differs from the one in use.
fn reload_dir(shared: &Shared, dir: &Path) -> Option<SpecSet> {
    match load(shared, dir) {
        Ok(desired) => {
            let fp = fingerprint(&desired);
            if shared.current().is_some_and(|c| c.fingerprint == fp) {
                // Back to the set in use (or unchanged): clear a stale rejection.
                let mut a = lock(&shared.agent);
                if !a.spec_errors.is_empty() {
                    a.spec_errors.clear();
                    shared.metrics.spec_errors(0);
                }
                return None;
            }
            Some(SpecSet {
                desired: Arc::new(desired),
                dir: dir.to_path_buf(),
                commit: None,
                fingerprint: fp,
                rev: None,
            })
        }
        Err(errors) => {
            reject(shared, errors, None);
            None
        }
    }
}

/// Spec files changed: reads the directory again; a changed set becomes `pending`. Returns
/// whether a pass is wanted.
pub(super) fn reread_dir(shared: &Shared, pending: &mut Option<SpecSet>) -> bool {
    let SourceSettings::Dir(dir) = &shared.settings.source else { return false };
    match reload_dir(shared, dir) {
        Some(set) => {
            *pending = Some(set);
            true
        }
        None => false,
    }
}

/// A git source checked out a new commit: a valid set becomes `pending`; an invalid one is
/// rejected (and the source told, so it is not offered again). Returns whether a pass is
/// wanted.
pub(super) fn check_candidate(shared: &Shared, rev: Revision, pending: &mut Option<SpecSet>) -> bool {
    let SourceSettings::Git(config) = &shared.settings.source else { return false };
    match load(shared, &rev.dir) {
        Ok(desired) => {
            let fp = fingerprint(&desired);
            // Read through the stable path once promoted; validated here from the
            // candidate's own checkout.
            *pending = Some(SpecSet {
                desired: Arc::new(desired),
                dir: stable_dir(&shared.settings.host.state_dir, config),
                commit: rev.commit.clone(),
                fingerprint: fp,
                rev: Some(rev),
            });
            lock(&shared.agent).spec_errors.clear();
            true
        }
        Err(errors) => {
            reject(shared, errors, rev.commit.clone());
            if let Some(git) = &shared.git {
                let git = git.clone();
                tokio::spawn(async move { git.lock().await.reject(&rev) });
            }
            false
        }
    }
}

/// Puts a new set in use unless the mass-removal guard stops it. Returns the set, and why,
/// when it could not be checked against live state (an engine failed): it stays pending.
pub(super) async fn accept_or_block(
    shared: &Arc<Shared>,
    engines: &Arc<LiveEngines>,
    set: SpecSet,
) -> Option<(SpecSet, String)> {
    if !shared.settings.allow_mass_removal {
        match crate::reconcile::observe::observe_all(engines, &shared.options, &set.desired).await {
            Ok(observed) => {
                if let Some(m) = mass_removal(
                    &observed,
                    &set.desired,
                    &shared.settings.host.scope,
                    shared.settings.max_removal_percent,
                ) {
                    let why = format!(
                        "the newest spec set{} {m}: not applied; the set in use stays (allow with `tend agent --allow-mass-removal` or massRemoval.allow in the agent config)",
                        set.commit.as_deref().map(|c| format!(" (commit {})", short(c))).unwrap_or_default(),
                    );
                    warn!(removed = m.removed.len(), managed = m.managed, "{why}");
                    shared.metrics.mass_removal_blocked(true);
                    lock(&shared.agent).mass_removal = Some(why);
                    return None;
                }
            }
            Err(e) => {
                // Unknown: the new set stays pending for a later pass (waking one at once
                // would spin while an engine fails fast).
                if let Some((engine, kind, error)) = engine_failure(&e) {
                    note_engine(shared, engine, Some((kind, error)));
                }
                lock(&shared.agent).mass_removal = None;
                return Some((
                    set,
                    format!("checking the new spec set against live state: {}", crate::support::chain(&e)),
                ));
            }
        }
    }
    shared.metrics.mass_removal_blocked(false);
    let (desired, dir, commit) = ((*set.desired).clone(), set.dir.clone(), set.commit.clone());
    if let (Some(git), Some(rev)) = (&shared.git, &set.rev) {
        // Switch the checkout first: the set is read through the `current` link.
        if let Err(e) = git.lock().await.promote(rev) {
            error!(error = %crate::support::chain(&e), "switching to the new checkout failed; the set in use stays");
            return None;
        }
    }
    set_current(shared, desired, dir, commit);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::test_support::{desired, service};

    fn backup(schedule: &str, level: u32) -> String {
        format!(
            "---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: nightly}}\nspec:\n  schedule: '{schedule}'\n  source: {{paths: [/srv/data]}}\n  destination: {{dir: /srv/backups}}\n  compression: {{level: {level}}}\n"
        )
    }

    #[test]
    fn an_edit_of_only_a_backup_changes_the_fingerprint() {
        let base = fingerprint(&desired(&[service("web", ""), backup("daily", 5)].concat()));
        assert_eq!(base, fingerprint(&desired(&[service("web", ""), backup("daily", 5)].concat())));
        assert_ne!(base, fingerprint(&desired(&[service("web", ""), backup("hourly", 5)].concat())), "schedule");
        assert_ne!(base, fingerprint(&desired(&[service("web", ""), backup("daily", 9)].concat())), "compression");
        assert_ne!(base, fingerprint(&desired(&service("web", ""))), "removed");
    }
}
