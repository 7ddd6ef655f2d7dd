//! Quiescing services around a backup or a restore: stop them the way each says it stops
//! (its `stopSignal` and `stopTimeout`), dependents first and independent services at once,
//! make sure they are really stopped — containers exited, units inactive, no process holding
//! a file open under the backed-up paths — and start them again afterwards in dependency
//! order, each awaited ready before its dependents, **whatever happens**.
//!
//! A stop that had to kill its service (the stop timeout ran out and it got SIGKILL) is
//! reported in [`Quiesced::killed`]: a backup must not archive what such a writer left.
//!
//! A quiesce in progress is journaled in the state directory before anything is stopped, so
//! a tend killed mid-backup has its services started again by the next tend that looks
//! ([`recover`]): the agent on its next pass, `tend apply`, or the next run.
//!
//! The services' maintenance locks are held exclusively for the whole window (by the
//! caller), so the agent leaves them alone while they are down for the backup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tend_specs::Desired;
use tend_specs::service::Runtime;
use tracing::{info, warn};

use crate::engine::systemd::{ActiveState, SystemdError, UnitEngine};
use crate::engine::{ContainerEngine, EngineError};
use crate::reconcile::model::{RunState, instance_name};

/// Docker's stop timeout when neither the spec nor the image sets one.
const DOCKER_DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The exit code Docker reports for a container whose main process got SIGKILL.
const EXIT_SIGKILL: i64 = 128 + 9;

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
    #[error("{what} was still {state} {waited:?} after it was stopped (quiesce.timeout): nothing was read")]
    NotStopped {
        /// The container or unit.
        what: String,
        /// What it was.
        state: String,
        /// How long tend waited.
        waited: Duration,
    },
    /// Processes still hold files open under the backed-up paths.
    #[error("files under {path} were still open {waited:?} after the services stopped ({holders}): nothing was read")]
    FilesOpen {
        /// The path.
        path: PathBuf,
        /// `pid NAME` of each holder.
        holders: String,
        /// How long tend waited (quiesce.timeout).
        waited: Duration,
    },
    /// A writer had to be killed: what it left may be half written.
    #[error(
        "{killed} did not stop within its stop timeout and was killed, so its data may be half written: nothing was archived (give it a longer stopTimeout)"
    )]
    Killed {
        /// Each killed target, with its stop timeout.
        killed: String,
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
    /// Services were started again but did not become ready in time.
    #[error("started again, but not ready: {0}")]
    NotReady(String),
}

/// What was stopped, recorded before anything is stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    /// The backup.
    pub backup: String,
    /// The pid of the tend that quiesced.
    pub pid: u32,
    /// When (ms since the epoch).
    pub started_ms: u64,
    /// Targets to start again, wave by wave in the order they were stopped (dependents
    /// first; the targets of a wave stopped at once): `docker:NAME` (a container) or
    /// `unit:NAME.service`.
    #[serde(default)]
    pub waves: Vec<Vec<String>>,
    /// Targets in stop order, as journals of earlier versions recorded them (read only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<String>,
}

impl Journal {
    /// The waves to start again, last stopped first; a journal of an earlier version has
    /// one target per wave.
    fn resume_order(&self) -> Vec<Vec<String>> {
        let legacy = self.stopped.iter().map(|t| vec![t.clone()]);
        self.waves.iter().cloned().chain(legacy).filter(|w| !w.is_empty()).rev().collect()
    }

    /// Every target it holds.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.waves.iter().flatten().chain(&self.stopped).map(String::as_str)
    }
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

/// The largest journal read (they list a few targets).
const MAX_JOURNAL_BYTES: u64 = 1024 * 1024;

/// Reads a journal; `None` when there is none.
pub fn read_journal(path: &Path) -> Result<Option<Journal>, QuiesceError> {
    use std::io::Read;
    let err = |source| QuiesceError::Journal { path: path.to_path_buf(), source };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if !file.metadata().map_err(err)?.is_file() {
        return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let mut text = Vec::new();
    file.take(MAX_JOURNAL_BYTES).read_to_end(&mut text).map_err(err)?;
    serde_json::from_slice(&text).map(Some).map_err(|e| err(std::io::Error::other(e)))
}

/// The waves in which `services` stop: each wave holds the services that no service still
/// running depends on (through any chain of `dependsOn`, also through services not in the
/// list), so dependents stop before what they depend on and independent services together.
/// Starting again goes through the waves in reverse.
pub fn stop_waves(desired: &Desired, services: &[String]) -> Result<Vec<Vec<String>>, QuiesceError> {
    for s in services {
        if !desired.services.contains_key(s) {
            return Err(QuiesceError::UnknownService(s.clone()));
        }
    }
    // Depth of a service: 0 when nothing wanted depends on it (transitively), else one more
    // than its deepest wanted dependent.
    let wanted: BTreeSet<&str> = services.iter().map(String::as_str).collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in desired.services.values() {
        for d in &s.spec.depends_on {
            dependents.entry(d.name.as_str()).or_default().push(s.name.as_str());
        }
    }
    fn depth<'a>(
        name: &'a str,
        wanted: &BTreeSet<&str>,
        dependents: &BTreeMap<&'a str, Vec<&'a str>>,
        memo: &mut BTreeMap<&'a str, Option<usize>>,
        visiting: &mut BTreeSet<&'a str>,
    ) -> Option<usize> {
        if let Some(d) = memo.get(name) {
            return *d;
        }
        if !visiting.insert(name) {
            return None; // a cycle (validation forbids them): no order from it
        }
        let mut deepest: Option<usize> = None;
        for dep in dependents.get(name).into_iter().flatten() {
            let own = depth(dep, wanted, dependents, memo, visiting);
            let through = if wanted.contains(dep) { own.map(|d| d + 1).or(Some(1)) } else { own };
            deepest = deepest.max(through);
        }
        visiting.remove(name);
        memo.insert(name, deepest);
        deepest
    }
    let mut memo = BTreeMap::new();
    let mut waves: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for s in services {
        let d = depth(s, &wanted, &dependents, &mut memo, &mut BTreeSet::new()).unwrap_or(0);
        let wave = waves.entry(d).or_default();
        if !wave.contains(s) {
            wave.push(s.clone());
        }
    }
    Ok(waves.into_values().collect())
}

/// A container or a unit stopped for a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Container(String),
    Unit(String),
}

impl Target {
    fn parse(text: &str) -> Option<Target> {
        match text.split_once(':')? {
            ("docker", c) => Some(Target::Container(c.to_string())),
            ("unit", u) => Some(Target::Unit(u.to_string())),
            _ => None,
        }
    }

    fn journaled(&self) -> String {
        match self {
            Target::Container(c) => format!("docker:{c}"),
            Target::Unit(u) => format!("unit:{u}"),
        }
    }
}

/// What quiescing did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quiesced {
    /// The targets that had to be killed (their stop timeout ran out), each with it.
    pub killed: Vec<String>,
}

/// Stops `services` in [`stop_waves`] (each as its spec says it stops), then waits up to
/// `timeout` for them to be seen down and for every file under `paths` to be closed. The
/// journal is written before each wave stops, so [`recover`] (or [`resume`]) can always
/// start again what was stopped. On an error, what was stopped so far is in the journal's
/// file: the caller resumes it.
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
) -> Result<Quiesced, QuiesceError> {
    let waves = stop_waves(desired, services)?;
    let mut journal = Journal {
        backup: backup.to_string(),
        pid: std::process::id(),
        started_ms: crate::support::now_ms(),
        ..Default::default()
    };
    write_journal(journal_file, &journal)?;
    let mut killed = Vec::new();
    for wave in &waves {
        let mut targets = Vec::new();
        for name in wave {
            targets.extend(running_targets(docker, systemd, desired, name).await?);
        }
        if targets.is_empty() {
            continue;
        }
        // Journaled before the stops: a kill between the two starts them again, which is
        // what they were.
        journal.waves.push(targets.iter().map(Target::journaled).collect());
        write_journal(journal_file, &journal)?;
        let stops = targets.iter().map(|t| stop_target(docker, systemd, desired, t));
        for stopped in futures::future::join_all(stops).await {
            killed.extend(stopped?);
        }
    }
    let deadline = Instant::now() + timeout;
    for t in journal.targets().filter_map(Target::parse) {
        wait_down(docker, systemd, &t, deadline, timeout).await?;
    }
    for path in paths {
        wait_files_closed(path, deadline, timeout).await?;
    }
    Ok(Quiesced { killed })
}

/// The running instances (or the active unit) of service `name`.
async fn running_targets<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    desired: &Desired,
    name: &str,
) -> Result<Vec<Target>, QuiesceError> {
    let s = &desired.services[name];
    let mut out = Vec::new();
    match s.spec.runtime {
        Runtime::Docker => {
            let docker = docker.ok_or_else(|| QuiesceError::NoEngine("Docker", name.to_string()))?;
            for i in s.instances() {
                let c = instance_name(name, i);
                if docker.probe(&c).await?.is_some_and(|p| p.state == RunState::Running) {
                    out.push(Target::Container(c));
                }
            }
        }
        Runtime::Systemd => {
            let systemd = systemd.ok_or_else(|| QuiesceError::NoEngine("systemd", name.to_string()))?;
            let unit = format!("{name}.service");
            let st = systemd.states(std::slice::from_ref(&unit)).await?;
            if st.first().is_some_and(|u| matches!(u.active_state, ActiveState::Active | ActiveState::Activating)) {
                out.push(Target::Unit(unit));
            }
        }
    }
    Ok(out)
}

/// Stops one target the way its service stops: a container with its stop signal and stop
/// timeout (Docker's `stop`, which sends the container's signal and kills after the
/// timeout), a unit by a stop job (its `KillSignal=` and `TimeoutStopSec=`). Returns the
/// target, with its timeout, when it had to be killed.
async fn stop_target<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    desired: &Desired,
    target: &Target,
) -> Result<Option<String>, QuiesceError> {
    match target {
        Target::Container(c) => {
            let docker = docker.ok_or_else(|| QuiesceError::NoEngine("Docker", c.clone()))?;
            let service = c.rsplit_once('-').map(|(s, _)| s).and_then(|s| desired.services.get(s));
            let timeout = service.and_then(|s| s.spec.stop_timeout).map(|t| t.get());
            info!(container = %c, ?timeout, "stopping for the backup");
            docker.stop(c, c, timeout.map(|t| t.as_secs())).await?;
            let killed = docker.probe(c).await?.and_then(|p| p.exit_code) == Some(EXIT_SIGKILL);
            Ok(killed.then(|| {
                let t = timeout.unwrap_or(DOCKER_DEFAULT_STOP_TIMEOUT);
                format!("{c} (stop timeout {})", tend_specs::quantity::Duration::from_millis(t.as_millis() as u64))
            }))
        }
        Target::Unit(u) => {
            let systemd = systemd.ok_or_else(|| QuiesceError::NoEngine("systemd", u.clone()))?;
            info!(unit = %u, "stopping for the backup");
            systemd.stop(u).await?;
            let st = systemd.states(std::slice::from_ref(u)).await?;
            // systemd's Result after a stop whose TimeoutStopSec= ran out (then SIGKILL).
            let killed = st.first().is_some_and(|s| s.result == "timeout");
            Ok(killed.then(|| format!("{u} (TimeoutStopSec)")))
        }
    }
}

/// Waits until `target` is down (exited, inactive or gone).
async fn wait_down<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    target: &Target,
    deadline: Instant,
    waited: Duration,
) -> Result<(), QuiesceError> {
    loop {
        let (what, state, down) = match target {
            Target::Container(c) => {
                let docker = docker.ok_or_else(|| QuiesceError::NoEngine("Docker", c.clone()))?;
                let p = docker.probe(c).await?;
                let state = p.as_ref().map_or("gone".to_string(), |p| format!("{:?}", p.state).to_lowercase());
                (c, state, p.is_none_or(|p| matches!(p.state, RunState::Exited | RunState::Dead)))
            }
            Target::Unit(u) => {
                let systemd = systemd.ok_or_else(|| QuiesceError::NoEngine("systemd", u.clone()))?;
                let st = systemd.states(std::slice::from_ref(u)).await?;
                let a = st.first().map(|s| s.active_state.clone());
                let down = matches!(a, Some(ActiveState::Inactive | ActiveState::Failed) | None);
                (u, a.map_or("gone".into(), |a| a.as_str().to_string()), down)
            }
        };
        if down {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(QuiesceError::NotStopped { what: what.clone(), state, waited });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no process holds a file open under `path` (a helper a service left behind
/// may take a moment to exit).
async fn wait_files_closed(path: &Path, deadline: Instant, waited: Duration) -> Result<(), QuiesceError> {
    loop {
        let p = path.to_path_buf();
        let holders = tokio::task::spawn_blocking(move || open_under(&p)).await.unwrap_or_default();
        if holders.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(QuiesceError::FilesOpen { path: path.to_path_buf(), holders: holders.join(", "), waited });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

/// Starts again what the journal says was stopped, wave by wave in reverse (dependencies
/// first): the targets of a wave at once, each awaited ready (healthy, or running without a
/// health check, as a new instance must be) before the next wave starts. The journal is
/// removed once everything was started; a target that would not start keeps it, so the next
/// [`recover`] tries again. Every target is tried whatever fails; the error names each.
pub async fn resume<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    desired: Option<&Desired>,
    journal_file: &Path,
) -> Result<(), QuiesceError> {
    let Some(journal) = read_journal(journal_file)? else { return Ok(()) };
    let (mut not_started, mut not_ready) = (Vec::new(), Vec::new());
    for wave in journal.resume_order() {
        let starts = wave.iter().map(|t| start_target(docker, systemd, desired, t));
        for (t, result) in wave.iter().zip(futures::future::join_all(starts).await) {
            match result {
                Ok(()) => info!(target = %t, "started again"),
                Err(Resumed::NotStarted(e)) => {
                    warn!(target = %t, error = %e, "could not start again");
                    not_started.push(format!("{t}: {e}"));
                }
                Err(Resumed::NotReady(e)) => {
                    warn!(target = %t, error = %e, "started again, but not ready");
                    not_ready.push(format!("{t}: {e}"));
                }
            }
        }
    }
    if !not_started.is_empty() {
        // The journal stays: the next run, `tend apply` or the agent tries again.
        return Err(QuiesceError::Resume(not_started.join("; ")));
    }
    std::fs::remove_file(journal_file)
        .map_err(|source| QuiesceError::Journal { path: journal_file.to_path_buf(), source })?;
    if !not_ready.is_empty() {
        return Err(QuiesceError::NotReady(not_ready.join("; ")));
    }
    Ok(())
}

/// Why one target is not back.
enum Resumed {
    NotStarted(String),
    NotReady(String),
}

async fn start_target<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    desired: Option<&Desired>,
    target: &str,
) -> Result<(), Resumed> {
    let chain = |e: &dyn std::error::Error| crate::support::chain(e);
    match Target::parse(target) {
        Some(Target::Container(c)) => {
            let d = docker.ok_or_else(|| Resumed::NotStarted("Docker is not available".into()))?;
            d.start(&c, &c).await.map_err(|e| Resumed::NotStarted(chain(&e)))?;
            let service = c.rsplit_once('-').and_then(|(s, _)| desired?.services.get(s));
            match service {
                Some(s) => {
                    crate::reconcile::execute::await_ready(d, &c, s).await.map_err(|e| Resumed::NotReady(chain(&e)))
                }
                None => Ok(()),
            }
        }
        Some(Target::Unit(u)) => {
            let s = systemd.ok_or_else(|| Resumed::NotStarted("systemd is not available".into()))?;
            match s.start(&u).await.map_err(|e| Resumed::NotStarted(chain(&e)))? {
                crate::engine::systemd::JobResult::Done => Ok(()),
                other => Err(Resumed::NotStarted(format!("its start job ended: {other:?}"))),
            }
        }
        None => Err(Resumed::NotStarted("unknown journal entry".into())),
    }
}

/// Whether the tend that wrote `journal` still runs (a backup in progress).
fn writer_alive(journal: &Journal) -> bool {
    journal.pid != std::process::id() && Path::new(&format!("/proc/{}", journal.pid)).exists()
}

/// The backups whose journals were left by a tend that is gone: a run killed while its
/// services were stopped.
pub fn interrupted(state_dir: &Path) -> Vec<(PathBuf, Journal)> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("quiesce")) else { return Vec::new() };
    let mut out: Vec<(PathBuf, Journal)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
        .filter_map(|p| read_journal(&p).ok().flatten().map(|j| (p, j)))
        .filter(|(_, j)| !writer_alive(j))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Starts again the services of every interrupted run ([`interrupted`]), as [`resume`]
/// does, so the host is as it was before the run: what ran runs, what was held or stopped
/// stays so (only running targets were journaled). Returns the backups recovered.
pub async fn recover<E: ContainerEngine, U: UnitEngine>(
    docker: Option<&E>,
    systemd: Option<&U>,
    desired: Option<&Desired>,
    state_dir: &Path,
) -> Vec<(String, Result<(), QuiesceError>)> {
    let mut out = Vec::new();
    for (path, journal) in interrupted(state_dir) {
        warn!(backup = %journal.backup, "a backup was interrupted while its services were stopped: starting them again");
        let r = resume(docker, systemd, desired, &path).await;
        out.push((journal.backup.clone(), r));
    }
    out
}

/// Before a pass: starts again the services of every interrupted run ([`recover`]),
/// saying how it went, and returns the targets still stopped (their exits are not crashes).
pub async fn recover_before_pass<E: ContainerEngine, U: UnitEngine>(
    engines: &crate::engine::Engines<E, U>,
    desired: &Desired,
    state_dir: &Path,
) -> BTreeSet<String> {
    let (docker, systemd) = (engines.docker.as_deref(), engines.systemd.as_deref());
    for (backup, r) in recover(docker, systemd, Some(desired), state_dir).await {
        match r {
            Ok(()) => info!(%backup, "started again the services an interrupted backup had stopped"),
            Err(e) => {
                warn!(%backup, error = %crate::support::chain(&e), "the services an interrupted backup had stopped are not all back")
            }
        }
    }
    interrupted(state_dir)
        .iter()
        .flat_map(|(_, j)| j.targets().map(|t| t.split_once(':').map_or(t, |(_, n)| n).to_string()).collect::<Vec<_>>())
        .collect()
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

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn dependents_stop_in_an_earlier_wave_than_what_they_depend_on() {
        let d = desired();
        assert_eq!(
            stop_waves(&d, &s(&["mongo", "api", "web"])).expect("waves"),
            vec![s(&["web"]), s(&["api"]), s(&["mongo"])]
        );
        // Through a service that is not stopped: web still goes first.
        assert_eq!(stop_waves(&d, &s(&["web", "mongo"])).expect("waves"), vec![s(&["web"]), s(&["mongo"])]);
        assert!(matches!(stop_waves(&d, &s(&["nope"])), Err(QuiesceError::UnknownService(_))));
    }

    #[test]
    fn independent_services_stop_in_the_same_wave() {
        let d = desired();
        assert_eq!(
            stop_waves(&d, &s(&["other", "web", "mongo"])).expect("waves"),
            vec![s(&["other", "web"]), s(&["mongo"])]
        );
        assert_eq!(stop_waves(&d, &s(&["other", "mongo"])).expect("waves"), vec![s(&["other", "mongo"])]);
    }

    #[test]
    fn a_journal_resumes_wave_by_wave_in_reverse_and_reads_earlier_versions() {
        let j = Journal { waves: vec![s(&["docker:web-1", "docker:x-1"]), s(&["docker:db-1"])], ..Default::default() };
        assert_eq!(j.resume_order(), vec![s(&["docker:db-1"]), s(&["docker:web-1", "docker:x-1"])]);
        let old: Journal =
            serde_json::from_str(r#"{"backup":"b","pid":1,"startedMs":2,"stopped":["docker:web-1","docker:db-1"]}"#)
                .expect("an earlier version's journal");
        assert_eq!(old.resume_order(), vec![s(&["docker:db-1"]), s(&["docker:web-1"])]);
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
