//! What the loop, the watchers and the local API share: the settings, the engines, the spec
//! set in use, the agent's status and metrics, the git source, and the channel that wakes
//! the loop; and the types they hold (the engines and their health, the spec set).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use tend_specs::Desired;
use tokio::sync::mpsc;

use crate::daemon::metrics::Metrics;
use crate::daemon::source::{self, GitSource, Revision};
use crate::daemon::{Settings, SourceSettings};
use crate::engine::Engines;
use crate::engine::docker::DockerEngine;
use crate::engine::systemd::SystemdEngine;
use crate::reconcile::apply::Options;
use crate::reconcile::status::AgentStatus;

/// The engines a pass or the API works with.
pub(super) type LiveEngines = Engines<DockerEngine, SystemdEngine>;

/// An engine tend talks to, for its health in `tend status` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Engine {
    Docker,
    Systemd,
}

impl Engine {
    /// The label in metrics and in the status's `engines`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Systemd => "systemd",
        }
    }

    /// The name in messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Docker => "Docker",
            Self::Systemd => "systemd",
        }
    }
}

/// The engines the agent has now. Docker may come and go; systemd is found once.
#[derive(Debug, Default)]
pub(super) struct EngineHandles {
    pub(super) docker: Option<Arc<DockerEngine>>,
    pub(super) systemd: Option<Arc<SystemdEngine>>,
    /// Why systemd is not used, when it is not.
    pub(super) systemd_missing: Option<String>,
    /// Why Docker could not be connected, the last time it was tried.
    pub(super) docker_error: Option<String>,
    /// The engines (labels) that answered or were reached once: their `tend_engine_up`
    /// series exists, and a failure to reach them is reported.
    pub(super) reached: BTreeSet<&'static str>,
}

/// A validated spec set.
#[derive(Debug, Clone)]
pub(super) struct SpecSet {
    pub(super) desired: Arc<Desired>,
    /// Where it was loaded from.
    pub(super) dir: PathBuf,
    /// Its commit (git sources).
    pub(super) commit: Option<String>,
    /// A fingerprint of every object's hash, to tell whether a re-read changed anything.
    pub(super) fingerprint: String,
    /// The git candidate it came from, promoted when the set is accepted.
    pub(super) rev: Option<Revision>,
}

/// Why the loop woke.
#[derive(Debug)]
pub(super) enum Wake {
    /// Spec files changed (directory source).
    Specs,
    /// A git source has a new commit, checked out and waiting for validation.
    Candidate(Revision),
    /// Docker or systemd reported a change.
    Engine,
    /// The API asked for a pass.
    Api,
    /// The slots placed on this node, or its leadership, changed.
    Cluster,
}

/// A git source, shared by its poller and the loop.
pub(super) type SharedGit = Arc<tokio::sync::Mutex<GitSource>>;

/// What the loop and the API share.
pub(super) struct Shared {
    pub(super) settings: Settings,
    /// The options passes start from (`crate::daemon::pass_options`).
    pub(super) options: Options,
    pub(super) engines: Mutex<EngineHandles>,
    pub(super) current: RwLock<Option<SpecSet>>,
    pub(super) agent: Mutex<AgentStatus>,
    pub(super) metrics: Metrics,
    pub(super) wake: mpsc::Sender<Wake>,
    /// The units whose changes wake the loop: the set's systemd services and timer units.
    pub(super) units_of_interest: Arc<RwLock<BTreeSet<String>>>,
    /// Targets under maintenance whose release is being waited for (to pass at once).
    pub(super) releases: Arc<Mutex<BTreeSet<String>>>,
    /// The host's salt of secrets' digests (`crate::support::redact`).
    pub(super) secret_salt: Vec<u8>,
    /// The git source, when specs come from one: its poller checks out new commits, the
    /// loop promotes a candidate once its set is accepted or tells it of a rejection.
    pub(super) git: Option<SharedGit>,
    /// This node's part in its cluster, when it is in one.
    pub(super) cluster: Option<crate::cluster::node::Handle>,
}

impl Shared {
    /// The state at start: no engine connected yet, no spec set in use; `metrics` as
    /// registered (with the cluster's when in one).
    pub(super) fn new(
        settings: Settings,
        options: Options,
        metrics: Metrics,
        wake: mpsc::Sender<Wake>,
        secret_salt: Vec<u8>,
        git: Option<SharedGit>,
        cluster: Option<crate::cluster::node::Handle>,
    ) -> Self {
        let agent = AgentStatus {
            pid: std::process::id(),
            started_ms: crate::support::now_ms(),
            source: source_text(&settings.source),
            ..Default::default()
        };
        Self {
            settings,
            options,
            engines: Mutex::new(EngineHandles::default()),
            current: RwLock::new(None),
            agent: Mutex::new(agent),
            metrics,
            wake,
            units_of_interest: Arc::new(RwLock::new(BTreeSet::new())),
            releases: Arc::new(Mutex::new(BTreeSet::new())),
            secret_salt,
            git,
            cluster,
        }
    }

    /// The engines connected now.
    pub(super) fn engines(&self) -> Arc<LiveEngines> {
        let e = lock(&self.engines);
        Arc::new(Engines { docker: e.docker.clone(), systemd: e.systemd.clone() })
    }

    /// The spec set in use.
    pub(super) fn current(&self) -> Option<SpecSet> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The agent's own status, as `tend status` shows it.
    pub(super) fn agent_status(&self) -> AgentStatus {
        lock(&self.agent).clone()
    }
}

/// Locks `m`, also when a thread panicked holding it (what it guards stays usable).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where specs come from, for `tend status`: a directory, or a git URL (credentials
/// redacted) and its ref.
fn source_text(from: &SourceSettings) -> String {
    match from {
        SourceSettings::Dir(d) => d.display().to_string(),
        SourceSettings::Git(g) => {
            let r = match &g.reference {
                source::GitRef::Branch(b) => format!("branch {b}"),
                source::GitRef::Tag(t) => format!("tag {t}"),
            };
            format!("{} ({r})", source::redact_url(&g.url))
        }
    }
}
