//! Apply: observe, plan and execute. Steps run in dependency order with bounded
//! concurrency; a step whose prerequisites failed is skipped, never guessed at. Every step
//! is safe to repeat, and the next pass completes whatever a killed pass left half done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tend_specs::Desired;
use tend_specs::service::{Condition, MountSource};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use crate::engine::{ContainerEngine, EngineError, Probe};
use crate::model::{Health, Observed, RunState, instance_name};
use crate::plan::{self, Action, Input, Plan, Reason, Step};
use crate::state::{Hold, RestartRecord, State, StateDir, StateError};

/// Errors of a pass.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Observing live state failed: nothing was planned.
    #[error("observing live state (nothing was changed)")]
    Observe(#[source] EngineError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
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
}

impl Report {
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

/// Observes live state for `desired` in one snapshot.
pub async fn observe<E: ContainerEngine>(engine: &E, scope: &str, desired: &Desired) -> Result<Observed, ApplyError> {
    let (wanted, images, volumes) = observe_args(desired);
    engine.observe(scope, &wanted, &images, volumes).await.map_err(ApplyError::Observe)
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
}

/// One full pass: lock the state, observe, plan, pull, re-plan, execute, record.
pub async fn apply<E: ContainerEngine>(
    engine: Arc<E>,
    desired: Arc<Desired>,
    state_dir: &StateDir,
    options: &Options,
) -> Result<Report, ApplyError> {
    let span = info_span!("pass", scope = %options.scope, services = desired.services.len());
    async move {
        let mut state = state_dir.load()?;
        let observed = observe(engine.as_ref(), &options.scope, &desired).await?;
        let pulled = BTreeSet::new();
        let mut plan = plan::plan(Input {
            desired: &desired,
            observed: &observed,
            state: &state,
            now_ms: now_ms(),
            pulled: &pulled,
        });
        let mut report = Report::default();
        if plan.pulls().next().is_some() {
            // Prepare phase: pull, then plan again against what the pulls brought.
            let pull_plan = Plan { steps: plan.pulls().cloned().collect(), notes: vec![] };
            let outcomes = execute(engine.clone(), desired.clone(), &pull_plan, options).await;
            let mut pulled = BTreeSet::new();
            for step in &pull_plan.steps {
                let outcome = outcomes.get(&step.id).cloned().unwrap_or(Outcome::Skipped { because_of: 0 });
                if let (Action::PullImage { image }, Outcome::Done { .. }) = (&step.action, &outcome) {
                    pulled.insert(image.clone());
                }
                report.pulls.push((step.clone(), outcome));
            }
            let observed = observe(engine.as_ref(), &options.scope, &desired).await?;
            // Failed pulls are not retried in this pass: treat them as pulled, so the
            // re-plan does not pull again; creates that need the image then fail clearly.
            for (step, _) in &report.pulls {
                if let Action::PullImage { image } = &step.action {
                    pulled.insert(image.clone());
                }
            }
            plan = plan::plan(Input {
                desired: &desired,
                observed: &observed,
                state: &state,
                now_ms: now_ms(),
                pulled: &pulled,
            });
        }
        let outcomes = execute(engine.clone(), desired.clone(), &plan, options).await;
        // A release is used up once its instance runs (also when started by hand), so a
        // later unexpected exit is held again.
        let before = state.released.len();
        state
            .released
            .retain(|name, _| !observed.containers.iter().any(|c| c.name == *name && c.state == RunState::Running));
        let released_changed = state.released.len() != before;
        if record(&mut state, &plan, &outcomes, now_ms()) || released_changed {
            state_dir.save(&state)?;
        }
        report.plan = plan;
        report.outcomes = outcomes;
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
                    Hold { service: service.clone(), instance: *instance, since_ms: now_ms, exit_code: *exit_code },
                );
            }
            (Action::Start { name, .. }, Reason::Exited { attempt, .. }) => {
                state.restarts.insert(name.clone(), RestartRecord { attempts: *attempt, last_ms: now_ms });
                state.released.remove(name);
            }
            (Action::Start { name, .. }, _) => {
                state.released.remove(name);
            }
            (Action::Create { name, .. } | Action::Remove { name, .. }, _) => {
                state.restarts.remove(name);
                state.released.remove(name);
            }
            _ => {}
        }
    }
    *state != before
}

/// Executes a plan: each step once its prerequisites succeeded, at most `parallel` at once.
pub async fn execute<E: ContainerEngine>(
    engine: Arc<E>,
    desired: Arc<Desired>,
    plan: &Plan,
    options: &Options,
) -> BTreeMap<usize, Outcome> {
    let mut outcomes: BTreeMap<usize, Outcome> = BTreeMap::new();
    let mut pending: BTreeMap<usize, &Step> = plan.steps.iter().map(|s| (s.id, s)).collect();
    let permits = Arc::new(Semaphore::new(options.parallel.max(1)));
    let mut running: JoinSet<(usize, Outcome)> = JoinSet::new();
    loop {
        // Resolve what can be resolved: skip steps behind a failure, start ready ones.
        let mut progressed = true;
        while progressed {
            progressed = false;
            let ids: Vec<usize> = pending.keys().copied().collect();
            for id in ids {
                let step = pending[&id];
                if let Some(bad) = step
                    .after
                    .iter()
                    .find(|a| matches!(outcomes.get(a), Some(Outcome::Failed { .. } | Outcome::Skipped { .. })))
                {
                    outcomes.insert(id, Outcome::Skipped { because_of: *bad });
                    pending.remove(&id);
                    progressed = true;
                } else if step.after.iter().all(|a| matches!(outcomes.get(a), Some(Outcome::Done { .. }))) {
                    pending.remove(&id);
                    let (engine, desired, permits, step, scope) =
                        (engine.clone(), desired.clone(), permits.clone(), step.clone(), options.scope.clone());
                    let span = info_span!("step", id = step.id, action = action_name(&step.action), target = %target(&step.action));
                    running.spawn(
                        async move {
                            let started = Instant::now();
                            if step.pause_ms > 0 {
                                info!(pause_ms = step.pause_ms, "pausing before step");
                                tokio::time::sleep(Duration::from_millis(step.pause_ms)).await;
                            }
                            let _permit = permits.acquire_owned().await;
                            let result = run_step(engine.as_ref(), &desired, &scope, &step).await;
                            let outcome = match result {
                                Ok(()) => {
                                    info!(reason = %step.reason, "done");
                                    Outcome::Done { ms: started.elapsed().as_millis() as u64 }
                                }
                                Err(e) => {
                                    let error = chain(&e);
                                    warn!(%error, "step failed");
                                    Outcome::Failed { error }
                                }
                            };
                            (step.id, outcome)
                        }
                        .instrument(span),
                    );
                }
            }
        }
        match running.join_next().await {
            Some(Ok((id, outcome))) => {
                outcomes.insert(id, outcome);
            }
            Some(Err(join_error)) => {
                // A panicking step: record it against every step still unresolved.
                warn!(error = %join_error, "a step task failed");
                let lost: Vec<usize> = plan
                    .steps
                    .iter()
                    .map(|s| s.id)
                    .filter(|id| !outcomes.contains_key(id) && !pending.contains_key(id))
                    .collect();
                for id in lost {
                    outcomes.insert(id, Outcome::Failed { error: format!("step task failed: {join_error}") });
                }
            }
            None => break,
        }
    }
    outcomes
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
        Action::Rename { .. } => "rename",
        Action::Await { .. } => "await",
        Action::Hold { .. } => "hold",
        Action::RemoveNetwork { .. } => "remove-network",
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
        | Action::Hold { name, .. } => name.clone(),
        Action::Rename { from, to, .. } => format!("{from} → {to}"),
        Action::Await { service, name, .. } => name.clone().unwrap_or_else(|| service.clone()),
    }
}

async fn run_step<E: ContainerEngine>(
    engine: &E,
    desired: &Desired,
    scope: &str,
    step: &Step,
) -> Result<(), StepError> {
    match &step.action {
        Action::PullImage { image } => engine.pull(image).await?,
        Action::CreateNetwork { network } => engine.create_network(scope, network).await?,
        Action::CreateVolume { volume } => engine.create_volume(scope, volume).await?,
        Action::Create { service, instance, name } => {
            let spec = desired.services.get(service).ok_or_else(|| StepError::NoSpec(service.clone()))?;
            engine.create_and_start(scope, spec, *instance, name).await?;
        }
        Action::Start { id, name, .. } => engine.start(id, name).await?,
        Action::Remove { id, name, stop_timeout_s, .. } => engine.stop_and_remove(id, name, *stop_timeout_s).await?,
        Action::Rename { from, to, .. } => engine.rename(from, to).await?,
        Action::Hold { .. } => {}
        Action::RemoveNetwork { network, id } => engine.remove_network(id, network).await?,
        Action::Await { service, name, condition, timeout_ms } => {
            await_condition(engine, scope, service, name.as_deref(), *condition, Duration::from_millis(*timeout_ms))
                .await?;
        }
    }
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
