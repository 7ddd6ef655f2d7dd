//! Watches from a known revision: every change after it, once, in order, also across the
//! restart of the member the watch was connected to; a compacted revision is an error.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tend::engine::etcd::{ClusterStore, EtcdError, WatchBatch, WatchEvent};

use crate::etcd::{EtcdCluster, QUORUM_TIMEOUT};
use crate::{blocking, chain, put_retry, store};

/// The next `n` events of `watch` (as `put KEY=VALUE` / `delete KEY`), within 10 s.
async fn next_events(watch: &mut BoxStream<'static, Result<WatchBatch, EtcdError>>, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("no event within 10s; seen so far: {seen:?}"))
            .expect("the watch ended")
            .unwrap_or_else(|e| panic!("the watch failed: {}", chain(&e)));
        for event in batch.events {
            seen.push(match event {
                WatchEvent::Put(kv) => format!("put {}={}", kv.key, String::from_utf8_lossy(&kv.value)),
                WatchEvent::Delete { key, .. } => format!("delete {key}"),
            });
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_change_from_a_revision_once_also_across_a_member_restart() {
    let mut cluster = blocking(|| EtcdCluster::start("watch"));
    // The watching client knows member 0 only: restarting it breaks the watch's stream.
    let watcher = store(&[cluster.endpoint(0)]).await;
    let writer = store(&[cluster.endpoint(1), cluster.endpoint(2)]).await;

    let first = writer.put("/t/w/a", b"1", None).await.expect("put");
    writer.put("/t/w/b", b"2", None).await.expect("put");
    writer.delete("/t/w/a").await.expect("delete");
    writer.put("/t/other", b"not watched", None).await.expect("put");
    let listing = writer.get_prefix("/t/w/").await.expect("get prefix");
    assert_eq!(listing.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/t/w/b"]);
    assert!(listing.revision > first);

    // From the first write on: the history, then what comes next.
    let mut watch = watcher.watch_prefix("/t/w/", first).await.expect("watch");
    assert_eq!(next_events(&mut watch, 3).await, ["put /t/w/a=1", "put /t/w/b=2", "delete /t/w/a"]);
    writer.put("/t/w/c", b"3", None).await.expect("put");
    assert_eq!(next_events(&mut watch, 1).await, ["put /t/w/c=3"]);

    // The watched member dies; changes go on through the others; it comes back.
    blocking(|| cluster.kill(0));
    put_retry(&writer, "/t/w/d", b"4").await;
    put_retry(&writer, "/t/w/c", b"5").await;
    blocking(|| {
        cluster.restart(0);
        cluster.wait_healthy(0, QUORUM_TIMEOUT)
    });
    put_retry(&writer, "/t/w/e", b"6").await;
    let after = next_events(&mut watch, 3).await;
    assert_eq!(after, ["put /t/w/d=4", "put /t/w/c=5", "put /t/w/e=6"], "each change once, in order");
    // Nothing more (no repeats).
    assert!(tokio::time::timeout(Duration::from_millis(500), watch.next()).await.is_err(), "an extra event");

    // From a listing's revision + 1: only what follows the listing.
    let listing = writer.get_prefix("/t/w/").await.expect("get prefix");
    let mut watch = watcher.watch_prefix("/t/w/", listing.revision + 1).await.expect("watch");
    writer.delete("/t/w/b").await.expect("delete");
    assert_eq!(next_events(&mut watch, 1).await, ["delete /t/w/b"]);

    // A compacted revision cannot be watched from.
    let now = writer.put("/t/w/f", b"7", None).await.expect("put");
    blocking(|| cluster.etcdctl_ok(&["compact", &now.to_string()]));
    let mut stale = watcher.watch_prefix("/t/w/", first).await.expect("etcd confirms the watch first");
    let e = match tokio::time::timeout(Duration::from_secs(5), stale.next()).await.expect("an answer") {
        Some(Err(e)) => e,
        other => panic!("a watch from a compacted revision delivered {other:?}"),
    };
    assert!(matches!(e, EtcdError::Compacted { compacted, .. } if compacted == now), "{}", chain(&e));
    assert!(stale.next().await.is_none(), "the stream ends after a compaction");
    assert_eq!(e.kind(), "compacted");
}
