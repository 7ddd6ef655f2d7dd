//! Leadership through etcd's v3 election API: one leader among campaigners, a resignation
//! or the leader's lost lease hands over, and writes fenced by a lost leadership are refused.

use std::time::{Duration, Instant};

use tend::engine::etcd::{ClusterStore, Condition, LeaseLost, TxnOp, TxnOutcome};

use crate::etcd::EtcdCluster;
use crate::{TTL, blocking, store};

const ELECTION: &str = "/t/c/leader";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_campaigners_leads_and_resigning_or_losing_the_lease_hands_over() {
    let cluster = blocking(|| EtcdCluster::start("election"));
    let a = store(&cluster.endpoints()).await;
    let b = store(&cluster.endpoints()).await;
    let lease_a = a.grant(TTL).await.expect("grant a");
    let lease_b = b.grant(TTL).await.expect("grant b");
    let keep_a = a.keep_alive(lease_a);
    let keep_b = b.keep_alive(lease_b);
    assert_eq!(a.leader(ELECTION).await.expect("leader"), None, "nobody campaigns yet");

    // a is elected at once; b waits.
    let t0 = Instant::now();
    let key_a = a.campaign(ELECTION, b"node-a", lease_a.id).await.expect("a campaigns");
    eprintln!("measured: an uncontested campaign took {:?}", t0.elapsed());
    assert_eq!(key_a.lease, lease_a.id);
    let b2 = b.clone();
    let mut campaign_b = tokio::spawn(async move { b2.campaign(ELECTION, b"node-b", lease_b.id).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!campaign_b.is_finished(), "b was elected while a leads");
    let leader = a.leader(ELECTION).await.expect("leader").expect("a leader");
    assert_eq!((leader.key.as_str(), leader.value.as_slice()), (key_a.key.as_str(), b"node-a".as_slice()));

    // a's fenced write goes through while it leads.
    let fenced = |key: &tend::engine::etcd::LeaderKey, value: &[u8]| {
        (
            vec![Condition::CreatedAt(key.key.clone(), key.revision)],
            vec![TxnOp::Put { key: "/t/c/placement".into(), value: value.to_vec(), lease: None }],
        )
    };
    let (when, then) = fenced(&key_a, b"by-a");
    assert!(matches!(a.txn(&when, &then).await.expect("txn"), TxnOutcome::Committed(_)));

    // a resigns: b is elected at once.
    let resigned = Instant::now();
    a.resign(&key_a).await.expect("resign");
    let key_b = tokio::time::timeout(Duration::from_secs(5), &mut campaign_b)
        .await
        .expect("b is elected after a resigns")
        .expect("the campaign task")
        .expect("b campaigns");
    let handover = resigned.elapsed();
    eprintln!("measured: leadership handed over {handover:?} after the leader resigned");
    assert!(handover < Duration::from_secs(2), "{handover:?}");
    assert_eq!(a.leader(ELECTION).await.expect("leader").map(|kv| kv.value), Some(b"node-b".to_vec()));

    // a's old leadership no longer fences anything.
    let (when, then) = fenced(&key_a, b"late-a");
    assert!(matches!(a.txn(&when, &then).await.expect("txn"), TxnOutcome::Refused(_)));

    // a campaigns again and waits; b's renewals stop (its node dies): once b's lease
    // expires, a leads again.
    let a2 = a.clone();
    let campaign_a = tokio::spawn(async move { a2.campaign(ELECTION, b"node-a", lease_a.id).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!campaign_a.is_finished(), "a was elected while b leads");
    drop(keep_b);
    let died = Instant::now();
    let key_a2 = tokio::time::timeout(TTL * 4, campaign_a)
        .await
        .expect("a is elected after b's lease expires")
        .expect("the campaign task")
        .expect("a campaigns");
    let failover = died.elapsed();
    eprintln!("measured: leadership failed over {failover:?} after the leader's renewals stopped (TTL {TTL:?})");
    assert!(failover <= TTL + Duration::from_secs(2), "{failover:?}");
    assert_ne!(key_a2.revision, key_a.revision, "a new term has a new revision");

    // b's fenced write, after its leadership was lost with its lease, is refused.
    let (when, then) = fenced(&key_b, b"late-b");
    assert!(matches!(b.txn(&when, &then).await.expect("txn"), TxnOutcome::Refused(_)));
    let (_, placement) = a.get("/t/c/placement").await.expect("get");
    assert_eq!(placement.expect("written").value, b"by-a");
    drop(keep_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_fenced_by_a_lease_lost_to_a_dead_quorum_is_refused_once_etcd_is_back() {
    let mut cluster = blocking(|| EtcdCluster::start("fencing"));
    let etcd = store(&cluster.endpoints()).await;
    let lease = etcd.grant(TTL).await.expect("grant");
    let mut keep = etcd.keep_alive(lease);
    let key = etcd.campaign(ELECTION, b"node-a", lease.id).await.expect("campaign");

    // "Create if absent" is the other fence: exactly one of two writers wins.
    let claim = |v: &[u8]| {
        (
            vec![Condition::Absent("/t/c/slot".into())],
            vec![TxnOp::Put { key: "/t/c/slot".into(), value: v.to_vec(), lease: Some(lease.id) }],
        )
    };
    let (w, t) = claim(b"first");
    assert!(matches!(etcd.txn(&w, &t).await.expect("txn"), TxnOutcome::Committed(_)));
    let (w, t) = claim(b"second");
    assert!(matches!(etcd.txn(&w, &t).await.expect("txn"), TxnOutcome::Refused(_)));

    // The leader's node loses its renewals for longer than the TTL: etcd is down (2 of 3
    // members), the keep-alive says the lease is lost…
    blocking(|| {
        cluster.kill(1);
        cluster.kill(2);
    });
    let why = tokio::time::timeout(TTL * 3, keep.lost()).await.expect("the lease is reported lost");
    assert_eq!(why, LeaseLost::NoAnswer);
    drop(keep);
    // …and when etcd comes back (a leader change gives every lease its full TTL again),
    // the lease expires there too, with the election key: the old term fences nothing.
    blocking(|| {
        cluster.restart(1);
        cluster.restart(2);
        cluster.wait_quorum(crate::etcd::QUORUM_TIMEOUT)
    });
    let ((), waited) = crate::eventually("the lost lease's election key to go", TTL * 5, || async {
        (crate::exists(&etcd, &key.key).await == Some(false)).then_some(())
    })
    .await;
    eprintln!("measured: the election key of a lost lease went {waited:?} after quorum returned");
    let when = vec![Condition::CreatedAt(key.key.clone(), key.revision)];
    let then = vec![TxnOp::Put { key: "/t/c/placement".into(), value: b"stale".to_vec(), lease: None }];
    assert!(matches!(etcd.txn(&when, &then).await.expect("txn"), TxnOutcome::Refused(_)));
    assert_eq!(etcd.get("/t/c/placement").await.expect("get").1, None);
}
