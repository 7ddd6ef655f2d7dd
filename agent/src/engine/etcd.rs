//! etcd, the cluster's store: the narrow trait the cluster code needs of it
//! ([`ClusterStore`]: leases, their keep-alive and time left, keys under leases, prefix
//! reads and watches from a revision, fenced transactions, etcd's v3 election API, status)
//! and its adapter over the `etcd-client` crate ([`EtcdStore`]), whose types never leave
//! this file.
//!
//! What the adapter adds to the client, because etcd 3.4 and etcd-client 0.21 do not do it:
//! - every request/response call is bounded by the call timeout and fails naming etcd, the
//!   call and its object (`etcd put /tend/c/members/a: etcd did not answer within 5s`); the
//!   client itself gets a connect timeout, HTTP/2 keep-alive pings (so a stream over a dead
//!   connection ends instead of hanging) and require-leader (a member without a leader
//!   refuses at once instead of hanging until the timeout);
//! - a lease's keep-alive is a task ([`KeepAlive`]) that renews every TTL/3, re-opens the
//!   stream when it ends (after an etcd restart it ends for good), and reports the lease
//!   unconfirmed the moment it may have expired (the send time of the last acknowledged
//!   renewal plus the TTL etcd granted then: never later than etcd itself would expire it),
//!   alive again if etcd still has it, gone when etcd says so;
//! - a watch (and an election observation) re-opens itself after its stream ends, a watch
//!   from the revision after the last one it delivered, so no event is lost or repeated;
//!   when that revision was compacted it ends with [`EtcdError::Compacted`] (the caller
//!   reads the prefix again and watches from there).
//!
//! Credentials and TLS material are read from files (regular files only, with a cap:
//! `tend_specs::files`), never from the configuration's text.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use etcd_client as ec;
use futures::StreamExt;
use futures::stream::BoxStream;
use tend_specs::files::{self, Cap, ReadError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{NoAnswer, bounded};

/// The engine's name in messages ("etcd did not answer within 5s").
pub const ENGINE: &str = "etcd";

/// A CA, certificate or key file: 1 MiB (a PEM chain is a few KiB).
pub const TLS_FILE: Cap = Cap { max: 1 << 20, what: "an etcd TLS file" };

/// A user name or password file: 4 KiB.
pub const CREDENTIAL_FILE: Cap = Cap { max: 4 << 10, what: "an etcd credential file" };

/// The shortest lease etcd grants (its minimum TTL is about 2 s; shorter requests are
/// raised to it by etcd anyway).
pub const MIN_TTL: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Configuration

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://10.0.0.1:2379`, or `https://…` with [`TlsFiles`]).
    pub endpoints: Vec<String>,
    /// TLS material, when the members speak TLS.
    pub tls: Option<TlsFiles>,
    /// etcd user and password, when etcd's authentication is on.
    pub credentials: Option<CredentialFiles>,
    /// How long tend waits.
    pub timeouts: EtcdTimeouts,
}

impl EtcdConfig {
    /// Plain-text access to `endpoints` with the default timeouts.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            credentials: None,
            timeouts: EtcdTimeouts::default(),
        }
    }
}

/// The host's trusted CA certificates (Debian's `ca-certificates` bundle), which check the
/// members' certificates when no CA file is given.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS files: the CA that signed the members' certificates and, when the members check
/// clients' certificates, this client's certificate and key. All PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) the members' certificates are checked against; `None`: the
    /// host's trusted CAs ([`SYSTEM_CA_FILE`]).
    pub ca_file: Option<PathBuf>,
    /// This client's certificate (needs `key_file`).
    pub cert_file: Option<PathBuf>,
    /// This client's private key (needs `cert_file`).
    pub key_file: Option<PathBuf>,
}

/// Files holding the etcd user name and password (one trailing newline is ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// The user name's file.
    pub username_file: PathBuf,
    /// The password's file.
    pub password_file: PathBuf,
}

/// How long tend waits for etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdTimeouts {
    /// One request/response call (and connecting, with authentication).
    pub call: Duration,
    /// Opening a TCP connection to one member.
    pub connect: Duration,
    /// How often an HTTP/2 ping checks a connection.
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped (its streams end).
    pub ping_timeout: Duration,
}

impl Default for EtcdTimeouts {
    /// 5 s per call (etcd answers in milliseconds; an election takes about one second),
    /// 2 s to connect, a ping every 2 s answered within 3 s.
    fn default() -> Self {
        Self {
            call: Duration::from_secs(5),
            connect: Duration::from_secs(2),
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(3),
        }
    }
}

// ---------------------------------------------------------------------------------------
// tend's types

/// An etcd revision: the store's version, raised by every change.
pub type Revision = i64;

/// A lease's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    /// In hexadecimal, as `etcdctl` prints lease ids.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// The TTL etcd granted (it may raise a short request to its minimum).
    pub ttl: Duration,
}

/// How long a lease has left, as etcd counts it (whole seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimeLeft {
    /// Until it expires unless renewed (etcd: it expires in under this plus one second).
    pub left: Duration,
    /// The TTL it was granted (each renewal restarts it from this).
    pub granted: Duration,
}

/// A key and its value, with etcd's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (tend's keys are text; other bytes are shown replaced).
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (since it was last absent).
    pub create_revision: Revision,
    /// The revision of its last change.
    pub mod_revision: Revision,
    /// How many times it was written since it was created.
    pub version: i64,
    /// The lease it lives under, if any.
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, as of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The store's revision when it was read: watch from `revision + 1` to see what follows.
    pub revision: Revision,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was written.
    Put(KeyValue),
    /// The key was deleted (or its lease expired).
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key it is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Put(kv) => &kv.key,
            Self::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Self::Put(kv) => kv.mod_revision,
            Self::Delete { revision, .. } => *revision,
        }
    }
}

/// The changes of one revision (or a few), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The store's revision when etcd sent them.
    pub revision: Revision,
    /// The changes.
    pub events: Vec<WatchEvent>,
}

/// A condition of a transaction ([`ClusterStore::txn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was created at this revision: it is still the same incarnation
    /// (a leader's election key, a run's lock), not one deleted and made again since.
    CreatedAt(String, Revision),
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write the key, under the lease if one is given.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease it lives under.
        lease: Option<LeaseId>,
    },
    /// Delete the key.
    Delete {
        /// The key.
        key: String,
    },
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every condition held; the writes are done, at this revision.
    Committed(Revision),
    /// A condition did not hold; nothing was written. The store was at this revision.
    Refused(Revision),
}

/// What a campaign won: the election key of this candidate, which proves leadership
/// (fence writes with `Condition::CreatedAt(key, revision)`) and resigns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The election's name.
    pub election: String,
    /// The candidate's key (`<election>/<lease in hex>`).
    pub key: String,
    /// The key's create revision: unique to this term of leadership.
    pub revision: Revision,
    /// The lease it lives under.
    pub lease: LeaseId,
}

/// A member of the etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    /// Its id.
    pub id: u64,
    /// Its name (empty while it has not started).
    pub name: String,
    /// Its client URLs.
    pub client_urls: Vec<String>,
    /// Whether it is a learner (not voting).
    pub is_learner: bool,
}

/// etcd as the member that answered sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStatus {
    /// The answering member's id.
    pub member_id: u64,
    /// The raft leader's id.
    pub leader_id: u64,
    /// The raft leader's name, when it is in the member list.
    pub leader_name: Option<String>,
    /// The raft term (raised by every etcd leader election).
    pub raft_term: u64,
    /// The store's revision, read through quorum (a linearizable read).
    pub revision: Revision,
    /// The answering member's etcd version.
    pub version: String,
    /// The members.
    pub members: Vec<EtcdMember>,
}

/// Where a lease stands, as its [`KeepAlive`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed: it lives at least until `until` without another renewal.
    Alive {
        /// When it may expire if no renewal arrives before (a conservative bound: the send
        /// time of the last acknowledged renewal plus the TTL etcd granted with it).
        until: Instant,
    },
    /// No renewal was acknowledged in time: the lease may have expired, and whatever it
    /// guards (a leadership, a slot) must be treated as lost. Renewals go on: etcd may still
    /// have it (a leader change gives every lease its full TTL again), and then it is
    /// [`LeaseState::Alive`] again; or etcd says it is gone.
    Unconfirmed {
        /// Since when.
        since: Instant,
    },
    /// etcd answered that the lease does not exist (it expired or was revoked): its keys
    /// are gone. Final: the task has stopped.
    Gone,
}

/// Why a lease must be treated as lost ([`KeepAlive::lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLost {
    /// etcd answered that the lease is gone.
    Gone,
    /// No renewal was acknowledged in time: it may have expired.
    NoAnswer,
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gone => "etcd says the lease is gone (expired or revoked)",
            Self::NoAnswer => "no renewal was acknowledged before the lease could expire",
        })
    }
}

/// A lease kept alive by a task: ask it where the lease stands, or wait until it may be
/// lost. Dropping it stops the renewals (the lease then expires after its TTL unless
/// revoked).
#[derive(Debug)]
pub struct KeepAlive {
    /// The lease.
    pub lease: Lease,
    state: watch::Receiver<LeaseState>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl KeepAlive {
    /// A keep-alive driven by `state`'s sender, without a task: for fakes of
    /// [`ClusterStore`].
    pub fn from_channel(lease: Lease, state: watch::Receiver<LeaseState>) -> Self {
        Self { lease, state, task: None }
    }

    /// Where the lease stands now.
    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// A receiver of every change of [`KeepAlive::state`].
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Waits until the lease is no longer known to be alive (unconfirmed or gone), and says
    /// which; at once when it already is not.
    pub async fn lost(&mut self) -> LeaseLost {
        self.wait(|s| match s {
            LeaseState::Alive { .. } => None,
            LeaseState::Unconfirmed { .. } => Some(LeaseLost::NoAnswer),
            LeaseState::Gone => Some(LeaseLost::Gone),
        })
        .await
    }

    /// Waits until the lease is alive again (after [`KeepAlive::lost`]); `false` when it
    /// is gone instead.
    pub async fn confirmed(&mut self) -> bool {
        self.wait(|s| match s {
            LeaseState::Alive { .. } => Some(true),
            LeaseState::Unconfirmed { .. } => None,
            LeaseState::Gone => Some(false),
        })
        .await
    }

    /// Waits until etcd says the lease is gone.
    pub async fn gone(&mut self) {
        self.wait(|s| matches!(s, LeaseState::Gone).then_some(())).await;
    }

    async fn wait<T>(&mut self, done: impl Fn(LeaseState) -> Option<T>) -> T {
        loop {
            if let Some(v) = done(*self.state.borrow_and_update()) {
                return v;
            }
            if self.state.changed().await.is_err() {
                // The task is gone without a further verdict (the runtime shuts down):
                // nobody renews the lease any more.
                return std::future::pending().await;
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors

/// What kind of etcd failure this is, for the cluster's decisions and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdErrorKind {
    /// The configuration or its files are wrong.
    Config,
    /// No answer within the call timeout.
    Timeout,
    /// No member could be reached (refused, reset, no route).
    Unavailable,
    /// The member reached has no raft leader: the cluster has lost quorum (or is electing).
    NoLeader,
    /// The lease does not exist (expired or revoked).
    LeaseNotFound,
    /// The revision asked for was compacted.
    Compacted,
    /// Authentication failed or the user lacks the permission.
    Denied,
    /// Anything else etcd refused.
    Refused,
}

/// A failed etcd call (or configuration), naming etcd, the call and its object.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The configuration has no endpoint.
    #[error("etcd: no endpoints configured")]
    NoEndpoints,
    /// A TLS or credential file could not be read.
    #[error("etcd: reading {what}")]
    ReadFile {
        /// Which file ("the CA file").
        what: &'static str,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// A credential file is not UTF-8 text, or is empty.
    #[error("etcd: {what} `{}` is empty or not UTF-8 text", path.display())]
    BadCredential {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A call failed or got no answer in time.
    #[error("etcd {call} {object}")]
    Call {
        /// The call (`put`, `lease grant`, `campaign`, …).
        call: &'static str,
        /// What it was about (a key, a lease, an election, the endpoints).
        object: String,
        /// The kind of failure.
        kind: EtcdErrorKind,
        /// The cause: etcd's answer, the transport's error, or [`NoAnswer`].
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A watch cannot go on from where it was: etcd compacted that history away.
    #[error("etcd watch {prefix} from revision {from}: compacted (history starts at revision {compacted})")]
    Compacted {
        /// The watched prefix.
        prefix: String,
        /// The revision the watch needed next.
        from: Revision,
        /// The oldest revision etcd still has.
        compacted: Revision,
    },
}

impl EtcdError {
    /// The kind of failure.
    pub fn error_kind(&self) -> EtcdErrorKind {
        match self {
            Self::NoEndpoints | Self::ReadFile { .. } | Self::BadCredential { .. } => EtcdErrorKind::Config,
            Self::Call { kind, .. } => *kind,
            Self::Compacted { .. } => EtcdErrorKind::Compacted,
        }
    }

    /// A fixed label for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self.error_kind() {
            EtcdErrorKind::Config => "config",
            EtcdErrorKind::Timeout => "timeout",
            EtcdErrorKind::Unavailable => "unavailable",
            EtcdErrorKind::NoLeader => "no_leader",
            EtcdErrorKind::LeaseNotFound => "lease_not_found",
            EtcdErrorKind::Compacted => "compacted",
            EtcdErrorKind::Denied => "denied",
            EtcdErrorKind::Refused => "refused",
        }
    }

    /// Whether the cause is etcd being out of reach or without quorum (timeout,
    /// unavailable, no leader): the cluster freezes its decisions and retries.
    pub fn is_unreachable(&self) -> bool {
        matches!(self.error_kind(), EtcdErrorKind::Timeout | EtcdErrorKind::Unavailable | EtcdErrorKind::NoLeader)
    }

    fn call(call: &'static str, object: impl Into<String>, e: ec::Error) -> Self {
        let (kind, source) = cause(e);
        Self::Call { call, object: object.into(), kind, source }
    }

    fn timed_out(call: &'static str, object: impl Into<String>, e: NoAnswer) -> Self {
        Self::Call { call, object: object.into(), kind: EtcdErrorKind::Timeout, source: Box::new(e) }
    }
}

/// etcd's answer, as the cause of an [`EtcdError`]: its message and gRPC code.
#[derive(Debug, thiserror::Error)]
#[error("{message} (gRPC {code})")]
pub struct EtcdAnswer {
    /// The gRPC code's name (`Unavailable`).
    pub code: String,
    /// etcd's message, with the transport's causes when there are any.
    pub message: String,
}

/// The cause of a client error that is not an answer of etcd.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientFailure(String);

/// Classifies a client error and turns it into a cause without etcd-client's types in its
/// message (tonic's `Status` prints its metadata).
fn cause(e: ec::Error) -> (EtcdErrorKind, Box<dyn std::error::Error + Send + Sync>) {
    match e {
        ec::Error::GRpcStatus(status) => {
            let mut message = status.message().to_string();
            let mut src = std::error::Error::source(&status);
            while let Some(s) = src {
                let text = s.to_string();
                if !message.contains(&text) {
                    if !message.is_empty() {
                        message.push_str(": ");
                    }
                    message.push_str(&text);
                }
                src = s.source();
            }
            let code_num = status.code() as i32;
            let kind = classify(code_num, &message);
            (kind, Box::new(EtcdAnswer { code: format!("{:?}", status.code()), message }))
        }
        ec::Error::TransportError(t) => (EtcdErrorKind::Unavailable, Box::new(t)),
        ec::Error::IoError(io) => (EtcdErrorKind::Unavailable, Box::new(io)),
        ec::Error::LeaseKeepAliveError(m) if m.contains("lease not found") => {
            (EtcdErrorKind::LeaseNotFound, Box::new(ClientFailure(m)))
        }
        ec::Error::InvalidArgs(m) => {
            (EtcdErrorKind::Config, Box::new(ClientFailure(format!("invalid arguments: {m}"))))
        }
        ec::Error::InvalidUri(u) => (EtcdErrorKind::Config, Box::new(u)),
        other => (EtcdErrorKind::Refused, Box::new(ClientFailure(other.to_string()))),
    }
}

/// The kind of a gRPC status from etcd, by its code (gRPC's numbers) and message.
fn classify(code: i32, message: &str) -> EtcdErrorKind {
    const DEADLINE_EXCEEDED: i32 = 4;
    const NOT_FOUND: i32 = 5;
    const PERMISSION_DENIED: i32 = 7;
    const OUT_OF_RANGE: i32 = 11;
    const UNAVAILABLE: i32 = 14;
    const UNAUTHENTICATED: i32 = 16;
    if message.contains("no leader") || message.contains("leader changed") {
        return EtcdErrorKind::NoLeader;
    }
    // A connection dropped because its HTTP/2 pings went unanswered ("keep-alive timed
    // out", gRPC Unavailable) is etcd not answering, like the call's own timeout.
    if message.contains("timed out") {
        return EtcdErrorKind::Timeout;
    }
    // etcd answers a wrong password with InvalidArgument.
    if message.contains("authentication failed") || message.contains("permission denied") {
        return EtcdErrorKind::Denied;
    }
    match code {
        DEADLINE_EXCEEDED => EtcdErrorKind::Timeout,
        NOT_FOUND if message.contains("lease not found") => EtcdErrorKind::LeaseNotFound,
        OUT_OF_RANGE if message.contains("compacted") => EtcdErrorKind::Compacted,
        PERMISSION_DENIED | UNAUTHENTICATED => EtcdErrorKind::Denied,
        UNAVAILABLE => EtcdErrorKind::Unavailable,
        _ => EtcdErrorKind::Refused,
    }
}

// ---------------------------------------------------------------------------------------
// The trait

/// What the cluster needs of its store, in tend's types. [`EtcdStore`] is the real one;
/// tests of the cluster code use an in-memory fake.
pub trait ClusterStore: Send + Sync {
    /// Grants a lease of `ttl` (whole seconds, at least etcd's minimum).
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<Lease, EtcdError>> + Send;

    /// Keeps `lease` alive until the returned handle is dropped or the lease is lost.
    fn keep_alive(&self, lease: Lease) -> KeepAlive;

    /// Revokes a lease: its keys are deleted at once.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// How long `lease` has left (and the TTL it was granted); `None` when etcd no longer
    /// has it (it expired or was revoked).
    fn lease_time_left(&self, lease: LeaseId) -> impl Future<Output = Result<Option<LeaseTimeLeft>, EtcdError>> + Send;

    /// Writes `key`, under `lease` when given; returns the revision of the write.
    fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<Revision, EtcdError>> + Send;

    /// Reads one key (linearizable), with the store's revision.
    fn get(&self, key: &str) -> impl Future<Output = Result<(Revision, Option<KeyValue>), EtcdError>> + Send;

    /// Reads every key under `prefix` (linearizable), with the store's revision.
    fn get_prefix(&self, prefix: &str) -> impl Future<Output = Result<Listing, EtcdError>> + Send;

    /// Deletes `key`; whether it existed.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, EtcdError>> + Send;

    /// Does `then` if every condition of `when` holds, atomically; nothing otherwise.
    fn txn(&self, when: &[Condition], then: &[TxnOp]) -> impl Future<Output = Result<TxnOutcome, EtcdError>> + Send;

    /// The changes under `prefix` from revision `from` on (include it), batch by batch.
    /// The stream re-opens itself after a broken connection; it ends with
    /// [`EtcdError::Compacted`] when it cannot go on without a gap (as its first item when
    /// `from` was compacted already: etcd confirms a watch before it checks its start).
    fn watch_prefix(
        &self,
        prefix: &str,
        from: Revision,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<WatchBatch, EtcdError>>, EtcdError>> + Send;

    /// Campaigns in `election` with `value` (the node's name) under `lease`, and waits until
    /// elected. The one call without a call timeout: it lasts until the leaders before
    /// this candidate are gone. Dropping the future withdraws the candidacy; a broken
    /// connection ends it with an error (campaign again with the same lease: it is the
    /// same candidacy, not a new one at the back of the line).
    fn campaign(
        &self,
        election: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> impl Future<Output = Result<LeaderKey, EtcdError>> + Send;

    /// The current leader of `election` (its key and value), if there is one.
    fn leader(&self, election: &str) -> impl Future<Output = Result<Option<KeyValue>, EtcdError>> + Send;

    /// Gives up leadership: the next candidate is elected at once.
    fn resign(&self, leader: &LeaderKey) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// The state of etcd: leader, term, revision (through quorum), members.
    fn status(&self) -> impl Future<Output = Result<EtcdStatus, EtcdError>> + Send;
}

// ---------------------------------------------------------------------------------------
// The adapter

/// The etcd adapter: one client (one connection per member, balanced) shared by clones.
#[derive(Clone)]
pub struct EtcdStore {
    client: ec::Client,
    timeouts: EtcdTimeouts,
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.endpoints).field("timeouts", &self.timeouts).finish()
    }
}

/// Reads a credential file as one line of text.
fn read_credential(what: &'static str, path: &std::path::Path) -> Result<String, EtcdError> {
    let text = files::read_text(path, CREDENTIAL_FILE).map_err(|source| EtcdError::ReadFile { what, source })?;
    let bad = || EtcdError::BadCredential { what, path: path.to_path_buf() };
    let text = text.map_err(|_| bad())?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if text.is_empty() {
        return Err(bad());
    }
    Ok(text.to_string())
}

fn read_tls(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    files::read(path, TLS_FILE).map_err(|source| EtcdError::ReadFile { what, source })
}

/// The client's options from the configuration (reads the files).
fn connect_options(config: &EtcdConfig) -> Result<ec::ConnectOptions, EtcdError> {
    let t = config.timeouts;
    let mut options = ec::ConnectOptions::new()
        .with_connect_timeout(t.connect)
        .with_keep_alive(t.ping_interval, t.ping_timeout)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = &config.tls {
        let ca = match &tls.ca_file {
            Some(path) => read_tls("the CA file", path)?,
            None => read_tls("the host's trusted CAs", std::path::Path::new(SYSTEM_CA_FILE))?,
        };
        let mut tls_options = ec::TlsOptions::new().ca_certificate(ec::Certificate::from_pem(ca));
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let cert = read_tls("the certificate file", cert)?;
                let key = read_tls("the key file", key)?;
                tls_options = tls_options.identity(ec::Identity::from_pem(cert, key));
            }
            (None, None) => {}
            (Some(path), None) | (None, Some(path)) => {
                return Err(EtcdError::ReadFile {
                    what: "a client certificate without its key (or a key without its certificate)",
                    source: ReadError::Read {
                        path: path.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "certFile and keyFile go together",
                        ),
                    },
                });
            }
        }
        options = options.with_tls(tls_options);
    }
    if let Some(creds) = &config.credentials {
        let user = read_credential("the user name file", &creds.username_file)?;
        let password = read_credential("the password file", &creds.password_file)?;
        options = options.with_user(user, password);
    }
    Ok(options)
}

impl EtcdStore {
    /// Connects to etcd. Connections are made lazily (a member that is down now is tried
    /// again later), except that authentication, when configured, needs an answer now.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let options = connect_options(config)?;
        let endpoints = config.endpoints.join(",");
        let bound = config.timeouts.call;
        let client = bounded(ENGINE, bound, ec::Client::connect(&config.endpoints, Some(options)))
            .await
            .map_err(|e| EtcdError::timed_out("connect", &endpoints, e))?
            .map_err(|e| EtcdError::call("connect", &endpoints, e))?;
        Ok(Self { client, timeouts: config.timeouts, endpoints })
    }

    /// The endpoints, as configured.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The timeouts.
    pub fn timeouts(&self) -> EtcdTimeouts {
        self.timeouts
    }

    /// The same client (its connections shared) with another call timeout: for reads an
    /// operator waits for, which should give up sooner than the cluster's own calls.
    pub fn with_call_timeout(&self, call: Duration) -> Self {
        Self { timeouts: EtcdTimeouts { call, ..self.timeouts }, ..self.clone() }
    }

    /// Makes one call, bounded by the call timeout, naming it in the error. A call that
    /// etcd cannot have acted on (the connection to the member picked could not be made, or
    /// the member has no leader and refused it before doing anything) is made again, to a
    /// member picked again, until the timeout: so a dead member among live ones, or an etcd
    /// leader election, costs time rather than errors.
    async fn call<T, F, Fut>(&self, call: &'static str, object: &str, mut make: F) -> Result<T, EtcdError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        let bound = self.timeouts.call;
        let deadline = Instant::now() + bound;
        let mut pause = Duration::from_millis(20);
        // When one member said it has no leader, that explains a failure better than a
        // refused connection to another member that is down.
        let mut no_leader = None;
        loop {
            match tokio::time::timeout_at(deadline, make()).await {
                Err(_) => {
                    return Err(match no_leader {
                        Some(e) => EtcdError::call(call, object, e),
                        None => EtcdError::timed_out(call, object, NoAnswer { engine: ENGINE, waited: bound }),
                    });
                }
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if not_acted_on(&e) && Instant::now() + pause < deadline => {
                    tracing::trace!(call, object, error = %e, "etcd call not acted on; trying again");
                    if e.to_string().contains("no leader") {
                        no_leader = Some(e);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                Ok(Err(e)) => {
                    return Err(EtcdError::call(call, object, no_leader.filter(|_| not_acted_on(&e)).unwrap_or(e)));
                }
            }
        }
    }
}

/// Whether etcd certainly did not act on a call that failed so: no connection was made, or
/// the member refused it for want of a leader before looking at it (require-leader). Not
/// "leader changed", which comes after a write may have been applied.
fn not_acted_on(e: &ec::Error) -> bool {
    match e {
        ec::Error::GRpcStatus(status) => {
            let mut text = status.message().to_string();
            let mut src = std::error::Error::source(status);
            while let Some(s) = src {
                text.push_str(": ");
                text.push_str(&s.to_string());
                src = s.source();
            }
            text.contains("etcdserver: no leader")
                || text.contains("tcp connect error")
                || text.contains("error trying to connect")
        }
        _ => false,
    }
}

fn kv_of(kv: &ec::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    }
}

fn revision_of(header: Option<&ec::ResponseHeader>) -> Revision {
    header.map(ec::ResponseHeader::revision).unwrap_or(0)
}

/// A random fraction in [0.5, 1.0): jitter for reconnects, so nodes that lost etcd together
/// do not all come back in the same instant.
fn jitter(d: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let frac = 0.5 + (r % 1000) as f64 / 2000.0;
    d.mul_f64(frac)
}

impl ClusterStore for EtcdStore {
    async fn grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        let secs = i64::try_from(ttl.as_secs().max(MIN_TTL.as_secs())).unwrap_or(i64::MAX);
        let object = format!("(ttl {secs}s)");
        let resp = self
            .call("lease grant", &object, || {
                let mut c = self.client.lease_client();
                async move { c.grant(secs, None).await }
            })
            .await?;
        Ok(Lease { id: LeaseId(resp.id()), ttl: Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)) })
    }

    fn keep_alive(&self, lease: Lease) -> KeepAlive {
        let (tx, rx) = watch::channel(LeaseState::Alive { until: Instant::now() + lease.ttl });
        let task = tokio::spawn(keep_alive_task(self.client.lease_client(), self.timeouts, lease, tx));
        KeepAlive { lease, state: rx, task: Some(task) }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        self.call("lease revoke", &lease.to_string(), || {
            let mut c = self.client.lease_client();
            async move { c.revoke(lease.0).await }
        })
        .await
        .map(drop)
    }

    async fn lease_time_left(&self, lease: LeaseId) -> Result<Option<LeaseTimeLeft>, EtcdError> {
        let resp = self
            .call("lease time-to-live", &lease.to_string(), || {
                let mut c = self.client.lease_client();
                async move { c.time_to_live(lease.0, None).await }
            })
            .await;
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) if e.error_kind() == EtcdErrorKind::LeaseNotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // etcd answers a lease it does not have with a TTL of -1.
        let secs = |s: i64| Duration::from_secs(u64::try_from(s).unwrap_or(0));
        Ok((resp.ttl() >= 0).then(|| LeaseTimeLeft { left: secs(resp.ttl()), granted: secs(resp.granted_ttl()) }))
    }

    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision, EtcdError> {
        let options = lease.map(|l| ec::PutOptions::new().with_lease(l.0));
        let resp = self
            .call("put", key, || {
                let mut c = self.client.kv_client();
                let options = options.clone();
                async move { c.put(key, value, options).await }
            })
            .await?;
        Ok(revision_of(resp.header()))
    }

    async fn get(&self, key: &str) -> Result<(Revision, Option<KeyValue>), EtcdError> {
        let resp = self
            .call("get", key, || {
                let mut c = self.client.kv_client();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok((revision_of(resp.header()), resp.kvs().first().map(kv_of)))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Listing, EtcdError> {
        let resp = self
            .call("get prefix", prefix, || {
                let mut c = self.client.kv_client();
                async move { c.get(prefix, Some(ec::GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(Listing { revision: revision_of(resp.header()), kvs: resp.kvs().iter().map(kv_of).collect() })
    }

    async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let resp = self
            .call("delete", key, || {
                let mut c = self.client.kv_client();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn txn(&self, when: &[Condition], then: &[TxnOp]) -> Result<TxnOutcome, EtcdError> {
        let compares: Vec<ec::Compare> = when
            .iter()
            .map(|c| match c {
                Condition::Absent(key) => ec::Compare::create_revision(key.as_str(), ec::CompareOp::Equal, 0),
                Condition::CreatedAt(key, rev) => {
                    ec::Compare::create_revision(key.as_str(), ec::CompareOp::Equal, *rev)
                }
            })
            .collect();
        let ops: Vec<ec::TxnOp> = then
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => {
                    ec::TxnOp::put(key.as_str(), value.clone(), lease.map(|l| ec::PutOptions::new().with_lease(l.0)))
                }
                TxnOp::Delete { key } => ec::TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let object = then
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, .. } => format!("put {key}"),
                TxnOp::Delete { key } => format!("delete {key}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let txn = ec::Txn::new().when(compares).and_then(ops);
        let resp = self
            .call("txn", &object, || {
                let mut c = self.client.kv_client();
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let revision = revision_of(resp.header());
        Ok(if resp.succeeded() { TxnOutcome::Committed(revision) } else { TxnOutcome::Refused(revision) })
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<BoxStream<'static, Result<WatchBatch, EtcdError>>, EtcdError> {
        let stream = open_watch(&self.client, self.timeouts, prefix, from).await?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(watch_task(self.client.clone(), self.timeouts, prefix.to_string(), from, stream, tx));
        Ok(receiver_stream(rx, task))
    }

    async fn campaign(&self, election: &str, value: &[u8], lease: LeaseId) -> Result<LeaderKey, EtcdError> {
        let mut client = self.client.election_client();
        let mut resp =
            client.campaign(election, value, lease.0).await.map_err(|e| EtcdError::call("campaign", election, e))?;
        let key = resp.take_leader().ok_or_else(|| EtcdError::Call {
            call: "campaign",
            object: election.to_string(),
            kind: EtcdErrorKind::Refused,
            source: Box::new(ClientFailure("etcd answered without a leader key".into())),
        })?;
        Ok(LeaderKey {
            election: election.to_string(),
            key: String::from_utf8_lossy(key.key()).into_owned(),
            revision: key.rev(),
            lease: LeaseId(key.lease()),
        })
    }

    async fn leader(&self, election: &str) -> Result<Option<KeyValue>, EtcdError> {
        match self
            .call("leader", election, || {
                let mut c = self.client.election_client();
                async move { c.leader(election).await }
            })
            .await
        {
            Ok(resp) => Ok(resp.kv().map(kv_of)),
            // etcd answers "election: no leader" (gRPC Unknown) when nobody campaigns.
            Err(EtcdError::Call { source, .. }) if source.to_string().contains("election: no leader") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn resign(&self, leader: &LeaderKey) -> Result<(), EtcdError> {
        let key = ec::LeaderKey::new()
            .with_name(leader.election.as_str())
            .with_key(leader.key.as_str())
            .with_rev(leader.revision)
            .with_lease(leader.lease.0);
        let options = ec::ResignOptions::new().with_leader(key);
        self.call("resign", &leader.key, || {
            let mut c = self.client.election_client();
            let options = options.clone();
            async move { c.resign(Some(options)).await }
        })
        .await
        .map(drop)
    }

    async fn status(&self) -> Result<EtcdStatus, EtcdError> {
        let status = self
            .call("status", &self.endpoints, || {
                let mut c = self.client.maintenance_client();
                async move { c.status().await }
            })
            .await?;
        let members = self
            .call("member list", &self.endpoints, || {
                let mut c = self.client.cluster_client();
                async move { c.member_list().await }
            })
            .await?;
        // Status and the member list are answered by one member from its own state; a
        // linearizable read proves there is a quorum and gives the current revision.
        let read = self
            .call("get", "(quorum read)", || {
                let mut c = self.client.kv_client();
                async move { c.get("health", Some(ec::GetOptions::new().with_count_only())).await }
            })
            .await?;
        let members: Vec<EtcdMember> = members
            .members()
            .iter()
            .map(|m| EtcdMember {
                id: m.id(),
                name: m.name().to_string(),
                client_urls: m.client_urls().to_vec(),
                is_learner: m.is_learner(),
            })
            .collect();
        let leader_id = status.leader();
        Ok(EtcdStatus {
            member_id: status.header().map(ec::ResponseHeader::member_id).unwrap_or(0),
            leader_id,
            leader_name: members.iter().find(|m| m.id == leader_id).map(|m| m.name.clone()),
            raft_term: status.raft_term(),
            revision: revision_of(read.header()),
            version: status.version().to_string(),
            members,
        })
    }
}

/// A stream of what a task sends, which aborts the task when dropped.
fn receiver_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
    task: tokio::task::JoinHandle<()>,
) -> BoxStream<'static, T> {
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let guard = AbortOnDrop(task);
    futures::stream::unfold(
        (rx, guard),
        |(mut rx, guard)| async move { rx.recv().await.map(|item| (item, (rx, guard))) },
    )
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Tasks: keep-alive, watch

/// Renews `lease` every TTL/3, re-opening the stream when it ends, until etcd says the
/// lease is gone or the handle is dropped (the task is aborted). Reports every change of
/// the lease's state on `state`.
async fn keep_alive_task(
    mut client: ec::LeaseClient,
    timeouts: EtcdTimeouts,
    lease: Lease,
    state: watch::Sender<LeaseState>,
) {
    let object = lease.id.to_string();
    let every = (lease.ttl / 3).max(Duration::from_millis(200));
    let mut until = Instant::now() + lease.ttl;
    let mut unconfirmed = false;
    let mut backoff = Duration::from_millis(100);
    let set = |s: LeaseState| {
        if !matches!(s, LeaseState::Alive { .. }) || *state.borrow() != s {
            tracing::debug!(lease = %object, state = ?s, "etcd lease");
        }
        let _ = state.send(s);
    };
    loop {
        // (Re)open the stream. etcd-client sends the first renewal and waits for its answer.
        let sent = Instant::now();
        let open = tokio::select! {
            open = tokio::time::timeout(timeouts.call, client.keep_alive(lease.id.0)) => open,
            () = tokio::time::sleep_until(until), if !unconfirmed => {
                unconfirmed = true;
                set(LeaseState::Unconfirmed { since: until });
                continue;
            }
        };
        let (mut keeper, mut stream) = match open {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                let (kind, _) = cause(e);
                if kind == EtcdErrorKind::LeaseNotFound {
                    return set(LeaseState::Gone);
                }
                tokio::select! {
                    () = tokio::time::sleep(jitter(backoff)) => {}
                    () = tokio::time::sleep_until(until), if !unconfirmed => {
                        unconfirmed = true;
                        set(LeaseState::Unconfirmed { since: until });
                    }
                }
                backoff = (backoff * 2).min(every);
                continue;
            }
            Err(_) => continue,
        };
        backoff = Duration::from_millis(100);
        until = sent + lease.ttl;
        unconfirmed = false;
        set(LeaseState::Alive { until });
        // Renewals in flight: answers come back in order on one stream.
        let mut in_flight: VecDeque<Instant> = VecDeque::new();
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    in_flight.push_back(Instant::now());
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        let Some(sent) = in_flight.pop_front() else { continue };
                        if resp.ttl() <= 0 {
                            return set(LeaseState::Gone);
                        }
                        until = sent + Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
                        unconfirmed = false;
                        set(LeaseState::Alive { until });
                    }
                    Ok(None) | Err(_) => break,
                },
                () = tokio::time::sleep_until(until), if !unconfirmed => {
                    unconfirmed = true;
                    set(LeaseState::Unconfirmed { since: until });
                }
            }
        }
        tracing::debug!(lease = %object, "etcd keep-alive stream ended; re-opening");
    }
}

/// Opens a watch of `prefix` from `from` and waits for etcd to confirm it (or refuse it).
async fn open_watch(
    client: &ec::Client,
    timeouts: EtcdTimeouts,
    prefix: &str,
    from: Revision,
) -> Result<ec::WatchStream, EtcdError> {
    let object = format!("{prefix} from revision {from}");
    let mut watch_client = client.watch_client();
    let open = async {
        let options = ec::WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = watch_client.watch(prefix, Some(options)).await?;
        // The first answer confirms the watch, or cancels it at once (compacted revision).
        let first = stream.message().await?;
        Ok::<_, ec::Error>((stream, first))
    };
    let (stream, first) = bounded(ENGINE, timeouts.call, open)
        .await
        .map_err(|e| EtcdError::timed_out("watch", &object, e))?
        .map_err(|e| EtcdError::call("watch", &object, e))?;
    match first {
        Some(resp) if resp.compact_revision() > 0 => {
            Err(EtcdError::Compacted { prefix: prefix.to_string(), from, compacted: resp.compact_revision() })
        }
        Some(resp) if resp.canceled() => Err(EtcdError::Call {
            call: "watch",
            object,
            kind: classify(0, resp.cancel_reason()),
            source: Box::new(ClientFailure(format!("etcd cancelled the watch: {}", resp.cancel_reason()))),
        }),
        Some(_) => Ok(stream),
        None => Err(EtcdError::Call {
            call: "watch",
            object,
            kind: EtcdErrorKind::Unavailable,
            source: Box::new(ClientFailure("the stream ended before etcd confirmed the watch".into())),
        }),
    }
}

/// Forwards a watch's events, re-opening it from the next revision when its stream ends.
async fn watch_task(
    client: ec::Client,
    timeouts: EtcdTimeouts,
    prefix: String,
    from: Revision,
    stream: ec::WatchStream,
    tx: mpsc::Sender<Result<WatchBatch, EtcdError>>,
) {
    let mut next = from;
    let mut stream = Some(stream);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut current = match stream.take() {
            Some(s) => s,
            None => match open_watch(&client, timeouts, &prefix, next).await {
                Ok(s) => {
                    backoff = Duration::from_millis(100);
                    s
                }
                Err(e @ EtcdError::Compacted { .. }) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(%prefix, error = %e, "etcd watch could not re-open; retrying");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        loop {
            tokio::select! {
                () = tx.closed() => return,
                msg = current.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            let e = EtcdError::Compacted { prefix: prefix.clone(), from: next, compacted: resp.compact_revision() };
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        if resp.canceled() {
                            break;
                        }
                        let events: Vec<WatchEvent> = resp
                            .events()
                            .iter()
                            .filter_map(|ev| {
                                let kv = ev.kv()?;
                                Some(match ev.event_type() {
                                    ec::EventType::Put => WatchEvent::Put(kv_of(kv)),
                                    ec::EventType::Delete => WatchEvent::Delete {
                                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                                        revision: kv.mod_revision(),
                                    },
                                })
                            })
                            .collect();
                        if events.is_empty() {
                            continue;
                        }
                        if let Some(last) = events.iter().map(WatchEvent::revision).max() {
                            next = next.max(last + 1);
                        }
                        let batch = WatchBatch { revision: revision_of(resp.header()), events };
                        if tx.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
        tracing::debug!(%prefix, next, "etcd watch stream ended; re-opening");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::chain;

    #[test]
    fn grpc_answers_are_classified_by_code_and_message() {
        assert_eq!(classify(14, "etcdserver: no leader"), EtcdErrorKind::NoLeader);
        assert_eq!(classify(14, "tcp connect error: Connection refused (os error 111)"), EtcdErrorKind::Unavailable);
        assert_eq!(classify(4, "context deadline exceeded"), EtcdErrorKind::Timeout);
        assert_eq!(
            classify(14, "http2 error: transport error: keep-alive timed out: operation timed out"),
            EtcdErrorKind::Timeout
        );
        assert_eq!(classify(5, "etcdserver: requested lease not found"), EtcdErrorKind::LeaseNotFound);
        assert_eq!(classify(11, "mvcc: required revision has been compacted"), EtcdErrorKind::Compacted);
        assert_eq!(classify(16, "etcdserver: invalid auth token"), EtcdErrorKind::Denied);
        assert_eq!(
            classify(3, "etcdserver: authentication failed, invalid user ID or password"),
            EtcdErrorKind::Denied
        );
        assert_eq!(classify(9, "etcdserver: duplicate key given in txn request"), EtcdErrorKind::Refused);
    }

    #[test]
    fn an_error_names_etcd_the_call_and_its_object_and_keeps_its_cause() {
        let e = EtcdError::timed_out(
            "put",
            "/tend/c/members/a",
            NoAnswer { engine: ENGINE, waited: Duration::from_secs(5) },
        );
        assert_eq!(chain(&e), "etcd put /tend/c/members/a: etcd did not answer within 5s");
        assert_eq!(e.kind(), "timeout");
        assert!(e.is_unreachable());
        let e = EtcdError::Call {
            call: "get prefix",
            object: "/tend/c/".into(),
            kind: classify(14, "etcdserver: no leader"),
            source: Box::new(EtcdAnswer { code: "Unavailable".into(), message: "etcdserver: no leader".into() }),
        };
        assert_eq!(chain(&e), "etcd get prefix /tend/c/: etcdserver: no leader (gRPC Unavailable)");
        assert_eq!(e.kind(), "no_leader");
        let e = EtcdError::Compacted { prefix: "/tend/c/".into(), from: 5, compacted: 9 };
        assert!(!e.is_unreachable());
        assert_eq!(e.to_string(), "etcd watch /tend/c/ from revision 5: compacted (history starts at revision 9)");
    }

    #[test]
    fn credentials_are_one_line_of_a_regular_file_under_a_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = dir.path().join("user");
        std::fs::write(&user, "tend\n").expect("write");
        assert_eq!(read_credential("the user name file", &user).expect("read"), "tend");
        std::fs::write(&user, "s3cret\r\n").expect("write");
        assert_eq!(read_credential("the password file", &user).expect("read"), "s3cret");

        std::fs::write(&user, "\n").expect("write");
        let e = read_credential("the password file", &user).expect_err("empty");
        assert_eq!(e.kind(), "config");
        assert!(e.to_string().contains("is empty or not UTF-8"), "{e}");

        std::fs::write(&user, vec![b'x'; 5000]).expect("write");
        let e = read_credential("the password file", &user).expect_err("too large");
        assert!(chain(&e).starts_with("etcd: reading the password file: "), "{}", chain(&e));
        assert!(chain(&e).contains("is 5000 bytes"), "{}", chain(&e));

        let e = read_credential("the password file", dir.path()).expect_err("a directory");
        assert!(chain(&e).contains("not a regular file"), "{}", chain(&e));
    }

    #[tokio::test]
    async fn a_configuration_without_endpoints_or_with_unreadable_files_is_refused_before_connecting() {
        let e = EtcdStore::connect(&EtcdConfig::new(Vec::<String>::new())).await.expect_err("no endpoints");
        assert_eq!(e.to_string(), "etcd: no endpoints configured");
        let mut config = EtcdConfig::new(["https://127.0.0.1:1"]);
        config.tls = Some(TlsFiles { ca_file: Some("/nonexistent/ca.pem".into()), cert_file: None, key_file: None });
        let e = EtcdStore::connect(&config).await.expect_err("no CA file");
        assert!(chain(&e).starts_with("etcd: reading the CA file: cannot read `/nonexistent/ca.pem`"), "{}", chain(&e));
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_handle_tells_an_unconfirmed_lease_from_a_gone_one() {
        let lease = Lease { id: LeaseId(0x2a), ttl: Duration::from_secs(3) };
        let (tx, rx) = watch::channel(LeaseState::Alive { until: Instant::now() + lease.ttl });
        let mut keep = KeepAlive::from_channel(lease, rx);
        assert!(matches!(keep.state(), LeaseState::Alive { .. }));
        tx.send(LeaseState::Unconfirmed { since: Instant::now() }).expect("send");
        assert_eq!(keep.lost().await, LeaseLost::NoAnswer);
        tx.send(LeaseState::Alive { until: Instant::now() + lease.ttl }).expect("send");
        assert!(keep.confirmed().await);
        tx.send(LeaseState::Gone).expect("send");
        assert_eq!(keep.lost().await, LeaseLost::Gone);
        assert!(!keep.confirmed().await);
        keep.gone().await;
        assert_eq!(lease.id.to_string(), "2a");
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j < Duration::from_millis(1000), "{j:?}");
        }
    }
}
