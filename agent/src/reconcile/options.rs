//! What a pass runs with: the host ([`crate::host::Host`]) and the options of one pass
//! (the spec set, concurrency, cancellation, backoff, update windows).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::host::Host;

/// Options of a pass.
#[derive(Debug, Clone)]
pub struct Options {
    /// The host: scope, directories, the binary units run, engine timeouts.
    pub host: Host,
    /// How many steps may run at once.
    pub parallel: usize,
    /// The spec set the pass applies (handed to `tend job run` by hooks and Timers' units).
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
    /// Instances and units an interrupted backup stopped and that could not be started
    /// again before the pass: their exits are not crashes.
    pub stopped_by_backup: BTreeSet<String>,
    /// Placed services whose running instances wait for this node's turn in the cluster's
    /// rollout (the agent's; none outside a cluster), with the note that says so.
    pub gated: BTreeMap<String, crate::reconcile::plan::Note>,
}

impl Options {
    /// The options of a pass on `host` of the set read from `specs`, `parallel` steps at a
    /// time, nothing skipped.
    pub fn new(host: Host, specs: PathBuf, parallel: usize, stop: CancellationToken) -> Options {
        Options {
            host,
            parallel,
            specs,
            stop,
            skip_owners: BTreeSet::new(),
            ignore_windows: false,
            stopped_by_backup: BTreeSet::new(),
            gated: BTreeMap::new(),
        }
    }

    /// How this pass renders unit files.
    pub fn unit_context(&self) -> crate::reconcile::unit_files::Context<'_> {
        self.host.unit_context(&self.specs)
    }
}
