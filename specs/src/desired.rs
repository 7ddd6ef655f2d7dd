//! The checked desired state: what `load` hands the planner. It can only be built by
//! loading and validating specs, so the planner never sees an unvalidated spec.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::backup::{BackupSpec, ExecCommand, SourceKind};
use crate::calendar::CalendarSpec;
use crate::diag::Location;
use crate::hash;
use crate::service::{MountSource, Runtime, ServiceSpec, VolumeMount};
use crate::timer::TimerSpec;

/// Every object the specs declare, validated, keyed by name. Services and Timers share one
/// namespace (each becomes a systemd unit `NAME.service`), so a name is in at most one of
/// those two maps. Backups have a namespace of their own; the units a Backup becomes
/// ([`Backup::unit_name`], [`Backup::drill_unit_name`]) are no Service's or Timer's.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Services by name, of both runtimes (`spec.runtime` tells them apart).
    pub services: BTreeMap<String, Service>,
    /// Timers by name.
    pub timers: BTreeMap<String, Timer>,
    /// Backups by name.
    pub backups: BTreeMap<String, Backup>,
}

impl Desired {
    /// Whether the specs declare nothing.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.timers.is_empty() && self.backups.is_empty()
    }

    /// The services that run as Docker containers.
    pub fn docker_services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().filter(|s| s.spec.runtime == Runtime::Docker)
    }

    /// The services that run as systemd units.
    pub fn systemd_services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().filter(|s| s.spec.runtime == Runtime::Systemd)
    }
}

/// A secret value read from a file. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for handing to the engine only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A resolved environment value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Env {
    /// A literal value.
    Literal(String),
    /// A secret read from `path`.
    Secret {
        /// The file it was read from (shown instead of the value).
        path: PathBuf,
        /// The value.
        value: Secret,
    },
}

/// A validated Service with its identity hashes.
#[derive(Debug, Clone)]
pub struct Service {
    /// The name (a DNS label).
    pub name: String,
    /// `metadata.labels`: for selection; also put on the containers.
    pub metadata_labels: BTreeMap<String, String>,
    /// The spec, with relative bind-mount sources resolved to absolute paths.
    pub spec: ServiceSpec,
    /// Environment with secrets read.
    pub env: BTreeMap<String, Env>,
    /// Where the document starts.
    pub location: Location,
    /// docker: SHA-256 of the container template (every field that shapes a container,
    /// [`TEMPLATE_FIELDS`]); systemd: of everything that goes into the unit file
    /// ([`SYSTEMD_FIELDS`]).
    pub hash: String,
    /// A short hash per field of the hash, to name what changed.
    pub field_hashes: BTreeMap<String, String>,
    /// The instances this node runs of a placed service (`spec.placement`): the slots the
    /// cluster assigned to it. Set by the agent from the placement, never by the specs;
    /// `None` runs every instance `1..=replicas`.
    pub slots: Option<BTreeSet<u32>>,
}

/// A validated Timer with its identity hashes.
#[derive(Debug, Clone)]
pub struct Timer {
    /// The name (a DNS label).
    pub name: String,
    /// `metadata.labels`: for selection.
    pub metadata_labels: BTreeMap<String, String>,
    /// The spec as written, with the job's relative bind-mount sources resolved to absolute
    /// paths. `spec.schedule` is the expression as written.
    pub spec: TimerSpec,
    /// The schedule, parsed, in `spec.timezone` when one is given (so its next elapse can be
    /// computed without looking at the spec again). `None` when there is no schedule.
    pub calendar: Option<CalendarSpec>,
    /// The job's environment with secrets read.
    pub env: BTreeMap<String, Env>,
    /// Where the document starts.
    pub location: Location,
    /// SHA-256 of everything that shapes the timer and its job ([`TIMER_FIELDS`]).
    pub hash: String,
    /// A short hash per field of the hash, to name what changed.
    pub field_hashes: BTreeMap<String, String>,
}

/// A validated Backup with its identity hashes.
#[derive(Debug, Clone)]
pub struct Backup {
    /// The name (a DNS label).
    pub name: String,
    /// `metadata.labels`: for selection.
    pub metadata_labels: BTreeMap<String, String>,
    /// The spec as written (`spec.layout()` gives the layout with its default filled in).
    pub spec: BackupSpec,
    /// `spec.schedule`, parsed. `None` when the Backup runs on demand only.
    pub calendar: Option<CalendarSpec>,
    /// `spec.drill.schedule`, parsed. `None` when there is no drill.
    pub drill_calendar: Option<CalendarSpec>,
    /// The `${var}` placeholders of `spec.restore.exec.command`: `tend restore` needs a
    /// value for each (from `--set var=value` or `spec.restore.vars`).
    pub restore_vars: BTreeSet<String>,
    /// Where the document starts.
    pub location: Location,
    /// SHA-256 of everything that shapes an archive ([`BACKUP_FIELDS`]); written into each
    /// archive's manifest.
    pub hash: String,
    /// A short hash per field of the hash, to name what changed.
    pub field_hashes: BTreeMap<String, String>,
}

impl Backup {
    /// The systemd unit a Backup runs as (`backup-NAME.service`, and `backup-NAME.timer`
    /// when it has a schedule), without the suffix.
    pub fn unit_name(&self) -> String {
        backup_unit_name(&self.name)
    }

    /// The unit its restore drill runs as, without the suffix.
    pub fn drill_unit_name(&self) -> String {
        drill_unit_name(&self.name)
    }

    /// The variables of `restore.exec` that have no default in `restore.vars`: `tend
    /// restore` needs `--set` for each.
    pub fn restore_vars_without_default(&self) -> BTreeSet<&str> {
        let defaults = self.spec.restore.as_ref().map(|r| &r.vars);
        self.restore_vars.iter().map(String::as_str).filter(|v| defaults.is_none_or(|d| !d.contains_key(*v))).collect()
    }
}

/// The unit name of the Backup `name`, without the suffix.
pub fn backup_unit_name(name: &str) -> String {
    format!("backup-{name}")
}

/// The unit name of the restore drill of the Backup `name`, without the suffix.
pub fn drill_unit_name(name: &str) -> String {
    format!("backup-{name}-drill")
}

/// Names of the fields that make up a container. A change to any of them recreates the
/// instances; every other field (replicas, rollout, restart, dependsOn, pullPolicy) is
/// applied without touching running containers.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "image",
    "entrypoint",
    "command",
    "env",
    "ports",
    "volumes",
    "networks",
    "labels",
    "user",
    "workingDir",
    "healthcheck",
    "resources",
    "stopSignal",
    "stopTimeout",
];

/// Names of the fields of a systemd service's hash: everything that goes into its unit file.
/// `replicas` (always 1), `hooks` and labels are not in it.
pub const SYSTEMD_FIELDS: &[&str] = &[
    "exec",
    "user",
    "group",
    "workingDir",
    "env",
    "type",
    "pidFile",
    "resources",
    "stopSignal",
    "stopTimeout",
    "restart",
    "dependsOn",
    "enabled",
];

/// Names of the fields of a Timer's hash.
pub const TIMER_FIELDS: &[&str] =
    &["schedule", "persistent", "randomizedDelay", "accuracy", "timezone", "enabled", "concurrency", "timeout", "job"];

/// Fields of a Timer that enter its hash only when they are not their default, so that
/// Timers written before they existed keep their hash (and their units are not rewritten):
/// `runOn` (`leader` changes who runs the job).
pub const TIMER_OPTIONAL_FIELDS: &[&str] = &["runOn"];

/// Names of the fields of a Backup's hash: what shapes an archive. Quiesce, copies,
/// retention, schedule, restore and drill change how and when archives are made and kept,
/// not what is in one.
pub const BACKUP_FIELDS: &[&str] = &["source", "destination", "compression"];

/// The environment as it enters a hash: literals as they are, secrets as a digest keyed by
/// the host's `salt` ([`hash::secret_digest`]).
fn env_json(env: &BTreeMap<String, Env>, salt: &[u8]) -> Value {
    Value::Object(
        env.iter()
            .map(|(k, v)| {
                let v = match v {
                    Env::Literal(s) => json!(s),
                    Env::Secret { value, .. } => {
                        json!({"secret": hash::secret_digest(salt, value.expose().as_bytes())})
                    }
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

/// Mounts as they enter a hash: the mount, and the content digest of a single bound file.
fn volumes_json(volumes: &[VolumeMount], file_digests: &BTreeMap<PathBuf, String>) -> Value {
    volumes
        .iter()
        .map(|m| {
            let content = match &m.source {
                MountSource::Bind(p) => file_digests.get(p).cloned(),
                MountSource::Volume(_) => None,
            };
            json!({"mount": m.to_string(), "content": content})
        })
        .collect()
}

/// The whole hash and the per-field hashes of a table of fields.
fn hashes_of(fields: Vec<(&str, Value)>) -> (String, BTreeMap<String, String>) {
    let field_hashes = fields.iter().map(|(k, v)| (k.to_string(), hash::hash_value(v)[..12].to_string())).collect();
    let whole = Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    (hash::hash_value(&whole), field_hashes)
}

/// Computes the hash and field hashes of a systemd service: every field that goes into its
/// unit file, with defaults filled in (so writing a default changes nothing) and
/// dependencies sorted (their order means nothing to systemd).
pub(crate) fn systemd_hashes(
    spec: &ServiceSpec,
    env: &BTreeMap<String, Env>,
    salt: &[u8],
) -> (String, BTreeMap<String, String>) {
    let to = |v: &dyn erased::Ser| v.json();
    let mut deps: Vec<Value> =
        spec.depends_on.iter().map(|d| json!({"name": d.name, "condition": d.condition})).collect();
    deps.sort_by_key(|d| d["name"].as_str().unwrap_or_default().to_string());
    let fields = vec![
        ("exec", to(&spec.exec)),
        ("user", to(&spec.user)),
        ("group", to(&spec.group)),
        ("workingDir", to(&spec.working_dir)),
        ("env", env_json(env, salt)),
        ("type", to(&spec.unit_type())),
        ("pidFile", to(&spec.pid_file)),
        ("resources", to(&spec.resources)),
        ("stopSignal", to(&spec.stop_signal)),
        ("stopTimeout", to(&spec.stop_timeout)),
        ("restart", to(&spec.restart)),
        ("dependsOn", Value::Array(deps)),
        ("enabled", json!(spec.is_enabled())),
    ];
    debug_assert_eq!(fields.len(), SYSTEMD_FIELDS.len());
    hashes_of(fields)
}

/// Computes the hash and field hashes of a Timer: its schedule and settings and its whole
/// job (secrets as digests, single bound files by content, as for services), and the
/// [`TIMER_OPTIONAL_FIELDS`] it sets to other than their default.
pub(crate) fn timer_hashes(
    spec: &TimerSpec,
    env: &BTreeMap<String, Env>,
    file_digests: &BTreeMap<PathBuf, String>,
    salt: &[u8],
) -> (String, BTreeMap<String, String>) {
    let to = |v: &dyn erased::Ser| v.json();
    let mut job = to(&spec.job);
    if let Value::Object(map) = &mut job {
        map.insert("env".into(), env_json(env, salt));
        map.insert("volumes".into(), volumes_json(&spec.job.volumes, file_digests));
    }
    let mut fields = vec![
        ("schedule", to(&spec.schedule)),
        ("persistent", to(&spec.persistent)),
        ("randomizedDelay", to(&spec.randomized_delay)),
        ("accuracy", to(&spec.accuracy)),
        ("timezone", to(&spec.timezone)),
        ("enabled", to(&spec.enabled)),
        ("concurrency", to(&spec.concurrency)),
        ("timeout", to(&spec.timeout)),
        ("job", job),
    ];
    debug_assert_eq!(fields.len(), TIMER_FIELDS.len());
    if !spec.run_on.is_node() {
        fields.push(("runOn", to(&spec.run_on)));
    }
    hashes_of(fields)
}

/// Computes the hash and field hashes of a Backup: its source (the paths, or where the
/// command runs and its argv), its destination with the layout's default filled in, and its
/// compression with defaults filled in (so writing a default changes nothing).
pub(crate) fn backup_hashes(spec: &BackupSpec) -> (String, BTreeMap<String, String>) {
    let to = |v: &dyn erased::Ser| v.json();
    let exec = |e: &ExecCommand| json!({"service": e.service, "runtime": e.runtime, "command": e.command});
    let source = match spec.source_kind() {
        SourceKind::Paths => json!({"paths": spec.paths()}),
        SourceKind::Exec => json!({"exec": spec.source.exec.as_ref().map(exec)}),
    };
    let fields = vec![
        ("source", source),
        ("destination", json!({"dir": spec.destination.dir, "layout": spec.layout()})),
        ("compression", to(&spec.compression)),
    ];
    debug_assert_eq!(fields.len(), BACKUP_FIELDS.len());
    hashes_of(fields)
}

/// Computes the template hash and field hashes of a service. `file_digests` gives the
/// SHA-256 of single files mounted by bind (so editing a mounted config recreates).
pub(crate) fn template_hashes(
    spec: &ServiceSpec,
    metadata_labels: &BTreeMap<String, String>,
    env: &BTreeMap<String, Env>,
    file_digests: &BTreeMap<PathBuf, String>,
    salt: &[u8],
) -> (String, BTreeMap<String, String>) {
    let to = |v: &dyn erased::Ser| v.json();
    let mut labels = metadata_labels.clone();
    labels.extend(spec.labels.clone());
    let fields = vec![
        ("image", to(&spec.image)),
        ("entrypoint", to(&spec.entrypoint)),
        ("command", to(&spec.command)),
        ("env", env_json(env, salt)),
        ("ports", to(&spec.ports)),
        ("volumes", volumes_json(&spec.volumes, file_digests)),
        ("networks", to(&spec.networks)),
        ("labels", to(&labels)),
        ("user", to(&spec.user)),
        ("workingDir", to(&spec.working_dir)),
        ("healthcheck", to(&spec.healthcheck)),
        ("resources", to(&spec.resources)),
        ("stopSignal", to(&spec.stop_signal)),
        ("stopTimeout", to(&spec.stop_timeout)),
    ];
    debug_assert_eq!(fields.len(), TEMPLATE_FIELDS.len());
    hashes_of(fields)
}

mod erased {
    //! A tiny helper so the field table above stays one line a field.
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

/// The environment as a plan shows it: secrets replaced by where they come from.
fn redacted(env: &BTreeMap<String, Env>) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let shown = match v {
                Env::Literal(s) => s.clone(),
                Env::Secret { path, .. } => format!("<secret from {}>", path.display()),
            };
            (k.clone(), shown)
        })
        .collect()
}

impl Timer {
    /// The job's environment as the plan shows it: secrets replaced by where they come from.
    pub fn env_redacted(&self) -> BTreeMap<String, String> {
        redacted(&self.env)
    }
}

impl Service {
    /// The instances this node runs: the slots assigned to it when the service is placed,
    /// else `1..=replicas`; ascending.
    pub fn instances(&self) -> Vec<u32> {
        match &self.slots {
            Some(slots) => slots.iter().copied().filter(|i| (1..=self.spec.replicas).contains(i)).collect(),
            None => (1..=self.spec.replicas).collect(),
        }
    }

    /// Whether this node runs instance `i`.
    pub fn runs_instance(&self, i: u32) -> bool {
        (1..=self.spec.replicas).contains(&i) && self.slots.as_ref().is_none_or(|s| s.contains(&i))
    }

    /// The environment as the plan shows it: secrets replaced by where they come from.
    pub fn env_redacted(&self) -> BTreeMap<String, String> {
        redacted(&self.env)
    }

    /// All labels the containers carry besides tend's own.
    pub fn container_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.metadata_labels.clone();
        labels.extend(self.spec.labels.clone());
        labels
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::load::{LoadOptions, load_path, load_path_with};

    /// A docker service and a systemd service with the same secret, and a Timer whose job
    /// has it, in `dir`.
    fn specs_with_a_secret(dir: &Path) {
        std::fs::write(dir.join("pw"), "hunter2\n").expect("secret");
        let doc = |name: &str, body: &str| {
            format!("---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{body}")
        };
        let text = [
            doc("web", "  image: img:1\n  env: {PW: {fromFile: pw}, A: b}\n"),
            doc("daemon", "  runtime: systemd\n  exec: [/bin/sleep, '1']\n  env: {PW: {fromFile: pw}}\n"),
            "---\napiVersion: tend/v1\nkind: Timer\nmetadata: {name: job}\nspec:\n  schedule: daily\n  job: {runtime: host, exec: [/bin/true], env: {PW: {fromFile: pw}}}\n".to_string(),
        ]
        .concat();
        std::fs::write(dir.join("specs.yaml"), text).expect("specs");
    }

    #[test]
    fn the_hosts_salt_changes_the_hashes_of_objects_with_secrets_and_only_their_env() {
        let dir = tempfile::tempdir().expect("tmp");
        specs_with_a_secret(dir.path());
        let load = |salt: &[u8]| {
            load_path_with(dir.path(), &LoadOptions { secret_salt: salt }).unwrap_or_else(|d| panic!("{d:?}"))
        };
        let (a, b, none) = (load(&[1; 32]), load(&[2; 32]), load(&[]));
        // Pinned: the same salt always gives the same hash (containers keep theirs).
        assert_eq!(a.services["web"].hash, "3548942dc1e9946fde6438267d1600e3b41c32a053eeb3caf3018ba541f34a8e");
        for name in ["web", "daemon"] {
            let (x, y, z) = (&a.services[name], &b.services[name], &none.services[name]);
            assert_ne!(x.hash, y.hash, "{name}");
            assert_ne!(x.hash, z.hash, "{name}");
            let changed: Vec<&String> =
                x.field_hashes.keys().filter(|k| x.field_hashes[*k] != y.field_hashes[*k]).collect();
            assert_eq!(changed, ["env"], "{name}");
        }
        assert_ne!(a.timers["job"].hash, b.timers["job"].hash);
        // Without options: unsalted, as before host salts.
        let plain = load_path(dir.path()).unwrap_or_else(|d| panic!("{d:?}"));
        assert_eq!(plain.services["web"].hash, none.services["web"].hash);
    }
}
