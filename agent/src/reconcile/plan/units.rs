//! Planning for systemd units: the unit files tend renders for systemd services and Timers,
//! against the unit files and states systemd reports. Pure like the rest of the planner:
//! contents are compared here, and rendered again by the executor when it writes them.

use std::collections::BTreeMap;

use tend_specs::service::RestartPolicy;
use tend_specs::{Desired, Service};

use super::{Action, Builder, Note, Reason};
use crate::reconcile::model::{Unit, UnitActive};
use crate::reconcile::state::State;
use crate::reconcile::unit_files::{self, Context};

/// What a desired unit should be.
struct Want {
    /// The spec object that owns it (service or timer name).
    owner: String,
    /// Its content.
    content: String,
    /// Enabled at boot.
    enable: bool,
    /// Kept running by tend (started now when it is not).
    run: bool,
    /// For a service unit, its restart policy (how an exit is treated).
    restart: Option<RestartPolicy>,
    /// The before-start hook: a Timer whose job runs before a new version starts.
    hook: Option<String>,
}

fn wanted(desired: &Desired, ctx: &Context<'_>) -> BTreeMap<String, Want> {
    let mut out = BTreeMap::new();
    for s in desired.systemd_services() {
        let enabled = s.spec.enabled.unwrap_or(true);
        for u in unit_files::render_service(ctx, s).units {
            let want = Want {
                owner: s.name.clone(),
                content: u.content,
                // Not started by systemd at boot: the agent starts it once it knows the boot
                // was clean.
                enable: enabled && !s.spec.hold_after_unclean_boot,
                run: enabled,
                restart: Some(policy(s)),
                hook: s.spec.hooks.as_ref().and_then(|h| h.before_start.clone()),
            };
            out.insert(u.name, want);
        }
    }
    for t in desired.timers.values() {
        for u in unit_files::render_timer(ctx, t).units {
            // The timer unit is enabled and started when scheduled; the job's service unit is
            // started by the timer or by hand (`tend job run`), never by apply.
            let is_timer = u.name.ends_with(".timer");
            let on = is_timer && t.spec.enabled;
            out.insert(
                u.name,
                Want { owner: t.name.clone(), content: u.content, enable: on, run: on, restart: None, hook: None },
            );
        }
    }
    out
}

fn policy(s: &Service) -> RestartPolicy {
    s.spec.restart.policy
}

/// Adds the unit steps to `b`: writes and removals, one daemon-reload, then enablement and
/// starts. `units` is what systemd reports for the unit directory.
pub(super) fn plan_units(
    b: &mut Builder,
    desired: &Desired,
    units: &BTreeMap<String, Unit>,
    state: &State,
    ctx: &Context<'_>,
    maintenance: &BTreeMap<String, crate::reconcile::model::Maintenance>,
    windows: &BTreeMap<String, Note>,
) {
    let want = wanted(desired, ctx);
    // The lock key of a unit: a Timer's units are its job's (`x.job`); a service's is its
    // unit's name. A target under maintenance is left alone entirely.
    let key = |unit: &str, owner: Option<&str>| match owner.filter(|o| desired.timers.contains_key(*o)) {
        Some(timer) => format!("{timer}.job"),
        None => match unit.strip_suffix(".timer") {
            Some(stem) => format!("{stem}.job"),
            None => unit.to_string(),
        },
    };
    let mut file_steps = Vec::new();
    let mut restart_after_reload = Vec::new();
    // Units whose new version starts in this pass, with their hook.
    let mut hooked: BTreeMap<String, String> = BTreeMap::new();
    let mut start_after_reload = Vec::new();
    let (mut enable, mut disable) = (Vec::new(), Vec::new());
    for (name, w) in &want {
        let k = key(name, Some(&w.owner));
        if let Some(window) = maintenance.get(&k) {
            // A Timer's two units share one key: one note.
            if !b.notes.iter().any(|n| matches!(n, Note::Maintenance { target, .. } if *target == k)) {
                b.notes.push(Note::Maintenance { service: w.owner.clone(), target: k, window: window.clone() });
            }
            continue;
        }
        match units.get(name) {
            Some(u) if u.scope.as_deref() != Some(ctx.scope) => {
                b.notes.push(Note::UnitConflict { unit: name.clone(), scope: u.scope.clone() });
            }
            None => {
                file_steps.push(b.push(
                    Action::WriteUnit { unit: name.clone(), owner: w.owner.clone() },
                    Reason::Missing,
                    vec![],
                    0,
                ));
                if w.enable {
                    enable.push(name.clone());
                }
                if w.run {
                    start_after_reload.push((name.clone(), Reason::Missing));
                    if let Some(job) = &w.hook {
                        hooked.insert(name.clone(), job.clone());
                    }
                }
            }
            Some(u) => {
                if w.enable && !u.enabled {
                    enable.push(name.clone());
                } else if !w.enable && u.enabled {
                    disable.push(name.clone());
                }
                if u.content != w.content {
                    // A running unit's new file waits for its service's update window, and
                    // its restart with it, so the file on disk is always the one that runs.
                    if w.run
                        && matches!(u.active, UnitActive::Active | UnitActive::Activating)
                        && let Some(note) = windows.get(&w.owner)
                    {
                        if !b.notes.contains(note) {
                            b.notes.push(note.clone());
                        }
                        continue;
                    }
                    file_steps.push(b.push(
                        Action::WriteUnit { unit: name.clone(), owner: w.owner.clone() },
                        Reason::Changed { fields: vec!["unit file".into()] },
                        vec![],
                        0,
                    ));
                    // A running unit picks up its new file by a restart; a stopped one that
                    // should run is started below.
                    if let (true, Some(job)) = (w.run, &w.hook) {
                        hooked.insert(name.clone(), job.clone());
                    }
                    if w.run && matches!(u.active, UnitActive::Active | UnitActive::Activating) {
                        restart_after_reload.push(name.clone());
                        continue;
                    }
                }
                if !w.run {
                    continue;
                }
                match u.active {
                    UnitActive::Active | UnitActive::Activating | UnitActive::Deactivating => {}
                    UnitActive::Inactive | UnitActive::Failed => {
                        let code = u.exit_status.map(i64::from);
                        if let Some(hold) = state.holds.get(name) {
                            // Held (after an exit, or after an unclean boot): stays down.
                            b.notes.push(Note::Held {
                                service: w.owner.clone(),
                                name: name.clone(),
                                exit_code: hold.exit_code.or(code),
                                since_ms: hold.since_ms,
                                unclean_boot: hold.unclean_boot,
                            });
                            continue;
                        }
                        if state.stopped_by_drain.contains(name) {
                            // Stopped by a drain that is lifted: started again, whatever the
                            // policy says.
                            start_after_reload.push((name.clone(), Reason::Undrained));
                            continue;
                        }
                        if let Some(cause) = state.stopped_on_purpose.get(name)
                            && w.restart != Some(RestartPolicy::Never)
                        {
                            // Stopped on purpose, not crashed: started again.
                            start_after_reload.push((name.clone(), Reason::StoppedOnPurpose { cause: *cause }));
                            continue;
                        }
                        match w.restart {
                            Some(RestartPolicy::Hold) if !state.released.contains_key(name) => {
                                b.push(
                                    Action::Hold {
                                        service: w.owner.clone(),
                                        instance: 1,
                                        name: name.clone(),
                                        exit_code: code,
                                    },
                                    Reason::UnexpectedExit { code },
                                    vec![],
                                    0,
                                );
                            }
                            Some(RestartPolicy::Never) => {
                                b.notes.push(Note::Exited {
                                    service: w.owner.clone(),
                                    name: name.clone(),
                                    code,
                                    policy: RestartPolicy::Never,
                                });
                            }
                            Some(RestartPolicy::OnFailure) if u.active == UnitActive::Inactive => {
                                b.notes.push(Note::Exited {
                                    service: w.owner.clone(),
                                    name: name.clone(),
                                    code,
                                    policy: RestartPolicy::OnFailure,
                                });
                            }
                            _ => start_after_reload.push((name.clone(), Reason::Exited { code, attempt: 1 })),
                        }
                    }
                }
            }
        }
    }
    // Units tend wrote for specs that are gone: stop, disable, remove.
    let mut removed = Vec::new();
    for (name, u) in units {
        if want.contains_key(name) || u.scope.as_deref() != Some(ctx.scope) {
            continue;
        }
        if let Some(window) = maintenance.get(&key(name, None)) {
            let service = name.rsplit_once('.').map_or(name.as_str(), |(stem, _)| stem).to_string();
            b.notes.push(Note::Maintenance { service, target: key(name, None), window: window.clone() });
            continue;
        }
        let mut after = vec![];
        if matches!(u.active, UnitActive::Active | UnitActive::Activating) {
            after.push(b.push(Action::StopUnit { unit: name.clone() }, Reason::SpecRemoved, vec![], 0));
        }
        if u.enabled {
            after.push(b.push(
                Action::DisableUnits { units: vec![name.clone()] },
                Reason::SpecRemoved,
                after.clone(),
                0,
            ));
        }
        removed.push(b.push(Action::RemoveUnit { unit: name.clone() }, Reason::SpecRemoved, after, 0));
    }
    file_steps.extend(removed);
    let mut ready = file_steps.clone();
    if !file_steps.is_empty() {
        ready = vec![b.push(Action::DaemonReload, Reason::UnitFilesChanged, file_steps, 0)];
    }
    if !disable.is_empty() {
        b.push(Action::DisableUnits { units: disable }, Reason::Enablement { enabled: false }, ready.clone(), 0);
    }
    let mut started_after = ready.clone();
    if !enable.is_empty() {
        started_after.push(b.push(
            Action::EnableUnits { units: enable },
            Reason::Enablement { enabled: true },
            ready.clone(),
            0,
        ));
    }
    // A unit's new version starts only once its hook succeeded.
    let mut hook_steps: BTreeMap<String, usize> = BTreeMap::new();
    let mut after_hook = |b: &mut Builder, name: &str| -> Vec<usize> {
        let mut after = started_after.clone();
        if let Some(job) = hooked.get(name) {
            let owner = name.trim_end_matches(".service").to_string();
            let id = *hook_steps.entry(name.to_string()).or_insert_with(|| {
                b.push(Action::RunJob { job: job.clone() }, Reason::Hook { service: owner }, ready.clone(), 0)
            });
            after.push(id);
        }
        after
    };
    for name in restart_after_reload {
        let after = after_hook(b, &name);
        b.push(Action::RestartUnit { unit: name }, Reason::Changed { fields: vec!["unit file".into()] }, after, 0);
    }
    for (name, reason) in start_after_reload {
        let after = after_hook(b, &name);
        b.push(Action::StartUnit { unit: name }, reason, after, 0);
    }
}
