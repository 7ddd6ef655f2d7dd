//! Prometheus metrics of the agent (prometheus-client): what its passes did, the state of
//! the objects it manages, the spec revision in use, its jobs, and — on a node in a
//! cluster only ([`Metrics::cluster`]) — its leadership, its connection and its etcd calls.
//! Served as OpenMetrics text on `GET /metrics` (see `api`), on the Unix socket and
//! optionally on a TCP address.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output: the OpenMetrics text format, which
/// Prometheus and Telegraf's `inputs.prometheus` both read.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the pass duration histogram's buckets: a pass that only
/// observes takes well under a second; one that pulls images or rolls out can take minutes.
const PASS_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Upper bounds, in seconds, of the etcd call duration histogram's buckets: etcd answers in
/// milliseconds; a call that waits for an etcd election takes a second or more, and one
/// that gets no answer ends at its timeout (5 s).
const ETCD_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallErrorLabels {
    call: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobResultLabels {
    job: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupLabels {
    backup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    engine: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineErrorLabels {
    engine: &'static str,
    kind: &'static str,
}

fn result(ok: bool) -> &'static str {
    if ok { "ok" } else { "failed" }
}

/// The agent's metrics: a registry and handles on its families. All methods take `&self`
/// (the families are atomic), so one `Metrics` is shared by the loop, the jobs and the API.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pass_duration: Histogram,
    passes: Family<ResultLabels, Counter>,
    objects: Family<StateLabels, Gauge>,
    /// Every state [`Metrics::objects`] was ever given, so that a state absent now reads 0
    /// rather than keeping its last count.
    object_states: Mutex<BTreeSet<String>>,
    actions: Family<ActionLabels, Counter>,
    drift_repairs: Counter,
    spec_errors: Gauge,
    revision: std::sync::Arc<Revision>,
    mass_removal_blocked: Gauge,
    job_runs: Family<JobResultLabels, Counter>,
    job_duration: Family<JobLabels, Gauge<f64, AtomicU64>>,
    backup_last_success: Family<BackupLabels, Gauge>,
    backup_problems: Family<BackupLabels, Gauge>,
    engine_up: Family<EngineLabels, Gauge>,
    engine_errors: Family<EngineErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric of the agent, all at zero (no revision yet).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let pass_duration = Histogram::new(PASS_BUCKETS);
        registry.register_with_unit(
            "tend_pass_duration",
            "How long reconcile passes take (observe, plan and apply)",
            Unit::Seconds,
            pass_duration.clone(),
        );
        let passes = Family::<ResultLabels, Counter>::default();
        // Both series from the start, so that rate() and alerts on failures see a 0.
        for ok in [true, false] {
            passes.get_or_create(&ResultLabels { result: result(ok) }).inc_by(0);
        }
        registry.register(
            "tend_passes",
            "Reconcile passes run, by result: ok, or failed (observation or an action failed)",
            passes.clone(),
        );
        let objects = Family::<StateLabels, Gauge>::default();
        registry.register(
            "tend_objects",
            "Managed objects by state after the last pass that observed every engine the specs \
             need (running, held, backing-off, exited, conflict, maintenance, ...); no series \
             while one of them cannot be observed (see tend_engine_up)",
            objects.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "tend_actions",
            "Actions executed, by kind (create, start, stop, recreate, remove, ...) and result",
            actions.clone(),
        );
        let drift_repairs = Counter::default();
        registry.register(
            "tend_drift_repairs",
            "Objects brought back to their spec after they drifted from it outside tend",
            drift_repairs.clone(),
        );
        let spec_errors = Gauge::default();
        registry.register(
            "tend_spec_errors",
            "Errors in the newest spec set when it was rejected (the agent keeps the last good \
             one); 0 when the set in use is the newest",
            spec_errors.clone(),
        );
        let revision = std::sync::Arc::new(Revision::default());
        registry.register_collector(Box::new(revision.clone()));
        let mass_removal_blocked = Gauge::default();
        registry.register(
            "tend_mass_removal_blocked",
            "1 while the agent refuses to apply a plan that would remove most managed objects \
             at once, else 0",
            mass_removal_blocked.clone(),
        );
        let job_runs = Family::<JobResultLabels, Counter>::default();
        registry.register("tend_job_runs", "Job runs, by job and result", job_runs.clone());
        let job_duration = Family::<JobLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "tend_job_duration",
            "How long the last run of each job took",
            Unit::Seconds,
            job_duration.clone(),
        );
        let backup_last_success = Family::<BackupLabels, Gauge>::default();
        registry.register(
            "tend_backup_last_success_timestamp_seconds",
            "When each Backup last succeeded (seconds since the epoch; 0: never)",
            backup_last_success.clone(),
        );
        let backup_problems = Family::<BackupLabels, Gauge>::default();
        registry.register(
            "tend_backup_problems",
            "Health problems of each Backup (failed or missed runs, a shrinking archive, leftovers, an interrupted quiesce)",
            backup_problems.clone(),
        );
        let engine_up = Family::<EngineLabels, Gauge>::default();
        registry.register(
            "tend_engine_up",
            "1 while an engine (docker, systemd) answers, 0 while it is unresponsive or cannot be \
             reached; absent for an engine tend never reached and the specs do not need",
            engine_up.clone(),
        );
        let engine_errors = Family::<EngineErrorLabels, Counter>::default();
        registry.register(
            "tend_engine_errors",
            "Failed engine calls that made the agent take an engine for down, by engine and kind \
             (timeout: no answer in time; unavailable: not reachable)",
            engine_errors.clone(),
        );
        Metrics {
            engine_up,
            engine_errors,
            backup_last_success,
            backup_problems,
            registry,
            pass_duration,
            passes,
            objects,
            object_states: Mutex::new(BTreeSet::new()),
            actions,
            drift_repairs,
            spec_errors,
            revision,
            mass_removal_blocked,
            job_runs,
            job_duration,
        }
    }

    /// Records a finished pass: `tend_pass_duration_seconds` and
    /// `tend_passes_total{result}`.
    pub fn pass(&self, duration: Duration, ok: bool) {
        self.pass_duration.observe(duration.as_secs_f64());
        self.passes.get_or_create(&ResultLabels { result: result(ok) }).inc();
    }

    /// Sets `tend_objects{state}` to these counts; a state counted before but absent now
    /// reads 0.
    pub fn objects(&self, counts: &[(&str, u64)]) {
        let mut states = self.object_states.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (state, _) in counts {
            states.insert((*state).to_string());
        }
        for state in states.iter() {
            let n = counts.iter().filter(|(s, _)| s == state).map(|(_, n)| *n).sum::<u64>();
            self.objects.get_or_create(&StateLabels { state: state.clone() }).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Drops every `tend_objects{state}` series: a pass could not observe an engine the specs
    /// need, so no count is current (a last value shown as current would read as "all
    /// running" while nothing is known). The next complete pass sets them again.
    pub fn objects_unknown(&self) {
        self.objects.clear();
    }

    /// Counts an executed action: `tend_actions_total{kind,result}`.
    pub fn action(&self, kind: &str, ok: bool) {
        self.actions.get_or_create(&ActionLabels { kind: kind.to_string(), result: result(ok) }).inc();
    }

    /// Counts `n` objects repaired after drifting: `tend_drift_repairs_total`.
    pub fn drift_repair(&self, n: u64) {
        self.drift_repairs.inc_by(n);
    }

    /// Sets `tend_spec_errors`: the errors of the newest, rejected spec set, or 0.
    pub fn spec_errors(&self, n: u64) {
        self.spec_errors.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the commit of the spec set in use: `tend_applied_revision_info{commit} 1`. The
    /// previous commit's series goes away; `None` (specs from a directory, or none applied
    /// yet) exposes no series.
    pub fn applied_commit(&self, commit: Option<&str>) {
        let mut current = self.revision.commit.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = commit.map(str::to_string);
    }

    /// Sets `tend_mass_removal_blocked` to 1 or 0.
    pub fn mass_removal_blocked(&self, blocked: bool) {
        self.mass_removal_blocked.set(i64::from(blocked));
    }

    /// Records a finished job run: `tend_job_runs_total{job,result}` and
    /// `tend_job_duration_seconds{job}` (the last run's).
    pub fn job(&self, name: &str, ok: bool, duration: Duration) {
        self.job_runs.get_or_create(&JobResultLabels { job: name.to_string(), result: result(ok) }).inc();
        self.job_duration.get_or_create(&JobLabels { job: name.to_string() }).set(duration.as_secs_f64());
    }

    /// A Backup's health: `tend_backup_last_success_timestamp_seconds{backup}` and
    /// `tend_backup_problems{backup}`.
    pub fn backup(&self, name: &str, last_success_ms: Option<u64>, problems: usize) {
        let labels = BackupLabels { backup: name.to_string() };
        self.backup_last_success.get_or_create(&labels).set(last_success_ms.map_or(0, |ms| (ms / 1000) as i64));
        self.backup_problems.get_or_create(&labels).set(problems as i64);
    }

    /// Sets `tend_engine_up{engine}` to 1 (it answers) or 0.
    pub fn engine_up(&self, engine: &'static str, up: bool) {
        self.engine_up.get_or_create(&EngineLabels { engine }).set(i64::from(up));
    }

    /// Counts a failed call that made an engine down: `tend_engine_errors_total{engine,kind}`.
    pub fn engine_error(&self, engine: &'static str, kind: &'static str) {
        self.engine_errors.get_or_create(&EngineErrorLabels { engine, kind }).inc();
    }

    /// Registers the metrics of a node in a cluster and returns their handles: registered
    /// only by an agent whose configuration has a `cluster:` block, so that a node outside
    /// a cluster (which leads its cluster of one) shows none of them.
    pub fn cluster(&mut self) -> ClusterMetrics {
        let m = ClusterMetrics {
            leader: Gauge::default(),
            leader_changes: Counter::default(),
            connected: Gauge::default(),
            etcd_duration: Family::new_with_constructor(|| Histogram::new(ETCD_BUCKETS)),
            etcd_errors: Family::default(),
        };
        let r = &mut self.registry;
        r.register("tend_cluster_leader", "1 while this node leads its cluster, else 0", m.leader.clone());
        r.register(
            "tend_cluster_leader_changes",
            "Changes of the cluster's leader this agent has seen since it started",
            m.leader_changes.clone(),
        );
        r.register(
            "tend_cluster_connected",
            "1 while this node's lease in etcd is alive and etcd answers, else 0 (etcd unreachable \
             or without quorum: the node keeps its services and last slots running)",
            m.connected.clone(),
        );
        r.register_with_unit(
            "tend_etcd_request_duration",
            "How long etcd calls take, by call (a campaign, which lasts until elected, is not \
             counted)",
            Unit::Seconds,
            m.etcd_duration.clone(),
        );
        r.register(
            "tend_etcd_errors",
            "Failed etcd calls, by call and kind (timeout, unavailable, no_leader, denied, \
             lease_not_found, compacted, refused, config)",
            m.etcd_errors.clone(),
        );
        m
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]), ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing into a String cannot fail; a collector could, and then the scrape
            // gets what was written, which a scraper rejects for its missing `# EOF`.
            tracing::warn!(error = %e, "encoding metrics");
        }
        text
    }
}

/// The metrics of a node in a cluster ([`Metrics::cluster`]): cheap clones of the same
/// series.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    leader: Gauge,
    leader_changes: Counter,
    connected: Gauge,
    etcd_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    etcd_errors: Family<CallErrorLabels, Counter>,
}

impl ClusterMetrics {
    /// Sets `tend_cluster_leader`, `tend_cluster_connected` and
    /// `tend_cluster_leader_changes_total` from the node's view (`changes`: the count since
    /// the agent started, which only grows).
    pub fn view(&self, is_leader: bool, connected: bool, changes: u64) {
        self.leader.set(i64::from(is_leader));
        self.connected.set(i64::from(connected));
        let counted = self.leader_changes.get();
        if changes > counted {
            self.leader_changes.inc_by(changes - counted);
        }
    }
}

impl crate::cluster::metered::Recorder for ClusterMetrics {
    fn duration(&self, call: &'static str, took: Duration) {
        self.etcd_duration.get_or_create(&CallLabels { call }).observe(took.as_secs_f64());
    }

    fn error(&self, call: &'static str, kind: &'static str) {
        self.etcd_errors.get_or_create(&CallErrorLabels { call, kind }).inc();
    }
}

/// `tend_applied_revision_info`: an OpenMetrics info metric whose label changes with each
/// commit applied, so it is encoded on each scrape rather than registered once.
#[derive(Debug, Default)]
struct Revision {
    commit: Mutex<Option<String>>,
}

impl Collector for Revision {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let commit = self.commit.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let Some(commit) = commit else { return Ok(()) };
        let info = Info::new([("commit", commit)]);
        let metric = encoder.encode_descriptor(
            "tend_applied_revision",
            "The git commit of the spec set in use (absent for specs from a directory).",
            None,
            info.metric_type(),
        )?;
        info.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(m: &Metrics) -> Vec<String> {
        m.encode().lines().map(str::to_string).collect()
    }

    fn has(m: &Metrics, line: &str) -> bool {
        lines(m).iter().any(|l| l == line)
    }

    #[test]
    fn a_new_registry_describes_every_metric_and_ends_in_eof() {
        let m = Metrics::new();
        let text = m.encode();
        for family in [
            "# TYPE tend_pass_duration_seconds histogram",
            "# UNIT tend_pass_duration_seconds seconds",
            "# TYPE tend_passes counter",
            "# TYPE tend_drift_repairs counter",
            "# TYPE tend_spec_errors gauge",
            "# TYPE tend_mass_removal_blocked gauge",
        ] {
            assert!(text.lines().any(|l| l == family), "missing {family:?} in\n{text}");
        }
        assert!(has(
            &m,
            "# HELP tend_passes Reconcile passes run, by result: ok, or failed (observation or an action failed)."
        ));
        assert!(has(&m, r#"tend_passes_total{result="ok"} 0"#));
        assert!(has(&m, r#"tend_passes_total{result="failed"} 0"#));
        assert!(has(&m, "tend_pass_duration_seconds_count 0"));
        assert!(has(&m, "tend_drift_repairs_total 0"));
        assert!(has(&m, "tend_spec_errors 0"));
        assert!(has(&m, "tend_mass_removal_blocked 0"));
        // Families with labels appear with their first series.
        for absent in
            ["tend_objects", "tend_actions", "tend_job_runs", "tend_job_duration_seconds", "tend_applied_revision"]
        {
            assert!(!text.contains(absent), "{absent} before any series:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn passes_are_counted_by_result_and_timed() {
        let m = Metrics::new();
        m.pass(Duration::from_millis(300), true);
        m.pass(Duration::from_secs(7), true);
        m.pass(Duration::from_secs(1), false);
        assert!(has(&m, r#"tend_passes_total{result="ok"} 2"#));
        assert!(has(&m, r#"tend_passes_total{result="failed"} 1"#));
        assert!(has(&m, "tend_pass_duration_seconds_count 3"));
        assert!(has(&m, "tend_pass_duration_seconds_sum 8.3"));
        assert!(has(&m, r#"tend_pass_duration_seconds_bucket{le="0.5"} 1"#));
        assert!(has(&m, r#"tend_pass_duration_seconds_bucket{le="+Inf"} 3"#));
    }

    #[test]
    fn object_counts_replace_the_previous_ones_and_absent_states_read_zero() {
        let m = Metrics::new();
        m.objects(&[("running", 4), ("held", 1)]);
        assert!(has(&m, "# TYPE tend_objects gauge"));
        assert!(has(&m, r#"tend_objects{state="running"} 4"#));
        assert!(has(&m, r#"tend_objects{state="held"} 1"#));
        m.objects(&[("running", 5), ("backing-off", 2)]);
        assert!(has(&m, r#"tend_objects{state="running"} 5"#));
        assert!(has(&m, r#"tend_objects{state="held"} 0"#));
        assert!(has(&m, r#"tend_objects{state="backing-off"} 2"#));
    }

    #[test]
    fn object_counts_go_while_nothing_is_known_and_come_back_with_a_complete_pass() {
        let m = Metrics::new();
        m.objects(&[("running", 4), ("held", 1)]);
        m.objects_unknown();
        assert!(!m.encode().contains("tend_objects{"), "{}", m.encode());
        m.objects(&[("running", 3)]);
        assert!(has(&m, r#"tend_objects{state="running"} 3"#));
        assert!(has(&m, r#"tend_objects{state="held"} 0"#));
    }

    #[test]
    fn actions_drift_repairs_and_flags_are_exposed_with_their_labels() {
        let m = Metrics::new();
        m.action("create", true);
        m.action("create", true);
        m.action("start", false);
        assert!(has(&m, "# TYPE tend_actions counter"));
        m.drift_repair(2);
        m.drift_repair(1);
        m.spec_errors(3);
        m.mass_removal_blocked(true);
        assert!(has(&m, r#"tend_actions_total{kind="create",result="ok"} 2"#));
        assert!(has(&m, r#"tend_actions_total{kind="start",result="failed"} 1"#));
        assert!(has(&m, "tend_drift_repairs_total 3"));
        assert!(has(&m, "tend_spec_errors 3"));
        assert!(has(&m, "tend_mass_removal_blocked 1"));
        m.spec_errors(0);
        m.mass_removal_blocked(false);
        assert!(has(&m, "tend_spec_errors 0"));
        assert!(has(&m, "tend_mass_removal_blocked 0"));
    }

    #[test]
    fn the_applied_revision_is_an_info_metric_with_only_the_current_commit() {
        let m = Metrics::new();
        m.applied_commit(Some("0123abc"));
        assert!(has(&m, "# TYPE tend_applied_revision info"));
        assert!(has(&m, r#"tend_applied_revision_info{commit="0123abc"} 1"#));
        m.applied_commit(Some("4567def"));
        let text = m.encode();
        assert!(has(&m, r#"tend_applied_revision_info{commit="4567def"} 1"#));
        assert!(!text.contains("0123abc"), "{text}");
        m.applied_commit(None);
        assert!(!m.encode().contains("tend_applied_revision"));
    }

    #[test]
    fn jobs_are_counted_by_result_and_keep_the_last_duration() {
        let m = Metrics::new();
        m.job("nightly-dump", true, Duration::from_secs(12));
        m.job("nightly-dump", false, Duration::from_millis(2500));
        assert!(has(&m, "# TYPE tend_job_runs counter"));
        assert!(has(&m, "# TYPE tend_job_duration_seconds gauge"));
        assert!(has(&m, "# UNIT tend_job_duration_seconds seconds"));
        assert!(has(&m, r#"tend_job_runs_total{job="nightly-dump",result="ok"} 1"#));
        assert!(has(&m, r#"tend_job_runs_total{job="nightly-dump",result="failed"} 1"#));
        assert!(has(&m, r#"tend_job_duration_seconds{job="nightly-dump"} 2.5"#));
    }

    #[test]
    fn engines_are_up_or_down_and_their_failures_counted_by_kind() {
        let m = Metrics::new();
        assert!(!m.encode().contains("tend_engine_up{"), "no series before an engine was seen");
        m.engine_up("docker", true);
        assert!(has(&m, "# TYPE tend_engine_up gauge"));
        assert!(has(&m, r#"tend_engine_up{engine="docker"} 1"#));
        m.engine_error("docker", "timeout");
        m.engine_error("docker", "timeout");
        m.engine_up("docker", false);
        assert!(has(&m, r#"tend_engine_up{engine="docker"} 0"#));
        assert!(has(&m, "# TYPE tend_engine_errors counter"));
        assert!(has(&m, r#"tend_engine_errors_total{engine="docker",kind="timeout"} 2"#));
    }

    #[test]
    fn cluster_metrics_exist_only_on_a_node_in_a_cluster() {
        use crate::cluster::metered::Recorder;
        let mut m = Metrics::new();
        assert!(!m.encode().contains("tend_cluster"), "{}", m.encode());
        assert!(!m.encode().contains("tend_etcd"), "{}", m.encode());
        let c = m.cluster();
        assert!(has(&m, "tend_cluster_leader 0"));
        assert!(has(&m, "tend_cluster_connected 0"));
        assert!(has(&m, "tend_cluster_leader_changes_total 0"));
        c.view(true, true, 0);
        c.view(true, true, 2);
        c.view(false, false, 2);
        assert!(has(&m, "tend_cluster_leader 0"));
        assert!(has(&m, "tend_cluster_connected 0"));
        assert!(has(&m, "tend_cluster_leader_changes_total 2"));
        c.view(true, true, 3);
        assert!(has(&m, "tend_cluster_leader 1"));
        assert!(has(&m, "tend_cluster_connected 1"));
        assert!(has(&m, "tend_cluster_leader_changes_total 3"));
        c.duration("put", Duration::from_millis(3));
        c.duration("put", Duration::from_secs(2));
        c.error("put", "timeout");
        c.error("get_prefix", "no_leader");
        assert!(has(&m, "# TYPE tend_etcd_request_duration_seconds histogram"));
        assert!(has(&m, "# UNIT tend_etcd_request_duration_seconds seconds"));
        assert!(has(&m, "# TYPE tend_etcd_errors counter"));
        assert!(has(&m, r#"tend_etcd_request_duration_seconds_count{call="put"} 2"#));
        assert!(has(&m, r#"tend_etcd_request_duration_seconds_bucket{le="0.005",call="put"} 1"#), "{}", m.encode());
        assert!(has(&m, r#"tend_etcd_errors_total{call="put",kind="timeout"} 1"#));
        assert!(has(&m, r#"tend_etcd_errors_total{call="get_prefix",kind="no_leader"} 1"#));
    }

    #[test]
    fn metrics_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
    }
}
