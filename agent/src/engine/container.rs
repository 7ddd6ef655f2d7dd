//! The narrow traits between tend and a container engine: what a pass needs
//! ([`ContainerEngine`]) and what one-off containers and execs need ([`ContainerRuns`]), in
//! tend's own types ([`Probe`], [`JobContainer`], the model's `Observed`).

use std::collections::BTreeSet;
use std::future::Future;

use tend_specs::Service;

use crate::engine::EngineError;
use crate::reconcile::model::{Health, Observed, RunState};

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

/// A container of one job run, as [`ContainerRuns::job_containers`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContainer {
    /// Container ID.
    pub id: String,
    /// Container name (`NAME-run-RUN`).
    pub name: String,
    /// The run it belongs to (label `tend.run`).
    pub run: String,
}

/// One-off containers and execs: a Timer's job run in a container of its own (followed to
/// its exit, never restarted, never observed by a pass), a drill's scratch container, a
/// command run in a service's container with its stdout streamed out or its stdin streamed
/// in, and the event stream that wakes the agent.
pub trait ContainerRuns: ContainerEngine {
    /// Wake-ups from the engine's event stream for containers of `scope` that may need a
    /// pass (died, destroyed, killed by the OOM killer). The stream ends, after an error
    /// item, when the connection drops.
    fn events(&self, scope: &str) -> futures::stream::BoxStream<'static, Result<(), EngineError>>;

    /// Runs `cmd` in container `name` (as `user`, else the container's), each chunk of its
    /// stdout sent to `stdout` as it comes. Returns the exit code and the end of its stderr.
    fn exec_out(
        &self,
        name: &str,
        cmd: &[String],
        user: Option<&str>,
        stdout: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> impl Future<Output = Result<(i64, String), EngineError>> + Send;

    /// Runs `cmd` in container `name` with `input` as its stdin (closed at its end).
    /// Returns the exit code and the end of its stderr.
    fn exec_in<R: tokio::io::AsyncRead + Unpin + Send>(
        &self,
        name: &str,
        cmd: &[String],
        user: Option<&str>,
        input: R,
    ) -> impl Future<Output = Result<(i64, String), EngineError>> + Send;

    /// Whether `image` is present in the engine.
    fn image_present(&self, image: &str) -> impl Future<Output = Result<bool, EngineError>> + Send;

    /// The containers of job `name` in `scope`, running or not.
    fn job_containers(
        &self,
        scope: &str,
        name: &str,
    ) -> impl Future<Output = Result<Vec<JobContainer>, EngineError>> + Send;

    /// Creates (does not start) the container `name` for run `run` of `timer`'s job, joined
    /// to the job's networks. Returns its ID.
    fn create_job(
        &self,
        scope: &str,
        timer: &tend_specs::Timer,
        run: &str,
        name: &str,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;

    /// Copies the container's output (stdout and stderr, in the order they come) into `out`
    /// until the container exits.
    fn copy_job_logs<W: std::io::Write + Send>(
        &self,
        id: &str,
        name: &str,
        out: &mut W,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Waits until the container is not running; its exit code.
    fn wait_job(&self, id: &str, name: &str) -> impl Future<Output = Result<i64, EngineError>> + Send;

    /// Stops a container: its stop signal, SIGKILL after `grace_s` seconds. A container
    /// that is not running, or gone, counts as stopped.
    fn stop_job(&self, id: &str, name: &str, grace_s: u64) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// The (ID, name) of the drill containers of backup `backup` in `scope`.
    fn drill_containers(
        &self,
        scope: &str,
        backup: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, EngineError>> + Send;

    /// Creates and starts the scratch container `name` for a drill of `backup`: `service`'s
    /// image, command, environment, user and health check, and nothing else. Returns its ID.
    fn start_drill(
        &self,
        scope: &str,
        backup: &str,
        service: &Service,
        name: &str,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;

    /// Removes a drill container and its anonymous volumes, running or not.
    fn remove_drill(&self, id: &str, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
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
