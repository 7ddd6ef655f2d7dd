//! The narrow trait between tend and systemd ([`UnitEngine`]), and the unit states, job
//! results and unit files it speaks in: tend's own types, which the systemd adapter
//! (`engine::systemd`) converts D-Bus answers into.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use futures::stream::BoxStream;

use std::io;
use std::time::Duration;

use crate::engine::NoAnswer;

/// One `*.service` or `*.timer` entry of a unit directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    /// The file name (`ims-nginx.service`).
    pub name: String,
    /// Its text (empty for a symlink). Never log it.
    pub content: String,
    /// The `X-Tend-*` keys of its `[Unit]` section, with the prefix (`X-Tend-Hash`). Empty
    /// for a file tend did not write: that file is a conflict, never to be overwritten.
    pub marks: BTreeMap<String, String>,
    /// Where it points when the entry is a symlink (a masked unit points to `/dev/null`).
    pub link: Option<PathBuf>,
}

/// A unit's `ActiveState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveState {
    /// Started, running.
    Active,
    /// Reloading its configuration.
    Reloading,
    /// Stopped (or never started).
    Inactive,
    /// Stopped after a failure (exit code, signal, timeout, watchdog, ...).
    Failed,
    /// Starting.
    Activating,
    /// Stopping.
    Deactivating,
    /// A state this version of tend does not know (`maintenance`, `refreshing`, ...).
    Other(String),
}

impl ActiveState {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "reloading" => Self::Reloading,
            "inactive" => Self::Inactive,
            "failed" => Self::Failed,
            "activating" => Self::Activating,
            "deactivating" => Self::Deactivating,
            other => Self::Other(other.to_string()),
        }
    }

    /// systemd's word for it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Active => "active",
            Self::Reloading => "reloading",
            Self::Inactive => "inactive",
            Self::Failed => "failed",
            Self::Activating => "activating",
            Self::Deactivating => "deactivating",
            Self::Other(s) => s,
        }
    }
}

impl std::fmt::Display for ActiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live state of one unit, as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// The unit's name.
    pub name: String,
    /// `LoadState`: `loaded`, `not-found`, `masked`, `error`, ...
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState`: `running`, `dead`, `exited`, `waiting`, `auto-restart`, ...
    pub sub_state: String,
    /// `Result` of a service or timer: `success`, `exit-code`, `signal`, `timeout`,
    /// `watchdog`, `start-limit-hit`, ...; empty for other units and units not loaded.
    pub result: String,
    /// `ExecMainStatus` once the main process has exited at least once: its exit code, or
    /// the signal number when it was killed (as systemd reports it).
    pub exec_main_status: Option<i32>,
    /// `MainPID` while the service has a main process.
    pub main_pid: Option<u32>,
    /// `UnitFileState`: `enabled`, `disabled`, `static`, `masked`, ...; empty when the unit
    /// has no file.
    pub unit_file_state: String,
    /// `NRestarts` of a service (restarts by systemd's `Restart=`); `None` for other units.
    pub n_restarts: Option<u32>,
}

/// How a job ended, as the `JobRemoved` signal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// Done: the unit reached the state the job asked for.
    Done,
    /// Canceled before it finished (another job replaced it, or someone canceled it).
    Canceled,
    /// The unit's own timeout hit (`TimeoutStartSec=`, `JobTimeoutSec=`).
    Timeout,
    /// The unit failed (an exit code, a signal, a start condition that had to hold, ...).
    Failed,
    /// A unit this one requires failed.
    Dependency,
    /// Nothing to do (e.g. a reload of a unit that is not running).
    Skipped,
    /// Any other result systemd reports (`invalid`, `assert`, `unsupported`, ...).
    Other(String),
}

impl JobResult {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "done" => Self::Done,
            "canceled" => Self::Canceled,
            "timeout" => Self::Timeout,
            "failed" => Self::Failed,
            "dependency" => Self::Dependency,
            "skipped" => Self::Skipped,
            other => Self::Other(other.to_string()),
        }
    }

    /// systemd's word for it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Done => "done",
            Self::Canceled => "canceled",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
            Self::Dependency => "dependency",
            Self::Skipped => "skipped",
            Self::Other(s) => s,
        }
    }

    /// Whether the job did what it was asked (`done`, or `skipped`: nothing to do).
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Done | Self::Skipped)
    }
}

impl std::fmt::Display for JobResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream of wake-ups: each item says only "something in systemd changed"; observe again.
pub type Wakeups = BoxStream<'static, ()>;

/// Which units' changes wake the watcher (by unit name, `web.service`). Anything else —
/// tend's own unit updating its status text, units systemd loads and unloads while tend asks
/// about them — must not, or the loop would wake itself.
pub type Interest = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What tend needs from systemd.
pub trait UnitEngine: Send + Sync + 'static {
    /// Whether systemd is PID 1 and its manager answers on the bus; the error says why not.
    fn available(&self) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Every `*.service` and `*.timer` entry in `dir`, sorted by name, with its marks: files
    /// tend wrote and the others (conflicts). Symlinks are listed, not followed. A missing
    /// `dir` has no entries; any entry that cannot be read fails the whole listing.
    fn list_unit_files(&self, dir: &Path) -> impl Future<Output = Result<Vec<UnitFile>, SystemdError>> + Send;

    /// Writes `dir/name` atomically with mode 0644. Refuses names that are not
    /// `<dns-label>.service` or `<dns-label>.timer`, and a `dir/name` that is a symlink or
    /// not a regular file.
    fn write_unit_file(
        &self,
        dir: &Path,
        name: &str,
        content: &str,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Removes `dir/name`; a file that is already gone counts as removed. Refuses the same
    /// names and paths as [`UnitEngine::write_unit_file`].
    fn remove_unit_file(&self, dir: &Path, name: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// `daemon-reload`: systemd reads the unit files again. Returns when it has.
    fn daemon_reload(&self) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Enables unit files (their `[Install]` symlinks), not at runtime only, without force.
    fn enable(&self, names: &[String]) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Disables unit files (removes their `[Install]` symlinks).
    fn disable(&self, names: &[String]) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Starts a unit (mode `replace`) and waits for the job: `done` or `skipped`, or
    /// [`SystemdError::Job`] with the result.
    fn start(&self, name: &str) -> impl Future<Output = Result<JobResult, SystemdError>> + Send;

    /// Stops a unit and waits for the job, as [`UnitEngine::start`].
    fn stop(&self, name: &str) -> impl Future<Output = Result<JobResult, SystemdError>> + Send;

    /// Restarts a unit (starts it when stopped) and waits for the job, as [`UnitEngine::start`].
    fn restart(&self, name: &str) -> impl Future<Output = Result<JobResult, SystemdError>> + Send;

    /// The states of the named units, in the order given, in one snapshot. A unit without a
    /// file is there too, with `load_state` `not-found`.
    fn states(&self, names: &[String]) -> impl Future<Output = Result<Vec<UnitState>, SystemdError>> + Send;

    /// Wake-ups when a unit of `interest` changes its active or sub state or finishes a job,
    /// and on unit file changes and reloads. The stream ends when the connection to the bus
    /// is lost.
    fn watch(&self, interest: Interest) -> impl Future<Output = Result<Wakeups, SystemdError>> + Send;
}

/// A failed systemd operation, naming the operation and the unit (or file).
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// systemd is not PID 1 here (sd_booted() is false).
    #[error("systemd is not running as PID 1 on this host (PID 1 is {pid1})")]
    NotBooted {
        /// What PID 1 is (`/proc/1/comm`), or why that could not be read.
        pid1: String,
    },
    /// A D-Bus call failed, or the bus could not be reached.
    #[error("{op} {object}")]
    Bus {
        /// The operation ("starting unit").
        op: &'static str,
        /// The unit or object it was about.
        object: String,
        /// What kind of refusal it was.
        kind: BusErrorKind,
        /// The D-Bus error (the adapter's own type, erased here).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A unit file operation failed.
    #[error("{op} {}", path.display())]
    File {
        /// The operation ("writing unit file").
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A unit name that tend does not write or remove.
    #[error("refusing unit file name {name:?}: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// A unit file path that is not a regular file (a symlink, a directory, ...).
    #[error("refusing to {op} {}: {why}", path.display())]
    NotRegular {
        /// The operation ("write", "remove").
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// What it is instead ("it is a symlink to /dev/null").
        why: String,
    },
    /// A job finished without doing what it was asked.
    #[error("{op} {unit}: the job finished with result '{result}'")]
    Job {
        /// The operation ("starting unit").
        op: &'static str,
        /// The unit.
        unit: String,
        /// How the job ended.
        result: JobResult,
    },
    /// A D-Bus call got no answer in time: the bus or the manager is unresponsive.
    #[error("{op} {object}")]
    Timeout {
        /// The operation ("listing units").
        op: &'static str,
        /// The unit or object it was about.
        object: String,
        /// Which engine, and how long tend waited.
        #[source]
        source: NoAnswer,
    },
    /// A job did not finish in time (it may still be running in systemd).
    #[error("{op} {unit}: the job did not finish within {}s", timeout.as_secs())]
    JobTimeout {
        /// The operation ("starting unit").
        op: &'static str,
        /// The unit.
        unit: String,
        /// How long tend waited.
        timeout: Duration,
    },
}

impl SystemdError {
    /// A fixed label for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotBooted { .. } => "unavailable",
            Self::Bus { kind, .. } => match kind {
                BusErrorKind::NotFound => "not_found",
                BusErrorKind::Refused => "refused",
                BusErrorKind::Unavailable => "unavailable",
            },
            Self::File { .. } => "file",
            Self::BadName { .. } => "bad_name",
            Self::NotRegular { .. } => "not_regular",
            Self::Job { .. } => "job_failed",
            Self::JobTimeout { .. } => "job_timeout",
            Self::Timeout { .. } => "timeout",
        }
    }

    /// The job's result when this is a job that finished unsuccessfully.
    pub fn job_result(&self) -> Option<&JobResult> {
        match self {
            Self::Job { result, .. } => Some(result),
            _ => None,
        }
    }
}

/// How a D-Bus call failed, as the adapter classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusErrorKind {
    /// No such unit, or it could not be loaded.
    NotFound,
    /// The manager answered with an error.
    Refused,
    /// The bus could not be reached or broke.
    Unavailable,
}
