//! The placement decision: which member of the cluster runs each instance (slot) of each
//! placed service. A pure function of the members as the leader sees them, the placed
//! services, and the current assignments; no clock, no etcd. The leader runs it whenever
//! one of them changes and writes what changed under each affected node's own prefix
//! ([`changes`]), so a change wakes only the nodes it concerns.
//!
//! The rules (docs/cluster.md says them for operators):
//!
//! - A service of `replicas: N` has the slots `1..=N`, numbered as its instances are: slot
//!   `k` is the container `SERVICE-k` on the node it is assigned to.
//! - Stability: a slot stays where it is while its node is live, not drained and has the
//!   service's role (and, with `spread`, holds no lower slot of the service). A healthy slot
//!   is never moved to even out the load.
//! - A slot of a drained member, of a member without the role, or of a member that is gone
//!   moves. A member whose lease ran out less than the service's fence ago (with
//!   `onLostLease: stop`: `lostLeaseGrace` plus the instance's stop timeout) keeps its slot,
//!   fenced, so the slot never runs on two nodes at once; it moves once the fence is over.
//! - Slots above `replicas` are dropped (scaling down; [`changes`] lists a node's removals
//!   highest slot first).
//! - A slot without a node goes to the live, undrained member with the role that holds the
//!   fewest slots of the service, then the fewest slots in all, then the first by name.
//!   With `spread`, a member holds at most one slot of a service; a slot that finds no
//!   member stays unplaced and is reported ([`Unplaced`]).
//! - The result depends on the inputs only, not on their order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tend_specs::service::OnLostLease;

/// The assignments of every placed service: service name → slot → node.
pub type Assignments = BTreeMap<String, BTreeMap<u32, String>>;

/// Docker's stop timeout when a service sets none: how long a stop may take before the kill.
const DOCKER_DEFAULT_STOP: Duration = Duration::from_secs(10);

/// Added to a fence for what follows the stop timeout: the kill, the engine's answer, and
/// the agents' clocks running at slightly different rates.
const FENCE_MARGIN: Duration = Duration::from_secs(2);

/// A member of the cluster as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node name (`cluster.node`), unique in the cluster.
    pub node: String,
    /// Its roles (`cluster.roles`).
    pub roles: BTreeSet<String>,
    /// Whether it is live, drained or lost.
    pub state: MemberState,
}

/// Where a member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Its lease is alive: it keeps its slots and takes new ones.
    Live,
    /// Its lease is alive and it is drained (`tend drain`): it takes no new slot, and its
    /// slots move.
    Drained,
    /// Its lease ran out this long ago (since the leader saw its key go; a leader that
    /// took over since counts from when it did). Its slots move, except while they are
    /// fenced. A member absent from the list altogether counts as lost for good.
    Lost {
        /// How long ago its lease ran out.
        ago: Duration,
    },
}

/// A service whose instances are placed on members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedService {
    /// The service's name.
    pub name: String,
    /// The role its members must have (`placement.role`).
    pub role: String,
    /// How many slots it has (`replicas`).
    pub replicas: u32,
    /// At most one slot per member (`placement.spread`).
    pub spread: bool,
    /// How long after a member's lease ran out its copy of a slot may still run, when the
    /// member stops it itself (`onLostLease: stop`); the slot is not placed elsewhere
    /// before. `None` (`onLostLease: keep`): the slot moves as soon as the lease runs out.
    pub fence: Option<Duration>,
}

impl PlacedService {
    /// The placed service a validated service describes; `None` when it has no
    /// `placement`.
    pub fn from_service(service: &tend_specs::Service) -> Option<Self> {
        let placement = service.spec.placement.as_ref()?;
        let fence = (placement.on_lost_lease == OnLostLease::Stop).then(|| {
            let stop = service.spec.stop_timeout.map_or(DOCKER_DEFAULT_STOP, |t| t.get());
            placement.lost_lease_grace.get().saturating_add(stop).saturating_add(FENCE_MARGIN)
        });
        Some(Self {
            name: service.name.clone(),
            role: placement.role.clone(),
            replicas: service.spec.replicas,
            spread: placement.spread,
            fence,
        })
    }
}

/// What [`place`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Where each slot runs. A fenced slot is still assigned to its lost member.
    pub assignments: Assignments,
    /// Slots without a member, with why, by service and slot.
    pub unplaced: Vec<Unplaced>,
    /// Slots kept on a lost member until its copy is surely stopped, by service and slot.
    pub fenced: Vec<Fenced>,
}

/// A slot that no member can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    /// The service.
    pub service: String,
    /// The slot.
    pub slot: u32,
    /// Why.
    pub why: Shortfall,
}

/// Why a slot has no member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// No live, undrained member has the role.
    NoMember,
    /// With `spread`, each of the `members` live, undrained members with the role already
    /// holds a slot of the service.
    Spread {
        /// How many members could take a slot of the service.
        members: usize,
    },
}

/// A slot that stays on a lost member until its copy there is surely stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    /// The service.
    pub service: String,
    /// The slot.
    pub slot: u32,
    /// The lost member.
    pub node: String,
    /// How long until the slot may move: the leader decides again then.
    pub remaining: Duration,
}

/// Decides where every slot of `services` runs, given the `members` and the `current`
/// assignments (see the module's documentation for the rules). A node listed twice in
/// `members`, or a service listed twice in `services`, counts once (the first). Current
/// assignments of services not in `services` are dropped.
pub fn place(members: &[Member], services: &[PlacedService], current: &Assignments) -> Decision {
    let mut by_node: BTreeMap<&str, &Member> = BTreeMap::new();
    for m in members {
        by_node.entry(m.node.as_str()).or_insert(m);
    }
    let mut by_name: BTreeMap<&str, &PlacedService> = BTreeMap::new();
    for s in services {
        by_name.entry(s.name.as_str()).or_insert(s);
    }
    let mut decision = Decision::default();
    // Slots held by each node, of every service: kept ones first, so that new slots see the
    // whole load.
    let mut load: BTreeMap<&str, usize> = by_node.keys().map(|n| (*n, 0)).collect();
    for (name, service) in &by_name {
        let mut kept: BTreeMap<u32, String> = BTreeMap::new();
        let slots = current.get(*name).into_iter().flatten().filter(|(slot, _)| (1..=service.replicas).contains(*slot));
        for (slot, node) in slots {
            let Some(member) = by_node.get(node.as_str()) else { continue };
            let keep = match member.state {
                MemberState::Live => {
                    member.roles.contains(&service.role) && !(service.spread && kept.values().any(|n| n == node))
                }
                MemberState::Drained => false,
                MemberState::Lost { ago } => match service.fence {
                    Some(fence) if ago < fence => {
                        let remaining = fence - ago;
                        decision.fenced.push(Fenced {
                            service: name.to_string(),
                            slot: *slot,
                            node: node.clone(),
                            remaining,
                        });
                        true
                    }
                    _ => false,
                },
            };
            if keep {
                *load.entry(member.node.as_str()).or_default() += 1;
                kept.insert(*slot, node.clone());
            }
        }
        decision.assignments.insert(name.to_string(), kept);
    }
    for (name, service) in &by_name {
        let Some(assigned) = decision.assignments.get_mut(*name) else { continue };
        let eligible: Vec<&str> = by_node
            .values()
            .filter(|m| m.state == MemberState::Live && m.roles.contains(&service.role))
            .map(|m| m.node.as_str())
            .collect();
        // Slots of this service each member holds.
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        for node in assigned.values() {
            *held.entry(node.clone()).or_default() += 1;
        }
        for slot in 1..=service.replicas {
            if assigned.contains_key(&slot) {
                continue;
            }
            let held_by = |node: &str| held.get(node).copied().unwrap_or_default();
            let choice = eligible
                .iter()
                .filter(|node| !service.spread || held_by(node) == 0)
                .min_by_key(|node| (held_by(node), load.get(**node).copied().unwrap_or_default(), **node))
                .copied();
            match choice {
                Some(node) => {
                    *load.entry(node).or_default() += 1;
                    *held.entry(node.to_string()).or_default() += 1;
                    assigned.insert(slot, node.to_string());
                }
                None => {
                    let why = if eligible.is_empty() {
                        Shortfall::NoMember
                    } else {
                        Shortfall::Spread { members: eligible.len() }
                    };
                    decision.unplaced.push(Unplaced { service: name.to_string(), slot, why });
                }
            }
        }
    }
    decision
}

/// A slot of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRef {
    /// The service.
    pub service: String,
    /// The slot.
    pub slot: u32,
}

/// What changes for one node between two assignments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeChanges {
    /// Slots it starts to run, by service, lowest slot first.
    pub added: Vec<SlotRef>,
    /// Slots it stops running, by service, highest slot first (scaling down removes from the
    /// top).
    pub removed: Vec<SlotRef>,
}

/// The changes from `old` to `new` assignments, for the nodes they concern only: a slot
/// that moves is removed from one node and added to the other; a slot that stays is no
/// change.
pub fn changes(old: &Assignments, new: &Assignments) -> BTreeMap<String, NodeChanges> {
    let flat = |a: &Assignments| -> BTreeMap<SlotRef, String> {
        a.iter()
            .flat_map(|(service, slots)| {
                slots.iter().map(move |(slot, node)| (SlotRef { service: service.clone(), slot: *slot }, node.clone()))
            })
            .collect()
    };
    let (old, new) = (flat(old), flat(new));
    let mut out: BTreeMap<String, NodeChanges> = BTreeMap::new();
    for (slot, node) in &old {
        if new.get(slot) != Some(node) {
            out.entry(node.clone()).or_default().removed.push(slot.clone());
        }
    }
    for (slot, node) in &new {
        if old.get(slot) != Some(node) {
            out.entry(node.clone()).or_default().added.push(slot.clone());
        }
    }
    for c in out.values_mut() {
        c.removed.sort_by(|a, b| a.service.cmp(&b.service).then(b.slot.cmp(&a.slot)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: &str, roles: &[&str], state: MemberState) -> Member {
        Member { node: node.into(), roles: roles.iter().map(|r| r.to_string()).collect(), state }
    }

    fn live(node: &str) -> Member {
        member(node, &["judicator"], MemberState::Live)
    }

    fn lost(node: &str, secs: u64) -> Member {
        member(node, &["judicator"], MemberState::Lost { ago: Duration::from_secs(secs) })
    }

    fn service(name: &str, replicas: u32, spread: bool) -> PlacedService {
        PlacedService { name: name.into(), role: "judicator".into(), replicas, spread, fence: None }
    }

    /// Assignments from `(service, [(slot, node)])`.
    fn assigned(entries: &[(&str, &[(u32, &str)])]) -> Assignments {
        entries
            .iter()
            .map(|(s, slots)| (s.to_string(), slots.iter().map(|(k, n)| (*k, n.to_string())).collect()))
            .collect()
    }

    /// The nodes of `service`'s slots, in slot order (`-` for a slot without a node).
    fn nodes(d: &Decision, service: &str, replicas: u32) -> Vec<String> {
        let slots = d.assignments.get(service);
        (1..=replicas).map(|k| slots.and_then(|s| s.get(&k)).cloned().unwrap_or_else(|| "-".into())).collect()
    }

    #[test]
    fn a_fresh_placement_spreads_the_slots_over_the_members_of_the_role() {
        let members = [live("c"), live("a"), live("b"), member("d", &["mongo"], MemberState::Live)];
        let d = place(&members, &[service("etcd", 3, true)], &Assignments::new());
        assert_eq!(nodes(&d, "etcd", 3), ["a", "b", "c"]);
        assert!(d.unplaced.is_empty() && d.fenced.is_empty());
        // Two services: the second starts on the least loaded members.
        let d = place(&members[..3], &[service("etcd", 1, true), service("mongo", 2, true)], &Assignments::new());
        assert_eq!((nodes(&d, "etcd", 1), nodes(&d, "mongo", 2)), (vec!["a".into()], vec!["b".into(), "c".into()]));
    }

    #[test]
    fn healthy_slots_never_move_even_to_even_out_the_load() {
        let current = assigned(&[("etcd", &[(1, "a"), (2, "a"), (3, "b")])]);
        let members = [live("a"), live("b"), live("c"), live("d")];
        let d = place(&members, &[service("etcd", 3, false)], &current);
        assert_eq!(d.assignments, current, "a new member takes nothing from the others");
        assert!(changes(&current, &d.assignments).is_empty());
    }

    #[test]
    fn a_dead_members_slots_move_to_the_survivors() {
        let current = assigned(&[("etcd", &[(1, "a"), (2, "b"), (3, "c")])]);
        // c is gone from the list: its lease ran out and its key went away.
        let d = place(&[live("a"), live("b"), live("d")], &[service("etcd", 3, true)], &current);
        assert_eq!(nodes(&d, "etcd", 3), ["a", "b", "d"]);
        let ch = changes(&current, &d.assignments);
        let slot3 = || vec![SlotRef { service: "etcd".into(), slot: 3 }];
        assert_eq!(ch.keys().collect::<Vec<_>>(), ["c", "d"], "only the nodes concerned");
        assert_eq!((&ch["c"].removed, &ch["d"].added), (&slot3(), &slot3()));
        // Listed as lost, without a fence: the same.
        let d2 = place(&[live("a"), live("b"), live("d"), lost("c", 0)], &[service("etcd", 3, true)], &current);
        assert_eq!(d2.assignments, d.assignments);
    }

    #[test]
    fn a_fenced_slot_stays_on_its_lost_member_until_the_fence_is_over() {
        let current = assigned(&[("etcd", &[(1, "a"), (2, "b"), (3, "c")])]);
        let fenced = PlacedService { fence: Some(Duration::from_secs(42)), ..service("etcd", 3, true) };
        let members = |ago| [live("a"), live("b"), live("d"), lost("c", ago)];
        let d = place(&members(10), std::slice::from_ref(&fenced), &current);
        assert_eq!(d.assignments, current, "not placed twice while c may still run it");
        assert_eq!(
            d.fenced,
            [Fenced { service: "etcd".into(), slot: 3, node: "c".into(), remaining: Duration::from_secs(32) }]
        );
        let d = place(&members(42), &[fenced], &current);
        assert_eq!(nodes(&d, "etcd", 3), ["a", "b", "d"], "moved once the fence is over");
        assert!(d.fenced.is_empty());
    }

    #[test]
    fn a_drained_member_takes_no_slot_and_its_slots_move() {
        let current = assigned(&[("etcd", &[(1, "a"), (2, "b")])]);
        let members = [live("a"), member("b", &["judicator"], MemberState::Drained), live("c")];
        let d = place(&members, &[service("etcd", 2, true)], &current);
        assert_eq!(nodes(&d, "etcd", 2), ["a", "c"]);
        // Drained with nowhere to go: the slot is unplaced rather than left on b.
        let d = place(&members[..2], &[service("etcd", 2, true)], &current);
        assert_eq!(nodes(&d, "etcd", 2), ["a", "-"]);
        assert_eq!(d.unplaced, [Unplaced { service: "etcd".into(), slot: 2, why: Shortfall::Spread { members: 1 } }]);
    }

    #[test]
    fn scaling_up_fills_new_slots_and_scaling_down_removes_from_the_top() {
        let current = assigned(&[("etcd", &[(1, "a"), (2, "b"), (3, "c")])]);
        let members = [live("a"), live("b"), live("c"), live("d"), live("e")];
        let up = place(&members, &[service("etcd", 5, true)], &current);
        assert_eq!(nodes(&up, "etcd", 5), ["a", "b", "c", "d", "e"]);
        let down = place(&members, &[service("etcd", 3, true)], &up.assignments);
        assert_eq!(down.assignments, current);
        let ch = changes(&up.assignments, &down.assignments);
        assert_eq!(ch.keys().collect::<Vec<_>>(), ["d", "e"]);
        assert_eq!(ch["e"].removed, [SlotRef { service: "etcd".into(), slot: 5 }]);
        // Removals on one node come highest slot first.
        let packed = assigned(&[("etcd", &[(1, "a"), (2, "a"), (3, "a")])]);
        let ch = changes(&packed, &assigned(&[("etcd", &[(1, "a")])]));
        let removed: Vec<u32> = ch["a"].removed.iter().map(|s| s.slot).collect();
        assert_eq!(removed, [3, 2]);
        // To zero, and a service no longer placed: every slot goes.
        assert_eq!(place(&members, &[service("etcd", 0, true)], &current).assignments["etcd"], BTreeMap::new());
        assert!(place(&members, &[], &current).assignments.is_empty());
    }

    #[test]
    fn with_spread_and_too_few_members_a_slot_stays_unplaced_and_says_why() {
        let d = place(&[live("a"), live("b")], &[service("etcd", 3, true)], &Assignments::new());
        assert_eq!(nodes(&d, "etcd", 3), ["a", "b", "-"]);
        assert_eq!(d.unplaced, [Unplaced { service: "etcd".into(), slot: 3, why: Shortfall::Spread { members: 2 } }]);
        // Without spread, the members double up, evenly.
        let d = place(&[live("a"), live("b")], &[service("etcd", 3, false)], &Assignments::new());
        assert_eq!(nodes(&d, "etcd", 3), ["a", "b", "a"]);
        assert!(d.unplaced.is_empty());
        // Turning spread on moves the higher of two slots on one member, if it can.
        let packed = assigned(&[("etcd", &[(1, "a"), (2, "a")])]);
        let d = place(&[live("a"), live("b")], &[service("etcd", 2, true)], &packed);
        assert_eq!(nodes(&d, "etcd", 2), ["a", "b"]);
    }

    #[test]
    fn only_members_with_the_role_take_slots() {
        let members = [member("a", &["mongo"], MemberState::Live), member("b", &[], MemberState::Live)];
        let d = place(&members, &[service("etcd", 2, true)], &Assignments::new());
        assert_eq!(nodes(&d, "etcd", 2), ["-", "-"]);
        let why: Vec<Shortfall> = d.unplaced.iter().map(|u| u.why).collect();
        assert_eq!(why, [Shortfall::NoMember, Shortfall::NoMember]);
        // A member that lost the role (its configuration changed) gives its slot up.
        let current = assigned(&[("etcd", &[(1, "a")])]);
        let members = [member("a", &["mongo"], MemberState::Live), live("b")];
        assert_eq!(nodes(&place(&members, &[service("etcd", 1, true)], &current), "etcd", 1), ["b"]);
    }

    #[test]
    fn the_decision_does_not_depend_on_the_order_of_the_inputs() {
        let members = [live("a"), live("b"), live("c"), live("d"), member("e", &["judicator"], MemberState::Drained)];
        let services = [service("etcd", 3, true), service("mongo", 4, false), service("web", 2, true)];
        let current = assigned(&[("etcd", &[(1, "e"), (2, "c")]), ("mongo", &[(4, "b")])]);
        let want = place(&members, &services, &current);
        let (mut m, mut s) = (members.to_vec(), services.to_vec());
        for _ in 0..5 {
            m.rotate_left(1);
            m.reverse();
            s.rotate_left(1);
            assert_eq!(place(&m, &s, &current), want, "{m:?} {s:?}");
        }
        assert_eq!(place(&members, &services, &current), want, "and the same inputs give the same answer");
        // e is drained and c keeps slot 2; slot 3 goes to d rather than b, which runs a slot
        // of mongo: the load counts every service. Ties go to the first name.
        assert_eq!(nodes(&want, "etcd", 3), ["a", "c", "d"]);
        assert_eq!(nodes(&want, "mongo", 4), ["a", "c", "d", "b"]);
        assert_eq!(nodes(&want, "web", 2), ["b", "a"], "b held the fewest slots");
    }

    #[test]
    fn a_node_or_service_listed_twice_counts_once() {
        let members = [live("a"), member("a", &["judicator"], MemberState::Drained), live("b")];
        let services = [service("etcd", 2, true), service("etcd", 5, true)];
        let d = place(&members, &services, &Assignments::new());
        assert_eq!(nodes(&d, "etcd", 5), ["a", "b", "-", "-", "-"]);
        assert!(d.unplaced.is_empty(), "the first listing says 2 replicas");
    }

    #[test]
    fn a_fresh_placement_at_the_bounds_places_every_slot_evenly() {
        // Two services of 1000 replicas (the bound of one, and of a set together) on 50
        // members.
        let members: Vec<Member> = (0..50).map(|i| live(&format!("n{i:02}"))).collect();
        let services = [service("a", 1000, false), service("b", 1000, false)];
        let d = place(&members, &services, &Assignments::new());
        assert!(d.unplaced.is_empty());
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        for node in d.assignments.values().flat_map(|slots| slots.values()) {
            *load.entry(node.as_str()).or_default() += 1;
        }
        assert_eq!(load.len(), 50);
        assert!(load.values().all(|n| *n == 40), "{load:?}");
        // A member dies: its 40 slots go to the others, nothing else moves.
        let survivors = &members[1..];
        let again = place(survivors, &services, &d.assignments);
        let ch = changes(&d.assignments, &again.assignments);
        assert_eq!(ch["n00"].removed.len(), 40);
        assert_eq!(ch.values().map(|c| c.added.len()).sum::<usize>(), 40);
        assert!(ch.values().all(|c| c.added.len() <= 1), "spread over the survivors");
    }

    #[test]
    fn a_placed_service_is_read_from_its_spec() {
        let yaml = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: etcd}\nspec:\n  image: busybox:1\n  replicas: 3\n  stopTimeout: 20s\n  placement: {role: judicator, onLostLease: stop, lostLeaseGrace: 15s}\n---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: busybox:1\n---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: mongo}\nspec:\n  image: busybox:1\n  placement: {role: judicator, spread: false}\n";
        let desired = tend_specs::load_str(std::path::Path::new("t.yaml"), yaml).expect("valid");
        let etcd = PlacedService::from_service(&desired.services["etcd"]).expect("placed");
        assert_eq!(
            etcd,
            PlacedService {
                name: "etcd".into(),
                role: "judicator".into(),
                replicas: 3,
                spread: true,
                fence: Some(Duration::from_secs(15 + 20 + 2)),
            }
        );
        let mongo = PlacedService::from_service(&desired.services["mongo"]).expect("placed");
        assert_eq!((mongo.replicas, mongo.spread, mongo.fence), (1, false, None));
        assert_eq!(PlacedService::from_service(&desired.services["web"]), None);
    }
}
