//! `kind: Timer`: a job run on a schedule (systemd calendar expressions), or only on demand
//! with `tend job run`. This module holds the types as operators write them.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::Duration;
use crate::service::{EnvValue, PullPolicy, VolumeMount};

/// The spec of a `kind: Timer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimerSpec {
    /// When the job runs: a systemd calendar expression (`systemd.time(7)`), e.g.
    /// `*-*-* 01:00:00`, `Mon..Fri 09:00`, `daily`. Required unless `enabled: false`.
    /// Quote it in YAML: a value starting with `*` would be read as an alias. At most 1024
    /// bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::SCHEDULE.max))]
    pub schedule: Option<String>,
    /// Run a missed run at the next boot when the machine was off at its time (default false).
    #[serde(default)]
    pub persistent: bool,
    /// Delay each run by a random time up to this (systemd's `RandomizedDelaySec`; at most 7d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub randomized_delay: Option<Duration>,
    /// How late a run may start so that wake-ups can be batched (systemd's `AccuracySec`,
    /// default 1m; at most 1d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Duration>,
    /// The IANA time zone the schedule is read in, e.g. `Europe/Berlin` (default: the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// When a run is due while the previous one still runs: `forbid` (default: skip the new
    /// run), `replace` (stop the old one), `allow` (run both).
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Which nodes run the job: `node` (default: every node whose specs hold the Timer, as
    /// without a cluster) or `leader` (only the cluster's leader, so the job runs once per
    /// cluster; a node without a `cluster:` block leads its cluster of one).
    #[serde(default, skip_serializing_if = "RunOn::is_node")]
    pub run_on: RunOn,
    /// Whether the schedule is active (default true). A Timer with `enabled: false` is defined
    /// but never scheduled: it runs only with `tend job run` (or as a hook).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A run that takes longer than this is stopped and counts as failed (default: no limit;
    /// more than 0s, at most 7d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What runs.
    pub job: Job,
}

fn yes() -> bool {
    true
}

/// What happens when a run is due while the previous run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Concurrency {
    /// Skip the new run (the default).
    #[default]
    Forbid,
    /// Stop the running one, then start the new one.
    Replace,
    /// Run both.
    Allow,
}

impl fmt::Display for Concurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Forbid => "forbid",
            Self::Replace => "replace",
            Self::Allow => "allow",
        })
    }
}

/// Which nodes of a cluster run a Timer's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RunOn {
    /// Every node whose specs hold the Timer (the default).
    #[default]
    Node,
    /// Only the cluster's leader: once per cluster.
    Leader,
}

impl RunOn {
    /// Whether this is the default, `node` (which is left out of the Timer's hash).
    pub fn is_node(&self) -> bool {
        *self == Self::Node
    }
}

impl fmt::Display for RunOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Node => "node",
            Self::Leader => "leader",
        })
    }
}

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JobRuntime {
    /// A container, created for the run and removed after it.
    Docker,
    /// A process on the host.
    Host,
}

impl fmt::Display for JobRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Docker => "docker",
            Self::Host => "host",
        })
    }
}

/// A job: a container or a host command, run to completion. One struct holds the fields of
/// both runtimes; validation rejects a field of the other runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// Where the job runs: `docker` or `host` (required).
    pub runtime: JobRuntime,
    /// docker: the image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// docker: when to pull the image: `ifNotPresent` (default), `always`, `never`.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// docker: overrides the image's entrypoint (at most 1024 arguments of 64 KiB each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub entrypoint: Option<Vec<String>>,
    /// docker: overrides the image's command (argv, no shell; at most 1024 arguments of 64 KiB
    /// each, no NUL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub command: Option<Vec<String>>,
    /// host: the program (an absolute path) and its arguments (argv, no shell; at most 1024
    /// arguments of 64 KiB each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub exec: Option<Vec<String>>,
    /// Environment variables: a literal value, or `{fromFile: PATH}` for secrets. At most 1024;
    /// names are letters, digits and `_`, not starting with a digit; values at most 64 KiB,
    /// without NUL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = crate::bounds::ENV.max))]
    pub env: BTreeMap<String, EnvValue>,
    /// docker: mounts, `SOURCE:TARGET[:ro|rw]` as for services (at most 256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::VOLUMES.max))]
    pub volumes: Vec<VolumeMount>,
    /// docker: networks to join (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::NETWORKS.max))]
    pub networks: Vec<String>,
    /// The user the job runs as (docker: `NAME` or `UID`, optionally `:GROUP` or `:GID`; host:
    /// a user name or uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// host: the group the job runs as (default: the user's group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The working directory: an absolute path inside the container, or on the host (at most
    /// 4095 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::PATH.max))]
    pub working_dir: Option<String>,
}
