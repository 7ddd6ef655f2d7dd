//! The disruption budget of placed services: how many of a service's instances may be down
//! at once across the cluster for maintenance (`tend maintain`, `tend drain`). Each window
//! takes a slot `/tend/<cluster>/budget/<service>/<k>` (`k` from 1 to what the budget
//! allows) in a transaction that creates it only if absent, under a lease the window keeps
//! alive — so two operators racing for the last slot cannot both win, and a crashed
//! operator's slot frees itself after the lease's TTL. Instances already down (a slot the
//! leader could not place, or placed on a member that is gone) count against the budget
//! first.

use serde::{Deserialize, Serialize};
use tend_specs::Service;

use crate::cluster::keys::Keys;
use crate::engine::etcd::{ClusterStore, Condition, EtcdError, LeaseId, TxnOp, TxnOutcome};

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
    /// No slot is free.
    #[error(
        "the disruption budget of {service} is spent: {allowed} instance(s) may be down at once, {down} already are{}{}",
        if holders.is_empty() { String::new() } else { format!(", held by {}", holders.join("; ")) },
        " (wait with --wait)"
    )]
    Spent {
        /// The service.
        service: String,
        /// Its budget.
        allowed: u32,
        /// Instances down already (unplaced, or on a gone member).
        down: u32,
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

/// The key of slot `k` of `service`'s budget.
fn slot_key(keys: &Keys, service: &str, k: u32) -> String {
    format!("{}{k}", keys.budget(service))
}

/// Takes a slot of `service`'s budget for `holder` under `lease`; returns the slot.
pub async fn take<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    service: &Service,
    holder: &Holder,
    lease: LeaseId,
) -> Result<u32, BudgetError> {
    let name = service.name.as_str();
    let etcd = |source| BudgetError::Etcd { service: name.to_string(), source };
    let allowed = allowed(service).unwrap_or(0);
    let members = store.get_prefix(&keys.members()).await.map_err(etcd)?;
    let live: Vec<String> =
        members.kvs.iter().filter_map(|kv| kv.key.strip_prefix(&keys.members())).map(String::from).collect();
    let assigned = store.get_prefix(&keys.assignments()).await.map_err(etcd)?;
    let slots = keys.read_assignments(assigned.kvs.iter().map(|kv| kv.key.as_str())).remove(name).unwrap_or_default();
    let up = slots.values().filter(|node| live.contains(node)).count() as u32;
    let down = service.spec.replicas.saturating_sub(up);
    let value = serde_json::to_vec(holder).unwrap_or_default();
    for k in 1..=allowed.saturating_sub(down) {
        let key = slot_key(keys, name, k);
        let put = TxnOp::Put { key: key.clone(), value: value.clone(), lease: Some(lease) };
        if let TxnOutcome::Committed(_) = store.txn(&[Condition::Absent(key)], &[put]).await.map_err(etcd)? {
            return Ok(k);
        }
    }
    let held = store.get_prefix(&keys.budget(name)).await.map_err(etcd)?;
    let holders = held
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Holder>(&kv.value).ok())
        .map(|h| format!("{}@{} since {}", h.user, h.node, crate::support::time::format_ms(h.since_ms)))
        .collect();
    Err(BudgetError::Spent { service: name.to_string(), allowed, down, holders })
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
        assert_eq!(slot_key(&Keys::new("c"), "j", 2), "/tend/c/budget/j/2");
    }
}
