//! The planner's vocabulary: a [`Plan`] of [`Step`]s, each an [`Action`] with its
//! [`Reason`], the [`Note`]s on what a plan leaves alone, and the [`Input`] it is made from.
//! The `Display` forms here are what `tend plan` prints.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use tend_specs::Desired;
use tend_specs::service::{Condition, RestartPolicy};

use crate::reconcile::model::{NEXT_SUFFIX, Observed};
use crate::reconcile::state::State;

/// What one step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Pull an image.
    PullImage {
        /// The reference.
        image: String,
    },
    /// Create a network, owned by tend.
    CreateNetwork {
        /// Its name.
        network: String,
    },
    /// Create a named volume, owned by tend (tend never deletes volumes).
    CreateVolume {
        /// Its name.
        volume: String,
    },
    /// Create a container for an instance and start it.
    Create {
        /// The service.
        service: String,
        /// The instance.
        instance: u32,
        /// The container name.
        name: String,
    },
    /// Start an existing container.
    Start {
        /// The service.
        service: String,
        /// The instance.
        instance: u32,
        /// The container name.
        name: String,
        /// The container ID (not `id`: that key is the step's number).
        #[serde(rename = "container_id")]
        id: String,
    },
    /// Stop (gracefully) and remove a container.
    Remove {
        /// The service.
        service: String,
        /// The instance.
        instance: u32,
        /// The container name.
        name: String,
        /// The container ID (not `id`: that key is the step's number).
        #[serde(rename = "container_id")]
        id: String,
        /// Seconds to wait after the stop signal.
        stop_timeout_s: Option<u64>,
    },
    /// Stop (gracefully) a container and leave it in place: a drained node's services.
    Stop {
        /// The service.
        service: String,
        /// The instance.
        instance: u32,
        /// The container name.
        name: String,
        /// The container ID (not `id`: that key is the step's number).
        #[serde(rename = "container_id")]
        id: String,
        /// Seconds to wait after the stop signal.
        stop_timeout_s: Option<u64>,
    },
    /// Rename the new container of a start-first replacement to the instance's name.
    Rename {
        /// The service.
        service: String,
        /// The instance.
        instance: u32,
        /// The container ID (not `id`: that key is the step's number).
        #[serde(rename = "container_id")]
        id: String,
        /// The current name.
        from: String,
        /// The new name.
        to: String,
    },
    /// Wait until a service's instances (or one instance) meet a condition.
    Await {
        /// The service.
        service: String,
        /// One instance's container, or all of the service's when `None`.
        name: Option<String>,
        /// The condition.
        condition: Condition,
        /// How long to wait before failing.
        timeout_ms: u64,
    },
    /// Record a hold: the instance stays down until `tend release`.
    Hold {
        /// The service.
        service: String,
        /// The instance.
        instance: u32,
        /// The container name.
        name: String,
        /// The exit code seen.
        exit_code: Option<i64>,
    },
    /// Write a unit file (and its environment file) rendered from the spec of `owner`.
    WriteUnit {
        /// The unit file name.
        unit: String,
        /// The systemd service or Timer it belongs to.
        owner: String,
    },
    /// Remove a unit file tend wrote (and its environment file).
    RemoveUnit {
        /// The unit file name.
        unit: String,
    },
    /// Make systemd read the unit files again (once per pass).
    DaemonReload,
    /// Enable units at boot.
    EnableUnits {
        /// The unit names.
        units: Vec<String>,
    },
    /// Disable units at boot.
    DisableUnits {
        /// The unit names.
        units: Vec<String>,
    },
    /// Start a unit and wait for its job.
    StartUnit {
        /// The unit name.
        unit: String,
    },
    /// Restart a unit and wait for its job.
    RestartUnit {
        /// The unit name.
        unit: String,
    },
    /// Stop a unit and wait for its job.
    StopUnit {
        /// The unit name.
        unit: String,
    },
    /// Run a Timer's job now and wait for it (`tend job run`): a before-start hook.
    RunJob {
        /// The Timer whose job runs.
        job: String,
    },
    /// Remove a network tend created that no spec uses any more.
    RemoveNetwork {
        /// Its name.
        network: String,
        /// Its ID (not `id`: that key is the step's number).
        #[serde(rename = "network_id")]
        id: String,
    },
}

/// Why a step is in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// The instance does not exist.
    Missing,
    /// The configuration changed; these fields differ.
    Changed {
        /// Template fields whose hash differs.
        fields: Vec<String>,
    },
    /// The image reference now points at another image.
    ImageChanged {
        /// The image ID the container runs.
        from: String,
        /// The image ID the reference has now.
        to: String,
    },
    /// The instance exited and its restart policy restarts it.
    Exited {
        /// Its exit code.
        code: Option<i64>,
        /// Restart number in this crash loop.
        attempt: u32,
    },
    /// The container was created but never started.
    NotStarted,
    /// The instance exited without tend stopping it and the policy is `hold`.
    UnexpectedExit {
        /// Its exit code.
        code: Option<i64>,
    },
    /// No spec declares this service any more.
    SpecRemoved,
    /// The service was scaled down.
    ScaledDown {
        /// The new number of replicas.
        replicas: u32,
    },
    /// The cluster placed this instance (slot) of the service on another node.
    PlacedElsewhere,
    /// A container left by an interrupted replacement.
    Leftover,
    /// The last step of a start-first replacement.
    Replaced,
    /// Something a service needs.
    NeededBy {
        /// The service that needs it (not `service`: an await step's action has that key).
        #[serde(rename = "needed_by")]
        service: String,
    },
    /// `pullPolicy: always`.
    PullAlways,
    /// The image is not on the host.
    ImageMissing,
    /// No spec uses the network any more.
    Unreferenced,
    /// A rollout waits for the new instance before going on.
    Rollout,
    /// Unit files were written or removed.
    UnitFilesChanged,
    /// The before-start hook of a service whose new version is about to start.
    Hook {
        /// The service.
        service: String,
    },
    /// The spec says the units are (or are not) enabled at boot.
    Enablement {
        /// Enabled in the spec.
        enabled: bool,
    },
    /// The node is drained (`tend drain`).
    Drained,
    /// A drain stopped it and the node is undrained: started again whatever its restart
    /// policy.
    Undrained,
    /// It was stopped on purpose (not a crash) and nothing holds it any more: started again
    /// whatever its restart policy (`never` aside).
    StoppedOnPurpose {
        /// Who stopped it.
        cause: crate::reconcile::state::StopCause,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::Changed { fields } => write!(f, "changed: {}", fields.join(", ")),
            Self::ImageChanged { from, to } => write!(f, "image changed: {} → {}", short_id(from), short_id(to)),
            Self::Exited { code: Some(c), attempt } => write!(f, "exited with code {c} (restart {attempt})"),
            Self::Exited { code: None, attempt } => write!(f, "not running (restart {attempt})"),
            Self::NotStarted => f.write_str("created but not started"),
            Self::UnexpectedExit { code } => match code {
                Some(c) => write!(f, "exited with code {c}; restart policy is hold"),
                None => f.write_str("stopped; restart policy is hold"),
            },
            Self::SpecRemoved => f.write_str("spec removed"),
            Self::ScaledDown { replicas } => write!(f, "scaled down to {replicas}"),
            Self::PlacedElsewhere => f.write_str("placed on another node"),
            Self::Leftover => f.write_str("left over from an interrupted replacement"),
            Self::Replaced => f.write_str("replacement ready"),
            Self::NeededBy { service } => write!(f, "needed by {service}"),
            Self::PullAlways => f.write_str("pull policy always"),
            Self::ImageMissing => f.write_str("not on this host"),
            Self::Unreferenced => f.write_str("no spec uses it"),
            Self::Rollout => f.write_str("rollout waits for it"),
            Self::UnitFilesChanged => f.write_str("unit files changed"),
            Self::Hook { service } => write!(f, "before {service} starts its new version"),
            Self::Enablement { enabled: true } => f.write_str("enabled in the spec"),
            Self::Enablement { enabled: false } => f.write_str("not enabled in the spec"),
            Self::Drained => f.write_str("node drained"),
            Self::Undrained => f.write_str("stopped by drain; node undrained"),
            Self::StoppedOnPurpose { cause } => write!(f, "{cause}, not a crash"),
        }
    }
}

fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Its number in the plan.
    pub id: usize,
    /// What it does.
    #[serde(flatten)]
    pub action: Action,
    /// Why.
    #[serde(flatten)]
    pub reason: Reason,
    /// Steps that must have succeeded first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<usize>,
    /// Pause before the step, once the steps before it are done (rollout pacing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pause_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Something the plan does not act on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "note", rename_all = "kebab-case")]
pub enum Note {
    /// A container tend does not own has the instance's name, or the `-next` name its
    /// start-first replacement needs: it is never touched.
    Conflict {
        /// The service.
        service: String,
        /// The container name.
        name: String,
        /// The other container's ID.
        id: String,
    },
    /// The instance is held for triage.
    Held {
        /// The service.
        service: String,
        /// The container name.
        name: String,
        /// The exit code that caused the hold.
        exit_code: Option<i64>,
        /// When the hold was taken (ms since the epoch).
        since_ms: u64,
        /// Held because the host went down uncleanly, not because of an exit.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unclean_boot: bool,
    },
    /// An operator holds the target for maintenance (`tend maintain`): tend leaves it alone
    /// (no start, restart, recreate or removal) until the lock is released.
    Maintenance {
        /// The service or Timer.
        service: String,
        /// The lock key: an instance (`web-1`), a unit (`web.service`), a job (`x.job`).
        target: String,
        /// Who, since when, why.
        window: crate::reconcile::model::Maintenance,
    },
    /// A crash-looping instance waits for its backoff.
    BackingOff {
        /// The service.
        service: String,
        /// The container name.
        name: String,
        /// The restart it will be.
        attempt: u32,
        /// When it may restart (ms since the epoch).
        until_ms: u64,
    },
    /// The instance exited and its restart policy leaves it so.
    Exited {
        /// The service.
        service: String,
        /// The container name.
        name: String,
        /// Its exit code.
        code: Option<i64>,
        /// The policy.
        policy: RestartPolicy,
    },
    /// The image is not on the host and the pull policy is `never`.
    ImageNotPresent {
        /// The service.
        service: String,
        /// The image.
        image: String,
    },
    /// The service waits for a dependency that cannot become ready in this pass.
    Blocked {
        /// The service.
        service: String,
        /// The dependency.
        by: String,
    },
    /// A unit file tend would write exists and is not tend's (or another scope's).
    UnitConflict {
        /// The unit file name.
        unit: String,
        /// The scope that wrote it, when another tend did.
        scope: Option<String>,
    },
    /// The node is drained (`tend drain`): its services are stopped and nothing starts.
    Drained {
        /// When it was drained (ms since the epoch).
        since_ms: u64,
        /// Who drained it.
        user: String,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A container carries tend's labels but not a valid instance: left alone.
    Unrecognized {
        /// The container name.
        name: String,
        /// Its ID.
        id: String,
    },
    /// Replacing the running instances of a placed service here waits for this node's turn
    /// in the cluster: a slot of the service's disruption budget, taken by the agent.
    ClusterTurn {
        /// The service.
        service: String,
        /// How many of its instances may be down at once across the cluster.
        at_once: u32,
    },
    /// Changes that would stop or recreate running instances of the service wait for its
    /// update window (`tend apply --now` makes them at once).
    UpdateWindow {
        /// The service.
        service: String,
        /// When the window opens next (ms since the epoch); `None` when it never opens again.
        next_open_ms: Option<u64>,
        /// The window as written: `Sun 02:00 for 2h`.
        window: String,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict { service, name, id } => match name.strip_suffix(NEXT_SUFFIX) {
                Some(instance) => write!(
                    f,
                    "conflict: container {name} ({}) exists and was not created by tend for this scope; {service} instance {instance} is not replaced (start-first needs that name), it keeps running, and the container is left untouched",
                    short_id(id)
                ),
                None => write!(
                    f,
                    "conflict: container {name} ({}) exists and was not created by tend for this scope; {service} instance not created, the container is left untouched",
                    short_id(id)
                ),
            },
            Self::Held { name, unclean_boot: true, .. } => write!(
                f,
                "held: {name} was not started after an unclean boot; it stays down until `tend release {name}`"
            ),
            Self::Held { name, exit_code, .. } => match exit_code {
                Some(c) => write!(f, "held: {name} exited with code {c}; it stays down until `tend release {name}`"),
                None => write!(f, "held: {name} stopped unexpectedly; it stays down until `tend release {name}`"),
            },
            Self::Maintenance { target, window, .. } => {
                write!(f, "maintenance: {target} ({window}); left alone until the lock is released")
            }
            Self::BackingOff { name, attempt, until_ms, .. } => {
                write!(
                    f,
                    "backing off: {name} restarts (restart {attempt}) at {}",
                    crate::support::time::format_ms(*until_ms)
                )
            }
            Self::Exited { name, code, policy, .. } => match code {
                Some(c) => write!(f, "exited: {name} exited with code {c}; restart policy {policy} leaves it stopped"),
                None => write!(f, "exited: {name} is stopped; restart policy {policy} leaves it stopped"),
            },
            Self::ImageNotPresent { service, image } => {
                write!(f, "image missing: {image} for {service} is not on this host and pullPolicy is never")
            }
            Self::Blocked { service, by } => {
                write!(f, "blocked: {service} waits for {by}, which cannot become ready now")
            }
            Self::UnitConflict { unit, scope: None } => {
                write!(f, "conflict: unit file {unit} exists and was not written by tend; it is left untouched")
            }
            Self::UnitConflict { unit, scope: Some(other) } => {
                write!(f, "conflict: unit file {unit} belongs to tend scope {other}; it is left untouched")
            }
            Self::Drained { since_ms, user, reason } => {
                write!(f, "drained since {} by {user}", crate::support::time::format_ms(*since_ms))?;
                if let Some(reason) = reason {
                    write!(f, ": {reason}")?;
                }
                f.write_str("; services stay stopped and nothing starts until `tend undrain`")
            }
            Self::Unrecognized { name, id } => {
                write!(f, "unrecognized: {name} ({}) has tend labels but no valid instance; left alone", short_id(id))
            }
            Self::ClusterTurn { service, at_once } => write!(
                f,
                "waiting for the cluster: {service} is replaced here when this node's turn comes ({at_once} node(s) at a time, each awaited ready)"
            ),
            Self::UpdateWindow { service, next_open_ms: Some(at), window } => {
                write!(
                    f,
                    "waiting for update window: {service} changes at {} ({window})",
                    crate::support::time::format_ms(*at)
                )
            }
            Self::UpdateWindow { service, next_open_ms: None, window } => write!(
                f,
                "waiting for update window: {service} changes wait, and its window ({window}) never opens again; `tend apply --now` makes them"
            ),
        }
    }
}

/// A plan: steps to run (in dependency order) and notes on what is left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The steps.
    pub steps: Vec<Step>,
    /// What the plan does not act on.
    pub notes: Vec<Note>,
    /// Part of the specs that cannot be planned here (systemd services where systemd is not
    /// PID 1), said by the caller that knows; the plan then does not make the host match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchecked: Option<String>,
}

impl Plan {
    /// Whether applying the plan would change anything.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether every step is an image pull (the first phase of apply).
    pub fn pulls(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| matches!(s.action, Action::PullImage { .. }))
    }

    /// The plan without the steps of `owners` (see [`Action::owner`]) and without every step
    /// that waits, directly or not, for one of those.
    pub fn without_owners(&self, owners: &BTreeSet<String>) -> Plan {
        let mut dropped: BTreeSet<usize> = BTreeSet::new();
        let mut steps = Vec::new();
        // Steps only wait for steps before them, so one walk in order finds every dependent.
        for step in &self.steps {
            let mine = step.action.owner().is_some_and(|o| owners.contains(&o));
            if mine || step.after.iter().any(|a| dropped.contains(a)) {
                dropped.insert(step.id);
            } else {
                steps.push(step.clone());
            }
        }
        Plan { steps, notes: self.notes.clone(), unchecked: self.unchecked.clone() }
    }
}

impl Action {
    /// The object a step acts for: a service or Timer name, `image/REF` for a pull; `None`
    /// for shared objects (networks, volumes, systemd's reload, enablement of several units).
    pub fn owner(&self) -> Option<String> {
        match self {
            Action::PullImage { image } => Some(format!("image/{image}")),
            Action::Create { service, .. }
            | Action::Start { service, .. }
            | Action::Remove { service, .. }
            | Action::Rename { service, .. }
            | Action::Await { service, .. }
            | Action::Hold { service, .. }
            | Action::Stop { service, .. } => Some(service.clone()),
            Action::WriteUnit { owner, .. } => Some(owner.clone()),
            Action::RemoveUnit { unit }
            | Action::StartUnit { unit }
            | Action::RestartUnit { unit }
            | Action::StopUnit { unit } => {
                Some(unit.strip_suffix(".service").or_else(|| unit.strip_suffix(".timer")).unwrap_or(unit).to_string())
            }
            Action::RunJob { job } => Some(job.clone()),
            Action::CreateNetwork { .. }
            | Action::RemoveNetwork { .. }
            | Action::CreateVolume { .. }
            | Action::DaemonReload
            | Action::EnableUnits { .. }
            | Action::DisableUnits { .. } => None,
        }
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// What the specs ask for.
    pub desired: &'a Desired,
    /// What is live.
    pub observed: &'a Observed,
    /// Holds and restart history.
    pub state: &'a State,
    /// The current time (ms since the epoch).
    pub now_ms: u64,
    /// Images pulled earlier in this apply (not pulled again).
    pub pulled: &'a BTreeSet<String>,
    /// How units are rendered; `None` when systemd units are not planned (no systemd here,
    /// or the specs need no unit).
    pub units: Option<&'a crate::reconcile::unit_files::Context<'a>>,
    /// Make changes now even where a service's update window is closed (`tend apply --now`).
    pub ignore_windows: bool,
    /// The host's time zone, in which update windows without a zone are read (as systemd
    /// reads `OnCalendar=`); the caller reads it, so planning stays pure.
    pub zone: &'a tend_specs::calendar::LocalZone,
    /// Placed services whose running instances here wait for this node's turn in the
    /// cluster's rollout, each with the note that says so (`--now` does not lift it).
    pub gated: &'a std::collections::BTreeMap<String, Note>,
}
