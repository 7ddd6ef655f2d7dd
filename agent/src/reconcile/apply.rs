//! One pass: lock the state, start again what an interrupted backup stopped, observe,
//! plan, pull, plan again, execute, and record holds, restart history and marks in the
//! state. Every step is safe to repeat, and the next pass completes whatever a killed pass
//! left half done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use tend_specs::Desired;
use tracing::{Instrument, info_span};

use crate::engine::systemd::UnitEngine;
use crate::engine::{ContainerEngine, Engines};
use crate::reconcile::execute::{Outcome, execute};
use crate::reconcile::model::{Observed, RunState, UnitActive};
use crate::reconcile::observe::{ObserveError, observe_all};
pub use crate::reconcile::options::Options;
use crate::reconcile::plan::{self, Action, Input, Plan, Reason, Step};
use crate::reconcile::state::{Hold, RestartRecord, State, StateDir, StateError};
use crate::support::now_ms;

/// Errors of a pass.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Observing failed: nothing was planned.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The result of executing a plan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The plan that was executed (after any image pulls).
    pub plan: Plan,
    /// The outcome of each step, by step id.
    pub outcomes: BTreeMap<usize, Outcome>,
    /// Steps of the image-pull phase and their outcomes.
    pub pulls: Vec<(Step, Outcome)>,
    /// What was observed before the steps ran.
    #[serde(skip)]
    pub observed: Observed,
}

impl Report {
    /// Every step with its outcome: the pulls first, then the plan's steps (`None`: not run).
    pub fn steps(&self) -> impl Iterator<Item = (&Step, Option<&Outcome>)> {
        self.pulls
            .iter()
            .map(|(s, o)| (s, Some(o)))
            .chain(self.plan.steps.iter().map(|s| (s, self.outcomes.get(&s.id))))
    }

    /// Whether every step succeeded.
    pub fn ok(&self) -> bool {
        self.outcomes.values().chain(self.pulls.iter().map(|(_, o)| o)).all(|o| matches!(o, Outcome::Done { .. }))
    }
}

/// Marks what was stopped on purpose, so that an exit nobody crashed into is not held for
/// triage: every target under a maintenance lock now (an operator's `tend maintain`, or a
/// backup quiescing it), and the targets of an interrupted backup that could not be started
/// again. A mark goes once its target runs again.
fn mark_stopped_on_purpose(state: &mut State, observed: &Observed, stopped_by_backup: &BTreeSet<String>) {
    use crate::reconcile::state::StopCause;
    for key in observed.maintenance.keys() {
        state.stopped_on_purpose.entry(key.clone()).or_insert(StopCause::Maintenance);
    }
    for name in stopped_by_backup {
        state.stopped_on_purpose.insert(name.clone(), StopCause::Backup);
    }
}

/// The plan for what the engines show.
pub fn plan_for(
    desired: &Desired,
    observed: &Observed,
    state: &State,
    options: &Options,
    pulled: &BTreeSet<String>,
) -> Plan {
    let ctx = options.unit_context();
    let ignore_windows = options.ignore_windows;
    let plan = plan::plan(Input {
        desired,
        observed,
        state,
        now_ms: now_ms(),
        pulled,
        units: Some(&ctx),
        ignore_windows,
        zone: plan::window::host_zone(),
        gated: &options.gated,
    });
    if options.skip_owners.is_empty() { plan } else { plan.without_owners(&options.skip_owners) }
}

/// One full pass: lock the state, observe, plan, pull, re-plan, execute, record.
pub async fn apply<E: ContainerEngine, U: UnitEngine>(
    engines: Arc<Engines<E, U>>,
    desired: Arc<Desired>,
    state_dir: &StateDir,
    options: &Options,
) -> Result<Report, ApplyError> {
    let span = info_span!("pass", scope = %options.host.scope, services = desired.services.len(), timers = desired.timers.len());
    async move {
        let mut state = state_dir.load()?;
        let loaded_marks = state.stopped_on_purpose.clone();
        let mut observed = observe_all(&engines, options, &desired).await?;
        mark_stopped_on_purpose(&mut state, &observed, &options.stopped_by_backup);
        let mut plan = plan_for(&desired, &observed, &state, options, &BTreeSet::new());
        let mut report = Report::default();
        if plan.pulls().next().is_some() {
            // Prepare phase: pull, then plan again against what the pulls brought.
            let pull_plan = Plan { steps: plan.pulls().cloned().collect(), ..Plan::default() };
            let outcomes = execute(engines.clone(), desired.clone(), &pull_plan, options).await;
            for step in &pull_plan.steps {
                let outcome = outcomes.get(&step.id).cloned().unwrap_or(Outcome::Skipped { because_of: 0 });
                report.pulls.push((step.clone(), outcome));
            }
            observed = observe_all(&engines, options, &desired).await?;
            // Failed pulls are not retried in this pass: treat them as pulled, so the
            // re-plan does not pull again; creates that need the image then fail clearly.
            let pulled: BTreeSet<String> = report
                .pulls
                .iter()
                .filter_map(|(step, _)| match &step.action {
                    Action::PullImage { image } => Some(image.clone()),
                    _ => None,
                })
                .collect();
            plan = plan_for(&desired, &observed, &state, options, &pulled);
        }
        let outcomes = execute(engines.clone(), desired.clone(), &plan, options).await;
        // A release is used up once its instance runs (also when started by hand), so a
        // later unexpected exit is held again.
        let before = state.released.len();
        let running_units: Vec<&str> = observed
            .units
            .iter()
            .flat_map(|u| u.values())
            .filter(|u| u.active == UnitActive::Active)
            .map(|u| u.name.as_str())
            .collect();
        state.released.retain(|name, _| {
            !observed.containers.iter().any(|c| c.name == *name && c.state == RunState::Running)
                && !running_units.contains(&name.as_str())
        });
        // Likewise a drain's mark: once the instance runs again it is not drained any more.
        let drained_before = state.stopped_by_drain.len();
        state.stopped_by_drain.retain(|name| {
            !observed.containers.iter().any(|c| c.name == *name && c.state == RunState::Running)
                && !running_units.contains(&name.as_str())
        });
        // And a stop on purpose: once it runs again (or is gone), a later exit is a crash.
        let exists = |name: &str| {
            observed.containers.iter().any(|c| c.name == name)
                || observed.units.as_ref().is_some_and(|u| u.contains_key(name))
        };
        state.stopped_on_purpose.retain(|name, _| {
            observed.maintenance.contains_key(name)
                || (exists(name)
                    && !observed.containers.iter().any(|c| c.name == *name && c.state == RunState::Running)
                    && !running_units.contains(&name.as_str()))
        });
        let released_changed = state.released.len() != before
            || state.stopped_by_drain.len() != drained_before
            || state.stopped_on_purpose != loaded_marks;
        if record(&mut state, &plan, &outcomes, now_ms()) || released_changed {
            state_dir.save(&state)?;
        }
        report.plan = plan;
        report.outcomes = outcomes;
        report.observed = observed;
        Ok(report)
    }
    .instrument(span)
    .await
}

/// Records holds and restart history from the outcomes; returns whether anything changed.
pub fn record(state: &mut State, plan: &Plan, outcomes: &BTreeMap<usize, Outcome>, now_ms: u64) -> bool {
    let before = state.clone();
    for step in &plan.steps {
        if !matches!(outcomes.get(&step.id), Some(Outcome::Done { .. })) {
            continue;
        }
        match (&step.action, &step.reason) {
            (Action::Hold { service, instance, name, exit_code }, _) => {
                state.holds.insert(
                    name.clone(),
                    Hold {
                        service: service.clone(),
                        instance: *instance,
                        since_ms: now_ms,
                        exit_code: *exit_code,
                        unclean_boot: false,
                    },
                );
            }
            (Action::Start { name, .. }, Reason::Exited { attempt, .. }) => {
                state.restarts.insert(name.clone(), RestartRecord { attempts: *attempt, last_ms: now_ms });
                state.released.remove(name);
                state.stopped_by_drain.remove(name);
                state.stopped_on_purpose.remove(name);
            }
            (Action::Start { name, .. }, _) => {
                state.released.remove(name);
                state.stopped_by_drain.remove(name);
                state.stopped_on_purpose.remove(name);
            }
            (Action::Create { name, .. } | Action::Remove { name, .. }, _) => {
                state.restarts.remove(name);
                state.released.remove(name);
                state.stopped_by_drain.remove(name);
                state.stopped_on_purpose.remove(name);
            }
            // A drain's stops are remembered, so undrain starts them again.
            (Action::Stop { name, .. }, _) | (Action::StopUnit { unit: name }, Reason::Drained) => {
                state.stopped_by_drain.insert(name.clone());
            }
            (Action::StartUnit { unit } | Action::RestartUnit { unit } | Action::RemoveUnit { unit }, _) => {
                state.stopped_by_drain.remove(unit);
                state.stopped_on_purpose.remove(unit);
            }
            _ => {}
        }
    }
    *state != before
}
