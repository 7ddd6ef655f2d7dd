//! The engine layer: the narrow traits between tend and its engines, in tend's own types.
//! `container`: [`ContainerEngine`] is what a pass needs of a container engine (observe,
//! create, start, stop, remove, probe); [`ContainerRuns`] adds what one-off containers and
//! execs need (a job's run, a drill's scratch container, a dump streamed out of a service, a
//! restore streamed in, the event stream that wakes the agent). `unit`: [`UnitEngine`], the
//! same for systemd units. The adapters (`docker`, `systemd`) implement them against the real
//! engines, whose types never leave them, and are tested against real ones (`tests/docker`,
//! `tests/systemd`). `fake` (compiled for tests only) is one in-memory engine behind
//! [`ContainerEngine`] and [`UnitEngine`], whose calls take virtual time under
//! `tokio::time::pause()`, fail or hang where a test says so, and are logged in order: the
//! executor's unit tests run against it.
//! Jobs, backups and quiesce receive an engine; only the command line and the agent connect.
//! The next backends (cluster membership, database replicas) get a trait and an adapter
//! here in the same way.
//!
//! Also what every engine adapter shares: how long tend waits for an engine
//! ([`Timeouts`]) and the error of one that did not answer in time ([`NoAnswer`]).

pub mod container;
pub mod docker;
pub mod etcd;
#[cfg(test)]
pub mod fake;
pub mod systemd;
pub mod unit;

pub use container::{ContainerEngine, ContainerRuns, JobContainer, Probe};
pub use unit::UnitEngine;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What kind of engine failure this is, for messages and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineErrorKind {
    /// The engine cannot be reached (no socket, connection refused or dropped), or its
    /// answer could not be read.
    Unavailable,
    /// The engine was reached but did not answer in time: it is unresponsive.
    Timeout,
    /// The object does not exist.
    NotFound,
    /// The object exists, or is in use.
    Conflict,
    /// Anything else the engine refused.
    Refused,
}

/// A failed engine operation, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
#[error("{op} {object}")]
pub struct EngineError {
    /// The operation ("creating container").
    pub op: &'static str,
    /// The object it was about.
    pub object: String,
    /// The kind of failure.
    pub kind: EngineErrorKind,
    /// The engine's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl EngineError {
    /// The error of call `op object` that got no answer in time.
    pub fn timed_out(op: &'static str, object: &str, cause: NoAnswer) -> Self {
        Self { op, object: object.to_string(), kind: EngineErrorKind::Timeout, source: Box::new(cause) }
    }

    /// A fixed label for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            EngineErrorKind::Unavailable => "unavailable",
            EngineErrorKind::Timeout => "timeout",
            EngineErrorKind::NotFound => "not_found",
            EngineErrorKind::Conflict => "conflict",
            EngineErrorKind::Refused => "refused",
        }
    }
}

/// The cause of a call that got no answer in time: names the engine and how long tend
/// waited. The error it is the source of names the call and its object, so the chain reads
/// `inspecting container web-1: Docker did not answer within 30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{engine} did not answer within {}", human(.waited))]
pub struct NoAnswer {
    /// The engine (`Docker`, `systemd`).
    pub engine: &'static str,
    /// How long tend waited.
    pub waited: Duration,
}

/// `30s`, `1m30s`, `1s500ms`: as durations are written in specs.
fn human(d: &Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    tend_specs::quantity::Duration::from_millis(ms).to_string()
}

/// How long tend waits for an engine. Everything follows from one value, the call timeout
/// (`engineTimeout`, `--engine-timeout`; bounded by `tend_specs::agent_config`): a
/// request/response call gets it; calls that last by nature get what they need on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One request/response call.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { call: tend_specs::agent_config::DEFAULT_ENGINE_TIMEOUT.get() }
    }
}

/// The environment variable that sets the call timeout of a command (`--engine-timeout`);
/// the agent sets it for the `tend job run` it starts, so they wait as long as it does.
pub const TIMEOUT_ENV: &str = "TEND_ENGINE_TIMEOUT";

/// Docker's stop grace period for a container created without one.
const DOCKER_DEFAULT_STOP: Duration = Duration::from_secs(10);

impl Timeouts {
    /// Timeouts with this call timeout.
    pub fn new(call: Duration) -> Self {
        Self { call }
    }

    /// The call timeout as [`TIMEOUT_ENV`] takes it (`30s`).
    pub fn env_value(&self) -> String {
        human(&self.call)
    }

    /// A container stop that signals, waits up to `grace_s` (Docker's default, 10 s, when
    /// `None`) and kills: the grace period plus the call timeout.
    pub fn stop(&self, grace_s: Option<u64>) -> Duration {
        Duration::from_secs(grace_s.unwrap_or(DOCKER_DEFAULT_STOP.as_secs())).saturating_add(self.call)
    }

    /// A pull may take any time while it progresses, but fails after this long without a
    /// progress message: twice the call timeout, since resolving a manifest on a slow
    /// registry is silent for as long as the daemon's own 30 s dial timeout.
    pub fn pull_idle(&self) -> Duration {
        self.call.saturating_mul(2)
    }

    /// systemd's `Reload` (daemon-reload) reads every unit file again: four times the call
    /// timeout (2 min by default).
    pub fn reload(&self) -> Duration {
        self.call.saturating_mul(4)
    }

    /// The timeout of an engine client library for calls that tend bounds by `bound`: in
    /// whole seconds (bollard counts them) and a second longer, so that tend's own bound
    /// fires first and names the call. It still bounds what tend does not wrap: the
    /// arrival of a stream's response headers.
    pub fn client(bound: Duration) -> Duration {
        Duration::from_secs(bound.as_secs() + u64::from(bound.subsec_nanos() > 0) + 1)
    }
}

/// Awaits `call`, giving up after `bound`: `Err(NoAnswer)` when it did not finish in time.
/// The one place where engine adapters bound a call; they name the call in their error.
pub async fn bounded<T>(engine: &'static str, bound: Duration, call: impl Future<Output = T>) -> Result<T, NoAnswer> {
    tokio::time::timeout(bound, call).await.map_err(|_| NoAnswer { engine, waited: bound })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_fails_after_its_bound_naming_engine_and_wait() {
        let never = std::future::pending::<()>();
        let e = bounded("Docker", Duration::from_secs(10), never).await.expect_err("it never answers");
        assert_eq!(e, NoAnswer { engine: "Docker", waited: Duration::from_secs(10) });
        let e = EngineError {
            op: "inspecting container",
            object: "web-1".into(),
            kind: EngineErrorKind::Timeout,
            source: Box::new(e),
        };
        assert_eq!(crate::support::chain(&e), "inspecting container web-1: Docker did not answer within 10s");
        assert_eq!(e.kind(), "timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_answers_in_time_is_not_cut_short() {
        let slow = async {
            tokio::time::sleep(Duration::from_millis(9_999)).await;
            7
        };
        assert_eq!(bounded("systemd", Duration::from_secs(10), slow).await, Ok(7));
    }

    #[test]
    fn longer_calls_get_their_own_time_on_top_of_the_call_timeout() {
        let t = Timeouts::new(Duration::from_secs(30));
        assert_eq!(t.stop(Some(60)), Duration::from_secs(90));
        assert_eq!(t.stop(None), Duration::from_secs(40));
        assert_eq!(t.pull_idle(), Duration::from_secs(60));
        assert_eq!(t.reload(), Duration::from_secs(120));
        assert_eq!(Timeouts::default(), t);
        assert_eq!(t.env_value(), "30s");
        assert_eq!(Timeouts::client(Duration::from_millis(1500)), Duration::from_secs(3));
        assert_eq!(Timeouts::client(Duration::from_secs(2)), Duration::from_secs(3));
        let waited = NoAnswer { engine: "systemd", waited: Duration::from_millis(1500) };
        assert_eq!(waited.to_string(), "systemd did not answer within 1s500ms");
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
