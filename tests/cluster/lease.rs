//! Leases: a key under a lease lives as long as the lease, and a kept-alive lease survives
//! the loss of etcd members as long as there is a quorum.

use std::time::{Duration, Instant};

use tend::engine::etcd::{ClusterStore, LeaseState};

use crate::etcd::{EtcdCluster, QUORUM_TIMEOUT};
use crate::{TTL, blocking, eventually, exists, store};

/// The TTL of the keep-alive test.
const KEEP_TTL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_under_a_lease_that_is_not_renewed_disappears_after_its_ttl() {
    let cluster = blocking(|| EtcdCluster::start("lease_expiry"));
    let etcd = store(&cluster.endpoints()).await;

    let lease = etcd.grant(TTL).await.expect("grant");
    assert_eq!(lease.ttl, TTL);
    let granted = Instant::now();
    etcd.put("/t/lease/member", b"node-a", Some(lease.id)).await.expect("put under the lease");
    let (_, kv) = etcd.get("/t/lease/member").await.expect("get");
    let kv = kv.expect("the key is there");
    assert_eq!(kv.lease, Some(lease.id));
    assert_eq!(kv.value, b"node-a");

    let ((), _) = eventually("the key to expire with its lease", TTL * 3, || async {
        (exists(&etcd, "/t/lease/member").await == Some(false)).then_some(())
    })
    .await;
    let gone_after = granted.elapsed();
    eprintln!("measured: a key under an unrenewed {TTL:?} lease was gone {gone_after:?} after the grant");
    assert!(gone_after >= TTL - Duration::from_millis(100), "expired before its TTL: {gone_after:?}");

    // A revoked lease takes its keys at once.
    let lease = etcd.grant(TTL * 5).await.expect("grant");
    etcd.put("/t/lease/other", b"x", Some(lease.id)).await.expect("put");
    etcd.revoke(lease.id).await.expect("revoke");
    assert_eq!(exists(&etcd, "/t/lease/other").await, Some(false));
    let e = etcd.put("/t/lease/other", b"x", Some(lease.id)).await.expect_err("a put under a revoked lease");
    assert_eq!(e.kind(), "lease_not_found", "{}", crate::chain(&e));
    assert!(crate::chain(&e).starts_with("etcd put /t/lease/other: "), "{}", crate::chain(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_lease_survives_etcd_member_kills_while_there_is_a_quorum() {
    let mut cluster = blocking(|| EtcdCluster::start("lease_keepalive"));
    // The client knows two members only, so killing each in turn forces its keep-alive
    // stream over to the other at least once.
    let endpoints = vec![cluster.endpoint(0), cluster.endpoint(1)];
    let etcd = store(&endpoints).await;
    let watcher = store(&cluster.endpoints()).await;

    // etcd's default TTL is 10 s; 5 s still rides out the kill of etcd's raft leader. At
    // 2 s the renewals go unacknowledged for longer than the TTL while etcd elects a new
    // leader, and the keep-alive says "unconfirmed" (measured: once per leader kill) though
    // etcd keeps the lease.
    let lease = etcd.grant(KEEP_TTL).await.expect("grant");
    let keep = etcd.keep_alive(lease);
    let mut states = keep.subscribe();
    etcd.put("/t/keep/member", b"node-a", Some(lease.id)).await.expect("put under the lease");

    for victim in [0, 1] {
        let leader_before = blocking(|| cluster.leader());
        blocking(|| cluster.kill(victim));
        let killed = Instant::now();
        // Hold on through two TTLs without the member: the key must stay all along.
        let mut unconfirmed = 0;
        while killed.elapsed() < KEEP_TTL * 2 {
            assert_ne!(
                exists(&watcher, "/t/keep/member").await,
                Some(false),
                "the key vanished after member {victim} was killed"
            );
            if states.has_changed().unwrap_or(false) && !matches!(*states.borrow_and_update(), LeaseState::Alive { .. })
            {
                unconfirmed += 1;
            }
            assert_ne!(keep.state(), LeaseState::Gone, "the lease was gone after member {victim} was killed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("measured: member {victim} killed: the keep-alive was unconfirmed {unconfirmed} time(s)");
        eprintln!(
            "measured: member {victim} killed (raft leader before: {leader_before:?}); lease {} kept alive for {:?}",
            lease.id,
            killed.elapsed()
        );
        blocking(|| {
            cluster.restart(victim);
            cluster.wait_healthy(victim, QUORUM_TIMEOUT)
        });
    }
    assert!(matches!(keep.state(), LeaseState::Alive { .. }), "{:?}", keep.state());
    assert_eq!(exists(&watcher, "/t/keep/member").await, Some(true));

    // Stopping the renewals lets it expire.
    drop(keep);
    let stopped = Instant::now();
    let ((), _) = eventually("the key to expire once renewals stop", KEEP_TTL * 3, || async {
        (exists(&watcher, "/t/keep/member").await == Some(false)).then_some(())
    })
    .await;
    eprintln!(
        "measured: after the renewals stopped, the key was gone {:?} later (TTL {KEEP_TTL:?})",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_tells_its_time_left_and_its_granted_ttl_until_it_is_gone() {
    let cluster = blocking(|| EtcdCluster::start("lease_time_left"));
    let etcd = store(&cluster.endpoints()).await;

    let lease = etcd.grant(KEEP_TTL).await.expect("grant");
    let left = etcd.lease_time_left(lease.id).await.expect("time to live").expect("the lease is there");
    assert_eq!(left.granted, KEEP_TTL);
    assert!(left.left <= KEEP_TTL && left.left >= KEEP_TTL - Duration::from_secs(2), "{left:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = etcd.lease_time_left(lease.id).await.expect("time to live").expect("the lease is there");
    assert!(later.left < left.left || later.left <= KEEP_TTL - Duration::from_secs(1), "{left:?} then {later:?}");

    etcd.revoke(lease.id).await.expect("revoke");
    assert_eq!(etcd.lease_time_left(lease.id).await.expect("time to live of a revoked lease"), None);
}
