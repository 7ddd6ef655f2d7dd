//! The cluster: nodes whose agents coordinate through etcd. It will hold membership (each
//! agent's key under a lease it keeps alive), leadership (one leader per cluster, through
//! etcd's election API) and placement (the leader assigning the instances of placed
//! services to members). Membership and leadership over etcd are being built; what is here
//! is pure: the placement decision, and how a node's share of it becomes the instances it
//! runs ([`assign`]; on a node outside a cluster, [`place_locally`]).

pub mod placement;

use tend_specs::Desired;

use placement::{Assignments, Member, MemberState, PlacedService, place};

/// The node name a node outside a cluster places its services on.
const LOCAL: &str = "local";

/// Places the placed services of `desired` on a node outside a cluster: a cluster of one
/// that leads itself and has every role. It runs slot 1 of a spread service (the others
/// have no member to go to, and `tend plan` shows none of them) and every slot of one that
/// is not spread.
pub fn place_locally(desired: &mut Desired) {
    let services: Vec<PlacedService> = desired.services.values().filter_map(PlacedService::from_service).collect();
    if services.is_empty() {
        return;
    }
    let roles = services.iter().map(|s| s.role.clone()).collect();
    let me = Member { node: LOCAL.into(), roles, state: MemberState::Live };
    let decision = place(&[me], &services, &Assignments::new());
    assign(desired, &decision.assignments, LOCAL);
}

/// Sets the instances `node` runs of each placed service of `desired` to the slots
/// `assignments` give it (none when it has none).
pub fn assign(desired: &mut Desired, assignments: &Assignments, node: &str) {
    for s in desired.services.values_mut().filter(|s| s.spec.placement.is_some()) {
        let mine = assignments.get(&s.name).into_iter().flatten().filter(|(_, n)| *n == node).map(|(slot, _)| *slot);
        s.slots = Some(mine.collect());
    }
}
