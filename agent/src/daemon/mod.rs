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
pub mod cluster;
pub mod metrics;
pub mod source;

mod agent_loop;
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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::daemon::agent_loop::AgentLoop;
use crate::daemon::api::Control;
use crate::daemon::boot::Boot;
use crate::daemon::control::AgentControl;
use crate::daemon::shared::{Shared, Wake};
use crate::daemon::source::{GitConfig, GitSource};
use crate::daemon::spec_set::SpecSet;
use crate::reconcile::apply::Options;
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
    /// etcd cannot be used as configured (its TLS or credential files).
    #[error("joining the cluster")]
    Cluster(#[source] crate::engine::etcd::EtcdError),
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
    /// The host: scope, directories, this binary, engine timeouts.
    pub host: crate::host::Host,
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
    /// The cluster this node joins, when its configuration has a `cluster:` block.
    pub cluster: Option<cluster::ClusterSettings>,
}

/// The options every pass of the agent starts from, and the API's plans: the one place they
/// are built from the settings. A pass sets its own spec directory ([`with_specs`]), the
/// objects it leaves out (backoff) and what an interrupted backup stopped.
fn pass_options(settings: &Settings, stop: &CancellationToken) -> Options {
    Options::new(settings.host.clone(), PathBuf::new(), settings.parallel, stop.clone())
}

/// `base` for the spec set read from `dir` (hooks and Timers' units hand it to `tend job
/// run`).
fn with_specs(base: &Options, dir: &Path) -> Options {
    let mut options = base.clone();
    options.specs = dir.to_path_buf();
    options.specs = dir.to_path_buf();
    options
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), AgentError> {
    let stop = CancellationToken::new();
    let (wake_tx, wake_rx) = mpsc::channel::<Wake>(64);
    std::fs::create_dir_all(&settings.host.state_dir)
        .map_err(|source| StateError::Dir { path: settings.host.state_dir.clone(), source })?;
    let secret_salt = crate::support::redact::host_salt(&settings.host.state_dir, true)?;
    let git = match &settings.source {
        SourceSettings::Dir(_) => None,
        SourceSettings::Git(config) => {
            let git = GitSource::new(config.clone(), settings.host.state_dir.join("git"))?;
            Some(Arc::new(tokio::sync::Mutex::new(git)))
        }
    };
    let options = pass_options(&settings, &stop);
    let mut metrics = metrics::Metrics::new();
    let cluster = match &settings.cluster {
        Some(c) => {
            let cluster_metrics = metrics.cluster();
            let handle = cluster::start(c, &cluster_metrics, &settings.host.state_dir, wake_tx.clone(), &stop)
                .await
                .map_err(AgentError::Cluster)?;
            cluster::spawn_wakeups(&handle, wake_tx.clone(), stop.clone());
            cluster::spawn_metrics(&handle, cluster_metrics, stop.clone());
            Some(handle)
        }
        None => None,
    };
    let shared = Arc::new(Shared::new(settings, options, metrics, wake_tx, secret_salt, git, cluster));
    info!(scope = %shared.settings.host.scope, source = %shared.agent_status().source, "tend agent starting");
    handle_signals(&stop)?;
    let api_task = serve_api(&shared, &stop).await?;
    // Engines, and their wake-ups.
    engine_health::connect_engines(&shared).await;
    watch::spawn_engine_watchers(&shared, &stop);
    // The unclean-boot check: holds are placed with the first good spec set.
    let boot = Boot::start(&shared)?;
    let pending = spec_set::open_source(&shared, &stop).await?;
    recover_interrupted_backups(&shared, pending.as_ref()).await;

    let boot = AgentLoop::new(shared.clone(), stop.clone(), wake_rx, boot, pending).run().await;

    info!("stopping");
    stop.cancel();
    // A leader resigns, so that another node leads at once.
    if let Some(cluster) = &shared.cluster {
        let _ = tokio::time::timeout(Duration::from_secs(3), cluster.left()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(6), api_task).await;
    boot.finish(&shared.settings.host.state_dir)?;
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
        crate::backup::quiesce::recover(docker, systemd, desired.as_deref(), &shared.settings.host.state_dir).await
    {
        match r {
            Ok(()) => info!(%backup, "started the services an interrupted backup had stopped"),
            Err(e) => {
                error!(%backup, error = %crate::support::chain(&e), "could not start the services an interrupted backup had stopped")
            }
        }
    }
}
