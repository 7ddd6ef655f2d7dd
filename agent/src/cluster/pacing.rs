//! Rollout pacing across the cluster: the leader moves from the current assignments toward
//! what [`crate::cluster::placement::place`] decided one step at a time per service — a slot
//! started on a node (new, or moved from a lost or drained member) at most once per
//! `rollout.interval`, lowest slot first; a slot dropped by a scale-down at most once per
//! `rollout.scaleDownInterval`, highest slot first — so scaling 3 → 5 with `interval: 30s`
//! starts one new member every 30 s cluster-wide. Pure: the leader hands in the time.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::placement::Assignments;

/// How fast one service's placement may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pace {
    /// Between two slots started (`rollout.interval`).
    pub interval: Duration,
    /// Between two slots dropped (`rollout.scaleDownInterval`).
    pub scale_down_interval: Duration,
}

/// When the leader last started, and last dropped, a slot of each service (time since the
/// leader's clock started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Last {
    /// The last slot started, by service.
    pub added: BTreeMap<String, Duration>,
    /// The last slot dropped, by service.
    pub removed: BTreeMap<String, Duration>,
}

/// The assignments to write now on the way from `current` to `decided`, and when the next
/// paced step becomes due (`None`: nothing is waiting). `last` is updated with the steps
/// taken. Services no longer placed lose their slots at once (their specs are gone: every
/// node removes their instances anyway).
pub fn pace(
    current: &Assignments,
    decided: &Assignments,
    paces: &BTreeMap<String, Pace>,
    last: &mut Last,
    now: Duration,
) -> (Assignments, Option<Duration>) {
    let mut next = Assignments::new();
    let mut due: Option<Duration> = None;
    let mut wait = |at: Duration| due = Some(due.map_or(at, |d| d.min(at)));
    for (service, want) in decided {
        let pace = paces.get(service).copied().unwrap_or_default();
        let mut slots = current.get(service).cloned().unwrap_or_default();
        // Started: a slot whose node is new or another; lowest first.
        if let Some((slot, node)) = want.iter().find(|(slot, node)| slots.get(*slot) != Some(*node)) {
            let at = last.added.get(service).map_or(Duration::ZERO, |t| *t + pace.interval);
            if now >= at {
                slots.insert(*slot, node.clone());
                last.added.insert(service.clone(), now);
                if want.iter().any(|(s, n)| slots.get(s) != Some(n)) {
                    wait(now + pace.interval);
                }
            } else {
                wait(at);
            }
        }
        // Dropped: a slot no longer decided; highest first.
        if let Some(slot) = slots.keys().rev().find(|s| !want.contains_key(*s)).copied() {
            let at = last.removed.get(service).map_or(Duration::ZERO, |t| *t + pace.scale_down_interval);
            if now >= at {
                slots.remove(&slot);
                last.removed.insert(service.clone(), now);
                if slots.keys().any(|s| !want.contains_key(s)) {
                    wait(now + pace.scale_down_interval);
                }
            } else {
                wait(at);
            }
        }
        next.insert(service.clone(), slots);
    }
    (next, due)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(slots: &[(u32, &str)]) -> Assignments {
        Assignments::from([("j".to_string(), slots.iter().map(|(s, n)| (*s, n.to_string())).collect())])
    }

    fn paces(interval: u64, down: u64) -> BTreeMap<String, Pace> {
        let pace = Pace { interval: Duration::from_secs(interval), scale_down_interval: Duration::from_secs(down) };
        BTreeMap::from([("j".to_string(), pace)])
    }

    #[test]
    fn scaling_up_starts_one_slot_per_interval() {
        let mut last = Last::default();
        let (cur, decided) =
            (a(&[(1, "a"), (2, "b"), (3, "c")]), a(&[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]));
        let (step, due) = pace(&cur, &decided, &paces(30, 25), &mut last, Duration::from_secs(100));
        assert_eq!((step.clone(), due), (a(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]), Some(Duration::from_secs(130))));
        let (step2, due) = pace(&step, &decided, &paces(30, 25), &mut last, Duration::from_secs(110));
        assert_eq!((&step2, due), (&step, Some(Duration::from_secs(130))), "too early: nothing changes");
        let (step3, due) = pace(&step2, &decided, &paces(30, 25), &mut last, Duration::from_secs(130));
        assert_eq!((step3, due), (decided, None));
    }

    #[test]
    fn scaling_down_drops_the_highest_slot_one_per_scale_down_interval() {
        let mut last = Last::default();
        let (cur, decided) =
            (a(&[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]), a(&[(1, "a"), (2, "b"), (3, "c")]));
        let (step, due) = pace(&cur, &decided, &paces(30, 25), &mut last, Duration::from_secs(5));
        assert_eq!((step.clone(), due), (a(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]), Some(Duration::from_secs(30))));
        let (step, due) = pace(&step, &decided, &paces(30, 25), &mut last, Duration::from_secs(30));
        assert_eq!((step, due), (decided, None));
    }

    #[test]
    fn a_moved_slot_is_a_start_and_unpaced_services_change_at_once() {
        let mut last = Last::default();
        let (cur, decided) = (a(&[(1, "a"), (2, "dead")]), a(&[(1, "a"), (2, "c"), (3, "d")]));
        let (step, due) = pace(&cur, &decided, &BTreeMap::new(), &mut last, Duration::from_secs(1));
        assert_eq!((step.clone(), due), (a(&[(1, "a"), (2, "c")]), Some(Duration::from_secs(1))));
        let (step, due) = pace(&step, &decided, &BTreeMap::new(), &mut last, Duration::from_secs(1));
        assert_eq!((step, due), (decided, None));
    }

    #[test]
    fn a_service_no_longer_placed_loses_its_slots_at_once() {
        let (step, due) =
            pace(&a(&[(1, "a")]), &Assignments::new(), &paces(30, 25), &mut Last::default(), Duration::ZERO);
        assert_eq!((step, due), (Assignments::new(), None));
    }
}
