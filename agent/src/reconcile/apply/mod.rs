//! Apply: observe, plan and execute. Steps run in dependency order with bounded
//! concurrency; a step whose prerequisites failed is skipped, never guessed at. Every step
//! is safe to repeat, and the next pass completes whatever a killed pass left half done.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tend_specs::Desired;
use tend_specs::service::{Condition, MountSource};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::engine::systemd::{ActiveState, SystemdError, UnitEngine, UnitState};
use crate::engine::{ContainerEngine, EngineError, Probe};
use crate::reconcile::model::{Health, Observed, RunState, Unit, UnitActive, instance_name};
use crate::reconcile::plan::{self, Action, Input, Plan, Reason, Step};
use crate::reconcile::state::{Hold, RestartRecord, State, StateDir, StateError};

/// Errors of a pass.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Observing live state failed: nothing was planned.
    #[error("observing live state (nothing was changed)")]
    Observe(#[source] EngineError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Observing systemd's units failed: nothing was planned.
    #[error("observing systemd units (nothing was changed)")]
    ObserveUnits(#[source] SystemdError),
    /// Reading the maintenance locks failed: nothing was planned.
    #[error("reading maintenance locks (nothing was changed)")]
    Locks(#[source] crate::maintain::locks::LockError),
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A condition was not met in time.
    #[error("timed out after {waited:?} waiting for {what} to be {condition} (last seen: {last})")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The condition.
        condition: Condition,
        /// How long.
        waited: Duration,
        /// What was seen last.
        last: String,
    },
    /// A condition can no longer be met.
    #[error("{what} will not become {condition}: {why}")]
    Failed {
        /// What was waited for.
        what: String,
        /// The condition.
        condition: Condition,
        /// What happened.
        why: String,
    },
    /// The spec the step needs is gone (cannot happen with a plan made from the same set).
    #[error("no spec for service {0}")]
    NoSpec(String),
    /// systemd refused, or a job failed.
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    /// A before-start hook failed: the new version does not start.
    #[error("hook job {job} failed, so the new version was not started: {why}")]
    Hook {
        /// The Timer whose job ran.
        job: String,
        /// What happened.
        why: String,
    },
    /// An operator took the target for maintenance after the plan was made.
    #[error("{target} is under maintenance ({holder}): left alone")]
    Maintenance {
        /// The lock key.
        target: String,
        /// Who holds it.
        holder: String,
    },
    /// The target's lock could not be taken.
    #[error(transparent)]
    Lock(#[from] crate::maintain::locks::LockError),
    /// tend is stopping: the wait was given up.
    #[error("tend is stopping")]
    Cancelled,
    /// The step needs an engine this host does not have.
    #[error("{0} is not available on this host")]
    NoEngine(&'static str),
    /// Writing or removing an environment file failed.
    #[error("{op} environment file {path}")]
    EnvFile {
        /// "writing" or "removing".
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    /// Done.
    Done {
        /// Milliseconds it took, pause included.
        ms: u64,
    },
    /// Failed, with the error chain as one line.
    Failed {
        /// The error.
        error: String,
    },
    /// Not run because a step it waits for did not succeed.
    Skipped {
        /// The step that did not succeed.
        because_of: usize,
    },
    /// Not run because tend is stopping.
    Cancelled,
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

/// Formats an error with its chain of causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// What to observe for `desired`: instance names (for name conflicts), images, volumes.
fn observe_args(desired: &Desired) -> (BTreeSet<String>, BTreeSet<String>, bool) {
    let mut wanted = BTreeSet::new();
    let mut images = BTreeSet::new();
    let mut volumes = false;
    for s in desired.docker_services() {
        for i in 1..=s.spec.replicas {
            wanted.insert(instance_name(&s.name, i));
        }
        images.extend(s.spec.image.clone());
        volumes |= s.spec.volumes.iter().any(|v| matches!(v.source, MountSource::Volume(_)));
    }
    (wanted, images, volumes)
}

/// Observes Docker for `desired` in one snapshot.
pub async fn observe<E: ContainerEngine>(engine: &E, scope: &str, desired: &Desired) -> Result<Observed, ApplyError> {
    let (wanted, images, volumes) = observe_args(desired);
    let mut observed = engine.observe(scope, &wanted, &images, volumes).await.map_err(ApplyError::Observe)?;
    // A start-first replacement creates `SERVICE-N-next`: another's container under that
    // name is a conflict too. Looked for only when such a replacement is due (it costs a
    // listing of every container).
    let next = next_names_due(desired, &observed);
    if !next.is_empty() {
        let more = engine.observe(scope, &next, &BTreeSet::new(), false).await.map_err(ApplyError::Observe)?;
        observed.foreign.extend(more.foreign);
    }
    Ok(observed)
}

/// The `-next` names of the start-first replacements `desired` would make of what is
/// observed: instances whose template or image changed, without a `-next` of their own.
fn next_names_due(desired: &Desired, observed: &Observed) -> BTreeSet<String> {
    use tend_specs::service::RolloutOrder;
    let owned: BTreeSet<&str> = observed.containers.iter().map(|c| c.name.as_str()).collect();
    let mut due = BTreeSet::new();
    for s in desired.docker_services().filter(|s| s.spec.rollout.order == RolloutOrder::StartFirst) {
        let image_id = s.spec.image.as_deref().and_then(|i| observed.images.get(&plan::normalize_image(i)));
        for c in observed.containers.iter().filter(|c| c.service == s.name && c.instance >= 1) {
            let next = format!("{}{}", instance_name(&s.name, c.instance), crate::reconcile::model::NEXT_SUFFIX);
            let outdated = c.hash != s.hash || image_id.is_some_and(|id| *id != c.image_id && !c.image_id.is_empty());
            if c.name == instance_name(&s.name, c.instance) && outdated && !owned.contains(next.as_str()) {
                due.insert(next);
            }
        }
    }
    due
}

/// What of the specs cannot be had where systemd is not PID 1 (`why`): their systemd
/// services. Scheduled Timers (and Backups) are not in it: the agent's own scheduler runs
/// them then, and on-demand Timers run through `tend job run`.
pub fn unmet_without_systemd(desired: &Desired, why: &str) -> Option<String> {
    let n = desired.systemd_services().count();
    (n > 0).then(|| format!("{why}: {n} systemd service(s) cannot run here (everything else is handled)"))
}

/// Whether the specs need systemd units (systemd services or Timers).
pub fn needs_units(desired: &Desired) -> bool {
    desired.systemd_services().next().is_some() || !desired.timers.is_empty()
}

/// The enabled Timers with a schedule (those of scheduled Backups included): systemd timer
/// units where systemd runs, the agent's own scheduler where it does not.
pub fn scheduled_timers(desired: &Desired) -> usize {
    desired.timers.values().filter(|t| t.spec.enabled && t.spec.schedule.is_some()).count()
}

/// The unit file names the specs would write.
fn wanted_units(desired: &Desired) -> BTreeSet<String> {
    let services = desired.systemd_services().map(|s| format!("{}.service", s.name));
    let timers = desired.timers.values().flat_map(|t| [format!("{}.service", t.name), format!("{}.timer", t.name)]);
    services.chain(timers).collect()
}

/// Observes the unit directory and the states of the units tend cares about (those marked
/// as tend's, and those the specs would write), in one snapshot. Other units in the
/// directory (masked units, templates, the distribution's) are not looked at.
pub async fn observe_units<U: UnitEngine>(
    engine: &U,
    unit_dir: &Path,
    desired: &Desired,
) -> Result<BTreeMap<String, Unit>, ApplyError> {
    let wanted = wanted_units(desired);
    let mut files = engine.list_unit_files(unit_dir).await.map_err(ApplyError::ObserveUnits)?;
    files.retain(|f| wanted.contains(&f.name) || !f.marks.is_empty());
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    let states = engine.states(&names).await.map_err(ApplyError::ObserveUnits)?;
    let states: BTreeMap<&str, &UnitState> = states.iter().map(|s| (s.name.as_str(), s)).collect();
    Ok(files
        .iter()
        .map(|f| {
            let st = states.get(f.name.as_str());
            let active = match st.map(|s| &s.active_state) {
                Some(ActiveState::Active | ActiveState::Reloading) => UnitActive::Active,
                Some(ActiveState::Activating) => UnitActive::Activating,
                Some(ActiveState::Deactivating) => UnitActive::Deactivating,
                Some(ActiveState::Failed) => UnitActive::Failed,
                _ => UnitActive::Inactive,
            };
            let unit = Unit {
                name: f.name.clone(),
                content: f.content.clone(),
                scope: f.marks.get("X-Tend-Scope").cloned(),
                active,
                enabled: st.is_some_and(|s| s.unit_file_state == "enabled"),
                exit_status: st.and_then(|s| s.exec_main_status).filter(|_| active != UnitActive::Active),
            };
            (f.name.clone(), unit)
        })
        .collect())
}

/// Marks what was stopped on purpose, so that an exit nobody crashed into is not held for
/// triage: every target under a maintenance lock now (an operator's `tend maintain`, or a
/// backup quiescing it), and the targets of an interrupted backup that could not be started
/// again. A mark goes once its target runs again.
fn mark_stopped_on_purpose(state: &mut State, observed: &Observed, state_dir: &std::path::Path) {
    use crate::reconcile::state::StopCause;
    for key in observed.maintenance.keys() {
        state.stopped_on_purpose.entry(key.clone()).or_insert(StopCause::Maintenance);
    }
    for (_, journal) in crate::backup::quiesce::interrupted(state_dir) {
        for target in journal.targets() {
            let name = target.split_once(':').map_or(target, |(_, n)| n);
            state.stopped_on_purpose.insert(name.to_string(), StopCause::Backup);
        }
    }
}

/// The targets operators hold for maintenance now (`tend maintain`), by lock key.
pub fn observe_maintenance(
    locks: &crate::maintain::locks::LockDir,
) -> Result<BTreeMap<String, crate::reconcile::model::Maintenance>, ApplyError> {
    // Non-blocking lock attempts on a handful of small files: no need for a blocking thread.
    let held = locks.list().map_err(ApplyError::Locks)?;
    Ok(held.into_iter().map(|(key, h)| (key, maintenance_of(h))).collect())
}

/// The planner's view of a lock holder.
pub fn maintenance_of(h: crate::maintain::locks::Holder) -> crate::reconcile::model::Maintenance {
    crate::reconcile::model::Maintenance { user: h.user, since_ms: h.since_ms, until_ms: h.until_ms, reason: h.reason }
}

/// Observes every engine the pass has. Docker is observed when it is there (and must be
/// when the specs hold docker services); systemd when it is there.
pub async fn observe_all<E: ContainerEngine, U: UnitEngine>(
    engines: &Engines<E, U>,
    options: &Options,
    desired: &Desired,
) -> Result<Observed, ApplyError> {
    let mut observed = match &engines.docker {
        Some(docker) => observe(docker.as_ref(), &options.scope, desired).await?,
        None => Observed::default(),
    };
    if let Some(systemd) = &engines.systemd {
        observed.units = Some(observe_units(systemd.as_ref(), &options.units.unit_dir, desired).await?);
    }
    observed.maintenance = observe_maintenance(&options.locks)?;
    Ok(observed)
}

/// The plan for what the engines show.
pub fn plan_for(
    desired: &Desired,
    observed: &Observed,
    state: &State,
    options: &Options,
    pulled: &BTreeSet<String>,
) -> Plan {
    let ctx = options.units.ctx();
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
    });
    if options.skip_owners.is_empty() { plan } else { plan.without_owners(&options.skip_owners) }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Options of a pass.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scope whose objects this tend owns.
    pub scope: String,
    /// How many steps may run at once.
    pub parallel: usize,
    /// Where and how unit files are written.
    pub units: UnitsConfig,
    /// The spec set the pass applies (handed to `tend job run` for hooks).
    pub specs: PathBuf,
    /// Cancelled when the agent stops: steps not yet started are not started (reported as
    /// cancelled), pauses and waits end; steps already acting finish.
    pub stop: CancellationToken,
    /// Objects (services, Timers, images) left alone this pass: the agent's backoff after
    /// repeated failures. Their steps, and steps that wait for them, are not planned.
    pub skip_owners: BTreeSet<String>,
    /// Make changes now even where a service's update window is closed (`tend apply --now`;
    /// never set by the agent).
    pub ignore_windows: bool,
    /// The maintenance lock directory: targets an operator holds are observed and left
    /// alone, and each step holds its target's lock (shared) while it acts.
    pub locks: crate::maintain::locks::LockDir,
}

/// Where tend writes unit files and their environment files, and what their jobs run.
#[derive(Debug, Clone)]
pub struct UnitsConfig {
    /// The scope (marked in every unit file).
    pub scope: String,
    /// The unit directory (`/etc/systemd/system`).
    pub unit_dir: PathBuf,
    /// Where environment files with secrets go (`/etc/tend/env`), mode 0700.
    pub env_dir: PathBuf,
    /// The state directory (for `tend job run` in Timers' service units).
    pub state_dir: PathBuf,
    /// The tend binary that Timers' service units run.
    pub tend_bin: PathBuf,
    /// The spec set, which Timers' service units hand to `tend job run`.
    pub specs: PathBuf,
    /// How long the hook jobs tend starts itself wait for an engine (not written into unit
    /// files: jobs systemd starts use the default).
    pub timeouts: crate::engine::Timeouts,
}

impl UnitsConfig {
    /// The rendering context.
    pub fn ctx(&self) -> crate::reconcile::unit_files::Context<'_> {
        crate::reconcile::unit_files::Context {
            scope: &self.scope,
            tend_bin: &self.tend_bin,
            state_dir: &self.state_dir,
            env_dir: &self.env_dir,
            specs: &self.specs,
        }
    }
}

/// The engines of a pass. Either may be absent: a host without Docker still runs its
/// systemd units, and a host where systemd is not PID 1 still runs its containers.
#[derive(Debug)]
pub struct Engines<E, U> {
    /// Docker.
    pub docker: Option<Arc<E>>,
    /// systemd.
    pub systemd: Option<Arc<U>>,
}

/// One full pass: lock the state, observe, plan, pull, re-plan, execute, record.
pub async fn apply<E: ContainerEngine, U: UnitEngine>(
    engines: Arc<Engines<E, U>>,
    desired: Arc<Desired>,
    state_dir: &StateDir,
    options: &Options,
) -> Result<Report, ApplyError> {
    let span =
        info_span!("pass", scope = %options.scope, services = desired.services.len(), timers = desired.timers.len());
    async move {
        let mut state = state_dir.load()?;
        let loaded_marks = state.stopped_on_purpose.clone();
        // A backup or restore killed while its services were stopped: they are started
        // again first, so the host is as it was before that run.
        let (docker, systemd) = (engines.docker.as_deref(), engines.systemd.as_deref());
        for (backup, r) in crate::backup::quiesce::recover(docker, systemd, Some(&desired), state_dir.path()).await {
            match r {
                Ok(()) => info!(%backup, "started again the services an interrupted backup had stopped"),
                Err(e) => warn!(%backup, error = %chain(&e), "the services an interrupted backup had stopped are not all back"),
            }
        }
        let mut observed = observe_all(&engines, options, &desired).await?;
        mark_stopped_on_purpose(&mut state, &observed, state_dir.path());
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

/// What a step's task reports to [`execute`].
enum Event {
    /// The step's rollout pause is over, or tend is stopping (`cancelled`).
    Paused { id: usize, cancelled: bool },
    /// The step ran.
    Finished { id: usize, outcome: Outcome },
}

/// The tasks of a plan's execution: steps pausing (they take no slot) and steps acting.
#[derive(Default)]
struct Tasks {
    set: JoinSet<Event>,
    pausing: BTreeMap<tokio::task::Id, usize>,
    acting: BTreeMap<tokio::task::Id, usize>,
}

/// Where an execution of a plan stands.
struct Progress<'p> {
    plan: &'p Plan,
    steps: BTreeMap<usize, &'p Step>,
    outcomes: BTreeMap<usize, Outcome>,
    /// Steps waiting for their prerequisites.
    waiting: BTreeSet<usize>,
    /// Steps whose prerequisites are done, waiting for a slot: by (starts new work, id), so
    /// a continuation of begun work comes first.
    ready: BTreeSet<(bool, usize)>,
    /// When each step began, its pause included.
    began: BTreeMap<usize, Instant>,
    tasks: Tasks,
}

impl<'p> Progress<'p> {
    fn new(plan: &'p Plan) -> Self {
        let steps: BTreeMap<usize, &Step> = plan.steps.iter().map(|s| (s.id, s)).collect();
        let waiting = steps.keys().copied().collect();
        let (outcomes, ready, began, tasks) = Default::default();
        Self { plan, steps, outcomes, waiting, ready, began, tasks }
    }

    /// A step whose prerequisites are done: it pauses first, or waits for a slot.
    fn make_ready(&mut self, id: usize, stop: &CancellationToken) {
        let step = self.steps[&id];
        if step.pause_ms > 0 && !self.began.contains_key(&id) {
            self.began.insert(id, Instant::now());
            let task = self.tasks.set.spawn(pause(step, stop.clone()));
            self.tasks.pausing.insert(task.id(), id);
        } else {
            self.began.entry(id).or_insert_with(Instant::now);
            self.ready.insert((!continues_chain(self.plan, step, &self.outcomes), id));
        }
    }

    /// Records what a task reported.
    fn receive(&mut self, event: Result<(tokio::task::Id, Event), tokio::task::JoinError>, stop: &CancellationToken) {
        match event {
            Ok((task, Event::Paused { id, cancelled })) => {
                self.tasks.pausing.remove(&task);
                if cancelled {
                    self.outcomes.insert(id, Outcome::Cancelled);
                } else {
                    self.make_ready(id, stop);
                }
            }
            Ok((task, Event::Finished { id, outcome })) => {
                self.tasks.acting.remove(&task);
                self.outcomes.insert(id, outcome);
            }
            Err(join_error) => {
                // A panicking step: it failed, and what waits for it is skipped.
                warn!(error = %join_error, "a step task failed");
                let task = join_error.id();
                if let Some(id) = self.tasks.acting.remove(&task).or_else(|| self.tasks.pausing.remove(&task)) {
                    self.outcomes.insert(id, Outcome::Failed { error: format!("step task failed: {join_error}") });
                }
            }
        }
    }
}

/// Executes a plan: each step once its prerequisites succeeded, at most `parallel` acting
/// at once. A free slot goes first to a step that continues work begun on its object (a
/// replacement's create after its remove, the await after that create), only then to the
/// next step in plan order: so a stop-first replacement is one stop followed at once by
/// its create, and however many services a plan replaces, at most `parallel` of them are
/// down at once. Rollout pauses take no slot.
pub async fn execute<E: ContainerEngine, U: UnitEngine>(
    engines: Arc<Engines<E, U>>,
    desired: Arc<Desired>,
    plan: &Plan,
    options: &Options,
) -> BTreeMap<usize, Outcome> {
    let mut p = Progress::new(plan);
    let slots = options.parallel.max(1);
    // Every step's error is shown, logged and recorded through it: an engine may echo a
    // request, secrets and all.
    let redactor = Arc::new(crate::support::redact::Redactor::of_desired(&desired));
    loop {
        let mut again = true;
        while again {
            for id in settle(plan, &p.steps, options, &mut p.waiting, &mut p.outcomes) {
                p.make_ready(id, &options.stop);
            }
            again = false;
            while p.tasks.acting.len() < slots
                && let Some((_, id)) = p.ready.pop_first()
            {
                let step = p.steps[&id];
                if options.stop.is_cancelled() && !continues_started_work(plan, step, &p.outcomes) {
                    p.outcomes.insert(id, Outcome::Cancelled);
                    // Its dependents can be settled now.
                    again = true;
                    continue;
                }
                let started = p.began.get(&id).copied().unwrap_or_else(Instant::now);
                let run =
                    run_one(engines.clone(), desired.clone(), options.clone(), step.clone(), started, redactor.clone());
                let task = p.tasks.set.spawn(run);
                p.tasks.acting.insert(task.id(), id);
            }
        }
        let Some(event) = p.tasks.set.join_next_with_id().await else { break };
        p.receive(event, &options.stop);
    }
    p.outcomes
}

/// Settles the waiting steps that can be: skipped behind a step that did not succeed,
/// cancelled when tend is stopping, or runnable (returned in plan order).
fn settle(
    plan: &Plan,
    steps: &BTreeMap<usize, &Step>,
    options: &Options,
    waiting: &mut BTreeSet<usize>,
    outcomes: &mut BTreeMap<usize, Outcome>,
) -> Vec<usize> {
    let mut runnable = Vec::new();
    let mut progressed = true;
    while progressed {
        progressed = false;
        for id in waiting.clone() {
            let step = steps[&id];
            let not_ok = |a: &&usize| matches!(outcomes.get(a), Some(Outcome::Failed { .. } | Outcome::Skipped { .. }));
            if let Some(bad) = step.after.iter().find(not_ok) {
                outcomes.insert(id, Outcome::Skipped { because_of: *bad });
            } else if options.stop.is_cancelled() && !continues_started_work(plan, step, outcomes) {
                outcomes.insert(id, Outcome::Cancelled);
            } else if step.after.iter().all(|a| matches!(outcomes.get(a), Some(Outcome::Done { .. }))) {
                runnable.push(id);
            } else {
                continue;
            }
            waiting.remove(&id);
            progressed = true;
        }
    }
    runnable
}

/// A step's rollout pause, ended early when tend stops.
fn pause(step: &Step, stop: CancellationToken) -> impl Future<Output = Event> + Send + 'static {
    let (id, pause_ms) = (step.id, step.pause_ms);
    async move {
        info!(pause_ms, "pausing before step");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(pause_ms)) => Event::Paused { id, cancelled: false },
            () = stop.cancelled() => Event::Paused { id, cancelled: true },
        }
    }
    .instrument(step_span(step))
}

fn step_span(step: &Step) -> tracing::Span {
    info_span!("step", id = step.id, action = action_name(&step.action), target = %target(&step.action))
}

/// Runs one step under its target's lock and reports how it ended, its error with every
/// secret of the set redacted.
fn run_one<E: ContainerEngine, U: UnitEngine>(
    engines: Arc<Engines<E, U>>,
    desired: Arc<Desired>,
    options: Options,
    step: Step,
    started: Instant,
    redactor: Arc<crate::support::redact::Redactor>,
) -> impl Future<Output = Event> + Send + 'static {
    let span = step_span(&step);
    async move {
        let result = match lock_target(&options.locks, &step.action) {
            Ok(guard) => {
                let r = run_step(&engines, &desired, &options, &step).await;
                let gone = gone_target(&desired, &step.action);
                if r.is_ok()
                    && gone.is_none()
                    && let Some(guard) = &guard
                {
                    record_pid(&engines, &options, &step.action, guard.key()).await;
                }
                drop(guard);
                if r.is_ok()
                    && let Some(key) = gone
                {
                    remove_lock_file(&options.locks, &key);
                }
                r
            }
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(()) => {
                info!(reason = %step.reason, "done");
                Outcome::Done { ms: started.elapsed().as_millis() as u64 }
            }
            Err(e) => {
                let error = redactor.redact(&chain(&e));
                warn!(%error, "step failed");
                Outcome::Failed { error }
            }
        };
        Event::Finished { id: step.id, outcome }
    }
    .instrument(span)
}

/// Takes the shared lock of the target `action` acts on, for as long as the guard lives;
/// fails when an operator holds it. Steps that act on no single target take none.
fn lock_target(
    locks: &crate::maintain::locks::LockDir,
    action: &Action,
) -> Result<Option<crate::maintain::locks::SharedGuard>, StepError> {
    let Some(key) = crate::maintain::lock_key(action) else { return Ok(None) };
    // A non-blocking attempt: no need for a blocking thread.
    match locks.try_shared(&key)? {
        crate::maintain::locks::Shared::Taken(guard) => Ok(Some(guard)),
        crate::maintain::locks::Shared::Maintenance(holder) => {
            Err(StepError::Maintenance { target: key, holder: holder.describe() })
        }
    }
}

/// The lock key of the target `action` removes when the specs no longer want that target
/// (an instance of a removed or scaled-down service, a unit no spec writes): its lock file
/// can go once the step is done.
fn gone_target(desired: &Desired, action: &Action) -> Option<String> {
    let wanted = match action {
        Action::Remove { service, instance, name, .. } if !name.ends_with(crate::reconcile::model::NEXT_SUFFIX) => {
            desired
                .services
                .get(service)
                .is_some_and(|s| s.spec.runtime == tend_specs::service::Runtime::Docker && *instance <= s.spec.replicas)
        }
        Action::RemoveUnit { unit } => wanted_units(desired).contains(unit),
        _ => return None,
    };
    if wanted { None } else { crate::maintain::lock_key(action) }
}

/// Removes the lock file of a target that is gone, unless someone holds it (best effort:
/// a lock file left behind costs nothing but a directory entry; the lock directory is a
/// tmpfs emptied at boot).
fn remove_lock_file(locks: &crate::maintain::locks::LockDir, key: &str) {
    match locks.remove_if_free(key) {
        Ok(true) => tracing::debug!(target = key, "removed the lock file of a target that is gone"),
        Ok(false) => {}
        Err(e) => warn!(target = key, error = %chain(&e), "removing the lock file of a target that is gone"),
    }
}

/// After a step started an instance or a unit, records its main pid in the target's lock
/// file (best effort: the pid is for operators' tools, nothing in tend depends on it).
async fn record_pid<E: ContainerEngine, U: UnitEngine>(
    engines: &Engines<E, U>,
    options: &Options,
    action: &Action,
    key: &str,
) {
    let pid = match action {
        Action::Create { name, .. } | Action::Start { name, .. } => match &engines.docker {
            Some(d) => d.probe(name).await.ok().flatten().and_then(|p| p.pid),
            None => return,
        },
        Action::Rename { to, .. } => match &engines.docker {
            Some(d) => d.probe(to).await.ok().flatten().and_then(|p| p.pid),
            None => return,
        },
        Action::StartUnit { unit } | Action::RestartUnit { unit } if unit.ends_with(".service") => {
            match &engines.systemd {
                Some(s) => s.states(std::slice::from_ref(unit)).await.ok().and_then(|v| v.first()?.main_pid),
                None => return,
            }
        }
        Action::Remove { .. } | Action::Stop { .. } | Action::StopUnit { .. } | Action::RemoveUnit { .. } => None,
        _ => return,
    };
    if let Err(e) = options.locks.record_pid(key, pid) {
        warn!(target = key, error = %chain(&e), "recording the pid in the lock file");
    }
}

/// Whether `step` completes work already begun on its object in this pass: a
/// replacement's create after its remove, a rename after its create. A stopping tend still
/// runs those (unpaused), so stopping never leaves a service half replaced and down.
fn continues_started_work(plan: &Plan, step: &Step, outcomes: &BTreeMap<usize, Outcome>) -> bool {
    let Some(owner) = step.action.owner() else { return false };
    step.pause_ms == 0
        && !matches!(step.action, Action::Await { .. })
        && step.after.iter().any(|a| {
            matches!(outcomes.get(a), Some(Outcome::Done { .. }))
                && plan.steps.iter().any(|s| s.id == *a && s.action.owner().as_deref() == Some(owner.as_str()))
        })
}

/// Whether `step` continues work begun on its object in this pass: a step it waits for,
/// on the same object, is done. Such a step gets a free slot before any step that would
/// start work on another object.
fn continues_chain(plan: &Plan, step: &Step, outcomes: &BTreeMap<usize, Outcome>) -> bool {
    let Some(owner) = step.action.owner() else { return false };
    step.after.iter().any(|a| {
        matches!(outcomes.get(a), Some(Outcome::Done { .. }))
            && plan.steps.iter().any(|s| s.id == *a && s.action.owner().as_deref() == Some(owner.as_str()))
    })
}

/// A short name for logs.
pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::PullImage { .. } => "pull",
        Action::CreateNetwork { .. } => "create-network",
        Action::CreateVolume { .. } => "create-volume",
        Action::Create { .. } => "create",
        Action::Start { .. } => "start",
        Action::Remove { .. } => "remove",
        Action::Stop { .. } => "stop",
        Action::Rename { .. } => "rename",
        Action::Await { .. } => "await",
        Action::Hold { .. } => "hold",
        Action::RemoveNetwork { .. } => "remove-network",
        Action::WriteUnit { .. } => "write-unit",
        Action::RemoveUnit { .. } => "remove-unit",
        Action::DaemonReload => "daemon-reload",
        Action::RunJob { .. } => "run-job",
        Action::EnableUnits { .. } => "enable",
        Action::DisableUnits { .. } => "disable",
        Action::StartUnit { .. } => "start-unit",
        Action::RestartUnit { .. } => "restart-unit",
        Action::StopUnit { .. } => "stop-unit",
    }
}

/// What a step acts on, for logs and tables.
pub fn target(a: &Action) -> String {
    match a {
        Action::PullImage { image } => image.clone(),
        Action::CreateNetwork { network } | Action::RemoveNetwork { network, .. } => format!("network/{network}"),
        Action::CreateVolume { volume } => format!("volume/{volume}"),
        Action::Create { name, .. }
        | Action::Start { name, .. }
        | Action::Remove { name, .. }
        | Action::Stop { name, .. }
        | Action::Hold { name, .. } => name.clone(),
        Action::Rename { from, to, .. } => format!("{from} → {to}"),
        Action::Await { service, name, .. } => name.clone().unwrap_or_else(|| service.clone()),
        Action::WriteUnit { unit, .. }
        | Action::RemoveUnit { unit }
        | Action::StartUnit { unit }
        | Action::RestartUnit { unit }
        | Action::StopUnit { unit } => unit.clone(),
        Action::DaemonReload => "systemd".into(),
        Action::RunJob { job } => format!("job/{job}"),
        Action::EnableUnits { units } | Action::DisableUnits { units } => units.join(" "),
    }
}

async fn run_step<E: ContainerEngine, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    options: &Options,
    step: &Step,
) -> Result<(), StepError> {
    let scope = options.scope.as_str();
    let docker = || engines.docker.as_deref().ok_or(StepError::NoEngine("Docker"));
    let systemd = || engines.systemd.as_deref().ok_or(StepError::NoEngine("systemd (as PID 1)"));
    let unit_dir = options.units.unit_dir.as_path();
    match &step.action {
        Action::PullImage { image } => docker()?.pull(image).await?,
        Action::CreateNetwork { network } => docker()?.create_network(scope, network).await?,
        Action::CreateVolume { volume } => docker()?.create_volume(scope, volume).await?,
        Action::Create { service, instance, name } => {
            let spec = desired.services.get(service).ok_or_else(|| StepError::NoSpec(service.clone()))?;
            docker()?.create_and_start(scope, spec, *instance, name).await?;
        }
        Action::Start { id, name, .. } => docker()?.start(id, name).await?,
        Action::Remove { id, name, stop_timeout_s, .. } => {
            docker()?.stop_and_remove(id, name, *stop_timeout_s).await?;
        }
        Action::Stop { id, name, stop_timeout_s, .. } => docker()?.stop(id, name, *stop_timeout_s).await?,
        Action::Rename { from, to, .. } => docker()?.rename(from, to).await?,
        Action::Hold { .. } => {}
        Action::RemoveNetwork { network, id } => docker()?.remove_network(id, network).await?,
        Action::Await { service, name, condition, timeout_ms } => {
            let timeout = Duration::from_millis(*timeout_ms);
            tokio::select! {
                r = await_condition(docker()?, scope, service, name.as_deref(), *condition, timeout) => r?,
                // Waiting is not acting: a stopping tend stops waiting (nothing is left half done).
                () = options.stop.cancelled() => return Err(StepError::Cancelled),
            }
        }
        Action::WriteUnit { unit, owner } => {
            let ctx = options.units.ctx();
            let rendered = if let Some(s) = desired.services.get(owner) {
                crate::reconcile::unit_files::render_service(&ctx, s)
            } else if let Some(t) = desired.timers.get(owner) {
                crate::reconcile::unit_files::render_timer(&ctx, t)
            } else {
                return Err(StepError::NoSpec(owner.clone()));
            };
            // The environment file first: the unit names it, and a unit must never start
            // without its secrets.
            if let Some(env) = &rendered.env_file {
                write_env_file(&env.path, &env.content)?;
            }
            let text =
                rendered.units.iter().find(|u| &u.name == unit).ok_or_else(|| StepError::NoSpec(unit.clone()))?;
            systemd()?.write_unit_file(unit_dir, unit, &text.content).await?;
        }
        Action::RemoveUnit { unit } => {
            systemd()?.remove_unit_file(unit_dir, unit).await?;
            if let Some(stem) = unit.strip_suffix(".service") {
                let path = options.units.env_dir.join(format!("{stem}.env"));
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StepError::EnvFile { op: "removing", path, source }),
                }
            }
        }
        Action::DaemonReload => systemd()?.daemon_reload().await?,
        Action::RunJob { job } => run_job(options, job).await?,
        Action::EnableUnits { units } => systemd()?.enable(units).await?,
        Action::DisableUnits { units } => systemd()?.disable(units).await?,
        Action::StartUnit { unit } => {
            systemd()?.start(unit).await?;
        }
        Action::RestartUnit { unit } => {
            systemd()?.restart(unit).await?;
        }
        Action::StopUnit { unit } => {
            systemd()?.stop(unit).await?;
        }
    }
    Ok(())
}

/// Runs a Timer's job to completion through `tend job run` (so its concurrency rule, log
/// and history apply), as a before-start hook; fails unless the job succeeded.
async fn run_job(options: &Options, job: &str) -> Result<(), StepError> {
    let u = &options.units;
    let status = tokio::process::Command::new(&u.tend_bin)
        .arg("--scope")
        .arg(&options.scope)
        .arg("--state-dir")
        .arg(&u.state_dir)
        .args(["job", "run", job])
        .arg(&options.specs)
        .args(["--trigger", "hook"])
        .env(crate::engine::TIMEOUT_ENV, u.timeouts.env_value())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|source| StepError::Hook { job: job.to_string(), why: format!("could not start tend: {source}") })?;
    if status.success() {
        Ok(())
    } else {
        let why = match status.code() {
            Some(code) => format!("it exited with code {code} (see `tend job history {job}`)"),
            None => "it was killed".to_string(),
        };
        Err(StepError::Hook { job: job.to_string(), why })
    }
}

/// Writes an environment file (it holds secrets): mode 0600 from the start, in a 0700
/// directory, atomically (temp file, fsync, rename).
fn write_env_file(path: &Path, content: &str) -> Result<(), StepError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |source| StepError::EnvFile { op: "writing", path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("env")));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

fn describe(p: &Option<Probe>) -> String {
    match p {
        None => "no container".into(),
        Some(p) => {
            let mut s = format!("{:?}", p.state).to_lowercase();
            if p.health != Health::None {
                s.push_str(&format!(", {:?}", p.health).to_lowercase());
            }
            if let Some(c) = p.exit_code {
                s.push_str(&format!(", exit code {c}"));
            }
            s
        }
    }
}

/// Whether a probe meets the condition: Some(true) met, Some(false) not yet, Err never.
fn check(p: &Option<Probe>, condition: Condition) -> Result<bool, String> {
    let Some(p) = p else { return Ok(false) };
    match condition {
        Condition::Started => match p.state {
            RunState::Running => Ok(true),
            RunState::Exited | RunState::Dead => {
                Err(format!("it exited{}", p.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default()))
            }
            _ => Ok(false),
        },
        Condition::Healthy => match (p.state, p.health) {
            (RunState::Running, Health::Healthy | Health::None) => Ok(true),
            (RunState::Running, Health::Unhealthy) => Err("its health check fails".into()),
            (RunState::Exited | RunState::Dead, _) => {
                Err(format!("it exited{}", p.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default()))
            }
            _ => Ok(false),
        },
        Condition::Completed => match (p.state, p.exit_code) {
            (RunState::Exited | RunState::Dead, Some(0)) => Ok(true),
            (RunState::Exited | RunState::Dead, code) => {
                Err(format!("it exited with code {}", code.map_or("?".into(), |c| c.to_string())))
            }
            _ => Ok(false),
        },
    }
}

/// Waits until the container `name`, made from `service`'s spec, is ready as a new instance
/// of it would have to be (healthy, or running without a health check), within the same time.
pub async fn await_ready<E: ContainerEngine>(
    engine: &E,
    name: &str,
    service: &tend_specs::Service,
) -> Result<(), StepError> {
    let timeout = Duration::from_millis(crate::reconcile::plan::ready_timeout_ms(service));
    await_condition(engine, "", &service.name, Some(name), crate::reconcile::plan::ready_condition(service), timeout)
        .await
}

async fn await_condition<E: ContainerEngine>(
    engine: &E,
    scope: &str,
    service: &str,
    name: Option<&str>,
    condition: Condition,
    timeout: Duration,
) -> Result<(), StepError> {
    let started = Instant::now();
    let mut last = String::from("nothing yet");
    loop {
        let names = match name {
            Some(n) => vec![n.to_string()],
            None => engine.instances_of(scope, service).await?,
        };
        let mut all = !names.is_empty();
        for n in &names {
            let p = engine.probe(n).await?;
            match check(&p, condition) {
                Ok(true) => {}
                Ok(false) => {
                    all = false;
                    last = format!("{n}: {}", describe(&p));
                }
                Err(why) => return Err(StepError::Failed { what: n.clone(), condition, why }),
            }
        }
        if names.is_empty() {
            last = format!("no instances of {service}");
        }
        if all {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(StepError::Timeout {
                what: name.unwrap_or(service).to_string(),
                condition,
                waited: timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests;
