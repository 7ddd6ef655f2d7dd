//! One node's part in the cluster, run by its agent: a session with etcd (a lease kept
//! alive, the member record under it, a candidacy for leadership under the same lease), the
//! slots placed on this node (its own assignment prefix, read and then watched), and, while
//! this node leads, the placement of every placed service (`leader`).
//!
//! What the agent reads is a [`View`] on a watch channel: whether etcd answers, who leads,
//! and the slots this node runs. When etcd cannot be reached or has lost quorum the view
//! keeps the last slots (nothing local stops because etcd is gone), says so, and the
//! session is tried again with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::budget;
use crate::cluster::keys::{Keys, MemberRecord};
use crate::cluster::leader::{self, Services};
use crate::cluster::placement::Assignments;
pub use crate::cluster::view::{Identity, View};
use crate::engine::etcd::{
    ClusterStore, EtcdError, EtcdStatus, KeyValue, LeaseId, LeaseLost, LeaseTimeLeft, Listing, WatchEvent,
};

/// The reads `tend cluster members` and `tend cluster status` make of the store, as
/// trait objects, so that a [`Handle`] holds whichever store the node runs on.
pub trait Reads: Send + Sync {
    /// [`ClusterStore::get_prefix`].
    fn get_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, EtcdError>>;
    /// [`ClusterStore::lease_time_left`].
    fn lease_time_left(&self, lease: LeaseId) -> BoxFuture<'_, Result<Option<LeaseTimeLeft>, EtcdError>>;
    /// [`ClusterStore::leader`].
    fn leader<'a>(&'a self, election: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, EtcdError>>;
    /// [`ClusterStore::status`].
    fn status(&self) -> BoxFuture<'_, Result<EtcdStatus, EtcdError>>;
}

impl<S: ClusterStore> Reads for S {
    fn get_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, EtcdError>> {
        Box::pin(ClusterStore::get_prefix(self, prefix))
    }
    fn lease_time_left(&self, lease: LeaseId) -> BoxFuture<'_, Result<Option<LeaseTimeLeft>, EtcdError>> {
        Box::pin(ClusterStore::lease_time_left(self, lease))
    }
    fn leader<'a>(&'a self, election: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, EtcdError>> {
        Box::pin(ClusterStore::leader(self, election))
    }
    fn status(&self) -> BoxFuture<'_, Result<EtcdStatus, EtcdError>> {
        Box::pin(ClusterStore::status(self))
    }
}

/// A running node: its view, the specs' placed services handed to it, and the store it
/// runs on (for reads).
#[derive(Clone)]
pub struct Handle {
    /// This node.
    pub identity: Arc<Identity>,
    view: watch::Receiver<View>,
    services: watch::Sender<Services>,
    drained: watch::Sender<bool>,
    store: Arc<dyn Reads>,
    left: watch::Receiver<bool>,
    turns: Option<Arc<dyn crate::cluster::turns::RolloutTurns>>,
    tasks: Arc<[tokio::task::AbortHandle; 3]>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("identity", &self.identity).field("view", &*self.view.borrow()).finish()
    }
}

impl Handle {
    /// The store this node runs on, for reads.
    pub fn store(&self) -> &dyn Reads {
        &*self.store
    }

    /// Reads through `store` instead of the store the node runs on (the same etcd with a
    /// shorter call timeout, for reads an operator waits for).
    pub fn with_reads(mut self, store: Arc<dyn Reads>) -> Self {
        self.store = store;
        self
    }

    /// Takes this node's rollout turns through `turns`.
    pub fn with_turns(mut self, turns: Arc<dyn crate::cluster::turns::RolloutTurns>) -> Self {
        self.turns = Some(turns);
        self
    }

    /// This node's turns in the cluster-wide rollouts, when it takes them.
    pub fn turns(&self) -> Option<&dyn crate::cluster::turns::RolloutTurns> {
        self.turns.as_deref()
    }

    /// The placed services of the spec set in use, as last handed in.
    pub fn services(&self) -> Services {
        self.services.borrow().clone()
    }

    /// Says whether this node is drained (`tend drain`): its member record says so, and the
    /// leader moves its slots to other members.
    pub fn set_drained(&self, drained: bool) {
        self.drained.send_if_modified(|d| std::mem::replace(d, drained) != drained);
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// A receiver that sees every change of the view.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Ends this node's part at once, as a crash of its host would: no resignation, no
    /// revocation, its keep-alive gone — its lease runs out after its TTL (`tend-sim`).
    pub fn crash(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }

    /// Waits until this node's part has ended after a stop (its leadership resigned).
    pub async fn left(&self) {
        let mut left = self.left.clone();
        let _ = left.wait_for(|l| *l).await;
    }

    /// Hands in the placed services of the spec set in use (the leader places them).
    pub fn set_services(&self, services: Services) {
        self.services.send_if_modified(|s| {
            let changed = *s != services;
            *s = services;
            changed
        });
    }
}

/// Starts this node's part in the cluster, running the slots `last` known placed here (by
/// an earlier run of the agent) until etcd says which are. It runs until `stop` is
/// cancelled, then resigns its leadership, if it leads, and lets its lease run out: an
/// agent restarted within the lease's TTL finds its member key and its slots as they were
/// (a revoked lease would have had its slots taken away at once, its copies stopped and
/// started again); one that does not come back is gone after the TTL, as a dead node.
pub fn start<S: ClusterStore + 'static>(
    store: Arc<S>,
    identity: Identity,
    last: BTreeMap<String, BTreeSet<u32>>,
    drained: bool,
    stop: CancellationToken,
) -> Handle {
    let identity = Arc::new(identity);
    let (view_tx, view) = watch::channel(View { mine: last, ..View::default() });
    let (services, services_rx) = watch::channel(Services::default());
    let (left_tx, left) = watch::channel(false);
    let (drained, drained_rx) = watch::channel(drained);
    let view_tx = Arc::new(view_tx);
    let follow = tokio::spawn(follow_assignments(store.clone(), identity.clone(), view_tx.clone(), stop.clone()));
    let observe = tokio::spawn(observe_leader(store.clone(), identity.clone(), view_tx.clone(), stop.clone()));
    let id = identity.clone();
    let reads: Arc<dyn Reads> = store.clone();
    let session = tokio::spawn(async move {
        sessions(store, id, view_tx, services_rx, drained_rx, stop).await;
        let _ = left_tx.send(true);
    });
    let tasks = Arc::new([follow.abort_handle(), observe.abort_handle(), session.abort_handle()]);
    Handle { identity, view, services, drained, store: reads, left, turns: None, tasks }
}

/// The backoff between failed sessions or watches: 1 s doubling up to 30 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}

async fn sessions<S: ClusterStore>(
    store: Arc<S>,
    id: Arc<Identity>,
    view: Arc<watch::Sender<View>>,
    services: watch::Receiver<Services>,
    drained: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut attempt = 0;
    while !stop.is_cancelled() {
        match session(&*store, &id, &view, services.clone(), drained.clone(), &stop).await {
            Ok(()) => attempt = 0,
            Err(e) => {
                let error = crate::support::chain(&e);
                warn!(cluster = %id.cluster, node = %id.node, %error, "cluster session lost; retrying");
                view.send_modify(|v| {
                    v.connected = false;
                    v.is_leader = false;
                    v.error = Some(error);
                    v.disconnected_since.get_or_insert_with(tokio::time::Instant::now);
                });
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt += 1;
            }
        }
    }
}

/// Why a session ended other than by a stop.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// An etcd call failed.
    #[error("cluster session")]
    Etcd(#[from] EtcdError),
    /// The lease was lost.
    #[error("cluster session: the lease of this node is lost: {0}")]
    Lease(LeaseLost),
    /// Leading failed.
    #[error("leading the cluster")]
    Leader(#[source] leader::LeaderError),
}

/// One session: a lease, the member record under it, and a candidacy; ends when the lease
/// is gone (`Err`) or the agent stops (`Ok`, after resigning a leadership it held; the
/// lease runs out by itself).
async fn session<S: ClusterStore>(
    store: &S,
    id: &Identity,
    view: &watch::Sender<View>,
    services: watch::Receiver<Services>,
    mut drained: watch::Receiver<bool>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let lease = store.grant(id.ttl).await?;
    let mut keep = store.keep_alive(lease);
    let keys = Keys::new(&id.cluster);
    let mut record = MemberRecord {
        node: id.node.clone(),
        roles: id.roles.clone(),
        address: id.address.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: crate::support::now_ms(),
        drained: *drained.borrow_and_update(),
    };
    let value = serde_json::to_vec(&record).unwrap_or_default();
    store.put(&keys.member(&id.node), &value, Some(lease.id)).await?;
    info!(cluster = %id.cluster, node = %id.node, lease = %lease.id, ttl_s = lease.ttl.as_secs(), "joined the cluster");
    settle_drain_slots(store, &keys, &id.node, record.drained, Some(lease.id)).await;
    view.send_modify(|v| {
        v.connected = true;
        v.error = None;
        v.disconnected_since = None;
    });
    let outcome = loop {
        let lost = tokio::select! {
            lost = keep.lost() => lost,
            led = campaign_and_lead(store, id, &keys, lease.id, view, services.clone(), stop) => break led,
            failed = republish(store, &keys, &mut record, lease.id, &mut drained) => break Err(failed.into()),
        };
        // The lease may have expired: whatever it guarded (the leadership) is given up. Only
        // when etcd says it is gone does the node start over; until then its keep-alive goes
        // on, and etcd, once it answers again, may still have it (an etcd that lost its
        // quorum gives every lease its full TTL again when it elects a leader): the member
        // key then never went away, and no slot of this node moved.
        let error = format!("this node's lease is unconfirmed: {lost}");
        view.send_modify(|v| {
            v.connected = false;
            v.is_leader = false;
            v.error = Some(error.clone());
            v.disconnected_since.get_or_insert_with(tokio::time::Instant::now);
        });
        if lost == LeaseLost::Gone {
            break Err(SessionError::Lease(lost));
        }
        warn!(cluster = %id.cluster, node = %id.node, lease = %lease.id, "this node's lease is unconfirmed (etcd does not answer); waiting for it");
        let alive = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            alive = keep.confirmed() => alive,
        };
        if !alive {
            break Err(SessionError::Lease(LeaseLost::Gone));
        }
        info!(cluster = %id.cluster, node = %id.node, lease = %lease.id, "this node's lease is alive again");
        view.send_modify(|v| {
            v.connected = true;
            v.error = None;
            v.disconnected_since = None;
        });
    };
    view.send_modify(|v| v.is_leader = false);
    if outcome.is_ok() {
        // Stopping: the lease is not revoked (see `start`); its renewals stop with `keep`.
        info!(cluster = %id.cluster, node = %id.node, ttl_s = lease.ttl.as_secs(), "stopped: this node's lease runs out unless it is back within its TTL");
    }
    outcome
}

/// Writes the member record again whenever this node is drained or undrained; returns
/// only when a write fails.
async fn republish<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    record: &mut MemberRecord,
    lease: crate::engine::etcd::LeaseId,
    drained: &mut watch::Receiver<bool>,
) -> EtcdError {
    loop {
        if drained.changed().await.is_err() {
            return std::future::pending().await;
        }
        record.drained = *drained.borrow_and_update();
        info!(node = %record.node, drained = record.drained, "member record updated");
        let value = serde_json::to_vec(&*record).unwrap_or_default();
        if let Err(e) = store.put(&keys.member(&record.node), &value, Some(lease)).await {
            return e;
        }
        if !record.drained {
            settle_drain_slots(store, keys, &record.node, false, None).await;
        }
    }
}

/// The disruption budget's slots of this node's drain (`tend drain` took them under the
/// node's lease): moved under `lease`, this session's, while the node is drained; given
/// back when it is not. A failure is logged: a slot left behind goes with its lease.
async fn settle_drain_slots<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    node: &str,
    drained: bool,
    lease: Option<crate::engine::etcd::LeaseId>,
) {
    let done = match (drained, lease) {
        (true, Some(lease)) => budget::reattach_drain(store, keys, node, lease).await.map(|n| (n, "kept")),
        (true, None) => return,
        (false, _) => budget::release_drain(store, keys, node).await.map(|n| (n, "given back")),
    };
    match done {
        Ok((0, _)) => {}
        Ok((n, what)) => info!(node, slots = n, "the drain's slots of the disruption budget {what}"),
        Err(e) => warn!(node, error = %crate::support::chain(&e), "the drain's slots of the disruption budget"),
    }
}

/// Campaigns for leadership under this node's lease and leads once elected, until the
/// agent stops; the caller's `select!` ends it when the lease is lost. A campaign or a
/// leadership that fails (a broken connection to the etcd member it went through, a
/// deposed leader's refused write) is tried again under the same lease, with backoff: the
/// node stays a member all along (ending the session for it cost the node its lease, and,
/// when the next grant was slow, its member key and its slots).
async fn campaign_and_lead<S: ClusterStore>(
    store: &S,
    id: &Identity,
    keys: &Keys,
    lease: crate::engine::etcd::LeaseId,
    view: &watch::Sender<View>,
    services: watch::Receiver<Services>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let mut attempt = 0;
    loop {
        let began = tokio::time::Instant::now();
        let Err(e) = campaign_and_lead_once(store, id, keys, lease, view, services.clone(), stop).await else {
            return Ok(());
        };
        view.send_modify(|v| v.is_leader = false);
        warn!(cluster = %id.cluster, node = %id.node, error = %crate::support::chain(&e), "campaigning or leading failed; campaigning again");
        if began.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff(attempt)) => {}
        }
        attempt += 1;
    }
}

/// One campaign, and the leadership it wins: until it fails (an error) or the agent stops
/// (`Ok`, after resigning, so that the next candidate leads at once).
async fn campaign_and_lead_once<S: ClusterStore>(
    store: &S,
    id: &Identity,
    keys: &Keys,
    lease: crate::engine::etcd::LeaseId,
    view: &watch::Sender<View>,
    services: watch::Receiver<Services>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let election = keys.election();
    let won = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        won = store.campaign(&election, id.node.as_bytes(), lease) => won?,
    };
    info!(cluster = %id.cluster, node = %id.node, term = won.revision, "leading the cluster");
    view.send_modify(|v| v.is_leader = true);
    let result = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        led = leader::lead(store, keys, &won, services, view) => led.map_err(SessionError::Leader),
    };
    let _ = store.resign(&won).await;
    result
}

/// Keeps `view.leader` on the election: asks etcd who leads (the candidate key created
/// first), then watches that one key until it is deleted, and asks again. Not etcd's
/// server-side `Observe` stream: with a few hundred observers, most of them kept naming a
/// crashed leader for minutes (found by `tend-sim`); this costs one read per node per
/// change of leader, and one watched key.
async fn observe_leader<S: ClusterStore>(
    store: Arc<S>,
    id: Arc<Identity>,
    view: Arc<watch::Sender<View>>,
    stop: CancellationToken,
) {
    let election = Keys::new(&id.cluster).election();
    let mut attempt = 0;
    while !stop.is_cancelled() {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = follow_leader(&*store, &id, &election, &view) => outcome,
        };
        match outcome {
            Ok(()) => attempt = 0,
            Err(e) => {
                warn!(error = %crate::support::chain(&e), "following the cluster's leader; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt += 1;
            }
        }
    }
}

/// One round of [`observe_leader`]: the leader now, into the view; returns once its key is
/// gone (or, with no leader, once a candidate shows up).
async fn follow_leader<S: ClusterStore>(
    store: &S,
    id: &Identity,
    election: &str,
    view: &watch::Sender<View>,
) -> Result<(), EtcdError> {
    let Some(kv) = store.leader(election).await? else {
        // Nobody campaigns: wait for a candidate's key.
        let listing = store.get_prefix(election).await?;
        if !listing.kvs.is_empty() {
            return Ok(());
        }
        let mut changes = store.watch_prefix(election, listing.revision + 1).await?;
        return match changes.next().await {
            Some(batch) => batch.map(|_| ()),
            None => Ok(()),
        };
    };
    let name = String::from_utf8_lossy(&kv.value).into_owned();
    view.send_if_modified(|v| {
        if v.term == Some(kv.create_revision) {
            return false;
        }
        if v.term.is_some() {
            v.leader_changes += 1;
        }
        info!(cluster = %id.cluster, leader = %name, term = kv.create_revision, "cluster leader");
        v.leader = Some(name.clone());
        v.term = Some(kv.create_revision);
        true
    });
    // Watched as a prefix, so another candidate's key that extends this one is left out.
    let mut changes = store.watch_prefix(&kv.key, kv.mod_revision + 1).await?;
    while let Some(batch) = changes.next().await {
        let gone = batch?.events.iter().any(|e| matches!(e, WatchEvent::Delete { key, .. } if *key == kv.key));
        if gone {
            return Ok(());
        }
    }
    Ok(())
}

/// Keeps `view.mine` on this node's assignment prefix: read, then watched from the
/// revision after; read again after a compaction or an error (with backoff). The last slots
/// stay while etcd cannot be read.
async fn follow_assignments<S: ClusterStore>(
    store: Arc<S>,
    id: Arc<Identity>,
    view: Arc<watch::Sender<View>>,
    stop: CancellationToken,
) {
    let keys = Keys::new(&id.cluster);
    let prefix = keys.node_assignments(&id.node);
    let mut attempt = 0;
    while !stop.is_cancelled() {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = follow_once(&*store, &keys, &prefix, &view) => r,
        };
        if let Err(e) = result {
            warn!(error = %crate::support::chain(&e), "reading this node's assignments; retrying");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff(attempt)) => {}
            }
            attempt += 1;
        }
    }
}

async fn follow_once<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    prefix: &str,
    view: &watch::Sender<View>,
) -> Result<(), EtcdError> {
    let listing = store.get_prefix(prefix).await?;
    let mut slots: BTreeSet<String> = listing.kvs.into_iter().map(|kv| kv.key).collect();
    publish_mine(keys, &slots, view);
    let mut watch = store.watch_prefix(prefix, listing.revision + 1).await?;
    while let Some(batch) = watch.next().await {
        for event in batch?.events {
            match event {
                crate::engine::etcd::WatchEvent::Put(kv) => slots.insert(kv.key),
                crate::engine::etcd::WatchEvent::Delete { key, .. } => slots.remove(&key),
            };
        }
        publish_mine(keys, &slots, view);
    }
    Ok(())
}

fn publish_mine(keys: &Keys, slots: &BTreeSet<String>, view: &watch::Sender<View>) {
    let mine: BTreeMap<String, BTreeSet<u32>> = keys
        .read_assignments(slots.iter().map(String::as_str))
        .into_iter()
        .map(|(service, slots)| (service, slots.into_keys().collect()))
        .collect();
    view.send_if_modified(|v| {
        let changed = v.mine != mine;
        v.mine = mine;
        changed
    });
}

/// The assignments of this node as the planner takes them ([`crate::cluster::assign`]).
pub fn as_assignments(node: &str, mine: &BTreeMap<String, BTreeSet<u32>>) -> Assignments {
    mine.iter().map(|(s, slots)| (s.clone(), slots.iter().map(|k| (*k, node.to_string())).collect())).collect()
}
