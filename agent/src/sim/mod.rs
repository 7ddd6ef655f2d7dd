//! `tend-sim`: many simulated nodes on one real etcd, each running tend's own cluster code —
//! its membership lease and keep-alive, its candidacy in the leader election, the watch of
//! its own assignment prefix and, on the one that leads, the placement of every placed
//! service (`cluster::node`). What a node would run is kept in memory (the slots its view
//! says are its own) instead of a container engine. The nodes are tasks of one process,
//! sharing a few etcd clients; a crashed node is one whose tasks end at once
//! ([`Handle::crash`]): no resignation, its lease runs out.
//!
//! Scenarios (`probe` reads etcd's own counters and the processes' usage):
//! - `steady`: the cluster settles, then nothing happens for `--duration`: etcd writes per
//!   node per second, watch deliveries (view changes) per node, CPU and memory;
//! - `change`: one placed service gets one more replica: how many nodes woke, how many
//!   etcd calls the change caused;
//! - `kill`: 10 % of the nodes (never the leader) crash at once: until their member keys
//!   are gone, until every slot is placed on a survivor and every survivor's view agrees,
//!   and whether a slot was ever assigned twice;
//! - `leader`: the leader crashes: until one other node leads and every node sees it;
//! - `etcd-restart`: etcd's own raft leader is restarted (an election inside etcd): until
//!   everything agrees again, and how many nodes lost their membership (flapped) meanwhile.

pub mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::keys::Keys;
use crate::cluster::leader::Services;
use crate::cluster::metered::{Metered, Recorder};
use crate::cluster::node::{self, Handle, Identity};
use crate::cluster::pacing::Pace;
use crate::cluster::placement::PlacedService;
use crate::engine::etcd::{ClusterStore, EtcdConfig, EtcdError, EtcdStore};

/// The role every simulated node has.
const ROLE: &str = "sim";

/// How long the cluster may take to settle, or a scenario to converge.
const SETTLE: Duration = Duration::from_secs(300);

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// etcd failed.
    #[error("tend-sim")]
    Etcd(#[from] EtcdError),
    /// etcd's `/metrics` could not be read.
    #[error("tend-sim: reading etcd's metrics at {endpoint}/metrics: {why}")]
    Scrape {
        /// The member.
        endpoint: String,
        /// Why.
        why: String,
    },
    /// A process could not be restarted (`etcd-restart`).
    #[error("tend-sim: restarting process {pid}: {why}")]
    Restart {
        /// The process.
        pid: u32,
        /// Why.
        why: String,
    },
    /// No etcd member of this machine serves the raft leader's client URL.
    #[error("tend-sim: no etcd process on this machine serves {url}, etcd's raft leader")]
    NoLocalEtcd {
        /// The leader's client URL.
        url: String,
    },
    /// No simulated node leads.
    #[error("tend-sim: no simulated node leads the cluster")]
    NoLeader,
    /// Something did not happen in time.
    #[error("tend-sim: {what} did not happen within {within:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        within: Duration,
    },
}

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Nothing happens.
    Steady,
    /// One placed service gets one more replica.
    Change,
    /// 10 % of the nodes crash at once.
    Kill,
    /// The leader crashes.
    Leader,
    /// etcd's raft leader is restarted (SIGKILL, 2 s down, started again with its command
    /// line): an election inside etcd.
    EtcdRestart,
}

/// A simulation's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Simulated nodes.
    pub nodes: usize,
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// How long the steady state is measured.
    pub duration: Duration,
    /// What happens.
    pub scenario: Scenario,
    /// Which nodes crash (`kill`), and the cluster's name.
    pub seed: u64,
    /// The nodes' lease TTL.
    pub ttl: Duration,
    /// Nodes per etcd client.
    pub nodes_per_client: usize,
    /// Placed services, each of `replicas` spread slots.
    pub services: usize,
    /// Slots per placed service.
    pub replicas: u32,
    /// Nodes started per second.
    pub join_rate: u32,
}

/// What a simulation measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// The scenario.
    pub scenario: Option<Scenario>,
    /// Simulated nodes.
    pub nodes: usize,
    /// Placed slots.
    pub slots: usize,
    /// Seconds from the first node's start to a settled cluster.
    pub settle_s: f64,
    /// The steady window's length, seconds.
    pub steady_s: f64,
    /// etcd writes (puts, deletes, transactions) in the steady window, per node per second.
    pub writes_per_node_s: f64,
    /// etcd writes in the steady window, in all.
    pub writes: f64,
    /// Raft proposals committed in the steady window, per node per second.
    pub proposals_per_node_s: f64,
    /// gRPC calls etcd served in the steady window, per node per second.
    pub grpc_calls_per_node_s: f64,
    /// Lease renewals etcd granted in the steady window, per node per second (keep-alives:
    /// not writes, no raft entry).
    pub renewals_per_node_s: f64,
    /// Changes of the nodes' views (watch deliveries that woke a node) in the steady
    /// window, per node.
    pub wakeups_per_node: f64,
    /// CPU seconds per second used by the etcd members, in all, in the steady window.
    pub etcd_cpu: Option<f64>,
    /// Resident memory of the etcd members, in all, MiB.
    pub etcd_rss_mib: Option<f64>,
    /// CPU seconds per second of this process, per node, in the steady window.
    pub sim_cpu_per_node: f64,
    /// Resident memory of this process per node, KiB.
    pub sim_rss_kib_per_node: f64,
    /// The scenario's own figures.
    pub event: BTreeMap<String, f64>,
}

/// A simulated node: its part in the cluster and how often its view changed.
struct SimNode {
    handle: Handle,
    wakeups: Arc<AtomicU64>,
    alive: bool,
}

/// Counts the calls of a store by name.
#[derive(Default)]
struct Calls(std::sync::Mutex<BTreeMap<&'static str, u64>>);

impl Recorder for Calls {
    fn duration(&self, call: &'static str, _took: Duration) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(call).or_default() += 1;
    }
    fn error(&self, _call: &'static str, _kind: &'static str) {}
}

impl Calls {
    fn total(&self) -> u64 {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().sum()
    }
}

type Store = Metered<EtcdStore>;

/// A running simulation.
struct Sim {
    settings: Settings,
    keys: Keys,
    stores: Vec<Arc<Store>>,
    calls: Arc<Calls>,
    nodes: Vec<SimNode>,
    services: Services,
    stop: CancellationToken,
}

/// Runs the simulation `settings` describe.
pub async fn run(settings: Settings) -> Result<Figures, SimError> {
    let mut sim = Sim::connect(settings).await?;
    let t0 = Instant::now();
    sim.start_nodes().await;
    sim.settled().await?;
    let mut figures = Figures {
        scenario: Some(sim.settings.scenario),
        nodes: sim.settings.nodes,
        slots: sim.settings.services * sim.settings.replicas as usize,
        settle_s: t0.elapsed().as_secs_f64(),
        ..Figures::default()
    };
    sim.steady(&mut figures).await?;
    match sim.settings.scenario {
        Scenario::Steady => {}
        Scenario::Change => sim.change(&mut figures).await?,
        Scenario::Kill => sim.kill(&mut figures).await?,
        Scenario::Leader => sim.leader(&mut figures).await?,
        Scenario::EtcdRestart => sim.etcd_restart(&mut figures).await?,
    }
    sim.stop.cancel();
    Ok(figures)
}

impl Sim {
    async fn connect(settings: Settings) -> Result<Sim, SimError> {
        let clients = settings.nodes.div_ceil(settings.nodes_per_client.max(1)).max(1);
        let calls = Arc::new(Calls::default());
        let mut config = EtcdConfig::new(settings.endpoints.clone());
        // As the agent does: etcd closes a connection pinged more often than every 5 s
        // while its streams are silent.
        config.timeouts.ping_interval = Duration::from_secs(10);
        let mut stores = Vec::new();
        for _ in 0..clients {
            let store = EtcdStore::connect(&config).await?;
            stores.push(Arc::new(Metered::new(store, calls.clone() as Arc<dyn Recorder>)));
        }
        let keys = Keys::new(&format!("sim-{}-{}", std::process::id(), settings.seed));
        let services = (0..settings.services)
            .map(|i| {
                let placed = PlacedService {
                    name: format!("s{i:04}"),
                    role: ROLE.into(),
                    replicas: settings.replicas,
                    spread: true,
                    fence: None,
                };
                (placed, Pace { interval: Duration::ZERO, scale_down_interval: Duration::ZERO })
            })
            .collect();
        Ok(Sim { settings, keys, stores, calls, nodes: Vec::new(), services, stop: CancellationToken::new() })
    }

    /// The cluster's name (under `/tend/`).
    fn cluster(&self) -> String {
        format!("sim-{}-{}", std::process::id(), self.settings.seed)
    }

    /// Starts the nodes, `join_rate` a second, node 0 first (it leads).
    async fn start_nodes(&mut self) {
        let gap = Duration::from_secs(1) / self.settings.join_rate.max(1);
        for i in 0..self.settings.nodes {
            let identity = Identity {
                cluster: self.cluster(),
                node: format!("n{i:05}"),
                roles: BTreeSet::from([ROLE.to_string()]),
                address: None,
                ttl: self.settings.ttl,
            };
            let store = self.stores[i % self.stores.len()].clone();
            let handle = node::start(store, identity, BTreeMap::new(), false, self.stop.child_token());
            handle.set_services(self.services.clone());
            let wakeups = Arc::new(AtomicU64::new(0));
            spawn_runner(&handle, wakeups.clone(), self.stop.clone());
            self.nodes.push(SimNode { handle, wakeups, alive: true });
            tokio::time::sleep(gap).await;
        }
    }

    /// Waits until every live node is a member and every slot is placed, each node's view
    /// agreeing with etcd.
    async fn settled(&self) -> Result<(), SimError> {
        self.until("the cluster to settle", SETTLE, || self.agrees()).await.map(|_| ())
    }

    /// Polls `check` every 100 ms until it is true; returns how long that took.
    async fn until<F, Fut>(&self, what: &str, within: Duration, mut check: F) -> Result<Duration, SimError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, SimError>>,
    {
        let t0 = Instant::now();
        loop {
            if check().await? {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > within {
                return Err(SimError::Timeout { what: what.to_string(), within });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every live node is a member, every slot placed exactly once on a live node,
    /// and every live node's view says what etcd says of it.
    async fn agrees(&self) -> Result<bool, SimError> {
        let store = &self.stores[0];
        let members = store.get_prefix(&self.keys.members()).await?;
        let live: BTreeSet<String> = self.live().map(|n| n.handle.identity.node.clone()).collect();
        let listed: BTreeSet<String> =
            members.kvs.iter().filter_map(|kv| kv.key.strip_prefix(&self.keys.members())).map(String::from).collect();
        if listed != live {
            return Ok(false);
        }
        let placed = store.get_prefix(&self.keys.assignments()).await?;
        let by_node = by_node(&self.keys, placed.kvs.iter().map(|kv| kv.key.as_str()));
        let slots: usize = by_node.values().flat_map(|m| m.values()).map(BTreeSet::len).sum();
        let want = self.settings.services * (self.settings.replicas as usize).min(live.len());
        if slots != want || by_node.keys().any(|n| !live.contains(n)) {
            return Ok(false);
        }
        let empty = BTreeMap::new();
        Ok(self.live().all(|n| {
            let view = n.handle.view();
            view.connected && &view.mine == by_node.get(&n.handle.identity.node).unwrap_or(&empty)
        }))
    }

    fn live(&self) -> impl Iterator<Item = &SimNode> {
        self.nodes.iter().filter(|n| n.alive)
    }

    fn wakeups(&self) -> u64 {
        self.live().map(|n| n.wakeups.load(Ordering::Relaxed)).sum()
    }

    /// The steady window: nothing happens for `duration`.
    async fn steady(&self, f: &mut Figures) -> Result<(), SimError> {
        let pids = probe::etcd_pids(&self.settings.endpoints);
        let etcd_usage = || pids.values().filter_map(|p| probe::usage(*p)).collect::<Vec<_>>();
        let (before, etcd0, me0, wake0) =
            (self.counters().await?, etcd_usage(), probe::usage(std::process::id()), self.wakeups());
        tokio::time::sleep(self.settings.duration).await;
        let (after, etcd1, me1, wake1) =
            (self.counters().await?, etcd_usage(), probe::usage(std::process::id()), self.wakeups());
        let secs = self.settings.duration.as_secs_f64();
        let n = self.settings.nodes as f64;
        let delta = |name: &str| after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
        f.steady_s = secs;
        f.writes = delta("etcd_mvcc_put_total") + delta("etcd_mvcc_delete_total") + delta("etcd_mvcc_txn_total");
        f.writes_per_node_s = f.writes / n / secs;
        f.proposals_per_node_s = delta("etcd_server_proposals_committed_total") / n / secs;
        f.grpc_calls_per_node_s = delta("grpc_server_handled_total") / n / secs;
        f.renewals_per_node_s = delta("etcd_debugging_lease_renewed_total") / n / secs;
        f.wakeups_per_node = (wake1 - wake0) as f64 / n;
        if etcd0.len() == self.settings.endpoints.len() && etcd1.len() == etcd0.len() {
            let cpu: f64 = etcd1.iter().zip(&etcd0).map(|(b, a)| b.cpu_s - a.cpu_s).sum();
            f.etcd_cpu = Some(cpu / secs);
            f.etcd_rss_mib = Some(etcd1.iter().map(|u| u.rss as f64).sum::<f64>() / (1 << 20) as f64);
        }
        if let (Some(a), Some(b)) = (me0, me1) {
            f.sim_cpu_per_node = (b.cpu_s - a.cpu_s) / secs / n;
            f.sim_rss_kib_per_node = b.rss as f64 / 1024.0 / n;
        }
        Ok(())
    }

    /// etcd's counters: the writes as the first member applied them (every member applies
    /// each), the calls served and the renewals granted summed over the members (each
    /// serves its own clients; the leader renews).
    async fn counters(&self) -> Result<BTreeMap<String, f64>, SimError> {
        let mut out = BTreeMap::new();
        for (i, endpoint) in self.settings.endpoints.iter().enumerate() {
            for (name, v) in probe::counters(endpoint).await? {
                let summed =
                    matches!(name.as_str(), "grpc_server_handled_total" | "etcd_debugging_lease_renewed_total");
                if i == 0 || summed {
                    *out.entry(name).or_insert(0.0) += v;
                }
            }
        }
        Ok(out)
    }

    /// One placed service gets one more replica: the nodes woken, the calls made, in 5 s.
    async fn change(&mut self, f: &mut Figures) -> Result<(), SimError> {
        let before: Vec<u64> = self.nodes.iter().map(|n| n.wakeups.load(Ordering::Relaxed)).collect();
        let calls = self.calls.total();
        self.services[0].0.replicas += 1;
        for n in self.live() {
            n.handle.set_services(self.services.clone());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let woke = self.nodes.iter().zip(&before).filter(|(n, b)| n.wakeups.load(Ordering::Relaxed) > **b).count();
        f.event.insert("nodes_woken".into(), woke as f64);
        f.event.insert("nodes_affected".into(), 1.0);
        f.event.insert("etcd_calls".into(), (self.calls.total() - calls) as f64);
        Ok(())
    }

    /// 10 % of the nodes (never the leader) crash at once.
    async fn kill(&mut self, f: &mut Figures) -> Result<(), SimError> {
        let count = (self.settings.nodes / 10).max(1);
        let mut rng = self.settings.seed.max(1);
        let mut chosen = BTreeSet::new();
        while chosen.len() < count.min(self.settings.nodes.saturating_sub(1)) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % self.settings.nodes as u64) as usize;
            if !self.nodes[i].handle.view().is_leader {
                chosen.insert(i);
            }
        }
        let dead: BTreeSet<String> = chosen.iter().map(|i| self.nodes[*i].handle.identity.node.clone()).collect();
        for i in &chosen {
            self.nodes[*i].handle.crash();
            self.nodes[*i].alive = false;
        }
        let t0 = Instant::now();
        let twice = Arc::new(AtomicU64::new(0));
        let gone = self
            .until("the crashed nodes' member keys to go", SETTLE, || async {
                let members = self.stores[0].get_prefix(&self.keys.members()).await?;
                let placed = self.stores[0].get_prefix(&self.keys.assignments()).await?;
                twice.fetch_add(doubled(&self.keys, placed.kvs.iter().map(|kv| kv.key.as_str())), Ordering::Relaxed);
                Ok(!members
                    .kvs
                    .iter()
                    .any(|kv| kv.key.strip_prefix(&self.keys.members()).is_some_and(|n| dead.contains(n))))
            })
            .await?;
        self.until("the survivors to agree", SETTLE, || async {
            let placed = self.stores[0].get_prefix(&self.keys.assignments()).await?;
            twice.fetch_add(doubled(&self.keys, placed.kvs.iter().map(|kv| kv.key.as_str())), Ordering::Relaxed);
            self.agrees().await
        })
        .await?;
        f.event.insert("killed".into(), count as f64);
        f.event.insert("dead_seen_s".into(), gone.as_secs_f64());
        f.event.insert("agreed_s".into(), t0.elapsed().as_secs_f64());
        f.event.insert("slots_assigned_twice".into(), twice.load(Ordering::Relaxed) as f64);
        Ok(())
    }

    /// The leader crashes: until another node leads and every live node sees it.
    async fn leader(&mut self, f: &mut Figures) -> Result<(), SimError> {
        let Some(i) = self.nodes.iter().position(|n| n.alive && n.handle.view().is_leader) else {
            return Err(SimError::NoLeader);
        };
        let old = self.nodes[i].handle.identity.node.clone();
        self.nodes[i].handle.crash();
        self.nodes[i].alive = false;
        let last = std::sync::Mutex::new(String::new());
        let took = self
            .until("another leader seen by every node", SETTLE, || async {
                let leaders = self.live().filter(|n| n.handle.view().is_leader).count();
                let mut seen: BTreeMap<Option<String>, usize> = BTreeMap::new();
                for n in self.live() {
                    *seen.entry(n.handle.view().leader).or_default() += 1;
                }
                *last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    format!("{leaders} node(s) lead; the nodes see as leader: {seen:?}");
                Ok(leaders == 1 && seen.len() == 1 && seen.keys().all(|l| l.as_ref().is_some_and(|l| *l != old)))
            })
            .await;
        let took = took.map_err(|e| match e {
            SimError::Timeout { what, within } => {
                let state = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                SimError::Timeout { what: format!("{what} ({state})"), within }
            }
            e => e,
        })?;
        f.event.insert("failover_s".into(), took.as_secs_f64());
        Ok(())
    }
}

impl Sim {
    /// etcd's raft leader restarted: how long until everything agrees again, and how many
    /// nodes' member keys were made anew (each a flap: a lease lost).
    async fn etcd_restart(&mut self, f: &mut Figures) -> Result<(), SimError> {
        let status = self.stores[0].status().await?;
        let leader = status.members.iter().find(|m| m.id == status.leader_id);
        let url = leader.and_then(|m| m.client_urls.first()).cloned().unwrap_or_default();
        let pids = probe::etcd_pids(std::slice::from_ref(&url));
        let Some(pid) = pids.get(&url).copied() else {
            return Err(SimError::NoLocalEtcd { url });
        };
        let before = self.member_revisions().await?;
        let t0 = Instant::now();
        probe::restart(pid, Duration::from_secs(2)).await?;
        let took = self.until("everything to agree after etcd's restart", SETTLE, || self.agrees()).await?;
        let after = self.member_revisions().await?;
        let flapped = before.iter().filter(|(node, rev)| after.get(*node) != Some(*rev)).count();
        f.event.insert("etcd_down_s".into(), 2.0);
        f.event.insert("agreed_s".into(), t0.elapsed().as_secs_f64());
        f.event.insert("agreed_after_start_s".into(), took.as_secs_f64());
        f.event.insert("members_flapped".into(), flapped as f64);
        Ok(())
    }

    /// Each member key's creation revision: a new one means the node joined again.
    async fn member_revisions(&self) -> Result<BTreeMap<String, i64>, SimError> {
        let members = self.stores[0].get_prefix(&self.keys.members()).await?;
        Ok(members
            .kvs
            .iter()
            .filter_map(|kv| Some((kv.key.strip_prefix(&self.keys.members())?.to_string(), kv.create_revision)))
            .collect())
    }
}

/// Counts a node's view changes: the stand-in of its agent, which would pass on each.
fn spawn_runner(handle: &Handle, wakeups: Arc<AtomicU64>, stop: CancellationToken) {
    let mut view = handle.subscribe();
    tokio::spawn(async move {
        let mut mine = view.borrow_and_update().mine.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
            }
            let now = view.borrow_and_update().mine.clone();
            if now != mine {
                mine = now;
                wakeups.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// The slots under `assign/` by node: node → service → slots.
fn by_node<'a>(
    keys: &Keys,
    listed: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, BTreeMap<String, BTreeSet<u32>>> {
    let prefix = keys.assignments();
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<u32>>> = BTreeMap::new();
    for key in listed {
        let parts: Vec<&str> = key.strip_prefix(&prefix).unwrap_or_default().split('/').collect();
        if let [node, service, slot] = parts[..]
            && let Ok(slot) = slot.parse()
        {
            out.entry(node.into()).or_default().entry(service.into()).or_default().insert(slot);
        }
    }
    out
}

/// How many (service, slot) pairs are assigned to more than one node in `listed`.
fn doubled<'a>(keys: &Keys, listed: impl Iterator<Item = &'a str>) -> u64 {
    let mut seen: BTreeMap<(String, u32), u32> = BTreeMap::new();
    for (_, services) in by_node(keys, listed) {
        for (service, slots) in services {
            for slot in slots {
                *seen.entry((service.clone(), slot)).or_default() += 1;
            }
        }
    }
    seen.values().filter(|n| **n > 1).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_under_two_nodes_counts_as_assigned_twice() {
        let keys = Keys::new("c");
        let listed = ["/tend/c/assign/a/s/1", "/tend/c/assign/b/s/1", "/tend/c/assign/b/s/2", "/tend/c/assign/a/t/1"];
        assert_eq!(doubled(&keys, listed.into_iter()), 1);
        let nodes = by_node(&keys, listed.into_iter());
        assert_eq!(nodes["b"]["s"], BTreeSet::from([1, 2]));
    }
}
