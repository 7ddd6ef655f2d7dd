//! A [`ClusterStore`] that measures another: how long each call took and, when it failed,
//! the kind of failure ([`EtcdError::kind`]), handed to a [`Recorder`] (the agent's
//! metrics: `tend_etcd_request_duration_seconds{call}`, `tend_etcd_errors_total{call,kind}`).
//! The one place etcd calls are measured: the adapter knows nothing of metrics, and the
//! cluster code nothing of measuring.
//!
//! Not every call has a duration worth a histogram: a campaign lasts until this node is
//! elected (minutes, or the agent's life), so it counts its errors only; a watch's duration
//! is that of opening it, and the errors its stream delivers later count too. A keep-alive
//! and an election observation are tasks, not calls: their troubles show in the lease's
//! state and the node's view, not here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::Instant;

use crate::engine::etcd::{
    ClusterStore, Condition, EtcdError, EtcdStatus, KeepAlive, KeyValue, LeaderKey, Lease, LeaseId, LeaseTimeLeft,
    Listing, Revision, TxnOp, TxnOutcome, WatchBatch,
};

/// Where the measurements go.
pub trait Recorder: Send + Sync {
    /// A call named `call` (`put`, `get_prefix`, …) took `took`, whatever its outcome.
    fn duration(&self, call: &'static str, took: Duration);
    /// A call named `call` failed with an error of `kind` ([`EtcdError::kind`]).
    fn error(&self, call: &'static str, kind: &'static str);
}

/// `inner`, measured.
pub struct Metered<S> {
    inner: S,
    recorder: Arc<dyn Recorder>,
}

impl<S> Metered<S> {
    /// Measures the calls of `inner` into `recorder`.
    pub fn new(inner: S, recorder: Arc<dyn Recorder>) -> Self {
        Self { inner, recorder }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Metered<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S: ClusterStore> Metered<S> {
    /// Runs one call, recording its duration and its error's kind.
    async fn timed<T>(
        &self,
        call: &'static str,
        f: impl Future<Output = Result<T, EtcdError>> + Send,
    ) -> Result<T, EtcdError> {
        let t0 = Instant::now();
        let result = f.await;
        self.recorder.duration(call, t0.elapsed());
        if let Err(e) = &result {
            self.recorder.error(call, e.kind());
        }
        result
    }
}

impl<S: ClusterStore> ClusterStore for Metered<S> {
    async fn grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        self.timed("lease_grant", self.inner.grant(ttl)).await
    }

    fn keep_alive(&self, lease: Lease) -> KeepAlive {
        self.inner.keep_alive(lease)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        self.timed("lease_revoke", self.inner.revoke(lease)).await
    }

    async fn lease_time_left(&self, lease: LeaseId) -> Result<Option<LeaseTimeLeft>, EtcdError> {
        self.timed("lease_time_to_live", self.inner.lease_time_left(lease)).await
    }

    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision, EtcdError> {
        self.timed("put", self.inner.put(key, value, lease)).await
    }

    async fn get(&self, key: &str) -> Result<(Revision, Option<KeyValue>), EtcdError> {
        self.timed("get", self.inner.get(key)).await
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Listing, EtcdError> {
        self.timed("get_prefix", self.inner.get_prefix(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        self.timed("delete", self.inner.delete(key)).await
    }

    async fn txn(&self, when: &[Condition], then: &[TxnOp]) -> Result<TxnOutcome, EtcdError> {
        self.timed("txn", self.inner.txn(when, then)).await
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<BoxStream<'static, Result<WatchBatch, EtcdError>>, EtcdError> {
        let stream = self.timed("watch", self.inner.watch_prefix(prefix, from)).await?;
        let recorder = self.recorder.clone();
        Ok(stream
            .inspect(move |item| {
                if let Err(e) = item {
                    recorder.error("watch", e.kind());
                }
            })
            .boxed())
    }

    async fn campaign(&self, election: &str, value: &[u8], lease: LeaseId) -> Result<LeaderKey, EtcdError> {
        let result = self.inner.campaign(election, value, lease).await;
        if let Err(e) = &result {
            self.recorder.error("campaign", e.kind());
        }
        result
    }

    async fn leader(&self, election: &str) -> Result<Option<KeyValue>, EtcdError> {
        self.timed("leader", self.inner.leader(election)).await
    }

    async fn resign(&self, leader: &LeaderKey) -> Result<(), EtcdError> {
        self.timed("resign", self.inner.resign(leader)).await
    }

    async fn status(&self) -> Result<EtcdStatus, EtcdError> {
        self.timed("status", self.inner.status()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::engine::NoAnswer;
    use crate::engine::etcd::ENGINE;

    /// One measurement: the call, its duration or its error's kind.
    type Entry = (&'static str, Option<Duration>, Option<&'static str>);

    /// Records what it is told.
    #[derive(Default)]
    struct Log(Mutex<Vec<Entry>>);

    impl Recorder for Log {
        fn duration(&self, call: &'static str, took: Duration) {
            self.0.lock().expect("log").push((call, Some(took), None));
        }
        fn error(&self, call: &'static str, kind: &'static str) {
            self.0.lock().expect("log").push((call, None, Some(kind)));
        }
    }

    fn timeout() -> EtcdError {
        EtcdError::Call {
            call: "put",
            object: "/k".into(),
            kind: crate::engine::etcd::EtcdErrorKind::Timeout,
            source: Box::new(NoAnswer { engine: ENGINE, waited: Duration::from_secs(5) }),
        }
    }

    /// A store whose puts take 250 ms and fail on the key `/bad`, whose campaigns fail, and
    /// whose watches deliver one error. These tests call nothing else of it.
    struct Slow;

    impl ClusterStore for Slow {
        async fn grant(&self, _: Duration) -> Result<Lease, EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        fn keep_alive(&self, _: Lease) -> KeepAlive {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        async fn revoke(&self, _: LeaseId) -> Result<(), EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        async fn lease_time_left(&self, _: LeaseId) -> Result<Option<LeaseTimeLeft>, EtcdError> {
            Ok(None)
        }
        async fn put(&self, key: &str, _: &[u8], _: Option<LeaseId>) -> Result<Revision, EtcdError> {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if key == "/bad" { Err(timeout()) } else { Ok(7) }
        }
        async fn get(&self, _: &str) -> Result<(Revision, Option<KeyValue>), EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        async fn get_prefix(&self, _: &str) -> Result<Listing, EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        async fn delete(&self, _: &str) -> Result<bool, EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        async fn txn(&self, _: &[Condition], _: &[TxnOp]) -> Result<TxnOutcome, EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        async fn watch_prefix(
            &self,
            prefix: &str,
            from: Revision,
        ) -> Result<BoxStream<'static, Result<WatchBatch, EtcdError>>, EtcdError> {
            let e = EtcdError::Compacted { prefix: prefix.to_string(), from, compacted: from + 10 };
            Ok(futures::stream::iter([Ok(WatchBatch { revision: from, events: vec![] }), Err(e)]).boxed())
        }
        async fn campaign(&self, _: &str, _: &[u8], _: LeaseId) -> Result<LeaderKey, EtcdError> {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Err(timeout())
        }
        async fn leader(&self, _: &str) -> Result<Option<KeyValue>, EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        async fn resign(&self, _: &LeaderKey) -> Result<(), EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
        async fn status(&self) -> Result<EtcdStatus, EtcdError> {
            unreachable!("the metered tests call only put, lease_time_left, campaign and watch_prefix")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_records_its_duration_and_a_failed_one_its_kind() {
        let log = Arc::new(Log::default());
        let store = Metered::new(Slow, log.clone());
        assert_eq!(store.put("/ok", b"v", None).await.expect("put"), 7);
        let e = store.put("/bad", b"v", None).await.expect_err("put");
        assert_eq!(e.kind(), "timeout", "the error passes through unchanged");
        assert_eq!(store.lease_time_left(LeaseId(1)).await.expect("ttl"), None);
        let seen = log.0.lock().expect("log").clone();
        assert_eq!(
            seen,
            [
                ("put", Some(Duration::from_millis(250)), None),
                ("put", Some(Duration::from_millis(250)), None),
                ("put", None, Some("timeout")),
                ("lease_time_to_live", Some(Duration::ZERO), None),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_campaign_counts_only_its_errors_and_a_watch_the_errors_of_its_stream() {
        let log = Arc::new(Log::default());
        let store = Metered::new(Slow, log.clone());
        store.campaign("/e", b"a", LeaseId(1)).await.expect_err("campaign");
        let items: Vec<_> = store.watch_prefix("/p/", 3).await.expect("watch").collect().await;
        assert_eq!(items.len(), 2);
        let seen = log.0.lock().expect("log").clone();
        assert_eq!(
            seen,
            [
                ("campaign", None, Some("timeout")),
                ("watch", Some(Duration::ZERO), None),
                ("watch", None, Some("compacted")),
            ]
        );
    }
}
