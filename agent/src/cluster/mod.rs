//! The cluster: nodes whose agents coordinate through etcd (`engine::etcd`). `node` is
//! one node's part — membership (its key under a lease it keeps alive), a candidacy for
//! leadership (etcd's election API), the slots placed on it — and `leader` what the leader
//! does: placement (`placement`, pure) paced across the cluster (`pacing`, pure), written
//! under each node's prefix (`keys`). How a node's share becomes the instances it runs:
//! [`assign`]; on a node outside a cluster, [`place_locally`]. `report` reads what `tend
//! cluster members` and `tend cluster status` show; `metered` measures the store's calls.
//! `runonce` is the protocol that keeps a `runOn: leader` Timer's runs from overlapping in
//! the cluster; `budget` the disruption budget of maintenance, drains and rollouts, and
//! `turns` a node's turn in the cluster-wide rollout of a changed spec.

pub mod budget;
pub mod keys;
pub mod leader;
pub mod metered;
pub mod node;
pub mod pacing;
pub mod placement;
pub mod report;
pub mod runonce;
pub mod turns;
pub mod view;

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
/// `assignments` give it (none when it has none). A slot above `replicas` that is still
/// assigned here keeps running: the leader drops those one per `scaleDownInterval`, and
/// the node follows the leader, not its own reading of `replicas` (which would drop them
/// all at once, on every node).
pub fn assign(desired: &mut Desired, assignments: &Assignments, node: &str) {
    for s in desired.services.values_mut().filter(|s| s.spec.placement.is_some()) {
        let mine: std::collections::BTreeSet<u32> =
            assignments.get(&s.name).into_iter().flatten().filter(|(_, n)| *n == node).map(|(slot, _)| *slot).collect();
        if let Some(top) = mine.last() {
            s.spec.replicas = s.spec.replicas.max(*top);
        }
        s.slots = Some(mine);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_node_runs_the_slots_assigned_to_it_even_above_replicas_until_the_leader_drops_them() {
        let yaml = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: j}\nspec:\n  image: busybox:1\n  \
                    replicas: 3\n  placement: {role: r}\n";
        let mut desired = tend_specs::load_str(Path::new("t.yaml"), yaml).expect("valid specs");
        let slots = [(2, "a".to_string()), (4, "a".to_string()), (5, "b".to_string())];
        assign(&mut desired, &Assignments::from([("j".to_string(), slots.into_iter().collect())]), "a");
        assert_eq!(desired.services["j"].instances(), [2, 4], "scaled down to 3, slot 4 still assigned here");
        assert!(!desired.services["j"].runs_instance(5));
    }
}
