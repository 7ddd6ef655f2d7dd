//! The agent: `tend agent` keeps the host converged. One loop observes, plans and applies;
//! it is woken by spec changes (a watched directory, or new commits of a git source), by
//! Docker events and systemd signals (which only wake it: state is always observed afresh),
//! by a periodic resync, by backoff deadlines and by the local API.
//!
//! - A spec set with any error is rejected whole: the last good set stays in use, and the
//!   errors are shown in `tend status`, the log and a metric.
//! - A set that would remove more than a configured share of the managed objects at once is
//!   not applied without `--allow-mass-removal` (a deleted directory or an empty checkout is
//!   not "delete everything").
//! - Objects whose steps keep failing are left alone for a growing delay, so one broken
//!   service never stalls the others.
//! - Services marked `holdAfterUncleanBoot` are held after a boot that followed a crash of
//!   the host (the agent records a clean-shutdown marker).
//! - Under systemd it speaks the notify protocol: READY after the first pass, WATCHDOG from
//!   the loop, STATUS with a one-line summary, STOPPING on shutdown.
//! - SIGTERM finishes the running steps, starts no new one and leaves every service running;
//!   a second signal exits at once.
//! - An engine that does not answer in time (every call is bounded, see `engine::Timeouts`)
//!   is reported unresponsive (`tend status`, `tend_engine_up`): passes fail, planning
//!   nothing, and are retried until it answers again; the API and the watchdog pings go on.

pub mod api;
pub mod metrics;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tend_specs::Desired;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::daemon::api::{Control, Failure, Reply};
use crate::daemon::metrics::Metrics;
use crate::daemon::source::{GitConfig, GitSource, Revision};
use crate::engine::Engines;
use crate::engine::Timeouts;
use crate::engine::docker::DockerEngine;
use crate::engine::systemd::SystemdEngine;
use crate::reconcile::apply::{self, Options, Report, UnitsConfig};
use crate::reconcile::execute::Outcome;
use crate::reconcile::model::{Observed, RunState, UnitActive, instance_name};
use crate::reconcile::observe::ObserveError;
use crate::reconcile::plan::{Action, Note, Reason};
use crate::reconcile::state::{self, Hold, StateDir, StateError};
use crate::reconcile::status::{AgentStatus, EngineProblem, Status};
use crate::support::redact::Redactor;

/// Errors that stop the agent (anything else is reported and retried).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The local API could not start.
    #[error("starting the local API")]
    Api(#[source] api::ApiError),
    /// The git source cannot work.
    #[error(transparent)]
    Source(#[from] source::SourceError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The spec directory could not be watched.
    #[error("watching {path} for changes")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: notify::Error,
    },
    /// Signal handlers could not be installed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// The host's salt of secrets' digests cannot be had.
    #[error(transparent)]
    Salt(#[from] crate::support::redact::SaltError),
    /// The boot marker could not be written.
    #[error("writing the boot marker {path}")]
    Marker {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where specs come from.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    /// A local directory, watched.
    Dir(PathBuf),
    /// A git repository, polled.
    Git(GitConfig),
}

/// Everything the agent runs with (from the configuration file and the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The scope this agent owns.
    pub scope: String,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The maintenance lock directory.
    pub lock_dir: PathBuf,
    /// Where unit files go.
    pub unit_dir: PathBuf,
    /// Where environment files with secrets go.
    pub env_dir: PathBuf,
    /// Where specs come from.
    pub source: SourceSettings,
    /// A pass at least this often.
    pub resync: Duration,
    /// Quiet time after a spec change before reading the set.
    pub debounce: Duration,
    /// Steps at once.
    pub parallel: usize,
    /// The API socket.
    pub socket: PathBuf,
    /// The group that may use the socket.
    pub socket_group: Option<String>,
    /// Metrics on TCP, besides the socket.
    pub metrics_listen: Option<SocketAddr>,
    /// Removal of any share of managed objects is allowed.
    pub allow_mass_removal: bool,
    /// The largest share (percent) of managed objects one set may remove.
    pub max_removal_percent: u8,
    /// How long to wait for an engine to answer.
    pub timeouts: Timeouts,
    /// This binary (Timers' units and hooks run `tend job run`).
    pub tend_bin: PathBuf,
}

/// Why the loop woke.
#[derive(Debug)]
enum Wake {
    /// Spec files changed (directory source).
    Specs,
    /// A git source has a new commit, checked out and waiting for validation.
    Candidate(Revision),
    /// Docker or systemd reported a change.
    Engine,
    /// The API asked for a pass.
    Api,
}

/// A validated spec set.
#[derive(Debug, Clone)]
struct SpecSet {
    desired: Arc<Desired>,
    /// Where it was loaded from.
    dir: PathBuf,
    /// Its commit (git sources).
    commit: Option<String>,
    /// A fingerprint of every object's hash, to tell whether a re-read changed anything.
    fingerprint: String,
    /// The git candidate it came from, promoted when the set is accepted.
    rev: Option<Revision>,
}

fn fingerprint(desired: &Desired) -> String {
    let mut s = String::new();
    for svc in desired.services.values() {
        s.push_str(&format!("s:{}:{};", svc.name, svc.hash));
        // Fields outside the template hash (replicas, rollout, restart, dependsOn, ...)
        // matter too: compare the whole spec.
        s.push_str(&serde_json::to_string(&svc.spec).unwrap_or_default());
    }
    for t in desired.timers.values() {
        s.push_str(&format!("t:{}:{};", t.name, t.hash));
    }
    // A Backup's schedule, drill, retention and copies shape its Timers and runs, not only
    // its archive hash: compare the whole spec.
    for b in desired.backups.values() {
        s.push_str(&format!("b:{}:{};", b.name, b.hash));
        s.push_str(&serde_json::to_string(&b.spec).unwrap_or_default());
    }
    tend_specs::hash::sha256_hex(s.as_bytes())
}

/// The per-object backoff after failed steps.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
    until_ms: u64,
}

/// How long an engine event is left to settle before the pass it wakes.
const ENGINE_SETTLE: Duration = Duration::from_millis(50);
/// Second and third looks after an engine event, for what the first pass could not see yet
/// (each no-op pass costs a few milliseconds).
const ENGINE_FOLLOW_UPS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];

const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The longest wait before passing again while an engine is unresponsive (the waits start
/// at a second and double): each such pass costs one call timeout of waiting and nothing
/// else, and the agent should notice soon when the engine answers again.
const ENGINE_RETRY_MAX: Duration = Duration::from_secs(30);

/// An engine tend talks to, for its health in `tend status` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Docker,
    Systemd,
}

impl Engine {
    /// The label in metrics and in the status's `engines`.
    fn label(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Systemd => "systemd",
        }
    }

    /// The name in messages.
    fn name(self) -> &'static str {
        match self {
            Self::Docker => "Docker",
            Self::Systemd => "systemd",
        }
    }
}

const UNRESPONSIVE: &str = "unresponsive";
/// An engine's state, and the kind of error that makes it so, when it cannot be reached.
const UNAVAILABLE: &str = "unavailable";
/// The kind of error that makes an engine unresponsive.
const UNRESPONSIVE_KIND: &str = "timeout";

fn backoff_delay(failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    BACKOFF_INITIAL.saturating_mul(factor).min(BACKOFF_MAX)
}

/// The engines the agent has now. Docker may come and go; systemd is found once.
#[derive(Debug, Default)]
struct EngineHandles {
    docker: Option<Arc<DockerEngine>>,
    systemd: Option<Arc<SystemdEngine>>,
    /// Why systemd is not used, when it is not.
    systemd_missing: Option<String>,
    /// Why Docker could not be connected, the last time it was tried.
    docker_error: Option<String>,
    /// The engines (labels) that answered or were reached once: their `tend_engine_up`
    /// series exists, and a failure to reach them is reported.
    reached: BTreeSet<&'static str>,
}

/// What the loop and the API share.
struct Shared {
    settings: Settings,
    options: Options,
    engines: Mutex<EngineHandles>,
    current: RwLock<Option<SpecSet>>,
    agent: Mutex<AgentStatus>,
    metrics: Metrics,
    wake: mpsc::Sender<Wake>,
    /// The units whose changes wake the loop: the set's systemd services and timer units.
    units_of_interest: Arc<RwLock<BTreeSet<String>>>,
    /// Targets under maintenance whose release is being waited for (to pass at once).
    releases: Arc<Mutex<BTreeSet<String>>>,
    /// The host's salt of secrets' digests (`crate::support::redact`).
    secret_salt: Vec<u8>,
    /// The git source, when specs come from one: its poller checks out new commits, the
    /// loop promotes a candidate once its set is accepted or tells it of a rejection.
    git: Option<Arc<tokio::sync::Mutex<GitSource>>>,
}

impl Shared {
    fn engines(&self) -> Arc<Engines<DockerEngine, SystemdEngine>> {
        let e = lock(&self.engines);
        Arc::new(Engines { docker: e.docker.clone(), systemd: e.systemd.clone() })
    }

    fn current(&self) -> Option<SpecSet> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn agent_status(&self) -> AgentStatus {
        lock(&self.agent).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records how `engine` answered a call: `None` when it did; else the failed call's kind
/// label and error chain. A `timeout` makes it unresponsive and `unavailable` unreachable
/// (reported only for an engine reached before or needed by the specs); any other failure
/// is an answer too (the engine refused something). Changes are logged once.
fn note_engine(shared: &Shared, engine: Engine, failure: Option<(&'static str, String)>) {
    let label = engine.label();
    let state = match &failure {
        Some(("timeout", _)) => Some(UNRESPONSIVE),
        Some(("unavailable", _)) => Some(UNAVAILABLE),
        _ => None,
    };
    let reached = {
        let mut e = lock(&shared.engines);
        if state != Some(UNAVAILABLE) {
            e.reached.insert(label);
        }
        e.reached.contains(label)
    };
    let Some((state, (kind, error))) = state.zip(failure) else {
        shared.metrics.engine_up(label, true);
        if let Some(was) = lock(&shared.agent).engines.remove(label) {
            info!(was = %was.state, "{} answers again", engine.name());
        }
        return;
    };
    if state == UNAVAILABLE && !reached && !needed(shared, engine) {
        return;
    }
    shared.metrics.engine_error(label, kind);
    if reached || needed(shared, engine) {
        shared.metrics.engine_up(label, false);
    }
    let mut a = lock(&shared.agent);
    let since_ms = match a.engines.get(label) {
        Some(p) if p.state == state => p.since_ms,
        _ => {
            warn!(%error, "{} is {state}", engine.name());
            crate::support::now_ms()
        }
    };
    a.engines.insert(label.to_string(), EngineProblem { state: state.to_string(), error, since_ms });
}

/// Whether the spec set in use needs `engine`.
fn needed(shared: &Shared, engine: Engine) -> bool {
    shared.current().is_some_and(|s| match engine {
        Engine::Docker => s.desired.docker_services().next().is_some(),
        Engine::Systemd => crate::reconcile::observe::needs_units(&s.desired),
    })
}

/// The engine an observation could not use, with the kind label and chain of its error.
fn engine_failure(e: &ObserveError) -> Option<(Engine, &'static str, String)> {
    match e {
        ObserveError::Docker(e) => Some((Engine::Docker, e.kind(), crate::support::chain(e))),
        ObserveError::Units(e) => Some((Engine::Systemd, e.kind(), crate::support::chain(e))),
        ObserveError::Locks(_) => None,
    }
}

/// [`engine_failure`] of a pass's error.
fn pass_engine_failure(e: &apply::ApplyError) -> Option<(Engine, &'static str, String)> {
    match e {
        apply::ApplyError::Observe(e) => engine_failure(e),
        _ => None,
    }
}

/// The engines that are unresponsive now.
fn unresponsive(shared: &Shared) -> Vec<Engine> {
    let a = lock(&shared.agent);
    let down = |e: &Engine| a.engines.get(e.label()).is_some_and(|p| p.state == UNRESPONSIVE);
    [Engine::Docker, Engine::Systemd].into_iter().filter(down).collect()
}

/// Whether the specs in use need Docker and the agent is not connected to it (no socket,
/// connection refused): their Docker part cannot be observed. Noted as `unavailable`.
fn docker_unreachable(shared: &Shared) -> bool {
    let unreachable = lock(&shared.engines).docker.is_none() && needed(shared, Engine::Docker);
    if unreachable && !lock(&shared.agent).engines.contains_key(Engine::Docker.label()) {
        // Not noted when it was tried: the specs that need it were not in use yet.
        let error = lock(&shared.engines).docker_error.clone().unwrap_or_else(|| "not connected".into());
        note_engine(shared, Engine::Docker, Some((UNAVAILABLE, error)));
    }
    unreachable
}

/// Lets go of a Docker that cannot be reached (`error`): passes apply the rest of the specs
/// and leave Docker's part out until a connection is made again (by the next pass, or the
/// event watcher, whose new stream then wakes the loop).
fn lose_docker(shared: &Shared, error: String) {
    let mut e = lock(&shared.engines);
    e.docker = None;
    e.docker_error = Some(error);
}

/// The engines the agent cannot observe now: unresponsive ones, and an unreachable Docker
/// the specs need.
fn unobservable(shared: &Shared) -> Vec<Engine> {
    let mut engines = unresponsive(shared);
    if !engines.contains(&Engine::Docker) && docker_unreachable(shared) {
        engines.push(Engine::Docker);
    }
    engines
}

/// `Docker is unresponsive: listing containers: Docker did not answer within 30s`.
fn problem_line(shared: &Shared, engine: Engine) -> String {
    match lock(&shared.agent).engines.get(engine.label()) {
        Some(p) => format!("{} is {}: {}", engine.name(), p.state, p.error),
        None => format!("{} answers", engine.name()),
    }
}

/// What a spec set would remove of the managed objects, when it is too much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MassRemoval {
    /// The services and Timers it would remove.
    pub removed: Vec<String>,
    /// How many are managed now.
    pub managed: usize,
    /// The limit that was passed (percent).
    pub max_percent: u8,
}

impl std::fmt::Display for MassRemoval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 10;
        let mut names = self.removed.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if self.removed.len() > SHOWN {
            names.push_str(&format!(" and {} more", self.removed.len() - SHOWN));
        }
        write!(
            f,
            "would remove {} of the {} managed services and Timers, more than {}% ({names})",
            self.removed.len(),
            self.managed,
            self.max_percent
        )
    }
}

/// Whether the specs would remove too much: more than `max_percent` of the managed objects
/// (services and Timers that have containers or unit files of this scope), and at least
/// two of them.
pub fn mass_removal(observed: &Observed, desired: &Desired, scope: &str, max_percent: u8) -> Option<MassRemoval> {
    let mut managed: BTreeSet<&str> = observed.containers.iter().map(|c| c.service.as_str()).collect();
    for u in observed.units.iter().flat_map(|u| u.values()) {
        if u.scope.as_deref() == Some(scope) {
            let stem = u.name.strip_suffix(".service").or_else(|| u.name.strip_suffix(".timer")).unwrap_or(&u.name);
            managed.insert(stem);
        }
    }
    let removed: Vec<String> = managed
        .iter()
        .filter(|n| !desired.services.contains_key(**n) && !desired.timers.contains_key(**n))
        .map(|n| n.to_string())
        .collect();
    let over = removed.len() * 100 > usize::from(max_percent) * managed.len();
    (removed.len() >= 2 && over).then_some(MassRemoval { removed, managed: managed.len(), max_percent })
}

/// The clean-shutdown marker: which boot the agent last ran in, and whether it stopped
/// cleanly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootMarker {
    /// `/proc/sys/kernel/random/boot_id` of that boot.
    pub boot_id: String,
    /// True while the agent runs; false after a clean shutdown.
    pub running: bool,
}

const MARKER: &str = "agent-run.json";

/// This boot's id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Whether this boot followed an unclean one: the agent was running in another boot and
/// never recorded a clean shutdown (the host went down under it).
pub fn unclean_boot(previous: Option<&BootMarker>, boot_id: &str) -> bool {
    previous.is_some_and(|m| m.running && m.boot_id != boot_id)
}

fn read_marker(state_dir: &Path) -> Option<BootMarker> {
    let text = std::fs::read(state_dir.join(MARKER)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_marker(state_dir: &Path, marker: &BootMarker) -> Result<(), AgentError> {
    use std::io::Write;
    let path = state_dir.join(MARKER);
    let tmp = state_dir.join(format!(".{MARKER}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(marker).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|source| AgentError::Marker { path, source })
}

/// Whether this boot followed a clean shutdown of the host: the agent ran in another boot
/// and recorded its clean stop there (a host shutting down stops tend first, then Docker
/// stops the containers).
pub fn clean_reboot(previous: Option<&BootMarker>, boot_id: &str) -> bool {
    previous.is_some_and(|m| !m.running && m.boot_id != boot_id)
}

/// The containers of docker services that a clean shutdown of the host stopped: at the first
/// pass of the boot that follows it, every instance that is not running and not held
/// (Docker starts no container of tend's by itself: their restart policy is `no`).
fn shutdown_stops(desired: &Desired, observed: &Observed, state: &state::State) -> Vec<String> {
    desired
        .docker_services()
        .flat_map(|s| (1..=s.spec.replicas).map(|i| instance_name(&s.name, i)))
        .filter(|name| !state.holds.contains_key(name))
        .filter(|name| {
            observed.containers.iter().any(|c| c.name == *name && matches!(c.state, RunState::Exited | RunState::Dead))
        })
        .collect()
}

/// Holds for the services marked `holdAfterUncleanBoot` that are not running now.
fn unclean_boot_holds(desired: &Desired, observed: &Observed, now_ms: u64) -> BTreeMap<String, Hold> {
    let mut holds = BTreeMap::new();
    for s in desired.services.values().filter(|s| s.spec.hold_after_unclean_boot) {
        let hold = |instance| Hold {
            service: s.name.clone(),
            instance,
            since_ms: now_ms,
            exit_code: None,
            unclean_boot: true,
        };
        if s.spec.runtime == tend_specs::service::Runtime::Systemd {
            let unit = format!("{}.service", s.name);
            let running = observed
                .units
                .as_ref()
                .and_then(|u| u.get(&unit))
                .is_some_and(|u| matches!(u.active, UnitActive::Active | UnitActive::Activating));
            if !running {
                holds.insert(unit, hold(1));
            }
            continue;
        }
        for i in 1..=s.spec.replicas {
            let name = instance_name(&s.name, i);
            let running = observed.containers.iter().any(|c| c.name == name && c.state == RunState::Running);
            if !running {
                holds.insert(name, hold(i));
            }
        }
    }
    holds
}

/// Whether a step repairs drift (rather than rolling out a spec change).
fn is_repair(reason: &Reason) -> bool {
    matches!(reason, Reason::Missing | Reason::Exited { .. } | Reason::NotStarted | Reason::Leftover)
}

/// Sends a notification to systemd when run by it (`NOTIFY_SOCKET`); otherwise nothing.
fn sd_notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "could not notify systemd");
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), AgentError> {
    let stop = CancellationToken::new();
    let (wake_tx, mut wake_rx) = mpsc::channel::<Wake>(64);
    let options = Options {
        locks: crate::maintain::locks::LockDir::new(&settings.lock_dir),
        scope: settings.scope.clone(),
        parallel: settings.parallel,
        specs: PathBuf::new(),
        stop: stop.clone(),
        skip_owners: BTreeSet::new(),
        ignore_windows: false,
        stopped_by_backup: BTreeSet::new(),
        units: UnitsConfig {
            scope: settings.scope.clone(),
            unit_dir: settings.unit_dir.clone(),
            env_dir: settings.env_dir.clone(),
            state_dir: settings.state_dir.clone(),
            tend_bin: settings.tend_bin.clone(),
            specs: PathBuf::new(),
            timeouts: settings.timeouts,
        },
    };
    std::fs::create_dir_all(&settings.state_dir)
        .map_err(|source| StateError::Dir { path: settings.state_dir.clone(), source })?;
    let secret_salt = crate::support::redact::host_salt(&settings.state_dir, true)?;
    let git = match &settings.source {
        SourceSettings::Dir(_) => None,
        SourceSettings::Git(config) => {
            let git = GitSource::new(config.clone(), settings.state_dir.join("git"))?;
            Some(Arc::new(tokio::sync::Mutex::new(git)))
        }
    };
    let source_text = match &settings.source {
        SourceSettings::Dir(d) => d.display().to_string(),
        SourceSettings::Git(g) => {
            let r = match &g.reference {
                source::GitRef::Branch(b) => format!("branch {b}"),
                source::GitRef::Tag(t) => format!("tag {t}"),
            };
            format!("{} ({r})", source::redact_url(&g.url))
        }
    };
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        options,
        engines: Mutex::new(EngineHandles::default()),
        current: RwLock::new(None),
        agent: Mutex::new(AgentStatus {
            pid: std::process::id(),
            started_ms: crate::support::now_ms(),
            source: source_text,
            ..Default::default()
        }),
        metrics: Metrics::new(),
        wake: wake_tx.clone(),
        units_of_interest: Arc::new(RwLock::new(BTreeSet::new())),
        releases: Arc::new(Mutex::new(BTreeSet::new())),
        secret_salt,
        git,
    });
    info!(scope = %settings.scope, source = %shared.agent_status().source, "tend agent starting");

    // Signals: the first stops gracefully, a second exits at once.
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                count += 1;
                if count == 1 {
                    info!("stopping: finishing the running steps; services keep running");
                    sd_notify(&[sd_notify::NotifyState::Stopping]);
                    stop.cancel();
                } else {
                    error!("second signal: exiting now");
                    std::process::exit(1);
                }
            }
        });
    }

    // The local API (and metrics on TCP).
    let server = api::bind_unix(&settings.socket, settings.socket_group.as_deref()).await.map_err(AgentError::Api)?;
    let control: Arc<dyn Control> = Arc::new(Api(shared.clone()));
    let api_task = tokio::spawn(server.serve(control.clone(), stop.clone()));
    if let Some(addr) = settings.metrics_listen {
        let metrics = api::bind_metrics_tcp(addr).await.map_err(AgentError::Api)?;
        tokio::spawn(metrics.serve(control.clone(), stop.clone()));
    }

    // Engines, and their wake-ups.
    connect_engines(&shared).await;
    spawn_engine_watchers(&shared, &stop);
    // The unclean-boot check: holds are placed with the first good spec set.
    let previous = read_marker(&settings.state_dir);
    let this_boot = boot_id();
    let mut unclean = unclean_boot(previous.as_ref(), &this_boot);
    let mut after_shutdown = clean_reboot(previous.as_ref(), &this_boot);
    if unclean {
        warn!(
            "this boot follows one where the host went down while tend ran: holding services marked holdAfterUncleanBoot"
        );
        lock(&shared.agent).unclean_boot = true;
    } else if !after_shutdown {
        // After a clean shutdown the marker is rewritten once the first pass has marked what
        // the shutdown stopped: an agent that dies before that still knows at its restart.
        write_marker(&settings.state_dir, &BootMarker { boot_id: this_boot.clone(), running: true })?;
    }

    // The spec source.
    let mut pending: Option<SpecSet> = None;
    match (&settings.source, shared.git.clone()) {
        (SourceSettings::Dir(dir), _) => {
            pending = reload_dir(&shared, dir);
            watch_dir(dir, settings.debounce, wake_tx.clone(), stop.clone())?;
        }
        // The git source was made with the shared state.
        (SourceSettings::Git(_), None) => {}
        (SourceSettings::Git(config), Some(git)) => {
            let current = git.lock().await.current();
            if let Some(rev) = current {
                // The last promoted commit: in use again at once, even with the remote down.
                let dir = stable_dir(&settings.state_dir, config);
                match load(&shared, &dir) {
                    Ok(desired) => set_current(&shared, desired, dir, rev.commit.clone()),
                    Err(errors) => reject(&shared, errors, rev.commit.clone()),
                }
            }
            spawn_git_poller(git, wake_tx.clone(), stop.clone());
        }
    }

    // A backup killed while its services were stopped: start them again now, dependencies
    // first (each pass does so too; this one also when no spec set is valid yet).
    {
        let engines = shared.engines();
        let current = shared.current();
        let desired = pending.as_ref().or(current.as_ref()).map(|set| set.desired.clone());
        let (docker, systemd) = (engines.docker.as_deref(), engines.systemd.as_deref());
        for (backup, r) in
            crate::backup::quiesce::recover(docker, systemd, desired.as_deref(), &settings.state_dir).await
        {
            match r {
                Ok(()) => info!(%backup, "started the services an interrupted backup had stopped"),
                Err(e) => {
                    error!(%backup, error = %crate::support::chain(&e), "could not start the services an interrupted backup had stopped")
                }
            }
        }
    }

    // The loop.
    let mut watchdog_every = None;
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        watchdog_every = Some(Duration::from_micros(usec / 2));
    }
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hang_fault = std::env::var_os("TEND_FAULT_HANG").map(PathBuf::from);
    let mut scheduler: Option<(String, CancellationToken)> = None;
    let mut backoff: BTreeMap<String, Backoff> = BTreeMap::new();
    let mut ready = false;
    let mut next_resync = tokio::time::Instant::now();
    let mut pass_wanted = true;
    let mut follow_up = false;
    let mut follow_up_at: Option<tokio::time::Instant> = None;
    let mut follow_ups: std::collections::VecDeque<Duration> = Default::default();
    let mut jobs_seen: BTreeMap<String, u64> = BTreeMap::new();
    // Passes while an engine is unresponsive, and when to try again.
    let mut engine_retries = 0u32;
    let mut engine_retry_at: Option<tokio::time::Instant> = None;
    loop {
        if let Some(path) = &hang_fault
            && path.exists()
        {
            // Fault injection for the watchdog test: the loop hangs (and stops pinging), on
            // a future that never completes, so the runtime's threads stay free for the API.
            warn!(path = %path.display(), "TEND_FAULT_HANG: the loop hangs now");
            std::future::pending::<()>().await;
        }
        if watchdog_every.is_some() {
            sd_notify(&[sd_notify::NotifyState::Watchdog]);
        }
        if stop.is_cancelled() {
            break;
        }
        if pass_wanted {
            pass_wanted = false;
            let boot = Boot { unclean: &mut unclean, after_shutdown: &mut after_shutdown, id: &this_boot };
            let pass = run_pass(&shared, &mut pending, &mut backoff, boot);
            tokio::pin!(pass);
            loop {
                tokio::select! {
                    () = &mut pass => break,
                    _ = watchdog.tick(), if watchdog_every.is_some() => sd_notify(&[sd_notify::NotifyState::Watchdog]),
                }
            }
            next_resync = tokio::time::Instant::now() + settings.resync;
            if follow_up {
                follow_ups = ENGINE_FOLLOW_UPS.into_iter().collect();
                follow_up = false;
            }
            follow_up_at = follow_ups.pop_front().map(|d| tokio::time::Instant::now() + d);
            engine_retry_at = if unresponsive(&shared).is_empty() {
                engine_retries = 0;
                None
            } else {
                engine_retries += 1;
                Some(tokio::time::Instant::now() + backoff_delay(engine_retries).min(ENGINE_RETRY_MAX))
            };
            record_runs(&shared, &mut jobs_seen);
            update_scheduler(&shared, &mut scheduler, &stop);
            let line = status_line(&shared);
            sd_notify(&[sd_notify::NotifyState::Status(&line)]);
            if !ready {
                ready = true;
                info!("first pass done: ready");
                sd_notify(&[sd_notify::NotifyState::Ready]);
            }
            continue;
        }
        // Sleep until something happens: a wake-up, the resync, a backoff deadline.
        let mut deadline = next_resync;
        for at in follow_up_at.into_iter().chain(engine_retry_at) {
            deadline = deadline.min(at);
        }
        let now = Instant::now();
        for b in backoff.values() {
            deadline = deadline.min(tokio::time::Instant::now() + b.until.saturating_duration_since(now));
        }
        if let Some(due) = restart_due(&shared) {
            deadline = deadline.min(due);
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = watchdog.tick(), if watchdog_every.is_some() => {}
            () = tokio::time::sleep_until(deadline) => pass_wanted = true,
            msg = wake_rx.recv() => {
                let Some(msg) = msg else { break };
                let engine = matches!(msg, Wake::Engine);
                pass_wanted |= handle_wake(&shared, msg, &mut pending);
                if engine {
                    // Docker reports a container's death a moment before its listing shows
                    // it: let the engine settle, and look once more a little later.
                    tokio::time::sleep(ENGINE_SETTLE).await;
                    follow_up = true;
                }
                // Fold what else has arrived into the same pass.
                while let Ok(msg) = wake_rx.try_recv() {
                    pass_wanted |= handle_wake(&shared, msg, &mut pending);
                }
            }
        }
    }

    info!("stopping");
    if let Some((_, token)) = scheduler.take() {
        token.cancel();
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(6), api_task).await;
    if !unclean {
        write_marker(&settings.state_dir, &BootMarker { boot_id: this_boot, running: false })?;
    }
    info!("stopped; services keep running");
    Ok(())
}

/// The path through which a git source's promoted checkout is read: stable across
/// commits, so paths in the specs (bind mounts next to them) do not change with each commit.
fn stable_dir(state_dir: &Path, config: &GitConfig) -> PathBuf {
    let current = state_dir.join("git").join("current");
    match &config.path {
        Some(p) => current.join(p),
        None => current,
    }
}

/// Loads the specs in `dir`, secrets' digests keyed by the host's salt.
fn load(shared: &Shared, dir: &Path) -> Result<Desired, Vec<String>> {
    let options = tend_specs::LoadOptions { secret_salt: &shared.secret_salt };
    tend_specs::load_path_with(dir, &options).map_err(|diags| diags.iter().map(ToString::to_string).collect())
}

fn set_current(shared: &Shared, mut desired: Desired, dir: PathBuf, commit: Option<String>) {
    let fingerprint = fingerprint(&desired);
    // Scheduled Backups run as Timers (`tend backup run NAME`).
    let st = &shared.settings;
    let ctx = crate::backup::run::TimerContext {
        tend_bin: &st.tend_bin,
        scope: &st.scope,
        state_dir: &st.state_dir,
        lock_dir: &st.lock_dir,
        specs: &dir,
    };
    if let Err(diags) = crate::backup::run::add_schedule_timers(&mut desired, &ctx) {
        for d in diags {
            error!(error = %d, "scheduling a Backup");
        }
    }
    info!(dir = %dir.display(), commit = commit.as_deref().unwrap_or("-"), services = desired.services.len(), timers = desired.timers.len(), "spec set in use");
    shared.metrics.applied_commit(commit.as_deref());
    shared.metrics.spec_errors(0);
    {
        let mut a = lock(&shared.agent);
        a.specs = dir.display().to_string();
        a.commit = commit.clone();
        a.spec_errors.clear();
        a.rejected_commit = None;
        a.mass_removal = None;
    }
    // Timers' job services are left out: asking about a unit that never runs makes systemd
    // load and unload it, and those signals must not wake the loop.
    let units: BTreeSet<String> = desired
        .systemd_services()
        .map(|s| format!("{}.service", s.name))
        .chain(desired.timers.keys().map(|t| format!("{t}.timer")))
        .collect();
    *shared.units_of_interest.write().unwrap_or_else(std::sync::PoisonError::into_inner) = units;
    *shared.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some(SpecSet { desired: Arc::new(desired), dir, commit, fingerprint, rev: None });
}

fn reject(shared: &Shared, errors: Vec<String>, commit: Option<String>) {
    for e in &errors {
        warn!(error = %e, "spec set rejected: the last good set stays in use");
    }
    shared.metrics.spec_errors(errors.len() as u64);
    let mut a = lock(&shared.agent);
    a.spec_errors = errors;
    a.rejected_commit = commit;
}

/// Reads a directory source again; returns whether a pass is needed.
fn reload_dir(shared: &Shared, dir: &Path) -> Option<SpecSet> {
    match load(shared, dir) {
        Ok(desired) => {
            let fp = fingerprint(&desired);
            if shared.current().is_some_and(|c| c.fingerprint == fp) {
                // Back to the set in use (or unchanged): clear a stale rejection.
                let mut a = lock(&shared.agent);
                if !a.spec_errors.is_empty() {
                    a.spec_errors.clear();
                    shared.metrics.spec_errors(0);
                }
                return None;
            }
            Some(SpecSet {
                desired: Arc::new(desired),
                dir: dir.to_path_buf(),
                commit: None,
                fingerprint: fp,
                rev: None,
            })
        }
        Err(errors) => {
            reject(shared, errors, None);
            None
        }
    }
}

/// Handles a wake-up; returns whether a pass is wanted.
fn handle_wake(shared: &Shared, msg: Wake, pending: &mut Option<SpecSet>) -> bool {
    debug!(?msg, "woken");
    match msg {
        Wake::Engine | Wake::Api => true,
        Wake::Specs => {
            let SourceSettings::Dir(dir) = &shared.settings.source else { return false };
            match reload_dir(shared, dir) {
                Some(set) => {
                    *pending = Some(set);
                    true
                }
                None => false,
            }
        }
        Wake::Candidate(rev) => {
            let SourceSettings::Git(config) = &shared.settings.source else { return false };
            match load(shared, &rev.dir) {
                Ok(desired) => {
                    let fp = fingerprint(&desired);
                    // Read through the stable path once promoted; validated here from the
                    // candidate's own checkout.
                    *pending = Some(SpecSet {
                        desired: Arc::new(desired),
                        dir: stable_dir(&shared.settings.state_dir, config),
                        commit: rev.commit.clone(),
                        fingerprint: fp,
                        rev: Some(rev),
                    });
                    lock(&shared.agent).spec_errors.clear();
                    true
                }
                Err(errors) => {
                    reject(shared, errors, rev.commit.clone());
                    if let Some(git) = &shared.git {
                        let git = git.clone();
                        tokio::spawn(async move { git.lock().await.reject(&rev) });
                    }
                    false
                }
            }
        }
    }
}

/// The next deadline the planner is waiting for, from the last pass: a crash-looping
/// instance's restart, an object's retry, an update window opening.
fn restart_due(shared: &Shared) -> Option<tokio::time::Instant> {
    let a = lock(&shared.agent);
    let now = crate::support::now_ms();
    a.backoff
        .values()
        .copied()
        .chain(a.next_window_ms)
        .filter(|due| *due > now)
        .min()
        .map(|due| tokio::time::Instant::now() + Duration::from_millis(due - now))
}

/// Connects to the engines not connected yet. Docker may come and go. systemd is found
/// once: where it is not PID 1 it is never used; one that does not answer is tried again.
async fn connect_engines(shared: &Shared) {
    let timeouts = shared.settings.timeouts;
    let docker_missing = lock(&shared.engines).docker.is_none();
    if docker_missing {
        match DockerEngine::connect(timeouts).await {
            Ok(d) => {
                info!("connected to Docker");
                let mut handles = lock(&shared.engines);
                handles.docker = Some(Arc::new(d));
                handles.docker_error = None;
                drop(handles);
                note_engine(shared, Engine::Docker, None);
            }
            Err(e) => {
                debug!(error = %crate::support::chain(&e), "Docker is not available");
                lock(&shared.engines).docker_error = Some(crate::support::chain(&e));
                note_engine(shared, Engine::Docker, Some((e.kind(), crate::support::chain(&e))));
            }
        }
    }
    let systemd_unknown = {
        let e = lock(&shared.engines);
        e.systemd.is_none() && e.systemd_missing.is_none()
    };
    if systemd_unknown {
        match SystemdEngine::connect(timeouts).await {
            Ok(s) => {
                lock(&shared.engines).systemd = Some(Arc::new(s));
                note_engine(shared, Engine::Systemd, None);
            }
            Err(e) if e.kind() == "timeout" => {
                note_engine(shared, Engine::Systemd, Some((e.kind(), crate::support::chain(&e))))
            }
            Err(e) => {
                info!(why = %crate::support::chain(&e), "systemd is not used (Timers are scheduled by the agent)");
                lock(&shared.engines).systemd_missing = Some(crate::support::chain(&e));
            }
        }
    }
}

/// Docker events and systemd signals wake the loop; the watchers reconnect when their
/// stream ends.
fn spawn_engine_watchers(shared: &Arc<Shared>, stop: &CancellationToken) {
    use futures::StreamExt;
    let (s, token) = (shared.clone(), stop.clone());
    tokio::spawn(
        async move {
            let mut delay = Duration::from_millis(500);
            loop {
                let docker = lock(&s.engines).docker.clone();
                let Some(docker) = docker else {
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    connect_engines(&s).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    continue;
                };
                let mut events = crate::engine::ContainerRuns::events(docker.as_ref(), &s.settings.scope);
                // A fresh stream: whatever happened while it was down is seen by a pass. Not
                // while Docker is unresponsive: the loop retries on its own then, and a
                // stream that is only being set up would wake it into a pass that hangs.
                if !unresponsive(&s).contains(&Engine::Docker) {
                    let _ = s.wake.try_send(Wake::Engine);
                }
                loop {
                    tokio::select! {
                        () = token.cancelled() => return,
                        ev = events.next() => match ev {
                            Some(Ok(())) => {
                                delay = Duration::from_millis(500);
                                let _ = s.wake.try_send(Wake::Engine);
                            }
                            Some(Err(e)) => {
                                warn!(error = %crate::support::chain(&e), "Docker event stream failed; reconnecting");
                                if e.kind == crate::engine::EngineErrorKind::Timeout {
                                    note_engine(&s, Engine::Docker, Some((e.kind(), crate::support::chain(&e))));
                                }
                                break;
                            }
                            None => break,
                        },
                    }
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
                if let Err(e) = DockerEngine::connect(s.settings.timeouts).await {
                    note_engine(&s, Engine::Docker, Some((e.kind(), crate::support::chain(&e))));
                    lose_docker(&s, crate::support::chain(&e));
                    // A pass says so, and leaves Docker's part out, without waiting for the
                    // resync (unless Docker hangs: the loop retries on its own then).
                    if e.kind != crate::engine::EngineErrorKind::Timeout {
                        let _ = s.wake.try_send(Wake::Engine);
                    }
                }
            }
        }
        .instrument(info_span!("docker-events")),
    );
    let (s, token) = (shared.clone(), stop.clone());
    tokio::spawn(
        async move {
            use crate::engine::systemd::UnitEngine;
            // systemd may not have answered yet (the passes keep connecting); where it is not
            // PID 1 there is nothing to watch.
            let systemd = loop {
                let (handle, missing) = {
                    let e = lock(&s.engines);
                    (e.systemd.clone(), e.systemd_missing.is_some())
                };
                match handle {
                    Some(systemd) => break systemd,
                    None if missing => return,
                    None => tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    },
                }
            };
            let mut delay = Duration::from_millis(500);
            let units = s.units_of_interest.clone();
            let interest: crate::engine::systemd::Interest = Arc::new(move |unit: &str| {
                units.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(unit)
            });
            loop {
                match systemd.watch(interest.clone()).await {
                    Ok(mut wakeups) => loop {
                        tokio::select! {
                            () = token.cancelled() => return,
                            w = wakeups.next() => match w {
                                Some(()) => { let _ = s.wake.try_send(Wake::Engine); }
                                None => break,
                            },
                        }
                    },
                    Err(e) => warn!(error = %crate::support::chain(&e), "watching systemd failed; retrying"),
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
        .instrument(info_span!("systemd-signals")),
    );
}

/// Whether a change to `path` may change the spec set. Writes in progress do not count
/// (only a closed write, a rename into place or a removal does), nor do editors' swap and
/// backup files.
fn relevant(kind: &notify::EventKind, path: &Path) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let scratch = name.starts_with('.')
        || name.starts_with('#')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name == "4913";
    if scratch {
        return false;
    }
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(CreateKind::Folder)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}

/// Watches the spec directory (and its parent, to see it deleted or created) and sends
/// `Wake::Specs` once changes have been quiet for `debounce`.
fn watch_dir(
    dir: &Path,
    debounce: Duration,
    wake: mpsc::Sender<Wake>,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    use notify::{RecursiveMode, Watcher};
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let root = dir.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            if ev.paths.iter().any(|p| p.starts_with(&root) && relevant(&ev.kind, p)) {
                let _ = tx.send(());
            }
        }
        Err(e) => warn!(error = %e, "spec directory watch error"),
    })
    .map_err(|source| AgentError::Watch { path: dir.clone(), source })?;
    let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    watcher
        .watch(&parent, RecursiveMode::NonRecursive)
        .map_err(|source| AgentError::Watch { path: parent.clone(), source })?;
    if dir.is_dir() {
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|source| AgentError::Watch { path: dir.clone(), source })?;
    }
    let watched = Arc::new(Mutex::new(watcher));
    let handle = watched.clone();
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    ev = rx.recv() => if ev.is_none() { return },
                }
                // Quiet for `debounce` before reading.
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        ev = rx.recv() => if ev.is_none() { return },
                        () = tokio::time::sleep(debounce) => break,
                    }
                }
                // The directory may have been created (or re-created) since: watch it.
                if dir.is_dir() {
                    let _ = lock(&handle).watch(&dir, RecursiveMode::Recursive);
                }
                let _ = wake.send(Wake::Specs).await;
            }
        }
        .instrument(info_span!("spec-watch")),
    );
    // The task holds the watcher (through `handle`) for as long as it runs.
    drop(watched);
    Ok(())
}

fn spawn_git_poller(git: Arc<tokio::sync::Mutex<GitSource>>, wake: mpsc::Sender<Wake>, stop: CancellationToken) {
    tokio::spawn(
        async move {
            loop {
                let (result, interval) = {
                    let mut g = git.lock().await;
                    let interval = g.interval();
                    (g.poll().await, interval)
                };
                // The source logs new commits and failures itself.
                if let Ok(Some(rev)) = result {
                    let _ = wake.send(Wake::Candidate(rev)).await;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        }
        .instrument(info_span!("git-poll")),
    );
}

/// What the first pass of a boot has to do about the boot before it.
struct Boot<'a> {
    /// The host went down under the agent: hold what `holdAfterUncleanBoot` marks.
    unclean: &'a mut bool,
    /// The host was shut down cleanly: what it stopped is started again, not held.
    after_shutdown: &'a mut bool,
    /// This boot's id.
    id: &'a str,
}

/// One pass of the loop: accept a pending set (unless the mass-removal guard stops it),
/// place unclean-boot holds (or mark what a clean shutdown stopped), apply, then record
/// outcomes, backoff and metrics.
async fn run_pass(
    shared: &Arc<Shared>,
    pending: &mut Option<SpecSet>,
    backoff: &mut BTreeMap<String, Backoff>,
    boot: Boot<'_>,
) {
    let Boot { unclean, after_shutdown, id: this_boot } = boot;
    let started = Instant::now();
    connect_engines(shared).await;
    let engines = shared.engines();
    let span = info_span!("agent-pass", commit = tracing::field::Empty);
    async {
        // An engine that did not even connect: what it runs cannot be known, so nothing is
        // planned (a pending set waits too). One that is connected is tried by the pass.
        let handles = (engines.docker.is_none(), engines.systemd.is_none());
        let blind = unresponsive(shared).into_iter().find(|e| match e {
            Engine::Docker => handles.0,
            Engine::Systemd => handles.1,
        });
        if let Some(engine) = blind {
            fail_pass(shared, format!("{} (nothing was changed)", problem_line(shared, engine)), started.elapsed());
            return;
        }
        if let Some(set) = pending.take()
            && let Some((set, why)) = accept_or_block(shared, &engines, set).await
        {
            // Nothing is applied from what could not be observed; the set waits.
            *pending = Some(set);
            fail_pass(shared, why, started.elapsed());
            return;
        }
        let Some(set) = shared.current() else {
            lock(&shared.agent).last_result = Some("no valid spec set yet: nothing applied".into());
            return;
        };
        // Every pass is recorded (in the log) with the commit it applied.
        if let Some(commit) = &set.commit {
            tracing::Span::current().record("commit", short(commit));
        }
        // Docker cannot be reached: the pass applies the rest of the specs, and plans nothing
        // for Docker's part from what it could not observe (no create of every instance).
        let unreachable = docker_unreachable(shared);
        let desired = if unreachable {
            Arc::new(without((*set.desired).clone(), &[Engine::Docker]))
        } else {
            set.desired.clone()
        };
        let mut options = shared.options.clone();
        options.specs = set.dir.clone();
        options.units.specs = set.dir.clone();
        let now = Instant::now();
        backoff.retain(|_, b| b.until > now || b.failures > 0);
        options.skip_owners = backoff.iter().filter(|(_, b)| b.until > now).map(|(k, _)| k.clone()).collect();
        let state_dir = match open_state(&shared.settings.state_dir).await {
            Ok(d) => d,
            Err(e) => {
                error!(error = %crate::support::chain(&e), "state directory");
                lock(&shared.agent).last_result = Some(crate::support::chain(&e));
                return;
            }
        };
        if *unclean {
            if let Err(e) = place_unclean_holds(&engines, &options, &set.desired, &state_dir).await {
                error!(error = %e, "placing unclean-boot holds; nothing applied");
                lock(&shared.agent).last_result = Some(e);
                return;
            }
            if write_marker(&shared.settings.state_dir, &BootMarker { boot_id: this_boot.to_string(), running: true })
                .is_ok()
            {
                *unclean = false;
            }
        }
        if *after_shutdown {
            let marked = mark_shutdown_stops(&engines, &options, &set.desired, &state_dir).await.and_then(|()| {
                let marker = BootMarker { boot_id: this_boot.to_string(), running: true };
                write_marker(&shared.settings.state_dir, &marker).map_err(|e| crate::support::chain(&e))
            });
            match marked {
                Ok(()) => *after_shutdown = false,
                Err(e) => {
                    error!(error = %e, "marking what the host's shutdown stopped; nothing applied");
                    lock(&shared.agent).last_result = Some(e);
                    return;
                }
            }
        }
        // A backup killed while its services were stopped: they are started again first.
        options.stopped_by_backup =
            crate::backup::quiesce::recover_before_pass(&engines, &desired, state_dir.path()).await;
        let result = apply::apply(engines.clone(), desired, &state_dir, &options).await;
        drop(state_dir);
        let elapsed = started.elapsed();
        match result {
            Ok(report) => {
                // Both engines answered what the pass asked.
                if engines.docker.is_some() {
                    note_engine(shared, Engine::Docker, None);
                }
                if engines.systemd.is_some() {
                    note_engine(shared, Engine::Systemd, None);
                }
                let left_out = unreachable.then(|| problem_line(shared, Engine::Docker));
                record_report(shared, &report, backoff, elapsed, left_out)
            }
            Err(e) => {
                if let Some((engine, kind, error)) = pass_engine_failure(&e) {
                    note_engine(shared, engine, Some((kind, error.clone())));
                    if engine == Engine::Docker && kind == UNAVAILABLE {
                        lose_docker(shared, error);
                    }
                }
                fail_pass(shared, crate::support::chain(&e), elapsed);
            }
        }
    }
    .instrument(span)
    .await;
}

/// Records a pass that failed before any step: `why` in the status and the log. It counted
/// no objects, so none are reported as current.
fn fail_pass(shared: &Shared, why: String, elapsed: Duration) {
    // An engine's error may echo a request: no secret of the set is shown or logged.
    let why = shared.current().map_or(why.clone(), |set| Redactor::of_desired(&set.desired).redact(&why));
    warn!(error = %why, "pass failed");
    shared.metrics.pass(elapsed, false);
    shared.metrics.objects_unknown();
    let mut a = lock(&shared.agent);
    a.last_result = Some(why);
    a.passes += 1;
    a.last_pass_ms = Some(crate::support::now_ms());
    a.last_pass_duration_ms = Some(elapsed.as_millis() as u64);
}

async fn open_state(dir: &Path) -> Result<StateDir, StateError> {
    let dir = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || StateDir::open(&dir)).await {
        Ok(r) => r,
        Err(e) => Err(StateError::Lock { path: PathBuf::from("state lock"), source: std::io::Error::other(e) }),
    }
}

/// Puts a new set in use unless the mass-removal guard stops it. Returns the set, and why,
/// when it could not be checked against live state (an engine failed): it stays pending.
async fn accept_or_block(
    shared: &Arc<Shared>,
    engines: &Arc<Engines<DockerEngine, SystemdEngine>>,
    set: SpecSet,
) -> Option<(SpecSet, String)> {
    if !shared.settings.allow_mass_removal {
        match crate::reconcile::observe::observe_all(engines, &shared.options, &set.desired).await {
            Ok(observed) => {
                if let Some(m) =
                    mass_removal(&observed, &set.desired, &shared.settings.scope, shared.settings.max_removal_percent)
                {
                    let why = format!(
                        "the newest spec set{} {m}: not applied; the set in use stays (allow with `tend agent --allow-mass-removal` or massRemoval.allow in the agent config)",
                        set.commit.as_deref().map(|c| format!(" (commit {})", short(c))).unwrap_or_default(),
                    );
                    warn!(removed = m.removed.len(), managed = m.managed, "{why}");
                    shared.metrics.mass_removal_blocked(true);
                    lock(&shared.agent).mass_removal = Some(why);
                    return None;
                }
            }
            Err(e) => {
                // Unknown: the new set stays pending for a later pass (waking one at once
                // would spin while an engine fails fast).
                if let Some((engine, kind, error)) = engine_failure(&e) {
                    note_engine(shared, engine, Some((kind, error)));
                }
                lock(&shared.agent).mass_removal = None;
                return Some((
                    set,
                    format!("checking the new spec set against live state: {}", crate::support::chain(&e)),
                ));
            }
        }
    }
    shared.metrics.mass_removal_blocked(false);
    let (desired, dir, commit) = ((*set.desired).clone(), set.dir.clone(), set.commit.clone());
    if let (Some(git), Some(rev)) = (&shared.git, &set.rev) {
        // Switch the checkout first: the set is read through the `current` link.
        if let Err(e) = git.lock().await.promote(rev) {
            error!(error = %crate::support::chain(&e), "switching to the new checkout failed; the set in use stays");
            return None;
        }
    }
    set_current(shared, desired, dir, commit);
    None
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Observes, then records in the state what the boot before this one means (`mark`). Not
/// before Docker answers when the specs have docker services: what it would show decides
/// which containers are held or started again, so the marks wait for it (the pass fails,
/// and the next one tries again).
async fn record_boot(
    engines: &Arc<Engines<DockerEngine, SystemdEngine>>,
    options: &Options,
    desired: &Desired,
    state_dir: &StateDir,
    mark: impl FnOnce(&Observed, &mut state::State),
) -> Result<(), String> {
    if engines.docker.is_none() && desired.docker_services().next().is_some() {
        return Err("Docker does not answer yet: what the last boot means for its containers waits for it".into());
    }
    let observed = crate::reconcile::observe::observe_all(engines, options, desired)
        .await
        .map_err(|e| crate::support::chain(&e))?;
    let mut st = state_dir.load().map_err(|e| crate::support::chain(&e))?;
    mark(&observed, &mut st);
    state_dir.save(&st).map_err(|e| crate::support::chain(&e))
}

async fn place_unclean_holds(
    engines: &Arc<Engines<DockerEngine, SystemdEngine>>,
    options: &Options,
    desired: &Desired,
    state_dir: &StateDir,
) -> Result<(), String> {
    record_boot(engines, options, desired, state_dir, |observed, st| {
        for (name, hold) in unclean_boot_holds(desired, observed, crate::support::now_ms()) {
            warn!(instance = %name, "held after an unclean boot: `tend release {name}` starts it");
            st.holds.entry(name).or_insert(hold);
        }
    })
    .await
}

/// Marks the instances a clean shutdown of the host stopped ([`shutdown_stops`]) as stopped
/// on purpose: started again, whatever their restart policy says of crashes.
async fn mark_shutdown_stops(
    engines: &Arc<Engines<DockerEngine, SystemdEngine>>,
    options: &Options,
    desired: &Desired,
    state_dir: &StateDir,
) -> Result<(), String> {
    record_boot(engines, options, desired, state_dir, |observed, st| {
        for name in shutdown_stops(desired, observed, st) {
            info!(instance = %name, "stopped by the host's clean shutdown: starting it again");
            st.stopped_on_purpose.insert(name, state::StopCause::HostShutdown);
        }
    })
    .await
}

/// Records a pass that ran: outcomes, backoff, metrics and the status. `left_out` says why
/// part of the specs was not observed (an unreachable Docker): then no object is counted.
fn record_report(
    shared: &Shared,
    report: &Report,
    backoff: &mut BTreeMap<String, Backoff>,
    elapsed: Duration,
    left_out: Option<String>,
) {
    let m = &shared.metrics;
    let mut failed_owners: BTreeSet<String> = BTreeSet::new();
    let mut ok_owners: BTreeSet<String> = BTreeSet::new();
    let mut repairs = 0u64;
    let (mut done, mut failed) = (0usize, 0usize);
    for (step, outcome) in report.steps() {
        let kind = crate::reconcile::execute::action_name(&step.action);
        match outcome {
            Some(Outcome::Done { .. }) => {
                done += 1;
                m.action(kind, true);
                if is_repair(&step.reason) && !matches!(step.action, Action::Hold { .. }) {
                    repairs += 1;
                }
                if let Some(o) = step.action.owner() {
                    ok_owners.insert(o);
                }
            }
            Some(Outcome::Failed { .. }) => {
                failed += 1;
                m.action(kind, false);
                if let Some(o) = step.action.owner() {
                    failed_owners.insert(o);
                }
            }
            _ => {}
        }
    }
    m.drift_repair(repairs);
    m.pass(elapsed, failed == 0);
    let now = Instant::now();
    let now_ms = crate::support::now_ms();
    for o in &failed_owners {
        let failures = backoff.get(o).map_or(0, |b| b.failures) + 1;
        let delay = backoff_delay(failures);
        warn!(object = %o, failures, retry_in_ms = delay.as_millis() as u64, "steps failed: backing off");
        backoff
            .insert(o.clone(), Backoff { failures, until: now + delay, until_ms: now_ms + delay.as_millis() as u64 });
    }
    for o in ok_owners.difference(&failed_owners) {
        backoff.remove(o);
    }
    // Objects by state, from what the pass saw and planned.
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &report.observed.containers {
        let state = match c.state {
            RunState::Running => "running",
            RunState::Exited | RunState::Dead => "exited",
            _ => "other",
        };
        *counts.entry(state).or_default() += 1;
    }
    for u in report
        .observed
        .units
        .iter()
        .flat_map(|u| u.values())
        .filter(|u| u.scope.as_deref() == Some(&shared.settings.scope))
    {
        let state = match u.active {
            UnitActive::Active => "active",
            UnitActive::Failed => "failed",
            _ => "inactive",
        };
        *counts.entry(state).or_default() += 1;
    }
    for n in &report.plan.notes {
        let state = match n {
            Note::Held { .. } => "held",
            Note::Maintenance { .. } => "maintenance",
            Note::BackingOff { .. } => "backing-off",
            Note::Conflict { .. } => "conflict",
            _ => continue,
        };
        *counts.entry(state).or_default() += 1;
    }
    let counts: Vec<(&str, u64)> = counts.into_iter().collect();
    let result = match (done, failed, &left_out) {
        (0, 0, None) if report.plan.steps.is_empty() => "converged".to_string(),
        (0, 0, Some(_)) if report.plan.steps.is_empty() => "nothing to do".to_string(),
        (d, 0, _) => format!("applied {d} step(s)"),
        (d, f, _) => format!("{f} step(s) failed, {d} done"),
    };
    let result = match &left_out {
        Some(why) => {
            m.objects_unknown();
            format!("{result} for the rest of the specs; not checked: {why}")
        }
        None => {
            m.objects(&counts);
            result
        }
    };
    if done + failed > 0 {
        info!(done, failed, ms = elapsed.as_millis() as u64, "pass: {result}");
    } else {
        debug!(ms = elapsed.as_millis() as u64, "pass: {result}");
    }
    for n in &report.plan.notes {
        if let Note::Maintenance { target, .. } = n {
            wait_for_release(shared, target);
        }
    }
    let mut troubled: BTreeSet<String> = failed_owners.clone();
    let mut held = 0;
    for n in &report.plan.notes {
        let service = match n {
            Note::Held { service, .. } => {
                held += 1;
                service
            }
            Note::BackingOff { service, .. }
            | Note::Maintenance { service, .. }
            | Note::Conflict { service, .. }
            | Note::ImageNotPresent { service, .. }
            | Note::Blocked { service, .. } => service,
            _ => continue,
        };
        troubled.insert(service.clone());
    }
    let mut a = lock(&shared.agent);
    // Changes waiting for an update window: pass when it opens.
    a.next_window_ms = crate::reconcile::plan::window::next_deferred_open(&report.plan);
    a.troubled = troubled.into_iter().collect();
    a.held = held;
    a.drained = report.plan.notes.iter().any(|n| matches!(n, Note::Drained { .. }));
    a.passes += 1;
    a.last_pass_ms = Some(now_ms);
    a.last_pass_duration_ms = Some(elapsed.as_millis() as u64);
    a.last_result = Some(result);
    a.backoff = backoff.iter().filter(|(_, b)| b.until > now).map(|(k, b)| (k.clone(), b.until_ms)).collect();
    for n in &report.plan.notes {
        if let Note::BackingOff { name, until_ms, .. } = n {
            a.backoff.insert(name.clone(), *until_ms);
        }
    }
}

/// When an operator's maintenance window on `target` ends (the lock is released, also by
/// the kernel when `tend maintain` dies), pass at once: the operator may have stopped or
/// changed the target by hand. One waiting thread per target.
fn wait_for_release(shared: &Shared, target: &str) {
    if !lock(&shared.releases).insert(target.to_string()) {
        return;
    }
    let (locks, key) = (shared.options.locks.clone(), target.to_string());
    let (releases, wake) = (shared.releases.clone(), shared.wake.clone());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = locks.wait_released(&key) {
            warn!(target = %key, error = %crate::support::chain(&e), "waiting for the end of a maintenance window");
        } else {
            info!(target = %key, "maintenance window ended: passing again");
        }
        lock(&releases).remove(&key);
        let _ = wake.blocking_send(Wake::Api);
    });
}

/// New job runs (from the histories) into the metrics, and the Backups' health.
fn record_runs(shared: &Shared, seen: &mut BTreeMap<String, u64>) {
    let Some(set) = shared.current() else { return };
    for b in set.desired.backups.values() {
        let h = crate::backup::run::health(&shared.settings.state_dir, b, crate::support::now_ms());
        shared.metrics.backup(&b.name, h.last_success_ms, h.problems().len());
    }
    for name in set.desired.timers.keys() {
        let Ok(records) = crate::jobs::history(&shared.settings.state_dir, name, Some(20)) else { continue };
        let last = seen.get(name).copied().unwrap_or(0);
        let mut newest = last;
        for r in records.iter().rev().filter(|r| r.start_ms > last) {
            let ok = r.exit_status() == 0;
            shared.metrics.job(name, ok, Duration::from_millis(r.duration_ms()));
            newest = newest.max(r.start_ms);
        }
        seen.insert(name.clone(), newest);
    }
}

/// Where systemd is not PID 1, the agent schedules Timers itself; restarted when the set's
/// Timers change.
fn update_scheduler(shared: &Shared, current: &mut Option<(String, CancellationToken)>, stop: &CancellationToken) {
    if lock(&shared.engines).systemd.is_some() {
        return;
    }
    let Some(set) = shared.current() else { return };
    let key: String = set.desired.timers.values().map(|t| format!("{}:{};", t.name, t.hash)).collect();
    if current.as_ref().is_some_and(|(k, _)| *k == key) {
        return;
    }
    if let Some((_, token)) = current.take() {
        token.cancel();
    }
    let token = stop.child_token();
    let config = crate::jobs::scheduler::Config {
        tend_bin: shared.settings.tend_bin.clone(),
        scope: shared.settings.scope.clone(),
        state_dir: shared.settings.state_dir.clone(),
        specs: set.dir.clone(),
        timeouts: shared.settings.timeouts,
    };
    let timers: Vec<_> = set.desired.timers.values().cloned().collect();
    if timers.iter().any(crate::jobs::scheduler::scheduled) {
        info!(timers = timers.iter().filter(|t| crate::jobs::scheduler::scheduled(t)).count(), "scheduling Timers");
    }
    tokio::spawn(crate::jobs::scheduler::schedule(config, timers, token.clone()).instrument(info_span!("scheduler")));
    *current = Some((key, token));
}

/// The one-line summary for systemd's STATUS=.
fn status_line(shared: &Shared) -> String {
    let a = shared.agent_status();
    let services = shared.current().map_or(0, |s| s.desired.services.len());
    let ok = shared.current().map_or(0, |s| s.desired.services.keys().filter(|n| !a.troubled.contains(n)).count());
    let mut parts = vec![format!("{ok} of {services} services ok")];
    if a.drained {
        parts.insert(0, "drained".into());
    }
    if a.held > 0 {
        parts.push(format!("{} held", a.held));
    }
    if !a.spec_errors.is_empty() {
        parts.push(format!("{} spec error(s)", a.spec_errors.len()));
    }
    if a.mass_removal.is_some() {
        parts.push("mass removal blocked".into());
    }
    for (engine, p) in &a.engines {
        parts.push(format!("{engine} {}", p.state));
    }
    if !a.backoff.is_empty() {
        parts.push(format!("{} backing off", a.backoff.len()));
    }
    if let Some(r) = &a.last_result {
        parts.push(format!("last pass: {r} ({} ms)", a.last_pass_duration_ms.unwrap_or(0)));
    }
    if let Some(c) = &a.commit {
        parts.push(format!("commit {}", short(c)));
    }
    parts.join(", ")
}

/// The API, served from the shared state.
struct Api(Arc<Shared>);

/// What the API observed: the part of the specs it could check, what runs, the state and
/// the plan, and the engines it left out because they do not answer.
struct Observation {
    desired: Desired,
    observed: Observed,
    state: state::State,
    plan: crate::reconcile::plan::Plan,
    skipped: Vec<Engine>,
}

/// `desired` without what runs on `engines`.
fn without(mut desired: Desired, engines: &[Engine]) -> Desired {
    use tend_specs::service::Runtime;
    for engine in engines {
        let runtime = match engine {
            Engine::Docker => Runtime::Docker,
            Engine::Systemd => Runtime::Systemd,
        };
        desired.services.retain(|_, s| s.spec.runtime != runtime);
        if *engine == Engine::Systemd {
            desired.timers.clear();
        }
    }
    desired
}

impl Api {
    /// Observes for the API. An engine known to be unresponsive is left out with the part
    /// of the specs it runs (when `partial`; otherwise the request fails), so the API
    /// answers at once while it hangs; one found unresponsive now is noted and left out
    /// the same way. The loop's passes find out when it answers again.
    async fn observe(shared: &Shared, partial: bool) -> Result<Observation, Failure> {
        let full = shared.current().map(|s| (*s.desired).clone()).unwrap_or_default();
        let mut options = shared.options.clone();
        if let Some(set) = shared.current() {
            options.specs = set.dir.clone();
            options.units.specs = set.dir;
        }
        // At most one more try than there are engines: each failure leaves one out.
        for _ in 0..3 {
            let skipped = unobservable(shared);
            if let Some(engine) = skipped.first().filter(|_| !partial) {
                return Err(Failure::new(503, problem_line(shared, *engine)));
            }
            let all = shared.engines();
            let engines = Engines {
                docker: all.docker.clone().filter(|_| !skipped.contains(&Engine::Docker)),
                systemd: all.systemd.clone().filter(|_| !skipped.contains(&Engine::Systemd)),
            };
            let desired = without(full.clone(), &skipped);
            let observed = match crate::reconcile::observe::observe_all(&engines, &options, &desired).await {
                Ok(observed) => observed,
                Err(e) => match engine_failure(&e) {
                    Some((engine, kind @ UNRESPONSIVE_KIND, error)) => {
                        note_engine(shared, engine, Some((kind, error)));
                        continue;
                    }
                    Some((Engine::Docker, kind @ UNAVAILABLE, error)) => {
                        note_engine(shared, Engine::Docker, Some((kind, error.clone())));
                        lose_docker(shared, error);
                        continue;
                    }
                    _ => return Err(Failure::new(503, crate::support::chain(&e))),
                },
            };
            let state = state::read_state(&shared.settings.state_dir)
                .map_err(|e| Failure::new(500, crate::support::chain(&e)))?;
            let plan = apply::plan_for(&desired, &observed, &state, &options, &BTreeSet::new());
            return Ok(Observation { desired, observed, state, plan, skipped });
        }
        Err(Failure::new(503, "the engines do not answer".to_string()))
    }
}

/// What of `desired` this agent cannot run (systemd services where systemd is missing), as
/// the stand-alone commands say it.
fn unchecked(shared: &Shared, desired: &Desired) -> Option<String> {
    let why = lock(&shared.engines).systemd_missing.clone()?;
    crate::reconcile::observe::unmet_without_systemd(desired, &why)
}

impl Control for Api {
    fn status(&self) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let seen = Api::observe(&shared, true).await?;
            let mut status: Status =
                crate::reconcile::status::build(&seen.desired, &seen.observed, &seen.state, &seen.plan);
            let desired = shared.current().map(|s| (*s.desired).clone()).unwrap_or_default();
            status.timers =
                crate::jobs::list(&shared.settings.state_dir, &desired, tend_specs::calendar::Timestamp::now());
            let unanswered = seen.skipped.iter().map(|e| problem_line(&shared, *e));
            let unchecked: Vec<String> = unanswered.chain(unchecked(&shared, &desired)).collect();
            status.unchecked = (!unchecked.is_empty()).then(|| unchecked.join("; "));
            status.backups = desired
                .backups
                .values()
                .map(|b| crate::backup::run::health(&shared.settings.state_dir, b, crate::support::now_ms()))
                .collect();
            let mut agent = shared.agent_status();
            // The banner lasts as long as one of its holds.
            agent.unclean_boot &= seen.state.holds.values().any(|h| h.unclean_boot);
            status.agent = Some(agent);
            serde_json::to_value(&status).map_err(|e| Failure::new(500, e.to_string()))
        })
    }

    fn plan(&self) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let mut seen = Api::observe(&shared, false).await?;
            seen.plan.unchecked = unchecked(&shared, &seen.desired);
            serde_json::to_value(&seen.plan).map_err(|e| Failure::new(500, e.to_string()))
        })
    }

    fn trigger(&self) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let queued = shared.wake.try_send(Wake::Api).is_ok();
            Ok(json!({ "queued": queued }))
        })
    }

    fn release(&self, name: String) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let dir = shared.settings.state_dir.clone();
            let n = name.clone();
            let released = tokio::task::spawn_blocking(move || state::release(&dir, &n, crate::support::now_ms()))
                .await
                .map_err(|e| Failure::new(500, e.to_string()))?
                .map_err(|e| Failure::new(500, crate::support::chain(&e)))?;
            if released.is_empty() {
                return Err(Failure::new(404, format!("nothing is held under `{name}` (see `tend status`)")));
            }
            let _ = shared.wake.try_send(Wake::Api);
            Ok(json!({ "released": released }))
        })
    }

    fn jobs(&self, name: Option<String>, limit: Option<usize>) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let dir = &shared.settings.state_dir;
            match name {
                Some(name) => {
                    let records = crate::jobs::history(dir, &name, limit)
                        .map_err(|e| Failure::new(404, crate::support::chain(&e)))?;
                    serde_json::to_value(&records).map_err(|e| Failure::new(500, e.to_string()))
                }
                None => {
                    let desired = shared.current().map(|s| (*s.desired).clone()).unwrap_or_default();
                    let list = crate::jobs::list(dir, &desired, tend_specs::calendar::Timestamp::now());
                    serde_json::to_value(&list).map_err(|e| Failure::new(500, e.to_string()))
                }
            }
        })
    }

    fn metrics(&self) -> String {
        self.0.metrics.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::model::{Container, Health, Unit};

    fn container(service: &str, i: u32, state: RunState) -> Container {
        Container {
            id: format!("id-{service}-{i}"),
            name: instance_name(service, i),
            service: service.into(),
            instance: i,
            hash: String::new(),
            fields: BTreeMap::new(),
            image_id: String::new(),
            state,
            health: Health::None,
            exit_code: None,
        }
    }

    fn desired(yaml: &str) -> Desired {
        tend_specs::load_str(Path::new("t.yaml"), yaml).expect("valid specs")
    }

    fn service(name: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: busybox:1\n{extra}"
        )
    }

    fn backup(schedule: &str, level: u32) -> String {
        format!(
            "---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: nightly}}\nspec:\n  schedule: '{schedule}'\n  source: {{paths: [/srv/data]}}\n  destination: {{dir: /srv/backups}}\n  compression: {{level: {level}}}\n"
        )
    }

    #[test]
    fn an_edit_of_only_a_backup_changes_the_fingerprint() {
        let base = fingerprint(&desired(&[service("web", ""), backup("daily", 5)].concat()));
        assert_eq!(base, fingerprint(&desired(&[service("web", ""), backup("daily", 5)].concat())));
        assert_ne!(base, fingerprint(&desired(&[service("web", ""), backup("hourly", 5)].concat())), "schedule");
        assert_ne!(base, fingerprint(&desired(&[service("web", ""), backup("daily", 9)].concat())), "compression");
        assert_ne!(base, fingerprint(&desired(&service("web", ""))), "removed");
    }

    fn counts(m: Option<MassRemoval>) -> Option<(usize, usize)> {
        m.map(|m| (m.removed.len(), m.managed))
    }

    #[test]
    fn removing_most_managed_services_is_a_mass_removal() {
        let mut observed = Observed::default();
        for s in ["a", "b", "c", "d"] {
            observed.containers.push(container(s, 1, RunState::Running));
        }
        let all = desired(&[service("a", ""), service("b", ""), service("c", ""), service("d", "")].concat());
        assert_eq!(mass_removal(&observed, &all, "t", 50), None);
        // Two of four is 50%: not more than the limit.
        let two = desired(&[service("a", ""), service("b", "")].concat());
        assert_eq!(mass_removal(&observed, &two, "t", 50), None);
        // Three of four is.
        let one = desired(&service("a", ""));
        assert_eq!(counts(mass_removal(&observed, &one, "t", 50)), Some((3, 4)));
        // An empty set (a deleted directory's contents) removes everything.
        assert_eq!(counts(mass_removal(&observed, &Desired::default(), "t", 50)), Some((4, 4)));
        // A stricter limit.
        assert_eq!(counts(mass_removal(&observed, &two, "t", 25)), Some((2, 4)));
        let m = mass_removal(&observed, &one, "t", 50).expect("too much");
        assert_eq!(m.to_string(), "would remove 3 of the 4 managed services and Timers, more than 50% (b, c, d)");
    }

    #[test]
    fn removing_the_only_service_is_not_a_mass_removal() {
        let mut observed = Observed::default();
        observed.containers.push(container("a", 1, RunState::Running));
        assert_eq!(mass_removal(&observed, &Desired::default(), "t", 50), None);
    }

    #[test]
    fn units_of_this_scope_count_as_managed() {
        let mut observed = Observed::default();
        let unit = |name: &str, scope: &str| Unit {
            name: name.into(),
            content: String::new(),
            scope: Some(scope.into()),
            active: UnitActive::Active,
            enabled: true,
            exit_status: None,
        };
        observed.units = Some(BTreeMap::from([
            ("web.service".to_string(), unit("web.service", "t")),
            ("dump.service".to_string(), unit("dump.service", "t")),
            ("dump.timer".to_string(), unit("dump.timer", "t")),
            ("other.service".to_string(), unit("other.service", "elsewhere")),
        ]));
        assert_eq!(counts(mass_removal(&observed, &Desired::default(), "t", 50)), Some((2, 2)));
    }

    #[test]
    fn an_unclean_boot_is_another_boot_that_never_stopped_cleanly() {
        let running = |id: &str| BootMarker { boot_id: id.into(), running: true };
        let clean = |id: &str| BootMarker { boot_id: id.into(), running: false };
        assert!(unclean_boot(Some(&running("old")), "new"));
        assert!(!unclean_boot(Some(&clean("old")), "new"));
        // The agent crashed but the host did not go down: not an unclean boot.
        assert!(!unclean_boot(Some(&running("same")), "same"));
        assert!(!unclean_boot(None, "new"));
    }

    #[test]
    fn a_clean_reboot_is_another_boot_whose_agent_stopped_cleanly() {
        let marker = |id: &str, running| BootMarker { boot_id: id.into(), running };
        assert!(clean_reboot(Some(&marker("old", false)), "new"));
        assert!(!clean_reboot(Some(&marker("old", true)), "new"), "unclean");
        assert!(!clean_reboot(Some(&marker("same", false)), "same"), "the agent restarted, not the host");
        assert!(!clean_reboot(None, "new"));
    }

    #[test]
    fn a_clean_shutdown_stopped_every_exited_instance_that_is_not_held() {
        let d = desired(&[service("db", "  replicas: 2\n  restart: {policy: hold}\n"), service("web", "")].concat());
        let observed = Observed {
            containers: vec![
                container("db", 1, RunState::Exited),
                container("db", 2, RunState::Exited),
                container("web", 1, RunState::Running),
            ],
            ..Default::default()
        };
        let mut st = state::State::default();
        st.holds.insert(
            "db-2".into(),
            Hold { service: "db".into(), instance: 2, since_ms: 1, exit_code: Some(1), unclean_boot: false },
        );
        assert_eq!(shutdown_stops(&d, &observed, &st), ["db-1"]);
    }

    #[test]
    fn unclean_boot_holds_only_marked_services_that_are_not_running() {
        let d = desired(&[service("db", "  holdAfterUncleanBoot: true\n  replicas: 2\n"), service("web", "")].concat());
        let mut observed = Observed::default();
        observed.containers.push(container("db", 1, RunState::Exited));
        observed.containers.push(container("db", 2, RunState::Running));
        observed.containers.push(container("web", 1, RunState::Exited));
        let holds = unclean_boot_holds(&d, &observed, 7);
        assert_eq!(holds.keys().collect::<Vec<_>>(), ["db-1"]);
        assert!(holds["db-1"].unclean_boot);
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(40), Duration::from_secs(300));
    }

    #[test]
    fn only_finished_writes_renames_and_removals_are_relevant() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
        let p = Path::new("/etc/tend/specs/web.yaml");
        assert!(relevant(&EventKind::Access(AccessKind::Close(AccessMode::Write)), p));
        assert!(relevant(&EventKind::Modify(ModifyKind::Name(RenameMode::To)), p));
        assert!(relevant(&EventKind::Remove(RemoveKind::File), p));
        // A file being written, or just created, is not read yet.
        assert!(!relevant(&EventKind::Modify(ModifyKind::Data(DataChange::Any)), p));
        assert!(!relevant(&EventKind::Create(CreateKind::File), p));
        // Editors' scratch files.
        for scratch in [".web.yaml.swp", "web.yaml~", "#web.yaml#", "4913", ".web.yaml.tmp"] {
            let p = Path::new("/etc/tend/specs").join(scratch);
            assert!(!relevant(&EventKind::Access(AccessKind::Close(AccessMode::Write)), &p), "{scratch}");
        }
    }
}
