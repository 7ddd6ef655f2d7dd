//! Planning one Docker service: its instances' work (`instances`), the steps that work
//! waits for (resources, dependencies awaited, the before-start hook), the work laid out in
//! paced batches (`rollout.maxUnavailable`, `interval`, health awaited between batches),
//! and the scale-down of instances beyond `replicas` (or not placed on this node).

use std::collections::{BTreeMap, BTreeSet};

use tend_specs::Service;
use tend_specs::service::Condition;

use super::instances::{self, Chain, InstanceWork};
use super::resources::Resources;
use super::{Action, Builder, Cx, DEFAULT_DEPENDENCY_TIMEOUT_MS, Note, Reason, held_or_in_maintenance};
use super::{ready_timeout_ms, remove, window};
use crate::reconcile::model::{Container, NEXT_SUFFIX, instance_name};

/// What the services planned so far mean for their dependents.
#[derive(Default)]
pub(super) struct Deps<'a> {
    /// Each service's steps.
    steps: BTreeMap<&'a str, Vec<usize>>,
    /// Services that cannot proceed: their dependents create and start nothing.
    blocked: BTreeSet<&'a str>,
    /// One await step per (service, condition), shared by its dependents.
    awaits: BTreeMap<(String, Condition), usize>,
}

/// Plans service `s`, whose live containers are `instances`.
pub(super) fn plan_service<'a>(
    cx: &Cx<'_>,
    b: &mut Builder,
    s: &'a Service,
    instances: &BTreeMap<u32, Vec<&Container>>,
    resources: &Resources<'_>,
    deps: &mut Deps<'a>,
) {
    let image = s.spec.image.as_deref().unwrap_or_default();
    let mut work = instances::work(cx, b, s, instances, resources.missing_images.contains(image));
    let needs_prereqs = work.units.iter().any(|u| match u {
        InstanceWork::Paced { .. } => true,
        InstanceWork::Now(a, _) => matches!(a, Action::Start { .. } | Action::Create { .. }),
    });
    let mut prereqs = Vec::new();
    if needs_prereqs {
        prereqs = resources.prereqs(s);
        prereqs.extend(dependencies(b, s, deps, &mut work.blocked));
    }
    if work.blocked {
        deps.blocked.insert(s.name.as_str());
    }
    // A dependency cannot become ready: create and start nothing that waits on it, but
    // still record holds and clean up leftovers.
    if deps.blocked.contains(s.name.as_str())
        && s.spec.depends_on.iter().any(|d| deps.blocked.contains(d.name.as_str()) && d.name != s.name)
    {
        work.units.retain(|u| matches!(u, InstanceWork::Now(Action::Hold { .. } | Action::Remove { .. }, _)));
    }
    before_start_hook(b, s, instances, &work.units, &mut prereqs);
    let mut mine = lay_out(b, s, work.units, &prereqs);
    scale_down(cx, b, s, instances, &mut mine, &mut work.deferred);
    if work.deferred
        && let Some(note) = cx.windows.get(&s.name)
    {
        b.notes.push(note.clone());
    }
    if work.gated
        && let Some(note) = cx.gated.get(&s.name)
    {
        b.notes.push(note.clone());
    }
    deps.steps.insert(s.name.as_str(), mine);
}

/// The await steps of `s`'s dependencies (one per dependency and condition, shared with
/// other dependents); a blocked dependency is noted and blocks `s`.
fn dependencies(b: &mut Builder, s: &Service, deps: &mut Deps<'_>, blocked: &mut bool) -> Vec<usize> {
    let mut ids = Vec::new();
    for dep in &s.spec.depends_on {
        if deps.blocked.contains(dep.name.as_str()) {
            b.notes.push(Note::Blocked { service: s.name.clone(), by: dep.name.clone() });
            *blocked = true;
            continue;
        }
        let key = (dep.name.clone(), dep.condition);
        if let Some(id) = deps.awaits.get(&key) {
            ids.push(*id);
            continue;
        }
        let after = deps.steps.get(dep.name.as_str()).cloned().unwrap_or_default();
        let timeout_ms = dep.timeout.map(|t| t.get().as_millis() as u64).unwrap_or(DEFAULT_DEPENDENCY_TIMEOUT_MS);
        let action = Action::Await { service: dep.name.clone(), name: None, condition: dep.condition, timeout_ms };
        let id = b.push(action, Reason::NeededBy { service: s.name.clone() }, after, 0);
        deps.awaits.insert(key, id);
        ids.push(id);
    }
    ids
}

/// A new version (a replacement, or the first start of this spec's template) runs the
/// before-start hook first, and nothing of it starts unless the hook succeeds; crash
/// restarts and scale-ups of a version already running do not run it.
fn before_start_hook(
    b: &mut Builder,
    s: &Service,
    instances: &BTreeMap<u32, Vec<&Container>>,
    units: &[InstanceWork],
    prereqs: &mut Vec<usize>,
) {
    let Some(job) = s.spec.hooks.as_ref().and_then(|h| h.before_start.as_ref()) else { return };
    let version_runs = instances.values().flatten().any(|c| c.hash == s.hash);
    let new_version = units.iter().any(|u| match u {
        InstanceWork::Paced { replace, chain } => {
            *replace || (!version_runs && chain.iter().any(|(a, _)| matches!(a, Action::Create { .. })))
        }
        InstanceWork::Now(..) => false,
    });
    if new_version {
        let hook = Action::RunJob { job: job.clone() };
        let id = b.push(hook, Reason::Hook { service: s.name.clone() }, std::mem::take(prereqs), 0);
        prereqs.push(id);
    }
}

/// Lays out the work: unpaced steps at once; paced chains in batches (replacements
/// `maxUnavailable` at a time, new instances one at a time), `rollout.interval` apart.
/// Returns the service's steps.
fn lay_out(b: &mut Builder, s: &Service, units: Vec<InstanceWork>, prereqs: &[usize]) -> Vec<usize> {
    let mut mine: Vec<usize> = Vec::new();
    // A batch: whether it replaces instances, and its chains (one per instance).
    let mut batches: Vec<(bool, Vec<Chain>)> = Vec::new();
    for unit in units {
        match unit {
            InstanceWork::Now(action, reason) => {
                let after = if matches!(action, Action::Start { .. }) { prereqs.to_vec() } else { vec![] };
                mine.push(b.push(action, reason, after, 0));
            }
            InstanceWork::Paced { replace, chain } => {
                let size = if replace { s.spec.rollout.max_unavailable as usize } else { 1 };
                match batches.last_mut() {
                    Some((r, chains)) if *r == replace && chains.len() < size => chains.push(chain),
                    _ => batches.push((replace, vec![chain])),
                }
            }
        }
    }
    let pause = s.spec.rollout.interval.get().as_millis() as u64;
    let batch_count = batches.len();
    let mut previous_ends: Vec<usize> = Vec::new();
    for (n, (replace, batch)) in batches.into_iter().enumerate() {
        let mut after = prereqs.to_vec();
        after.extend(&previous_ends);
        let pause_ms = if n > 0 { pause } else { 0 };
        // Await health before the next batch, and after every replacement.
        let await_created = replace || n + 1 < batch_count;
        previous_ends = batch
            .into_iter()
            .map(|chain| push_chain(b, s, chain, after.clone(), pause_ms, await_created, &mut mine))
            .collect();
    }
    mine
}

/// Pushes one instance's chain, its first step after `after` and `pause_ms`; returns its
/// last step. With `await_created`, a created instance of a service with a health check is
/// awaited healthy, so a failing health check stops the rollout and a broken new version is
/// never reported as applied. (A first start is awaited by its dependents, with their own
/// timeouts.)
fn push_chain(
    b: &mut Builder,
    s: &Service,
    chain: Chain,
    mut after: Vec<usize>,
    mut pause_ms: u64,
    await_created: bool,
    mine: &mut Vec<usize>,
) -> usize {
    let mut last = 0;
    for (action, reason) in chain {
        let created = match &action {
            Action::Create { name, .. } => Some(name.clone()),
            _ => None,
        };
        last = b.push(action, reason, std::mem::take(&mut after), pause_ms);
        pause_ms = 0;
        mine.push(last);
        if let Some(created) = created
            && await_created
            && s.spec.healthcheck.is_some()
            && !created.ends_with(NEXT_SUFFIX)
        {
            let action = Action::Await {
                service: s.name.clone(),
                name: Some(created),
                condition: Condition::Healthy,
                timeout_ms: ready_timeout_ms(s),
            };
            last = b.push(action, Reason::Rollout, vec![last], 0);
            mine.push(last);
        }
        after = vec![last];
    }
    last
}

/// Scale down: instances beyond `replicas`, or of a placed service not placed on this node,
/// removed, highest first, `scaleDownInterval`
/// apart; held instances, those under maintenance and (with the update window closed)
/// serving ones are left.
fn scale_down(
    cx: &Cx<'_>,
    b: &mut Builder,
    s: &Service,
    instances: &BTreeMap<u32, Vec<&Container>>,
    mine: &mut Vec<usize>,
    deferred: &mut bool,
) {
    let mut down_after: Vec<usize> = Vec::new();
    let down_pause = s.spec.rollout.scale_down_interval.get().as_millis() as u64;
    let mut first = true;
    for (i, containers) in instances.iter().rev().filter(|(i, _)| !s.runs_instance(**i)) {
        let name = instance_name(&s.name, *i);
        if held_or_in_maintenance(cx, b, &s.name, &name) {
            continue;
        }
        if cx.windows.contains_key(&s.name) && containers.iter().any(|c| window::serving(c)) {
            *deferred = true;
            continue;
        }
        let mut ids = Vec::new();
        for c in containers {
            let reason = if *i > s.spec.replicas {
                Reason::ScaledDown { replicas: s.spec.replicas }
            } else {
                Reason::PlacedElsewhere
            };
            let id = b.push(remove(s, c), reason, down_after.clone(), if first { 0 } else { down_pause });
            ids.push(id);
            mine.push(id);
        }
        first = false;
        down_after = ids;
    }
}
