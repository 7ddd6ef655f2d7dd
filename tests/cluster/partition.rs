//! A real partition: etcd's members and a client each in a network namespace of their own
//! on one bridge; the client's link is taken down (its calls time out, its lease is
//! reported lost) and up again (it works again, on the same client).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tend::engine::etcd::{ClusterStore, LeaseLost};

use crate::etcd::{EtcdCluster, Place};
use crate::netns::Net;
use crate::{CALL, TTL, chain, eventually, store};

#[test]
fn a_client_whose_link_is_down_times_out_and_works_again_once_it_is_up() {
    let net = Arc::new(Net::new("partition", 4));
    let places: Vec<Place> =
        (0..3).map(|i| Place::Namespace { ns: net.ns(i).to_string(), ip: net.ip(i).to_string() }).collect();
    let cluster = EtcdCluster::start_at("partition", &places);
    let endpoints = cluster.endpoints();
    assert!(endpoints.iter().all(|e| e.starts_with("http://10.231.")), "{endpoints:?}");

    // The addresses exist only in the namespaces: none in the test's own (nothing here may
    // send a packet to them from outside the bridge, so this is read, not tried).
    let own = crate::netns::ip(&["-o", "addr"]).expect("ip addr");
    assert!(!own.contains(crate::netns::RANGE), "the test's own namespace has a test address:\n{own}");

    let client_net = Arc::clone(&net);
    let client = net.run_in(3, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async move {
            let net = client_net;
            let etcd = store(&endpoints).await;
            let lease = etcd.grant(TTL).await.expect("grant");
            let mut keep = etcd.keep_alive(lease);
            etcd.put("/t/p/member", b"node-d", Some(lease.id)).await.expect("put from the namespace");

            // A cut shorter than the TTL: nothing is lost (the renewals sent meanwhile are
            // retransmitted by TCP when the link is back).
            net.link_down(3);
            std::thread::sleep(TTL / 2);
            net.link_up(3);
            let (_, took) = eventually("a put to succeed after a short cut", Duration::from_secs(20), || async {
                etcd.put("/t/p/x", b"0", None).await.ok()
            })
            .await;
            let short = keep.state();
            eprintln!("measured: after a {:?} cut the first put succeeded {took:?} after the link came up; the lease is {short:?}", TTL / 2);
            assert!(tokio::time::timeout(Duration::from_secs(10), keep.confirmed()).await.expect("the lease's fate is known"), "a short cut lost the lease");
            assert_eq!(etcd.get("/t/p/member").await.expect("get").1.map(|kv| kv.value), Some(b"node-d".to_vec()));

            // A cut longer than the TTL.
            net.link_down(3);
            let cut = Instant::now();
            let t0 = Instant::now();
            let e = etcd.put("/t/p/x", b"1", None).await.expect_err("a put over a link that is down");
            let failed_in = t0.elapsed();
            eprintln!("measured: with its link down, a put failed after {failed_in:?}: {} (kind {})", chain(&e), e.kind());
            // Either the call's own bound or the connection's unanswered HTTP/2 pings end it,
            // whichever comes first: both are a timeout.
            assert_eq!(e.kind(), "timeout", "{}", chain(&e));
            assert!(chain(&e).starts_with("etcd put /t/p/x: "), "{}", chain(&e));
            assert!(failed_in <= CALL + Duration::from_millis(500), "{failed_in:?}");
            let why = tokio::time::timeout(TTL * 3, keep.lost()).await.expect("the lease is reported lost");
            let noticed = cut.elapsed();
            eprintln!("measured: with its link down, a {TTL:?} lease was reported lost {noticed:?} after the cut ({why})");
            assert_eq!(why, LeaseLost::NoAnswer);
            assert!(noticed <= TTL + Duration::from_millis(500), "{noticed:?}");
            // Stay cut off until etcd has surely expired it (its lessor looks every 500 ms).
            tokio::time::sleep(TTL).await;

            net.link_up(3);
            let healed = Instant::now();
            let (_, took) = eventually("a put to succeed once the link is up", Duration::from_secs(20), || async {
                etcd.put("/t/p/x", b"2", None).await.ok()
            })
            .await;
            eprintln!("measured: the same client's first put succeeded {took:?} after the link came up");
            assert!(healed.elapsed() < Duration::from_secs(20));
            // The lease expired on etcd's side while the node was cut off: its key is gone.
            let (_, kv) = etcd.get("/t/p/member").await.expect("get");
            assert_eq!(kv, None, "the key of the lost lease is gone");
            let e = etcd.put("/t/p/member", b"node-d", Some(lease.id)).await.expect_err("the lease is gone");
            assert_eq!(e.kind(), "lease_not_found", "{}", chain(&e));
            tokio::time::timeout(Duration::from_secs(10), keep.gone())
                .await
                .expect("the keep-alive learns the lease is gone");
            eprintln!(
                "measured: the keep-alive learned the lease was gone {:?} after the link came up",
                healed.elapsed()
            );
        })
    });
    if let Err(panic) = client.join() {
        eprintln!("{}", cluster.logs());
        std::panic::resume_unwind(panic);
    }
    drop(cluster);
}
