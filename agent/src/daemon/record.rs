//! What a pass leaves behind: its outcome in the agent's status (`tend status`, systemd's
//! STATUS line), the metrics and the log; the objects that back off; the maintenance
//! windows to wait for; and the job runs and Backups' health since the last pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::daemon::backoff::Backoffs;
use crate::daemon::shared::{Shared, lock};
use crate::daemon::watch::wait_for_release;
use crate::reconcile::apply::Report;
use crate::reconcile::execute::Outcome;
use crate::reconcile::model::{RunState, UnitActive};
use crate::reconcile::plan::{Action, Note, Plan, Reason};
use crate::support::redact::Redactor;

/// Records a pass that ran: outcomes, backoff, metrics and the status. `left_out` says why
/// part of the specs was not observed (an unreachable Docker): then no object is counted.
pub(super) fn record_report(
    shared: &Shared,
    report: &Report,
    backoff: &mut Backoffs,
    elapsed: Duration,
    left_out: Option<String>,
) {
    let m = &shared.metrics;
    let tally = tally(shared, report);
    m.drift_repair(tally.repairs);
    m.pass(elapsed, tally.failed == 0);
    let now = Instant::now();
    let now_ms = crate::support::now_ms();
    backoff.after_pass(&tally.failed_owners, &tally.ok_owners, now, now_ms);
    let counts = object_counts(shared, report);
    let result = match (tally.done, tally.failed, &left_out) {
        (0, 0, None) if report.plan.steps.is_empty() => "converged".to_string(),
        (0, 0, Some(_)) if report.plan.steps.is_empty() => "nothing to do".to_string(),
        (d, 0, _) => format!("applied {d} step(s)"),
        (d, f, _) => format!("{f} step(s) failed, {d} done"),
    };
    let result = match &left_out {
        Some(why) => {
            m.objects_unknown();
            format!("{result} for the rest of the specs; not checked: {why}")
        }
        None => {
            m.objects(&counts);
            result
        }
    };
    if tally.done + tally.failed > 0 {
        info!(done = tally.done, failed = tally.failed, ms = elapsed.as_millis() as u64, "pass: {result}");
    } else {
        debug!(ms = elapsed.as_millis() as u64, "pass: {result}");
    }
    for n in &report.plan.notes {
        if let Note::Maintenance { target, .. } = n {
            wait_for_release(shared, target);
        }
    }
    let (troubled, held) = troubled(&tally.failed_owners, &report.plan);
    let mut a = lock(&shared.agent);
    // Changes waiting for an update window: pass when it opens.
    a.next_window_ms = crate::reconcile::plan::window::next_deferred_open(&report.plan);
    a.troubled = troubled.into_iter().collect();
    a.held = held;
    a.drained = report.plan.notes.iter().any(|n| matches!(n, Note::Drained { .. }));
    a.passes += 1;
    a.last_pass_ms = Some(now_ms);
    a.last_pass_duration_ms = Some(elapsed.as_millis() as u64);
    a.last_result = Some(result);
    a.backoff = backoff.waiting(now);
    for n in &report.plan.notes {
        if let Note::BackingOff { name, until_ms, .. } = n {
            a.backoff.insert(name.clone(), *until_ms);
        }
    }
}

/// The steps of a pass, counted (each also into the metrics by action).
struct Tally {
    /// Objects with a step that failed.
    failed_owners: BTreeSet<String>,
    /// Objects with a step done.
    ok_owners: BTreeSet<String>,
    /// Steps that repaired drift.
    repairs: u64,
    done: usize,
    failed: usize,
}

fn tally(shared: &Shared, report: &Report) -> Tally {
    let m = &shared.metrics;
    let mut t = Tally { failed_owners: BTreeSet::new(), ok_owners: BTreeSet::new(), repairs: 0, done: 0, failed: 0 };
    for (step, outcome) in report.steps() {
        let kind = crate::reconcile::execute::action_name(&step.action);
        match outcome {
            Some(Outcome::Done { .. }) => {
                t.done += 1;
                m.action(kind, true);
                if is_repair(&step.reason) && !matches!(step.action, Action::Hold { .. }) {
                    t.repairs += 1;
                }
                if let Some(o) = step.action.owner() {
                    t.ok_owners.insert(o);
                }
            }
            Some(Outcome::Failed { .. }) => {
                t.failed += 1;
                m.action(kind, false);
                if let Some(o) = step.action.owner() {
                    t.failed_owners.insert(o);
                }
            }
            _ => {}
        }
    }
    t
}

/// Whether a step repairs drift (rather than rolling out a spec change).
fn is_repair(reason: &Reason) -> bool {
    matches!(reason, Reason::Missing | Reason::Exited { .. } | Reason::NotStarted | Reason::Leftover)
}

/// Objects by state, from what the pass saw and planned.
fn object_counts(shared: &Shared, report: &Report) -> Vec<(&'static str, u64)> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &report.observed.containers {
        let state = match c.state {
            RunState::Running => "running",
            RunState::Exited | RunState::Dead => "exited",
            _ => "other",
        };
        *counts.entry(state).or_default() += 1;
    }
    for u in report
        .observed
        .units
        .iter()
        .flat_map(|u| u.values())
        .filter(|u| u.scope.as_deref() == Some(&shared.settings.host.scope))
    {
        let state = match u.active {
            UnitActive::Active => "active",
            UnitActive::Failed => "failed",
            _ => "inactive",
        };
        *counts.entry(state).or_default() += 1;
    }
    for n in &report.plan.notes {
        let state = match n {
            Note::Held { .. } => "held",
            Note::Maintenance { .. } => "maintenance",
            Note::BackingOff { .. } => "backing-off",
            Note::Conflict { .. } => "conflict",
            _ => continue,
        };
        *counts.entry(state).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// The services not ok after a pass (a failed step, or a note: held, backing off, under
/// maintenance, conflicting, blocked), and how many instances are held.
fn troubled(failed_owners: &BTreeSet<String>, plan: &Plan) -> (BTreeSet<String>, usize) {
    let mut troubled: BTreeSet<String> = failed_owners.clone();
    let mut held = 0;
    for n in &plan.notes {
        let service = match n {
            Note::Held { service, .. } => {
                held += 1;
                service
            }
            Note::BackingOff { service, .. }
            | Note::Maintenance { service, .. }
            | Note::Conflict { service, .. }
            | Note::ImageNotPresent { service, .. }
            | Note::Blocked { service, .. } => service,
            _ => continue,
        };
        troubled.insert(service.clone());
    }
    (troubled, held)
}

/// Records a pass that failed before any step: `why` in the status and the log. It counted
/// no objects, so none are reported as current.
pub(super) fn fail_pass(shared: &Shared, why: String, elapsed: Duration) {
    // An engine's error may echo a request: no secret of the set is shown or logged.
    let why = shared.current().map_or(why.clone(), |set| Redactor::of_desired(&set.desired).redact(&why));
    warn!(error = %why, "pass failed");
    shared.metrics.pass(elapsed, false);
    shared.metrics.objects_unknown();
    let mut a = lock(&shared.agent);
    a.last_result = Some(why);
    a.passes += 1;
    a.last_pass_ms = Some(crate::support::now_ms());
    a.last_pass_duration_ms = Some(elapsed.as_millis() as u64);
}

/// New job runs (from the histories) into the metrics, and the Backups' health. `seen`:
/// the start of the newest run recorded, by Timer.
pub(super) fn record_runs(shared: &Shared, seen: &mut BTreeMap<String, u64>) {
    let Some(set) = shared.current() else { return };
    for b in set.desired.backups.values() {
        let h = crate::backup::health::health(&shared.settings.host.state_dir, b, crate::support::now_ms());
        shared.metrics.backup(&b.name, h.last_success_ms, h.problems().len());
    }
    for name in set.desired.timers.keys() {
        let Ok(records) = crate::jobs::history(&shared.settings.host.state_dir, name, Some(20)) else { continue };
        let last = seen.get(name).copied().unwrap_or(0);
        let mut newest = last;
        for r in records.iter().rev().filter(|r| r.start_ms > last) {
            let ok = r.exit_status() == 0;
            shared.metrics.job(name, ok, Duration::from_millis(r.duration_ms()));
            newest = newest.max(r.start_ms);
        }
        seen.insert(name.clone(), newest);
    }
}
