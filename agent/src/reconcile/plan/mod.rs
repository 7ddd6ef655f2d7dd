//! The planner: a pure function from (desired, observed, state, now) to a plan of typed
//! steps, each with its reason. No I/O, no clock, no async: `tend plan` prints exactly what
//! `tend apply` would do, and every rule here is table-tested without an engine.

use std::collections::{BTreeMap, BTreeSet};

use tend_specs::service::{Condition, MountSource, PullPolicy, RestartPolicy, RolloutOrder, Runtime};
use tend_specs::{Desired, Service};

use crate::reconcile::model::{Container, NEXT_SUFFIX, RunState, instance_name};

pub use types::{Action, Input, Note, Plan, Reason, Step};

/// Default time to wait for a dependency's condition.
pub const DEFAULT_DEPENDENCY_TIMEOUT_MS: u64 = 120_000;

/// Normalizes an image reference the way the engine lists it (`busybox` → `busybox:latest`).
pub fn normalize_image(reference: &str) -> String {
    if reference.contains('@') {
        return reference.to_string();
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') { reference.to_string() } else { format!("{reference}:latest") }
}

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

/// Steps that run one after another for one instance.
type Chain = Vec<(Action, Reason)>;

/// The work for one instance, before pacing.
enum Unit {
    /// Paced work (create or replace): its steps run as one chain.
    Paced { replace: bool, chain: Chain },
    /// Unpaced work (crash restarts, starts, holds).
    Now(Action, Reason),
}

/// Plans the work that makes `observed` match `desired`.
pub fn plan(input: Input<'_>) -> Plan {
    if let Some(drain) = &input.state.drain {
        return drain::plan_drained(input, drain);
    }
    let Input { desired, observed, state, now_ms, pulled, units, ignore_windows, zone } = input;
    let mut b = Builder { steps: Vec::new(), notes: Vec::new() };
    // Services whose update window is closed: their running instances are not replaced or
    // removed in this pass.
    let windows = window::closed(desired, now_ms, ignore_windows, zone);

    // Containers by service and instance; unrecognized ones are noted and left alone.
    let mut live: BTreeMap<&str, BTreeMap<u32, Vec<&Container>>> = BTreeMap::new();
    for c in &observed.containers {
        if c.instance == 0 || c.service.is_empty() {
            b.notes.push(Note::Unrecognized { name: c.name.clone(), id: c.id.clone() });
            continue;
        }
        live.entry(c.service.as_str()).or_default().entry(c.instance).or_default().push(c);
    }

    // Shared resources: networks, volumes, images.
    let mut resource_steps: BTreeMap<String, usize> = BTreeMap::new();
    let existing_networks: BTreeSet<&str> = observed.networks.iter().map(|n| n.name.as_str()).collect();
    let mut needed_networks: BTreeMap<&str, &str> = BTreeMap::new();
    let mut needed_volumes: BTreeMap<&str, &str> = BTreeMap::new();
    for s in desired.docker_services() {
        for n in &s.spec.networks {
            needed_networks.entry(n.as_str()).or_insert(s.name.as_str());
        }
        for v in &s.spec.volumes {
            if let MountSource::Volume(name) = &v.source {
                needed_volumes.entry(name.as_str()).or_insert(s.name.as_str());
            }
        }
    }
    for (net, by) in &needed_networks {
        if !existing_networks.contains(net) {
            let id = b.push(
                Action::CreateNetwork { network: net.to_string() },
                Reason::NeededBy { service: by.to_string() },
                vec![],
                0,
            );
            resource_steps.insert(format!("network:{net}"), id);
        }
    }
    for (vol, by) in &needed_volumes {
        if !observed.volumes.contains(*vol) {
            let id = b.push(
                Action::CreateVolume { volume: vol.to_string() },
                Reason::NeededBy { service: by.to_string() },
                vec![],
                0,
            );
            resource_steps.insert(format!("volume:{vol}"), id);
        }
    }
    let mut missing_images: BTreeSet<String> = BTreeSet::new();
    for s in desired.docker_services() {
        let Some(image) = s.spec.image.as_deref() else { continue };
        let key = format!("image:{image}");
        if resource_steps.contains_key(&key) || missing_images.contains(image) {
            continue;
        }
        let present = observed.images.contains_key(&normalize_image(image));
        let reason = match s.spec.pull_policy {
            PullPolicy::Always if !pulled.contains(image) => Some(Reason::PullAlways),
            PullPolicy::IfNotPresent | PullPolicy::Always if !present && !pulled.contains(image) => {
                Some(Reason::ImageMissing)
            }
            PullPolicy::Never if !present => {
                missing_images.insert(image.to_string());
                None
            }
            _ => None,
        };
        if let Some(reason) = reason {
            let id = b.push(Action::PullImage { image: image.to_string() }, reason, vec![], 0);
            resource_steps.insert(key, id);
        }
    }

    // Services in dependency order, so a dependency's steps exist before its dependents'.
    let order = topo_order(desired);
    let mut service_steps: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut blocked: BTreeSet<&str> = BTreeSet::new();
    let mut awaits: BTreeMap<(String, Condition), usize> = BTreeMap::new();
    let empty = BTreeMap::new();
    for s in order.iter().map(|n| &desired.services[*n]) {
        let instances = live.get(s.name.as_str()).unwrap_or(&empty);
        let mut units: Vec<Unit> = Vec::new();
        let mut service_blocked = false;
        // Whether a change waits for the service's update window.
        let mut deferred = false;
        let image = s.spec.image.as_deref().unwrap_or_default();
        if missing_images.contains(image) {
            b.notes.push(Note::ImageNotPresent { service: s.name.clone(), image: image.to_string() });
            service_blocked = true;
        }
        let image_id = observed.images.get(&normalize_image(image));
        for i in 1..=s.spec.replicas {
            let name = instance_name(&s.name, i);
            let found: &[&Container] = instances.get(&i).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(hold) = state.holds.get(&name) {
                b.notes.push(Note::Held {
                    service: s.name.clone(),
                    name: name.clone(),
                    exit_code: hold.exit_code,
                    since_ms: hold.since_ms,
                    unclean_boot: hold.unclean_boot,
                });
                service_blocked = true;
                continue;
            }
            if let Some(window) = observed.maintenance.get(&name) {
                b.notes.push(Note::Maintenance {
                    service: s.name.clone(),
                    target: name.clone(),
                    window: window.clone(),
                });
                service_blocked = true;
                continue;
            }
            let canonical = found.iter().find(|c| c.name == name).copied();
            let next_name = format!("{name}{NEXT_SUFFIX}");
            let next = found.iter().find(|c| c.name == next_name).copied();
            // Anything else carrying this instance's labels is a stray duplicate: remove it.
            for stray in found.iter().filter(|c| c.name != name && c.name != next_name) {
                units.push(Unit::Now(remove(s, stray), Reason::Leftover));
            }
            if canonical.is_none()
                && let Some(id) = observed.foreign.get(&name)
            {
                b.notes.push(Note::Conflict { service: s.name.clone(), name: name.clone(), id: id.clone() });
                service_blocked = true;
                continue;
            }
            let Some(current) = canonical else {
                // No container under the instance's name.
                match next {
                    Some(n) if n.hash == s.hash => units.push(Unit::Paced {
                        replace: false,
                        chain: vec![(
                            Action::Rename {
                                service: s.name.clone(),
                                instance: i,
                                id: n.id.clone(),
                                from: n.name.clone(),
                                to: name.clone(),
                            },
                            Reason::Replaced,
                        )],
                    }),
                    other => {
                        let mut chain = Vec::new();
                        if let Some(n) = other {
                            chain.push((remove(s, n), Reason::Leftover));
                        }
                        chain.push((
                            Action::Create { service: s.name.clone(), instance: i, name: name.clone() },
                            Reason::Missing,
                        ));
                        units.push(Unit::Paced { replace: false, chain });
                    }
                }
                continue;
            };
            // An interrupted start-first replacement left a new container beside the old one:
            // remove it and decide afresh.
            if let Some(n) = next {
                units.push(Unit::Now(remove(s, n), Reason::Leftover));
            }
            let outdated = if current.hash != s.hash {
                Some(Reason::Changed { fields: changed_fields(s, current) })
            } else {
                image_id
                    .filter(|id| **id != current.image_id && !current.image_id.is_empty())
                    .map(|id| Reason::ImageChanged { from: current.image_id.clone(), to: id.clone() })
            };
            if let Some(reason) = outdated {
                if windows.contains_key(&s.name) && window::serving(current) {
                    deferred = true;
                    continue;
                }
                // A start-first replacement needs the `-next` name: another's container
                // there is a conflict, and the old instance keeps running meanwhile.
                if s.spec.rollout.order == RolloutOrder::StartFirst
                    && let Some(id) = observed.foreign.get(&next_name)
                {
                    b.notes.push(Note::Conflict { service: s.name.clone(), name: next_name, id: id.clone() });
                    continue;
                }
                let chain = match s.spec.rollout.order {
                    RolloutOrder::StopFirst => vec![
                        (remove(s, current), reason.clone()),
                        (Action::Create { service: s.name.clone(), instance: i, name: name.clone() }, reason),
                    ],
                    RolloutOrder::StartFirst => vec![
                        (
                            Action::Create { service: s.name.clone(), instance: i, name: next_name.clone() },
                            reason.clone(),
                        ),
                        (
                            Action::Await {
                                service: s.name.clone(),
                                name: Some(next_name.clone()),
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
                                from: next_name.clone(),
                                to: name.clone(),
                            },
                            Reason::Replaced,
                        ),
                    ],
                };
                units.push(Unit::Paced { replace: true, chain });
                continue;
            }
            match current.state {
                RunState::Running | RunState::Restarting | RunState::Paused | RunState::Removing => {}
                RunState::Created => units.push(Unit::Now(start(s, current), Reason::NotStarted)),
                // Stopped by a drain that is lifted: started again, whatever the policy says.
                RunState::Exited if state.stopped_by_drain.contains(&name) => {
                    units.push(Unit::Now(start(s, current), Reason::Undrained));
                }
                // Stopped on purpose, not crashed: started again unless the policy is never.
                RunState::Exited | RunState::Dead
                    if s.spec.restart.policy != RestartPolicy::Never
                        && let Some(cause) = state.stopped_on_purpose.get(&name) =>
                {
                    units.push(Unit::Now(start(s, current), Reason::StoppedOnPurpose { cause: *cause }));
                }
                RunState::Exited | RunState::Dead => {
                    let code = current.exit_code;
                    let policy = s.spec.restart.policy;
                    let restart = match policy {
                        RestartPolicy::Always => true,
                        RestartPolicy::OnFailure => code != Some(0),
                        RestartPolicy::Never => false,
                        // Released by `tend release` since it exited: start it again.
                        RestartPolicy::Hold if state.released.contains_key(&name) => true,
                        RestartPolicy::Hold => {
                            units.push(Unit::Now(
                                Action::Hold {
                                    service: s.name.clone(),
                                    instance: i,
                                    name: name.clone(),
                                    exit_code: code,
                                },
                                Reason::UnexpectedExit { code },
                            ));
                            service_blocked = true;
                            continue;
                        }
                    };
                    if !restart {
                        b.notes.push(Note::Exited { service: s.name.clone(), name: name.clone(), code, policy });
                        continue;
                    }
                    let record = state.restarts.get(&name).copied().unwrap_or_default();
                    let backoff = s.spec.restart.backoff;
                    let last_delay = backoff.delay(record.attempts.max(1)).as_millis() as u64;
                    // A crash loop ends when the instance stayed up well past its last delay.
                    let in_loop =
                        record.attempts > 0 && now_ms.saturating_sub(record.last_ms) < (2 * last_delay).max(60_000);
                    let attempt = if in_loop { record.attempts + 1 } else { 1 };
                    let until_ms =
                        if in_loop { record.last_ms + backoff.delay(record.attempts).as_millis() as u64 } else { 0 };
                    if now_ms < until_ms {
                        b.notes.push(Note::BackingOff {
                            service: s.name.clone(),
                            name: name.clone(),
                            attempt,
                            until_ms,
                        });
                        continue;
                    }
                    units.push(Unit::Now(start(s, current), Reason::Exited { code, attempt }));
                }
            }
        }

        // Without its image nothing new can be created (existing containers still start).
        if missing_images.contains(image) {
            units.retain(|u| match u {
                Unit::Paced { chain, .. } => !chain.iter().any(|(a, _)| matches!(a, Action::Create { .. })),
                Unit::Now(..) => true,
            });
        }

        // Steps this service's creates and starts wait for: resources and dependencies.
        let mut prereqs: Vec<usize> = Vec::new();
        let needs_prereqs = units.iter().any(|u| match u {
            Unit::Paced { .. } => true,
            Unit::Now(a, _) => matches!(a, Action::Start { .. } | Action::Create { .. }),
        });
        if needs_prereqs {
            for n in &s.spec.networks {
                prereqs.extend(resource_steps.get(&format!("network:{n}")));
            }
            for v in &s.spec.volumes {
                if let MountSource::Volume(name) = &v.source {
                    prereqs.extend(resource_steps.get(&format!("volume:{name}")));
                }
            }
            prereqs.extend(resource_steps.get(&format!("image:{image}")));
            for dep in &s.spec.depends_on {
                if blocked.contains(dep.name.as_str()) {
                    b.notes.push(Note::Blocked { service: s.name.clone(), by: dep.name.clone() });
                    service_blocked = true;
                    continue;
                }
                let key = (dep.name.clone(), dep.condition);
                let id = match awaits.get(&key) {
                    Some(id) => *id,
                    None => {
                        let after = service_steps.get(dep.name.as_str()).cloned().unwrap_or_default();
                        let timeout_ms =
                            dep.timeout.map(|t| t.get().as_millis() as u64).unwrap_or(DEFAULT_DEPENDENCY_TIMEOUT_MS);
                        let id = b.push(
                            Action::Await {
                                service: dep.name.clone(),
                                name: None,
                                condition: dep.condition,
                                timeout_ms,
                            },
                            Reason::NeededBy { service: s.name.clone() },
                            after,
                            0,
                        );
                        awaits.insert(key, id);
                        id
                    }
                };
                prereqs.push(id);
            }
        }
        if service_blocked {
            blocked.insert(s.name.as_str());
        }
        if blocked.contains(s.name.as_str())
            && units.iter().any(|u| !matches!(u, Unit::Now(Action::Hold { .. } | Action::Remove { .. }, _)))
        {
            // A dependency cannot become ready: create and start nothing that waits on it,
            // but still record holds and clean up leftovers.
            let waits_on_blocked_dep =
                s.spec.depends_on.iter().any(|d| blocked.contains(d.name.as_str()) && d.name != s.name);
            if waits_on_blocked_dep {
                units.retain(|u| matches!(u, Unit::Now(Action::Hold { .. } | Action::Remove { .. }, _)));
            }
        }

        // A new version (a replacement, or the first start of this spec's template) runs
        // the before-start hook first, and nothing of it starts unless the hook succeeds;
        // crash restarts and scale-ups of a version already running do not run it.
        if let Some(job) = s.spec.hooks.as_ref().and_then(|h| h.before_start.as_ref()) {
            let version_runs = instances.values().flatten().any(|c| c.hash == s.hash);
            let new_version = units.iter().any(|u| match u {
                Unit::Paced { replace, chain } => {
                    *replace || (!version_runs && chain.iter().any(|(a, _)| matches!(a, Action::Create { .. })))
                }
                Unit::Now(..) => false,
            });
            if new_version {
                let id = b.push(
                    Action::RunJob { job: job.clone() },
                    Reason::Hook { service: s.name.clone() },
                    std::mem::take(&mut prereqs),
                    0,
                );
                prereqs.push(id);
            }
        }

        // Lay out the units: unpaced ones at once; paced ones in batches with pauses.
        let mut mine: Vec<usize> = Vec::new();
        // A batch: whether it replaces instances, and its chains (one per instance).
        let mut batches: Vec<(bool, Vec<Chain>)> = Vec::new();
        for unit in units {
            match unit {
                Unit::Now(action, reason) => {
                    let after = if matches!(action, Action::Start { .. }) { prereqs.clone() } else { vec![] };
                    mine.push(b.push(action, reason, after, 0));
                }
                Unit::Paced { replace, chain } => {
                    // Replacements go maxUnavailable at a time; new instances one at a time.
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
            let mut ends = Vec::new();
            for chain in batch {
                let mut after = prereqs.clone();
                after.extend(&previous_ends);
                let mut pause_ms = if n > 0 { pause } else { 0 };
                let mut last = 0;
                for (action, reason) in chain {
                    let created = match &action {
                        Action::Create { name, .. } => Some(name.clone()),
                        _ => None,
                    };
                    last = b.push(action, reason, std::mem::take(&mut after), pause_ms);
                    pause_ms = 0;
                    after = vec![last];
                    mine.push(last);
                    // Wait for the new instance to be healthy before the next batch, so a
                    // failing health check stops the rollout; and after every replacement,
                    // so a broken new version is never reported as applied. (A first start
                    // is awaited by its dependents, with their own timeouts.)
                    if let Some(created) = created
                        && (replace || n + 1 < batch_count)
                        && s.spec.healthcheck.is_some()
                        && !created.ends_with(NEXT_SUFFIX)
                    {
                        last = b.push(
                            Action::Await {
                                service: s.name.clone(),
                                name: Some(created),
                                condition: Condition::Healthy,
                                timeout_ms: ready_timeout_ms(s),
                            },
                            Reason::Rollout,
                            vec![last],
                            0,
                        );
                        after = vec![last];
                        mine.push(last);
                    }
                }
                ends.push(last);
            }
            previous_ends = ends;
        }

        // Scale down: highest instances first, paced by scaleDownInterval.
        let mut down_after: Vec<usize> = Vec::new();
        let down_pause = s.spec.rollout.scale_down_interval.get().as_millis() as u64;
        let mut first = true;
        for (i, containers) in instances.range(s.spec.replicas + 1..).rev() {
            let name = instance_name(&s.name, *i);
            if let Some(hold) = state.holds.get(&name) {
                b.notes.push(Note::Held {
                    service: s.name.clone(),
                    name,
                    exit_code: hold.exit_code,
                    since_ms: hold.since_ms,
                    unclean_boot: hold.unclean_boot,
                });
                continue;
            }
            if let Some(window) = observed.maintenance.get(&name) {
                b.notes.push(Note::Maintenance { service: s.name.clone(), target: name, window: window.clone() });
                continue;
            }
            if windows.contains_key(&s.name) && containers.iter().any(|c| window::serving(c)) {
                deferred = true;
                continue;
            }
            let mut ids = Vec::new();
            for c in containers {
                let id = b.push(
                    remove(s, c),
                    Reason::ScaledDown { replicas: s.spec.replicas },
                    down_after.clone(),
                    if first { 0 } else { down_pause },
                );
                ids.push(id);
                mine.push(id);
            }
            first = false;
            down_after = ids;
        }
        if deferred && let Some(note) = windows.get(&s.name) {
            b.notes.push(note.clone());
        }
        service_steps.insert(s.name.as_str(), mine);
    }

    // Services no spec declares as docker services any more.
    for (service, instances) in &live {
        if desired.services.get(*service).is_some_and(is_docker) {
            continue;
        }
        for (i, containers) in instances {
            let name = instance_name(service, *i);
            if let Some(hold) = state.holds.get(&name) {
                b.notes.push(Note::Held {
                    service: service.to_string(),
                    name,
                    exit_code: hold.exit_code,
                    since_ms: hold.since_ms,
                    unclean_boot: hold.unclean_boot,
                });
                continue;
            }
            if let Some(window) = observed.maintenance.get(&name) {
                b.notes.push(Note::Maintenance { service: service.to_string(), target: name, window: window.clone() });
                continue;
            }
            for c in containers {
                let action = Action::Remove {
                    service: service.to_string(),
                    instance: *i,
                    name: c.name.clone(),
                    id: c.id.clone(),
                    stop_timeout_s: None,
                };
                b.push(action, Reason::SpecRemoved, vec![], 0);
            }
        }
    }

    // Networks tend created that no spec uses, after every removal.
    let all_removals: Vec<usize> =
        b.steps.iter().filter(|s| matches!(s.action, Action::Remove { .. })).map(|s| s.id).collect();
    for n in observed.networks.iter().filter(|n| n.owned && !needed_networks.contains_key(n.name.as_str())) {
        b.push(
            Action::RemoveNetwork { network: n.name.clone(), id: n.id.clone() },
            Reason::Unreferenced,
            all_removals.clone(),
            0,
        );
    }
    if let (Some(ctx), Some(live_units)) = (units, observed.units.as_ref()) {
        units::plan_units(&mut b, desired, live_units, state, ctx, &observed.maintenance, &windows);
    }
    Plan { steps: b.steps, notes: b.notes, unchecked: None }
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
mod types;
mod units;
pub mod window;

#[cfg(test)]
mod tests;
