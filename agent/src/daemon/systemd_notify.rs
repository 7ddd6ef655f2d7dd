//! systemd's notify protocol, when systemd runs the agent (`Type=notify`): READY after the
//! first pass, WATCHDOG pings from the loop itself (never from a side task, so a hung loop
//! is restarted), STATUS with a one-line summary after each pass, STOPPING on shutdown.

use std::time::Duration;

use tracing::warn;

use crate::daemon::shared::Shared;
use crate::daemon::spec_set::short;

/// Sends a notification to systemd when run by it (`NOTIFY_SOCKET`); otherwise nothing.
pub(super) fn send(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "could not notify systemd");
    }
}

/// The watchdog's pings, at half of `WatchdogSec` when systemd asks for them.
pub(super) struct Watchdog {
    /// Whether systemd asked for pings.
    enabled: bool,
    /// Ticks at half the watchdog's period (hourly, never waited on, when disabled).
    ticks: tokio::time::Interval,
}

impl Watchdog {
    /// The watchdog systemd set up for this process (`WATCHDOG_USEC`), if any.
    pub(super) fn from_env() -> Self {
        let mut usec = 0u64;
        let every =
            (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec / 2));
        let mut ticks = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { enabled: every.is_some(), ticks }
    }

    /// Whether systemd asked for pings.
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Tells systemd the loop is alive.
    pub(super) fn ping(&self) {
        if self.enabled {
            send(&[sd_notify::NotifyState::Watchdog]);
        }
    }

    /// Waits until the next ping is due.
    pub(super) async fn due(&mut self) {
        self.ticks.tick().await;
    }
}

/// The one-line summary for systemd's STATUS=.
pub(super) fn status_line(shared: &Shared) -> String {
    let a = shared.agent_status();
    let services = shared.current().map_or(0, |s| s.desired.services.len());
    let ok = shared.current().map_or(0, |s| s.desired.services.keys().filter(|n| !a.troubled.contains(n)).count());
    let mut parts = vec![format!("{ok} of {services} services ok")];
    if a.drained {
        parts.insert(0, "drained".into());
    }
    if a.held > 0 {
        parts.push(format!("{} held", a.held));
    }
    if !a.spec_errors.is_empty() {
        parts.push(format!("{} spec error(s)", a.spec_errors.len()));
    }
    if a.mass_removal.is_some() {
        parts.push("mass removal blocked".into());
    }
    for (engine, p) in &a.engines {
        parts.push(format!("{engine} {}", p.state));
    }
    if !a.backoff.is_empty() {
        parts.push(format!("{} backing off", a.backoff.len()));
    }
    if let Some(r) = &a.last_result {
        parts.push(format!("last pass: {r} ({} ms)", a.last_pass_duration_ms.unwrap_or(0)));
    }
    if let Some(c) = &a.commit {
        parts.push(format!("commit {}", short(c)));
    }
    parts.join(", ")
}
