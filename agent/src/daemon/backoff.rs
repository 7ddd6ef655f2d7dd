//! The per-object backoff: an object (a service, a Timer, an image pull) whose steps failed
//! is left out of the passes for 1 s, then 2 s, 4 s, … up to 5 min, while the rest of the
//! host is still reconciled; a pass where its steps succeed ends it. (Crash-looping
//! containers have their own backoff, from their spec, in the planner.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tracing::warn;

const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The delay after `failures` failures in a row: 1 s doubling up to 5 min.
pub(super) fn backoff_delay(failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    BACKOFF_INITIAL.saturating_mul(factor).min(BACKOFF_MAX)
}

/// One object's backoff.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
    until_ms: u64,
}

/// The objects backing off, by owner name.
#[derive(Debug, Default)]
pub(super) struct Backoffs(BTreeMap<String, Backoff>);

impl Backoffs {
    /// The objects a pass starting `now` leaves out: their delay is not over.
    pub(super) fn skipped(&mut self, now: Instant) -> BTreeSet<String> {
        self.0.retain(|_, b| b.until > now || b.failures > 0);
        self.0.iter().filter(|(_, b)| b.until > now).map(|(k, _)| k.clone()).collect()
    }

    /// After a pass: the owners of failed steps back off longer, those whose steps all
    /// succeeded are done with it.
    pub(super) fn after_pass(&mut self, failed: &BTreeSet<String>, ok: &BTreeSet<String>, now: Instant, now_ms: u64) {
        for o in failed {
            let failures = self.0.get(o).map_or(0, |b| b.failures) + 1;
            let delay = backoff_delay(failures);
            warn!(object = %o, failures, retry_in_ms = delay.as_millis() as u64, "steps failed: backing off");
            self.0.insert(
                o.clone(),
                Backoff { failures, until: now + delay, until_ms: now_ms + delay.as_millis() as u64 },
            );
        }
        for o in ok.difference(failed) {
            self.0.remove(o);
        }
    }

    /// The objects still waiting at `now`, with when their next attempt is due (ms since
    /// the epoch), for `tend status`.
    pub(super) fn waiting(&self, now: Instant) -> BTreeMap<String, u64> {
        self.0.iter().filter(|(_, b)| b.until > now).map(|(k, b)| (k.clone(), b.until_ms)).collect()
    }

    /// When the first delay ends (also one that ended already).
    pub(super) fn earliest(&self) -> Option<Instant> {
        self.0.values().map(|b| b.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(40), Duration::from_secs(300));
    }

    #[test]
    fn an_object_backs_off_longer_after_each_failure_until_its_steps_succeed() {
        let mut b = Backoffs::default();
        let now = Instant::now();
        let web = BTreeSet::from(["web".to_string()]);
        b.after_pass(&web, &BTreeSet::new(), now, 0);
        assert_eq!(b.skipped(now), web);
        assert_eq!(b.waiting(now)["web"], 1000);
        b.after_pass(&web, &web, now, 0);
        assert_eq!(b.waiting(now)["web"], 2000, "failed again: a step failed, whatever else succeeded");
        assert_eq!(b.earliest(), Some(now + Duration::from_secs(2)));
        assert!(b.skipped(now + Duration::from_secs(3)).is_empty(), "its delay is over");
        b.after_pass(&BTreeSet::new(), &web, now, 0);
        assert!(b.waiting(now).is_empty() && b.earliest().is_none());
    }
}
