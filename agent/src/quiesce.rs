//! Quiescing services around a backup: stop them (dependents first), make sure they are
//! really stopped — containers exited, units inactive, no process holding a file open under
//! the backed-up paths — and start them again afterwards in the reverse order, **whatever
//! happens**. A quiesce in progress is journaled in the state directory before anything is
//! stopped, so a tend killed mid-backup restarts the stopped services when it comes back
//! ([`recover`]).
//!
//! The services' maintenance locks are held exclusively for the whole window (by the
//! caller), so the agent leaves them alone while they are down for the backup.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tend_specs::Desired;
use tend_specs::service::Runtime;
use tracing::{info, warn};

use crate::engine::{ContainerEngine, EngineError};
use crate::model::{RunState, instance_name};
use crate::systemd::{ActiveState, SystemdError, UnitEngine};

/// Errors of quiescing.
#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    /// A service to stop is not in the specs.
    #[error("quiesce: no service `{0}` in the specs")]
    UnknownService(String),
    /// Docker refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// systemd refused.
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    /// The needed engine is not there.
    #[error("{0} is not available to stop {1}")]
    NoEngine(&'static str, String),
    /// A service did not stop in time.
    #[error("{what} was still {state} after {waited:?}: nothing was read")]
    NotStopped {
        /// The container or unit.
        what: String,
        /// What it was.
        state: String,
        /// How long tend waited.
        waited: Duration,
    },
    /// Processes still hold files open under the backed-up paths.
    #[error("files under {path} are still open ({holders}): nothing was read")]
    FilesOpen {
        /// The path.
        path: PathBuf,
        /// `pid NAME` of each holder.
        holders: String,
    },
    /// The journal could not be written or read.
    #[error("quiesce journal {path}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Some services could not be started again (each named with its error).
    #[error("could not start again: {0}")]
    Resume(String),
}

/// What was stopped, in stop order, recorded before anything is stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    /// The backup.
    pub backup: String,
    /// The pid of the tend that quiesced.
    pub pid: u32,
    /// When (ms since the epoch).
    pub started_ms: u64,
    /// Targets to start again, in the order they were stopped: `docker:NAME` (a
    /// container) or `unit:NAME.service`.
    pub stopped: Vec<String>,
}

/// The journal file of backup `name`.
pub fn journal_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("quiesce").join(format!("{name}.json"))
}

fn write_journal(path: &Path, journal: &Journal) -> Result<(), QuiesceError> {
    use std::io::Write;
    let err = |source| QuiesceError::Journal { path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("journal")));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&serde_json::to_vec_pretty(journal).map_err(std::io::Error::other).map_err(err)?).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// The stop order of `services`: dependents before what they depend on.
pub fn stop_order(desired: &Desired, services: &[String]) -> Result<Vec<String>, QuiesceError> {
    for s in services {
        if !desired.services.contains_key(s) {
            return Err(QuiesceError::UnknownService(s.clone()));
        }
    }
    let wanted: BTreeSet<&str> = services.iter().map(String::as_str).collect();
    // Depth-first over dependsOn: a service comes after everything that depends on it.
    let mut order: Vec<String> = Vec::new();
    fn visit(
        desired: &Desired,
        name: &str,
        wanted: &BTreeSet<&str>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        for s in desired.services.values() {
            if s.spec.depends_on.iter().any(|d| d.name == name) {
                visit(desired, &s.name, wanted, seen, out);
            }
        }
        if wanted.contains(name) {
            out.push(name.to_string());
        }
    }
    let mut seen = BTreeSet::new();
    for s in services {
        visit(desired, s, &wanted, &mut seen, &mut order);
    }
    Ok(order)
}

/// Stops `services` (dependents first) and checks they are down and that no process holds
/// a file open under `paths`. The journal is written before the first stop and updated as
/// targets stop, so [`recover`] (or [`resume`]) can always start again what was stopped.
/// On an error, what was stopped so far is in the returned journal's file: the caller
/// resumes it.
#[allow(clippy::too_many_arguments)]
pub async fn quiesce<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    desired: &Desired,
    backup: &str,
    services: &[String],
    paths: &[PathBuf],
    timeout: Duration,
    journal_file: &Path,
) -> Result<(), QuiesceError> {
    let order = stop_order(desired, services)?;
    let mut journal = Journal {
        backup: backup.to_string(),
        pid: std::process::id(),
        started_ms: crate::apply::now_ms(),
        stopped: vec![],
    };
    write_journal(journal_file, &journal)?;
    for name in &order {
        let s = &desired.services[name];
        match s.spec.runtime {
            Runtime::Docker => {
                let docker = docker.ok_or_else(|| QuiesceError::NoEngine("Docker", name.clone()))?;
                for i in 1..=s.spec.replicas {
                    let c = instance_name(name, i);
                    let Some(p) = docker.probe(&c).await? else { continue };
                    if p.state != RunState::Running {
                        continue;
                    }
                    // Journaled before the stop: a kill between the two starts it again,
                    // which is what it was.
                    journal.stopped.push(format!("docker:{c}"));
                    write_journal(journal_file, &journal)?;
                    info!(container = %c, "stopping for the backup");
                    docker.stop(&c, &c, Some(timeout.as_secs().max(1))).await?;
                }
            }
            Runtime::Systemd => {
                let systemd = systemd.ok_or_else(|| QuiesceError::NoEngine("systemd", name.clone()))?;
                let unit = format!("{name}.service");
                let st = systemd.states(std::slice::from_ref(&unit)).await?;
                if !st.first().is_some_and(|u| matches!(u.active_state, ActiveState::Active | ActiveState::Activating))
                {
                    continue;
                }
                journal.stopped.push(format!("unit:{unit}"));
                write_journal(journal_file, &journal)?;
                info!(%unit, "stopping for the backup");
                systemd.stop(&unit).await?;
            }
        }
    }
    // Really stopped?
    let deadline = Instant::now() + timeout;
    for t in &journal.stopped {
        loop {
            let (what, state, down) = match t.split_once(':') {
                Some(("docker", c)) => {
                    let docker = docker.ok_or_else(|| QuiesceError::NoEngine("Docker", c.to_string()))?;
                    let p = docker.probe(c).await?;
                    let state = p.as_ref().map_or("gone".to_string(), |p| format!("{:?}", p.state).to_lowercase());
                    (c.to_string(), state, p.is_none_or(|p| matches!(p.state, RunState::Exited | RunState::Dead)))
                }
                Some(("unit", u)) => {
                    let systemd = systemd.ok_or_else(|| QuiesceError::NoEngine("systemd", u.to_string()))?;
                    let st = systemd.states(&[u.to_string()]).await?;
                    let a = st.first().map(|s| s.active_state.clone());
                    let down = matches!(a, Some(ActiveState::Inactive | ActiveState::Failed) | None);
                    (u.to_string(), a.map_or("gone".into(), |a| a.as_str().to_string()), down)
                }
                _ => break,
            };
            if down {
                break;
            }
            if Instant::now() > deadline {
                return Err(QuiesceError::NotStopped { what, state, waited: timeout });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for path in paths {
        let holders = open_under(path);
        if !holders.is_empty() {
            return Err(QuiesceError::FilesOpen { path: path.clone(), holders: holders.join(", ") });
        }
    }
    Ok(())
}

/// Processes (`PID NAME`) with a file open under `path`, from /proc (tend itself excluded).
pub fn open_under(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        let holds = fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(path)));
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} {}", comm.trim()));
        }
    }
    out
}

/// Starts again what the journal says was stopped, in the reverse order (dependencies
/// first), and removes the journal once all of it runs. Every target is tried even when
/// one fails; the error names each that could not start.
pub async fn resume<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    journal_file: &Path,
) -> Result<(), QuiesceError> {
    let text = match std::fs::read(journal_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(QuiesceError::Journal { path: journal_file.to_path_buf(), source }),
    };
    let journal: Journal = serde_json::from_slice(&text)
        .map_err(|e| QuiesceError::Journal { path: journal_file.to_path_buf(), source: std::io::Error::other(e) })?;
    let mut failed = Vec::new();
    for t in journal.stopped.iter().rev() {
        let result = match t.split_once(':') {
            Some(("docker", c)) => match docker {
                Some(d) => d.start(c, c).await.map_err(|e| crate::apply::chain(&e)),
                None => Err("Docker is not available".to_string()),
            },
            Some(("unit", u)) => match systemd {
                Some(s) => s.start(u).await.map(|_| ()).map_err(|e| crate::apply::chain(&e)),
                None => Err("systemd is not available".to_string()),
            },
            _ => Err("unknown journal entry".to_string()),
        };
        match result {
            Ok(()) => info!(target = %t, "started again after the backup"),
            Err(e) => {
                warn!(target = %t, error = %e, "could not start again after the backup");
                failed.push(format!("{t}: {e}"));
            }
        }
    }
    if !failed.is_empty() {
        // The journal stays: the next run (or the agent) tries again.
        return Err(QuiesceError::Resume(failed.join("; ")));
    }
    std::fs::remove_file(journal_file)
        .map_err(|source| QuiesceError::Journal { path: journal_file.to_path_buf(), source })
}

/// Journals left by a tend that was killed mid-backup (its pid is gone): their services
/// are started again. Returns the backups recovered.
pub async fn recover<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    state_dir: &Path,
) -> Vec<(String, Result<(), QuiesceError>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_dir.join("quiesce")) else { return out };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Ok(journal) = std::fs::read(&path).map(|t| serde_json::from_slice::<Journal>(&t)) else { continue };
        let Ok(journal) = journal else { continue };
        if journal.pid != std::process::id() && Path::new(&format!("/proc/{}", journal.pid)).exists() {
            // Still running (another tend's backup in progress).
            continue;
        }
        warn!(backup = %journal.backup, "a backup was interrupted while its services were stopped: starting them again");
        let r = resume(docker, systemd, &path).await;
        out.push((journal.backup.clone(), r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        let svc = |name: &str, deps: &str| {
            format!(
                "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: 'x:1'\n{deps}"
            )
        };
        let yaml = [
            svc("mongo", ""),
            svc("api", "  dependsOn: [{name: mongo}]\n"),
            svc("web", "  dependsOn: [{name: api}]\n"),
            svc("other", ""),
        ]
        .concat();
        tend_specs::load_str(Path::new("t.yaml"), &yaml).expect("valid")
    }

    #[test]
    fn dependents_stop_before_what_they_depend_on() {
        let d = desired();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(stop_order(&d, &s(&["mongo", "api", "web"])).expect("order"), s(&["web", "api", "mongo"]));
        assert_eq!(stop_order(&d, &s(&["web", "mongo"])).expect("order"), s(&["web", "mongo"]));
        assert!(matches!(stop_order(&d, &s(&["nope"])), Err(QuiesceError::UnknownService(_))));
    }

    #[test]
    fn open_files_under_a_path_are_found() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("db.lock");
        std::fs::write(&file, "x").expect("write");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3<{}; sleep 5", file.display()))
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = Vec::new();
        while Instant::now() < deadline {
            found = open_under(dir.path());
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.iter().any(|h| h.contains(&child.id().to_string())), "{found:?}");
    }
}
