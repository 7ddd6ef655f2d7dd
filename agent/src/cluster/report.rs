//! What `tend cluster members` and `tend cluster status` show: read from etcd by a node's
//! agent ([`members`], [`status`]) and served as the JSON of its `/v1/cluster/*`
//! endpoints, which the CLI renders. Every read is bounded by a deadline as a whole, so the
//! agent answers within it also while etcd does not: then `status` says etcd is unreachable
//! and shows this node's last view, and `members` fails saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::keys::{Keys, MemberRecord};
use crate::cluster::leader::Services;
use crate::cluster::node::Handle;
use crate::cluster::placement::Assignments;
use crate::engine::etcd::{EtcdError, EtcdStatus, KeyValue, LeaseTimeLeft, Listing};

/// How long the reads of one answer may take together: an operator's command waits no
/// longer than this for etcd (each call has its own, longer, timeout too).
pub const READ_DEADLINE: Duration = Duration::from_secs(3);

/// Why the cluster could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A call failed.
    #[error("etcd is unreachable or refused a read")]
    Etcd(#[source] EtcdError),
    /// The reads did not finish in time.
    #[error("etcd is unreachable: it did not answer within {}s", .0.as_secs())]
    Deadline(Duration),
}

/// A member as `tend cluster members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberEntry {
    /// Its node name.
    pub node: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// `live`, or `drained` (it takes no new slot).
    pub state: MemberState,
    /// How long its lease has left unless renewed (whole seconds, as etcd counts); `None`
    /// when etcd no longer has it (the member is leaving).
    pub lease_time_left_ms: Option<u64>,
    /// When its lease was last renewed (ms since the epoch): now minus the part of the TTL
    /// used up, to the second.
    pub last_seen_ms: Option<u64>,
    /// When its agent joined (ms since the epoch).
    pub started_ms: u64,
    /// The tend version its agent runs.
    pub version: String,
    /// Its address (`cluster.address`), if given.
    pub address: Option<String>,
}

/// A member's state in `tend cluster members`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Its lease is alive: it keeps its slots and takes new ones.
    Live,
    /// Drained (`tend drain`): it takes no new slot, and its slots move.
    Drained,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Live => "live",
            Self::Drained => "drained",
        })
    }
}

/// The cluster as `tend cluster status` shows it, from one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The cluster's name.
    pub cluster: String,
    /// This node's name.
    pub node: String,
    /// The leader's node name: read now when etcd answers, else as last seen.
    pub leader: Option<String>,
    /// The leader's term: the create revision of its election key.
    pub term: Option<i64>,
    /// This node leads.
    pub is_leader: bool,
    /// How many times the leader changed since this agent started.
    pub leader_changes: u64,
    /// This node's lease is alive and etcd answers.
    pub connected: bool,
    /// Why this node is not connected, when it is not.
    pub error: Option<String>,
    /// etcd as this node sees it.
    pub etcd: EtcdView,
    /// The slots placed on this node, by service (kept while etcd is unreachable).
    pub slots: BTreeMap<String, BTreeSet<u32>>,
    /// Every placement: service → slot → node. `None` while etcd cannot be read.
    pub placements: Option<Assignments>,
    /// The slots of the placed services of this node's spec set that no node holds, by
    /// service. `None` while etcd cannot be read.
    pub unplaced: Option<BTreeMap<String, Vec<u32>>>,
}

/// etcd as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdView {
    /// The endpoints this node is configured with.
    pub endpoints: Vec<String>,
    /// etcd answered a linearizable read just now (it has a quorum).
    pub healthy: bool,
    /// The store's revision.
    pub revision: Option<i64>,
    /// The raft leader's member name (its id in hex when it has no name yet).
    pub raft_leader: Option<String>,
    /// The raft term.
    pub raft_term: Option<u64>,
    /// The etcd version of the member that answered.
    pub version: Option<String>,
    /// The etcd members' names.
    #[serde(default)]
    pub members: Vec<String>,
    /// Why etcd could not be read, when it could not.
    pub error: Option<String>,
}

/// Runs `f` under `deadline`.
async fn bounded<T>(
    deadline: Duration,
    f: impl std::future::Future<Output = Result<T, EtcdError>>,
) -> Result<T, ReadError> {
    tokio::time::timeout(deadline, f).await.map_err(|_| ReadError::Deadline(deadline))?.map_err(ReadError::Etcd)
}

/// Every member of `handle`'s cluster, with its lease's time left, read within `deadline`.
pub async fn members(handle: &Handle, deadline: Duration) -> Result<Vec<MemberEntry>, ReadError> {
    let keys = Keys::new(&handle.identity.cluster);
    let store = handle.store();
    let read = async {
        let listing = store.get_prefix(&keys.members()).await?;
        let leases = listing.kvs.iter().map(|kv| async move {
            match kv.lease {
                Some(lease) => store.lease_time_left(lease).await,
                None => Ok(None),
            }
        });
        let left = futures::future::try_join_all(leases).await?;
        Ok((listing, left))
    };
    let (listing, left) = bounded(deadline, read).await?;
    Ok(member_entries(&listing, &left, crate::support::now_ms()))
}

/// The members a listing of the members' prefix holds, with their leases' time left
/// (`left[i]` for `listing.kvs[i]`) as of `now_ms`. A key that is not a member record is
/// left out.
pub fn member_entries(listing: &Listing, left: &[Option<LeaseTimeLeft>], now_ms: u64) -> Vec<MemberEntry> {
    let mut out: Vec<MemberEntry> = listing
        .kvs
        .iter()
        .zip(left.iter().copied().chain(std::iter::repeat(None)))
        .filter_map(|(kv, ttl)| {
            let record: MemberRecord = serde_json::from_slice(&kv.value).ok()?;
            let used = ttl.map(|t| t.granted.saturating_sub(t.left));
            Some(MemberEntry {
                node: record.node,
                roles: record.roles.into_iter().collect(),
                state: if record.drained { MemberState::Drained } else { MemberState::Live },
                lease_time_left_ms: ttl.map(|t| duration_ms(t.left)),
                last_seen_ms: used.map(|u| now_ms.saturating_sub(duration_ms(u))),
                started_ms: record.started_ms,
                version: record.version,
                address: record.address,
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The cluster as this node sees it: etcd, the leader and every placement read within
/// `deadline`; when they cannot be, this node's last view, saying why.
pub async fn status(handle: &Handle, endpoints: &[String], deadline: Duration) -> ClusterStatus {
    let keys = Keys::new(&handle.identity.cluster);
    let store = handle.store();
    let election = keys.election();
    let assignments = keys.assignments();
    let read = async { futures::try_join!(store.status(), store.get_prefix(&assignments), store.leader(&election)) };
    let fresh = bounded(deadline, read).await;
    let view = handle.view();
    let mut out = ClusterStatus {
        cluster: handle.identity.cluster.clone(),
        node: handle.identity.node.clone(),
        leader: view.leader.clone(),
        term: view.term,
        is_leader: view.is_leader,
        leader_changes: view.leader_changes,
        connected: view.connected,
        error: view.error.clone(),
        etcd: EtcdView {
            endpoints: endpoints.to_vec(),
            healthy: false,
            revision: None,
            raft_leader: None,
            raft_term: None,
            version: None,
            members: Vec::new(),
            error: None,
        },
        slots: view.mine.clone(),
        placements: None,
        unplaced: None,
    };
    match fresh {
        Ok((etcd, listing, leader)) => {
            out.etcd = etcd_view(endpoints, &etcd);
            let placements = keys.read_assignments(listing.kvs.iter().map(|kv| kv.key.as_str()));
            out.unplaced = Some(unplaced(&handle.services(), &placements));
            out.placements = Some(placements);
            (out.leader, out.term) = leader_of(leader.as_ref());
        }
        Err(e) => out.etcd.error = Some(crate::support::chain(&e)),
    }
    out
}

/// etcd's status as a node's view.
fn etcd_view(endpoints: &[String], s: &EtcdStatus) -> EtcdView {
    EtcdView {
        endpoints: endpoints.to_vec(),
        healthy: true,
        revision: Some(s.revision),
        raft_leader: (s.leader_id != 0)
            .then(|| s.leader_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| format!("{:x}", s.leader_id))),
        raft_term: Some(s.raft_term),
        version: Some(s.version.clone()),
        members: s
            .members
            .iter()
            .map(|m| if m.name.is_empty() { format!("{:x}", m.id) } else { m.name.clone() })
            .collect(),
        error: None,
    }
}

/// The leader's name and term from its election key.
fn leader_of(kv: Option<&KeyValue>) -> (Option<String>, Option<i64>) {
    match kv {
        Some(kv) => (Some(String::from_utf8_lossy(&kv.value).into_owned()), Some(kv.create_revision)),
        None => (None, None),
    }
}

/// The slots of `services` that no node holds in `placements`, by service.
pub fn unplaced(services: &Services, placements: &Assignments) -> BTreeMap<String, Vec<u32>> {
    services
        .iter()
        .filter_map(|(s, _)| {
            let held = placements.get(&s.name);
            let free: Vec<u32> = (1..=s.replicas).filter(|k| !held.is_some_and(|h| h.contains_key(k))).collect();
            (!free.is_empty()).then(|| (s.name.clone(), free))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::pacing::Pace;
    use crate::cluster::placement::PlacedService;
    use crate::engine::etcd::LeaseId;

    fn kv(key: &str, value: &[u8], lease: Option<i64>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.to_vec(),
            create_revision: 5,
            mod_revision: 5,
            version: 1,
            lease: lease.map(LeaseId),
        }
    }

    fn record(node: &str, drained: bool) -> Vec<u8> {
        let r = MemberRecord {
            node: node.into(),
            roles: ["judicator".to_string()].into(),
            address: Some("10.0.0.1".into()),
            version: "0.1.0".into(),
            started_ms: 1_000,
            drained,
        };
        serde_json::to_vec(&r).expect("json")
    }

    #[test]
    fn members_are_listed_by_name_with_their_lease_and_foreign_keys_are_left_out() {
        let listing = Listing {
            revision: 9,
            kvs: vec![
                kv("/tend/c/members/b", &record("b", true), Some(2)),
                kv("/tend/c/members/a", &record("a", false), Some(1)),
                kv("/tend/c/members/junk", b"not json", None),
            ],
        };
        let ttl = |left, granted| {
            Some(LeaseTimeLeft { left: Duration::from_secs(left), granted: Duration::from_secs(granted) })
        };
        let entries = member_entries(&listing, &[ttl(4, 10), ttl(9, 10), None], 100_000);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].node, "a");
        assert_eq!(entries[0].state, MemberState::Live);
        assert_eq!(entries[0].lease_time_left_ms, Some(9_000));
        assert_eq!(entries[0].last_seen_ms, Some(99_000), "renewed one second ago");
        assert_eq!(entries[1].node, "b");
        assert_eq!(entries[1].state, MemberState::Drained);
        assert_eq!(entries[1].lease_time_left_ms, Some(4_000));
        assert_eq!(entries[1].last_seen_ms, Some(94_000));
        let json = serde_json::to_value(&entries[1]).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "node": "b", "roles": ["judicator"], "state": "drained", "leaseTimeLeftMs": 4000,
                "lastSeenMs": 94000, "startedMs": 1000, "version": "0.1.0", "address": "10.0.0.1"
            })
        );
    }

    #[test]
    fn a_member_whose_lease_etcd_no_longer_has_shows_no_time_left() {
        let listing = Listing { revision: 9, kvs: vec![kv("/tend/c/members/a", &record("a", false), Some(1))] };
        let entries = member_entries(&listing, &[None], 100_000);
        assert_eq!(entries[0].lease_time_left_ms, None);
        assert_eq!(entries[0].last_seen_ms, None);
    }

    #[test]
    fn unplaced_slots_are_those_of_the_spec_set_no_node_holds() {
        let service = |name: &str, replicas| {
            let placed = PlacedService { name: name.into(), role: "r".into(), replicas, spread: true, fence: None };
            (placed, Pace { interval: Duration::ZERO, scale_down_interval: Duration::ZERO })
        };
        let services: Services = vec![service("etcd", 3), service("mongo", 1), service("web", 2)];
        let mut placements = Assignments::new();
        placements.entry("etcd".into()).or_default().insert(1, "a".into());
        placements.entry("etcd".into()).or_default().insert(3, "b".into());
        placements.entry("mongo".into()).or_default().insert(1, "a".into());
        let got = unplaced(&services, &placements);
        assert_eq!(got, [("etcd".to_string(), vec![2]), ("web".to_string(), vec![1, 2])].into_iter().collect());
    }

    #[test]
    fn a_status_round_trips_through_json_with_the_leader_by_name() {
        let status = ClusterStatus {
            cluster: "c".into(),
            node: "a".into(),
            leader: Some("b".into()),
            term: Some(42),
            is_leader: false,
            leader_changes: 1,
            connected: true,
            error: None,
            etcd: etcd_view(
                &["http://127.0.0.1:2379".into()],
                &EtcdStatus {
                    member_id: 1,
                    leader_id: 0xab,
                    leader_name: None,
                    raft_term: 3,
                    revision: 77,
                    version: "3.4.23".into(),
                    members: vec![],
                },
            ),
            slots: [("etcd".to_string(), [2].into())].into(),
            placements: Some([("etcd".to_string(), [(2, "a".to_string())].into())].into()),
            unplaced: Some(BTreeMap::new()),
        };
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["leader"], "b");
        assert_eq!(json["isLeader"], false);
        assert_eq!(json["etcd"]["raftLeader"], "ab");
        assert_eq!(json["placements"]["etcd"]["2"], "a");
        let back: ClusterStatus = serde_json::from_value(json).expect("back");
        assert_eq!(back, status);
    }
}
