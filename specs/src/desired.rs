//! The checked desired state: what `load` hands the planner. It can only be built by
//! loading and validating specs, so the planner never sees an unvalidated spec.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::diag::Location;
use crate::hash;
use crate::service::{MountSource, ServiceSpec};

/// Every object the specs declare, validated, keyed by name.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Services by name.
    pub services: BTreeMap<String, Service>,
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
    /// SHA-256 of the container template (every field that shapes a container).
    pub hash: String,
    /// A short hash per template field, to name what changed.
    pub field_hashes: BTreeMap<String, String>,
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

/// Computes the template hash and field hashes of a service. `file_digests` gives the
/// SHA-256 of single files mounted by bind (so editing a mounted config recreates).
pub(crate) fn template_hashes(
    spec: &ServiceSpec,
    metadata_labels: &BTreeMap<String, String>,
    env: &BTreeMap<String, Env>,
    file_digests: &BTreeMap<PathBuf, String>,
) -> (String, BTreeMap<String, String>) {
    let to = |v: &dyn erased::Ser| v.json();
    let env_json: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Env::Literal(s) => json!(s),
                Env::Secret { value, .. } => json!({"secret": hash::secret_digest(value.expose().as_bytes())}),
            };
            (k.clone(), v)
        })
        .collect();
    let volumes: Vec<Value> = spec
        .volumes
        .iter()
        .map(|m| {
            let content = match &m.source {
                MountSource::Bind(p) => file_digests.get(p).cloned(),
                MountSource::Volume(_) => None,
            };
            json!({"mount": m.to_string(), "content": content})
        })
        .collect();
    let mut labels = metadata_labels.clone();
    labels.extend(spec.labels.clone());
    let fields: [(&str, Value); 14] = [
        ("image", to(&spec.image)),
        ("entrypoint", to(&spec.entrypoint)),
        ("command", to(&spec.command)),
        ("env", Value::Object(env_json)),
        ("ports", to(&spec.ports)),
        ("volumes", Value::Array(volumes)),
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
    let field_hashes = fields.iter().map(|(k, v)| (k.to_string(), hash::hash_value(v)[..12].to_string())).collect();
    let whole = Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    (hash::hash_value(&whole), field_hashes)
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

impl Service {
    /// The environment as the plan shows it: secrets replaced by where they come from.
    pub fn env_redacted(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .map(|(k, v)| {
                let shown = match v {
                    Env::Literal(s) => s.clone(),
                    Env::Secret { path, .. } => format!("<secret from {}>", path.display()),
                };
                (k.clone(), shown)
            })
            .collect()
    }

    /// All labels the containers carry besides tend's own.
    pub fn container_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.metadata_labels.clone();
        labels.extend(self.spec.labels.clone());
        labels
    }
}
