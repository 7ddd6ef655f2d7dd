//! Integration tests of tend's etcd adapter (`tend::engine::etcd`), and of real agents in a
//! cluster (`commands`: `tend cluster members` and `status`), against a real 3-member etcd
//! cluster (Debian's etcd-server 3.4, `tests/harness/etcd.rs`) and real network
//! partitions (namespaces on a bridge, `tests/harness/netns.rs`). They fail, never skip,
//! when etcd or namespaces cannot be set up: run `scripts/test.sh`, or
//! `bash -c 'source scripts/lib.sh; ensure_etcd'`, as root.
//!
//! Every test prints what it measured (`measured: …`) so that `--nocapture` shows the
//! figures docs/development.md quotes.

#[path = "../harness/etcd.rs"]
mod etcd;
#[path = "../harness/mod.rs"]
mod harness;
#[path = "../harness/netns.rs"]
mod netns;

mod agents;
mod auth;
mod budget;
mod commands;
mod election;
mod lease;
mod partition;
mod quorum;
mod recovery;
mod runonce;
mod sim;
mod tls;
mod watch;

use std::future::Future;
use std::time::{Duration, Instant};

use tend::engine::etcd::{ClusterStore, EtcdConfig, EtcdStore, EtcdTimeouts, Revision};

/// The lease TTL of these tests: etcd's minimum, so expiries are quick.
pub const TTL: Duration = Duration::from_secs(2);

/// The call timeout of these tests' clients.
pub const CALL: Duration = Duration::from_secs(2);

/// The timeouts of these tests' clients: 2 s calls, 1 s connects, a ping every second.
pub fn timeouts() -> EtcdTimeouts {
    EtcdTimeouts {
        call: CALL,
        connect: Duration::from_secs(1),
        ping_interval: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(2),
    }
}

/// A client of `endpoints` with [`timeouts`].
pub async fn store(endpoints: &[String]) -> EtcdStore {
    let mut config = EtcdConfig::new(endpoints.iter().cloned());
    config.timeouts = timeouts();
    EtcdStore::connect(&config).await.unwrap_or_else(|e| panic!("connecting to etcd at {endpoints:?}: {}", chain(&e)))
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    tend::support::chain(e)
}

/// Runs blocking harness work (etcdctl, kill, sleep) without stalling the runtime's other
/// worker, which runs the keep-alive and watch tasks meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Polls `check` every 50 ms until it yields `Some` (returns it with the time it took) or
/// `timeout` passes (panics naming `what`).
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(v) = check().await {
            return (v, t0.elapsed());
        }
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `key` exists, as `store` sees it now (`None` when the read failed).
pub async fn exists(store: &EtcdStore, key: &str) -> Option<bool> {
    store.get(key).await.ok().map(|(_, kv)| kv.is_some())
}

/// Writes `key` as a client of the cluster does: a call that fails because etcd is out of
/// reach (a leader election after a member was killed takes 1 to 3 s) is tried again, for
/// up to 15 s.
pub async fn put_retry(store: &EtcdStore, key: &str, value: &[u8]) -> Revision {
    let t0 = Instant::now();
    loop {
        match store.put(key, value, None).await {
            Ok(revision) => return revision,
            Err(e) if e.is_unreachable() && t0.elapsed() < Duration::from_secs(15) => {
                eprintln!("retrying: {}", chain(&e));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("put {key}: {}", chain(&e)),
        }
    }
}
