//! A node's turn in the cluster-wide rollout of a placed service. Replacing the running
//! instances of a placed service (a changed spec, a moved image tag) takes them down, so
//! every node waits for its turn before it does: a slot of the service's disruption budget
//! (`budget`, kind `rollout`), under the node's membership lease. The slots a rollout may
//! take are `rollout.maxUnavailable`, within the budget (at least one, so a spec change
//! always rolls out), less the instances already down (a dead member's, an unplaced slot)
//! and the slots maintenance windows and drains hold: so replacements go
//! `rollout.maxUnavailable` nodes at a time across the cluster, never while a member is
//! down beyond what the budget allows, and never beside a maintenance window that spends
//! it. The agent gives the turn back only once its new instances are current and ready
//! (healthy, where a health check is set): a replacement that does not become healthy keeps
//! the turn, and the rollout pauses cluster-wide.
//!
//! The agent asks for a turn when a pass finds a replacement waiting for it, and keeps
//! asking (every second: a read of the budget and, when a slot looks free, a transaction)
//! until it has one or no longer needs it. A turn whose node dies goes with its lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tend_specs::Service;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::budget::{self, BudgetError, HoldKind, Holder};
use crate::cluster::keys::Keys;
use crate::cluster::view::Identity;
use crate::engine::etcd::{ClusterStore, EtcdError, LeaseId};

/// How often a node that waits for its turn tries again.
const RETRY: Duration = Duration::from_secs(1);

/// How soon the agent passes again after a pass that acted on a placed service.
const RECHECK: Duration = Duration::from_secs(1);

/// How often the agent passes while it holds a turn, to see its new instances ready.
const CHECK: Duration = Duration::from_secs(2);

/// Why this node's `unready/` keys could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TurnsError {
    /// etcd failed.
    #[error("writing this node's count of instances not ready")]
    Etcd(#[from] EtcdError),
    /// This node has no member key (no lease to write under) yet.
    #[error("this node is not a member of the cluster yet")]
    NotAMember,
}

/// What the agent asks of this node's turns (a trait object, so that a
/// [`Handle`](crate::cluster::node::Handle) holds them whatever store they run on).
pub trait RolloutTurns: Send + Sync {
    /// The services whose turn this node holds.
    fn held(&self) -> BTreeSet<String>;
    /// Asks for the turn of each of `wanted` not held or asked for yet; stops asking for
    /// those no longer wanted.
    fn want(&self, wanted: Vec<Service>);
    /// Gives back the turn of `service` (its instances here are current and ready).
    fn release(&self, service: &str);
    /// Says how many instances of each placed service here are not ready (absent: none),
    /// for the budgets of the other nodes: written under `unready/` when it changes. The
    /// services of `keep` keep what was said of them (a pass acted on them: what it saw
    /// before is stale, and the next pass says).
    fn report_unready(&self, counts: BTreeMap<String, u32>, keep: &BTreeSet<String>);
    /// Has the agent pass again in a moment: a pass that acted on a placed service saw it
    /// as it was before, and what it says under `unready/` must follow what it did.
    fn recheck_soon(&self);
}

/// This node's turns: held (service → the budget key) and asked for.
pub struct Turns<S>(Arc<Shared<S>>);

struct Shared<S> {
    store: Arc<S>,
    identity: Arc<Identity>,
    wake: Box<dyn Fn() + Send + Sync>,
    stop: CancellationToken,
    /// What `unready/` should say of this node (services with a count above 0), for its
    /// one writer task.
    unready: tokio::sync::watch::Sender<BTreeMap<String, u32>>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    held: BTreeMap<String, String>,
    asking: BTreeSet<String>,
}

impl<S: ClusterStore + 'static> Turns<S> {
    /// The turns of node `identity`; `wake` is called when a turn is granted (a pass can
    /// replace then).
    pub fn new(
        store: Arc<S>,
        identity: Arc<Identity>,
        wake: Box<dyn Fn() + Send + Sync>,
        stop: CancellationToken,
    ) -> Self {
        let (unready, wanted) = tokio::sync::watch::channel(BTreeMap::new());
        let shared = Arc::new(Shared { store, identity, wake, stop, unready, inner: Mutex::new(Inner::default()) });
        tokio::spawn(shared.clone().write_unready(wanted));
        Self(shared)
    }
}

impl<S: ClusterStore + 'static> RolloutTurns for Turns<S> {
    fn held(&self) -> BTreeSet<String> {
        self.0.inner().held.keys().cloned().collect()
    }

    fn want(&self, wanted: Vec<Service>) {
        let mut inner = self.0.inner();
        inner.asking.retain(|name| wanted.iter().any(|s| &s.name == name));
        for s in wanted {
            if inner.held.contains_key(&s.name) || !inner.asking.insert(s.name.clone()) {
                continue;
            }
            let me = self.0.clone();
            tokio::spawn(async move { me.ask(s).await });
        }
    }

    fn report_unready(&self, counts: BTreeMap<String, u32>, keep: &BTreeSet<String>) {
        self.0.unready.send_if_modified(|now| {
            let mut next: BTreeMap<String, u32> =
                counts.iter().filter(|(s, n)| **n > 0 && !keep.contains(*s)).map(|(s, n)| (s.clone(), *n)).collect();
            next.extend(now.iter().filter(|(s, _)| keep.contains(*s)).map(|(s, n)| (s.clone(), *n)));
            std::mem::replace(now, next.clone()) != next
        });
    }

    fn recheck_soon(&self) {
        let me = self.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = me.stop.cancelled() => {}
                _ = tokio::time::sleep(RECHECK) => (me.wake)(),
            }
        });
    }

    fn release(&self, service: &str) {
        let Some(key) = self.0.inner().held.remove(service) else { return };
        let me = self.0.clone();
        let service = service.to_string();
        tokio::spawn(async move {
            match me.store.delete(&key).await {
                Ok(_) => info!(service, key, "this node's rollout turn given back"),
                Err(e) => {
                    warn!(service, key, error = %crate::support::chain(&e), "giving the rollout turn back (it goes with this node's lease)")
                }
            }
        });
    }
}

impl<S: ClusterStore + 'static> Shared<S> {
    /// The one writer of this node's `unready/` keys: brings them to what the passes last
    /// said, whenever that changes, writing only the difference (everything again under a
    /// new lease: the old lease's keys went with it); a failed write is tried again 2 s later.
    async fn write_unready(self: Arc<Self>, mut wanted: tokio::sync::watch::Receiver<BTreeMap<String, u32>>) {
        let mut written: (Option<LeaseId>, BTreeMap<String, u32>) = (None, BTreeMap::new());
        loop {
            let want = wanted.borrow_and_update().clone();
            let retry = match self.publish(&want, &written).await {
                Ok(lease) => {
                    written = (lease, want);
                    false
                }
                Err(e) => {
                    warn!(error = %crate::support::chain(&e), "saying how many instances here are not ready; trying again");
                    true
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(CHECK), if retry => {}
                changed = wanted.changed(), if !retry => if changed.is_err() { return },
            }
        }
    }

    /// Writes what changed from `written` to `want` (a count of 0 deletes); returns the lease
    /// the keys are under.
    async fn publish(
        &self,
        want: &BTreeMap<String, u32>,
        written: &(Option<LeaseId>, BTreeMap<String, u32>),
    ) -> Result<Option<LeaseId>, TurnsError> {
        let keys = Keys::new(&self.identity.cluster);
        let node = &self.identity.node;
        if want.is_empty() && written.1.is_empty() {
            return Ok(written.0);
        }
        let (_, member) = self.store.get(&keys.member(node)).await?;
        let lease = member.and_then(|kv| kv.lease);
        let fresh = lease != written.0;
        for service in written.1.keys().filter(|s| !want.contains_key(*s)) {
            self.store.delete(&format!("{}{node}", keys.unready(service))).await?;
        }
        for (service, n) in want.iter().filter(|(s, n)| fresh || written.1.get(*s) != Some(n)) {
            let Some(lease) = lease else { return Err(TurnsError::NotAMember) };
            self.store.put(&format!("{}{node}", keys.unready(service)), n.to_string().as_bytes(), Some(lease)).await?;
        }
        Ok(lease)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `service`'s turn.
    fn holds(&self, service: &str) -> bool {
        self.inner().held.contains_key(service)
    }

    /// Still asking for `service`'s turn.
    fn asking(&self, service: &str) -> bool {
        !self.stop.is_cancelled() && self.inner().asking.contains(service)
    }

    /// Asks for `service`'s turn until granted, or no longer wanted.
    async fn ask(self: Arc<Self>, service: Service) {
        let id = &self.identity;
        let keys = Keys::new(&id.cluster);
        let who = Holder {
            node: id.node.clone(),
            user: "tend".into(),
            reason: Some(format!("rollout of {}", service.name)),
            since_ms: crate::support::now_ms(),
            kind: HoldKind::Rollout,
        };
        let mut said = false;
        while self.asking(&service.name) {
            match self.try_take(&keys, &service, &who).await {
                Ok(Some(key)) => {
                    info!(service = %service.name, key, "this node's rollout turn");
                    self.granted(&service.name, key);
                    (self.wake)();
                    self.check_while_held(&service.name).await;
                    return;
                }
                Ok(None) => {}
                Err(BudgetError::Spent { .. }) if said => {}
                Err(e) => {
                    said = true;
                    info!(service = %service.name, why = %crate::support::chain(&e), "waiting for this node's rollout turn");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Records the turn of `service` as held, under `key`.
    fn granted(&self, service: &str, key: String) {
        let mut inner = self.inner();
        inner.asking.remove(service);
        inner.held.insert(service.to_string(), key);
    }

    /// Wakes the agent every [`CHECK`] while this node holds `service`'s turn, so that a
    /// pass sees the new instances become ready (the engine's events say nothing of health)
    /// and gives the turn back.
    async fn check_while_held(&self, service: &str) {
        while self.holds(service) {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(CHECK) => (self.wake)(),
            }
        }
    }

    /// One try: `None` while this node is no live member (no lease to hold a turn under).
    async fn try_take(&self, keys: &Keys, service: &Service, who: &Holder) -> Result<Option<String>, BudgetError> {
        let etcd = |source| BudgetError::Etcd { service: service.name.clone(), source };
        let (_, member) = self.store.get(&keys.member(&self.identity.node)).await.map_err(etcd)?;
        let Some(lease) = member.and_then(|kv| kv.lease) else { return Ok(None) };
        let k = budget::take(&*self.store, keys, service, who, lease, 1).await?;
        Ok(k.first().map(|k| budget::slot_key(keys, &service.name, *k)))
    }
}
