//! Pid-lock files of managed targets: the kernel locks through which `tend maintain` (the
//! operator) and the agent never act on one target at once.
//!
//! Every managed target has a lock file `DIR/KEY.lock` ([`DEFAULT_LOCK_DIR`], a tmpfs: nothing
//! survives a reboot, by design). The operator takes targets' locks exclusively
//! ([`LockDir::take_exclusive`], all of them or none); the agent takes a target's lock shared
//! and without blocking for as long as it acts on it ([`LockDir::try_shared`]), and skips a
//! target an operator holds. The locks are `flock(2)`s, so the kernel releases them when their
//! holder dies, `kill -9` included: a lock can never outlive its holder.
//!
//! The file's content is informative only; the lock is what counts. It is at most two lines:
//!
//! ```text
//! 4242
//! {"user":"alice","uid":1000,"pid":5151,"reason":"swap disk","sinceMs":1795318500000}
//! ```
//!
//! Line 1 is the pid of the target's running instance, written by the agent
//! ([`LockDir::record_pid`]), or empty when there is none; a classic pid file, so
//! `pkill -F DIR/KEY.lock` works. Line 2, when present, is the [`Holder`] record written by
//! `tend maintain` while it holds the lock exclusively. A record is only meaningful while the
//! lock is held exclusively: readers test the lock first and ignore the record otherwise, so a
//! record left behind by a killed operator is never reported.
//!
//! Lock files are created with mode 0600: `flock(2)` needs only an open descriptor, not write
//! access, so a lock file any user could open would let any user stop tend from managing a
//! target.
//!
//! A lock file whose target is gone (its instance or unit removed) is removed by the agent
//! ([`LockDir::remove_if_free`]) so they do not pile up: only while it holds the lock
//! exclusively, and every locker checks, once it has its lock, that its file is still the one
//! at the path (else it locks the new one). So nobody ever holds a lock on an unlinked file
//! believing it holds the target.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::support::time::format_ms;

/// Where lock files live unless configured otherwise (a tmpfs).
pub const DEFAULT_LOCK_DIR: &str = "/run/tend/locks";
/// Mode of a lock directory tend creates.
const DIR_MODE: u32 = 0o755;
/// Mode of a lock file tend creates: only root may open (and so lock) it.
const FILE_MODE: u32 = 0o600;
/// The longest key: 1 + 120 characters.
const MAX_KEY_LEN: usize = 121;
/// At most this much of a lock file is read (it holds two short lines).
const MAX_READ: usize = 64 * 1024;
/// How often `take_exclusive` without waiting tries again before reporting a target busy: a
/// shared lock can be a passing probe (`holder()` from `tend status`), not tend acting.
const NO_WAIT_TRIES: u32 = 3;
/// Polling back-off of `take_exclusive` with a deadline.
const POLL_MIN: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_secs(1);

/// An error from the lock directory.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A target key that is not file-name safe.
    #[error(
        "invalid target key {key:?} (expected lowercase letters, digits, '.' and '-', starting with a letter or digit, at most 121 characters, no \"..\")"
    )]
    BadKey {
        /// The key as given.
        key: String,
    },
    /// The lock directory could not be created.
    #[error("creating lock directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The lock directory (or a parent) exists but is not a directory.
    #[error("lock directory {path} is not a directory")]
    NotADirectory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The lock directory refuses new files (permissions, a read-only file system).
    #[error("lock directory {path} is not writable")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A lock file is a symbolic link: refused, a lock path must not be redirectable.
    #[error("lock file {path} is a symbolic link (refused: a lock path must not be redirectable)")]
    Symlink {
        /// The lock file.
        path: PathBuf,
    },
    /// A lock file is not a regular file (a directory, a device, a FIFO...).
    #[error("lock file {path} is not a regular file")]
    NotRegular {
        /// The lock file.
        path: PathBuf,
    },
    /// A lock file could not be opened.
    #[error("opening lock file {path}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A lock could not be taken or tested (other than because it is held).
    #[error("locking {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A lock file could not be read.
    #[error("reading lock file {path}")]
    Read {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A lock file could not be written.
    #[error("writing lock file {path}")]
    Write {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A lock file of a target that is gone could not be removed.
    #[error("removing lock file {path}")]
    Remove {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The lock directory could not be listed.
    #[error("listing lock directory {path}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A target asked for exclusively is held by someone else.
    #[error("{}", busy_message(key, by.as_ref()))]
    Busy {
        /// The target.
        key: String,
        /// Its operator, or `None` when tend holds it (shared) while acting on it.
        by: Option<Holder>,
    },
}

fn busy_message(key: &str, by: Option<&Holder>) -> String {
    match by {
        Some(holder) => format!("target {key} is in maintenance ({})", holder.describe()),
        None => format!("target {key} is in use by tend"),
    }
}

impl LockError {
    /// A fixed label for the error's kind (metrics, tests).
    pub fn kind(&self) -> &'static str {
        match self {
            LockError::BadKey { .. } => "bad-key",
            LockError::CreateDir { .. } => "create-dir",
            LockError::NotADirectory { .. } => "not-a-directory",
            LockError::NotWritable { .. } => "not-writable",
            LockError::Symlink { .. } => "symlink",
            LockError::NotRegular { .. } => "not-regular",
            LockError::Open { .. } => "open",
            LockError::Lock { .. } => "lock",
            LockError::Read { .. } => "read",
            LockError::Write { .. } => "write",
            LockError::List { .. } => "list",
            LockError::Remove { .. } => "remove",
            LockError::Busy { .. } => "busy",
        }
    }
}

/// Who holds a target for maintenance, as recorded in its lock file by `tend maintain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    /// The operator's user name.
    pub user: String,
    /// The operator's uid.
    pub uid: u32,
    /// The pid of the process holding the lock (`tend maintain`).
    pub pid: u32,
    /// Why (`--reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the window began, in ms since the epoch.
    pub since_ms: u64,
    /// When the window ends (`--for`), in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl Holder {
    /// The holder of a lock held exclusively without a valid record (by a process other than
    /// `tend maintain`, or in the instant before `tend maintain` writes its record).
    pub fn unknown() -> Holder {
        Holder { user: "unknown".into(), uid: u32::MAX, pid: 0, reason: None, since_ms: 0, until_ms: None }
    }

    /// `by USER since TIME until TIME: REASON`, the parts that are known.
    pub fn describe(&self) -> String {
        let mut s = format!("by {}", self.user);
        if self.since_ms != 0 {
            s.push_str(&format!(" since {}", format_ms(self.since_ms)));
        }
        if let Some(until) = self.until_ms {
            s.push_str(&format!(" until {}", format_ms(until)));
        }
        if let Some(reason) = self.reason.as_deref().filter(|r| !r.is_empty()) {
            s.push_str(&format!(": {reason}"));
        }
        s
    }
}

/// A lock file's content: see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Record {
    pid: Option<u32>,
    holder: Option<Holder>,
}

impl Record {
    /// Parses leniently: a line that does not parse counts as absent.
    fn parse(text: &str) -> Record {
        let mut lines = text.lines();
        let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok()).filter(|&p| p != 0);
        let holder = lines.next().and_then(|l| serde_json::from_str::<Holder>(l.trim()).ok());
        Record { pid, holder }
    }

    fn render(&self) -> String {
        if *self == Record::default() {
            return String::new();
        }
        let mut s = self.pid.map(|p| p.to_string()).unwrap_or_default();
        s.push('\n');
        if let Some(holder) = &self.holder {
            // Serializing a struct of strings and integers cannot fail.
            s.push_str(&serde_json::to_string(holder).unwrap_or_default());
            s.push('\n');
        }
        s
    }
}

/// The outcome of the agent's attempt on a target's lock.
#[derive(Debug)]
pub enum Shared {
    /// The agent holds the lock (shared) until the guard is dropped.
    Taken(SharedGuard),
    /// An operator holds the target: leave it alone.
    Maintenance(Holder),
}

/// A shared lock on a target, held by the agent while it acts on it; released on drop.
#[derive(Debug)]
pub struct SharedGuard {
    key: String,
    _file: File,
}

impl SharedGuard {
    /// The target.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Exclusive locks on a set of targets, held by an operator; all released on drop.
#[derive(Debug)]
pub struct Exclusive {
    keys: Vec<String>,
    files: Vec<(PathBuf, File)>,
}

impl Exclusive {
    /// The targets held, sorted.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }
}

impl Drop for Exclusive {
    /// Clears the holder records (keeping the pid line) before the locks go, so a finished
    /// window leaves no record behind. Best effort: a record is ignored once the lock is free.
    fn drop(&mut self) {
        for (path, file) in &self.files {
            if let Ok(mut record) = read_record(file, path) {
                record.holder = None;
                let _ = write_record(file, path, &record);
            }
        }
    }
}

/// How [`LockDir::take_exclusive_with`] waits for busy targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fail with [`LockError::Busy`] at once.
    No,
    /// Wait as long as it takes.
    Forever,
    /// Wait until this instant, then fail with [`LockError::Busy`].
    Until(Instant),
}

/// A lock attempt on the file at a path: taken, or held by someone else (with the file,
/// to read its holder).
enum Attempt {
    Taken(File),
    Busy(File),
}

/// How often a lock attempt is made again when its file was unlinked under it.
const MAX_RELINKS: usize = 16;

/// Whether `file` is still the file at `path` (not unlinked, not replaced).
fn still_linked(file: &File, path: &Path) -> Result<bool, LockError> {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata().map_err(|source| LockError::Open { path: path.to_path_buf(), source })?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == ours.dev() && now.ino() == ours.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(LockError::Open { path: path.to_path_buf(), source }),
    }
}

/// A lock directory: `DIR/KEY.lock` per target.
#[derive(Debug, Clone)]
pub struct LockDir {
    dir: PathBuf,
}

impl LockDir {
    /// The lock directory at `dir` (nothing is created until a lock is taken).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LockDir { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks a target key: `^[a-z0-9][a-z0-9.-]{0,120}$` without `..`, so that a key can never
    /// become a path.
    pub fn check_key(key: &str) -> Result<(), LockError> {
        let bytes = key.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_KEY_LEN
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !key.contains("..");
        if ok { Ok(()) } else { Err(LockError::BadKey { key: key.to_string() }) }
    }

    /// The lock file of `key` (checked).
    fn path(&self, key: &str) -> Result<PathBuf, LockError> {
        Self::check_key(key)?;
        Ok(self.dir.join(format!("{key}.lock")))
    }

    /// Agent side: takes `key`'s lock shared, without blocking. Creates the directory (0755)
    /// and the lock file (0600) if missing; a lock path that is a symbolic link or not a
    /// regular file is refused.
    ///
    /// `Ok(Shared::Taken(guard))` holds the lock until the guard is dropped;
    /// `Ok(Shared::Maintenance(holder))` means an operator holds it (the holder as recorded, or
    /// [`Holder::unknown`] without a valid record).
    pub fn try_shared(&self, key: &str) -> Result<Shared, LockError> {
        let path = self.path(key)?;
        self.ensure_dir()?;
        match self.try_lock(&path, FlockOperation::NonBlockingLockShared)? {
            Attempt::Taken(file) => Ok(Shared::Taken(SharedGuard { key: key.to_string(), _file: file })),
            Attempt::Busy(file) => Ok(Shared::Maintenance(recorded_holder(&file, &path)?)),
        }
    }

    /// Opens (creating if missing) the lock file at `path` and tries `op` on it without
    /// blocking. A file unlinked meanwhile ([`LockDir::remove_if_free`]) is not the target's
    /// lock any more: the attempt is made again on the file now at the path.
    fn try_lock(&self, path: &Path, op: FlockOperation) -> Result<Attempt, LockError> {
        for _ in 0..MAX_RELINKS {
            let file = self.open_rw(path)?;
            let taken = try_flock(&file, path, op)?;
            if !still_linked(&file, path)? {
                continue;
            }
            return Ok(if taken { Attempt::Taken(file) } else { Attempt::Busy(file) });
        }
        let source = io::Error::other("the lock file was removed under every attempt to lock it");
        Err(LockError::Lock { path: path.to_path_buf(), source })
    }

    /// Removes `key`'s lock file if nobody holds or waits on it now: for a target that is
    /// gone, so that lock files do not pile up. Unlinks only while holding the lock
    /// exclusively (see the module). Returns whether it removed the file.
    pub fn remove_if_free(&self, key: &str) -> Result<bool, LockError> {
        let path = self.path(key)?;
        let Some(file) = open_existing(&path)? else { return Ok(false) };
        if !try_flock(&file, &path, FlockOperation::NonBlockingLockExclusive)? || !still_linked(&file, &path)? {
            return Ok(false);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(LockError::Remove { path, source }),
        }
    }

    /// Operator side: takes the locks of all `keys` exclusively, or none of them. See
    /// [`LockDir::take_exclusive_with`]; `wait` is [`Wait::Forever`] or [`Wait::No`].
    pub fn take_exclusive(&self, keys: &[String], holder: &Holder, wait: bool) -> Result<Exclusive, LockError> {
        self.take_exclusive_with(keys, holder, if wait { Wait::Forever } else { Wait::No }, |_, _| {})
    }

    /// Operator side: takes the locks of all `keys` exclusively, or none of them, and records
    /// `holder` in each lock file.
    ///
    /// Keys are de-duplicated and sorted, and each is tried without blocking in that order. If
    /// one is busy, every lock taken so far is released; then with [`Wait::No`] the result is
    /// [`LockError::Busy`] (after two quick retries if tend holds it: a shared lock may be a
    /// passing probe); otherwise `on_busy(key, by)` is called (once per change of who is waited
    /// for; `by` is `None` when tend holds it) and this waits on the busy target alone, holding
    /// nothing else, then tries the whole set again. So two operators asking for overlapping
    /// sets never deadlock and never both hold a target. With [`Wait::Until`], the wait polls
    /// (50 ms to 1 s) and ends with [`LockError::Busy`] at the deadline.
    pub fn take_exclusive_with(
        &self,
        keys: &[String],
        holder: &Holder,
        wait: Wait,
        mut on_busy: impl FnMut(&str, Option<&Holder>),
    ) -> Result<Exclusive, LockError> {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        let paths = keys.iter().map(|k| self.path(k)).collect::<Result<Vec<_>, _>>()?;
        if !keys.is_empty() {
            self.ensure_dir()?;
        }
        let mut tries = 0;
        let mut backoff = POLL_MIN;
        let mut last_reported: Option<(String, Option<Holder>)> = None;
        loop {
            tries += 1;
            let mut held = Vec::with_capacity(keys.len());
            let mut busy = None;
            for (key, path) in keys.iter().zip(&paths) {
                match self.try_lock(path, FlockOperation::NonBlockingLockExclusive)? {
                    Attempt::Taken(file) => held.push((path.clone(), file)),
                    Attempt::Busy(file) => {
                        busy = Some((key, path, file));
                        break;
                    }
                }
            }
            let Some((key, path, file)) = busy else {
                for (path, file) in &held {
                    let mut record = read_record(file, path)?;
                    record.holder = Some(holder.clone());
                    write_record(file, path, &record)?;
                }
                return Ok(Exclusive { keys, files: held });
            };
            drop(held);
            // Who is in the way: an exclusive holder makes even a shared attempt fail.
            let by = if try_flock(&file, path, FlockOperation::NonBlockingLockShared)? {
                unlock(&file, path)?;
                None
            } else {
                Some(recorded_holder(&file, path)?)
            };
            let busy_error = || LockError::Busy { key: key.clone(), by: by.clone() };
            match wait {
                Wait::No => {
                    if by.is_some() || tries >= NO_WAIT_TRIES {
                        return Err(busy_error());
                    }
                    std::thread::sleep(Duration::from_millis(5 * u64::from(tries)));
                }
                Wait::Forever | Wait::Until(_) => {
                    if last_reported.as_ref() != Some(&(key.clone(), by.clone())) {
                        on_busy(key, by.as_ref());
                        last_reported = Some((key.clone(), by.clone()));
                    }
                    if let Wait::Until(deadline) = wait {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(busy_error());
                        }
                        std::thread::sleep(backoff.min(left));
                        backoff = (backoff * 2).min(POLL_MAX);
                    } else {
                        // Wait for this one alone, then let it go and try the set again.
                        flock(&file, path, FlockOperation::LockExclusive)?;
                        unlock(&file, path)?;
                    }
                }
            }
        }
    }

    /// The holder of `key` if an operator holds it exclusively now. While the agent holds it
    /// shared, this is `None`: that is not maintenance. A missing lock file is `None`; nothing
    /// is created.
    pub fn holder(&self, key: &str) -> Result<Option<Holder>, LockError> {
        let path = self.path(key)?;
        let Some(file) = open_existing(&path)? else { return Ok(None) };
        if try_flock(&file, &path, FlockOperation::NonBlockingLockShared)? || !still_linked(&file, &path)? {
            // Free (closing the file releases the probe's lock at once), or being removed
            // by the agent as its target is gone.
            return Ok(None);
        }
        recorded_holder(&file, &path).map(Some)
    }

    /// Every target held exclusively now, with its holder, sorted by key (for `tend locks`).
    /// A missing directory has none. Files that are not `KEY.lock` are ignored.
    pub fn list(&self) -> Result<Vec<(String, Holder)>, LockError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(LockError::List { path: self.dir.clone(), source }),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| LockError::List { path: self.dir.clone(), source })?;
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else { continue };
            if Self::check_key(key).is_ok() {
                keys.push(key.to_string());
            }
        }
        keys.sort();
        let mut held = Vec::new();
        for key in keys {
            if let Some(holder) = self.holder(&key)? {
                held.push((key, holder));
            }
        }
        Ok(held)
    }

    /// Blocks until an operator's exclusive lock on `key` is released, then returns (keeping
    /// nothing). Returns at once if it is not held or has no lock file. For the agent, run it
    /// in `spawn_blocking`, to act on the target again when its maintenance window ends.
    pub fn wait_released(&self, key: &str) -> Result<(), LockError> {
        let path = self.path(key)?;
        let Some(file) = open_existing(&path)? else { return Ok(()) };
        flock(&file, &path, FlockOperation::LockShared)
    }

    /// Records the pid of `key`'s running instance (or that there is none) in line 1 of its
    /// lock file, creating it if missing. Writes only when the content changes, under a
    /// non-blocking shared lock; does nothing while an operator holds the target.
    pub fn record_pid(&self, key: &str, pid: Option<u32>) -> Result<(), LockError> {
        let path = self.path(key)?;
        self.ensure_dir()?;
        let Attempt::Taken(file) = self.try_lock(&path, FlockOperation::NonBlockingLockShared)? else {
            return Ok(());
        };
        let old = read_record(&file, &path)?;
        // Not held exclusively: a holder record in the file is stale, drop it.
        let new = Record { pid: pid.filter(|&p| p != 0), holder: None };
        if old != new { write_record(&file, &path, &new) } else { Ok(()) }
    }

    /// The pid recorded in `key`'s lock file by [`LockDir::record_pid`]; `None` when there is
    /// none or no lock file. Takes no lock and creates nothing.
    pub fn pid(&self, key: &str) -> Result<Option<u32>, LockError> {
        let path = self.path(key)?;
        let Some(file) = open_existing(&path)? else { return Ok(None) };
        Ok(read_record(&file, &path)?.pid)
    }

    /// Creates the lock directory (and its parents) if missing.
    fn ensure_dir(&self) -> Result<(), LockError> {
        let path = self.dir.clone();
        DirBuilder::new().recursive(true).mode(DIR_MODE).create(&self.dir).map_err(|source| {
            match source.raw_os_error().map(Errno::from_raw_os_error) {
                Some(Errno::EXIST | Errno::NOTDIR) => LockError::NotADirectory { path, source },
                Some(Errno::ACCESS | Errno::PERM | Errno::ROFS) => LockError::NotWritable { path, source },
                _ => LockError::CreateDir { path, source },
            }
        })
    }

    /// Opens (creating if missing) a lock file for reading and writing.
    fn open_rw(&self, path: &Path) -> Result<File, LockError> {
        open_lock_file(path, OFlags::RDWR | OFlags::CREATE).map_err(|e| match e {
            LockError::Open { path, source } => match source.raw_os_error().map(Errno::from_raw_os_error) {
                // The file is not there and could not be created: the directory's fault.
                Some(Errno::ACCESS | Errno::PERM | Errno::ROFS) if std::fs::symlink_metadata(&path).is_err() => {
                    LockError::NotWritable { path: self.dir.clone(), source }
                }
                Some(Errno::NOTDIR) => LockError::NotADirectory { path: self.dir.clone(), source },
                _ => LockError::Open { path, source },
            },
            e => e,
        })
    }
}

/// Opens an existing lock file read-only; `None` if it does not exist.
fn open_existing(path: &Path) -> Result<Option<File>, LockError> {
    match open_lock_file(path, OFlags::RDONLY) {
        Ok(file) => Ok(Some(file)),
        Err(LockError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens a lock file without following a symbolic link and checks it is a regular file.
/// `O_NONBLOCK` so that a FIFO or device put in its place cannot block the open.
fn open_lock_file(path: &Path, flags: OFlags) -> Result<File, LockError> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(path, flags, Mode::from_raw_mode(FILE_MODE)) {
        Ok(fd) => fd,
        Err(Errno::LOOP) if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => {
            return Err(LockError::Symlink { path: path.to_path_buf() });
        }
        Err(Errno::ISDIR) => return Err(LockError::NotRegular { path: path.to_path_buf() }),
        Err(e) => return Err(LockError::Open { path: path.to_path_buf(), source: e.into() }),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(|source| LockError::Open { path: path.to_path_buf(), source })?;
    if !meta.file_type().is_file() {
        return Err(LockError::NotRegular { path: path.to_path_buf() });
    }
    Ok(file)
}

/// A blocking flock operation (retried when interrupted by a signal).
fn flock(file: &File, path: &Path, op: FlockOperation) -> Result<(), LockError> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(LockError::Lock { path: path.to_path_buf(), source: e.into() }),
        }
    }
}

/// A non-blocking flock operation: `false` when the lock is held in a conflicting mode.
fn try_flock(file: &File, path: &Path, op: FlockOperation) -> Result<bool, LockError> {
    match flock(file, path, op) {
        Ok(()) => Ok(true),
        Err(LockError::Lock { source, .. }) if source.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

fn unlock(file: &File, path: &Path) -> Result<(), LockError> {
    flock(file, path, FlockOperation::Unlock)
}

/// Reads a lock file's record with positional reads (the descriptor's offset is never used).
fn read_record(file: &File, path: &Path) -> Result<Record, LockError> {
    let mut buf = vec![0u8; MAX_READ];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(LockError::Read { path: path.to_path_buf(), source }),
        }
    }
    Ok(Record::parse(&String::from_utf8_lossy(&buf[..len])))
}

/// Replaces the file's content (truncate, write, fsync), in place: the inode is the lock.
fn write_record(file: &File, path: &Path, record: &Record) -> Result<(), LockError> {
    let write = || -> io::Result<()> {
        file.set_len(0)?;
        file.write_all_at(record.render().as_bytes(), 0)?;
        file.sync_all()
    };
    write().map_err(|source| LockError::Write { path: path.to_path_buf(), source })
}

/// The holder recorded in a file held exclusively by someone else: the record if it is valid
/// and its process is alive, else [`Holder::unknown`] (a record left by a killed operator
/// while someone else, not `tend maintain`, holds the lock).
fn recorded_holder(file: &File, path: &Path) -> Result<Holder, LockError> {
    let holder = read_record(file, path)?.holder.filter(|h| process_exists(h.pid));
    Ok(holder.unwrap_or_else(Holder::unknown))
}

fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
    // EPERM: it exists, owned by someone else.
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// The current operator's name and uid, for a [`Holder`]: under sudo (uid 0 with `SUDO_USER`
/// and `SUDO_UID` set), the user who ran sudo; otherwise the name of the real uid in
/// `/etc/passwd`, or the uid as text if it has none there.
pub fn current_user() -> (String, u32) {
    let uid = rustix::process::getuid().as_raw();
    if uid == 0 {
        let sudo_user = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty());
        let sudo_uid = std::env::var("SUDO_UID").ok().and_then(|u| u.parse::<u32>().ok());
        if let (Some(user), Some(uid)) = (sudo_user, sudo_uid) {
            return (user, uid);
        }
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    (passwd_name(&passwd, uid).unwrap_or_else(|| uid.to_string()), uid)
}

/// The first user name with `uid` in passwd(5) text.
fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Holder {
        Holder {
            user: "alice".into(),
            uid: 1000,
            pid: 4242,
            reason: Some("swap disk".into()),
            since_ms: 1_795_318_500_000,
            until_ms: Some(1_795_325_700_000),
        }
    }

    #[test]
    fn accepts_file_name_safe_keys() {
        for key in ["web-1", "web.service", "nightly.job", "retro-db.backup", "0", &"a".repeat(121)] {
            assert!(LockDir::check_key(key).is_ok(), "{key}");
        }
    }

    #[test]
    fn refuses_keys_that_could_become_paths() {
        for key in ["../x", "a/b", "UPPER", "", ".hidden", "-x", "a..b", "a b", "é", "web_1", &"a".repeat(122)] {
            let err = LockDir::check_key(key).expect_err(key);
            assert_eq!(err.kind(), "bad-key");
            assert!(err.to_string().contains(&format!("{key:?}")), "{err}");
        }
        assert!(LockDir::check_key(&"a".repeat(200)).is_err());
    }

    #[test]
    fn describes_a_holder_with_what_is_known() {
        assert_eq!(
            alice().describe(),
            "by alice since 2026-11-22 03:35:00 UTC until 2026-11-22 05:35:00 UTC: swap disk"
        );
        let h = Holder { reason: None, until_ms: None, ..alice() };
        assert_eq!(h.describe(), "by alice since 2026-11-22 03:35:00 UTC");
        assert_eq!(Holder::unknown().describe(), "by unknown");
    }

    #[test]
    fn busy_errors_say_who_holds_the_target() {
        let e = LockError::Busy { key: "web-1".into(), by: None };
        assert_eq!(e.to_string(), "target web-1 is in use by tend");
        let e = LockError::Busy { key: "web-1".into(), by: Some(Holder { until_ms: None, ..alice() }) };
        assert_eq!(e.to_string(), "target web-1 is in maintenance (by alice since 2026-11-22 03:35:00 UTC: swap disk)");
    }

    #[test]
    fn the_file_format_round_trips() {
        for record in [
            Record::default(),
            Record { pid: Some(17), holder: None },
            Record { pid: None, holder: Some(alice()) },
            Record { pid: Some(17), holder: Some(Holder { reason: None, until_ms: None, ..alice() }) },
        ] {
            assert_eq!(Record::parse(&record.render()), record, "{:?}", record.render());
        }
        assert_eq!(Record::default().render(), "");
        assert_eq!(Record { pid: Some(17), holder: None }.render(), "17\n");
        assert_eq!(
            Record { pid: None, holder: Some(alice()) }.render(),
            "\n{\"user\":\"alice\",\"uid\":1000,\"pid\":4242,\"reason\":\"swap disk\",\"sinceMs\":1795318500000,\"untilMs\":1795325700000}\n"
        );
    }

    #[test]
    fn parsing_is_lenient_about_damaged_content() {
        assert_eq!(Record::parse("garbage\n{not json\n"), Record::default());
        assert_eq!(Record::parse("  42  \n"), Record { pid: Some(42), holder: None });
        assert_eq!(Record::parse("0\n"), Record::default());
        // Two interleaved writers: extra lines are ignored.
        assert_eq!(Record::parse("42\n\n\n"), Record { pid: Some(42), holder: None });
    }

    #[test]
    fn names_users_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(passwd_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(passwd_name(passwd, 7), None);
    }
}
