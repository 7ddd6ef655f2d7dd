//! The error of backups, restores, drills and copies ([`BackupError`]), and the small
//! helpers that make one.

use std::path::{Path, PathBuf};

use crate::backup::archive::ArchiveError;
use crate::backup::catalog::CatalogError;
use crate::backup::quiesce::QuiesceError;
use crate::maintain::locks::LockError;

/// Errors of backups and restores.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No Backup of that name.
    #[error("no Backup `{0}` in the specs")]
    Unknown(String),
    /// Another run, an operator or the agent holds a target.
    #[error("backup {backup} did not run")]
    Locked {
        /// The backup.
        backup: String,
        /// Who holds what.
        #[source]
        source: Box<LockError>,
    },
    /// The destination has no room: nothing was stopped.
    #[error("{dir} has {free} bytes free, the sources hold {needed}: the backup did not run (nothing was stopped)")]
    NoSpace {
        /// The destination.
        dir: PathBuf,
        /// Free bytes.
        free: u64,
        /// Bytes of the sources.
        needed: u64,
    },
    /// Quiescing failed (services were started again).
    #[error(transparent)]
    Quiesce(#[from] QuiesceError),
    /// Writing or reading an archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A copy on another host could not be listed or pruned.
    #[error(transparent)]
    Remote(#[from] crate::backup::remote::RemoteError),
    /// The destination catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The dump or restore command failed.
    #[error("`{command}` exited with code {code}{}: {what}", if stderr.is_empty() { String::new() } else { format!(" ({stderr})") })]
    Command {
        /// The command.
        command: String,
        /// Its exit code.
        code: i64,
        /// The end of its stderr.
        stderr: String,
        /// What that means.
        what: &'static str,
    },
    /// Docker refused or did not answer.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The run needs Docker, and there is none.
    #[error("Docker is not available")]
    NoDocker,
    /// A scratch container did not become ready.
    #[error("the scratch container {container} did not become ready")]
    NotReady {
        /// The container.
        container: String,
        /// Why.
        #[source]
        source: Box<crate::reconcile::execute::StepError>,
    },
    /// A task of the run ended abnormally (it panicked or was cancelled).
    #[error("the {what} task failed")]
    Task {
        /// What it did.
        what: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A command's standard stream could not be connected.
    #[error("the {0} of the command could not be connected")]
    Pipe(&'static str),
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The archive was made (or the data restored) but starting the services again failed.
    #[error("done, but starting the services again failed")]
    Resume(#[source] QuiesceError),
    /// Nothing to restore from.
    #[error("no complete archive of {0} to restore from")]
    NoArchive(String),
    /// A run or restore cannot go ahead as asked.
    #[error("{0}")]
    Refused(String),
    /// A restore stopped before it stopped, moved or wrote anything.
    #[error("restore of {backup} refused; nothing was changed")]
    Unchanged {
        /// The Backup.
        backup: String,
        /// Why.
        #[source]
        source: Box<BackupError>,
    },
}

/// The last 4 KiB of a command's stderr, for an error message.
pub(crate) fn stderr_tail(err: &[u8]) -> String {
    String::from_utf8_lossy(&err[err.len().saturating_sub(4096)..]).trim().to_string()
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { op, path, source }
}
