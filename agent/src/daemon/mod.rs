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
//!
//! Where to read on: [`run`] sets up and tears down; `agent_loop` is the loop (what it
//! keeps between passes, what wakes it) and `pass` one pass of it; `record` what a pass
//! leaves in the status and metrics; `backoff` the per-object backoff; `spec_set` loading,
//! rejecting and accepting spec sets, behind the mass-removal `guard`; `boot` what the boot
//! before this one means; `watch` what wakes the loop from outside; `engine_health`
//! connecting to the engines and whether they answer; `control` the API's requests,
//! served by `api`; `systemd_notify` READY, WATCHDOG, STATUS; `shared` what all of them
//! share.

pub mod api;
pub mod metrics;
pub mod source;

mod backoff;
mod boot;
mod control;
mod engine_health;
mod guard;
mod pass;
mod record;
mod shared;
mod spec_set;
mod systemd_notify;
#[cfg(test)]
mod test_support;
mod watch;

pub use boot::{BootMarker, boot_id, clean_reboot, unclean_boot};
pub use guard::{MassRemoval, mass_removal};

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::daemon::api::Control;
use crate::daemon::backoff::{Backoffs, backoff_delay};
use crate::daemon::boot::Boot;
use crate::daemon::control::AgentControl;
use crate::daemon::engine_health::unresponsive;
use crate::daemon::record::record_runs;
use crate::daemon::shared::lock;
use crate::daemon::shared::{Shared, Wake};
use crate::daemon::source::{GitConfig, GitSource};
use crate::daemon::spec_set::SpecSet;
use crate::daemon::systemd_notify::{Watchdog, status_line};
use crate::engine::Timeouts;
use crate::reconcile::apply::{Options, UnitsConfig};
use crate::reconcile::state::StateError;

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

/// The options every pass of the agent starts from, and the API's plans: the one place they
/// are built from the settings. A pass sets its own spec directory ([`with_specs`]), the
/// objects it leaves out (backoff) and what an interrupted backup stopped.
fn pass_options(settings: &Settings, stop: &CancellationToken) -> Options {
    Options {
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
    }
}

/// `base` for the spec set read from `dir` (hooks and Timers' units hand it to `tend job
/// run`).
fn with_specs(base: &Options, dir: &Path) -> Options {
    let mut options = base.clone();
    options.specs = dir.to_path_buf();
    options.units.specs = dir.to_path_buf();
    options
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), AgentError> {
    let stop = CancellationToken::new();
    let (wake_tx, wake_rx) = mpsc::channel::<Wake>(64);
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
    let options = pass_options(&settings, &stop);
    let shared = Arc::new(Shared::new(settings, options, wake_tx, secret_salt, git));
    info!(scope = %shared.settings.scope, source = %shared.agent_status().source, "tend agent starting");
    handle_signals(&stop)?;
    let api_task = serve_api(&shared, &stop).await?;
    // Engines, and their wake-ups.
    engine_health::connect_engines(&shared).await;
    watch::spawn_engine_watchers(&shared, &stop);
    // The unclean-boot check: holds are placed with the first good spec set.
    let boot = Boot::start(&shared)?;
    let pending = spec_set::open_source(&shared, &stop).await?;
    recover_interrupted_backups(&shared, pending.as_ref()).await;

    let mut wake_rx = wake_rx;
    let (mut pending, mut boot) = (pending, boot);
    let settings = &shared.settings;

    // The loop.
    let mut watchdog = Watchdog::from_env();
    let hang_fault = std::env::var_os("TEND_FAULT_HANG").map(PathBuf::from);
    let mut scheduler: Option<(String, CancellationToken)> = None;
    let mut backoff = Backoffs::default();
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
        watchdog.ping();
        if stop.is_cancelled() {
            break;
        }
        if pass_wanted {
            pass_wanted = false;
            let pass = pass::run(&shared, &mut pending, &mut backoff, &mut boot);
            tokio::pin!(pass);
            let pings = watchdog.enabled();
            loop {
                tokio::select! {
                    () = &mut pass => break,
                    () = watchdog.due(), if pings => watchdog.ping(),
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
            systemd_notify::send(&[sd_notify::NotifyState::Status(&line)]);
            if !ready {
                ready = true;
                info!("first pass done: ready");
                systemd_notify::send(&[sd_notify::NotifyState::Ready]);
            }
            continue;
        }
        // Sleep until something happens: a wake-up, the resync, a backoff deadline.
        let mut deadline = next_resync;
        for at in follow_up_at.into_iter().chain(engine_retry_at) {
            deadline = deadline.min(at);
        }
        if let Some(until) = backoff.earliest() {
            deadline = deadline.min(tokio::time::Instant::now() + until.saturating_duration_since(Instant::now()));
        }
        if let Some(due) = restart_due(&shared) {
            deadline = deadline.min(due);
        }
        let pings = watchdog.enabled();
        tokio::select! {
            () = stop.cancelled() => break,
            () = watchdog.due(), if pings => {}
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
    boot.finish(&shared.settings.state_dir)?;
    info!("stopped; services keep running");
    Ok(())
}

/// Signals: the first stops gracefully, a second exits at once.
fn handle_signals(stop: &CancellationToken) -> Result<(), AgentError> {
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
                systemd_notify::send(&[sd_notify::NotifyState::Stopping]);
                stop.cancel();
            } else {
                error!("second signal: exiting now");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}

/// The local API on its socket (and metrics on TCP): the socket's server runs until stop.
async fn serve_api(shared: &Arc<Shared>, stop: &CancellationToken) -> Result<JoinHandle<()>, AgentError> {
    let settings = &shared.settings;
    let server = api::bind_unix(&settings.socket, settings.socket_group.as_deref()).await.map_err(AgentError::Api)?;
    let control: Arc<dyn Control> = Arc::new(AgentControl(shared.clone()));
    let api_task = tokio::spawn(server.serve(control.clone(), stop.clone()));
    if let Some(addr) = settings.metrics_listen {
        let metrics = api::bind_metrics_tcp(addr).await.map_err(AgentError::Api)?;
        tokio::spawn(metrics.serve(control.clone(), stop.clone()));
    }
    Ok(api_task)
}

/// A backup killed while its services were stopped: start them again now, dependencies
/// first (each pass does so too; this one also when no spec set is valid yet).
async fn recover_interrupted_backups(shared: &Shared, pending: Option<&SpecSet>) {
    let engines = shared.engines();
    let current = shared.current();
    let desired = pending.or(current.as_ref()).map(|set| set.desired.clone());
    let (docker, systemd) = (engines.docker.as_deref(), engines.systemd.as_deref());
    for (backup, r) in
        crate::backup::quiesce::recover(docker, systemd, desired.as_deref(), &shared.settings.state_dir).await
    {
        match r {
            Ok(()) => info!(%backup, "started the services an interrupted backup had stopped"),
            Err(e) => {
                error!(%backup, error = %crate::support::chain(&e), "could not start the services an interrupted backup had stopped")
            }
        }
    }
}

/// How long an engine event is left to settle before the pass it wakes.
const ENGINE_SETTLE: Duration = Duration::from_millis(50);
/// Second and third looks after an engine event, for what the first pass could not see yet
/// (each no-op pass costs a few milliseconds).
const ENGINE_FOLLOW_UPS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];

/// The longest wait before passing again while an engine is unresponsive (the waits start
/// at a second and double): each such pass costs one call timeout of waiting and nothing
/// else, and the agent should notice soon when the engine answers again.
const ENGINE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Handles a wake-up; returns whether a pass is wanted.
fn handle_wake(shared: &Shared, msg: Wake, pending: &mut Option<SpecSet>) -> bool {
    debug!(?msg, "woken");
    match msg {
        Wake::Engine | Wake::Api => true,
        Wake::Specs => spec_set::reread_dir(shared, pending),
        Wake::Candidate(rev) => spec_set::check_candidate(shared, rev, pending),
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
