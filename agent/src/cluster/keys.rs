//! Where the cluster keeps what it knows in etcd, and the records stored there (JSON).
//!
//! Under `/tend/<cluster>/`:
//! - `members/<node>`: a [`MemberRecord`], under the node's lease (gone when the node is);
//! - `leader`: etcd's election for the cluster's leader (the candidates' keys live under
//!   it, each under its node's lease; the value is the node's name);
//! - `assign/<node>/<service>/<slot>`: the slots the leader placed on a node — one prefix
//!   per node, so a change wakes only the node it concerns. Not under a lease: the
//!   placement outlives a leader; a new leader reads it and goes on from it;
//! - `budget/<service>/<k>`: slot `k` of a service's disruption budget, held by a
//!   maintenance window under its lease, or by a drain under its node's (`budget`);
//! - `unready/<service>/<node>`: how many instances of a placed service the node runs are
//!   not ready (not running, or failing their health check), under the node's lease,
//!   written only when it changes and absent when none is (`turns`);
//! - `runs/<timer>`: the run of a `runOn: leader` Timer in progress, under that run's own
//!   lease (`runonce`): a [`RunHolder`](crate::cluster::runonce::RunHolder);
//! - `history/<timer>/<run>@<node>`: the last runs of such a Timer, one JSON record each,
//!   the newest [`KEEP_CLUSTER_RUNS`](crate::cluster::runonce::KEEP_CLUSTER_RUNS) kept. Run
//!   IDs start with their start time, so the keys sort by start.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::cluster::placement::Assignments;

/// A member's record, as its agent writes it under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    /// The node's name.
    pub node: String,
    /// Its roles.
    pub roles: BTreeSet<String>,
    /// Its address (`cluster.address`), if given.
    pub address: Option<String>,
    /// The tend version its agent runs.
    pub version: String,
    /// When its agent joined (ms since the epoch).
    pub started_ms: u64,
    /// Drained (`tend drain`): it takes no new slot, and its slots move.
    pub drained: bool,
}

/// The key layout of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// The keys of cluster `name`.
    pub fn new(name: &str) -> Self {
        Self { root: format!("/tend/{name}/") }
    }

    /// Every member's record.
    pub fn members(&self) -> String {
        format!("{}members/", self.root)
    }

    /// `node`'s record.
    pub fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.root)
    }

    /// The leader election.
    pub fn election(&self) -> String {
        format!("{}leader", self.root)
    }

    /// The disruption budgets of every service.
    pub fn budgets(&self) -> String {
        format!("{}budget/", self.root)
    }

    /// The disruption budget's slots of `service`.
    pub fn budget(&self, service: &str) -> String {
        format!("{}budget/{service}/", self.root)
    }

    /// The nodes' counts of instances of `service` placed on them that are not ready.
    pub fn unready(&self, service: &str) -> String {
        format!("{}unready/{service}/", self.root)
    }

    /// Every node's assignments.
    pub fn assignments(&self) -> String {
        format!("{}assign/", self.root)
    }

    /// `node`'s assignments.
    pub fn node_assignments(&self, node: &str) -> String {
        format!("{}assign/{node}/", self.root)
    }

    /// The key of one assigned slot.
    pub fn slot(&self, node: &str, service: &str, slot: u32) -> String {
        format!("{}assign/{node}/{service}/{slot}", self.root)
    }

    /// The run key of `timer`: held by its run in progress.
    pub fn run(&self, timer: &str) -> String {
        format!("{}runs/{timer}", self.root)
    }

    /// The cluster's history of `timer`.
    pub fn history(&self, timer: &str) -> String {
        format!("{}history/{timer}/", self.root)
    }

    /// The history entry of run `run` of `timer` on `node`.
    pub fn history_entry(&self, timer: &str, run: &str, node: &str) -> String {
        format!("{}history/{timer}/{run}@{node}", self.root)
    }

    /// The (node, service, slot) a key under [`Keys::assignments`] names.
    pub fn parse_slot<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str, u32)> {
        let rest = key.strip_prefix(&self.assignments())?;
        let mut parts = rest.split('/');
        let (node, service, slot) = (parts.next()?, parts.next()?, parts.next()?.parse().ok()?);
        parts.next().is_none().then_some((node, service, slot))
    }

    /// The assignments a listing of [`Keys::assignments`] (or of one node's) holds.
    pub fn read_assignments<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Assignments {
        let mut out = Assignments::new();
        for (node, service, slot) in keys.into_iter().filter_map(|k| self.parse_slot(k)) {
            out.entry(service.to_string()).or_default().insert(slot, node.to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_round_trip_and_foreign_keys_are_ignored() {
        let k = Keys::new("prod");
        assert_eq!(k.slot("a", "judicator", 2), "/tend/prod/assign/a/judicator/2");
        assert_eq!(k.parse_slot("/tend/prod/assign/a/judicator/2"), Some(("a", "judicator", 2)));
        assert_eq!(k.parse_slot("/tend/prod/assign/a/judicator/x"), None);
        assert_eq!(k.parse_slot("/tend/prod/assign/a/judicator/2/extra"), None);
        assert_eq!(k.parse_slot("/tend/other/assign/a/judicator/2"), None);
        let read = k.read_assignments(["/tend/prod/assign/a/j/1", "/tend/prod/assign/b/j/2", "/tend/prod/members/a"]);
        assert_eq!(read["j"], [(1, "a".to_string()), (2, "b".to_string())].into_iter().collect());
    }

    #[test]
    fn run_and_history_keys_live_under_the_cluster_and_the_timer() {
        let k = Keys::new("prod");
        assert_eq!(k.run("nightly"), "/tend/prod/runs/nightly");
        assert_eq!(k.history("nightly"), "/tend/prod/history/nightly/");
        let entry = k.history_entry("nightly", "20261122-031500-042-77", "vm-a");
        assert_eq!(entry, "/tend/prod/history/nightly/20261122-031500-042-77@vm-a");
        assert!(entry.starts_with(&k.history("nightly")));
        assert!(!k.history("nightly").starts_with(&k.history("night")), "one Timer's prefix holds no other's");
    }
}
