//! The narrow trait between apply and a container engine. The Docker adapter implements
//! it against a real daemon; unit tests of the executor use a fake.

use std::collections::BTreeSet;
use std::future::Future;

use tend_specs::Service;

use crate::model::{Health, Observed, RunState};

/// What kind of engine failure this is, for messages and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineErrorKind {
    /// The engine does not answer.
    Unavailable,
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
    /// A fixed label for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            EngineErrorKind::Unavailable => "unavailable",
            EngineErrorKind::NotFound => "not_found",
            EngineErrorKind::Conflict => "conflict",
            EngineErrorKind::Refused => "refused",
        }
    }
}

/// The live state of one container, for waiting on conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Run state.
    pub state: RunState,
    /// Health.
    pub health: Health,
    /// Exit code when exited.
    pub exit_code: Option<i64>,
    /// The main process's pid on the host, while it runs.
    pub pid: Option<u32>,
}

/// What tend needs from a container engine.
pub trait ContainerEngine: Send + Sync + 'static {
    /// Observes everything in one snapshot: owned containers (by scope label), networks,
    /// volumes when `want_volumes`, the listed images, and any foreign container whose name
    /// is in `wanted` but is not owned.
    fn observe(
        &self,
        scope: &str,
        wanted: &BTreeSet<String>,
        images: &BTreeSet<String>,
        want_volumes: bool,
    ) -> impl Future<Output = Result<Observed, EngineError>> + Send;

    /// Pulls an image.
    fn pull(&self, image: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Creates a network labelled as owned by `scope`.
    fn create_network(&self, scope: &str, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Removes a network.
    fn remove_network(&self, id: &str, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Creates a volume labelled as owned by `scope`.
    fn create_volume(&self, scope: &str, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Creates the container `name` for instance `instance` of `service`, joins its networks
    /// and starts it. Returns its ID.
    fn create_and_start(
        &self,
        scope: &str,
        service: &Service,
        instance: u32,
        name: &str,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;

    /// Starts a container.
    fn start(&self, id: &str, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Stops a container gracefully (signal, then kill after `timeout_s`) and removes it.
    /// A container that is already gone counts as removed.
    fn stop_and_remove(
        &self,
        id: &str,
        name: &str,
        timeout_s: Option<u64>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Stops a container gracefully (signal, then kill after `timeout_s`) and leaves it in
    /// place. A container that is already stopped, or gone, counts as stopped.
    fn stop(
        &self,
        id: &str,
        name: &str,
        timeout_s: Option<u64>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Renames a container.
    fn rename(&self, from: &str, to: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// The live state of one container by name or ID; `None` when it does not exist.
    fn probe(&self, name: &str) -> impl Future<Output = Result<Option<Probe>, EngineError>> + Send;

    /// The names of the containers of a service in `scope`.
    fn instances_of(&self, scope: &str, service: &str)
    -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;
}
