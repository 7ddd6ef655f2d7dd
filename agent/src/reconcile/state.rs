//! tend's state directory: holds and restart history that must survive restarts of tend.
//! One JSON file, written atomically (temp file, fsync, rename), guarded by an flock so
//! two tend processes never interleave a read-modify-write.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory could not be created or opened.
    #[error("creating state directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The lock could not be taken.
    #[error("locking state directory {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the state file failed.
    #[error("reading state file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid.
    #[error("state file {path} is corrupt (move it aside to start afresh; holds in it would be lost)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the state file failed.
    #[error("writing state file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A hold: an instance kept down for triage after an exit tend did not cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The service.
    pub service: String,
    /// The instance number.
    pub instance: u32,
    /// When the hold was taken (ms since the epoch).
    pub since_ms: u64,
    /// The exit code seen, if any.
    pub exit_code: Option<i64>,
    /// Taken because the host booted after going down uncleanly (`holdAfterUncleanBoot`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unclean_boot: bool,
}

/// Restart history of one container, for backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RestartRecord {
    /// Restarts in the current crash loop.
    pub attempts: u32,
    /// When tend last restarted it (ms since the epoch).
    pub last_ms: u64,
}

/// Everything tend remembers between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Holds by container name.
    pub holds: BTreeMap<String, Hold>,
    /// Restart history by container name.
    pub restarts: BTreeMap<String, RestartRecord>,
    /// Instances released from a hold (`tend release`) and not started since, by container
    /// name → when released (ms since the epoch). Their stopped containers are started once
    /// instead of being held again.
    pub released: BTreeMap<String, u64>,
    /// Set by `tend drain`: the node takes on no new work and its services stay stopped
    /// until `tend undrain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// Instances (container names) and units a drain stopped and that have not run since:
    /// once undrained they are started again whatever their restart policy.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub stopped_by_drain: BTreeSet<String>,
    /// Instances (container names) and units that were stopped on purpose rather than
    /// crashing — by an operator under a maintenance lock, by a backup's quiesce, by a clean
    /// shutdown of the host — and have not run since, with why. Once nothing holds them they
    /// are started again whatever their restart policy (`never` aside): `restart: hold`
    /// is for crashes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stopped_on_purpose: BTreeMap<String, StopCause>,
}

/// Who stopped an instance that did not crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StopCause {
    /// It was under a maintenance lock (`tend maintain`, or a backup) when last seen.
    Maintenance,
    /// A backup or restore stopped it and was killed before it started it again.
    Backup,
    /// The host was shut down cleanly (the agent recorded its clean stop in that boot).
    HostShutdown,
}

impl std::fmt::Display for StopCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopCause::Maintenance => "stopped under a maintenance lock",
            StopCause::Backup => "stopped by an interrupted backup",
            StopCause::HostShutdown => "stopped by a clean shutdown of the host",
        })
    }
}

/// A drain of the node (`tend drain`): who, since when, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// Why, as given with `--reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the node was drained (ms since the epoch).
    pub since_ms: u64,
    /// Who drained it.
    pub user: String,
}

/// The state directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

const STATE_FILE: &str = "state.json";

impl StateDir {
    /// Opens (creating if needed) and exclusively locks the state directory. Waits for
    /// another tend that holds it.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir { path: dir.to_path_buf(), source })?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StateError::Lock { path: lock_path.clone(), source })?;
        lock.lock().map_err(|source| StateError::Lock { path: lock_path, source })?;
        Ok(Self { dir: dir.to_path_buf(), _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads the state; a missing file is an empty state.
    pub fn load(&self) -> Result<State, StateError> {
        read_state(&self.dir)
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| StateError::Write { path, source })
    }
}

/// Releases the holds on `name` (a service: all its instances; or one instance's container
/// or unit name): they are started once more by the next pass. Returns what was released
/// (empty when nothing was held under `name`).
pub fn release(dir: &Path, name: &str, now_ms: u64) -> Result<Vec<String>, StateError> {
    let dir = StateDir::open(dir)?;
    let mut st = dir.load()?;
    let released: Vec<String> =
        st.holds.iter().filter(|(k, h)| *k == name || h.service == name).map(|(k, _)| k.clone()).collect();
    if released.is_empty() {
        return Ok(released);
    }
    for k in &released {
        st.holds.remove(k);
        st.restarts.remove(k);
        st.released.insert(k.clone(), now_ms);
    }
    dir.save(&st)?;
    Ok(released)
}

/// Drains the node (`tend drain`): records `drain` unless the node is drained already.
/// Returns the drain in force afterwards and whether it was already there (then only a new
/// reason, when given, replaces the old one).
pub fn drain(dir: &Path, drain: Drain) -> Result<(Drain, bool), StateError> {
    let dir = StateDir::open(dir)?;
    let mut st = dir.load()?;
    let (now, already) = match st.drain.take() {
        Some(mut old) => {
            if drain.reason.is_some() {
                old.reason = drain.reason;
            }
            (old, true)
        }
        None => (drain, false),
    };
    st.drain = Some(now.clone());
    dir.save(&st)?;
    Ok((now, already))
}

/// Undrains the node (`tend undrain`): the next pass starts what the drain stopped. Returns
/// the drain that was lifted (`None`: the node was not drained).
pub fn undrain(dir: &Path) -> Result<Option<Drain>, StateError> {
    let dir = StateDir::open(dir)?;
    let mut st = dir.load()?;
    let lifted = st.drain.take();
    if lifted.is_some() {
        dir.save(&st)?;
    }
    Ok(lifted)
}

/// Reads the state without locking (for read-only commands: status, plan).
pub fn read_state(dir: &Path) -> Result<State, StateError> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(StateError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_missing_file_is_empty() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = StateDir::open(tmp.path()).expect("open");
        assert_eq!(dir.load().expect("load"), State::default());
        let mut s = State::default();
        s.holds.insert(
            "db-1".into(),
            Hold { service: "db".into(), instance: 1, since_ms: 5, exit_code: Some(3), unclean_boot: false },
        );
        s.restarts.insert("web-1".into(), RestartRecord { attempts: 2, last_ms: 9 });
        dir.save(&s).expect("save");
        assert_eq!(read_state(tmp.path()).expect("read"), s);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_state() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join(STATE_FILE), b"{not json").expect("write");
        let err = read_state(tmp.path()).expect_err("corrupt");
        assert!(matches!(err, StateError::Corrupt { .. }));
    }
}
