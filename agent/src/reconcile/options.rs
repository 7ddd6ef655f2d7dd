//! What a pass runs with: the host's scope and directories for unit files, and the options
//! of one pass (concurrency, cancellation, backoff, update windows, maintenance locks).

use std::collections::BTreeSet;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

/// Options of a pass.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scope whose objects this tend owns.
    pub scope: String,
    /// How many steps may run at once.
    pub parallel: usize,
    /// Where and how unit files are written.
    pub units: UnitsConfig,
    /// The spec set the pass applies (handed to `tend job run` for hooks).
    pub specs: PathBuf,
    /// Cancelled when the agent stops: steps not yet started are not started (reported as
    /// cancelled), pauses and waits end; steps already acting finish.
    pub stop: CancellationToken,
    /// Objects (services, Timers, images) left alone this pass: the agent's backoff after
    /// repeated failures. Their steps, and steps that wait for them, are not planned.
    pub skip_owners: BTreeSet<String>,
    /// Make changes now even where a service's update window is closed (`tend apply --now`;
    /// never set by the agent).
    pub ignore_windows: bool,
    /// The maintenance lock directory: targets an operator holds are observed and left
    /// alone, and each step holds its target's lock (shared) while it acts.
    pub locks: crate::maintain::locks::LockDir,
    /// Instances and units an interrupted backup stopped and that could not be started
    /// again before the pass: their exits are not crashes.
    pub stopped_by_backup: BTreeSet<String>,
}

/// Where tend writes unit files and their environment files, and what their jobs run.
#[derive(Debug, Clone)]
pub struct UnitsConfig {
    /// The scope (marked in every unit file).
    pub scope: String,
    /// The unit directory (`/etc/systemd/system`).
    pub unit_dir: PathBuf,
    /// Where environment files with secrets go (`/etc/tend/env`), mode 0700.
    pub env_dir: PathBuf,
    /// The state directory (for `tend job run` in Timers' service units).
    pub state_dir: PathBuf,
    /// The tend binary that Timers' service units run.
    pub tend_bin: PathBuf,
    /// The spec set, which Timers' service units hand to `tend job run`.
    pub specs: PathBuf,
    /// How long the hook jobs tend starts itself wait for an engine (not written into unit
    /// files: jobs systemd starts use the default).
    pub timeouts: crate::engine::Timeouts,
}

impl UnitsConfig {
    /// The rendering context.
    pub fn ctx(&self) -> crate::reconcile::unit_files::Context<'_> {
        crate::reconcile::unit_files::Context {
            scope: &self.scope,
            tend_bin: &self.tend_bin,
            state_dir: &self.state_dir,
            env_dir: &self.env_dir,
            specs: &self.specs,
        }
    }
}
