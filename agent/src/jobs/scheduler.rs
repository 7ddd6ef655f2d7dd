//! tend's own scheduler for Timers, for hosts where systemd is not PID 1. It keeps
//! systemd's semantics: each scheduled, enabled Timer elapses by its calendar (plus its
//! randomized delay), a `persistent` Timer catches up a run missed while nothing was
//! scheduling (from the last run recorded in its history), and runs never overlap — each
//! run is `tend job run NAME --trigger timer|catch-up`, with the job's concurrency rule,
//! log and history, exactly as when systemd starts it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tend_specs::Timer;
use tend_specs::calendar::Timestamp;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// How the scheduler runs jobs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The tend binary (`tend job run`).
    pub tend_bin: PathBuf,
    /// The scope.
    pub scope: String,
    /// The state directory (job histories).
    pub state_dir: PathBuf,
    /// The spec set.
    pub specs: PathBuf,
    /// How long the runs wait for an engine.
    pub timeouts: crate::engine::Timeouts,
    /// The agent's configuration file, when it is not the default one (`tend job run
    /// --config`: the run of a `runOn: leader` Timer finds the cluster in it).
    pub agent_config: Option<PathBuf>,
}

/// Whether a Timer is scheduled by the scheduler.
pub fn scheduled(t: &Timer) -> bool {
    t.spec.enabled && t.calendar.is_some()
}

/// When a missed run is due: the first elapse after the last recorded run, when that is
/// already past. `None` when nothing was missed (or the Timer never ran: like systemd,
/// a Timer that never ran has nothing to catch up).
pub fn missed(t: &Timer, last_run_ms: Option<u64>, now: Timestamp) -> Option<Timestamp> {
    let calendar = t.calendar.as_ref()?;
    if !t.spec.persistent {
        return None;
    }
    let last = Timestamp::from_millisecond(i64::try_from(last_run_ms?).ok()?).ok()?;
    let due = calendar.next_after(last)?.timestamp();
    (due <= now).then_some(due)
}

fn last_run_ms(state_dir: &Path, name: &str) -> Option<u64> {
    crate::jobs::history(state_dir, name, None).ok()?.iter().map(|r| r.start_ms).max()
}

/// A pseudo-random delay in `[0, max]` (systemd's RandomizedDelaySec), from the clock: it
/// only spreads load, it need not be unpredictable.
fn randomized(max: Option<tend_specs::quantity::Duration>) -> Duration {
    let Some(max) = max.map(|d| d.get()).filter(|d| !d.is_zero()) else { return Duration::ZERO };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    max.mul_f64(f64::from(seed % 1_000_000) / 1_000_000.0)
}

async fn run(config: &Config, name: &str, trigger: &str) {
    let mut command = tokio::process::Command::new(&config.tend_bin);
    command
        .arg("--scope")
        .arg(&config.scope)
        .arg("--state-dir")
        .arg(&config.state_dir)
        .args(["job", "run", name])
        .arg(&config.specs)
        .args(["--trigger", trigger]);
    if let Some(path) = &config.agent_config {
        command.arg("--config").arg(path);
    }
    let status = command
        .env(crate::engine::TIMEOUT_ENV, config.timeouts.env_value())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false)
        .status()
        .await;
    match status {
        Ok(s) => info!(job = name, trigger, status = %s, "run finished"),
        Err(e) => warn!(job = name, trigger, error = %e, "could not start tend job run"),
    }
}

/// Schedules every scheduled Timer of `timers` until `stop` is cancelled. Each Timer has
/// its own task and waits for its run to end before computing its next elapse, so its
/// runs never overlap.
pub async fn schedule(config: Config, timers: Vec<Timer>, stop: CancellationToken) {
    let mut tasks = JoinSet::new();
    for t in timers.into_iter().filter(scheduled) {
        let (config, stop) = (config.clone(), stop.clone());
        let span = info_span!("timer", name = %t.name);
        tasks.spawn(
            async move {
                let Some(calendar) = t.calendar.clone() else { return };
                if missed(&t, last_run_ms(&config.state_dir, &t.name), Timestamp::now()).is_some() {
                    info!("catching up a run missed while nothing was scheduling");
                    run(&config, &t.name, "catch-up").await;
                }
                loop {
                    let now = Timestamp::now();
                    let Some(next) = calendar.next_after(now) else {
                        info!("the schedule never elapses again");
                        return;
                    };
                    let wait = Duration::from_millis(
                        u64::try_from(next.timestamp().as_millisecond() - now.as_millisecond()).unwrap_or(0),
                    ) + randomized(t.spec.randomized_delay);
                    info!(next = %next, "waiting");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    run(&config, &t.name, "timer").await;
                }
            }
            .instrument(span),
        );
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(extra: &str) -> Timer {
        let yaml = format!(
            "apiVersion: tend/v1\nkind: Timer\nmetadata: {{name: t}}\nspec:\n  schedule: '*-*-* 01:00:00 UTC'\n  job: {{runtime: host, exec: [/bin/true]}}\n{extra}"
        );
        let desired = tend_specs::load_str(Path::new("t.yaml"), &yaml).expect("valid timer");
        desired.timers["t"].clone()
    }

    fn at(s: &str) -> Timestamp {
        tend_specs::calendar::parse_time(s).expect("time")
    }

    #[test]
    fn a_persistent_timer_catches_up_only_a_run_it_missed() {
        let t = timer("  persistent: true\n");
        let ms = |s: &str| Some(at(s).as_millisecond() as u64);
        // Last ran on the 20th at 01:00; by the 22nd at noon the 21st's run was missed.
        assert_eq!(
            missed(&t, ms("2026-11-20 01:00:00 UTC"), at("2026-11-22 12:00:00 UTC")),
            Some(at("2026-11-21 01:00:00 UTC"))
        );
        // Ran today at 01:00: nothing missed.
        assert_eq!(missed(&t, ms("2026-11-22 01:00:00 UTC"), at("2026-11-22 12:00:00 UTC")), None);
        // Never ran: nothing to catch up, as with systemd.
        assert_eq!(missed(&t, None, at("2026-11-22 12:00:00 UTC")), None);
    }

    #[test]
    fn a_timer_that_is_not_persistent_never_catches_up() {
        let t = timer("");
        let last = Some(at("2026-11-01 01:00:00 UTC").as_millisecond() as u64);
        assert_eq!(missed(&t, last, at("2026-11-22 12:00:00 UTC")), None);
    }

    #[test]
    fn disabled_or_unscheduled_timers_are_not_scheduled() {
        assert!(scheduled(&timer("")));
        assert!(!scheduled(&timer("  enabled: false\n")));
    }
}
