//! The host as tend runs on it: the scope it owns, where its state, maintenance locks, unit
//! files and environment files live, the binary Timers' units run, and how long it waits
//! for an engine. One value, built once by the command line or the agent from its options
//! and configuration file, and handed to everything that needs a piece of it: passes,
//! backups, jobs, the preparation of a spec set.

use std::path::{Path, PathBuf};

use tend_specs::Desired;

use crate::engine::Timeouts;
use crate::maintain::locks::LockDir;

/// The host's configuration.
#[derive(Debug, Clone)]
pub struct Host {
    /// The scope this tend owns: objects labelled `tend.scope=SCOPE`.
    pub scope: String,
    /// The state directory (holds, restart history, job histories, the secrets' salt).
    pub state_dir: PathBuf,
    /// The maintenance lock directory.
    pub locks: LockDir,
    /// Where unit files of systemd services and Timers go.
    pub unit_dir: PathBuf,
    /// Where environment files with secrets of systemd services go (mode 0700).
    pub env_dir: PathBuf,
    /// This binary: Timers' units, hooks and scheduled Backups run it.
    pub tend_bin: PathBuf,
    /// How long to wait for an engine to answer.
    pub timeouts: Timeouts,
    /// The agent's configuration file, when it is not the default one: the runs of
    /// `runOn: leader` Timers that the agent's units and scheduler start read the cluster
    /// from it (`tend job run --config`).
    pub agent_config: Option<PathBuf>,
}

impl Host {
    /// Prepares a spec set read from `specs` for this host: scheduled Backups and drills
    /// become Timers whose jobs run this binary with this host's scope and directories, and
    /// placed services run the slots a cluster of one gives this node (a cluster member's
    /// agent assigns its own slots over that before each pass). The command line and the
    /// agent both call it, once per set.
    pub fn prepare(&self, desired: &mut Desired, specs: &Path) {
        tend_specs::scheduled::add_backup_timers(desired, |command, name| self.backup_job(command, name, specs));
        crate::cluster::place_locally(desired);
    }

    /// `tend … backup COMMAND NAME --specs SPECS` with this host's scope and directories.
    fn backup_job(&self, command: &str, name: &str, specs: &Path) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            path(&self.tend_bin),
            "--scope".into(),
            self.scope.clone(),
            "--state-dir".into(),
            path(&self.state_dir),
            "--lock-dir".into(),
            path(self.locks.dir()),
            "backup".into(),
            command.into(),
            name.into(),
            "--specs".into(),
            path(specs),
        ]
    }

    /// How unit files for the set read from `specs` are rendered.
    pub fn unit_context<'a>(&'a self, specs: &'a Path) -> crate::reconcile::unit_files::Context<'a> {
        crate::reconcile::unit_files::Context {
            scope: &self.scope,
            tend_bin: &self.tend_bin,
            state_dir: &self.state_dir,
            env_dir: &self.env_dir,
            specs,
            agent_config: self.agent_config.as_deref(),
        }
    }
}
