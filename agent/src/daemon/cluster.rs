//! The agent in a cluster: it starts this node's part ([`crate::cluster::node`]) when its
//! configuration has a `cluster:` block, wakes the loop when the slots placed here or the
//! leadership change, and before each pass makes the spec set this node's: the placed
//! services' slots assigned here, and the Timers with `runOn: leader` only while it leads.
//! Without the block nothing of this runs (a node is a cluster of one). It also keeps the
//! cluster's metrics on the view and measures every etcd call (`cluster::metered`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tend_specs::service::OnLostLease;
use tend_specs::timer::RunOn;
use tend_specs::{Desired, Service};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cluster::budget;
use crate::cluster::leader::Services;
use crate::cluster::metered::{Metered, Recorder};
use crate::cluster::node::{self, Handle, Identity, View};
use crate::cluster::pacing::Pace;
use crate::cluster::placement::PlacedService;
use crate::cluster::turns::Turns;
use crate::daemon::metrics::ClusterMetrics;
use crate::daemon::shared::Wake;
use crate::engine::etcd::{EtcdConfig, EtcdError, EtcdStore};
use crate::reconcile::apply::Report;
use crate::reconcile::model::{Container, Health, Observed, RunState};
use crate::reconcile::plan::{Note, Plan};
use crate::reconcile::status::ClusterSummary;

/// The call timeout of the reads of `tend cluster members` and `tend cluster status`: under
/// their deadline as a whole ([`crate::cluster::report::READ_DEADLINE`]).
const READ_CALL: std::time::Duration = std::time::Duration::from_secs(2);

/// What the agent needs to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node in its cluster.
    pub identity: Identity,
    /// How to reach etcd.
    pub etcd: EtcdConfig,
}

/// How often the agent's etcd client pings a connection, at least. etcd closes (GOAWAY
/// `too_many_pings`) a connection pinged more often than its `--grpc-keepalive-min-time`
/// (5 s by default) while the connection's streams send nothing — and a non-leader's
/// `campaign` is such a stream: it waits, silent, until the node is elected. With the
/// adapter's 2 s pings every non-leader lost its session (its campaign cut, its lease
/// dropped, its member key and candidacy written again) about every 10 s.
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the agent keeps the slots last placed on this node, in its state directory.
const SLOTS_FILE: &str = "cluster-slots.json";

/// The slots placed on this node, by service, as etcd last said.
type Slots = BTreeMap<String, BTreeSet<u32>>;

/// Connects to etcd (lazily: a member down now is tried later) and starts this node's part,
/// which runs until `stop`; every etcd call it makes is measured into `metrics`. Until etcd answers, the node runs the slots it last knew were
/// its own (kept in `state_dir`): an agent restarted while etcd is out of reach stops
/// nothing, and one restarted while etcd answers has them before its first pass, however
/// the first read and the first pass race.
pub(super) async fn start(
    settings: &ClusterSettings,
    metrics: &ClusterMetrics,
    state_dir: &Path,
    wake: mpsc::Sender<Wake>,
    stop: &CancellationToken,
) -> Result<Handle, EtcdError> {
    let mut etcd = settings.etcd.clone();
    etcd.timeouts.ping_interval = etcd.timeouts.ping_interval.max(PING_INTERVAL);
    let etcd = EtcdStore::connect(&etcd).await?;
    let recorder: Arc<dyn Recorder> = Arc::new(metrics.clone());
    // `tend cluster` reads give up sooner than the node's own calls: each call within
    // READ_CALL, so a call to an etcd that does not answer ends (and is counted) before the
    // answer's deadline.
    let reads = Arc::new(Metered::new(etcd.with_call_timeout(READ_CALL), recorder.clone()));
    let store = Arc::new(Metered::new(etcd, recorder));
    let path = state_dir.join(SLOTS_FILE);
    let last = read_slots(&path);
    // Drained or not from the start: the member record says so as it is written, and the
    // drain's budget slots are kept rather than given back.
    let drained = crate::reconcile::state::read_state(state_dir).is_ok_and(|s| s.drain.is_some());
    let handle = node::start(store.clone(), settings.identity.clone(), last.clone(), drained, stop.child_token());
    let wake: Box<dyn Fn() + Send + Sync> = Box::new(move || {
        let _ = wake.try_send(Wake::Cluster);
    });
    let turns = Turns::new(store, handle.identity.clone(), wake, stop.child_token());
    let handle = handle.with_reads(reads).with_turns(Arc::new(turns));
    spawn_keep_slots(&handle, path, last, stop.clone());
    Ok(handle)
}

/// The slots kept in `path`; none when there is no such file (a node's first start) or it
/// cannot be read (said in the log).
fn read_slots(path: &Path) -> Slots {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "the slots last placed on this node cannot be read; starting with none");
            Slots::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Slots::new(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "the slots last placed on this node cannot be read; starting with none");
            Slots::new()
        }
    }
}

/// Writes the slots placed on this node to `path` (atomically) whenever etcd changes them.
fn spawn_keep_slots(handle: &Handle, path: PathBuf, mut kept: Slots, stop: CancellationToken) {
    let mut view = handle.subscribe();
    tokio::spawn(async move {
        loop {
            let mine = view.borrow_and_update().mine.clone();
            if mine != kept {
                let tmp = path.with_extension("json.tmp");
                let bytes = serde_json::to_vec(&mine).unwrap_or_default();
                let written = async {
                    tokio::fs::write(&tmp, &bytes).await?;
                    tokio::fs::rename(&tmp, &path).await
                };
                match written.await {
                    Ok(()) => kept = mine,
                    Err(e) => warn!(path = %path.display(), error = %e, "keeping the slots placed on this node"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
            }
        }
    });
}

/// Keeps the cluster's metrics (leader, connected, leader changes) on the node's view.
pub(super) fn spawn_metrics(handle: &Handle, metrics: ClusterMetrics, stop: CancellationToken) {
    let mut view = handle.subscribe();
    tokio::spawn(async move {
        loop {
            {
                let v = view.borrow_and_update();
                metrics.view(v.is_leader, v.connected, v.leader_changes);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
            }
        }
    });
}

/// This node's part of `tend status`: its cluster, who leads, whether it is connected.
pub(super) fn summary(handle: &Handle) -> ClusterSummary {
    let view = handle.view();
    ClusterSummary {
        name: handle.identity.cluster.clone(),
        node: handle.identity.node.clone(),
        leader: view.leader,
        is_leader: view.is_leader,
        connected: view.connected,
        error: view.error,
    }
}

/// How often a node cut off from etcd passes, so its `onLostLease: stop` instances stop
/// within this long after their grace.
const CUT_OFF_PASS: std::time::Duration = std::time::Duration::from_secs(5);

/// Wakes the loop when the slots placed on this node, its leadership or its connection
/// change, and every few seconds while it is cut off from etcd.
pub(super) fn spawn_wakeups(handle: &Handle, wake: mpsc::Sender<Wake>, stop: CancellationToken) {
    let mut view = handle.subscribe();
    tokio::spawn(async move {
        let mut seen = wanted(&view.borrow_and_update());
        loop {
            let cut_off = seen.2;
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(CUT_OFF_PASS), if cut_off => {
                    let _ = wake.send(Wake::Cluster).await;
                    continue;
                }
            }
            let now = wanted(&view.borrow_and_update());
            if now != seen {
                seen = now;
                let _ = wake.send(Wake::Cluster).await;
            }
        }
    });
}

/// What of the view changes what a pass applies.
type Wanted = (Slots, bool, bool);

fn wanted(view: &View) -> Wanted {
    (view.mine.clone(), view.is_leader, view.disconnected_since.is_some())
}

/// The placed services of `desired`, with their pacing, for the leader.
pub(super) fn services_of(desired: &Desired) -> Services {
    desired
        .services
        .values()
        .filter_map(|s| {
            let placed = PlacedService::from_service(s)?;
            let rollout = &s.spec.rollout;
            Some((
                placed,
                Pace { interval: rollout.interval.get(), scale_down_interval: rollout.scale_down_interval.get() },
            ))
        })
        .collect()
}

/// The spec set as this node applies it: the slots placed here, and leader-only Timers
/// only while this node leads. Hands the placed services to the leader side too.
pub(super) fn localize(handle: &Handle, desired: Arc<Desired>) -> Arc<Desired> {
    handle.set_services(services_of(&desired));
    let view = handle.view();
    let needs_change = desired.services.values().any(|s| s.spec.placement.is_some())
        || (!view.is_leader && desired.timers.values().any(|t| t.spec.run_on == RunOn::Leader));
    if !needs_change {
        return desired;
    }
    let mut d = (*desired).clone();
    let node = &handle.identity.node;
    crate::cluster::assign(&mut d, &node::as_assignments(node, &view.mine), node);
    if let Some(since) = view.disconnected_since {
        fence_cut_off(&mut d, since.elapsed());
    }
    if !view.is_leader {
        d.timers.retain(|_, t| t.spec.run_on != RunOn::Leader);
    }
    Arc::new(d)
}

/// The placed services of `desired` (the spec set as this node applies it) whose running
/// instances here wait for this node's rollout turn: those with instances here whose turn
/// it does not hold.
pub(super) fn gate(handle: &Handle, desired: &Desired) -> BTreeMap<String, Note> {
    let Some(turns) = handle.turns() else { return BTreeMap::new() };
    let held = turns.held();
    desired
        .services
        .values()
        .filter(|s| s.spec.placement.is_some() && !s.instances().is_empty() && !held.contains(&s.name))
        .map(|s| {
            let note = Note::ClusterTurn { service: s.name.clone(), at_once: budget::rollout_allowed(s) };
            (s.name.clone(), note)
        })
        .collect()
}

/// After a pass: asks for the turn of each service whose replacement waited for it, and
/// gives back each turn held for a service that is done here.
pub(super) fn after_pass(handle: &Handle, desired: &Desired, report: &Report) {
    let Some(turns) = handle.turns() else { return };
    let wanted = report
        .plan
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::ClusterTurn { service, .. } => desired.services.get(service).cloned(),
            _ => None,
        })
        .collect();
    turns.want(wanted);
    let held = turns.held();
    for name in &held {
        if rolled_out(desired.services.get(name), &report.plan, &report.observed) {
            turns.release(name);
        }
    }
    // The placed services this pass acted on: what it saw of them is stale; the next pass,
    // a moment later, says how they are.
    let acted: BTreeSet<String> = report
        .plan
        .steps
        .iter()
        .filter_map(|step| step.action.owner())
        .filter(|o| desired.services.get(o).is_some_and(|s| s.spec.placement.is_some()))
        .collect();
    turns.report_unready(unready(desired, &report.observed, &held), &acted);
    if !acted.is_empty() {
        turns.recheck_soon();
    }
}

/// How many instances of each placed service here are not ready (not running, or not
/// healthy where it has a health check), as a pass saw them; leaving out those that hold a
/// slot of the budget already: under a maintenance window here, or of a service whose
/// rollout turn this node holds.
fn unready(desired: &Desired, observed: &Observed, held: &BTreeSet<String>) -> BTreeMap<String, u32> {
    let up =
        |s: &Service, i: u32| observed.containers.iter().any(|c| c.service == s.name && c.instance == i && ready(c));
    desired
        .services
        .values()
        .filter(|s| s.spec.placement.is_some() && !held.contains(&s.name))
        .map(|s| {
            let down = s
                .instances()
                .into_iter()
                .filter(|i| !observed.maintenance.contains_key(&crate::reconcile::model::instance_name(&s.name, *i)))
                .filter(|i| !up(s, *i))
                .count() as u32;
            (s.name.clone(), down)
        })
        .collect()
}

/// Whether a container serves: the instance itself (not a `-next` one), running, and
/// healthy where it has a health check.
fn ready(c: &Container) -> bool {
    !c.is_next() && c.state == RunState::Running && matches!(c.health, Health::None | Health::Healthy)
}

/// Whether `service` is done with its rollout here, as a pass saw it: the pass had no step
/// for it, and every instance of it here is current, running and ready (healthy, where it
/// has a health check). A service no longer here is done.
fn rolled_out(service: Option<&Service>, plan: &Plan, observed: &Observed) -> bool {
    let Some(s) = service else { return true };
    if plan.steps.iter().any(|step| step.action.owner().as_deref() == Some(s.name.as_str())) {
        return false;
    }
    let ready: BTreeSet<u32> = observed
        .containers
        .iter()
        .filter(|c| c.service == s.name && c.hash == s.hash && ready(c))
        .map(|c| c.instance)
        .collect();
    s.instances().iter().all(|i| ready.contains(i))
}

/// A node cut off from etcd for `cut_off`: past a service's `lostLeaseGrace`, its
/// `onLostLease: stop` instances stop (the leader keeps their slots fenced that long, then
/// places them elsewhere); `keep` services and those within their grace run on.
fn fence_cut_off(desired: &mut Desired, cut_off: std::time::Duration) {
    for s in desired.services.values_mut() {
        let Some(p) = &s.spec.placement else { continue };
        if p.on_lost_lease == OnLostLease::Stop && cut_off >= p.lost_lease_grace.get() {
            s.slots = Some(Default::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_cut_off_node_stops_only_stop_services_and_only_past_their_grace() {
        let doc = |name: &str, placement: &str| {
            format!(
                "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: i:1\n  replicas: 3\n  placement: {placement}\n"
            )
        };
        let yaml = doc("fenced", "{role: j, onLostLease: stop, lostLeaseGrace: 30s}") + &doc("kept", "{role: j}");
        let mut d = tend_specs::load_str(std::path::Path::new("t.yaml"), &yaml).expect("valid");
        for s in d.services.values_mut() {
            s.slots = Some(BTreeSet::from([2]));
        }
        fence_cut_off(&mut d, Duration::from_secs(29));
        assert_eq!((d.services["fenced"].instances(), d.services["kept"].instances()), (vec![2], vec![2]));
        fence_cut_off(&mut d, Duration::from_secs(30));
        assert_eq!((d.services["fenced"].instances(), d.services["kept"].instances()), (vec![], vec![2]));
    }
}
