//! What the boot before this one means. The agent keeps a marker in the state directory
//! (`agent-run.json`: the boot's id and whether the agent is running). A boot is unclean
//! when the agent was running in another boot and never stopped cleanly (the host went down
//! under it): services marked `holdAfterUncleanBoot` that are not running are held. It
//! follows a clean shutdown when the agent recorded its clean stop in another boot: what
//! the shutdown stopped is started again, also under `restart: hold`. Both are recorded in
//! the state at the first pass that can observe the engines the specs need.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tend_specs::Desired;
use tracing::{error, info, warn};

use crate::daemon::AgentError;
use crate::daemon::engine_health::LiveEngines;
use crate::daemon::shared::{Shared, lock};
use crate::reconcile::apply::Options;
use crate::reconcile::model::{Observed, RunState, UnitActive, instance_name};
use crate::reconcile::state::{self, Hold, StateDir};

/// The clean-shutdown marker: which boot the agent last ran in, and whether it stopped
/// cleanly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootMarker {
    /// `/proc/sys/kernel/random/boot_id` of that boot.
    pub boot_id: String,
    /// True while the agent runs; false after a clean shutdown.
    pub running: bool,
}

const MARKER: &str = "agent-run.json";

/// This boot's id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Whether this boot followed an unclean one: the agent was running in another boot and
/// never recorded a clean shutdown (the host went down under it).
pub fn unclean_boot(previous: Option<&BootMarker>, boot_id: &str) -> bool {
    previous.is_some_and(|m| m.running && m.boot_id != boot_id)
}

/// Whether this boot followed a clean shutdown of the host: the agent ran in another boot
/// and recorded its clean stop there (a host shutting down stops tend first, then Docker
/// stops the containers).
pub fn clean_reboot(previous: Option<&BootMarker>, boot_id: &str) -> bool {
    previous.is_some_and(|m| !m.running && m.boot_id != boot_id)
}

fn read_marker(state_dir: &Path) -> Option<BootMarker> {
    let text = std::fs::read(state_dir.join(MARKER)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_marker(state_dir: &Path, marker: &BootMarker) -> Result<(), AgentError> {
    use std::io::Write;
    let path = state_dir.join(MARKER);
    let tmp = state_dir.join(format!(".{MARKER}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(marker).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|source| AgentError::Marker { path, source })
}

/// What the first passes of a boot have to do about the boot before it, until done.
#[derive(Debug)]
pub(super) struct Boot {
    /// The host went down under the agent: hold what `holdAfterUncleanBoot` marks.
    unclean: bool,
    /// The host was shut down cleanly: what it stopped is started again, not held.
    after_shutdown: bool,
    /// This boot's id.
    id: String,
}

impl Boot {
    /// Reads the marker the agent left, says what it means, and marks the agent running
    /// in this boot — except when the boot before still has to be recorded (the first pass
    /// that does so marks it): an agent that dies before that still knows at its restart.
    pub(super) fn start(shared: &Shared) -> Result<Self, AgentError> {
        let state_dir = &shared.settings.host.state_dir;
        let previous = read_marker(state_dir);
        let id = boot_id();
        let unclean = unclean_boot(previous.as_ref(), &id);
        let after_shutdown = clean_reboot(previous.as_ref(), &id);
        if unclean {
            warn!(
                "this boot follows one where the host went down while tend ran: holding services marked holdAfterUncleanBoot"
            );
            lock(&shared.agent).unclean_boot = true;
        } else if !after_shutdown {
            write_marker(state_dir, &BootMarker { boot_id: id.clone(), running: true })?;
        }
        Ok(Self { unclean, after_shutdown, id })
    }

    /// Before a pass applies anything: places the unclean-boot holds, or marks what a clean
    /// shutdown stopped, once (then marks the agent running in this boot). An error (logged
    /// here) means nothing may be applied this pass; the next one tries again.
    pub(super) async fn settle(
        &mut self,
        engines: &Arc<LiveEngines>,
        options: &Options,
        desired: &Desired,
        state_dir: &StateDir,
    ) -> Result<(), String> {
        let running = BootMarker { boot_id: self.id.clone(), running: true };
        if self.unclean {
            if let Err(e) = place_unclean_holds(engines, options, desired, state_dir).await {
                error!(error = %e, "placing unclean-boot holds; nothing applied");
                return Err(e);
            }
            if write_marker(state_dir.path(), &running).is_ok() {
                self.unclean = false;
            }
        }
        if self.after_shutdown {
            let marked = mark_shutdown_stops(engines, options, desired, state_dir)
                .await
                .and_then(|()| write_marker(state_dir.path(), &running).map_err(|e| crate::support::chain(&e)));
            match marked {
                Ok(()) => self.after_shutdown = false,
                Err(e) => {
                    error!(error = %e, "marking what the host's shutdown stopped; nothing applied");
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// At a clean stop: records it, unless the unclean-boot holds were never placed (the
    /// next start, in this boot or another, must still see an unclean one).
    pub(super) fn finish(&self, state_dir: &Path) -> Result<(), AgentError> {
        if self.unclean {
            return Ok(());
        }
        write_marker(state_dir, &BootMarker { boot_id: self.id.clone(), running: false })
    }
}

/// The containers of docker services that a clean shutdown of the host stopped: at the first
/// pass of the boot that follows it, every instance that is not running and not held
/// (Docker starts no container of tend's by itself: their restart policy is `no`).
fn shutdown_stops(desired: &Desired, observed: &Observed, state: &state::State) -> Vec<String> {
    desired
        .docker_services()
        .flat_map(|s| s.instances().into_iter().map(|i| instance_name(&s.name, i)))
        .filter(|name| !state.holds.contains_key(name))
        .filter(|name| {
            observed.containers.iter().any(|c| c.name == *name && matches!(c.state, RunState::Exited | RunState::Dead))
        })
        .collect()
}

/// Holds for the services marked `holdAfterUncleanBoot` that are not running now.
fn unclean_boot_holds(desired: &Desired, observed: &Observed, now_ms: u64) -> BTreeMap<String, Hold> {
    let mut holds = BTreeMap::new();
    for s in desired.services.values().filter(|s| s.spec.hold_after_unclean_boot) {
        let hold = |instance| Hold {
            service: s.name.clone(),
            instance,
            since_ms: now_ms,
            exit_code: None,
            unclean_boot: true,
        };
        if s.spec.runtime == tend_specs::service::Runtime::Systemd {
            let unit = format!("{}.service", s.name);
            let running = observed
                .units
                .as_ref()
                .and_then(|u| u.get(&unit))
                .is_some_and(|u| matches!(u.active, UnitActive::Active | UnitActive::Activating));
            if !running {
                holds.insert(unit, hold(1));
            }
            continue;
        }
        for i in s.instances() {
            let name = instance_name(&s.name, i);
            let running = observed.containers.iter().any(|c| c.name == name && c.state == RunState::Running);
            if !running {
                holds.insert(name, hold(i));
            }
        }
    }
    holds
}

/// Observes, then records in the state what the boot before this one means (`mark`). Not
/// before Docker answers when the specs have docker services: what it would show decides
/// which containers are held or started again, so the marks wait for it (the pass fails,
/// and the next one tries again).
async fn record_boot(
    engines: &Arc<LiveEngines>,
    options: &Options,
    desired: &Desired,
    state_dir: &StateDir,
    mark: impl FnOnce(&Observed, &mut state::State),
) -> Result<(), String> {
    if engines.docker.is_none() && desired.docker_services().next().is_some() {
        return Err("Docker does not answer yet: what the last boot means for its containers waits for it".into());
    }
    let observed = crate::reconcile::observe::observe_all(engines, options, desired)
        .await
        .map_err(|e| crate::support::chain(&e))?;
    let mut st = state_dir.load().map_err(|e| crate::support::chain(&e))?;
    mark(&observed, &mut st);
    state_dir.save(&st).map_err(|e| crate::support::chain(&e))
}

async fn place_unclean_holds(
    engines: &Arc<LiveEngines>,
    options: &Options,
    desired: &Desired,
    state_dir: &StateDir,
) -> Result<(), String> {
    record_boot(engines, options, desired, state_dir, |observed, st| {
        for (name, hold) in unclean_boot_holds(desired, observed, crate::support::now_ms()) {
            warn!(instance = %name, "held after an unclean boot: `tend release {name}` starts it");
            st.holds.entry(name).or_insert(hold);
        }
    })
    .await
}

/// Marks the instances a clean shutdown of the host stopped ([`shutdown_stops`]) as stopped
/// on purpose: started again, whatever their restart policy says of crashes.
async fn mark_shutdown_stops(
    engines: &Arc<LiveEngines>,
    options: &Options,
    desired: &Desired,
    state_dir: &StateDir,
) -> Result<(), String> {
    record_boot(engines, options, desired, state_dir, |observed, st| {
        for name in shutdown_stops(desired, observed, st) {
            info!(instance = %name, "stopped by the host's clean shutdown: starting it again");
            st.stopped_on_purpose.insert(name, state::StopCause::HostShutdown);
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::test_support::{container, desired, service};

    #[test]
    fn an_unclean_boot_is_another_boot_that_never_stopped_cleanly() {
        let running = |id: &str| BootMarker { boot_id: id.into(), running: true };
        let clean = |id: &str| BootMarker { boot_id: id.into(), running: false };
        assert!(unclean_boot(Some(&running("old")), "new"));
        assert!(!unclean_boot(Some(&clean("old")), "new"));
        // The agent crashed but the host did not go down: not an unclean boot.
        assert!(!unclean_boot(Some(&running("same")), "same"));
        assert!(!unclean_boot(None, "new"));
    }

    #[test]
    fn a_clean_reboot_is_another_boot_whose_agent_stopped_cleanly() {
        let marker = |id: &str, running| BootMarker { boot_id: id.into(), running };
        assert!(clean_reboot(Some(&marker("old", false)), "new"));
        assert!(!clean_reboot(Some(&marker("old", true)), "new"), "unclean");
        assert!(!clean_reboot(Some(&marker("same", false)), "same"), "the agent restarted, not the host");
        assert!(!clean_reboot(None, "new"));
    }

    #[test]
    fn a_clean_shutdown_stopped_every_exited_instance_that_is_not_held() {
        let d = desired(&[service("db", "  replicas: 2\n  restart: {policy: hold}\n"), service("web", "")].concat());
        let observed = Observed {
            containers: vec![
                container("db", 1, RunState::Exited),
                container("db", 2, RunState::Exited),
                container("web", 1, RunState::Running),
            ],
            ..Default::default()
        };
        let mut st = state::State::default();
        st.holds.insert(
            "db-2".into(),
            Hold { service: "db".into(), instance: 2, since_ms: 1, exit_code: Some(1), unclean_boot: false },
        );
        assert_eq!(shutdown_stops(&d, &observed, &st), ["db-1"]);
    }

    #[test]
    fn unclean_boot_holds_only_marked_services_that_are_not_running() {
        let d = desired(&[service("db", "  holdAfterUncleanBoot: true\n  replicas: 2\n"), service("web", "")].concat());
        let mut observed = Observed::default();
        observed.containers.push(container("db", 1, RunState::Exited));
        observed.containers.push(container("db", 2, RunState::Running));
        observed.containers.push(container("web", 1, RunState::Exited));
        let holds = unclean_boot_holds(&d, &observed, 7);
        assert_eq!(holds.keys().collect::<Vec<_>>(), ["db-1"]);
        assert!(holds["db-1"].unclean_boot);
    }
}
