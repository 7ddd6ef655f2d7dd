//! `tend maintain` and `tend drain` in a cluster: the slots placed on this node (so
//! `SERVICE` names the instances that run here), and a slot of the disruption budget for
//! each placed instance a window or a drain takes down — a window's held under a lease kept
//! alive for the window and revoked after it, a drain's under the node's membership lease.

use std::collections::BTreeSet;
use std::sync::Arc;

use tend_specs::{Desired, Service};

use super::CliError;
use crate::cli::output::eoutln;
use crate::cluster::budget::{self, BudgetError, HoldKind, Holder};
use crate::cluster::keys::Keys;
use crate::daemon::cluster::ClusterSettings;
use crate::engine::etcd::{ClusterStore, EtcdStore, KeepAlive, LeaseId};

/// This node in its cluster, connected.
pub(super) struct Joined {
    settings: ClusterSettings,
    store: Arc<EtcdStore>,
}

/// The budget slots a window holds.
pub(super) struct Taken {
    store: Arc<EtcdStore>,
    keep: KeepAlive,
}

impl Taken {
    /// Gives the slots back (revokes their lease).
    pub(super) async fn release(self) {
        if let Err(e) = self.store.revoke(self.keep.lease.id).await {
            eoutln!("warning: {} (the budget frees itself when the lease ends)", crate::support::chain(&e));
        }
    }
}

/// Connects to the cluster's etcd and gives `desired` the slots placed on this node.
pub(super) async fn join(settings: ClusterSettings, desired: &mut Desired) -> Result<Joined, CliError> {
    let store = Arc::new(EtcdStore::connect(&settings.etcd).await.map_err(CliError::Etcd)?);
    let keys = Keys::new(&settings.identity.cluster);
    let node = &settings.identity.node;
    let mine = store.get_prefix(&keys.node_assignments(node)).await.map_err(CliError::Etcd)?;
    let assigned = keys.read_assignments(mine.kvs.iter().map(|kv| kv.key.as_str()));
    crate::cluster::assign(desired, &assigned, node);
    Ok(Joined { settings, store })
}

/// Takes a budget slot for each instance on this node that `keys` names, of every placed
/// service; with `wait`, waits until they are free.
pub(super) async fn take_all(
    joined: &Joined,
    desired: &Desired,
    keys: &[String],
    holder: &crate::maintain::locks::Holder,
    wait: bool,
) -> Result<Taken, CliError> {
    let id = &joined.settings.identity;
    let lease = joined.store.grant(id.ttl).await.map_err(CliError::Etcd)?;
    let keep = joined.store.keep_alive(lease);
    let taken = Taken { store: joined.store.clone(), keep };
    let wanted: BTreeSet<&String> = keys.iter().collect();
    let who = Holder {
        node: id.node.clone(),
        user: holder.user.clone(),
        reason: holder.reason.clone(),
        since_ms: holder.since_ms,
        kind: HoldKind::Maintain,
    };
    for (s, needed) in placed_here(desired, |k| wanted.contains(k)) {
        if let Err(e) = take_one(joined, s, &who, lease.id, needed, wait).await {
            taken.release().await;
            return Err(e);
        }
    }
    Ok(taken)
}

/// The placed services with instances on this node that `touched` selects, each with how
/// many.
fn placed_here(desired: &Desired, touched: impl Fn(&String) -> bool) -> Vec<(&Service, u32)> {
    desired
        .services
        .values()
        .filter(|s| s.spec.placement.is_some())
        .filter_map(|s| {
            let keys = crate::maintain::service_keys(desired, &s.name).unwrap_or_default();
            let n = keys.iter().filter(|k| touched(k)).count() as u32;
            (n > 0).then_some((s, n))
        })
        .collect()
}

/// Takes `needed` slots of `service`'s budget under `lease`; with `wait`, until they are free.
async fn take_one(
    joined: &Joined,
    service: &Service,
    who: &Holder,
    lease: LeaseId,
    needed: u32,
    wait: bool,
) -> Result<(), CliError> {
    let keys = Keys::new(&joined.settings.identity.cluster);
    loop {
        match budget::take(&*joined.store, &keys, service, who, lease, needed).await {
            Ok(k) => {
                let list = k.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                eoutln!("took slot {list} of the disruption budget of {}", service.name);
                return Ok(());
            }
            Err(BudgetError::Spent { .. }) if wait => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `tend drain` in a cluster: a slot of the disruption budget for each instance placed on
/// this node, held under the node's membership lease for as long as the drain lasts (its
/// agent gives them back when the node is undrained). A node that is not a live member
/// runs no placed instance that counts: it takes none. All or none: on a refusal the slots
/// taken already are given back.
pub(super) async fn take_for_drain(
    joined: &Joined,
    desired: &Desired,
    who: Holder,
    wait: bool,
) -> Result<(), CliError> {
    let id = &joined.settings.identity;
    let keys = Keys::new(&id.cluster);
    let (_, member) = joined.store.get(&keys.member(&id.node)).await.map_err(CliError::Etcd)?;
    let Some(lease) = member.and_then(|kv| kv.lease) else {
        eoutln!(
            "note: {} is not a live member of cluster {}: its placed instances run elsewhere, and its drain takes no slot of a disruption budget",
            id.node,
            id.cluster
        );
        return Ok(());
    };
    for (s, needed) in placed_here(desired, |_| true) {
        if let Err(e) = take_one(joined, s, &who, lease, needed, wait).await {
            if let Err(undo) = budget::release_drain(&*joined.store, &keys, &id.node).await {
                eoutln!("warning: {} (the slots go when this node is undrained)", crate::support::chain(&undo));
            }
            return Err(e);
        }
    }
    Ok(())
}
