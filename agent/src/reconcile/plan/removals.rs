//! Planning what no spec declares any more: the containers of removed services (held ones
//! and those under maintenance are left), then the networks tend created that no service
//! uses, after every removal.

use std::collections::BTreeMap;

use super::{Action, Builder, Cx, Live, Reason, held_or_in_maintenance, is_docker};
use crate::reconcile::model::{Observed, instance_name};

/// Removes the containers of services no spec declares as Docker services any more.
pub(super) fn removed_services(cx: &Cx<'_>, b: &mut Builder, live: &Live<'_>) {
    for (service, instances) in live {
        if cx.desired.services.get(*service).is_some_and(is_docker) {
            continue;
        }
        for (i, containers) in instances {
            let name = instance_name(service, *i);
            if held_or_in_maintenance(cx, b, service, &name) {
                continue;
            }
            for c in containers {
                let action = Action::Remove {
                    service: service.to_string(),
                    instance: *i,
                    name: c.name.clone(),
                    id: c.id.clone(),
                    stop_timeout_s: None,
                };
                b.push(action, Reason::SpecRemoved, vec![], 0);
            }
        }
    }
}

/// Removes the networks tend created that no service uses, after every removal.
pub(super) fn unreferenced_networks(b: &mut Builder, observed: &Observed, needed: &BTreeMap<&str, &str>) {
    let all_removals: Vec<usize> =
        b.steps.iter().filter(|s| matches!(s.action, Action::Remove { .. })).map(|s| s.id).collect();
    for n in observed.networks.iter().filter(|n| n.owned && !needed.contains_key(n.name.as_str())) {
        let action = Action::RemoveNetwork { network: n.name.clone(), id: n.id.clone() };
        b.push(action, Reason::Unreferenced, all_removals.clone(), 0);
    }
}
