//! Executing a plan: steps run in dependency order with bounded concurrency (free slots go
//! first to work already begun, so a replacement is one stop followed at once by its
//! start); a step whose prerequisites failed is skipped, never guessed at; rollout pauses
//! hold no slot; every step is safe to repeat. Each step holds its target's maintenance
//! lock (shared) while it acts.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tend_specs::Desired;
use tend_specs::service::Condition;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::engine::systemd::{SystemdError, UnitEngine};
use crate::engine::{ContainerEngine, EngineError, Engines, Probe};
use crate::reconcile::model::{Health, RunState};
use crate::reconcile::options::Options;
use crate::reconcile::plan::{Action, Plan, Step};
use crate::support::chain;

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
        let result = match lock_target(&options.host.locks, &step.action) {
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
                    remove_lock_file(&options.host.locks, &key);
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
                .is_some_and(|s| s.spec.runtime == tend_specs::service::Runtime::Docker && s.runs_instance(*instance))
        }
        Action::RemoveUnit { unit } => crate::reconcile::observe::wanted_units(desired).contains(unit),
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
    if let Err(e) = options.host.locks.record_pid(key, pid) {
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
    let scope = options.host.scope.as_str();
    let docker = || engines.docker.as_deref().ok_or(StepError::NoEngine("Docker"));
    let systemd = || engines.systemd.as_deref().ok_or(StepError::NoEngine("systemd (as PID 1)"));
    let unit_dir = options.host.unit_dir.as_path();
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
            let ctx = options.unit_context();
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
                let path = options.host.env_dir.join(format!("{stem}.env"));
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
    let u = &options.host;
    let status = tokio::process::Command::new(&u.tend_bin)
        .arg("--scope")
        .arg(&options.host.scope)
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
