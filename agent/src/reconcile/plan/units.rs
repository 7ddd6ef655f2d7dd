//! Planning for systemd units: the unit files tend renders for systemd services and Timers,
//! against the unit files and states systemd reports. Pure like the rest of the planner:
//! contents are compared here, and rendered again by the executor when it writes them.

use std::collections::BTreeMap;

use tend_specs::service::RestartPolicy;
use tend_specs::{Desired, Service};

use super::{Action, Builder, Cx, Note, Reason};
use crate::reconcile::model::{Unit, UnitActive};
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

/// The unit steps planned so far, before the daemon-reload that orders them.
#[derive(Default)]
struct Acc {
    /// Unit files written or removed: the daemon-reload waits for them.
    file_steps: Vec<usize>,
    /// Running units whose new file they pick up by a restart.
    restart_after_reload: Vec<String>,
    /// Units whose new version starts in this pass, with their hook.
    hooked: BTreeMap<String, String>,
    /// Units to start, and why.
    start_after_reload: Vec<(String, Reason)>,
    enable: Vec<String>,
    disable: Vec<String>,
}

/// The lock key of a unit: a Timer's units are its job's (`x.job`); a service's is its
/// unit's name.
fn lock_key(desired: &Desired, unit: &str, owner: Option<&str>) -> String {
    match owner.filter(|o| desired.timers.contains_key(*o)) {
        Some(timer) => format!("{timer}.job"),
        None => match unit.strip_suffix(".timer") {
            Some(stem) => format!("{stem}.job"),
            None => unit.to_string(),
        },
    }
}

fn is_running(u: &Unit) -> bool {
    matches!(u.active, UnitActive::Active | UnitActive::Activating)
}

/// Adds the unit steps to `b`: writes and removals, one daemon-reload, then enablement and
/// starts. `units` is what systemd reports for the unit directory. A target under
/// maintenance is left alone entirely.
pub(super) fn plan_units(cx: &Cx<'_>, b: &mut Builder, units: &BTreeMap<String, Unit>, ctx: &Context<'_>) {
    let want = wanted(cx.desired, ctx);
    let mut acc = Acc::default();
    for (name, w) in &want {
        let key = lock_key(cx.desired, name, Some(&w.owner));
        if let Some(window) = cx.observed.maintenance.get(&key) {
            // A Timer's two units share one key: one note.
            if !b.notes.iter().any(|n| matches!(n, Note::Maintenance { target, .. } if *target == key)) {
                b.notes.push(Note::Maintenance { service: w.owner.clone(), target: key, window: window.clone() });
            }
            continue;
        }
        match units.get(name) {
            Some(u) if u.scope.as_deref() != Some(ctx.scope) => {
                b.notes.push(Note::UnitConflict { unit: name.clone(), scope: u.scope.clone() });
            }
            None => {
                let write = Action::WriteUnit { unit: name.clone(), owner: w.owner.clone() };
                acc.file_steps.push(b.push(write, Reason::Missing, vec![], 0));
                if w.enable {
                    acc.enable.push(name.clone());
                }
                if w.run {
                    acc.start_after_reload.push((name.clone(), Reason::Missing));
                    if let Some(job) = &w.hook {
                        acc.hooked.insert(name.clone(), job.clone());
                    }
                }
            }
            Some(u) => existing(cx, b, name, w, u, &mut acc),
        }
    }
    removed(cx, b, units, &want, ctx, &mut acc);
    reload_and_start(b, acc);
}

/// A unit of tend's that exists: enabled or disabled as wanted, its file rewritten when it
/// changed (a running unit restarted for it), and started when it should run and does not.
fn existing(cx: &Cx<'_>, b: &mut Builder, name: &str, w: &Want, u: &Unit, acc: &mut Acc) {
    if w.enable && !u.enabled {
        acc.enable.push(name.to_string());
    } else if !w.enable && u.enabled {
        acc.disable.push(name.to_string());
    }
    if u.content != w.content {
        // A running unit's new file waits for its service's update window, and its restart
        // with it, so the file on disk is always the one that runs.
        if w.run
            && is_running(u)
            && let Some(note) = cx.windows.get(&w.owner)
        {
            if !b.notes.contains(note) {
                b.notes.push(note.clone());
            }
            return;
        }
        let write = Action::WriteUnit { unit: name.to_string(), owner: w.owner.clone() };
        acc.file_steps.push(b.push(write, Reason::Changed { fields: vec!["unit file".into()] }, vec![], 0));
        // A running unit picks up its new file by a restart; a stopped one that should run
        // is started below.
        if let (true, Some(job)) = (w.run, &w.hook) {
            acc.hooked.insert(name.to_string(), job.clone());
        }
        if w.run && is_running(u) {
            acc.restart_after_reload.push(name.to_string());
            return;
        }
    }
    if w.run && matches!(u.active, UnitActive::Inactive | UnitActive::Failed) {
        stopped(cx, b, name, w, u, acc);
    }
}

/// A unit that should run and does not: held, started again (after a drain, when stopped on
/// purpose, or as its restart policy says), or left exited.
fn stopped(cx: &Cx<'_>, b: &mut Builder, name: &str, w: &Want, u: &Unit, acc: &mut Acc) {
    let state = cx.state;
    let code = u.exit_status.map(i64::from);
    let owner = w.owner.clone();
    let name = name.to_string();
    if let Some(hold) = state.holds.get(&name) {
        // Held (after an exit, or after an unclean boot): stays down.
        let exit_code = hold.exit_code.or(code);
        let (since_ms, unclean_boot) = (hold.since_ms, hold.unclean_boot);
        b.notes.push(Note::Held { service: owner, name, exit_code, since_ms, unclean_boot });
        return;
    }
    if state.stopped_by_drain.contains(&name) {
        // Stopped by a drain that is lifted: started again, whatever the policy says.
        acc.start_after_reload.push((name, Reason::Undrained));
        return;
    }
    if let Some(cause) = state.stopped_on_purpose.get(&name)
        && w.restart != Some(RestartPolicy::Never)
    {
        // Stopped on purpose, not crashed: started again.
        acc.start_after_reload.push((name, Reason::StoppedOnPurpose { cause: *cause }));
        return;
    }
    match w.restart {
        Some(RestartPolicy::Hold) if !state.released.contains_key(&name) => {
            let hold = Action::Hold { service: owner, instance: 1, name, exit_code: code };
            b.push(hold, Reason::UnexpectedExit { code }, vec![], 0);
        }
        Some(policy @ RestartPolicy::Never) => b.notes.push(Note::Exited { service: owner, name, code, policy }),
        Some(policy @ RestartPolicy::OnFailure) if u.active == UnitActive::Inactive => {
            b.notes.push(Note::Exited { service: owner, name, code, policy });
        }
        _ => acc.start_after_reload.push((name, Reason::Exited { code, attempt: 1 })),
    }
}

/// Units tend wrote for specs that are gone: stopped, disabled, removed.
fn removed(
    cx: &Cx<'_>,
    b: &mut Builder,
    units: &BTreeMap<String, Unit>,
    want: &BTreeMap<String, Want>,
    ctx: &Context<'_>,
    acc: &mut Acc,
) {
    let mut removals = Vec::new();
    for (name, u) in units {
        if want.contains_key(name) || u.scope.as_deref() != Some(ctx.scope) {
            continue;
        }
        let key = lock_key(cx.desired, name, None);
        if let Some(window) = cx.observed.maintenance.get(&key) {
            let service = name.rsplit_once('.').map_or(name.as_str(), |(stem, _)| stem).to_string();
            b.notes.push(Note::Maintenance { service, target: key, window: window.clone() });
            continue;
        }
        let mut after = vec![];
        if is_running(u) {
            after.push(b.push(Action::StopUnit { unit: name.clone() }, Reason::SpecRemoved, vec![], 0));
        }
        if u.enabled {
            let disable = Action::DisableUnits { units: vec![name.clone()] };
            after.push(b.push(disable, Reason::SpecRemoved, after.clone(), 0));
        }
        removals.push(b.push(Action::RemoveUnit { unit: name.clone() }, Reason::SpecRemoved, after, 0));
    }
    acc.file_steps.extend(removals);
}

/// One daemon-reload after every file step, then enablement, hooks, restarts and starts.
fn reload_and_start(b: &mut Builder, acc: Acc) {
    let Acc { file_steps, restart_after_reload, hooked, start_after_reload, enable, disable } = acc;
    let mut ready = file_steps.clone();
    if !file_steps.is_empty() {
        ready = vec![b.push(Action::DaemonReload, Reason::UnitFilesChanged, file_steps, 0)];
    }
    if !disable.is_empty() {
        b.push(Action::DisableUnits { units: disable }, Reason::Enablement { enabled: false }, ready.clone(), 0);
    }
    let mut started_after = ready.clone();
    if !enable.is_empty() {
        let enable = Action::EnableUnits { units: enable };
        started_after.push(b.push(enable, Reason::Enablement { enabled: true }, ready.clone(), 0));
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
