//! The planner: a pure function from (desired, observed, state, now) to a plan of typed
//! steps, each with its reason. No I/O, no clock, no async: `tend plan` prints exactly what
//! `tend apply` would do, and every rule here is table-tested without an engine.
//!
//! [`plan`] runs the phases in order, each in its own module: shared resources
//! (`resources`), then each Docker service in dependency order (`service`, which asks
//! `instances` what each instance needs), then what no spec declares any more
//! (`removals`), then systemd units (`units`). A drained node has a plan of its own
//! (`drain`).

use std::collections::{BTreeMap, BTreeSet};

use tend_specs::service::{Condition, Runtime};
use tend_specs::{Desired, Service};

use crate::reconcile::model::{Container, Observed};
use crate::reconcile::state::State;

pub use crate::reconcile::model::normalize_image;
pub use types::{Action, Input, Note, Plan, Reason, Step};

/// Default time to wait for a dependency's condition.
pub const DEFAULT_DEPENDENCY_TIMEOUT_MS: u64 = 120_000;

struct Builder {
    steps: Vec<Step>,
    notes: Vec<Note>,
}

impl Builder {
    fn push(&mut self, action: Action, reason: Reason, after: Vec<usize>, pause_ms: u64) -> usize {
        let id = self.steps.len() + 1;
        let mut after = after;
        after.sort_unstable();
        after.dedup();
        self.steps.push(Step { id, action, reason, after, pause_ms });
        id
    }
}

/// What every phase reads: the input of the pass and the services whose update window is
/// closed (their running instances are not replaced or removed in this pass).
struct Cx<'a> {
    desired: &'a Desired,
    observed: &'a Observed,
    state: &'a State,
    now_ms: u64,
    windows: BTreeMap<String, Note>,
    gated: &'a BTreeMap<String, Note>,
}

/// Live containers by service and instance.
type Live<'a> = BTreeMap<&'a str, BTreeMap<u32, Vec<&'a Container>>>;

/// Plans the work that makes `observed` match `desired`.
pub fn plan(input: Input<'_>) -> Plan {
    if let Some(drain) = &input.state.drain {
        return drain::plan_drained(input, drain);
    }
    let Input { desired, observed, state, now_ms, pulled, units, ignore_windows, zone, gated } = input;
    let mut b = Builder { steps: Vec::new(), notes: Vec::new() };
    let windows = window::closed(desired, now_ms, ignore_windows, zone);
    let cx = Cx { desired, observed, state, now_ms, windows, gated };
    let live = group_live(&mut b, observed);
    let resources = resources::plan_resources(&mut b, desired, observed, pulled);
    // Services in dependency order, so a dependency's steps exist before its dependents'.
    let mut deps = service::Deps::default();
    let empty = BTreeMap::new();
    for s in topo_order(desired).iter().map(|n| &desired.services[*n]) {
        let instances = live.get(s.name.as_str()).unwrap_or(&empty);
        service::plan_service(&cx, &mut b, s, instances, &resources, &mut deps);
    }
    removals::removed_services(&cx, &mut b, &live);
    removals::unreferenced_networks(&mut b, observed, &resources.needed_networks);
    if let (Some(ctx), Some(live_units)) = (units, observed.units.as_ref()) {
        units::plan_units(&cx, &mut b, live_units, ctx);
    }
    Plan { steps: b.steps, notes: b.notes, unchecked: None }
}

/// Containers by service and instance; unrecognized ones are noted and left alone.
fn group_live<'a>(b: &mut Builder, observed: &'a Observed) -> Live<'a> {
    let mut live: Live<'a> = BTreeMap::new();
    for c in &observed.containers {
        if c.instance == 0 || c.service.is_empty() {
            b.notes.push(Note::Unrecognized { name: c.name.clone(), id: c.id.clone() });
            continue;
        }
        live.entry(c.service.as_str()).or_default().entry(c.instance).or_default().push(c);
    }
    live
}

/// Notes an instance held for triage or under a maintenance lock, and says whether it is:
/// such an instance is left alone.
fn held_or_in_maintenance(cx: &Cx<'_>, b: &mut Builder, service: &str, name: &str) -> bool {
    if let Some(hold) = cx.state.holds.get(name) {
        b.notes.push(Note::Held {
            service: service.to_string(),
            name: name.to_string(),
            exit_code: hold.exit_code,
            since_ms: hold.since_ms,
            unclean_boot: hold.unclean_boot,
        });
        return true;
    }
    if let Some(window) = cx.observed.maintenance.get(name) {
        b.notes.push(Note::Maintenance {
            service: service.to_string(),
            target: name.to_string(),
            window: window.clone(),
        });
        return true;
    }
    false
}

fn remove(s: &Service, c: &Container) -> Action {
    Action::Remove {
        service: s.name.clone(),
        instance: c.instance,
        name: c.name.clone(),
        id: c.id.clone(),
        stop_timeout_s: s.spec.stop_timeout.map(|t| t.get().as_secs()),
    }
}

fn start(s: &Service, c: &Container) -> Action {
    Action::Start { service: s.name.clone(), instance: c.instance, name: c.name.clone(), id: c.id.clone() }
}

/// The condition an instance of `s` must reach to count as up.
/// What "ready" means for a new instance of `s`: healthy with a health check, else running.
pub fn ready_condition(s: &Service) -> Condition {
    if s.spec.healthcheck.is_some() { Condition::Healthy } else { Condition::Started }
}

/// How long a new instance may take to become ready: its health check's full first round
/// plus slack.
pub fn ready_timeout_ms(s: &Service) -> u64 {
    match &s.spec.healthcheck {
        None => 30_000,
        Some(h) => {
            let ms = |d: Option<tend_specs::quantity::Duration>, default: u64| {
                d.map(|d| d.get().as_millis() as u64).unwrap_or(default)
            };
            let interval = ms(h.interval, 30_000);
            let timeout = ms(h.timeout, 30_000);
            let retries = u64::from(h.retries.unwrap_or(3));
            ms(h.start_period, 0) + (interval + timeout) * (retries + 1) + 30_000
        }
    }
}

/// Whether `s` runs as Docker containers: the only services this planner plans. The others
/// (systemd units) belong to another backend; the commands refuse a spec set holding them
/// until it exists, so none is left out silently.
fn is_docker(s: &Service) -> bool {
    s.spec.runtime == Runtime::Docker
}

/// Docker services ordered so every dependency comes before its dependents (ties by name).
fn topo_order(desired: &Desired) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    fn visit<'a>(
        name: &'a str,
        desired: &'a Desired,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<&'a str>,
        depth: usize,
    ) {
        if done.contains(name) || depth > desired.services.len() {
            return;
        }
        let Some((key, s)) = desired.services.get_key_value(name).filter(|(_, s)| is_docker(s)) else { return };
        done.insert(key.as_str());
        for d in &s.spec.depends_on {
            visit(d.name.as_str(), desired, done, out, depth + 1);
        }
        out.push(key.as_str());
    }
    for name in desired.services.keys() {
        visit(name, desired, &mut done, &mut out, 0);
    }
    out
}

mod drain;
mod instances;
mod removals;
mod resources;
mod service;
mod types;
mod units;
pub mod window;

#[cfg(test)]
mod tests;
