//! The mass-removal guard: a spec set that would remove more than a configured share of the
//! managed objects at once is not applied without `--allow-mass-removal` (an emptied
//! directory, a bad checkout or a wrong rsync is not "delete everything"). `tend apply`
//! asks the same question before it acts.

use std::collections::BTreeSet;

use tend_specs::Desired;

use crate::reconcile::model::Observed;

/// What a spec set would remove of the managed objects, when it is too much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MassRemoval {
    /// The services and Timers it would remove.
    pub removed: Vec<String>,
    /// How many are managed now.
    pub managed: usize,
    /// The limit that was passed (percent).
    pub max_percent: u8,
}

impl std::fmt::Display for MassRemoval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 10;
        let mut names = self.removed.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if self.removed.len() > SHOWN {
            names.push_str(&format!(" and {} more", self.removed.len() - SHOWN));
        }
        write!(
            f,
            "would remove {} of the {} managed services and Timers, more than {}% ({names})",
            self.removed.len(),
            self.managed,
            self.max_percent
        )
    }
}

/// Whether the specs would remove too much: more than `max_percent` of the managed objects
/// (services and Timers that have containers or unit files of this scope), and at least
/// two of them.
pub fn mass_removal(observed: &Observed, desired: &Desired, scope: &str, max_percent: u8) -> Option<MassRemoval> {
    let mut managed: BTreeSet<&str> = observed.containers.iter().map(|c| c.service.as_str()).collect();
    for u in observed.units.iter().flat_map(|u| u.values()) {
        if u.scope.as_deref() == Some(scope) {
            let stem = u.name.strip_suffix(".service").or_else(|| u.name.strip_suffix(".timer")).unwrap_or(&u.name);
            managed.insert(stem);
        }
    }
    let removed: Vec<String> = managed
        .iter()
        .filter(|n| !desired.services.contains_key(**n) && !desired.timers.contains_key(**n))
        .map(|n| n.to_string())
        .collect();
    let over = removed.len() * 100 > usize::from(max_percent) * managed.len();
    (removed.len() >= 2 && over).then_some(MassRemoval { removed, managed: managed.len(), max_percent })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::daemon::test_support::{container, desired, service};
    use crate::reconcile::model::{RunState, Unit, UnitActive};

    fn counts(m: Option<MassRemoval>) -> Option<(usize, usize)> {
        m.map(|m| (m.removed.len(), m.managed))
    }

    #[test]
    fn removing_most_managed_services_is_a_mass_removal() {
        let mut observed = Observed::default();
        for s in ["a", "b", "c", "d"] {
            observed.containers.push(container(s, 1, RunState::Running));
        }
        let all = desired(&[service("a", ""), service("b", ""), service("c", ""), service("d", "")].concat());
        assert_eq!(mass_removal(&observed, &all, "t", 50), None);
        // Two of four is 50%: not more than the limit.
        let two = desired(&[service("a", ""), service("b", "")].concat());
        assert_eq!(mass_removal(&observed, &two, "t", 50), None);
        // Three of four is.
        let one = desired(&service("a", ""));
        assert_eq!(counts(mass_removal(&observed, &one, "t", 50)), Some((3, 4)));
        // An empty set (a deleted directory's contents) removes everything.
        assert_eq!(counts(mass_removal(&observed, &Desired::default(), "t", 50)), Some((4, 4)));
        // A stricter limit.
        assert_eq!(counts(mass_removal(&observed, &two, "t", 25)), Some((2, 4)));
        let m = mass_removal(&observed, &one, "t", 50).expect("too much");
        assert_eq!(m.to_string(), "would remove 3 of the 4 managed services and Timers, more than 50% (b, c, d)");
    }

    #[test]
    fn removing_the_only_service_is_not_a_mass_removal() {
        let mut observed = Observed::default();
        observed.containers.push(container("a", 1, RunState::Running));
        assert_eq!(mass_removal(&observed, &Desired::default(), "t", 50), None);
    }

    #[test]
    fn units_of_this_scope_count_as_managed() {
        let mut observed = Observed::default();
        let unit = |name: &str, scope: &str| Unit {
            name: name.into(),
            content: String::new(),
            scope: Some(scope.into()),
            active: UnitActive::Active,
            enabled: true,
            exit_status: None,
        };
        observed.units = Some(BTreeMap::from([
            ("web.service".to_string(), unit("web.service", "t")),
            ("dump.service".to_string(), unit("dump.service", "t")),
            ("dump.timer".to_string(), unit("dump.timer", "t")),
            ("other.service".to_string(), unit("other.service", "elsewhere")),
        ]));
        assert_eq!(counts(mass_removal(&observed, &Desired::default(), "t", 50)), Some((2, 2)));
    }
}
