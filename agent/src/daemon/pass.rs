//! One pass of the agent: connect what is not connected, put a pending spec set in use
//! (unless the mass-removal guard stops it), settle what the boot before this one means,
//! apply — the same pass as `tend apply` — and record how it went. A pass that cannot
//! observe an engine the specs need plans nothing from what it could not see.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{Instrument, error, info_span};

use crate::daemon::backoff::Backoffs;
use crate::daemon::boot::Boot;
use crate::daemon::engine_health::{
    Engine, LiveEngines, UNAVAILABLE, connect_engines, docker_unreachable, lose_docker, note_engine,
    pass_engine_failure, problem_line, unresponsive, without,
};
use crate::daemon::record::{fail_pass, record_report};
use crate::daemon::shared::{Shared, lock};
use crate::daemon::spec_set::{SpecSet, accept_or_block, short};
use crate::reconcile::apply::{self, ApplyError, Report};
use crate::reconcile::state::{StateDir, StateError};

/// Runs one pass. `pending`: a new spec set, put in use first (it stays pending when it
/// could not be checked); `backoff`: objects left out, updated with the outcome.
pub(super) async fn run(shared: &Arc<Shared>, pending: &mut Option<SpecSet>, backoff: &mut Backoffs, boot: &mut Boot) {
    let started = Instant::now();
    connect_engines(shared).await;
    let engines = shared.engines();
    let span = info_span!("agent-pass", commit = tracing::field::Empty);
    converge(shared, &engines, pending, backoff, boot, started).instrument(span).await;
}

async fn converge(
    shared: &Arc<Shared>,
    engines: &Arc<LiveEngines>,
    pending: &mut Option<SpecSet>,
    backoff: &mut Backoffs,
    boot: &mut Boot,
    started: Instant,
) {
    // An engine that did not even connect: what it runs cannot be known, so nothing is
    // planned (a pending set waits too). One that is connected is tried by the pass.
    let handles = (engines.docker.is_none(), engines.systemd.is_none());
    let blind = unresponsive(shared).into_iter().find(|e| match e {
        Engine::Docker => handles.0,
        Engine::Systemd => handles.1,
    });
    if let Some(engine) = blind {
        fail_pass(shared, format!("{} (nothing was changed)", problem_line(shared, engine)), started.elapsed());
        return;
    }
    if let Some(set) = pending.take()
        && let Some((set, why)) = accept_or_block(shared, engines, set).await
    {
        // Nothing is applied from what could not be observed; the set waits.
        *pending = Some(set);
        fail_pass(shared, why, started.elapsed());
        return;
    }
    let Some(set) = shared.current() else {
        lock(&shared.agent).last_result = Some("no valid spec set yet: nothing applied".into());
        return;
    };
    // Every pass is recorded (in the log) with the commit it applied.
    if let Some(commit) = &set.commit {
        tracing::Span::current().record("commit", short(commit));
    }
    // Docker cannot be reached: the pass applies the rest of the specs, and plans nothing
    // for Docker's part from what it could not observe (no create of every instance).
    let unreachable = docker_unreachable(shared);
    let desired =
        if unreachable { Arc::new(without((*set.desired).clone(), &[Engine::Docker])) } else { set.desired.clone() };
    // In a cluster: the slots placed here, and leader-only Timers while this node leads.
    let desired = match &shared.cluster {
        Some(cluster) => crate::daemon::cluster::localize(cluster, desired),
        None => desired,
    };
    let mut options = crate::daemon::with_specs(&shared.options, &set.dir);
    options.skip_owners = backoff.skipped(Instant::now());
    let state_dir = match open_state(&shared.settings.host.state_dir).await {
        Ok(d) => d,
        Err(e) => {
            error!(error = %crate::support::chain(&e), "state directory");
            lock(&shared.agent).last_result = Some(crate::support::chain(&e));
            return;
        }
    };
    if let Some(cluster) = &shared.cluster {
        cluster.set_drained(state_dir.load().is_ok_and(|s| s.drain.is_some()));
    }
    if let Err(e) = boot.settle(engines, &options, &set.desired, &state_dir).await {
        lock(&shared.agent).last_result = Some(e);
        return;
    }
    // A backup killed while its services were stopped: they are started again first.
    options.stopped_by_backup = crate::backup::quiesce::recover_before_pass(engines, &desired, state_dir.path()).await;
    // In a cluster: a placed service's running instances are replaced in this node's turn.
    if let Some(cluster) = &shared.cluster {
        options.gated = crate::daemon::cluster::gate(cluster, &desired);
    }
    let result = apply::apply(engines.clone(), desired.clone(), &state_dir, &options).await;
    if let (Some(cluster), Ok(report)) = (&shared.cluster, &result) {
        crate::daemon::cluster::after_pass(cluster, &desired, report);
    }
    drop(state_dir);
    conclude(shared, engines, result, unreachable, backoff, started.elapsed());
}

/// Records how a pass that got to apply went, and what it learnt of the engines.
fn conclude(
    shared: &Shared,
    engines: &LiveEngines,
    result: Result<Report, ApplyError>,
    docker_left_out: bool,
    backoff: &mut Backoffs,
    elapsed: Duration,
) {
    match result {
        Ok(report) => {
            // Both engines answered what the pass asked.
            if engines.docker.is_some() {
                note_engine(shared, Engine::Docker, None);
            }
            if engines.systemd.is_some() {
                note_engine(shared, Engine::Systemd, None);
            }
            let left_out = docker_left_out.then(|| problem_line(shared, Engine::Docker));
            record_report(shared, &report, backoff, elapsed, left_out)
        }
        Err(e) => {
            if let Some((engine, kind, error)) = pass_engine_failure(&e) {
                note_engine(shared, engine, Some((kind, error.clone())));
                if engine == Engine::Docker && kind == UNAVAILABLE {
                    lose_docker(shared, error);
                }
            }
            fail_pass(shared, crate::support::chain(&e), elapsed);
        }
    }
}

/// Opens (and locks) the state directory, off the runtime's threads.
async fn open_state(dir: &Path) -> Result<StateDir, StateError> {
    let dir = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || StateDir::open(&dir)).await {
        Ok(r) => r,
        Err(e) => Err(StateError::Lock { path: PathBuf::from("state lock"), source: std::io::Error::other(e) }),
    }
}
