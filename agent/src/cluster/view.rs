//! What a node knows of its cluster ([`View`]), as its part (`node`) and the leader's
//! (`leader`) keep it and the agent reads it; and who the node is ([`Identity`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What the agent knows of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// This node's lease is alive and etcd answers.
    pub connected: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// Since when this node's lease may have run out (it could not be renewed), while it is
    /// cut off: after a placed service's `lostLeaseGrace`, its `onLostLease: stop`
    /// instances stop.
    pub disconnected_since: Option<tokio::time::Instant>,
    /// The leader's node name, as last seen.
    pub leader: Option<String>,
    /// The leader's term: the create revision of its election key.
    pub term: Option<i64>,
    /// This node leads.
    pub is_leader: bool,
    /// How many times the leader changed since this agent started.
    pub leader_changes: u64,
    /// The slots placed on this node, by service (kept while etcd is unreachable).
    pub mine: BTreeMap<String, BTreeSet<u32>>,
    /// The slots the leader could not place, by service (this node's view while it leads).
    pub unplaced: BTreeMap<String, Vec<u32>>,
}

/// Who this node is in which cluster.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The cluster's name.
    pub cluster: String,
    /// This node's name.
    pub node: String,
    /// Its roles.
    pub roles: BTreeSet<String>,
    /// Its address, if configured.
    pub address: Option<String>,
    /// The TTL of its lease.
    pub ttl: Duration,
}
