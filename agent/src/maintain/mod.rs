//! Maintenance windows: `tend maintain` takes the pid-lock files of the targets an operator
//! will work on (all or none), runs a command or a shell, and releases them when it exits —
//! or when it is killed, because they are kernel locks. The agent skips a target an
//! operator holds and takes the same lock (shared) while it acts on one, so the two never
//! act on one target at once.
//!
//! This module resolves what operators name (`SERVICE`, `SERVICE/INSTANCE`, a label
//! selector) to lock keys, maps the planner's actions to the keys they act on, and runs the
//! maintenance command.

pub mod locks;

use std::collections::BTreeSet;
use std::process::ExitStatus;
use std::time::Duration;

use tend_specs::Desired;
use tend_specs::service::Runtime;

use crate::cli::output::eoutln;
use crate::maintain::locks::{Exclusive, LockError};
use crate::reconcile::model::instance_name;
use crate::reconcile::plan::Action;

/// Errors of `tend maintain`.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// A named target is not in the specs.
    #[error("unknown target `{target}`: no Service or Timer of that name in the specs{hint}")]
    UnknownTarget {
        /// What was named.
        target: String,
        /// A suggestion, `" (did you mean `web`?)"`, or empty.
        hint: String,
    },
    /// `SERVICE/INSTANCE` names an instance the service does not have.
    #[error("`{target}`: {service} has instances 1 to {replicas}")]
    UnknownInstance {
        /// What was named.
        target: String,
        /// The service.
        service: String,
        /// Its replicas.
        replicas: u32,
    },
    /// A selector is not `KEY=VALUE`.
    #[error("selector `{0}` is not KEY=VALUE")]
    BadSelector(String),
    /// A selector matched nothing.
    #[error("selector `{0}` matches no Service or Timer")]
    EmptySelector(String),
    /// Nothing was named.
    #[error("name at least one target (SERVICE, SERVICE/INSTANCE, a Timer) or --selector KEY=VALUE")]
    NoTargets,
    /// The locks could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The state directory could not record the window.
    #[error("recording the maintenance window")]
    State(#[from] crate::reconcile::state::StateError),
    /// The command could not be started.
    #[error("starting `{command}`")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The lock key of one instance of a docker service (`web-1`), of a systemd service
/// (`web.service`) or of a Timer's job (`nightly.job`).
pub fn service_keys(desired: &Desired, service: &str) -> Option<Vec<String>> {
    if let Some(s) = desired.services.get(service) {
        return Some(match s.spec.runtime {
            Runtime::Systemd => vec![format!("{service}.service")],
            Runtime::Docker => s.instances().into_iter().map(|i| instance_name(service, i)).collect(),
        });
    }
    desired.timers.contains_key(service).then(|| vec![format!("{service}.job")])
}

/// Resolves targets (`SERVICE`, `SERVICE/INSTANCE`, a Timer) and selectors (`app=ims`,
/// matching `metadata.labels`) to lock keys, sorted and without duplicates.
pub fn resolve(desired: &Desired, targets: &[String], selectors: &[String]) -> Result<Vec<String>, MaintainError> {
    if targets.is_empty() && selectors.is_empty() {
        return Err(MaintainError::NoTargets);
    }
    let mut keys = BTreeSet::new();
    for target in targets {
        let (name, instance) = match target.split_once('/') {
            Some((n, i)) => (n, Some(i)),
            None => (target.as_str(), None),
        };
        let Some(all) = service_keys(desired, name) else {
            let names = desired.services.keys().chain(desired.timers.keys());
            // The closest name by edits (a swap counts as one), when it is close.
            let hint = names
                .map(|n| (strsim::osa_distance(n, name), n))
                .filter(|(d, n)| *d <= 2 && *d < n.len().max(name.len()) / 2 + 1)
                .min_by_key(|(d, _)| *d)
                .map(|(_, n)| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            return Err(MaintainError::UnknownTarget { target: target.clone(), hint });
        };
        match instance {
            None => keys.extend(all),
            Some(i) => {
                let replicas = desired.services.get(name).map_or(1, |s| s.spec.replicas);
                let runs_here = |n: &u32| desired.services.get(name).map_or(*n == 1, |s| s.runs_instance(*n));
                let n: u32 = i.parse().ok().filter(runs_here).ok_or_else(|| MaintainError::UnknownInstance {
                    target: target.clone(),
                    service: name.to_string(),
                    replicas,
                })?;
                if desired.services.get(name).is_some_and(|s| s.spec.runtime == Runtime::Docker) {
                    keys.insert(instance_name(name, n));
                } else {
                    keys.extend(all);
                }
            }
        }
    }
    for selector in selectors {
        let (k, v) = selector.split_once('=').ok_or_else(|| MaintainError::BadSelector(selector.clone()))?;
        let services = desired.services.values().filter(|s| s.metadata_labels.get(k).is_some_and(|x| x == v));
        let timers = desired.timers.values().filter(|t| t.metadata_labels.get(k).is_some_and(|x| x == v));
        let names: Vec<&String> = services.map(|s| &s.name).chain(timers.map(|t| &t.name)).collect();
        if names.is_empty() {
            return Err(MaintainError::EmptySelector(selector.clone()));
        }
        for n in names {
            keys.extend(service_keys(desired, n).unwrap_or_default());
        }
    }
    Ok(keys.into_iter().collect())
}

/// The lock key a step acts on, when it acts on one target: an instance (a replacement
/// `NAME-next` counts as its instance), a systemd service's unit, a Timer's units (its job's
/// key). Pulls, networks, volumes, reloads, enablement and waits act on no single target.
pub fn lock_key(action: &Action) -> Option<String> {
    match action {
        Action::Create { name, .. }
        | Action::Start { name, .. }
        | Action::Remove { name, .. }
        | Action::Stop { name, .. }
        | Action::Hold { name, .. } => {
            Some(name.strip_suffix(crate::reconcile::model::NEXT_SUFFIX).unwrap_or(name).to_string())
        }
        Action::Rename { to, .. } => Some(to.clone()),
        Action::WriteUnit { unit, .. }
        | Action::RemoveUnit { unit }
        | Action::StartUnit { unit }
        | Action::RestartUnit { unit }
        | Action::StopUnit { unit } => unit_key(unit),
        Action::RunJob { job } => Some(format!("{job}.job")),
        Action::PullImage { .. }
        | Action::CreateNetwork { .. }
        | Action::CreateVolume { .. }
        | Action::RemoveNetwork { .. }
        | Action::Await { .. }
        | Action::DaemonReload
        | Action::EnableUnits { .. }
        | Action::DisableUnits { .. } => None,
    }
}

/// The lock key of a unit file: `web.service` for a service; a Timer's `x.timer` is its
/// job's `x.job`. (A Timer's job service `x.service` is keyed as a service: the planner
/// never starts it, it only writes and removes it with its timer.)
pub fn unit_key(unit: &str) -> Option<String> {
    match unit.strip_suffix(".timer") {
        Some(stem) => Some(format!("{stem}.job")),
        None => Some(unit.to_string()),
    }
}

/// Records the targets as under maintenance in the state directory, so that whatever the
/// operator stops in the window is started again after it, not held as a crash — also when
/// no pass of the agent sees the window.
pub fn mark_stopped_on_purpose(state_dir: &std::path::Path, keys: &[String]) -> Result<(), MaintainError> {
    let dir = crate::reconcile::state::StateDir::open(state_dir)?;
    let mut state = dir.load()?;
    for key in keys {
        state.stopped_on_purpose.entry(key.clone()).or_insert(crate::reconcile::state::StopCause::Maintenance);
    }
    Ok(dir.save(&state)?)
}

/// Takes the locks and runs `command` (or the user's shell) until it exits or `window`
/// ends (then SIGTERM, and SIGKILL after `grace`). The locks are released when this
/// returns — and by the kernel if this process dies.
pub async fn run_window(
    locks: Exclusive,
    command: &[String],
    window: Option<Duration>,
    grace: Duration,
) -> Result<ExitStatus, MaintainError> {
    let (program, args): (String, Vec<String>) = match command.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => (std::env::var("SHELL").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "/bin/sh".into()), vec![]),
    };
    let shown = std::iter::once(program.as_str()).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
    let mut child = tokio::process::Command::new(&program)
        .args(&args)
        .env("TEND_MAINTENANCE", locks.keys().join(" "))
        .spawn()
        .map_err(|source| MaintainError::Spawn { command: shown.clone(), source })?;
    let status = match window {
        None => child.wait().await,
        Some(window) => {
            tokio::select! {
                s = child.wait() => s,
                () = tokio::time::sleep(window) => {
                    eoutln!("tend maintain: the window of {} is over: stopping `{shown}`", crate::support::time::format_duration(window));
                    if let Some(pid) = child.id() {
                        signal(pid, rustix::process::Signal::TERM);
                    }
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(s) => s,
                        Err(_) => {
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    }
                }
            }
        }
    };
    drop(locks);
    status.map_err(|source| MaintainError::Spawn { command: shown, source })
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn desired() -> Desired {
        let yaml = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: web, labels: {app: ims}}\nspec: {image: 'x:1', replicas: 3}\n---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: db, labels: {app: ims}}\nspec: {runtime: systemd, exec: [/bin/sleep, infinity]}\n---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: other}\nspec: {image: 'x:1'}\n---\napiVersion: tend/v1\nkind: Timer\nmetadata: {name: nightly, labels: {app: ims}}\nspec: {schedule: daily, job: {runtime: host, exec: [/bin/true]}}\n";
        tend_specs::load_str(Path::new("t.yaml"), yaml).expect("valid")
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn services_instances_timers_and_selectors_resolve_to_lock_keys() {
        let d = desired();
        assert_eq!(resolve(&d, &s(&["web"]), &[]).expect("web"), s(&["web-1", "web-2", "web-3"]));
        assert_eq!(resolve(&d, &s(&["web/2"]), &[]).expect("web/2"), s(&["web-2"]));
        assert_eq!(resolve(&d, &s(&["db"]), &[]).expect("db"), s(&["db.service"]));
        assert_eq!(resolve(&d, &s(&["nightly"]), &[]).expect("timer"), s(&["nightly.job"]));
        assert_eq!(
            resolve(&d, &[], &s(&["app=ims"])).expect("selector"),
            s(&["db.service", "nightly.job", "web-1", "web-2", "web-3"])
        );
        // Duplicates collapse; the order is the lock order (sorted).
        assert_eq!(resolve(&d, &s(&["web/1", "web"]), &[]).expect("dup"), s(&["web-1", "web-2", "web-3"]));
    }

    #[test]
    fn unknown_targets_are_errors_with_a_suggestion() {
        let d = desired();
        let e = resolve(&d, &s(&["wbe"]), &[]).expect_err("unknown").to_string();
        assert!(e.contains("unknown target `wbe`") && e.contains("did you mean `web`?"), "{e}");
        let e = resolve(&d, &s(&["web/4"]), &[]).expect_err("instance").to_string();
        assert!(e.contains("web has instances 1 to 3"), "{e}");
        assert!(matches!(resolve(&d, &[], &s(&["app"])), Err(MaintainError::BadSelector(_))));
        assert!(matches!(resolve(&d, &[], &s(&["app=none"])), Err(MaintainError::EmptySelector(_))));
        assert!(matches!(resolve(&d, &[], &[]), Err(MaintainError::NoTargets)));
    }

    #[test]
    fn steps_lock_the_target_they_act_on() {
        let create = Action::Create { service: "web".into(), instance: 1, name: "web-1-next".into() };
        assert_eq!(lock_key(&create).as_deref(), Some("web-1"));
        assert_eq!(lock_key(&Action::RestartUnit { unit: "db.service".into() }).as_deref(), Some("db.service"));
        assert_eq!(lock_key(&Action::StartUnit { unit: "nightly.timer".into() }).as_deref(), Some("nightly.job"));
        assert_eq!(lock_key(&Action::DaemonReload), None);
    }
}
