//! Observing live state: one snapshot of tend's containers, networks, volumes and images
//! (a few list calls filtered by tend's labels), of the unit files and units tend cares
//! about, and of the targets operators hold for maintenance. Observation is complete or it
//! fails: a pass never plans from a partial view.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tend_specs::Desired;
use tend_specs::service::MountSource;

use crate::engine::systemd::{ActiveState, SystemdError, UnitEngine, UnitState};
use crate::engine::{ContainerEngine, EngineError, Engines};
use crate::reconcile::model::{Observed, Unit, UnitActive, instance_name};
use crate::reconcile::options::Options;

/// Errors of observing: nothing is planned from what could not be seen.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Observing Docker failed.
    #[error("observing live state (nothing was changed)")]
    Docker(#[source] EngineError),
    /// Observing systemd's units failed.
    #[error("observing systemd units (nothing was changed)")]
    Units(#[source] SystemdError),
    /// Reading the maintenance locks failed.
    #[error("reading maintenance locks (nothing was changed)")]
    Locks(#[source] crate::maintain::locks::LockError),
}

/// What to observe for `desired`: instance names (for name conflicts), images, volumes.
fn observe_args(desired: &Desired) -> (BTreeSet<String>, BTreeSet<String>, bool) {
    let mut wanted = BTreeSet::new();
    let mut images = BTreeSet::new();
    let mut volumes = false;
    for s in desired.docker_services() {
        for i in s.instances() {
            wanted.insert(instance_name(&s.name, i));
        }
        images.extend(s.spec.image.clone());
        volumes |= s.spec.volumes.iter().any(|v| matches!(v.source, MountSource::Volume(_)));
    }
    (wanted, images, volumes)
}

/// Observes Docker for `desired` in one snapshot.
pub async fn observe<E: ContainerEngine>(engine: &E, scope: &str, desired: &Desired) -> Result<Observed, ObserveError> {
    let (wanted, images, volumes) = observe_args(desired);
    let mut observed = engine.observe(scope, &wanted, &images, volumes).await.map_err(ObserveError::Docker)?;
    // A start-first replacement creates `SERVICE-N-next`: another's container under that
    // name is a conflict too. Looked for only when such a replacement is due (it costs a
    // listing of every container).
    let next = next_names_due(desired, &observed);
    if !next.is_empty() {
        let more = engine.observe(scope, &next, &BTreeSet::new(), false).await.map_err(ObserveError::Docker)?;
        observed.foreign.extend(more.foreign);
    }
    Ok(observed)
}

/// The `-next` names of the start-first replacements `desired` would make of what is
/// observed: instances whose template or image changed, without a `-next` of their own.
fn next_names_due(desired: &Desired, observed: &Observed) -> BTreeSet<String> {
    use tend_specs::service::RolloutOrder;
    let owned: BTreeSet<&str> = observed.containers.iter().map(|c| c.name.as_str()).collect();
    let mut due = BTreeSet::new();
    for s in desired.docker_services().filter(|s| s.spec.rollout.order == RolloutOrder::StartFirst) {
        let image_id =
            s.spec.image.as_deref().and_then(|i| observed.images.get(&crate::reconcile::model::normalize_image(i)));
        for c in observed.containers.iter().filter(|c| c.service == s.name && c.instance >= 1) {
            let next = format!("{}{}", instance_name(&s.name, c.instance), crate::reconcile::model::NEXT_SUFFIX);
            let outdated = c.hash != s.hash || image_id.is_some_and(|id| *id != c.image_id && !c.image_id.is_empty());
            if c.name == instance_name(&s.name, c.instance) && outdated && !owned.contains(next.as_str()) {
                due.insert(next);
            }
        }
    }
    due
}

/// What of the specs cannot be had where systemd is not PID 1 (`why`): their systemd
/// services. Scheduled Timers (and Backups) are not in it: the agent's own scheduler runs
/// them then, and on-demand Timers run through `tend job run`.
pub fn unmet_without_systemd(desired: &Desired, why: &str) -> Option<String> {
    let n = desired.systemd_services().count();
    (n > 0).then(|| format!("{why}: {n} systemd service(s) cannot run here (everything else is handled)"))
}

/// Whether the specs need systemd units (systemd services or Timers).
pub fn needs_units(desired: &Desired) -> bool {
    desired.systemd_services().next().is_some() || !desired.timers.is_empty()
}

/// The enabled Timers with a schedule (those of scheduled Backups included): systemd timer
/// units where systemd runs, the agent's own scheduler where it does not.
pub fn scheduled_timers(desired: &Desired) -> usize {
    desired.timers.values().filter(|t| t.spec.enabled && t.spec.schedule.is_some()).count()
}

/// The unit file names the specs would write.
pub(crate) fn wanted_units(desired: &Desired) -> BTreeSet<String> {
    let services = desired.systemd_services().map(|s| format!("{}.service", s.name));
    let timers = desired.timers.values().flat_map(|t| [format!("{}.service", t.name), format!("{}.timer", t.name)]);
    services.chain(timers).collect()
}

/// Observes the unit directory and the states of the units tend cares about (those marked
/// as tend's, and those the specs would write), in one snapshot. Other units in the
/// directory (masked units, templates, the distribution's) are not looked at.
pub async fn observe_units<U: UnitEngine>(
    engine: &U,
    unit_dir: &Path,
    desired: &Desired,
) -> Result<BTreeMap<String, Unit>, ObserveError> {
    let wanted = wanted_units(desired);
    let mut files = engine.list_unit_files(unit_dir).await.map_err(ObserveError::Units)?;
    files.retain(|f| wanted.contains(&f.name) || !f.marks.is_empty());
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    let states = engine.states(&names).await.map_err(ObserveError::Units)?;
    let states: BTreeMap<&str, &UnitState> = states.iter().map(|s| (s.name.as_str(), s)).collect();
    Ok(files
        .iter()
        .map(|f| {
            let st = states.get(f.name.as_str());
            let active = match st.map(|s| &s.active_state) {
                Some(ActiveState::Active | ActiveState::Reloading) => UnitActive::Active,
                Some(ActiveState::Activating) => UnitActive::Activating,
                Some(ActiveState::Deactivating) => UnitActive::Deactivating,
                Some(ActiveState::Failed) => UnitActive::Failed,
                _ => UnitActive::Inactive,
            };
            let unit = Unit {
                name: f.name.clone(),
                content: f.content.clone(),
                scope: f.marks.get("X-Tend-Scope").cloned(),
                active,
                enabled: st.is_some_and(|s| s.unit_file_state == "enabled"),
                exit_status: st.and_then(|s| s.exec_main_status).filter(|_| active != UnitActive::Active),
            };
            (f.name.clone(), unit)
        })
        .collect())
}

/// The targets operators hold for maintenance now (`tend maintain`), by lock key.
pub fn observe_maintenance(
    locks: &crate::maintain::locks::LockDir,
) -> Result<BTreeMap<String, crate::reconcile::model::Maintenance>, ObserveError> {
    // Non-blocking lock attempts on a handful of small files: no need for a blocking thread.
    let held = locks.list().map_err(ObserveError::Locks)?;
    Ok(held.into_iter().map(|(key, h)| (key, maintenance_of(h))).collect())
}

/// The planner's view of a lock holder.
pub fn maintenance_of(h: crate::maintain::locks::Holder) -> crate::reconcile::model::Maintenance {
    crate::reconcile::model::Maintenance { user: h.user, since_ms: h.since_ms, until_ms: h.until_ms, reason: h.reason }
}

/// Observes every engine the pass has. Docker is observed when it is there (and must be
/// when the specs hold docker services); systemd when it is there.
pub async fn observe_all<E: ContainerEngine, U: UnitEngine>(
    engines: &Engines<E, U>,
    options: &Options,
    desired: &Desired,
) -> Result<Observed, ObserveError> {
    let mut observed = match &engines.docker {
        Some(docker) => observe(docker.as_ref(), &options.host.scope, desired).await?,
        None => Observed::default(),
    };
    if let Some(systemd) = &engines.systemd {
        observed.units = Some(observe_units(systemd.as_ref(), &options.host.unit_dir, desired).await?);
    }
    observed.maintenance = observe_maintenance(&options.host.locks)?;
    Ok(observed)
}
