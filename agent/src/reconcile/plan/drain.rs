//! Planning for a drained node (`tend drain`): whatever tend runs here is stopped,
//! dependents before their dependencies (the reverse of the start order), and nothing is
//! pulled, created, started, replaced or removed until `tend undrain`. Containers are
//! stopped, not removed, so undrain starts the very same containers again. systemd services
//! and the timer units of scheduled Timers are stopped and disabled at boot, so neither a
//! timer elapsing nor a reboot starts new work; a job run already in progress finishes.
//!
//! Instances held for triage and targets under maintenance are left alone, as always.

use std::collections::{BTreeMap, BTreeSet};

use tend_specs::Desired;
use tend_specs::service::Runtime;

use super::{Action, Builder, Input, Note, Plan, Reason};
use crate::reconcile::model::{Container, RunState, Unit, UnitActive, instance_name};
use crate::reconcile::state::Drain;

/// The plan of a drained node: stop steps only, and a [`Note::Drained`] that says why
/// nothing starts.
pub(super) fn plan_drained(input: Input<'_>, drain: &Drain) -> Plan {
    let Input { desired, observed, state, units, .. } = input;
    let mut b = Builder { steps: Vec::new(), notes: Vec::new() };
    b.notes.push(Note::Drained { since_ms: drain.since_ms, user: drain.user.clone(), reason: drain.reason.clone() });

    // Containers by service, and the units of this scope when systemd is observed.
    let mut live: BTreeMap<&str, Vec<&Container>> = BTreeMap::new();
    for c in &observed.containers {
        if c.instance == 0 || c.service.is_empty() {
            b.notes.push(Note::Unrecognized { name: c.name.clone(), id: c.id.clone() });
            continue;
        }
        live.entry(c.service.as_str()).or_default().push(c);
    }
    let mine: BTreeMap<&str, &Unit> = match (units, &observed.units) {
        (Some(ctx), Some(all)) => {
            all.iter().filter(|(_, u)| u.scope.as_deref() == Some(ctx.scope)).map(|(k, u)| (k.as_str(), u)).collect()
        }
        _ => BTreeMap::new(),
    };

    // Services, dependents first: a service's stops wait for the stops of every service
    // that depends on it (through services with nothing to stop, too).
    let dependents = dependents(desired);
    let mut gates: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for name in stop_order(desired, &dependents) {
        let Some(s) = desired.services.get(name) else { continue };
        let after: Vec<usize> =
            dependents.get(name).into_iter().flatten().filter_map(|d| gates.get(d)).flatten().copied().collect();
        let mut stops = Vec::new();
        match s.spec.runtime {
            Runtime::Docker => {
                let timeout = s.spec.stop_timeout.map(|t| t.get().as_secs());
                for c in live.remove(name).unwrap_or_default() {
                    if let Some(id) = stop_container(&mut b, state, observed, c, timeout, &after) {
                        stops.push(id);
                    }
                }
            }
            Runtime::Systemd => {
                let unit = format!("{name}.service");
                if let Some(id) = stop_unit(&mut b, state, observed, mine.get(unit.as_str()).copied(), name, &after) {
                    stops.push(id);
                }
            }
        }
        gates.insert(name, if stops.is_empty() { after } else { stops });
    }

    // Containers of services no spec declares as docker services any more: stopped too
    // (they are removed once the node is undrained).
    for c in live.into_values().flatten() {
        stop_container(&mut b, state, observed, c, None, &[]);
    }

    // Timers: no new run starts while drained. Their timer units stop; a job's own service
    // unit is left alone, so a run in progress finishes.
    for t in desired.timers.keys() {
        let unit = format!("{t}.timer");
        if let Some(u) = mine.get(unit.as_str()).filter(|u| runs(u)) {
            let target = format!("{t}.job");
            match observed.maintenance.get(&target) {
                Some(window) => b.notes.push(Note::Maintenance { service: t.clone(), target, window: window.clone() }),
                None => {
                    b.push(Action::StopUnit { unit: u.name.clone() }, Reason::Drained, vec![], 0);
                }
            }
        }
    }
    // Units of specs that are gone: their services and timers stop, their jobs finish.
    let wanted = |name: &str| match name.rsplit_once('.') {
        Some((stem, "service")) => {
            desired.services.get(stem).is_some_and(|s| s.spec.runtime == Runtime::Systemd)
                || desired.timers.contains_key(stem)
        }
        Some((stem, "timer")) => desired.timers.contains_key(stem),
        _ => false,
    };
    for u in mine.values().filter(|u| !wanted(&u.name) && runs(u) && !is_job(u)) {
        if !observed.maintenance.contains_key(&lock_key(&u.name)) {
            b.push(Action::StopUnit { unit: u.name.clone() }, Reason::Drained, vec![], 0);
        }
    }

    // Nothing starts at boot either: undrain enables them again (the spec says they are).
    let enabled: Vec<String> = mine
        .values()
        .filter(|u| u.enabled && !is_job(u))
        .filter(|u| !observed.maintenance.contains_key(&lock_key(&u.name)) && !state.holds.contains_key(&u.name))
        .map(|u| u.name.clone())
        .collect();
    if !enabled.is_empty() {
        b.push(Action::DisableUnits { units: enabled }, Reason::Drained, vec![], 0);
    }
    Plan { steps: b.steps, notes: b.notes, unchecked: None }
}

/// Plans the stop of one container when it runs; returns the step's number.
fn stop_container(
    b: &mut Builder,
    state: &crate::reconcile::state::State,
    observed: &crate::reconcile::model::Observed,
    c: &Container,
    stop_timeout_s: Option<u64>,
    after: &[usize],
) -> Option<usize> {
    let name = instance_name(&c.service, c.instance);
    if let Some(hold) = state.holds.get(&name) {
        b.notes.push(Note::Held {
            service: c.service.clone(),
            name,
            exit_code: hold.exit_code,
            since_ms: hold.since_ms,
            unclean_boot: hold.unclean_boot,
        });
        return None;
    }
    if let Some(window) = observed.maintenance.get(&name) {
        b.notes.push(Note::Maintenance { service: c.service.clone(), target: name, window: window.clone() });
        return None;
    }
    if !matches!(c.state, RunState::Running | RunState::Restarting | RunState::Paused) {
        return None;
    }
    let action = Action::Stop {
        service: c.service.clone(),
        instance: c.instance,
        name: c.name.clone(),
        id: c.id.clone(),
        stop_timeout_s,
    };
    Some(b.push(action, Reason::Drained, after.to_vec(), 0))
}

/// Plans the stop of a systemd service's unit when it runs; returns the step's number.
fn stop_unit(
    b: &mut Builder,
    state: &crate::reconcile::state::State,
    observed: &crate::reconcile::model::Observed,
    unit: Option<&Unit>,
    service: &str,
    after: &[usize],
) -> Option<usize> {
    let u = unit?;
    if let Some(hold) = state.holds.get(&u.name) {
        b.notes.push(Note::Held {
            service: service.to_string(),
            name: u.name.clone(),
            exit_code: hold.exit_code,
            since_ms: hold.since_ms,
            unclean_boot: hold.unclean_boot,
        });
        return None;
    }
    if let Some(window) = observed.maintenance.get(&u.name) {
        b.notes.push(Note::Maintenance {
            service: service.to_string(),
            target: u.name.clone(),
            window: window.clone(),
        });
        return None;
    }
    runs(u).then(|| b.push(Action::StopUnit { unit: u.name.clone() }, Reason::Drained, after.to_vec(), 0))
}

/// The maintenance lock key of a unit: a Timer's timer unit is its job's (`x.job`).
fn lock_key(unit: &str) -> String {
    match unit.strip_suffix(".timer") {
        Some(stem) => format!("{stem}.job"),
        None => unit.to_string(),
    }
}

fn runs(u: &Unit) -> bool {
    matches!(u.active, UnitActive::Active | UnitActive::Activating)
}

/// Whether `u` is a Timer's job unit (started by its timer or `tend job run`, never by a
/// pass): a run in progress is left to finish.
fn is_job(u: &Unit) -> bool {
    u.content.lines().any(|l| l == format!("X-Tend-Kind={}", crate::reconcile::unit_files::KIND_TIMER_JOB))
}

/// Service name → the services that depend on it.
fn dependents(desired: &Desired) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, s) in &desired.services {
        for d in &s.spec.depends_on {
            out.entry(d.name.as_str()).or_default().push(name.as_str());
        }
    }
    out
}

/// Every service, each after all of its dependents (the reverse of the start order); ties
/// by name.
fn stop_order<'a>(desired: &'a Desired, dependents: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<&'a str> {
    fn visit<'a>(
        name: &'a str,
        dependents: &BTreeMap<&'a str, Vec<&'a str>>,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<&'a str>,
    ) {
        // Marked before its dependents are visited, so even a cycle (rejected when the specs
        // load) cannot recurse forever.
        if !done.insert(name) {
            return;
        }
        for d in dependents.get(name).into_iter().flatten() {
            visit(d, dependents, done, out);
        }
        out.push(name);
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for name in desired.services.keys() {
        visit(name.as_str(), dependents, &mut done, &mut out);
    }
    out
}
