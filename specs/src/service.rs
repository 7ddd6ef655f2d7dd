//! `kind: Service`: a long-running workload. This module holds the types as operators
//! write them, plus the parsing of the compact port and volume strings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::shown_cut;
use crate::quantity::{ByteSize, Duration};

/// Where a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Runtime {
    /// A Docker container per instance.
    #[default]
    Docker,
    /// A systemd unit `NAME.service` on the host (one process, run from `exec`).
    Systemd,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Docker => "docker",
            Self::Systemd => "systemd",
        })
    }
}

/// How systemd tells that a service has finished starting (the unit's `Type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServiceType {
    /// Started as soon as the process is forked (the default).
    #[default]
    Simple,
    /// Started when the process sends `READY=1` over `sd_notify`.
    Notify,
    /// A classic daemon: started when the first process exits; needs `pidFile`.
    Forking,
    /// Started once the program has been executed (a missing binary fails the start).
    Exec,
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Simple => "simple",
            Self::Notify => "notify",
            Self::Forking => "forking",
            Self::Exec => "exec",
        })
    }
}

/// Jobs run around a service's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// A Timer whose job runs (and must succeed) before a new version of the service starts,
    /// e.g. database migrations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_start: Option<String>,
}

/// When to pull the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PullPolicy {
    /// Pull only when the image is not on the host.
    #[default]
    IfNotPresent,
    /// Pull on every apply; a new image recreates the instances.
    Always,
    /// Never pull: the image must be on the host.
    Never,
}

/// The spec of a `kind: Service`. One struct holds the fields of both runtimes, so that
/// decoding can report unknown fields; validation rejects a field of the other runtime.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Where the service runs: `docker` (default) or `systemd`.
    #[serde(default)]
    pub runtime: Runtime,
    /// The program of a systemd service and its arguments (argv, no shell); the program is
    /// an absolute path. At most 1024 arguments of 64 KiB each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub exec: Option<Vec<String>>,
    /// The image reference (docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When to pull the image: `ifNotPresent` (default), `always`, `never`.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Overrides the image's entrypoint (at most 1024 arguments of 64 KiB each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub entrypoint: Option<Vec<String>>,
    /// Overrides the image's command (argv, no shell; at most 1024 arguments of 64 KiB each, no NUL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub command: Option<Vec<String>>,
    /// Environment variables: a literal value, or `{fromFile: PATH}` for secrets. At most 1024;
    /// names are letters, digits and `_`, not starting with a digit (at most 255 bytes);
    /// values at most 64 KiB, without NUL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = crate::bounds::ENV.max))]
    pub env: BTreeMap<String, EnvValue>,
    /// Published ports: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]` (at most 1024).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::PORTS.max))]
    pub ports: Vec<PortMapping>,
    /// Mounts: `SOURCE:TARGET[:ro|rw]`. A SOURCE starting with `/`, `./` or `../` is a bind
    /// mount (relative to the spec file's directory); otherwise it names a volume. TARGET is an
    /// absolute path written normalised, not `/`. At most 256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::VOLUMES.max))]
    pub volumes: Vec<VolumeMount>,
    /// Networks to join; tend creates the ones that do not exist (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::NETWORKS.max))]
    pub networks: Vec<String>,
    /// Labels put on the containers: at most 128, keys printable without spaces or `=` (at
    /// most 255 bytes), values without NUL (at most 4096 bytes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = crate::bounds::LABELS.max))]
    pub labels: BTreeMap<String, String>,
    /// The user the process runs as. docker: `NAME` or `UID`, optionally `:GROUP` or `:GID`;
    /// systemd: a user name or uid (default root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The group the process of a systemd service runs as (default: the user's group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The working directory: an absolute path inside the container, or on the host for
    /// systemd (at most 4095 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::PATH.max))]
    pub working_dir: Option<String>,
    /// systemd: how systemd tells the service has started: `simple` (default), `notify`,
    /// `forking` (needs `pidFile`), `exec`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    /// systemd, `type: forking` only: the absolute path of the file the daemon writes its PID
    /// to (at most 4095 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::PATH.max))]
    pub pid_file: Option<String>,
    /// systemd: whether the unit is started at boot (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How to tell that an instance is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    /// Memory and CPU limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The signal that stops the process (default: the image's, usually SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long to wait after the stop signal before killing (default 10s; at most 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<Duration>,
    /// Services that must be up (or healthy, or completed) before this one starts (at most 256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::DEPENDS_ON.max))]
    pub depends_on: Vec<Dependency>,
    /// What to do when an instance exits.
    #[serde(default)]
    pub restart: Restart,
    /// How many instances to run (default 1; at most 1000, and the docker services of a set at
    /// most 2000 together).
    #[serde(default = "one")]
    #[schemars(range(max = crate::bounds::REPLICAS.max))]
    pub replicas: u32,
    /// How instances are replaced and scaled.
    #[serde(default)]
    pub rollout: Rollout,
    /// Docker only: run the instances on the cluster's members of a role rather than all on
    /// this node, e.g. `{role: judicator}`. The cluster's leader assigns each instance (a
    /// slot) to a member. Not part of the hash: a changed placement moves instances, it does
    /// not recreate them where they stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Jobs run around the service's lifecycle (`beforeStart`: a Timer's job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    /// After a boot that was not clean (the host went down while the agent ran), do not
    /// start this service until `tend release` (a crash may have corrupted its data, and an
    /// automatic start would get in the way of triage). A systemd service with this set is
    /// not enabled at boot: the agent starts it once it knows the boot was clean.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_after_unclean_boot: bool,
    /// When changes that stop or recreate running instances may be made, e.g.
    /// `{schedule: "Sun 02:00", duration: 2h}`; outside it they wait (crash restarts never do).
    /// Not part of the hash: changing the window recreates nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_window: Option<UpdateWindow>,
}

impl ServiceSpec {
    /// The unit type of a systemd service, `simple` when not given.
    pub fn unit_type(&self) -> ServiceType {
        self.service_type.unwrap_or_default()
    }

    /// Whether a systemd service is started at boot (default true).
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// The Timer whose job runs before a new version starts, if any.
    pub fn before_start(&self) -> Option<&str> {
        self.hooks.as_ref().and_then(|h| h.before_start.as_deref())
    }
}

fn one() -> u32 {
    1
}

/// An environment value: a literal, or a secret read from a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvValue {
    /// A literal value (numbers and booleans are written as text).
    Literal(String),
    /// The content of a file (trailing newline removed). Never logged or shown.
    FromFile {
        /// The file to read, absolute or relative to the spec file's directory.
        #[serde(rename = "fromFile")]
        from_file: PathBuf,
    },
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number, a boolean or {fromFile: PATH}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Literal(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Literal(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Literal(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Literal(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Literal(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<EnvValue, A::Error> {
                let mut from_file: Option<PathBuf> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "fromFile" {
                        from_file = Some(map.next_value()?);
                    } else {
                        return Err(serde::de::Error::custom(format!(
                            "unknown field `{key}` in an environment value, expected `fromFile`"
                        )));
                    }
                }
                from_file
                    .map(|from_file| EnvValue::FromFile { from_file })
                    .ok_or_else(|| serde::de::Error::custom("missing field `fromFile`"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    /// The host address to bind (default: all addresses).
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Why a port or volume string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// A malformed port mapping.
    #[error(
        "invalid port `{text}`: {why}; expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp], e.g. 127.0.0.1:8000:8000/tcp"
    )]
    Port {
        /// The text given (control characters escaped, cut after 200 characters).
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A malformed volume mount.
    #[error(
        "invalid volume `{text}`: {why}; expected SOURCE:TARGET[:ro|rw], e.g. ./conf/app.ini:/etc/app.ini:ro or data:/var/lib/data"
    )]
    Volume {
        /// The text given (control characters escaped, cut after 200 characters).
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl FromStr for PortMapping {
    type Err = MappingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| MappingError::Port { text: shown_cut(text, 200), why };
        let (addr, protocol) = match text.rsplit_once('/') {
            Some((a, "tcp")) => (a, Protocol::Tcp),
            Some((a, "udp")) => (a, Protocol::Udp),
            Some(_) => return Err(err("the protocol must be tcp or udp")),
            None => (text, Protocol::Tcp),
        };
        let port = |s: &str| -> Result<u16, MappingError> {
            match s.parse::<u16>() {
                Ok(0) | Err(_) => Err(err("a port is a number from 1 to 65535")),
                Ok(p) => Ok(p),
            }
        };
        // An IPv6 host address is written in brackets: [::1]:8000:8000.
        let (host_ip, rest) = if let Some(stripped) = addr.strip_prefix('[') {
            let (ip, rest) = stripped.split_once("]:").ok_or_else(|| err("unclosed `[` around an IPv6 address"))?;
            (Some(ip.parse::<IpAddr>().map_err(|_| err("the host address is not an IP address"))?), rest)
        } else {
            let parts: Vec<&str> = addr.split(':').collect();
            match parts.len() {
                2 => (None, addr),
                3 => {
                    let ip = parts[0].parse::<IpAddr>().map_err(|_| err("the host address is not an IP address"))?;
                    (Some(ip), &addr[parts[0].len() + 1..])
                }
                1 => return Err(err("both a host port and a container port are needed")),
                _ => return Err(err("too many `:`")),
            }
        };
        let (host, container) =
            rest.split_once(':').ok_or_else(|| err("both a host port and a container port are needed"))?;
        Ok(Self { host_ip, host_port: port(host)?, container_port: port(container)?, protocol })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}:{}/{}", self.host_port, self.container_port, self.protocol)
    }
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeMount {
    /// What is mounted.
    pub source: MountSource,
    /// Where, inside the container (absolute).
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The source of a mount.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MountSource {
    /// A host path. Relative paths are resolved against the spec file's directory when loading.
    Bind(PathBuf),
    /// A named Docker volume; tend creates it when missing and never deletes it.
    Volume(String),
}

impl FromStr for VolumeMount {
    type Err = MappingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| MappingError::Volume { text: shown_cut(text, 200), why };
        let parts: Vec<&str> = text.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [s, t] => (*s, *t, false),
            [s, t, "ro"] => (*s, *t, true),
            [s, t, "rw"] => (*s, *t, false),
            [_, _, _] => return Err(err("the mode must be ro or rw")),
            [_] => return Err(err("both a source and a target are needed")),
            _ => return Err(err("too many `:`")),
        };
        if source.is_empty() || target.is_empty() {
            return Err(err("both a source and a target are needed"));
        }
        if text.contains(char::is_control) {
            return Err(err("a mount cannot contain control characters"));
        }
        if source.len().max(target.len()) > crate::bounds::PATH.max {
            return Err(err("a path is at most 4095 bytes (Linux's PATH_MAX)"));
        }
        if !target.starts_with('/') {
            return Err(err("the target must be an absolute path inside the container"));
        }
        if target.bytes().all(|b| b == b'/') {
            return Err(err("the target cannot be `/`, the container's root"));
        }
        if !is_normalised_target(target) {
            return Err(err(
                "the target must be a normalised absolute path (no `.` or `..` components, no `//`, no `/` at the end)",
            ));
        }
        let source =
            if source.starts_with('/') || source.starts_with("./") || source.starts_with("../") || source == "." {
                MountSource::Bind(PathBuf::from(source))
            } else {
                MountSource::Volume(source.to_string())
            };
        Ok(Self { source, target: target.to_string(), read_only })
    }
}

/// Whether an absolute `target` is written normalised: every component after the first
/// `/` is a name, not empty (`//`, a `/` at the end), `.` or `..`. Docker would resolve
/// `/data/../../etc` to `/etc` inside the container, and `/data/` and `/data` would be two
/// targets to tend but one to Docker.
fn is_normalised_target(target: &str) -> bool {
    target.strip_prefix('/').is_some_and(|rest| rest.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

impl fmt::Display for VolumeMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            MountSource::Bind(p) => write!(f, "{}", p.display())?,
            MountSource::Volume(v) => f.write_str(v)?,
        }
        write!(f, ":{}", self.target)?;
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

macro_rules! string_form {
    ($ty:ty, $name:literal, $pattern:literal, $desc:literal) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "pattern": $pattern, "description": $desc})
            }
        }
    };
}

string_form!(
    PortMapping,
    "PortMapping",
    "^(([0-9.]+|\\[[0-9a-fA-F:.]+\\]):)?[0-9]+:[0-9]+(/(tcp|udp))?$",
    "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp], e.g. 127.0.0.1:8000:8000/tcp"
);
string_form!(
    VolumeMount,
    "VolumeMount",
    "^[^:]+:/[^:]*(:(ro|rw))?$",
    "SOURCE:TARGET[:ro|rw]; a SOURCE starting with /, ./ or ../ is a host path, otherwise a volume name"
);

/// A health check run inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// The command (argv, run without a shell); exit 0 means healthy. At most 1024 arguments
    /// of 64 KiB each, without NUL.
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub command: Vec<String>,
    /// Time between checks (default 30s; more than 0s, at most 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long one check may take (default 30s; more than 0s, at most 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Consecutive failures before the instance is unhealthy (default 3; at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::bounds::HEALTHCHECK_RETRIES.max))]
    pub retries: Option<u32>,
    /// Grace period after start during which failures do not count (at most 1d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory limit, e.g. `512Mi`: at least 6Mi (Docker's smallest), at most 16Ti.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// CPU limit in cores, e.g. `0.5`: at least 0.01, at most 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = crate::bounds::MIN_CPUS, max = crate::bounds::CPUS.max))]
    pub cpus: Option<f64>,
}

/// What a dependency must have reached before the dependent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Condition {
    /// Its instances are running.
    #[default]
    Started,
    /// Its instances pass their health check.
    Healthy,
    /// Its instances ran and exited with status 0.
    Completed,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Started => "started",
            Self::Healthy => "healthy",
            Self::Completed => "completed",
        })
    }
}

/// A dependency on another service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// The service depended on.
    pub name: String,
    /// What it must have reached: `started` (default), `healthy`, `completed`.
    #[serde(default)]
    pub condition: Condition,
    /// How long to wait for the condition before failing (default 2m; at most 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// What happens when an instance exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever it exits.
    #[default]
    Always,
    /// Restart only when it exits with a non-zero status.
    OnFailure,
    /// Never restart.
    Never,
    /// After an exit tend did not cause, keep it down for triage until `tend release`.
    Hold,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
            Self::Hold => "hold",
        })
    }
}

/// Restart policy with exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Restart {
    /// `always` (default), `on-failure`, `never`, `hold`.
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Delay between restarts of a crash-looping instance.
    #[serde(default)]
    pub backoff: Backoff,
}

/// Exponential backoff: the delay doubles after each restart, from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// The first delay (default 1s; more than 0s, at most 1h).
    #[serde(default = "Backoff::default_initial")]
    pub initial: Duration,
    /// The longest delay (default 5m; at most 1d).
    #[serde(default = "Backoff::default_max")]
    pub max: Duration,
}

impl Backoff {
    fn default_initial() -> Duration {
        Duration::from_secs(1)
    }

    fn default_max() -> Duration {
        Duration::from_secs(300)
    }

    /// The delay before restart number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> std::time::Duration {
        let initial = self.initial.get();
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        initial.checked_mul(factor).unwrap_or(self.max.get()).min(self.max.get())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Self::default_initial(), max: Self::default_max() }
    }
}

/// Order of a replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutOrder {
    /// Stop the old instance, then start the new one (default; safe for data volumes).
    #[default]
    StopFirst,
    /// Start the new instance beside the old one, then stop the old one.
    StartFirst,
}

/// How instances are replaced and scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// How many instances may be down at once during a replacement (default 1; 1 to 1000).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = crate::bounds::REPLICAS.max))]
    pub max_unavailable: u32,
    /// Pause between instance starts (default 0s; at most 1h).
    #[serde(default)]
    pub interval: Duration,
    /// Pause between instance stops when scaling down (default 0s; at most 1h).
    #[serde(default)]
    pub scale_down_interval: Duration,
    /// `stop-first` (default) or `start-first`.
    #[serde(default)]
    pub order: RolloutOrder,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            max_unavailable: 1,
            interval: Duration::default(),
            scale_down_interval: Duration::default(),
            order: RolloutOrder::default(),
        }
    }
}

/// Where the instances of a placed service run: on the members of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The role whose members run the instances (`cluster.roles` in their agent
    /// configuration): a DNS label (at most 63 characters).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub role: String,
    /// At most one instance per member (default true): an instance with no member of its
    /// own left stays unplaced, and says so, rather than doubling up.
    #[serde(default = "yes")]
    pub spread: bool,
    /// How many instances may be down at once for maintenance across the cluster (`tend
    /// maintain`, `tend drain`: the disruption budget). Default: a minority,
    /// floor((replicas − 1) / 2), so a quorum of them stays up. 1 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::bounds::REPLICAS.max))]
    pub max_unavailable: Option<u32>,
    /// What a member cut off from etcd does with its instances: `keep` (default: they go on
    /// running) or `stop` (after `lostLeaseGrace`; the fencing for services of which two
    /// copies of one instance would do harm).
    #[serde(default)]
    pub on_lost_lease: OnLostLease,
    /// With `onLostLease: stop`: how long after its lease ran out a member cut off from etcd
    /// keeps the instances running (default 30s; at most 10m). The leader waits as long, and
    /// the instances' `stopTimeout`, before it places them elsewhere.
    #[serde(default = "Placement::default_lost_lease_grace")]
    pub lost_lease_grace: Duration,
}

impl Placement {
    fn default_lost_lease_grace() -> Duration {
        Duration::from_secs(30)
    }

    /// The disruption budget: `maxUnavailable`, or a minority of `replicas`.
    pub fn budget(&self, replicas: u32) -> u32 {
        self.max_unavailable.unwrap_or(replicas.saturating_sub(1) / 2)
    }
}

fn yes() -> bool {
    true
}

/// What a member cut off from etcd does with the instances of a placed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnLostLease {
    /// They go on running (the default): losing etcd never stops local work.
    #[default]
    Keep,
    /// They are stopped `lostLeaseGrace` after the member's lease ran out.
    Stop,
}

impl fmt::Display for OnLostLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Keep => "keep",
            Self::Stop => "stop",
        })
    }
}

/// A recurring window in which changes that stop or recreate a service's running instances
/// are made: it opens at every elapse of `schedule` and stays open for `duration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateWindow {
    /// When the window opens: a systemd calendar expression (`systemd.time(7)`), e.g.
    /// `Sun 02:00`, `Mon..Fri 22:00`, `*-*-* 03:00 Europe/Berlin` (default zone: the host's).
    /// Quote it in YAML when it starts with `*`. At most 1024 bytes.
    #[schemars(length(max = crate::bounds::SCHEDULE.max))]
    pub schedule: String,
    /// How long the window stays open after each opening, e.g. `2h` (more than 0, at most 31d).
    pub duration: Duration,
}

impl fmt::Display for UpdateWindow {
    /// `Sun 02:00 for 2h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} for {}", self.schedule, self.duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_with_and_without_address_and_protocol() {
        let p: PortMapping = "127.0.0.1:8000:80/tcp".parse().expect("port");
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().expect("ip")));
        assert_eq!((p.host_port, p.container_port, p.protocol), (8000, 80, Protocol::Tcp));
        let p: PortMapping = "53:53/udp".parse().expect("port");
        assert_eq!((p.host_ip, p.host_port, p.protocol), (None, 53, Protocol::Udp));
        let p: PortMapping = "[::1]:8080:80".parse().expect("port");
        assert_eq!(p.to_string(), "[::1]:8080:80/tcp");
    }

    #[test]
    fn bad_ports_say_what_is_wrong() {
        for (text, why) in [
            ("8000", "both a host port"),
            ("0:80", "1 to 65535"),
            ("70000:80", "1 to 65535"),
            ("1.2.3:80:80", "not an IP address"),
            ("80:80/sctp", "tcp or udp"),
            ("a:b:c:d", "too many"),
        ] {
            let e = text.parse::<PortMapping>().expect_err(text).to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn volumes_tell_binds_from_named_volumes() {
        let v: VolumeMount = "./conf/a.ini:/etc/a.ini:ro".parse().expect("bind");
        assert_eq!(v.source, MountSource::Bind("./conf/a.ini".into()));
        assert!(v.read_only);
        let v: VolumeMount = "pgdata:/var/lib/postgresql".parse().expect("volume");
        assert_eq!(v.source, MountSource::Volume("pgdata".into()));
        assert!(!v.read_only);
        assert!("data:relative".parse::<VolumeMount>().is_err());
        assert!("data:/x:rx".parse::<VolumeMount>().is_err());
        assert!("/only".parse::<VolumeMount>().is_err());
    }

    #[test]
    fn volume_targets_are_normalised_absolute_paths_other_than_the_root() {
        for good in ["data:/data", "/srv/a:/var/lib/a.b:ro", "x:/a/..b/c.", "x:/.hidden"] {
            assert!(good.parse::<VolumeMount>().is_ok(), "{good}");
        }
        for (bad, why) in [
            ("data:/", "cannot be `/`"),
            ("data://", "cannot be `/`"),
            ("/srv:/data/../../etc", "normalised"),
            ("x:/a/./b", "normalised"),
            ("x:/a//b", "normalised"),
            ("x:/a/", "normalised"),
            ("x:/..", "normalised"),
            ("x:/a\nb", "control characters"),
            ("/s\0rc:/a", "control characters"),
            (&format!("x:/{}", "a".repeat(4095)), "a path is at most 4095 bytes"),
        ] {
            let e = bad.parse::<VolumeMount>().expect_err(bad).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(!e.contains(['\n', '\0']), "control characters are escaped: {e:?}");
            assert!(e.len() < 500, "a long text is cut: {e}");
        }
    }

    #[test]
    fn the_disruption_budget_is_a_minority_unless_set() {
        let p = |max_unavailable| Placement {
            role: "judicator".into(),
            spread: true,
            max_unavailable,
            on_lost_lease: OnLostLease::Keep,
            lost_lease_grace: Duration::from_secs(30),
        };
        let budgets: Vec<u32> = [0, 1, 2, 3, 4, 5, 7].iter().map(|n| p(None).budget(*n)).collect();
        assert_eq!(budgets, [0, 0, 0, 1, 1, 2, 3]);
        assert_eq!(p(Some(2)).budget(1), 2, "as set, even above the replicas");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(10) };
        let secs: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(200).as_secs(), 10);
    }
}
