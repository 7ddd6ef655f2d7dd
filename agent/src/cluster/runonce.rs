//! Runs that happen once per cluster: the protocol a run of a `runOn: leader` Timer follows
//! in a cluster, whoever started it (a systemd timer, tend's scheduler, an operator).
//!
//! - **The run key.** Before its job starts, the run takes `/tend/<cluster>/runs/<timer>`
//!   ([`Keys::run`]) in a transaction that writes it only if it is absent, under a lease of
//!   its own (the cluster's `leaseTTL`), with who holds it ([`RunHolder`]: run, node, tend's
//!   pid, start). It keeps the lease alive while the job runs, and revokes it at the end,
//!   which deletes the key. A run that finds the key held does not start: [`Taken::Busy`]
//!   says by whom. A node that dies holding the key holds it until its lease expires, one
//!   TTL after its last renewal; no run starts anywhere before (hashicorp/nomad#11052).
//! - **A lost lease stops the run.** When renewals go unacknowledged (a partition, etcd
//!   without quorum) the run cannot know whether its key still stands, and once etcd lets
//!   the lease go another node may start. So [`judge`] calls a run *at risk* when its lease
//!   is no longer known to live for another third of its TTL (two renewals missed): the job
//!   is asked to stop (SIGTERM) then, and killed at the latest instant the lease is known to
//!   live ([`LeaseState::Alive`]'s `until`, never later than etcd's own expiry).
//! - **The cluster's history.** Each run's record (and each skip's) is written under
//!   [`Keys::history`] as `<run>@<node>`; the newest [`KEEP_CLUSTER_RUNS`] are kept, older
//!   ones deleted by the writer. The record's format is the caller's (`jobs::Record`).
//!
//! Every call is bounded by the store's call timeout (`engine::etcd`).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cluster::keys::Keys;
use crate::engine::etcd::{
    ClusterStore, Condition, EtcdError, KeepAlive, Lease, LeaseState, Revision, TxnOp, TxnOutcome,
};

/// How many runs of a Timer the cluster's history keeps.
pub const KEEP_CLUSTER_RUNS: usize = 20;

/// How many times [`take`] tries when the key it found held was gone when it looked.
const TAKE_ATTEMPTS: usize = 3;

/// etcd's default limit of operations in one transaction (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// Who holds a Timer's run key: the value of `runs/<timer>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHolder {
    /// The run's ID (`jobs::run_id`).
    #[serde(default)]
    pub run: String,
    /// The node it runs on.
    #[serde(default)]
    pub node: String,
    /// The pid of the tend running it, on that node.
    #[serde(default)]
    pub pid: u32,
    /// When it started (ms since the epoch, by its node's clock).
    #[serde(default)]
    pub start_ms: u64,
}

impl std::fmt::Display for RunHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.run.is_empty() || self.node.is_empty() {
            return f.write_str("a run tend cannot read");
        }
        write!(
            f,
            "run {} on node {} (tend pid {}) since {}",
            self.run,
            self.node,
            self.pid,
            crate::support::time::format_ms(self.start_ms)
        )
    }
}

/// This node in its cluster, as a run of a `runOn: leader` Timer needs it.
#[derive(Debug)]
pub struct RunOnce<S> {
    /// The cluster's store.
    pub store: Arc<S>,
    /// The cluster's keys.
    pub keys: Keys,
    /// This node's name.
    pub node: String,
    /// The TTL of a run's lease (the cluster's `leaseTTL`).
    pub ttl: Duration,
}

/// What [`take`] found.
#[derive(Debug)]
pub enum Taken {
    /// The key is this run's until [`RunKey::release`].
    Held(RunKey),
    /// Another run holds it (as it reads; an unreadable value reads as a default holder).
    Busy(RunHolder),
}

/// A run key held by this run, under a lease kept alive until it is released or dropped.
#[derive(Debug)]
pub struct RunKey {
    /// The key.
    pub key: String,
    /// The revision that created it.
    pub revision: Revision,
    keep: KeepAlive,
}

impl RunKey {
    /// The lease the key lives under.
    pub fn lease(&self) -> Lease {
        self.keep.lease
    }

    /// Every change of where the lease stands, for [`at_risk`].
    pub fn states(&self) -> watch::Receiver<LeaseState> {
        self.keep.subscribe()
    }

    /// Gives the key up: revokes its lease, which deletes it at once. A lease etcd no
    /// longer has (it expired while etcd was out of reach) is no error: the key is gone.
    pub async fn release<S: ClusterStore>(self, store: &S) -> Result<(), RunOnceError> {
        let lease = self.keep.lease.id;
        drop(self.keep);
        match store.revoke(lease).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == "lease_not_found" => {
                debug!(key = %self.key, "the run's lease had already expired");
                Ok(())
            }
            Err(source) => Err(RunOnceError::Release { key: self.key, source }),
        }
    }
}

/// A failure of the run-once protocol.
#[derive(Debug, thiserror::Error)]
pub enum RunOnceError {
    /// The run key could not be taken (nor found held).
    #[error("taking the cluster's run key {key}")]
    Take {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: EtcdError,
    },
    /// The key was found held, then absent, several times in a row.
    #[error("taking the cluster's run key {key}: it was taken and given up {attempts} times while tend looked")]
    Contended {
        /// The key.
        key: String,
        /// How many times tend tried.
        attempts: usize,
    },
    /// The run key could not be given up (it goes when its lease expires).
    #[error("releasing the cluster's run key {key} (it goes when its lease expires)")]
    Release {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: EtcdError,
    },
    /// A record could not be written to the cluster's history.
    #[error("writing {key} to the cluster's history")]
    Publish {
        /// The history entry.
        key: String,
        /// The cause.
        #[source]
        source: EtcdError,
    },
    /// The cluster's history could not be read.
    #[error("reading the cluster's history {prefix}")]
    History {
        /// The history prefix.
        prefix: String,
        /// The cause.
        #[source]
        source: EtcdError,
    },
    /// A value could not be encoded as JSON.
    #[error("encoding {what} as JSON")]
    Encode {
        /// What.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl RunOnceError {
    /// A fixed label for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Take { .. } | Self::Contended { .. } => "take",
            Self::Release { .. } => "release",
            Self::Publish { .. } => "publish",
            Self::History { .. } => "history",
            Self::Encode { .. } => "encode",
        }
    }
}

/// Takes `timer`'s run key for `holder`, under a new lease of `ttl` kept alive from then
/// on; or says who holds it. Nothing is left behind when the key is not taken (the lease
/// granted for it is revoked).
pub async fn take<S: ClusterStore>(
    store: &S,
    keys: &Keys,
    timer: &str,
    holder: &RunHolder,
    ttl: Duration,
) -> Result<Taken, RunOnceError> {
    let key = keys.run(timer);
    let value = serde_json::to_vec(holder).map_err(|source| RunOnceError::Encode { what: key.clone(), source })?;
    let lease = store.grant(ttl).await.map_err(|source| RunOnceError::Take { key: key.clone(), source })?;
    let keep = store.keep_alive(lease);
    let outcome = async {
        for _ in 0..TAKE_ATTEMPTS {
            let put = TxnOp::Put { key: key.clone(), value: value.clone(), lease: Some(lease.id) };
            match store.txn(&[Condition::Absent(key.clone())], &[put]).await? {
                TxnOutcome::Committed(revision) => return Ok(Some(Ok(revision))),
                TxnOutcome::Refused(_) => {}
            }
            if let (_, Some(kv)) = store.get(&key).await? {
                return Ok(Some(Err(read_holder(&kv.value))));
            }
        }
        Ok::<_, EtcdError>(None)
    };
    let result = outcome.await;
    let taken = match result {
        Ok(Some(Ok(revision))) => return Ok(Taken::Held(RunKey { key, revision, keep })),
        Ok(Some(Err(busy))) => Ok(Taken::Busy(busy)),
        Ok(None) => Err(RunOnceError::Contended { key: key.clone(), attempts: TAKE_ATTEMPTS }),
        Err(source) => Err(RunOnceError::Take { key: key.clone(), source }),
    };
    drop(keep);
    if let Err(e) = store.revoke(lease.id).await {
        debug!(key = %key, error = %crate::support::chain(&e), "revoking the lease of a run key not taken");
    }
    taken
}

/// The holder a run key's value names; a default one when it is not readable.
pub fn read_holder(value: &[u8]) -> RunHolder {
    serde_json::from_slice(value).unwrap_or_default()
}

/// Writes `record`, the outcome of run `run` of `timer` on `node`, to the cluster's history,
/// then deletes all but the newest [`KEEP_CLUSTER_RUNS`] entries of the Timer.
pub async fn publish<S: ClusterStore, T: Serialize>(
    store: &S,
    keys: &Keys,
    timer: &str,
    run: &str,
    node: &str,
    record: &T,
) -> Result<(), RunOnceError> {
    let key = keys.history_entry(timer, run, node);
    let value = serde_json::to_vec(record).map_err(|source| RunOnceError::Encode { what: key.clone(), source })?;
    store.put(&key, &value, None).await.map_err(|source| RunOnceError::Publish { key: key.clone(), source })?;
    let prefix = keys.history(timer);
    let listing =
        store.get_prefix(&prefix).await.map_err(|source| RunOnceError::Publish { key: key.clone(), source })?;
    let old = to_prune(listing.kvs.iter().map(|kv| kv.key.as_str()), KEEP_CLUSTER_RUNS);
    let deletes: Vec<TxnOp> = old.into_iter().map(|key| TxnOp::Delete { key }).collect();
    for chunk in deletes.chunks(MAX_TXN_OPS) {
        store.txn(&[], chunk).await.map_err(|source| RunOnceError::Publish { key: key.clone(), source })?;
    }
    Ok(())
}

/// The entries of a history listing to delete so that the newest `keep` stay: keys sort by
/// the run's start (run IDs begin with it), so all but the last `keep` in key order.
pub fn to_prune<'a>(keys: impl IntoIterator<Item = &'a str>, keep: usize) -> Vec<String> {
    let mut keys: Vec<&str> = keys.into_iter().collect();
    keys.sort_unstable();
    keys.dedup();
    let excess = keys.len().saturating_sub(keep);
    keys[..excess].iter().map(|k| k.to_string()).collect()
}

/// The cluster's history of `timer`, oldest first; entries that are not a `T` are skipped
/// with a warning.
pub async fn history<S: ClusterStore, T: DeserializeOwned>(
    store: &S,
    keys: &Keys,
    timer: &str,
) -> Result<Vec<T>, RunOnceError> {
    let prefix = keys.history(timer);
    let listing =
        store.get_prefix(&prefix).await.map_err(|source| RunOnceError::History { prefix: prefix.clone(), source })?;
    Ok(listing
        .kvs
        .iter()
        .filter_map(|kv| match serde_json::from_slice(&kv.value) {
            Ok(record) => Some(record),
            Err(e) => {
                warn!(key = %kv.key, error = %e, "skipping a cluster history entry that is not a record");
                None
            }
        })
        .collect())
}

/// Why a run's hold on its key can no longer be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Renewals went unacknowledged until the lease is known to live only a third of its
    /// TTL longer.
    Late,
    /// No renewal was acknowledged before the lease could expire.
    Unconfirmed,
    /// etcd says the lease is gone (expired or revoked).
    Gone,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Late => "the renewals of the run key's lease went unacknowledged (etcd out of reach?)",
            Self::Unconfirmed => "no renewal of the run key's lease was acknowledged before it could expire",
            Self::Gone => "etcd says the run key's lease is gone (expired or revoked)",
        })
    }
}

/// What a run does about its lease now ([`judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing until `at` unless the lease's state changes.
    Fine {
        /// When to judge again.
        at: Instant,
    },
    /// Stop the job now, and kill it by `kill_at` at the latest (now, when already past).
    Stop {
        /// The latest instant the lease is known to live.
        kill_at: Instant,
        /// Why.
        why: Lost,
    },
}

/// Judges a run's lease at `now`: fine while it is known to live more than a third of its
/// `ttl` longer (renewals go every third, so that is two renewals missed); else the job
/// stops, and must be dead by the instant the lease is last known to live.
pub fn judge(state: LeaseState, ttl: Duration, now: Instant) -> Verdict {
    match state {
        LeaseState::Alive { until } => {
            let at = until.checked_sub(ttl / 3).unwrap_or(until);
            if now < at { Verdict::Fine { at } } else { Verdict::Stop { kill_at: until.max(now), why: Lost::Late } }
        }
        LeaseState::Unconfirmed { .. } => Verdict::Stop { kill_at: now, why: Lost::Unconfirmed },
        LeaseState::Gone => Verdict::Stop { kill_at: now, why: Lost::Gone },
    }
}

/// Waits until the lease whose states `states` reports puts the run at risk ([`judge`]);
/// returns when the job must be dead and why.
pub async fn at_risk(mut states: watch::Receiver<LeaseState>, ttl: Duration) -> (Instant, Lost) {
    let mut open = true;
    loop {
        let state = *states.borrow_and_update();
        let at = match judge(state, ttl, Instant::now()) {
            Verdict::Stop { kill_at, why } => return (kill_at, why),
            Verdict::Fine { at } => at,
        };
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            changed = states.changed(), if open => open = changed.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_runs_by_start() {
        let keys: Vec<String> =
            (0..25).rev().map(|i| format!("/tend/c/history/t/20261122-0315{i:02}-000-7@vm-{}", i % 3)).collect();
        let pruned = to_prune(keys.iter().map(String::as_str), KEEP_CLUSTER_RUNS);
        assert_eq!(pruned.len(), 5);
        assert_eq!(pruned[0], "/tend/c/history/t/20261122-031500-000-7@vm-0");
        assert_eq!(pruned[4], "/tend/c/history/t/20261122-031504-000-7@vm-1");
        assert!(to_prune(keys.iter().take(20).map(String::as_str), KEEP_CLUSTER_RUNS).is_empty());
        assert!(to_prune([], KEEP_CLUSTER_RUNS).is_empty());
    }

    #[test]
    fn a_holder_reads_back_and_an_unreadable_one_says_so() {
        let holder = RunHolder { run: "20261122-031500-042-77".into(), node: "vm-a".into(), pid: 77, start_ms: 0 };
        let json = serde_json::to_string(&holder).expect("json");
        assert_eq!(json, r#"{"run":"20261122-031500-042-77","node":"vm-a","pid":77,"start_ms":0}"#);
        assert_eq!(read_holder(json.as_bytes()), holder);
        assert_eq!(
            holder.to_string(),
            "run 20261122-031500-042-77 on node vm-a (tend pid 77) since 1970-01-01 00:00:00 UTC"
        );
        assert_eq!(read_holder(b"not json").to_string(), "a run tend cannot read");
        assert_eq!(read_holder(br#"{"node":"vm-b"}"#).to_string(), "a run tend cannot read");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_fine_until_a_third_of_its_ttl_is_left_then_the_job_stops() {
        let ttl = Duration::from_secs(9);
        let now = Instant::now();
        let alive = LeaseState::Alive { until: now + ttl };
        assert_eq!(judge(alive, ttl, now), Verdict::Fine { at: now + Duration::from_secs(6) });
        assert_eq!(
            judge(alive, ttl, now + Duration::from_secs(6)),
            Verdict::Stop { kill_at: now + ttl, why: Lost::Late }
        );
        // Past its `until` (the keep-alive has not said unconfirmed yet): kill now.
        let late = now + Duration::from_secs(10);
        assert_eq!(judge(alive, ttl, late), Verdict::Stop { kill_at: late, why: Lost::Late });
        assert_eq!(
            judge(LeaseState::Unconfirmed { since: now }, ttl, late),
            Verdict::Stop { kill_at: late, why: Lost::Unconfirmed }
        );
        assert_eq!(judge(LeaseState::Gone, ttl, now), Verdict::Stop { kill_at: now, why: Lost::Gone });
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_a_run_going_and_missed_ones_stop_it_before_the_lease_can_expire() {
        let ttl = Duration::from_secs(9);
        let t0 = Instant::now();
        let (tx, rx) = watch::channel(LeaseState::Alive { until: t0 + ttl });
        let risk = tokio::spawn(at_risk(rx, ttl));
        // Renewed every 3 s for a minute: never at risk.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tx.send(LeaseState::Alive { until: Instant::now() + ttl }).expect("send");
        }
        tokio::task::yield_now().await;
        assert!(!risk.is_finished(), "a renewed lease put the run at risk");
        // Renewals stop: at risk 6 s after the last, to be killed 3 s later.
        let last = Instant::now();
        let (kill_at, why) = risk.await.expect("task");
        assert_eq!(why, Lost::Late);
        assert_eq!(Instant::now() - last, Duration::from_secs(6));
        assert_eq!(kill_at, last + ttl);

        // A lease etcd says is gone stops the run at once, as does the keep-alive's end.
        let (tx, rx) = watch::channel(LeaseState::Alive { until: Instant::now() + ttl });
        let risk = tokio::spawn(at_risk(rx, ttl));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(LeaseState::Gone).expect("send");
        drop(tx);
        let (kill_at, why) = risk.await.expect("task");
        assert_eq!((why, kill_at), (Lost::Gone, Instant::now()));
    }
}
