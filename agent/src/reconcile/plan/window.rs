//! Update windows (`spec.updateWindow`): when the changes of a service that stop or
//! recreate its running instances may be made. A window opens at every elapse of a systemd
//! calendar expression and stays open for a duration of real time; outside it the planner
//! leaves those changes out and says when they will happen.
//!
//! Pure like the rest of the planner: every computation takes the time and the time zone.
//! The one thing read from the host is its zone (`TZ`, else `/etc/localtime`, as systemd
//! reads it for `OnCalendar=`), once per process, in [`host_zone`].

use std::collections::BTreeMap;
use std::sync::OnceLock;

use tend_specs::calendar::{CalendarSpec, LocalZone, Timestamp};
use tend_specs::service::UpdateWindow;
use tend_specs::{Desired, Service};

use super::{Note, Plan};
use crate::reconcile::model::{Container, RunState};

/// Whether a window is open at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Changes may be made now.
    Open,
    /// Changes wait.
    Closed {
        /// When the window opens next (ms since the epoch), `None` when it never opens again
        /// (a schedule whose last elapse is past).
        next_open_ms: Option<u64>,
    },
}

/// The host's time zone, read once: the zone a schedule without one is read in.
pub fn host_zone() -> &'static LocalZone {
    static ZONE: OnceLock<LocalZone> = OnceLock::new();
    ZONE.get_or_init(LocalZone::from_env)
}

/// Whether a window that opens at each elapse of `calendar` and stays open for `duration_ms`
/// is open at `now_ms`, and if not, when it opens.
///
/// It is open when some elapse `e` has `e <= now < e + duration`: the start is inside, the
/// end is not. The first elapse strictly after `now - duration` decides both questions: if it
/// is at or before `now`, the window it opens is still open; if it is after `now`, no window
/// is open and that is when the next one opens. Elapses are instants (systemd's `mktime()`
/// replayed by the calendar module, so DST gaps and folds land where systemd's timers
/// land), and the duration is real time: a 2h window across a DST change lasts 2h.
pub fn state_at(calendar: &CalendarSpec, duration_ms: u64, now_ms: u64, zone: &LocalZone) -> WindowState {
    let never = WindowState::Closed { next_open_ms: None };
    let Ok(from) = Timestamp::from_millisecond(i64::try_from(now_ms.saturating_sub(duration_ms)).unwrap_or(i64::MAX))
    else {
        return never;
    };
    let Some(elapse) = calendar.next_after_in(from, zone) else { return never };
    let elapse_us = elapse.timestamp().as_microsecond();
    let now_us = i64::try_from(now_ms).map_or(i64::MAX, |ms| ms.saturating_mul(1000));
    if elapse_us <= now_us { WindowState::Open } else { WindowState::Closed { next_open_ms: Some(ceil_ms(elapse_us)) } }
}

/// Microseconds to milliseconds, rounded up, so that at the returned time the window is open.
fn ceil_ms(us: i64) -> u64 {
    u64::try_from(us.div_euclid(1000) + i64::from(us.rem_euclid(1000) != 0)).unwrap_or(0)
}

/// A window's schedule read in `zone`. Validation parsed it already (in the same zone), so
/// `None` does not happen with a loaded spec set; such a window counts as never opening.
fn calendar(window: &UpdateWindow, zone: &LocalZone) -> Option<CalendarSpec> {
    CalendarSpec::parse_in(&window.schedule, zone).ok()
}

/// The state of a service's window at `now_ms`; `None` when it has no window.
pub fn service_state(s: &Service, now_ms: u64, zone: &LocalZone) -> Option<WindowState> {
    let window = s.spec.update_window.as_ref()?;
    Some(match calendar(window, zone) {
        Some(c) => state_at(&c, window.duration.get().as_millis() as u64, now_ms, zone),
        None => WindowState::Closed { next_open_ms: None },
    })
}

/// The services whose update window is closed at `now_ms`, each with the note that says
/// when its waiting changes will be made (the planner adds the note only when something
/// waits). Empty when windows are ignored (`tend apply --now`).
pub(super) fn closed(desired: &Desired, now_ms: u64, ignore: bool, zone: &LocalZone) -> BTreeMap<String, Note> {
    if ignore {
        return BTreeMap::new();
    }
    let mut out = BTreeMap::new();
    for s in desired.services.values() {
        if let (Some(WindowState::Closed { next_open_ms }), Some(window)) =
            (service_state(s, now_ms, zone), &s.spec.update_window)
        {
            let note = Note::UpdateWindow { service: s.name.clone(), next_open_ms, window: window.to_string() };
            out.insert(s.name.clone(), note);
        }
    }
    out
}

/// Whether replacing or removing the container interrupts the service: it runs (or is about
/// to). Stopped, exited and never-started containers are replaced or removed at any time.
pub(super) fn serving(c: &Container) -> bool {
    matches!(c.state, RunState::Running | RunState::Restarting | RunState::Paused)
}

/// The earliest time after `now_ms` at which an update window of some service opens, for the
/// agent to plan again then; `None` when no service has a window that opens again.
pub fn next_window_open(desired: &Desired, now_ms: u64) -> Option<u64> {
    next_window_open_in(desired, now_ms, host_zone())
}

/// [`next_window_open`] in an explicit zone.
pub fn next_window_open_in(desired: &Desired, now_ms: u64, zone: &LocalZone) -> Option<u64> {
    let now = Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
    desired
        .services
        .values()
        .filter_map(|s| calendar(s.spec.update_window.as_ref()?, zone))
        .filter_map(|c| c.next_after_in(now, zone))
        .map(|z| ceil_ms(z.timestamp().as_microsecond()))
        .min()
}

/// The earliest time at which changes the plan left for an update window can be made: the
/// first opening among its [`Note::UpdateWindow`] notes. `None` when nothing waits (or what
/// waits waits for a window that never opens again).
pub fn next_deferred_open(plan: &Plan) -> Option<u64> {
    plan.notes
        .iter()
        .filter_map(|n| match n {
            Note::UpdateWindow { next_open_ms, .. } => *next_open_ms,
            _ => None,
        })
        .min()
}

#[cfg(test)]
mod tests {
    use tend_specs::calendar::parse_time_in;

    use super::*;

    fn utc() -> LocalZone {
        LocalZone::utc()
    }

    fn berlin() -> LocalZone {
        LocalZone::from_tz(Some("Europe/Berlin"))
    }

    /// Milliseconds since the epoch of a time written as systemd prints it.
    fn ms(time: &str) -> u64 {
        let ts = parse_time_in(time, &utc()).unwrap_or_else(|e| panic!("{time}: {e}"));
        u64::try_from(ts.as_millisecond()).expect("after the epoch")
    }

    fn state(schedule: &str, duration: &str, now: u64, zone: &LocalZone) -> WindowState {
        let calendar = CalendarSpec::parse_in(schedule, zone).unwrap_or_else(|e| panic!("{schedule}: {e}"));
        let duration: tend_specs::quantity::Duration = duration.parse().expect("duration");
        state_at(&calendar, duration.get().as_millis() as u64, now, zone)
    }

    fn closed_until(time: &str) -> WindowState {
        WindowState::Closed { next_open_ms: Some(ms(time)) }
    }

    #[test]
    fn a_window_is_open_from_its_start_up_to_but_not_at_its_end() {
        // 2026-11-22 is a Sunday.
        let open = WindowState::Open;
        for (schedule, duration, now, expected) in [
            ("Sun 02:00", "2h", "2026-11-22 01:59:59 UTC", closed_until("2026-11-22 02:00:00 UTC")),
            ("Sun 02:00", "2h", "2026-11-22 02:00:00 UTC", open),
            ("Sun 02:00", "2h", "2026-11-22 03:00:00 UTC", open),
            ("Sun 02:00", "2h", "2026-11-22 03:59:59.999 UTC", open),
            ("Sun 02:00", "2h", "2026-11-22 04:00:00 UTC", closed_until("2026-11-29 02:00:00 UTC")),
            ("Sun 02:00", "2h", "2026-11-21 12:00:00 UTC", closed_until("2026-11-22 02:00:00 UTC")),
            ("Sun 02:00", "2h", "2026-11-23 02:30:00 UTC", closed_until("2026-11-29 02:00:00 UTC")),
            ("*-*-* 01:00", "2h", "2026-11-24 02:59:59 UTC", open),
            ("*-*-* 01:00", "2h", "2026-11-24 03:00:00 UTC", closed_until("2026-11-25 01:00:00 UTC")),
            ("*-*-* 01:00", "2h", "2026-11-24 00:59:59.999 UTC", closed_until("2026-11-24 01:00:00 UTC")),
            // Across midnight and into the next day of the week.
            ("Sat 23:00", "3h", "2026-11-22 01:30:00 UTC", open),
            ("Sat 23:00", "3h", "2026-11-22 02:00:00 UTC", closed_until("2026-11-28 23:00:00 UTC")),
            // Windows that overlap the next opening are always open.
            ("hourly", "2h", "2026-11-24 10:17:00 UTC", open),
            ("*-*-* *:00/15", "15m", "2026-11-24 10:14:59 UTC", open),
            // A short window; seconds count.
            ("*-*-* 12:00:30", "1s", "2026-11-24 12:00:30.999 UTC", open),
            ("*-*-* 12:00:30", "1s", "2026-11-24 12:00:31 UTC", closed_until("2026-11-25 12:00:30 UTC")),
            // A zone in the expression wins over the local one.
            ("Sun 02:00 Europe/Berlin", "2h", "2026-11-22 01:00:00 UTC", open),
            ("Sun 02:00 Europe/Berlin", "2h", "2026-11-22 03:00:00 UTC", closed_until("2026-11-29 01:00:00 UTC")),
            // The last opening is past: closed for good.
            ("2020-01-01 00:00", "1h", "2026-11-24 00:00:00 UTC", WindowState::Closed { next_open_ms: None }),
            ("2020-01-01 00:00", "1h", "2020-01-01 00:30:00 UTC", open),
        ] {
            assert_eq!(state(schedule, duration, ms(now), &utc()), expected, "{schedule} for {duration} at {now}");
        }
    }

    #[test]
    fn windows_follow_the_local_zone_across_daylight_saving_changes() {
        let open = WindowState::Open;
        let b = berlin();
        for (schedule, duration, now, expected) in [
            // In winter Berlin is UTC+1: Sunday 02:00 there is 01:00 UTC.
            ("Sun 02:00", "2h", "2026-11-22 00:59:59 UTC", closed_until("2026-11-22 01:00:00 UTC")),
            ("Sun 02:00", "2h", "2026-11-22 02:59:59 UTC", open),
            ("Sun 02:00", "2h", "2026-11-22 03:00:00 UTC", closed_until("2026-11-29 01:00:00 UTC")),
            // Spring forward (2026-03-29, 02:00 CET becomes 03:00 CEST): a window from 01:00
            // CET for 2h of real time ends at 04:00 CEST.
            ("Sun 01:00", "2h", "2026-03-29 01:59:59 UTC", open),
            ("Sun 01:00", "2h", "2026-03-29 02:00:00 UTC", closed_until("2026-04-05 01:00:00 Europe/Berlin")),
            // 02:30 does not exist that night: like systemd's timers, the window skips it and
            // next opens the night after.
            ("*-*-* 02:30", "1h", "2026-03-29 00:00:00 UTC", closed_until("2026-03-30 02:30:00 Europe/Berlin")),
            ("*-*-* 02:30", "1h", "2026-03-29 01:45:00 UTC", closed_until("2026-03-30 02:30:00 Europe/Berlin")),
            ("*-*-* 02:30", "1h", "2026-03-30 00:30:00 UTC", open),
            // Fall back (2026-10-25, 03:00 CEST becomes 02:00 CET): 01:00 CEST for 2h of real
            // time ends at the second 02:00, in CET.
            ("Sun 01:00", "2h", "2026-10-25 00:30:00 UTC", open),
            ("Sun 01:00", "2h", "2026-10-25 00:59:59 UTC", open),
            ("Sun 01:00", "2h", "2026-10-25 01:00:00 UTC", closed_until("2026-11-01 00:00:00 UTC")),
        ] {
            assert_eq!(state(schedule, duration, ms(now), &b), expected, "{schedule} for {duration} at {now}");
        }
    }

    #[test]
    fn milliseconds_round_up_to_the_opening() {
        assert_eq!(ceil_ms(1_000_000), 1_000);
        assert_eq!(ceil_ms(1_000_001), 1_001);
        assert_eq!(ceil_ms(999), 1);
        assert_eq!(ceil_ms(0), 0);
        // A window opening on a fraction of a millisecond is closed just before, open at the
        // rounded-up time.
        let c = CalendarSpec::parse_in("*-*-* 12:00:00.0005", &utc()).expect("calendar");
        let open_ms = ms("2026-11-24 12:00:00.001 UTC");
        assert_eq!(state_at(&c, 1000, open_ms - 1, &utc()), WindowState::Closed { next_open_ms: Some(open_ms) });
        assert_eq!(state_at(&c, 1000, open_ms, &utc()), WindowState::Open);
    }

    fn desired(yaml: &str) -> Desired {
        tend_specs::load_str(std::path::Path::new("t.yaml"), yaml).unwrap_or_else(|d| panic!("bad test spec: {d:?}"))
    }

    fn svc(name: &str, window: Option<&str>) -> String {
        let window = window.map(|w| format!("\n  updateWindow: {w}")).unwrap_or_default();
        format!("---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: img:1{window}\n")
    }

    #[test]
    fn closed_windows_carry_the_note_and_none_when_ignored() {
        let d = desired(
            &(svc("a", Some("{schedule: \"Sun 02:00 UTC\", duration: 2h}"))
                + &svc("b", Some("{schedule: \"Sat 02:00 UTC\", duration: 2h}"))
                + &svc("c", None)),
        );
        let now = ms("2026-11-22 03:00:00 UTC");
        let closed = closed(&d, now, false, &utc());
        assert_eq!(
            closed.into_iter().collect::<Vec<_>>(),
            [(
                "b".to_string(),
                Note::UpdateWindow {
                    service: "b".into(),
                    next_open_ms: Some(ms("2026-11-28 02:00:00 UTC")),
                    window: "Sat 02:00 UTC for 2h".into()
                }
            )]
        );
        assert!(super::closed(&d, now, true, &utc()).is_empty());
    }

    #[test]
    fn the_next_opening_is_the_earliest_of_any_service() {
        let d = desired(
            &(svc("a", Some("{schedule: \"Sun 02:00\", duration: 2h}"))
                + &svc("b", Some("{schedule: \"*-*-* 22:00\", duration: 30m}"))
                + &svc("c", None)),
        );
        let at = |now: &str| next_window_open_in(&d, ms(now), &utc());
        assert_eq!(at("2026-11-21 12:00:00 UTC"), Some(ms("2026-11-21 22:00:00 UTC")));
        assert_eq!(at("2026-11-21 23:00:00 UTC"), Some(ms("2026-11-22 02:00:00 UTC")));
        // While a window is open, its next opening is the one after.
        assert_eq!(at("2026-11-22 02:00:00 UTC"), Some(ms("2026-11-22 22:00:00 UTC")));
        assert_eq!(next_window_open_in(&desired(&svc("c", None)), ms("2026-11-21 12:00:00 UTC"), &utc()), None);
    }

    #[test]
    fn the_deferred_opening_comes_from_the_plan_notes() {
        let note = |service: &str, next_open_ms| Note::UpdateWindow {
            service: service.into(),
            next_open_ms,
            window: "Sun 02:00 for 2h".into(),
        };
        let plan = Plan {
            steps: vec![],
            notes: vec![note("a", Some(5_000)), note("b", None), note("c", Some(3_000)), note("d", Some(4_000))],
            unchecked: None,
        };
        assert_eq!(next_deferred_open(&plan), Some(3_000));
        assert_eq!(next_deferred_open(&Plan::default()), None);
    }
}
