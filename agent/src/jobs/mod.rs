//! Jobs: running a Timer's job now with tend's semantics — concurrency, timeout, a log file
//! per run and a history — for `tend job run`, and reading that history back.
//!
//! Everything about the Timer `NAME` lives in `<state-dir>/jobs/NAME/`:
//! - `lock`: an flock held by the run in progress under concurrency `forbid` and `replace`;
//! - `running.json`: the runs in progress (tend's pid, the job's process group or container,
//!   start time), which `forbid` names and `replace` stops;
//! - `RUN.log`: a run's output (mode 0600: a job may print its secrets). tend holds an flock
//!   on its own descriptor of it for as long as the run lasts: that is how a later run tells a
//!   run in progress from one whose tend was killed;
//! - `history.jsonl`: one JSON line per finished run, the last [`KEEP_RUNS`] kept with their
//!   logs;
//! - `history.lock`: an flock serializing changes to `history.jsonl` and `running.json`.
//!
//! A run of a `runOn: leader` Timer in a cluster also follows `cluster::runonce`: it holds
//! the cluster's run key while it runs (or is skipped, when another run holds it), and its
//! record also goes to the cluster's history, which `tend job history` merges in.

pub mod scheduler;

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tend_specs::calendar::Timestamp;
use tend_specs::service::PullPolicy;
use tend_specs::timer::{Concurrency, JobRuntime};
use tend_specs::{Desired, Env, Timer};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cluster::runonce::{self, RunHolder, RunKey, RunOnce, Taken};
use crate::engine::etcd::{ClusterStore, EtcdError, LeaseState};
use crate::engine::{ContainerRuns, EngineError};
use crate::support::{chain, now_ms};

/// Label: the run a job's container belongs to.
pub use crate::reconcile::model::LABEL_RUN;
/// How many finished runs (records and logs) are kept per Timer.
pub const KEEP_RUNS: usize = 100;
/// Exit status of `tend job run` when the run was skipped (`forbid`): EX_TEMPFAIL.
pub const EXIT_SKIPPED: u8 = 75;
/// Exit status of `tend job run` when the run was skipped because a run elsewhere in the
/// cluster holds the Timer's run key (`runOn: leader`); next to [`EXIT_SKIPPED`].
pub const EXIT_HELD: u8 = 76;
/// Exit status of `tend job run` when the run timed out, as timeout(1) has it.
pub const EXIT_TIMEOUT: u8 = 124;
/// How long a stopped job has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long a `replace` run waits for the run it stops to end.
const REPLACE_WAIT: Duration = Duration::from_secs(120);
/// `PATH` of a host job, systemd's default for system services.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// Someone ran `tend job run` (the default).
    #[default]
    Manual,
    /// The Timer's schedule elapsed.
    Timer,
    /// A run missed while the machine was off (`persistent: true`).
    CatchUp,
    /// A service's `hooks.beforeStart`, before its new version starts.
    Hook,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Manual => "manual",
            Self::Timer => "timer",
            Self::CatchUp => "catch-up",
            Self::Hook => "hook",
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    /// The job exited 0.
    Ok,
    /// The job exited non-zero, or was stopped (`replace`, a signal to tend).
    Failed,
    /// The job ran past its `timeout` and was stopped.
    Timeout,
    /// Not run: another run was in progress (`forbid`), or held the cluster's run key.
    Skipped,
    /// tend could not run the job (unknown user, missing image, Docker unavailable, …), or
    /// tend was killed during the run.
    Error,
}

impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Skipped => "skipped",
            Self::Error => "error",
        })
    }
}

/// One run in `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The run's ID: its start time (UTC) and tend's pid, `YYYYMMDD-HHMMSS-mmm-PID`.
    pub run: String,
    /// What started it.
    pub trigger: Trigger,
    /// Start (ms since the epoch).
    pub start_ms: u64,
    /// End (ms since the epoch).
    pub end_ms: u64,
    /// How it ended.
    pub result: RunResult,
    /// The job's exit status (128+N when killed by signal N); none when it never ran.
    pub exit_code: Option<i64>,
    /// The log file; none for a skipped run.
    pub log: Option<PathBuf>,
    /// The Timer's hash when it ran (which version of the spec).
    pub hash: String,
    /// Why, when the job's exit status does not say it all (stopped, skipped, an error).
    #[serde(default)]
    pub detail: Option<String>,
    /// The cluster node that made the run: set for the runs of a `runOn: leader` Timer in a
    /// cluster, whose records the cluster's history shares. Absent from the JSON otherwise
    /// (a record outside a cluster reads as it always did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For a run skipped because the cluster's run key was held: the run that held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<RunHolder>,
}

impl Record {
    /// How long the run took.
    pub fn duration_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }

    /// The exit status of `tend job run` for this run: 0 ok, the job's own status when it
    /// failed, [`EXIT_SKIPPED`], [`EXIT_HELD`], [`EXIT_TIMEOUT`], 1 for tend's errors (and
    /// for a failed run whose status says success, such as a job stopped that exited 0 on
    /// SIGTERM).
    pub fn exit_status(&self) -> u8 {
        match self.result {
            RunResult::Ok => 0,
            RunResult::Skipped if self.held_by.is_some() => EXIT_HELD,
            RunResult::Skipped => EXIT_SKIPPED,
            RunResult::Timeout => EXIT_TIMEOUT,
            RunResult::Error => 1,
            RunResult::Failed => self.exit_code.and_then(|c| u8::try_from(c).ok()).filter(|c| *c != 0).unwrap_or(1),
        }
    }
}

/// A run in progress, in `running.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The run's ID.
    pub run: String,
    /// What started it.
    pub trigger: Trigger,
    /// The pid of the tend running it.
    pub pid: u32,
    /// Start (ms since the epoch).
    pub start_ms: u64,
    /// The host job's process group, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// The docker job's container, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run {} (tend pid {}) since {}", self.run, self.pid, crate::support::time::format_ms(self.start_ms))
    }
}

/// Errors of jobs.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The Timer is not in the specs.
    #[error("no Timer `{name}` in the specs{hint}")]
    UnknownTimer {
        /// The name asked for.
        name: String,
        /// ``, did you mean `x`?`` or a note, possibly empty.
        hint: String,
    },
    /// The name given is not a Timer's (it would not stay a name in a path).
    #[error("invalid Timer name `{}`: Timer names are DNS labels (lowercase letters, digits and `-`)", .0.escape_default())]
    BadName(String),
    /// The job directory could not be created.
    #[error("creating job directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A lock could not be taken.
    #[error("locking {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file of the job directory could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file of the job directory could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Docker does not answer.
    #[error("the container engine is not available")]
    Engine(#[source] EngineError),
    /// A Docker operation failed.
    #[error(transparent)]
    Docker(#[from] EngineError),
    /// A docker job was run without a container engine (a caller's mistake).
    #[error("no container engine was handed to this docker job")]
    NoDocker,
    /// The image is missing and may not be pulled.
    #[error("image {image} is not present and the job's pullPolicy is never")]
    ImageMissing {
        /// The image.
        image: String,
    },
    /// The job's user is not known.
    #[error("unknown user `{0}`: it is not in /etc/passwd")]
    UnknownUser(String),
    /// The job's user has no passwd entry, so its group is unknown.
    #[error("user `{0}` is not in /etc/passwd, so its group is unknown: set the job's `group`")]
    NoGroupOf(String),
    /// The job's group is not known.
    #[error("unknown group `{0}`: it is not in /etc/group")]
    UnknownGroup(String),
    /// The host job's program could not be started.
    #[error("starting {what}")]
    Spawn {
        /// The program, and the user when one is set.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Waiting for the host job failed.
    #[error("waiting for the job")]
    Wait(#[source] io::Error),
    /// tend could not listen for its own stop signals.
    #[error("listening for signals")]
    Signals(#[source] io::Error),
    /// A run to replace did not end.
    #[error("{running} did not stop within {}s; this run (concurrency: replace) did not start", .waited.as_secs())]
    NotStopped {
        /// The run, described.
        running: String,
        /// How long it was given.
        waited: Duration,
    },
    /// The job lacks a field validation requires (cannot happen for loaded specs).
    #[error("the job has no `{0}`")]
    Incomplete(&'static str),
    /// The cluster's side of a `runOn: leader` Timer's runs failed.
    #[error(transparent)]
    Cluster(#[from] runonce::RunOnceError),
    /// The cluster's etcd could not be set up.
    #[error("connecting to the cluster's etcd")]
    Etcd(#[from] EtcdError),
}

impl JobError {
    /// A fixed label for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownTimer { .. } | Self::BadName(_) => "unknown_timer",
            Self::Dir { .. } | Self::Lock { .. } | Self::Read { .. } | Self::Write { .. } => "state",
            Self::Engine(_) => "engine_unavailable",
            Self::Docker(_) => "engine",
            Self::NoDocker => "engine",
            Self::ImageMissing { .. } => "image_missing",
            Self::UnknownUser(_) | Self::NoGroupOf(_) | Self::UnknownGroup(_) => "identity",
            Self::Spawn { .. } | Self::Wait(_) | Self::Signals(_) => "process",
            Self::NotStopped { .. } => "not_stopped",
            Self::Incomplete(_) => "incomplete",
            Self::Cluster(_) | Self::Etcd(_) => "cluster",
        }
    }
}

/// The Timer `name` of `desired`, or an error naming the nearest Timer (or saying that
/// `name` is a Service).
pub fn find_timer<'a>(desired: &'a Desired, name: &str) -> Result<&'a Timer, JobError> {
    if let Some(t) = desired.timers.get(name) {
        return Ok(t);
    }
    let hint = if desired.services.contains_key(name) {
        format!(": `{name}` is a Service, which has no job")
    } else {
        match suggest(name, desired.timers.keys().map(String::as_str)) {
            Some(near) => format!(", did you mean `{near}`?"),
            None if desired.timers.is_empty() => " (it declares none)".to_string(),
            None => {
                format!(" (Timers: {})", desired.timers.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))
            }
        }
    };
    Err(JobError::UnknownTimer { name: name.to_string(), hint })
}

/// The known name closest to `name`, when it is a plausible typo (edit distance at most 2,
/// and less than half the name).
fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (levenshtein(name, k), k))
        .filter(|(d, k)| *d <= 2 && *d * 2 < k.chars().count().max(name.chars().count()))
        .min()
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// A run's ID: `YYYYMMDD-HHMMSS-mmm-PID` from its start (UTC) and tend's pid. IDs sort by
/// start time, and two tends cannot start the same one.
pub fn run_id(start_ms: u64, pid: u32) -> String {
    format!("{}-{:03}-{pid}", crate::support::time::utc(start_ms, "%Y%m%d-%H%M%S"), start_ms % 1000)
}

/// A duration for people: `850ms`, `4.2s`, `3m05s`, `2h07m`.
pub fn format_duration(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

/// Whether `name` can name a Timer: a DNS label, or the Timer of a scheduled Backup or of
/// its drill (`backup-NAME`, `backup-NAME-drill`: longer than 63 characters for a long NAME).
pub fn is_timer_name(name: &str) -> bool {
    let backup = name.strip_prefix("backup-").map(|rest| rest.strip_suffix("-drill").unwrap_or(rest));
    tend_specs::load::is_dns_label(name) || backup.is_some_and(tend_specs::load::is_dns_label)
}

/// The files of one Timer's jobs: `<state-dir>/jobs/<name>/`.
#[derive(Debug, Clone)]
pub struct JobDir {
    dir: PathBuf,
}

const HISTORY: &str = "history.jsonl";
const RUNNING: &str = "running.json";

impl JobDir {
    /// The job directory of Timer `name` (not created). Made absolute, so that the log
    /// paths recorded and printed hold wherever they are read from. `name` is checked to be
    /// a Timer's name before it becomes a path (`tend job history ../../x` names none).
    pub fn new(state_dir: &Path, name: &str) -> Result<Self, JobError> {
        if !is_timer_name(name) {
            return Err(JobError::BadName(name.to_string()));
        }
        let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        Ok(Self { dir: state_dir.join("jobs").join(name) })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The log file of run `run`.
    pub fn log_path(&self, run: &str) -> PathBuf {
        self.dir.join(format!("{run}.log"))
    }

    /// The mark a `replace` run leaves for the run it stops, holding its own ID.
    fn marker_path(&self, run: &str) -> PathBuf {
        self.dir.join(format!("{run}.replaced"))
    }

    fn create(&self) -> Result<(), JobError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| JobError::Dir { path: self.dir.clone(), source })
    }

    fn open_lock(&self, file: &str) -> Result<(File, PathBuf), JobError> {
        let path = self.dir.join(file);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| JobError::Lock { path: path.clone(), source })?;
        Ok((f, path))
    }

    /// Runs `f` holding `history.lock`.
    fn locked<T>(&self, f: impl FnOnce(&Self) -> Result<T, JobError>) -> Result<T, JobError> {
        let (lock, path) = self.open_lock("history.lock")?;
        lock.lock().map_err(|source| JobError::Lock { path, source })?;
        let result = f(self);
        drop(lock);
        result
    }

    /// The recorded runs, in the order they ended; none when nothing ran. A line that is
    /// not a record (a write cut short by a crash) is skipped with a warning.
    pub fn history(&self) -> Result<Vec<Record>, JobError> {
        let path = self.dir.join(HISTORY);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(JobError::Read { path, source }),
        };
        Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .filter_map(|(i, l)| match serde_json::from_str(l) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping a history line that is not a record");
                    None
                }
            })
            .collect())
    }

    /// Appends `record` as one line, then keeps the last [`KEEP_RUNS`] records and removes the
    /// logs of the others. Call with `history.lock` held.
    fn append(&self, record: &Record) -> Result<(), JobError> {
        let path = self.dir.join(HISTORY);
        let mut line =
            serde_json::to_vec(record).map_err(|e| JobError::Write { path: path.clone(), source: e.into() })?;
        line.push(b'\n');
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            // One write of the whole line: a reader never sees half a record.
            f.write_all(&line)?;
            f.sync_data()
        };
        write().map_err(|source| JobError::Write { path: path.clone(), source })?;
        let records = self.history()?;
        if records.len() > KEEP_RUNS {
            let (dropped, kept) = records.split_at(records.len() - KEEP_RUNS);
            let mut text = Vec::new();
            for r in kept {
                text.extend(
                    serde_json::to_vec(r).map_err(|e| JobError::Write { path: path.clone(), source: e.into() })?,
                );
                text.push(b'\n');
            }
            write_atomic(&path, &text)?;
            for r in dropped {
                if let Some(log) = &r.log {
                    let _ = std::fs::remove_file(log);
                }
            }
        }
        Ok(())
    }

    /// The runs in progress as `running.json` lists them (some may be dead: see
    /// [`JobDir::is_alive`]).
    fn running(&self) -> Result<Vec<Running>, JobError> {
        let path = self.dir.join(RUNNING);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "ignoring a running.json that is not valid");
                Vec::new()
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(JobError::Read { path, source }),
        }
    }

    /// Changes `running.json`. Call with `history.lock` held.
    fn update_running(&self, f: impl FnOnce(&mut Vec<Running>)) -> Result<(), JobError> {
        let mut runs = self.running()?;
        f(&mut runs);
        let path = self.dir.join(RUNNING);
        if runs.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(JobError::Write { path, source: e }),
                _ => Ok(()),
            };
        }
        let bytes =
            serde_json::to_vec_pretty(&runs).map_err(|e| JobError::Write { path: path.clone(), source: e.into() })?;
        write_atomic(&path, &bytes)
    }

    /// Whether run `run` is in progress: its tend still holds the flock on its log.
    fn is_alive(&self, run: &str) -> bool {
        let Ok(f) = File::open(self.log_path(run)) else { return false };
        matches!(f.try_lock(), Err(TryLockError::WouldBlock))
    }

    /// The runs in progress whose tend is alive.
    fn alive_runs(&self) -> Result<Vec<Running>, JobError> {
        Ok(self.running()?.into_iter().filter(|r| self.is_alive(&r.run)).collect())
    }

    /// Records, as `error`, every run of `running.json` whose tend died before recording
    /// it (runs of `node`, when in a cluster), and forgets them. Call with `history.lock`
    /// held. Returns the records.
    fn reap_abandoned(&self, hash: &str, node: Option<&str>) -> Result<Vec<Record>, JobError> {
        let dead: Vec<Running> = self.running()?.into_iter().filter(|r| !self.is_alive(&r.run)).collect();
        let mut records = Vec::new();
        for r in &dead {
            let log = self.log_path(&r.run);
            let end_ms = std::fs::metadata(&log)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(r.start_ms, |d| d.as_millis() as u64)
                .max(r.start_ms);
            let left = match (r.pgid, &r.container) {
                (Some(pgid), _) => format!("; its process group {pgid} may still be running"),
                (None, Some(c)) => format!("; its container {c} is removed by the next docker run"),
                (None, None) => String::new(),
            };
            let record = Record {
                run: r.run.clone(),
                trigger: r.trigger,
                start_ms: r.start_ms,
                end_ms,
                result: RunResult::Error,
                exit_code: None,
                log: log.exists().then_some(log),
                hash: hash.to_string(),
                detail: Some(format!("tend (pid {}) ended during the run without recording it{left}", r.pid)),
                node: node.map(str::to_string),
                held_by: None,
            };
            self.append(&record)?;
            let _ = std::fs::remove_file(self.marker_path(&r.run));
            records.push(record);
        }
        if !dead.is_empty() {
            self.update_running(|runs| runs.retain(|r| !dead.iter().any(|d| d.run == r.run)))?;
        }
        Ok(records)
    }

    /// Creates run `run`'s log (mode 0600) and takes the flock that marks the run alive.
    fn create_log(&self, run: &str) -> Result<File, JobError> {
        let path = self.log_path(run);
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| JobError::Write { path: path.clone(), source })?;
        f.lock().map_err(|source| JobError::Lock { path, source })?;
        Ok(f)
    }

    /// Takes `lock` if it is free.
    fn try_lock(&self) -> Result<Option<File>, JobError> {
        let (f, path) = self.open_lock("lock")?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(JobError::Lock { path, source }),
        }
    }

    /// Takes `lock`, stopping the runs in progress (concurrency `replace`): each is marked
    /// as replaced by `run`, then its process group gets SIGTERM (SIGKILL after
    /// [`KILL_GRACE`]) or its container is stopped. Runs that start meanwhile are stopped
    /// too; a run still preparing sees the mark and does not start its job.
    async fn lock_replacing<E: ContainerRuns>(&self, run: &str, docker: Option<Arc<E>>) -> Result<File, JobError> {
        let (f, path) = self.open_lock("lock")?;
        let started = Instant::now();
        let mut marked: Vec<String> = Vec::new();
        let mut termed: Vec<(i32, Instant)> = Vec::new();
        let mut killed: Vec<i32> = Vec::new();
        let mut stopped: Vec<String> = Vec::new();
        let mut last: Option<Running> = None;
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(f),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(source)) => return Err(JobError::Lock { path, source }),
            }
            for r in self.locked(|d| d.alive_runs())? {
                if !marked.contains(&r.run) {
                    let marker = self.marker_path(&r.run);
                    std::fs::write(&marker, run).map_err(|source| JobError::Write { path: marker, source })?;
                    tracing::info!(job.run = %r.run, by = run, "stopping the run in progress (concurrency: replace)");
                    marked.push(r.run.clone());
                }
                if let Some(pgid) = r.pgid.filter(|p| !termed.iter().any(|(t, _)| t == p)) {
                    signal_group(pgid, rustix::process::Signal::TERM);
                    termed.push((pgid, Instant::now()));
                }
                if let Some(c) = r.container.clone().filter(|c| !stopped.contains(c)) {
                    stopped.push(c.clone());
                    let engine = docker.clone();
                    tokio::spawn(async move {
                        let stop = async {
                            let engine = engine.ok_or(JobError::NoDocker)?;
                            engine.stop_job(&c, &c, KILL_GRACE.as_secs()).await.map_err(JobError::from)
                        };
                        if let Err(e) = stop.await {
                            tracing::warn!(container = %c, error = %chain(&e), "could not stop the run to replace");
                        }
                    });
                }
                last = Some(r);
            }
            for (pgid, at) in &termed {
                if at.elapsed() >= KILL_GRACE && !killed.contains(pgid) {
                    signal_group(*pgid, rustix::process::Signal::KILL);
                    killed.push(*pgid);
                }
            }
            if started.elapsed() >= REPLACE_WAIT {
                let running = last.map_or_else(|| "the run in progress".to_string(), |r| r.to_string());
                return Err(JobError::NotStopped { running, waited: REPLACE_WAIT });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The mark left by a `replace` run that stopped `run`: its ID. Removes the mark.
    fn take_marker(&self, run: &str) -> Option<String> {
        let path = self.marker_path(run);
        let by = std::fs::read_to_string(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        Some(by.trim().to_string())
    }
}

/// Writes `path` atomically: a temporary file, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JobError> {
    let tmp = path.with_extension("tmp");
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| JobError::Write { path: path.to_path_buf(), source })
}

/// Sends `sig` to process group `pgid`; a group that is gone is fine.
fn signal_group(pgid: i32, sig: rustix::process::Signal) {
    let Some(pid) = rustix::process::Pid::from_raw(pgid).filter(|_| pgid > 1) else { return };
    if let Err(e) = rustix::process::kill_process_group(pid, sig)
        && e != rustix::io::Errno::SRCH
    {
        tracing::warn!(pgid, signal = ?sig, error = %e, "could not signal the job's process group");
    }
}

/// What `tend job run` needs besides the Timer.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// tend's state directory.
    pub state_dir: PathBuf,
    /// The scope (labels the job's container).
    pub scope: String,
    /// What started the run.
    pub trigger: Trigger,
}

/// Why a job was stopped before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// It ran past the Timer's `timeout`.
    Timeout(Duration),
    /// tend was asked to stop (by systemd, or Ctrl-C).
    Signal(&'static str),
    /// A `replace` run marked it before it started.
    Replaced,
    /// The lease of the cluster's run key may be lost: the job must be dead by `kill_at`.
    Lease {
        /// The latest instant the lease is known to live.
        kill_at: tokio::time::Instant,
        /// Why.
        why: runonce::Lost,
    },
}

impl Stop {
    /// How long the job has between SIGTERM and SIGKILL: [`KILL_GRACE`], or until the
    /// run key's lease may expire.
    fn grace(self) -> Duration {
        match self {
            Stop::Lease { kill_at, .. } => kill_at.saturating_duration_since(tokio::time::Instant::now()),
            _ => KILL_GRACE,
        }
    }
}

/// What ends a run early: the timeout, the signals that ask tend to stop, and the lease of
/// the cluster's run key put at risk.
struct Stops {
    timeout: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
    term: Signal,
    int: Signal,
    hup: Signal,
    lease: Option<(tokio::sync::watch::Receiver<LeaseState>, Duration)>,
}

impl Stops {
    fn new(timeout: Option<Duration>) -> Result<Self, JobError> {
        let sig = |kind| signal(kind).map_err(JobError::Signals);
        Ok(Self {
            timeout,
            deadline: timeout.map(|t| tokio::time::Instant::now() + t),
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
            hup: sig(SignalKind::hangup())?,
            lease: None,
        })
    }

    /// Also stops the run when the run key it holds is at risk ([`runonce::judge`]).
    fn with_key(mut self, key: Option<&RunKey>) -> Self {
        self.lease = key.map(|k| (k.states(), k.lease().ttl));
        self
    }

    /// Waits for the first reason to stop.
    async fn next(&mut self) -> Stop {
        let deadline = self.deadline;
        let timeout = self.timeout.unwrap_or_default();
        let expired = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let lease = self.lease.clone();
        let at_risk = async move {
            match lease {
                Some((states, ttl)) => runonce::at_risk(states, ttl).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expired => Stop::Timeout(timeout),
            (kill_at, why) = at_risk => Stop::Lease { kill_at, why },
            _ = self.term.recv() => Stop::Signal("SIGTERM"),
            _ = self.int.recv() => Stop::Signal("SIGINT"),
            _ = self.hup.recv() => Stop::Signal("SIGHUP"),
        }
    }
}

/// How a job ended: its exit status (none when it never started), and why it was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ended {
    exit_code: Option<i64>,
    stop: Option<Stop>,
}

/// One run in progress.
struct Ctx<'a> {
    dir: &'a JobDir,
    timer: &'a Timer,
    run: &'a str,
    scope: &'a str,
    log: &'a File,
}

impl Ctx<'_> {
    /// Writes a line of tend's own into the run's log. Never a secret.
    fn note(&self, line: &str) {
        let mut log = self.log;
        if let Err(e) = writeln!(log, "tend: {line}") {
            tracing::warn!(job.run = self.run, error = %e, "could not write to the run's log");
        }
    }

    /// Records what runs the job (so that `replace` can stop it); whether a `replace` run
    /// has already asked this run to stop.
    fn started(&self, pgid: Option<i32>, container: Option<&str>) -> Result<bool, JobError> {
        self.dir.locked(|d| {
            d.update_running(|runs| {
                if let Some(r) = runs.iter_mut().find(|r| r.run == self.run) {
                    r.pgid = pgid;
                    r.container = container.map(str::to_string);
                }
            })
        })?;
        Ok(self.dir.marker_path(self.run).exists())
    }
}

/// How `tend job run` ended: the record it wrote. `record.exit_status()` is the exit status.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The history record of the run.
    pub record: Record,
    /// The runs in progress that made this one skip (`forbid`).
    pub blocked_by: Vec<Running>,
}

/// The environment variable naming the Timer whose job a process runs as.
pub const JOB_ENV: &str = "TEND_JOB";

/// Records in Timer `timer`'s history a run of its job made outside `tend job run` (an
/// operator's `tend backup run` or `tend backup drill`), so that the Timer's last run says
/// what last happened; nothing when this process runs as that job already.
pub fn record_outside(
    state_dir: &Path,
    timer: &Timer,
    start_ms: u64,
    result: Result<(), String>,
) -> Result<(), JobError> {
    if std::env::var(JOB_ENV).is_ok_and(|j| j == timer.name) {
        return Ok(());
    }
    let dir = JobDir::new(state_dir, &timer.name)?;
    dir.create()?;
    let ok = result.is_ok();
    let record = Record {
        run: run_id(start_ms, std::process::id()),
        trigger: Trigger::Manual,
        start_ms,
        end_ms: now_ms(),
        result: if ok { RunResult::Ok } else { RunResult::Failed },
        exit_code: Some(if ok { 0 } else { 1 }),
        log: None,
        hash: timer.hash.clone(),
        detail: Some(match result {
            Ok(()) => "run by hand, outside the Timer".to_string(),
            Err(e) => format!("run by hand, outside the Timer: {e}"),
        }),
        node: None,
        held_by: None,
    };
    dir.locked(|d| d.append(&record))
}

/// The container engine a run may need, as its caller connected it: jobs never connect
/// themselves.
pub enum Docker<E> {
    /// Not connected: the job runs on the host.
    NotNeeded,
    /// Connected.
    Connected(Arc<E>),
    /// Connecting failed: the run records it as its error.
    Failed(EngineError),
}

impl<E> Docker<E> {
    fn engine(&self) -> Option<Arc<E>> {
        match self {
            Docker::Connected(e) => Some(e.clone()),
            _ => None,
        }
    }
}

/// The cluster a run of a `runOn: leader` Timer coordinates with, as its caller found it:
/// like Docker, a run never connects itself.
pub enum Cluster<S> {
    /// None: a Timer that runs on every node, or a node outside a cluster. The run is this
    /// node's business only.
    Outside,
    /// In a cluster: the run takes the Timer's run key first, and records its outcome in the
    /// cluster's history too.
    Joined(RunOnce<S>),
    /// In a cluster, but its store could not be set up (unreadable TLS or credential files,
    /// refused authentication): the run does not start, and records why.
    Failed {
        /// This node's name.
        node: String,
        /// Why.
        error: EtcdError,
    },
}

impl<S> Cluster<S> {
    fn node(&self) -> Option<&str> {
        match self {
            Cluster::Outside => None,
            Cluster::Joined(c) => Some(&c.node),
            Cluster::Failed { node, .. } => Some(node),
        }
    }
}

/// Writes `records` to the cluster's history (when joined). A failure is logged and, for
/// the record of this run, noted in `local` (what this node's history gets): never an
/// error of the run.
async fn publish_all<S: ClusterStore>(cluster: &Cluster<S>, timer: &str, records: &[&Record], local: &mut Record) {
    if let Cluster::Joined(c) = cluster {
        for r in records {
            let node = r.node.as_deref().unwrap_or(&c.node);
            if let Err(e) = runonce::publish(&*c.store, &c.keys, timer, &r.run, node, r).await {
                let error = chain(&e);
                tracing::warn!(job = %timer, job.run = %r.run, %error, "could not record the run in the cluster's history");
                if r.run == local.run {
                    let note = format!("not in the cluster's history: {error}");
                    local.detail = Some(match local.detail.take() {
                        Some(d) => format!("{d}; {note}"),
                        None => note,
                    });
                }
            }
        }
    }
}

/// Ends a run that never started: records it (in the cluster's history too when `publish`)
/// and hands the outcome back.
async fn not_started<S: ClusterStore>(
    dir: &JobDir,
    cluster: &Cluster<S>,
    timer: &str,
    mut record: Record,
    publish: bool,
    blocked_by: Vec<Running>,
) -> Result<Outcome, JobError> {
    record.end_ms = now_ms();
    if publish {
        let shared = record.clone();
        publish_all(cluster, timer, &[&shared], &mut record).await;
    }
    dir.locked(|d| d.append(&record))?;
    Ok(Outcome { record, blocked_by })
}

/// Runs `timer`'s job now, whether or not the Timer is enabled, under its concurrency and
/// timeout, and records the run. In a cluster (`cluster`, for a `runOn: leader` Timer) the
/// run first takes the Timer's run key, and does not start while another run holds it.
/// tend's own failures once the run has an ID (an unknown user, a missing image, Docker
/// unavailable, etcd out of reach) are recorded as `error` and returned in the outcome;
/// only failures of the state directory are errors here.
pub async fn run<E: ContainerRuns, S: ClusterStore>(
    options: &RunOptions,
    timer: &Timer,
    docker: Docker<E>,
    cluster: Cluster<S>,
) -> Result<Outcome, JobError> {
    let dir = JobDir::new(&options.state_dir, &timer.name)?;
    dir.create()?;
    let start_ms = now_ms();
    let run = run_id(start_ms, std::process::id());
    let mut record = Record {
        run: run.clone(),
        trigger: options.trigger,
        start_ms,
        end_ms: start_ms,
        result: RunResult::Ok,
        exit_code: None,
        log: None,
        hash: timer.hash.clone(),
        detail: None,
        node: cluster.node().map(str::to_string),
        held_by: None,
    };
    let _lock = match local_lock(&dir, timer, &run, &docker, &mut record).await? {
        Ok(lock) => lock,
        Err(blocked_by) => return not_started(&dir, &cluster, &timer.name, record, true, blocked_by).await,
    };
    // In a cluster, the run key: after the local lock, so that a `replace` run has stopped
    // the local run (which gives the key up) before it looks.
    let key = match run_key(&cluster, timer, &run, start_ms, &mut record).await {
        Ok(key) => key,
        Err(reachable) => return not_started(&dir, &cluster, &timer.name, record, reachable, Vec::new()).await,
    };
    execute(options, timer, docker, &cluster, dir, record, key).await
}

/// In a cluster, the run key of a `runOn: leader` Timer: `Ok(None)` outside a cluster,
/// `Err(reachable)` when the run must not start (`record` says why; `reachable`: etcd
/// answered, so the record can go to the cluster's history).
async fn run_key<S: ClusterStore>(
    cluster: &Cluster<S>,
    timer: &Timer,
    run: &str,
    start_ms: u64,
    record: &mut Record,
) -> Result<Option<RunKey>, bool> {
    match cluster {
        Cluster::Outside => Ok(None),
        Cluster::Failed { error, .. } => {
            record.result = RunResult::Error;
            record.detail = Some(format!(
                "not started: the cluster's run key could not be taken (runOn: leader): {}",
                chain(error)
            ));
            Err(false)
        }
        Cluster::Joined(c) => {
            let holder = RunHolder { run: run.to_string(), node: c.node.clone(), pid: std::process::id(), start_ms };
            match runonce::take(&*c.store, &c.keys, &timer.name, &holder, c.ttl).await {
                Ok(Taken::Held(key)) => Ok(Some(key)),
                Ok(Taken::Busy(by)) => {
                    record.result = RunResult::Skipped;
                    record.detail =
                        Some(format!("{by} holds the cluster's run key {} (runOn: leader)", c.keys.run(&timer.name)));
                    record.held_by = Some(by);
                    Err(true)
                }
                Err(e) => {
                    record.result = RunResult::Error;
                    record.detail = Some(format!("not started (runOn: leader): {}", chain(&e)));
                    let reachable =
                        !matches!(&e, runonce::RunOnceError::Take { source, .. } if source.is_unreachable());
                    Err(reachable)
                }
            }
        }
    }
}

/// Runs the job once its locks are taken, and records how it ended.
async fn execute<E: ContainerRuns, S: ClusterStore>(
    options: &RunOptions,
    timer: &Timer,
    docker: Docker<E>,
    cluster: &Cluster<S>,
    dir: JobDir,
    mut record: Record,
    key: Option<RunKey>,
) -> Result<Outcome, JobError> {
    let run = record.run.clone();
    let start_ms = record.start_ms;
    let node = cluster.node();
    let (log, reaped) = dir.locked(|d| {
        let reaped = d.reap_abandoned(&timer.hash, node)?;
        let log = d.create_log(&run)?;
        d.update_running(|runs| {
            runs.push(Running {
                run: run.clone(),
                trigger: options.trigger,
                pid: std::process::id(),
                start_ms,
                pgid: None,
                container: None,
            })
        })?;
        Ok((log, reaped))
    })?;
    for r in &reaped {
        tracing::warn!(job = %timer.name, job.run = %r.run, "recorded a run whose tend ended without recording it");
    }
    record.log = Some(dir.log_path(&run));
    let ctx = Ctx { dir: &dir, timer, run: &run, scope: &options.scope, log: &log };
    ctx.note(&format!(
        "run {run} of {} ({} job, trigger {}) started {}",
        timer.name,
        timer.spec.job.runtime,
        options.trigger,
        crate::support::time::format_ms(start_ms)
    ));
    if let (Some(key), Some(node)) = (&key, node) {
        ctx.note(&format!(
            "node {node} holds the cluster's run key {} (lease {}, TTL {}s)",
            key.key,
            key.lease().id,
            key.lease().ttl.as_secs()
        ));
    }
    let ended = match Stops::new(timer.spec.timeout.map(|t| t.get())) {
        Ok(stops) => {
            let mut stops = stops.with_key(key.as_ref());
            match timer.spec.job.runtime {
                JobRuntime::Host => run_host(&ctx, &mut stops).await,
                JobRuntime::Docker => run_docker(&ctx, &mut stops, docker).await,
            }
        }
        Err(e) => Err(e),
    };
    let replaced_by = dir.take_marker(&run);
    record.end_ms = now_ms();
    match ended {
        Err(e) => {
            record.result = RunResult::Error;
            // Docker's error may echo the container's request, the job's secrets with it.
            record.detail = Some(crate::support::redact::Redactor::of_envs([&timer.env]).redact(&chain(&e)));
        }
        Ok(ended) => {
            record.exit_code = ended.exit_code;
            (record.result, record.detail) = result_of(&ended, replaced_by.as_deref());
        }
    }
    let exit = record.exit_code.map_or_else(|| "no exit status".to_string(), |c| format!("exit status {c}"));
    match &record.detail {
        Some(detail) => ctx.note(&format!("{} ({exit}): {detail}", record.result)),
        None => ctx.note(&format!("{} ({exit}) after {}", record.result, format_duration(record.duration_ms()))),
    }
    if let (Cluster::Joined(c), Some(key)) = (cluster, key) {
        // The record first, so that the cluster's history never shows a later run starting
        // before this one ended; then the key.
        let shared = record.clone();
        let all: Vec<&Record> = reaped.iter().chain([&shared]).collect();
        publish_all(cluster, &timer.name, &all, &mut record).await;
        if let Err(e) = key.release(&*c.store).await {
            tracing::warn!(job = %timer.name, job.run = %run, error = %chain(&e), "could not give the run key up");
            ctx.note(&format!("could not give the run key up: {}", chain(&e)));
        }
    }
    dir.locked(|d| {
        d.append(&record)?;
        d.update_running(|runs| runs.retain(|r| r.run != run))
    })?;
    drop(log);
    Ok(Outcome { record, blocked_by: Vec::new() })
}

/// The local lock of a run, by the Timer's concurrency: `Ok(None)` when runs may overlap,
/// `Err(runs)` when another run holds it under `forbid` (`record` says so).
async fn local_lock<E: ContainerRuns>(
    dir: &JobDir,
    timer: &Timer,
    run: &str,
    docker: &Docker<E>,
    record: &mut Record,
) -> Result<Result<Option<File>, Vec<Running>>, JobError> {
    Ok(Ok(match timer.spec.concurrency {
        Concurrency::Allow => None,
        Concurrency::Forbid => match dir.try_lock()? {
            Some(lock) => Some(lock),
            None => {
                let blocked_by = dir.locked(|d| d.alive_runs())?;
                let who = match blocked_by.as_slice() {
                    [] => "another run".to_string(),
                    runs => runs.iter().map(Running::to_string).collect::<Vec<_>>().join(", "),
                };
                record.result = RunResult::Skipped;
                record.detail = Some(format!("{who} is still running (concurrency: forbid)"));
                return Ok(Err(blocked_by));
            }
        },
        Concurrency::Replace => Some(dir.lock_replacing(run, docker.engine()).await?),
    }))
}

/// How a job that ran ended, as its record says it: the result and why.
fn result_of(ended: &Ended, replaced_by: Option<&str>) -> (RunResult, Option<String>) {
    let by = replaced_by.unwrap_or("another run");
    match ended.stop {
        Some(Stop::Timeout(t)) => (
            RunResult::Timeout,
            Some(format!(
                "stopped after its timeout of {}",
                tend_specs::quantity::Duration::from_millis(t.as_millis() as u64)
            )),
        ),
        Some(Stop::Signal(s)) => (RunResult::Failed, Some(format!("stopped: tend received {s}"))),
        Some(Stop::Replaced) => {
            (RunResult::Failed, Some(format!("not started: run {by} replaced it (concurrency: replace)")))
        }
        Some(Stop::Lease { why, .. }) => (
            RunResult::Failed,
            Some(format!(
                "stopped: {why}; another node may take the run key once etcd lets the lease go, and two runs must never overlap (runOn: leader)"
            )),
        ),
        None if replaced_by.is_some() => {
            (RunResult::Failed, Some(format!("stopped by run {by} (concurrency: replace)")))
        }
        None if ended.exit_code == Some(0) => (RunResult::Ok, None),
        None => (RunResult::Failed, None),
    }
}

/// The identity a host job runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Identity {
    /// Set when the job names a user.
    uid: Option<u32>,
    /// Set when the job names a user or a group.
    gid: Option<u32>,
    /// The account the job runs as, for `HOME`, `USER`, `LOGNAME` and `SHELL`.
    account: Option<Account>,
}

/// A line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

/// The account `user` in passwd(5) text: by name, else (when `user` is a number no account
/// is named) by uid.
fn find_account(passwd: &str, user: &str) -> Option<Account> {
    let accounts: Vec<Account> = passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 7).then_some(())?;
            Some(Account {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect();
    let by_name = accounts.iter().find(|a| a.name == user);
    let by_uid = || user.parse::<u32>().ok().and_then(|uid| accounts.iter().find(|a| a.uid == uid));
    by_name.or_else(by_uid).cloned()
}

/// The gid of `group` (a name, or a numeric gid) in group(5) text; a numeric gid need not
/// be listed.
pub(crate) fn find_group(groups: &str, group: &str) -> Option<u32> {
    groups
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 3 && f[0] == group).then(|| f[2].parse().ok())?
        })
        .or_else(|| group.parse().ok())
}

impl Identity {
    /// Resolves the job's `user` and `group` in passwd and group text. `current_uid` is
    /// the uid tend runs as, for the environment of a job that names no user.
    fn resolve(
        user: Option<&str>,
        group: Option<&str>,
        passwd: &str,
        groups: &str,
        current_uid: u32,
    ) -> Result<Identity, JobError> {
        let account = match user {
            Some(u) => match find_account(passwd, u) {
                Some(a) => Some(a),
                None if u.parse::<u32>().is_ok() => None,
                None => return Err(JobError::UnknownUser(u.to_string())),
            },
            None => find_account(passwd, &current_uid.to_string()),
        };
        let uid = match (user, &account) {
            (None, _) => None,
            (Some(_), Some(a)) => Some(a.uid),
            (Some(u), None) => u.parse().ok(),
        };
        let gid = match group {
            Some(g) => Some(find_group(groups, g).ok_or_else(|| JobError::UnknownGroup(g.to_string()))?),
            None => match (user, &account) {
                (None, _) => None,
                (Some(_), Some(a)) => Some(a.gid),
                (Some(u), None) => return Err(JobError::NoGroupOf(u.to_string())),
            },
        };
        Ok(Identity { uid, gid, account })
    }
}

fn read_or_empty(path: &str) -> Result<String, JobError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(JobError::Read { path: PathBuf::from(path), source }),
    }
}

/// The exit status of a process as a shell shows it: its code, or 128+N when signal N
/// killed it.
fn exit_code_of(status: ExitStatus) -> i64 {
    match (status.code(), status.signal()) {
        (Some(c), _) => i64::from(c),
        (None, Some(s)) => 128 + i64::from(s),
        (None, None) => -1,
    }
}

/// Runs a host job: its `exec` argv (no shell), with a clean environment (systemd's
/// `PATH`, the account's `HOME`, `USER`, `LOGNAME`, `SHELL`, then the job's `env`), as its
/// user and group, in its working directory (default `/`), in a process group of its own,
/// stdout and stderr appended to the run's log.
async fn run_host(ctx: &Ctx<'_>, stops: &mut Stops) -> Result<Ended, JobError> {
    let job = &ctx.timer.spec.job;
    let argv = job.exec.as_deref().filter(|a| !a.is_empty()).ok_or(JobError::Incomplete("exec"))?;
    let ids = Identity::resolve(
        job.user.as_deref(),
        job.group.as_deref(),
        &read_or_empty("/etc/passwd")?,
        &read_or_empty("/etc/group")?,
        rustix::process::getuid().as_raw(),
    )?;
    let log_path = ctx.dir.log_path(ctx.run);
    // A descriptor of its own for the job, so that the flock on tend's marks only tend's
    // life, not the job's.
    let out = OpenOptions::new()
        .append(true)
        .open(&log_path)
        .map_err(|source| JobError::Write { path: log_path.clone(), source })?;
    let err = out.try_clone().map_err(|source| JobError::Write { path: log_path.clone(), source })?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    // TEND_JOB: a `tend backup run` started as this job records nothing of its own in the
    // job's history (the run is recorded here).
    cmd.args(&argv[1..]).env_clear().env("PATH", DEFAULT_PATH).env(JOB_ENV, &ctx.timer.name);
    if let Some(a) = &ids.account {
        cmd.env("HOME", &a.home).env("USER", &a.name).env("LOGNAME", &a.name).env("SHELL", &a.shell);
    }
    for (k, v) in &ctx.timer.env {
        match v {
            Env::Literal(s) => cmd.env(k, s),
            Env::Secret { value, .. } => cmd.env(k, value.expose()),
        };
    }
    cmd.current_dir(job.working_dir.as_deref().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    if let Some(uid) = ids.uid {
        cmd.uid(uid);
    }
    if let Some(gid) = ids.gid {
        cmd.gid(gid);
    }
    let mut child = cmd.spawn().map_err(|source| {
        let mut what = argv[0].clone();
        if let Some(u) = &job.user {
            what.push_str(&format!(" as user {u}"));
        }
        if source.kind() == io::ErrorKind::PermissionDenied && (ids.uid.is_some() || ids.gid.is_some()) {
            what.push_str(" (changing user or group needs tend to run as root)");
        }
        JobError::Spawn { what, source }
    })?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    ctx.note(&format!("started {} (pid {})", argv[0], pgid.unwrap_or_default()));
    let replaced = ctx.started(pgid, None)?;
    let (status, stop) = if replaced {
        // A `replace` run came while this one prepared: it signals the group too.
        (terminate(&mut child, pgid, KILL_GRACE).await?, None)
    } else {
        tokio::select! {
            status = child.wait() => (status.map_err(JobError::Wait)?, None),
            stop = stops.next() => {
                ctx.note(&match stop {
                    Stop::Timeout(_) => "timeout: sending SIGTERM to the job's process group".to_string(),
                    Stop::Lease { why, .. } => format!(
                        "{why}: sending SIGTERM to the job's process group, SIGKILL in {}",
                        format_duration(stop.grace().as_millis() as u64)
                    ),
                    _ => "stopping: sending SIGTERM to the job's process group".to_string(),
                });
                (terminate(&mut child, pgid, stop.grace()).await?, Some(stop))
            }
        }
    };
    Ok(Ended { exit_code: Some(exit_code_of(status)), stop })
}

/// SIGTERM to the job's process group, SIGKILL after `grace`; its exit status.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: Option<i32>,
    grace: Duration,
) -> Result<ExitStatus, JobError> {
    if let Some(pgid) = pgid {
        signal_group(pgid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.map_err(JobError::Wait),
        Err(_) => {
            match pgid {
                Some(pgid) => signal_group(pgid, rustix::process::Signal::KILL),
                None => child.start_kill().map_err(JobError::Wait)?,
            }
            child.wait().await.map_err(JobError::Wait)
        }
    }
}

/// Runs a docker job: removes containers of this Timer's earlier runs whose tend died,
/// pulls per `pullPolicy`, creates `NAME-run-RUN`, starts it, copies its output into the
/// run's log, waits for its exit and removes it.
async fn run_docker<E: ContainerRuns>(ctx: &Ctx<'_>, stops: &mut Stops, docker: Docker<E>) -> Result<Ended, JobError> {
    let prepare = async {
        let engine = match docker {
            Docker::Connected(engine) => engine,
            Docker::Failed(e) => return Err(JobError::Engine(e)),
            Docker::NotNeeded => return Err(JobError::NoDocker),
        };
        let job = &ctx.timer.spec.job;
        let image = job.image.as_deref().ok_or(JobError::Incomplete("image"))?;
        for c in engine.job_containers(ctx.scope, &ctx.timer.name).await? {
            if c.run != ctx.run && !ctx.dir.locked(|d| Ok(d.is_alive(&c.run)))? {
                engine.stop_and_remove(&c.id, &c.name, Some(0)).await?;
                ctx.note(&format!("removed container {} left behind by run {}", c.name, c.run));
                tracing::warn!(container = %c.name, job.run = %c.run, "removed a container left behind by a run whose tend died");
            }
        }
        let pull = match job.pull_policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent => !engine.image_present(image).await?,
            PullPolicy::Never if engine.image_present(image).await? => false,
            PullPolicy::Never => return Err(JobError::ImageMissing { image: image.to_string() }),
        };
        if pull {
            ctx.note(&format!("pulling {image}"));
            engine.pull(image).await?;
        }
        Ok::<_, JobError>(engine)
    };
    let engine = tokio::select! {
        engine = prepare => engine?,
        stop = stops.next() => return Ok(Ended { exit_code: None, stop: Some(stop) }),
    };
    let name = format!("{}-run-{}", ctx.timer.name, ctx.run);
    let id = engine.create_job(ctx.scope, ctx.timer, ctx.run, &name).await?;
    let result = follow_container(ctx, stops, &engine, &id, &name).await;
    if let Err(e) = engine.stop_and_remove(&id, &name, Some(0)).await {
        tracing::warn!(container = %name, error = %chain(&e), "could not remove the job's container");
        ctx.note(&format!("could not remove container {name}; the next run removes it"));
    }
    result
}

/// Starts the job's container and follows it to its exit.
async fn follow_container<E: ContainerRuns>(
    ctx: &Ctx<'_>,
    stops: &mut Stops,
    engine: &Arc<E>,
    id: &str,
    name: &str,
) -> Result<Ended, JobError> {
    if ctx.started(None, Some(name))? {
        return Ok(Ended { exit_code: None, stop: Some(Stop::Replaced) });
    }
    engine.start(id, name).await?;
    ctx.note(&format!("started container {name}"));
    let mut out = ctx.log.try_clone().map_err(|source| JobError::Write { path: ctx.dir.log_path(ctx.run), source })?;
    let logs = {
        let (engine, id, name) = (engine.clone(), id.to_string(), name.to_string());
        tokio::spawn(async move { engine.copy_job_logs(&id, &name, &mut out).await })
    };
    let (code, stop) = tokio::select! {
        code = engine.wait_job(id, name) => (code?, None),
        stop = stops.next() => {
            ctx.note(&match stop {
                Stop::Timeout(_) => format!("timeout: stopping container {name}"),
                Stop::Lease { why, .. } => format!("{why}: stopping container {name}"),
                _ => format!("stopping container {name}"),
            });
            engine.stop_job(id, name, stop.grace().as_secs()).await?;
            (engine.wait_job(id, name).await?, Some(stop))
        }
    };
    // The output ends with the container; give its last lines a moment to arrive.
    match tokio::time::timeout(Duration::from_secs(5), logs).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => ctx.note(&format!("the output may be incomplete: {}", chain(&e))),
        Ok(Err(_)) | Err(_) => ctx.note("the output may be incomplete"),
    }
    Ok(Ended { exit_code: Some(code), stop })
}

/// The recorded runs of Timer `name`, newest first (by start), at most `limit`.
pub fn history(state_dir: &Path, name: &str, limit: Option<usize>) -> Result<Vec<Record>, JobError> {
    let mut records = JobDir::new(state_dir, name)?.history()?;
    records.sort_by(|a, b| b.start_ms.cmp(&a.start_ms).then_with(|| b.run.cmp(&a.run)));
    records.truncate(limit.unwrap_or(usize::MAX));
    Ok(records)
}

/// The cluster's history of Timer `name`: the records of its runs on every node (of a
/// `runOn: leader` Timer; none for another), oldest first.
pub async fn cluster_history<S: ClusterStore>(cluster: &RunOnce<S>, name: &str) -> Result<Vec<Record>, JobError> {
    if !is_timer_name(name) {
        return Err(JobError::BadName(name.to_string()));
    }
    Ok(runonce::history(&*cluster.store, &cluster.keys, name).await?)
}

/// This node's history of a Timer and the cluster's, as one list, newest first: a run in
/// both (this node's own, by run and node) is shown once, as this node recorded it (the
/// local record may say more, such as why it is missing from the cluster's).
pub fn merge_history(local: Vec<Record>, cluster: Vec<Record>) -> Vec<Record> {
    let known: std::collections::HashSet<(String, Option<String>)> =
        local.iter().map(|r| (r.run.clone(), r.node.clone())).collect();
    let mut all = local;
    all.extend(cluster.into_iter().filter(|r| !known.contains(&(r.run.clone(), r.node.clone()))));
    all.sort_by(|a, b| b.start_ms.cmp(&a.start_ms).then_with(|| b.run.cmp(&a.run)).then_with(|| b.node.cmp(&a.node)));
    all
}

/// The Timers with recorded runs in `state_dir` (names of `jobs/*`), for suggestions.
pub fn recorded_timers(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir.join("jobs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// A near name among `known`, for "did you mean".
pub fn near_name<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    suggest(name, known.iter().map(String::as_str))
}

/// One Timer in `tend job list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimerEntry {
    /// The Timer's name.
    pub name: String,
    /// `docker` or `host`.
    pub runtime: String,
    /// The schedule as written; none for an on-demand Timer.
    pub schedule: Option<String>,
    /// Whether the schedule is active.
    pub enabled: bool,
    /// `forbid`, `replace` or `allow`.
    pub concurrency: String,
    /// The next elapse (ms since the epoch), for an enabled Timer with a schedule.
    pub next_ms: Option<u64>,
    /// The next elapse in the schedule's zone, as `systemctl list-timers` shows it.
    pub next: Option<String>,
    /// The latest recorded run.
    pub last: Option<Record>,
}

/// Every Timer of `desired` with its next elapse after `now` and its latest run.
pub fn list(state_dir: &Path, desired: &Desired, now: Timestamp) -> Vec<TimerEntry> {
    desired
        .timers
        .values()
        .map(|t| {
            let next = t.calendar.as_ref().filter(|_| t.spec.enabled).and_then(|c| c.next_after(now));
            let last = match JobDir::new(state_dir, &t.name).and_then(|d| d.history()) {
                Ok(records) => records.into_iter().max_by_key(|r| (r.start_ms, r.run.clone())),
                Err(e) => {
                    tracing::warn!(job = %t.name, error = %chain(&e), "could not read the job's history");
                    None
                }
            };
            TimerEntry {
                name: t.name.clone(),
                runtime: t.spec.job.runtime.to_string(),
                schedule: t.spec.schedule.clone(),
                enabled: t.spec.enabled,
                concurrency: t.spec.concurrency.to_string(),
                next_ms: next.as_ref().and_then(|z| u64::try_from(z.timestamp().as_millisecond()).ok()),
                next: next.map(|z| z.strftime("%a %Y-%m-%d %H:%M:%S %Z").to_string()),
                last,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run: &str, start_ms: u64, result: RunResult, exit_code: Option<i64>) -> Record {
        Record {
            run: run.to_string(),
            trigger: Trigger::Manual,
            start_ms,
            end_ms: start_ms + 10,
            result,
            exit_code,
            log: None,
            hash: "h".into(),
            detail: None,
            node: None,
            held_by: None,
        }
    }

    #[test]
    fn run_ids_sort_by_start_time() {
        assert_eq!(run_id(1_795_318_500_042, 77), "20261122-033500-042-77");
        assert_eq!(run_id(0, 1), "19700101-000000-000-1");
        assert!(run_id(1_795_318_500_042, 99_999) < run_id(1_795_318_500_043, 1));
    }

    #[test]
    fn exit_statuses_follow_the_result() {
        assert_eq!(record("r", 0, RunResult::Ok, Some(0)).exit_status(), 0);
        assert_eq!(record("r", 0, RunResult::Failed, Some(3)).exit_status(), 3);
        assert_eq!(record("r", 0, RunResult::Failed, Some(0)).exit_status(), 1, "stopped but exited 0");
        assert_eq!(record("r", 0, RunResult::Failed, Some(300)).exit_status(), 1);
        assert_eq!(record("r", 0, RunResult::Timeout, Some(143)).exit_status(), EXIT_TIMEOUT);
        assert_eq!(record("r", 0, RunResult::Skipped, None).exit_status(), EXIT_SKIPPED);
        assert_eq!(record("r", 0, RunResult::Error, None).exit_status(), 1);
    }

    #[test]
    fn records_are_one_json_line_with_snake_case_fields() {
        let mut r = record("20261122-033500-042-77", 5, RunResult::Timeout, Some(143));
        r.trigger = Trigger::CatchUp;
        let line = serde_json::to_string(&r).expect("json");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("parse");
        assert_eq!(v["trigger"], "catch-up");
        assert_eq!(v["result"], "timeout");
        assert_eq!(v["start_ms"], 5);
        assert_eq!(v["exit_code"], 143);
        assert_eq!(serde_json::from_str::<Record>(&line).expect("back"), r);
    }

    #[test]
    fn history_keeps_the_last_runs_and_their_logs() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = JobDir::new(tmp.path(), "t").expect("a Timer name");
        dir.create().expect("create");
        for i in 0..(KEEP_RUNS as u64 + 3) {
            let run = format!("r{i:04}");
            let log = dir.log_path(&run);
            std::fs::write(&log, b"out").expect("log");
            let mut r = record(&run, i, RunResult::Ok, Some(0));
            r.log = Some(log);
            dir.locked(|d| d.append(&r)).expect("append");
        }
        let records = dir.history().expect("history");
        assert_eq!(records.len(), KEEP_RUNS);
        assert_eq!(records[0].run, "r0003");
        assert!(!dir.log_path("r0002").exists(), "the log of a dropped run is removed");
        assert!(dir.log_path("r0003").exists());
        let newest = history(tmp.path(), "t", Some(2)).expect("history");
        assert_eq!(newest.iter().map(|r| r.run.as_str()).collect::<Vec<_>>(), ["r0102", "r0101"]);
    }

    #[test]
    fn a_run_skipped_for_the_cluster_exits_apart_from_a_local_skip() {
        let mut r = record("r", 0, RunResult::Skipped, None);
        assert_eq!(r.exit_status(), EXIT_SKIPPED);
        r.held_by = Some(RunHolder { run: "x".into(), node: "vm-a".into(), pid: 7, start_ms: 0 });
        assert_eq!(r.exit_status(), EXIT_HELD);
        assert_ne!(EXIT_HELD, EXIT_SKIPPED);
        let line = serde_json::to_string(&r).expect("json");
        let v: serde_json::Value = serde_json::from_str(&line).expect("parse");
        assert_eq!(v["held_by"]["node"], "vm-a");
        assert_eq!(v["node"], serde_json::Value::Null);
        // A line written before these fields existed still reads.
        let old = r#"{"run":"r","trigger":"manual","start_ms":0,"end_ms":1,"result":"ok","exit_code":0,"log":null,"hash":"h"}"#;
        let back: Record = serde_json::from_str(old).expect("old line");
        assert_eq!((back.node, back.held_by), (None, None));
    }

    #[test]
    fn the_cluster_history_merges_into_this_nodes_once_per_run_newest_first() {
        let on = |run: &str, start_ms: u64, node: &str| {
            let mut r = record(run, start_ms, RunResult::Ok, Some(0));
            r.node = Some(node.into());
            r
        };
        let mut mine = on("r2", 20, "a");
        mine.log = Some(PathBuf::from("/var/lib/tend/jobs/t/r2.log"));
        mine.detail = Some("not in the cluster's history: etcd …".into());
        let local = vec![record("r0", 5, RunResult::Ok, Some(0)), mine.clone(), on("r4", 40, "a")];
        // The cluster has a's r4 (as published) and b's runs, one with a run ID a also used.
        let cluster = vec![on("r1", 10, "b"), on("r4", 40, "a"), on("r2", 20, "b"), on("r3", 30, "b")];
        let merged = merge_history(local, cluster);
        let shown: Vec<(&str, Option<&str>)> = merged.iter().map(|r| (r.run.as_str(), r.node.as_deref())).collect();
        assert_eq!(
            shown,
            [
                ("r4", Some("a")),
                ("r3", Some("b")),
                ("r2", Some("b")),
                ("r2", Some("a")),
                ("r1", Some("b")),
                ("r0", None)
            ]
        );
        assert_eq!(merged[3], mine, "this node's record wins over its copy in the cluster");
    }

    #[test]
    fn a_name_that_is_no_timers_never_becomes_a_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = tmp.path().join("state");
        // A history two levels up from where `../../x` would lead out of `jobs/`.
        let outside = tmp.path().join("x");
        std::fs::create_dir_all(&outside).expect("dir");
        let line = serde_json::to_string(&record("r1", 1, RunResult::Ok, Some(0))).expect("json");
        std::fs::write(outside.join(HISTORY), format!("{line}\n")).expect("write");
        for bad in ["../../x", "../x", "x/../../x", "/x", "", ".", "X", "-x", "a.b"] {
            let e = history(&state, bad, None).expect_err(bad);
            assert!(matches!(e, JobError::BadName(_)), "{bad}: {e}");
        }
        assert!(!state.exists(), "nothing was created");
        let long = "b".repeat(63);
        for good in ["t", "nightly-1", &format!("backup-{long}"), &format!("backup-{long}-drill")] {
            assert!(history(&state, good, None).expect(good).is_empty(), "{good}");
        }
        assert!(!is_timer_name(&format!("{long}x")));
        assert_eq!(
            JobError::BadName("../\u{1b}x".into()).to_string(),
            "invalid Timer name `../\\u{1b}x`: Timer names are DNS labels (lowercase letters, digits and `-`)"
        );
    }

    #[test]
    fn a_torn_history_line_is_skipped() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = JobDir::new(tmp.path(), "t").expect("a Timer name");
        dir.create().expect("create");
        dir.locked(|d| d.append(&record("a", 1, RunResult::Ok, Some(0)))).expect("append");
        let path = dir.path().join(HISTORY);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"run\":\"b\",\"trig");
        std::fs::write(&path, text).expect("write");
        assert_eq!(dir.history().expect("history").len(), 1);
    }

    #[test]
    fn a_run_is_alive_while_its_log_is_locked() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = JobDir::new(tmp.path(), "t").expect("a Timer name");
        dir.create().expect("create");
        assert!(!dir.is_alive("r1"), "no log");
        let log = dir.create_log("r1").expect("log");
        assert!(dir.is_alive("r1"));
        drop(log);
        assert!(!dir.is_alive("r1"));
    }

    #[test]
    fn runs_whose_tend_died_are_recorded_as_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = JobDir::new(tmp.path(), "t").expect("a Timer name");
        dir.create().expect("create");
        let alive = dir.create_log("alive").expect("log");
        drop(dir.create_log("dead").expect("log"));
        let entry = |run: &str| Running {
            run: run.into(),
            trigger: Trigger::Timer,
            pid: 1,
            start_ms: 7,
            pgid: None,
            container: Some(format!("t-run-{run}")),
        };
        dir.locked(|d| d.update_running(|r| r.extend([entry("alive"), entry("dead")]))).expect("running");
        let reaped = dir.locked(|d| d.reap_abandoned("h", None)).expect("reap");
        assert_eq!(reaped.len(), 1);
        assert_eq!(reaped[0].run, "dead");
        assert_eq!(reaped[0].result, RunResult::Error);
        assert_eq!(reaped[0].trigger, Trigger::Timer);
        assert_eq!(dir.history().expect("history"), reaped);
        assert_eq!(dir.running().expect("running").iter().map(|r| r.run.as_str()).collect::<Vec<_>>(), ["alive"]);
        drop(alive);
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                          1000:x:1001:1002::/home/odd:/bin/sh\n\
                          short:line\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nstaff:x:50:alice\n";

    #[test]
    fn users_and_groups_resolve_by_name_or_number() {
        let id = |u: Option<&str>, g: Option<&str>| Identity::resolve(u, g, PASSWD, GROUP, 0);
        let nobody = id(Some("nobody"), None).expect("nobody");
        assert_eq!((nobody.uid, nobody.gid), (Some(65534), Some(65534)));
        assert_eq!(nobody.account.as_ref().map(|a| a.home.as_str()), Some("/nonexistent"));
        let staff = id(Some("65534"), Some("staff")).expect("by uid");
        assert_eq!((staff.uid, staff.gid), (Some(65534), Some(50)));
        // A name that looks like a number is a name first.
        assert_eq!(id(Some("1000"), None).expect("named 1000").uid, Some(1001));
        assert_eq!(id(Some("4242"), Some("4242")).expect("bare uid").uid, Some(4242));
        assert!(matches!(id(Some("4242"), None), Err(JobError::NoGroupOf(_))));
        assert!(matches!(id(Some("nosuch"), None), Err(JobError::UnknownUser(_))));
        assert!(matches!(id(None, Some("nosuch")), Err(JobError::UnknownGroup(_))));
        let none = id(None, None).expect("no user");
        assert_eq!((none.uid, none.gid), (None, None));
        assert_eq!(none.account.map(|a| a.name), Some("root".to_string()), "the environment of tend's user");
    }

    #[test]
    fn near_names_are_suggested() {
        let known = ["backup".to_string(), "restore".to_string(), "ab".to_string()];
        assert_eq!(near_name("bakup", &known), Some("backup"));
        assert_eq!(near_name("restor", &known), Some("restore"));
        assert_eq!(near_name("cd", &known), None);
        assert_eq!(near_name("deploy", &known), None);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(850), "850ms");
        assert_eq!(format_duration(4_240), "4.2s");
        assert_eq!(format_duration(185_000), "3m05s");
        assert_eq!(format_duration(7_620_000), "2h07m");
    }
}
