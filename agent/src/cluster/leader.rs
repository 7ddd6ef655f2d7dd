//! What the leader does while it leads: it reads the members and the assignments, watches
//! the members, and whenever they or the placed services change (or a paced step or a
//! fence comes due) it decides the placement ([`place`]), paces the way there
//! ([`pace`]) and writes what changed under each affected node's prefix, in transactions
//! fenced by its leadership: a leader that lost its election key writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::cluster::keys::{Keys, MemberRecord};
use crate::cluster::pacing::{Last, Pace, pace};
use crate::cluster::placement::{Assignments, Member, MemberState, PlacedService, changes, place};
use crate::cluster::view::View;
use crate::engine::etcd::{ClusterStore, Condition, EtcdError, LeaderKey, TxnOp, TxnOutcome, WatchEvent};

/// The placed services of the spec set in use, with their pacing.
pub type Services = Vec<(PlacedService, Pace)>;

/// etcd's default limit of operations in one transaction (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// An etcd call failed.
    #[error("leader")]
    Etcd(#[from] EtcdError),
    /// A fenced write was refused: another node leads now.
    #[error("leader: a placement write was refused: this node no longer leads")]
    Deposed,
    /// The watch of the members ended.
    #[error("leader: the watch of the members ended")]
    WatchEnded,
}

/// What the leader knows of the members.
#[derive(Debug, Default)]
struct Members {
    live: BTreeMap<String, MemberRecord>,
    /// Members whose key went (or that hold slots and had no key when this leader began),
    /// and since when.
    lost: BTreeMap<String, Instant>,
}

impl Members {
    fn apply(&mut self, keys: &Keys, event: WatchEvent) {
        match event {
            WatchEvent::Put(kv) => {
                if let Ok(record) = serde_json::from_slice::<MemberRecord>(&kv.value) {
                    self.lost.remove(&record.node);
                    self.live.insert(record.node.clone(), record);
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some(node) = key.strip_prefix(&keys.members()) {
                    info!(node, "a member left the cluster (its lease ended)");
                    self.live.remove(node);
                    self.lost.insert(node.to_string(), Instant::now());
                }
            }
        }
    }

    fn list(&self, now: Instant) -> Vec<Member> {
        let live = self.live.values().map(|r| Member {
            node: r.node.clone(),
            roles: r.roles.clone(),
            state: if r.drained { MemberState::Drained } else { MemberState::Live },
        });
        let lost = self.lost.iter().map(|(node, since)| Member {
            node: node.clone(),
            roles: Default::default(),
            state: MemberState::Lost { ago: now.saturating_duration_since(*since) },
        });
        live.chain(lost).collect()
    }
}

/// Leads until leadership is lost or etcd fails; the caller ends it when the lease is lost
/// or the agent stops.
pub async fn lead<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    won: &LeaderKey,
    mut services: watch::Receiver<Services>,
    view: &watch::Sender<View>,
) -> Result<(), LeaderError> {
    let started = Instant::now();
    let listing = store.get_prefix(&keys.members()).await?;
    let mut members = Members::default();
    for kv in listing.kvs {
        members.apply(keys, WatchEvent::Put(kv));
    }
    let assigned = store.get_prefix(&keys.assignments()).await?;
    let mut current = keys.read_assignments(assigned.kvs.iter().map(|kv| kv.key.as_str()));
    for node in current.values().flat_map(|slots| slots.values()) {
        if !members.live.contains_key(node) {
            members.lost.entry(node.clone()).or_insert(started);
        }
    }
    let mut watch = store.watch_prefix(&keys.members(), listing.revision + 1).await?;
    // When the leader before this one last started or dropped a slot is not known: a
    // service that has slots counts this leader's start as that time, so that the pace
    // holds across a change of leader (the first step waits one interval).
    let mut last = Last::default();
    for service in current.keys() {
        last.added.insert(service.clone(), Duration::ZERO);
        last.removed.insert(service.clone(), Duration::ZERO);
    }
    loop {
        let wanted = services.borrow_and_update().clone();
        let wake = step(store, keys, won, &wanted, &members, &mut current, &mut last, started, view).await?;
        // Members lost for good once they hold no slot.
        members.lost.retain(|node, _| current.values().any(|slots| slots.values().any(|n| n == node)));
        tokio::select! {
            batch = watch.next() => match batch {
                Some(batch) => batch?.events.into_iter().for_each(|e| members.apply(keys, e)),
                None => return Err(LeaderError::WatchEnded),
            },
            changed = services.changed() => if changed.is_err() { return Ok(()) },
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// Decides, paces and writes one step; returns how long until something comes due.
#[allow(clippy::too_many_arguments)]
async fn step<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    won: &LeaderKey,
    services: &Services,
    members: &Members,
    current: &mut Assignments,
    last: &mut Last,
    started: Instant,
    view: &watch::Sender<View>,
) -> Result<Duration, LeaderError> {
    let now = Instant::now();
    let placed: Vec<PlacedService> = services.iter().map(|(s, _)| s.clone()).collect();
    let paces: BTreeMap<String, Pace> = services.iter().map(|(s, p)| (s.name.clone(), *p)).collect();
    let decision = place(&members.list(now), &placed, current);
    let clock = now.duration_since(started);
    let (mut next, mut due) = pace(current, &decision.assignments, &paces, last, clock);
    // Unpaced steps due now are taken together, in one write.
    while let Some(at) = due.filter(|at| *at <= clock) {
        let (more, later) = pace(&next, &decision.assignments, &paces, last, at);
        if more == next {
            break;
        }
        (next, due) = (more, later);
    }
    next.retain(|_, slots| !slots.is_empty());
    if next != *current {
        write(store, keys, won, current, &next).await?;
        *current = next;
    }
    let mut unplaced: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for u in &decision.unplaced {
        unplaced.entry(u.service.clone()).or_default().push(u.slot);
    }
    view.send_if_modified(|v| {
        let changed = v.unplaced != unplaced;
        v.unplaced = unplaced;
        changed
    });
    let fence = decision.fenced.iter().map(|f| f.remaining).min();
    let paced = due.map(|at| at.saturating_sub(clock));
    Ok([fence, paced].into_iter().flatten().min().unwrap_or(Duration::from_secs(3600)).max(Duration::from_millis(10)))
}

/// Writes the changes from `old` to `new`, fenced by `won` (in transactions of at most
/// etcd's limit of operations).
async fn write<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    won: &LeaderKey,
    old: &Assignments,
    new: &Assignments,
) -> Result<(), LeaderError> {
    let mut ops = Vec::new();
    for (node, change) in changes(old, new) {
        for s in &change.removed {
            ops.push(TxnOp::Delete { key: keys.slot(&node, &s.service, s.slot) });
        }
        for s in &change.added {
            info!(node = %node, service = %s.service, slot = s.slot, "placed");
            ops.push(TxnOp::Put { key: keys.slot(&node, &s.service, s.slot), value: b"{}".to_vec(), lease: None });
        }
    }
    let fence = [Condition::CreatedAt(won.key.clone(), won.revision)];
    for chunk in ops.chunks(MAX_TXN_OPS) {
        match store.txn(&fence, chunk).await? {
            TxnOutcome::Committed(revision) => debug!(revision, ops = chunk.len(), "placement written"),
            TxnOutcome::Refused(_) => return Err(LeaderError::Deposed),
        }
    }
    Ok(())
}
