//! `tend status`: what runs, against what the specs ask for. Built from one observation
//! and the plan made from it, by the stand-alone command and by the agent alike (the agent
//! adds its own state: passes, the spec set in use, rejected sets).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tend_specs::Desired;

use crate::reconcile::model::{Health, Observed, instance_name};
use crate::reconcile::plan::{Note, Plan};
use crate::reconcile::state::State;

/// The agent's part of `tend status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The agent's process id.
    pub pid: u32,
    /// When the agent started (ms since the epoch).
    pub started_ms: u64,
    /// Where specs come from: a directory, or a git URL (credentials redacted) and ref.
    pub source: String,
    /// The spec set in use: its directory.
    pub specs: String,
    /// The commit of the spec set in use (git sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Passes run since the agent started.
    pub passes: u64,
    /// When the last pass ended (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_ms: Option<u64>,
    /// How long the last pass took (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_duration_ms: Option<u64>,
    /// What the last pass did: `converged`, `applied N step(s)`, `N step(s) failed`, or the
    /// error that stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// The errors of the newest spec set when it was rejected (the last good set stays in
    /// use), each `file:line:column: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spec_errors: Vec<String>,
    /// The commit of the rejected set (git sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_commit: Option<String>,
    /// Why the newest spec set is not applied when it would remove too much at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass_removal: Option<String>,
    /// Objects waiting after repeated failures: name → when the next attempt is due (ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backoff: BTreeMap<String, u64>,
    /// Services of the set whose last pass left them with a note or a failed step (held,
    /// backing off, conflicting, failing): the rest are ok.
    #[serde(default)]
    pub troubled: Vec<String>,
    /// Instances held (for triage, or after an unclean boot), as of the last pass.
    #[serde(default)]
    pub held: usize,
    /// When the next update window opens for changes waiting for it (ms since the epoch):
    /// the agent passes then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window_ms: Option<u64>,
    /// Services held after an unclean boot, when this boot was one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unclean_boot: bool,
    /// The node was drained (`tend drain`) as of the last pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// Engines the agent cannot use now, by name (`docker`, `systemd`); absent while they
    /// answer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engines: BTreeMap<String, EngineProblem>,
    /// The cluster this node is in (absent outside a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSummary>,
}

/// A node's cluster in `tend status`: which, who leads, and whether this node is connected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSummary {
    /// The cluster's name.
    pub name: String,
    /// This node's name in it.
    pub node: String,
    /// The leader's node name, as last seen (absent before one was seen).
    #[serde(default)]
    pub leader: Option<String>,
    /// This node leads.
    pub is_leader: bool,
    /// This node's lease is alive and etcd answers. While not, the node keeps its services
    /// and its last slots running, and plans nothing that needs the cluster.
    pub connected: bool,
    /// Why it is not connected (the last failure), when it is not.
    #[serde(default)]
    pub error: Option<String>,
}

/// An engine the agent cannot use now. Passes fail while it is `unresponsive` (nothing is
/// planned from what could not be observed) and are retried until it answers again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineProblem {
    /// `unresponsive` (reached, but no answer in time) or `unavailable` (not reachable).
    pub state: String,
    /// The last failed call, with its causes (`listing containers: Docker did not answer
    /// within 30s`).
    pub error: String,
    /// Since when it is in this state (ms since the epoch).
    pub since_ms: u64,
}

/// One instance in `tend status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Container name.
    pub name: String,
    /// Run state, or `missing`.
    pub state: String,
    /// Health.
    pub health: Option<Health>,
    /// Exit code when exited.
    pub exit_code: Option<i64>,
    /// Whether it runs the current spec.
    pub up_to_date: bool,
    /// Held for triage.
    pub held: bool,
    /// An operator's maintenance window on it (`tend maintain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<crate::reconcile::model::Maintenance>,
}

/// One service in `tend status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// Desired replicas (0 for a service whose spec is gone).
    pub replicas: u32,
    /// Instances seen or expected.
    pub instances: Vec<InstanceStatus>,
}

/// One systemd unit in `tend status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitStatus {
    /// The unit file name.
    pub unit: String,
    /// `active`, `inactive`, `failed`, … or `missing`.
    pub state: String,
    /// Enabled at boot.
    pub enabled: bool,
    /// Held for triage.
    pub held: bool,
    /// An operator's maintenance window on it (`tend maintain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<crate::reconcile::model::Maintenance>,
}

/// The whole `tend status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// systemd units of systemd services and Timers (empty where systemd is not observed).
    pub units: Vec<UnitStatus>,
    /// Timers: schedule, next elapse, last run and its result.
    pub timers: Vec<crate::jobs::TimerEntry>,
    /// What of the specs could not be checked (an engine that is not there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchecked: Option<String>,
    /// Steps an apply would run now.
    pub pending_steps: usize,
    /// Conflicts, holds, backoffs and other notes.
    pub notes: Vec<Note>,
    /// The node's drain (`tend drain`), when it is drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<crate::reconcile::state::Drain>,
    /// Backups: last success, missed schedules, shrinking archives, leftovers, free space.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<crate::backup::health::Health>,
    /// The running agent's own state (absent from a stand-alone `tend status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
}

/// The status of the host against `desired`, from one observation and the plan made from it.
pub fn build(desired: &Desired, observed: &Observed, st: &State, plan: &Plan) -> Status {
    let mut by_service: BTreeMap<&str, Vec<&crate::reconcile::model::Container>> = BTreeMap::new();
    for c in &observed.containers {
        by_service.entry(c.service.as_str()).or_default().push(c);
    }
    let mut services = Vec::new();
    let mut names: Vec<&str> = desired.docker_services().map(|s| s.name.as_str()).collect();
    names.extend(by_service.keys().filter(|k| !desired.services.contains_key(**k)));
    names.sort_unstable();
    names.dedup();
    for name in names {
        let spec = desired.services.get(name);
        let replicas = spec.map_or(0, |s| s.spec.replicas);
        let mut instances = Vec::new();
        let live = by_service.get(name).cloned().unwrap_or_default();
        for c in &live {
            instances.push(InstanceStatus {
                name: c.name.clone(),
                state: format!("{:?}", c.state).to_lowercase(),
                health: (c.health != Health::None).then_some(c.health),
                exit_code: c.exit_code,
                up_to_date: spec.is_some_and(|s| s.hash == c.hash),
                held: st.holds.contains_key(&c.name),
                maintenance: observed.maintenance.get(&c.name).cloned(),
            });
        }
        for i in spec.map(|s| s.instances()).unwrap_or_default() {
            let n = instance_name(name, i);
            if !live.iter().any(|c| c.name == n) {
                instances.push(InstanceStatus {
                    name: n.clone(),
                    state: "missing".into(),
                    health: None,
                    exit_code: None,
                    up_to_date: false,
                    held: st.holds.contains_key(&n),
                    maintenance: observed.maintenance.get(&n).cloned(),
                });
            }
        }
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        services.push(ServiceStatus { name: name.to_string(), replicas, instances });
    }
    let mut units = Vec::new();
    if let Some(live) = &observed.units {
        let mut names: Vec<String> = desired.systemd_services().map(|s| format!("{}.service", s.name)).collect();
        for t in desired.timers.values() {
            if t.spec.schedule.is_some() {
                names.push(format!("{}.timer", t.name));
            }
        }
        names.sort();
        for name in names {
            let u = live.get(&name);
            units.push(UnitStatus {
                state: u.map_or("missing".into(), |u| format!("{:?}", u.active).to_lowercase()),
                enabled: u.is_some_and(|u| u.enabled),
                held: st.holds.contains_key(&name),
                maintenance: observed
                    .maintenance
                    .get(&crate::maintain::unit_key(&name).unwrap_or_default())
                    .or_else(|| observed.maintenance.get(&name))
                    .cloned(),
                unit: name,
            });
        }
    }
    Status {
        services,
        units,
        timers: Vec::new(),
        unchecked: None,
        pending_steps: plan.steps.len(),
        notes: plan.notes.clone(),
        drain: st.drain.clone(),
        agent: None,
        backups: Vec::new(),
    }
}
