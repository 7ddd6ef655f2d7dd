//! `tend maintain` in a cluster: the slots placed on this node (so `SERVICE` names the
//! instances that run here), and a slot of the disruption budget of every placed service a
//! window touches, held under a lease kept alive for the window and revoked after it.

use std::collections::BTreeSet;
use std::sync::Arc;

use tend_specs::Desired;

use super::CliError;
use crate::cli::output::eoutln;
use crate::cluster::budget::{self, BudgetError, Holder};
use crate::cluster::keys::Keys;
use crate::daemon::cluster::ClusterSettings;
use crate::engine::etcd::{ClusterStore, EtcdStore, KeepAlive};

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

/// Takes a budget slot of every placed service whose instances on this node `keys` names;
/// with `wait`, waits until each is free.
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
    };
    let cluster_keys = Keys::new(&id.cluster);
    for s in desired.services.values().filter(|s| s.spec.placement.is_some()) {
        let touched = crate::maintain::service_keys(desired, &s.name).unwrap_or_default();
        if !touched.iter().any(|k| wanted.contains(k)) {
            continue;
        }
        loop {
            match budget::take(&*joined.store, &cluster_keys, s, &who, lease.id).await {
                Ok(k) => {
                    eoutln!("took slot {k} of the disruption budget of {}", s.name);
                    break;
                }
                Err(BudgetError::Spent { .. }) if wait => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                Err(e) => {
                    taken.release().await;
                    return Err(e.into());
                }
            }
        }
    }
    Ok(taken)
}
