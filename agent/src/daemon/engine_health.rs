//! The agent's engines: connecting to Docker and systemd (Docker may come and go), and
//! whether each answers — unresponsive (a call timed out) or unavailable (it cannot be
//! reached) — for `tend status`, the `tend_engine_up` metric and the passes, which plan
//! nothing from what they could not observe.

use std::sync::Arc;

use tend_specs::Desired;
use tracing::{debug, info, warn};

pub(super) use crate::daemon::shared::{Engine, LiveEngines};
use crate::daemon::shared::{Shared, lock};
use crate::engine::docker::DockerEngine;
use crate::engine::systemd::SystemdEngine;
use crate::reconcile::apply;
use crate::reconcile::observe::ObserveError;
use crate::reconcile::status::EngineProblem;

const UNRESPONSIVE: &str = "unresponsive";
/// An engine's state, and the kind of error that makes it so, when it cannot be reached.
pub(super) const UNAVAILABLE: &str = "unavailable";
/// The kind of error that makes an engine unresponsive.
pub(super) const UNRESPONSIVE_KIND: &str = "timeout";

/// Records how `engine` answered a call: `None` when it did; else the failed call's kind
/// label and error chain. A `timeout` makes it unresponsive and `unavailable` unreachable
/// (reported only for an engine reached before or needed by the specs); any other failure
/// is an answer too (the engine refused something). Changes are logged once.
pub(super) fn note_engine(shared: &Shared, engine: Engine, failure: Option<(&'static str, String)>) {
    let label = engine.label();
    let state = match &failure {
        Some(("timeout", _)) => Some(UNRESPONSIVE),
        Some(("unavailable", _)) => Some(UNAVAILABLE),
        _ => None,
    };
    let reached = {
        let mut e = lock(&shared.engines);
        if state != Some(UNAVAILABLE) {
            e.reached.insert(label);
        }
        e.reached.contains(label)
    };
    let Some((state, (kind, error))) = state.zip(failure) else {
        shared.metrics.engine_up(label, true);
        if let Some(was) = lock(&shared.agent).engines.remove(label) {
            info!(was = %was.state, "{} answers again", engine.name());
        }
        return;
    };
    if state == UNAVAILABLE && !reached && !needed(shared, engine) {
        return;
    }
    shared.metrics.engine_error(label, kind);
    if reached || needed(shared, engine) {
        shared.metrics.engine_up(label, false);
    }
    let mut a = lock(&shared.agent);
    let since_ms = match a.engines.get(label) {
        Some(p) if p.state == state => p.since_ms,
        _ => {
            warn!(%error, "{} is {state}", engine.name());
            crate::support::now_ms()
        }
    };
    a.engines.insert(label.to_string(), EngineProblem { state: state.to_string(), error, since_ms });
}

/// Whether the spec set in use needs `engine`.
fn needed(shared: &Shared, engine: Engine) -> bool {
    shared.current().is_some_and(|s| match engine {
        Engine::Docker => s.desired.docker_services().next().is_some(),
        Engine::Systemd => crate::reconcile::observe::needs_units(&s.desired),
    })
}

/// The engine an observation could not use, with the kind label and chain of its error.
pub(super) fn engine_failure(e: &ObserveError) -> Option<(Engine, &'static str, String)> {
    match e {
        ObserveError::Docker(e) => Some((Engine::Docker, e.kind(), crate::support::chain(e))),
        ObserveError::Units(e) => Some((Engine::Systemd, e.kind(), crate::support::chain(e))),
        ObserveError::Locks(_) => None,
    }
}

/// [`engine_failure`] of a pass's error.
pub(super) fn pass_engine_failure(e: &apply::ApplyError) -> Option<(Engine, &'static str, String)> {
    match e {
        apply::ApplyError::Observe(e) => engine_failure(e),
        _ => None,
    }
}

/// The engines that are unresponsive now.
pub(super) fn unresponsive(shared: &Shared) -> Vec<Engine> {
    let a = lock(&shared.agent);
    let down = |e: &Engine| a.engines.get(e.label()).is_some_and(|p| p.state == UNRESPONSIVE);
    [Engine::Docker, Engine::Systemd].into_iter().filter(down).collect()
}

/// Whether the specs in use need Docker and the agent is not connected to it (no socket,
/// connection refused): their Docker part cannot be observed. Noted as `unavailable`.
pub(super) fn docker_unreachable(shared: &Shared) -> bool {
    let unreachable = lock(&shared.engines).docker.is_none() && needed(shared, Engine::Docker);
    if unreachable && !lock(&shared.agent).engines.contains_key(Engine::Docker.label()) {
        // Not noted when it was tried: the specs that need it were not in use yet.
        let error = lock(&shared.engines).docker_error.clone().unwrap_or_else(|| "not connected".into());
        note_engine(shared, Engine::Docker, Some((UNAVAILABLE, error)));
    }
    unreachable
}

/// Lets go of a Docker that cannot be reached (`error`): passes apply the rest of the specs
/// and leave Docker's part out until a connection is made again (by the next pass, or the
/// event watcher, whose new stream then wakes the loop).
pub(super) fn lose_docker(shared: &Shared, error: String) {
    let mut e = lock(&shared.engines);
    e.docker = None;
    e.docker_error = Some(error);
}

/// The engines the agent cannot observe now: unresponsive ones, and an unreachable Docker
/// the specs need.
pub(super) fn unobservable(shared: &Shared) -> Vec<Engine> {
    let mut engines = unresponsive(shared);
    if !engines.contains(&Engine::Docker) && docker_unreachable(shared) {
        engines.push(Engine::Docker);
    }
    engines
}

/// `Docker is unresponsive: listing containers: Docker did not answer within 30s`.
pub(super) fn problem_line(shared: &Shared, engine: Engine) -> String {
    match lock(&shared.agent).engines.get(engine.label()) {
        Some(p) => format!("{} is {}: {}", engine.name(), p.state, p.error),
        None => format!("{} answers", engine.name()),
    }
}

/// `desired` without what runs on `engines`.
pub(super) fn without(mut desired: Desired, engines: &[Engine]) -> Desired {
    use tend_specs::service::Runtime;
    for engine in engines {
        let runtime = match engine {
            Engine::Docker => Runtime::Docker,
            Engine::Systemd => Runtime::Systemd,
        };
        desired.services.retain(|_, s| s.spec.runtime != runtime);
        if *engine == Engine::Systemd {
            desired.timers.clear();
        }
    }
    desired
}

/// Connects to the engines not connected yet. Docker may come and go. systemd is found
/// once: where it is not PID 1 it is never used; one that does not answer is tried again.
pub(super) async fn connect_engines(shared: &Shared) {
    let timeouts = shared.settings.host.timeouts;
    let docker_missing = lock(&shared.engines).docker.is_none();
    if docker_missing {
        match DockerEngine::connect(timeouts).await {
            Ok(d) => {
                info!("connected to Docker");
                let mut handles = lock(&shared.engines);
                handles.docker = Some(Arc::new(d));
                handles.docker_error = None;
                drop(handles);
                note_engine(shared, Engine::Docker, None);
            }
            Err(e) => {
                debug!(error = %crate::support::chain(&e), "Docker is not available");
                lock(&shared.engines).docker_error = Some(crate::support::chain(&e));
                note_engine(shared, Engine::Docker, Some((e.kind(), crate::support::chain(&e))));
            }
        }
    }
    let systemd_unknown = {
        let e = lock(&shared.engines);
        e.systemd.is_none() && e.systemd_missing.is_none()
    };
    if systemd_unknown {
        match SystemdEngine::connect(timeouts).await {
            Ok(s) => {
                lock(&shared.engines).systemd = Some(Arc::new(s));
                note_engine(shared, Engine::Systemd, None);
            }
            Err(e) if e.kind() == "timeout" => {
                note_engine(shared, Engine::Systemd, Some((e.kind(), crate::support::chain(&e))))
            }
            Err(e) => {
                info!(why = %crate::support::chain(&e), "systemd is not used (Timers are scheduled by the agent)");
                lock(&shared.engines).systemd_missing = Some(crate::support::chain(&e));
            }
        }
    }
}
