//! A lost quorum (2 of 3 members killed): calls fail within their timeout with an error that
//! names etcd and the call, a kept-alive lease is reported lost within its TTL, and
//! everything works again once the members are back.

use std::time::{Duration, Instant};

use tend::engine::etcd::{ClusterStore, EtcdError, LeaseLost};

use crate::etcd::{ELECTION_TIMEOUT_MS, EtcdCluster, QUORUM_TIMEOUT};
use crate::{CALL, TTL, blocking, chain, eventually, store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_clearly_within_their_timeout_without_quorum_and_work_again_after() {
    let mut cluster = blocking(|| EtcdCluster::start("quorum"));
    let etcd = store(&cluster.endpoints()).await;
    let lease = etcd.grant(TTL).await.expect("grant");
    let mut keep = etcd.keep_alive(lease);
    etcd.put("/t/q/member", b"node-a", Some(lease.id)).await.expect("put");
    let status = etcd.status().await.expect("status");
    assert_eq!(status.members.len(), 3);
    assert!(status.leader_name.is_some(), "{status:?}");
    assert!(status.version.starts_with("3."), "{status:?}");

    blocking(|| {
        cluster.kill(1);
        cluster.kill(2);
    });
    let killed = Instant::now();

    // The keep-alive notices: the lease may have expired.
    let why = tokio::time::timeout(TTL * 3, keep.lost()).await.expect("the lease is reported lost");
    let noticed = killed.elapsed();
    eprintln!("measured: without quorum, a {TTL:?} lease was reported lost {noticed:?} after the kill ({why})");
    assert_eq!(why, LeaseLost::NoAnswer);
    // A raft leader left alone still acknowledges renewals until it sees it has lost its
    // quorum (one election timeout), so the bound is the TTL after that, plus one renewal
    // period.
    let bound = TTL + Duration::from_millis(ELECTION_TIMEOUT_MS) + TTL / 3 + Duration::from_millis(500);
    assert!(noticed <= bound, "{noticed:?} > {bound:?}");

    // Every kind of call fails within its timeout, naming etcd and the call.
    let t0 = Instant::now();
    let put = etcd.put("/t/q/x", b"1", None).await.map(drop);
    check("put /t/q/x", put, t0.elapsed());
    let t0 = Instant::now();
    let get = etcd.get("/t/q/x").await.map(drop);
    check("get /t/q/x", get, t0.elapsed());
    let t0 = Instant::now();
    let grant = etcd.grant(TTL).await.map(drop);
    check("lease grant", grant, t0.elapsed());
    let t0 = Instant::now();
    let status = etcd.status().await.map(drop);
    check("status", status, t0.elapsed());

    // The members come back: the same client works again.
    blocking(|| {
        cluster.restart(1);
        cluster.restart(2);
    });
    let restarted = Instant::now();
    let (revision, took) = eventually("a put to succeed after quorum returned", QUORUM_TIMEOUT, || async {
        etcd.put("/t/q/x", b"2", None).await.ok()
    })
    .await;
    eprintln!("measured: the first put succeeded {took:?} after the members were restarted (revision {revision})");
    assert!(restarted.elapsed() < QUORUM_TIMEOUT);
    let status = etcd.status().await.expect("status");
    assert!(status.revision >= revision);
    // A new etcd leader gives every lease its full TTL again: the lease outlived the lost
    // quorum, and its key with it.
    let alive = tokio::time::timeout(QUORUM_TIMEOUT, keep.confirmed()).await.expect("the lease's fate is known");
    eprintln!(
        "measured: after quorum returned, the lease was {} again {:?} after the restart",
        if alive { "alive" } else { "gone" },
        restarted.elapsed()
    );
    assert!(alive, "the lease did not survive the lost quorum");
    assert_eq!(etcd.get("/t/q/member").await.expect("get").1.map(|kv| kv.value), Some(b"node-a".to_vec()));
}

/// Asserts that `result` is an error of call `call` that says etcd is out of reach, and came
/// within the call timeout (and a little).
fn check(call: &str, result: Result<(), EtcdError>, took: Duration) {
    let e = result.expect_err("a call without quorum");
    let text = chain(&e);
    eprintln!("measured: without quorum, after {took:?}: {text} (kind {})", e.kind());
    assert!(text.starts_with(&format!("etcd {call}")), "{text}");
    assert!(e.is_unreachable(), "{text}");
    assert!(took <= CALL + Duration::from_millis(500), "{took:?}");
}
