//! The cluster: nodes whose agents coordinate through etcd (`engine::etcd`). `node` is
//! one node's part — membership (its key under a lease it keeps alive), a candidacy for
//! leadership (etcd's election API), the slots placed on it — and `leader` what the leader
//! does: placement (`placement`, pure) paced across the cluster (`pacing`, pure), written
//! under each node's prefix (`keys`). How a node's share becomes the instances it runs:
//! [`assign`]; on a node outside a cluster, [`place_locally`]. `report` reads what `tend
//! cluster members` and `tend cluster status` show; `metered` measures the store's calls.
//! `runonce` is the protocol that keeps a `runOn: leader` Timer's runs from overlapping in
//! the cluster.

pub mod budget;
pub mod keys;
pub mod leader;
pub mod metered;
pub mod node;
pub mod pacing;
pub mod placement;
pub mod report;
pub mod runonce;

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
