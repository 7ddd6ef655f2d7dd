//! tend's own view of live state. Backends convert their engine's types into these, so the
//! planner never sees a Docker or systemd type.

use std::collections::{BTreeMap, BTreeSet};

/// Label: which tend scope owns the object (one per agent; `default` unless set).
pub const LABEL_SCOPE: &str = "tend.scope";
/// Label: the kind of object (`service`, `network`, `volume`).
pub const LABEL_KIND: &str = "tend.kind";
/// Label: the spec name the object belongs to.
pub const LABEL_NAME: &str = "tend.name";
/// Label: the instance number (1-based) of a service's container.
pub const LABEL_INSTANCE: &str = "tend.instance";
/// Label: the template hash the container was created from.
pub const LABEL_HASH: &str = "tend.hash";
/// Label: short per-field hashes (`image=…,env=…`), to name what changed.
pub const LABEL_FIELDS: &str = "tend.fields";
/// Label of a job's container: the run it belongs to.
pub const LABEL_RUN: &str = "tend.run";

/// An image reference the way the engine lists it (`busybox` → `busybox:latest`).
pub fn normalize_image(reference: &str) -> String {
    if reference.contains('@') {
        return reference.to_string();
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') { reference.to_string() } else { format!("{reference}:latest") }
}

/// Suffix of the container started beside the old one in a `start-first` replacement.
pub const NEXT_SUFFIX: &str = "-next";

/// The container name of a service instance.
pub fn instance_name(service: &str, instance: u32) -> String {
    format!("{service}-{instance}")
}

/// Encodes field hashes for the `tend.fields` label.
pub fn encode_fields(fields: &BTreeMap<String, String>) -> String {
    fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Decodes the `tend.fields` label; malformed parts are skipped.
pub fn decode_fields(label: &str) -> BTreeMap<String, String> {
    label.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Run state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being restarted by the engine.
    Restarting,
    /// Exited.
    Exited,
    /// Dead (failed removal or similar).
    Dead,
    /// Being removed.
    Removing,
}

/// Health of a container with a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No health check.
    None,
    /// Still within the checks' first rounds.
    Starting,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// A container tend owns, as observed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Container {
    /// Engine ID.
    pub id: String,
    /// Name (without the leading `/`).
    pub name: String,
    /// The service it belongs to (`tend.name`).
    pub service: String,
    /// Instance number (`tend.instance`); 0 when the label is missing or malformed.
    pub instance: u32,
    /// Template hash (`tend.hash`).
    pub hash: String,
    /// Per-field hashes (`tend.fields`).
    pub fields: BTreeMap<String, String>,
    /// The image ID it runs.
    pub image_id: String,
    /// Run state.
    pub state: RunState,
    /// Health.
    pub health: Health,
    /// Exit code, when exited.
    pub exit_code: Option<i64>,
}

impl Container {
    /// Whether this is the new container of an interrupted or running start-first replacement.
    pub fn is_next(&self) -> bool {
        self.name.ends_with(NEXT_SUFFIX)
    }
}

/// A network, as observed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Network {
    /// Engine ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Whether this scope of tend created it.
    pub owned: bool,
}

/// A snapshot of live state: complete, or not at all (an observation that fails is an
/// error, never a partial snapshot).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Observed {
    /// Containers this scope owns.
    pub containers: Vec<Container>,
    /// Networks (all of them: a name taken by another's network is used, not recreated).
    pub networks: Vec<Network>,
    /// Names of volumes that exist.
    pub volumes: BTreeSet<String>,
    /// Image reference → local image ID, for the references asked about.
    pub images: BTreeMap<String, String>,
    /// Containers not owned by this scope whose names a desired instance would take.
    pub foreign: BTreeMap<String, String>,
    /// Unit files in the unit directory by name, when systemd was observed (`None` when
    /// the specs need no unit, or systemd is not running here).
    pub units: Option<BTreeMap<String, Unit>>,
    /// Targets an operator holds for maintenance (`tend maintain`), by lock key: an
    /// instance (`web-1`), a systemd service (`web.service`), a Timer's job (`nightly.job`).
    pub maintenance: BTreeMap<String, Maintenance>,
}

/// An operator's maintenance window on a target, as its lock file records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Who.
    pub user: String,
    /// Since when (ms since the epoch).
    pub since_ms: u64,
    /// Until when, if the window has an end (`--for`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl std::fmt::Display for Maintenance {
    /// `by USER since TIME: REASON`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "by {} since {}", self.user, crate::support::time::format_ms(self.since_ms))?;
        if let Some(until) = self.until_ms {
            write!(f, " until {}", crate::support::time::format_ms(until))?;
        }
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

/// Whether a unit runs, as systemd says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitActive {
    /// Running (or, for a timer, waiting to elapse).
    Active,
    /// Starting.
    Activating,
    /// Stopping.
    Deactivating,
    /// Stopped.
    Inactive,
    /// Stopped after a failure.
    Failed,
}

/// A unit file in the unit directory, with its live state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unit {
    /// File name (`ims-nginx.service`).
    pub name: String,
    /// The file's content (compared with what tend would write; never logged).
    #[serde(skip)]
    pub content: String,
    /// The `X-Tend-Scope` mark; `None` for a unit tend did not write.
    pub scope: Option<String>,
    /// Run state.
    pub active: UnitActive,
    /// Enabled at boot.
    pub enabled: bool,
    /// Exit status of the main process, when it exited.
    pub exit_status: Option<i32>,
}
