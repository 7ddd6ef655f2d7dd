//! The agent's loop as a type: what it keeps between passes (a pending spec set, the
//! backoff, what the boot before this one means, the follow-up looks after engine events,
//! the next resync, the scheduler, the job runs seen) in fields; [`AgentLoop::pass`] runs
//! one pass and [`AgentLoop::wait_for_next`] sleeps until something calls for the next: a
//! wake-up (spec change, engine event, the API), the resync, a deadline, or stop.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::daemon::backoff::{Backoffs, backoff_delay};
use crate::daemon::boot::Boot;
use crate::daemon::engine_health::unresponsive;
use crate::daemon::pass;
use crate::daemon::record::record_runs;
use crate::daemon::shared::{Shared, Wake, lock};
use crate::daemon::spec_set::{self, SpecSet};
use crate::daemon::systemd_notify::{self, Watchdog, status_line};

/// How long an engine event is left to settle before the pass it wakes.
const ENGINE_SETTLE: Duration = Duration::from_millis(50);
/// Second and third looks after an engine event, for what the first pass could not see yet
/// (each no-op pass costs a few milliseconds).
const ENGINE_FOLLOW_UPS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];

/// The longest wait before passing again while an engine is unresponsive (the waits start
/// at a second and double): each such pass costs one call timeout of waiting and nothing
/// else, and the agent should notice soon when the engine answers again.
const ENGINE_RETRY_MAX: Duration = Duration::from_secs(30);

/// The loop and its state between passes.
pub(super) struct AgentLoop {
    shared: Arc<Shared>,
    stop: CancellationToken,
    wake: mpsc::Receiver<Wake>,
    watchdog: Watchdog,
    /// `TEND_FAULT_HANG`: while this file exists, the loop hangs (for the watchdog's test).
    hang_fault: Option<PathBuf>,
    /// A new spec set, put in use by the next pass (it waits while it cannot be checked).
    pending: Option<SpecSet>,
    backoff: Backoffs,
    boot: Boot,
    /// Something called for a pass.
    pass_wanted: bool,
    follow_ups: FollowUps,
    engine_retry: EngineRetry,
    next_resync: Instant,
    /// Where systemd is not PID 1: the Timers being scheduled (their key) and the
    /// scheduler's token.
    scheduler: Option<(String, CancellationToken)>,
    /// The start of the newest job run recorded in the metrics, by Timer.
    jobs_seen: BTreeMap<String, u64>,
    /// READY was sent (after the first pass).
    ready: bool,
}

/// The second and third looks after an engine event.
#[derive(Debug, Default)]
struct FollowUps {
    /// An engine event woke the loop since the last pass.
    armed: bool,
    /// The looks still to come, as delays after the pass before.
    queue: VecDeque<Duration>,
    /// When the next look is due.
    at: Option<Instant>,
}

impl FollowUps {
    /// After a pass: an engine event before it starts the looks over; the next one is due.
    fn after_pass(&mut self) {
        if self.armed {
            self.queue = ENGINE_FOLLOW_UPS.into_iter().collect();
            self.armed = false;
        }
        self.at = self.queue.pop_front().map(|d| Instant::now() + d);
    }
}

/// Passes while an engine is unresponsive, and when to try again.
#[derive(Debug, Default)]
struct EngineRetry {
    retries: u32,
    at: Option<Instant>,
}

impl EngineRetry {
    /// After a pass: while an engine is unresponsive, the next try is due after a growing
    /// delay (a second, doubling, up to [`ENGINE_RETRY_MAX`]).
    fn after_pass(&mut self, unresponsive: bool) {
        self.at = if unresponsive {
            self.retries += 1;
            Some(Instant::now() + backoff_delay(self.retries).min(ENGINE_RETRY_MAX))
        } else {
            self.retries = 0;
            None
        };
    }
}

impl AgentLoop {
    /// A loop whose first pass is due at once.
    pub(super) fn new(
        shared: Arc<Shared>,
        stop: CancellationToken,
        wake: mpsc::Receiver<Wake>,
        boot: Boot,
        pending: Option<SpecSet>,
    ) -> Self {
        Self {
            shared,
            stop,
            wake,
            watchdog: Watchdog::from_env(),
            hang_fault: std::env::var_os("TEND_FAULT_HANG").map(PathBuf::from),
            pending,
            backoff: Backoffs::default(),
            boot,
            pass_wanted: true,
            follow_ups: FollowUps::default(),
            engine_retry: EngineRetry::default(),
            next_resync: Instant::now(),
            scheduler: None,
            jobs_seen: BTreeMap::new(),
            ready: false,
        }
    }

    /// Passes until the agent stops; then ends the scheduler and hands back what the
    /// clean-shutdown mark needs.
    pub(super) async fn run(mut self) -> Boot {
        while self.wait_for_next().await {
            self.pass().await;
        }
        if let Some((_, token)) = self.scheduler.take() {
            token.cancel();
        }
        self.boot
    }

    /// Waits until a pass is wanted (the first at once), pinging the watchdog meanwhile:
    /// for a wake-up (and whatever else has arrived with it), the resync, or a deadline.
    /// False when the agent stops.
    async fn wait_for_next(&mut self) -> bool {
        loop {
            self.hang_if_faulted().await;
            self.watchdog.ping();
            if self.stop.is_cancelled() {
                return false;
            }
            if self.pass_wanted {
                self.pass_wanted = false;
                return true;
            }
            let deadline = self.next_deadline();
            let pings = self.watchdog.enabled();
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = self.watchdog.due(), if pings => {}
                () = tokio::time::sleep_until(deadline) => self.pass_wanted = true,
                msg = self.wake.recv() => match msg {
                    Some(msg) => self.woken(msg).await,
                    None => return false,
                },
            }
        }
    }

    /// When the loop passes without a wake-up: the resync, a follow-up look, an engine
    /// retry, an object's backoff ending, or a deadline of the last plan (a crash-looping
    /// instance's restart, an object's retry, an update window opening).
    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_resync;
        for at in self.follow_ups.at.into_iter().chain(self.engine_retry.at) {
            deadline = deadline.min(at);
        }
        if let Some(until) = self.backoff.earliest() {
            deadline = deadline.min(Instant::now() + until.saturating_duration_since(std::time::Instant::now()));
        }
        if let Some(due) = plan_due(&self.shared) {
            deadline = deadline.min(due);
        }
        deadline
    }

    /// Takes a wake-up, and folds what else has arrived into the same pass.
    async fn woken(&mut self, msg: Wake) {
        let engine = matches!(msg, Wake::Engine);
        self.take(msg);
        if engine {
            // Docker reports a container's death a moment before its listing shows it: let
            // the engine settle, and look once more a little later.
            tokio::time::sleep(ENGINE_SETTLE).await;
            self.follow_ups.armed = true;
        }
        while let Ok(msg) = self.wake.try_recv() {
            self.take(msg);
        }
    }

    /// Notes whether `msg` calls for a pass: engine events and the API do; a spec change
    /// does when it brings a new valid set.
    fn take(&mut self, msg: Wake) {
        debug!(?msg, "woken");
        self.pass_wanted |= match msg {
            Wake::Engine | Wake::Api | Wake::Cluster => true,
            Wake::Specs => spec_set::reread_dir(&self.shared, &mut self.pending),
            Wake::Candidate(rev) => spec_set::check_candidate(&self.shared, rev, &mut self.pending),
        };
    }

    /// Runs one pass, pinging the watchdog while it lasts, then schedules what comes after
    /// it and tells systemd.
    async fn pass(&mut self) {
        {
            let running = pass::run(&self.shared, &mut self.pending, &mut self.backoff, &mut self.boot);
            tokio::pin!(running);
            let pings = self.watchdog.enabled();
            loop {
                tokio::select! {
                    () = &mut running => break,
                    () = self.watchdog.due(), if pings => self.watchdog.ping(),
                }
            }
        }
        self.next_resync = Instant::now() + self.shared.settings.resync;
        self.follow_ups.after_pass();
        self.engine_retry.after_pass(!unresponsive(&self.shared).is_empty());
        record_runs(&self.shared, &mut self.jobs_seen);
        self.update_scheduler();
        let line = status_line(&self.shared);
        systemd_notify::send(&[sd_notify::NotifyState::Status(&line)]);
        if !self.ready {
            self.ready = true;
            info!("first pass done: ready");
            systemd_notify::send(&[sd_notify::NotifyState::Ready]);
        }
    }

    /// Fault injection for the watchdog's test: when the `TEND_FAULT_HANG` file exists, the
    /// loop hangs (and stops pinging) on a future that never completes, so the runtime's
    /// threads stay free for the API.
    async fn hang_if_faulted(&self) {
        if let Some(path) = &self.hang_fault
            && path.exists()
        {
            warn!(path = %path.display(), "TEND_FAULT_HANG: the loop hangs now");
            std::future::pending::<()>().await;
        }
    }

    /// Where systemd is not PID 1, the agent schedules Timers itself; restarted when the
    /// set's Timers change, or this node's leadership (a member of a cluster schedules
    /// `runOn: leader` Timers only while it leads, as it writes their units only then).
    fn update_scheduler(&mut self) {
        let shared = &self.shared;
        if lock(&shared.engines).systemd.is_some() {
            return;
        }
        let Some(set) = shared.current() else { return };
        let leads = shared.cluster.as_ref().is_none_or(|c| c.view().is_leader);
        let timers: Vec<_> = set
            .desired
            .timers
            .values()
            .filter(|t| leads || t.spec.run_on != tend_specs::timer::RunOn::Leader)
            .cloned()
            .collect();
        let key: String = timers.iter().map(|t| format!("{}:{};", t.name, t.hash)).collect();
        if self.scheduler.as_ref().is_some_and(|(k, _)| *k == key) {
            return;
        }
        if let Some((_, token)) = self.scheduler.take() {
            token.cancel();
        }
        let token = self.stop.child_token();
        let config = crate::jobs::scheduler::Config {
            tend_bin: shared.settings.host.tend_bin.clone(),
            scope: shared.settings.host.scope.clone(),
            state_dir: shared.settings.host.state_dir.clone(),
            specs: set.dir.clone(),
            timeouts: shared.settings.host.timeouts,
            agent_config: shared.settings.host.agent_config.clone(),
        };
        if timers.iter().any(crate::jobs::scheduler::scheduled) {
            info!(timers = timers.iter().filter(|t| crate::jobs::scheduler::scheduled(t)).count(), "scheduling Timers");
        }
        tokio::spawn(
            crate::jobs::scheduler::schedule(config, timers, token.clone()).instrument(info_span!("scheduler")),
        );
        self.scheduler = Some((key, token));
    }
}

/// The next deadline the planner is waiting for, from the last pass: a crash-looping
/// instance's restart, an object's retry, an update window opening.
fn plan_due(shared: &Shared) -> Option<Instant> {
    let a = lock(&shared.agent);
    let now = crate::support::now_ms();
    a.backoff
        .values()
        .copied()
        .chain(a.next_window_ms)
        .filter(|due| *due > now)
        .min()
        .map(|due| Instant::now() + Duration::from_millis(due - now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_engine_event_is_followed_by_two_more_looks() {
        let mut f = FollowUps::default();
        f.after_pass();
        assert_eq!(f.at, None, "no event, no look");
        f.armed = true;
        let start = Instant::now();
        f.after_pass();
        assert_eq!(f.at, Some(start + Duration::from_millis(250)));
        f.after_pass();
        assert_eq!(f.at, Some(start + Duration::from_millis(1000)));
        f.after_pass();
        assert_eq!(f.at, None);
    }

    #[tokio::test(start_paused = true)]
    async fn passes_while_an_engine_is_unresponsive_back_off_up_to_thirty_seconds() {
        let mut r = EngineRetry::default();
        let start = Instant::now();
        let delays: Vec<Duration> = (0..7)
            .map(|_| {
                r.after_pass(true);
                r.at.expect("a retry") - start
            })
            .collect();
        assert_eq!(delays.iter().map(Duration::as_secs).collect::<Vec<_>>(), [1, 2, 4, 8, 16, 30, 30]);
        r.after_pass(false);
        assert_eq!(r.at, None);
        r.after_pass(true);
        assert_eq!(r.at, Some(start + Duration::from_secs(1)), "starts over once it answered");
    }
}
