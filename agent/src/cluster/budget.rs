//! The disruption budget of placed services: how many of a service's instances may be down
//! at once across the cluster for maintenance (`tend maintain`, `tend drain`). Each window
//! takes a slot `/tend/<cluster>/budget/<service>/<k>` (`k` from 1 to what the budget
//! allows) for each instance of the service it takes down, in a transaction that creates it
//! only if absent, under a lease — so two operators racing for the last slot cannot both
//! win. A maintenance window holds its slots under a lease of its own that it keeps alive,
//! so a crashed operator's slots free themselves after the lease's TTL; a drain holds them
//! under its node's membership lease, for as long as the node is drained and a member.
//! Instances already down (a slot the leader could not place, placed on a member that is
//! gone, or not ready where it runs) count against the budget first, except those a drain
//! holds a slot for already.

use serde::{Deserialize, Serialize};
use tend_specs::Service;

use crate::cluster::keys::Keys;
use crate::engine::etcd::{ClusterStore, Condition, EtcdError, KeyValue, LeaseId, TxnOp, TxnOutcome};

/// What holds a budget slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldKind {
    /// A maintenance window (`tend maintain`), under its own lease.
    #[default]
    Maintain,
    /// A drain (`tend drain`), under its node's membership lease.
    Drain,
    /// A node's turn in the rollout of a changed spec (`turns`), under its node's
    /// membership lease.
    Rollout,
}

/// Who holds a budget slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    /// The node the window runs on.
    pub node: String,
    /// Who opened it (`user`, from the lock's holder).
    pub user: String,
    /// Why, if said.
    pub reason: Option<String>,
    /// Since when (ms since the epoch).
    pub since_ms: u64,
    /// A window or a drain.
    #[serde(default)]
    pub kind: HoldKind,
}

impl Holder {
    /// `drain by root@node-a since TIME`, as a refusal names it.
    fn describe(&self) -> String {
        let what = match self.kind {
            HoldKind::Maintain => "",
            HoldKind::Drain => "drain by ",
            HoldKind::Rollout => "rollout by ",
        };
        format!("{what}{}@{} since {}", self.user, self.node, crate::support::time::format_ms(self.since_ms))
    }
}

/// Why a slot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// etcd failed.
    #[error("the disruption budget of {service}")]
    Etcd {
        /// The service.
        service: String,
        /// The cause.
        #[source]
        source: EtcdError,
    },
    /// Not enough slots are free.
    #[error(
        "the disruption budget of {service} is spent: {allowed} instance(s) may be down at once, {down} already are{}{}{}",
        if *needed > 1 { format!(", and this node runs {needed} of them") } else { String::new() },
        if holders.is_empty() { String::new() } else { format!(", held by {}", holders.join("; ")) },
        " (wait with --wait)"
    )]
    Spent {
        /// The service.
        service: String,
        /// Its budget.
        allowed: u32,
        /// Instances down already (unplaced, or on a gone member, and not held by a drain).
        down: u32,
        /// How many slots the window needed.
        needed: u32,
        /// Who holds the slots and since when.
        holders: Vec<String>,
    },
}

/// How many instances of `service` may be down at once: `placement.maxUnavailable`, else a
/// minority, floor((replicas − 1) / 2). `None` for a service that is not placed.
pub fn allowed(service: &Service) -> Option<u32> {
    let placement = service.spec.placement.as_ref()?;
    Some(placement.max_unavailable.unwrap_or(service.spec.replicas.saturating_sub(1) / 2))
}

/// How many of `service`'s instances a rollout may take down at once across the cluster:
/// `rollout.maxUnavailable` within the budget, and at least one (a changed spec always rolls
/// out, one node at a time where the budget allows none).
pub fn rollout_allowed(service: &Service) -> u32 {
    let budget = allowed(service).unwrap_or(0).max(1);
    service.spec.rollout.max_unavailable.clamp(1, budget)
}

/// The key of slot `k` of `service`'s budget.
pub fn slot_key(keys: &Keys, service: &str, k: u32) -> String {
    format!("{}{k}", keys.budget(service))
}

/// The holders of the slots under `prefix`, with their keys.
fn holders(kvs: &[KeyValue]) -> Vec<(&KeyValue, Holder)> {
    kvs.iter().filter_map(|kv| serde_json::from_slice::<Holder>(&kv.value).ok().map(|h| (kv, h))).collect()
}

/// How many instances of `service` are down: not placed, placed on a member that is gone,
/// or not ready on a live member (as it says under `unready/`).
async fn down<S: ClusterStore>(store: &S, keys: &Keys, service: &Service) -> Result<u32, EtcdError> {
    let members = store.get_prefix(&keys.members()).await?;
    let live: Vec<&str> = members.kvs.iter().filter_map(|kv| kv.key.strip_prefix(&keys.members())).collect();
    let assigned = store.get_prefix(&keys.assignments()).await?;
    let slots = keys
        .read_assignments(assigned.kvs.iter().map(|kv| kv.key.as_str()))
        .remove(service.name.as_str())
        .unwrap_or_default();
    let placed_on = |node: &str| slots.values().filter(|n| n.as_str() == node).count() as u32;
    let up = slots.values().filter(|node| live.contains(&node.as_str())).count() as u32;
    let prefix = keys.unready(&service.name);
    let unready = store.get_prefix(&prefix).await?;
    let not_ready: u32 = unready
        .kvs
        .iter()
        .filter_map(|kv| {
            let node = kv.key.strip_prefix(&prefix)?;
            let count: u32 = serde_json::from_slice(&kv.value).ok()?;
            live.contains(&node).then(|| count.min(placed_on(node)))
        })
        .sum();
    Ok(service.spec.replicas.saturating_sub(up) + not_ready.min(up))
}

/// Takes `needed` slots of `service`'s budget for `holder` under `lease`, all or none;
/// returns them.
pub async fn take<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    service: &Service,
    holder: &Holder,
    lease: LeaseId,
    needed: u32,
) -> Result<Vec<u32>, BudgetError> {
    let name = service.name.as_str();
    let etcd = |source| BudgetError::Etcd { service: name.to_string(), source };
    let allowed = match holder.kind {
        HoldKind::Rollout => rollout_allowed(service),
        HoldKind::Maintain | HoldKind::Drain => allowed(service).unwrap_or(0),
    };
    let down = down(store, keys, service).await.map_err(etcd)?;
    let held = store.get_prefix(&keys.budget(name)).await.map_err(etcd)?;
    let held = holders(&held.kvs);
    // An instance a drain moved off its node, and that no other member could take, is down
    // because of that drain, which holds a slot for it already: not counted twice.
    let drains = held.iter().filter(|(_, h)| h.kind == HoldKind::Drain).count() as u32;
    let down = down.saturating_sub(drains);
    let value = serde_json::to_vec(holder).unwrap_or_default();
    let mut taken = Vec::new();
    for k in 1..=allowed.saturating_sub(down) {
        if taken.len() == needed as usize {
            break;
        }
        let key = slot_key(keys, name, k);
        let put = TxnOp::Put { key: key.clone(), value: value.clone(), lease: Some(lease) };
        if let TxnOutcome::Committed(_) = store.txn(&[Condition::Absent(key)], &[put]).await.map_err(etcd)? {
            taken.push(k);
        }
    }
    if taken.len() == needed as usize {
        return Ok(taken);
    }
    for k in &taken {
        store.delete(&slot_key(keys, name, *k)).await.map_err(etcd)?;
    }
    let held = store.get_prefix(&keys.budget(name)).await.map_err(etcd)?;
    let holders = holders(&held.kvs).iter().map(|(_, h)| h.describe()).collect();
    Err(BudgetError::Spent { service: name.to_string(), allowed, down, needed, holders })
}

/// The slots `node`'s drain holds, of every service.
async fn drain_slots<S: ClusterStore>(store: &S, keys: &Keys, node: &str) -> Result<Vec<KeyValue>, EtcdError> {
    let all = store.get_prefix(&keys.budgets()).await?;
    Ok(holders(&all.kvs)
        .into_iter()
        .filter(|(_, h)| h.kind == HoldKind::Drain && h.node == node)
        .map(|(kv, _)| kv.clone())
        .collect())
}

/// Gives back every slot `node`'s drain holds (it was undrained); how many there were.
pub async fn release_drain<S: ClusterStore>(store: &S, keys: &Keys, node: &str) -> Result<usize, EtcdError> {
    let slots = drain_slots(store, keys, node).await?;
    for kv in &slots {
        store.delete(&kv.key).await?;
    }
    Ok(slots.len())
}

/// Moves the slots `node`'s drain holds under `lease`, the node's new membership lease (its
/// agent joined again while the node is drained); how many it moved. A slot that went with
/// the old lease (the node was away longer than its TTL, so its instances were placed
/// elsewhere meanwhile) is not taken again.
pub async fn reattach_drain<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    node: &str,
    lease: LeaseId,
) -> Result<usize, EtcdError> {
    let mut moved = 0;
    for kv in drain_slots(store, keys, node).await?.into_iter().filter(|kv| kv.lease != Some(lease)) {
        let put = TxnOp::Put { key: kv.key.clone(), value: kv.value.clone(), lease: Some(lease) };
        let same = Condition::CreatedAt(kv.key.clone(), kv.create_revision);
        if let TxnOutcome::Committed(_) = store.txn(&[same], &[put]).await? {
            moved += 1;
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        let d = tend_specs::load_str(std::path::Path::new("t.yaml"), yaml).expect("valid");
        d.services.into_values().next().expect("one service")
    }

    #[test]
    fn the_budget_is_a_minority_unless_set_and_none_for_a_service_not_placed() {
        let doc = |extra: &str| {
            format!("apiVersion: tend/v1\nkind: Service\nmetadata: {{name: j}}\nspec:\n  image: i:1\n{extra}")
        };
        assert_eq!(allowed(&service(&doc("  replicas: 5\n  placement: {role: r}\n"))), Some(2));
        assert_eq!(allowed(&service(&doc("  replicas: 2\n  placement: {role: r}\n"))), Some(0));
        assert_eq!(allowed(&service(&doc("  replicas: 2\n  placement: {role: r, maxUnavailable: 1}\n"))), Some(1));
        assert_eq!(allowed(&service(&doc("  replicas: 3\n"))), None);
        // A rollout: rollout.maxUnavailable within the budget, and at least one.
        assert_eq!(rollout_allowed(&service(&doc("  replicas: 5\n  placement: {role: r}\n"))), 1);
        let wide = "  replicas: 5\n  placement: {role: r}\n  rollout: {maxUnavailable: 3}\n";
        assert_eq!(rollout_allowed(&service(&doc(wide))), 2);
        assert_eq!(rollout_allowed(&service(&doc("  replicas: 2\n  placement: {role: r}\n"))), 1);
        assert_eq!(slot_key(&Keys::new("c"), "j", 2), "/tend/c/budget/j/2");
    }
}
