//! What each instance of one Docker service needs, before pacing and prerequisites: a
//! create for a missing instance, a replacement for an outdated one, a start for one that
//! exited (after its restart policy and backoff), a hold, or nothing; strays and leftovers
//! of interrupted replacements are removed. Instances held for triage, under maintenance,
//! or whose name another container has taken are noted and left alone.

use std::collections::BTreeMap;

use tend_specs::Service;
use tend_specs::service::{RestartPolicy, RolloutOrder};

use super::{Action, Builder, Cx, Note, Reason, normalize_image, ready_condition, ready_timeout_ms};
use super::{held_or_in_maintenance, remove, start, window};
use crate::reconcile::model::{Container, NEXT_SUFFIX, RunState, instance_name};

/// Steps that run one after another for one instance.
pub(super) type Chain = Vec<(Action, Reason)>;

/// The work for one instance, before pacing.
pub(super) enum InstanceWork {
    /// Paced work (create or replace): its steps run as one chain.
    Paced { replace: bool, chain: Chain },
    /// Unpaced work (crash restarts, starts, holds).
    Now(Action, Reason),
}

/// What one service's instances need.
pub(super) struct Work {
    /// The work, instance by instance.
    pub units: Vec<InstanceWork>,
    /// Something of the service cannot proceed (held, in maintenance, a name conflict, no
    /// image): its dependents are blocked.
    pub blocked: bool,
    /// A change waits for the service's update window.
    pub deferred: bool,
    /// A replacement waits for this node's turn in the cluster's rollout.
    pub gated: bool,
}

/// The work the instances of `s` this node runs need ([`Service::instances`]: `1..=replicas`,
/// or the slots placed here); `instances` is what runs of it.
pub(super) fn work(
    cx: &Cx<'_>,
    b: &mut Builder,
    s: &Service,
    instances: &BTreeMap<u32, Vec<&Container>>,
    image_missing: bool,
) -> Work {
    let mut w = Work { units: Vec::new(), blocked: false, deferred: false, gated: false };
    let image = s.spec.image.as_deref().unwrap_or_default();
    if image_missing {
        b.notes.push(Note::ImageNotPresent { service: s.name.clone(), image: image.to_string() });
        w.blocked = true;
    }
    let image_id = cx.observed.images.get(&normalize_image(image));
    for i in s.instances() {
        let found: &[&Container] = instances.get(&i).map(Vec::as_slice).unwrap_or(&[]);
        instance(cx, b, s, i, found, image_id, &mut w);
    }
    // Without its image nothing new can be created (existing containers still start).
    if image_missing {
        w.units.retain(|u| match u {
            InstanceWork::Paced { chain, .. } => !chain.iter().any(|(a, _)| matches!(a, Action::Create { .. })),
            InstanceWork::Now(..) => true,
        });
    }
    w
}

/// The work of instance `i`, whose containers are `found`.
fn instance(
    cx: &Cx<'_>,
    b: &mut Builder,
    s: &Service,
    i: u32,
    found: &[&Container],
    image_id: Option<&String>,
    w: &mut Work,
) {
    let name = instance_name(&s.name, i);
    if held_or_in_maintenance(cx, b, &s.name, &name) {
        w.blocked = true;
        return;
    }
    let canonical = found.iter().find(|c| c.name == name).copied();
    let next_name = format!("{name}{NEXT_SUFFIX}");
    let next = found.iter().find(|c| c.name == next_name).copied();
    // Anything else carrying this instance's labels is a stray duplicate: remove it.
    for stray in found.iter().filter(|c| c.name != name && c.name != next_name) {
        w.units.push(InstanceWork::Now(remove(s, stray), Reason::Leftover));
    }
    if canonical.is_none()
        && let Some(id) = cx.observed.foreign.get(&name)
    {
        b.notes.push(Note::Conflict { service: s.name.clone(), name, id: id.clone() });
        w.blocked = true;
        return;
    }
    let Some(current) = canonical else {
        w.units.push(missing(s, i, &name, next));
        return;
    };
    // An interrupted start-first replacement left a new container beside the old one:
    // remove it and decide afresh.
    if let Some(n) = next {
        w.units.push(InstanceWork::Now(remove(s, n), Reason::Leftover));
    }
    if let Some(reason) = outdated(s, current, image_id) {
        replace(cx, b, s, i, current, reason, w);
        return;
    }
    after_state(cx, b, s, current, w);
}

/// No container under the instance's name: the `-next` container of an interrupted
/// replacement takes the name when it runs this spec; otherwise a new one is created.
fn missing(s: &Service, i: u32, name: &str, next: Option<&Container>) -> InstanceWork {
    match next {
        Some(n) if n.hash == s.hash => InstanceWork::Paced {
            replace: false,
            chain: vec![(
                Action::Rename {
                    service: s.name.clone(),
                    instance: i,
                    id: n.id.clone(),
                    from: n.name.clone(),
                    to: name.to_string(),
                },
                Reason::Replaced,
            )],
        },
        other => {
            let mut chain = Vec::new();
            if let Some(n) = other {
                chain.push((remove(s, n), Reason::Leftover));
            }
            let create = Action::Create { service: s.name.clone(), instance: i, name: name.to_string() };
            chain.push((create, Reason::Missing));
            InstanceWork::Paced { replace: false, chain }
        }
    }
}

/// Why `current` must be replaced, if it must: its spec changed, or its image tag now
/// points at another image.
fn outdated(s: &Service, current: &Container, image_id: Option<&String>) -> Option<Reason> {
    if current.hash != s.hash {
        return Some(Reason::Changed { fields: changed_fields(s, current) });
    }
    image_id
        .filter(|id| **id != current.image_id && !current.image_id.is_empty())
        .map(|id| Reason::ImageChanged { from: current.image_id.clone(), to: id.clone() })
}

/// Replaces `current` the way the rollout says, unless its update window is closed.
fn replace(cx: &Cx<'_>, b: &mut Builder, s: &Service, i: u32, current: &Container, reason: Reason, w: &mut Work) {
    if cx.windows.contains_key(&s.name) && window::serving(current) {
        w.deferred = true;
        return;
    }
    if cx.gated.contains_key(&s.name) && window::serving(current) {
        w.gated = true;
        return;
    }
    let next_name = format!("{}{NEXT_SUFFIX}", current.name);
    // A start-first replacement needs the `-next` name: another's container there is a
    // conflict, and the old instance keeps running meanwhile.
    if s.spec.rollout.order == RolloutOrder::StartFirst
        && let Some(id) = cx.observed.foreign.get(&next_name)
    {
        b.notes.push(Note::Conflict { service: s.name.clone(), name: next_name, id: id.clone() });
        return;
    }
    let chain = replacement(s, i, current, &next_name, reason);
    w.units.push(InstanceWork::Paced { replace: true, chain });
}

/// The steps replacing `current` (instance `i`): stop-first removes it and creates the new
/// one; start-first creates the new one as `-next`, awaits it ready, removes the old one and
/// renames the new one.
fn replacement(s: &Service, i: u32, current: &Container, next_name: &str, reason: Reason) -> Chain {
    let name = current.name.clone();
    let create = |name: String| Action::Create { service: s.name.clone(), instance: i, name };
    match s.spec.rollout.order {
        RolloutOrder::StopFirst => vec![(remove(s, current), reason.clone()), (create(name), reason)],
        RolloutOrder::StartFirst => vec![
            (create(next_name.to_string()), reason.clone()),
            (
                Action::Await {
                    service: s.name.clone(),
                    name: Some(next_name.to_string()),
                    condition: ready_condition(s),
                    timeout_ms: ready_timeout_ms(s),
                },
                Reason::Rollout,
            ),
            (remove(s, current), reason),
            (
                Action::Rename {
                    service: s.name.clone(),
                    instance: i,
                    id: String::new(),
                    from: next_name.to_string(),
                    to: name,
                },
                Reason::Replaced,
            ),
        ],
    }
}

/// An up-to-date container: started when it was created but not started, stopped by a
/// drain or on purpose, or exited and its restart policy says so.
fn after_state(cx: &Cx<'_>, b: &mut Builder, s: &Service, current: &Container, w: &mut Work) {
    let name = &current.name;
    match current.state {
        RunState::Running | RunState::Restarting | RunState::Paused | RunState::Removing => {}
        RunState::Created => w.units.push(InstanceWork::Now(start(s, current), Reason::NotStarted)),
        // Stopped by a drain that is lifted: started again, whatever the policy says.
        RunState::Exited if cx.state.stopped_by_drain.contains(name) => {
            w.units.push(InstanceWork::Now(start(s, current), Reason::Undrained));
        }
        // Stopped on purpose, not crashed: started again unless the policy is never.
        RunState::Exited | RunState::Dead
            if s.spec.restart.policy != RestartPolicy::Never
                && let Some(cause) = cx.state.stopped_on_purpose.get(name) =>
        {
            w.units.push(InstanceWork::Now(start(s, current), Reason::StoppedOnPurpose { cause: *cause }));
        }
        RunState::Exited | RunState::Dead => after_exit(cx, b, s, current, w),
    }
}

/// An instance that exited by itself: restarted (after its backoff), held for triage, or
/// left exited, as its restart policy says.
fn after_exit(cx: &Cx<'_>, b: &mut Builder, s: &Service, current: &Container, w: &mut Work) {
    let name = &current.name;
    let code = current.exit_code;
    let policy = s.spec.restart.policy;
    let restart = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != Some(0),
        RestartPolicy::Never => false,
        // Released by `tend release` since it exited: start it again.
        RestartPolicy::Hold if cx.state.released.contains_key(name) => true,
        RestartPolicy::Hold => {
            let hold = Action::Hold {
                service: s.name.clone(),
                instance: current.instance,
                name: name.clone(),
                exit_code: code,
            };
            w.units.push(InstanceWork::Now(hold, Reason::UnexpectedExit { code }));
            w.blocked = true;
            return;
        }
    };
    if !restart {
        b.notes.push(Note::Exited { service: s.name.clone(), name: name.clone(), code, policy });
        return;
    }
    let record = cx.state.restarts.get(name).copied().unwrap_or_default();
    let backoff = s.spec.restart.backoff;
    let last_delay = backoff.delay(record.attempts.max(1)).as_millis() as u64;
    // A crash loop ends when the instance stayed up well past its last delay.
    let in_loop = record.attempts > 0 && cx.now_ms.saturating_sub(record.last_ms) < (2 * last_delay).max(60_000);
    let attempt = if in_loop { record.attempts + 1 } else { 1 };
    let until_ms = if in_loop { record.last_ms + backoff.delay(record.attempts).as_millis() as u64 } else { 0 };
    if cx.now_ms < until_ms {
        b.notes.push(Note::BackingOff { service: s.name.clone(), name: name.clone(), attempt, until_ms });
        return;
    }
    w.units.push(InstanceWork::Now(start(s, current), Reason::Exited { code, attempt }));
}

/// The fields of `s` whose hash differs from the one `c` was created with.
fn changed_fields(s: &Service, c: &Container) -> Vec<String> {
    if c.fields.is_empty() {
        return vec!["configuration".into()];
    }
    let mut fields: Vec<String> =
        s.field_hashes.iter().filter(|(k, v)| c.fields.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    if fields.is_empty() {
        fields.push("configuration".into());
    }
    fields
}
