//! The executor against the in-memory engine ([`crate::engine::fake`]), in tokio's paused
//! time: calls take virtual time, and the fake's log of calls says what ran, in which order
//! and how much at once. Plans are made by hand where a test is about one rule of the
//! executor, and by the planner from specs where it is about a whole pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tend_specs::Desired;
use tend_specs::service::Condition;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::engine::EngineErrorKind;
use crate::engine::fake::{ANY, Becomes, Call, Fake, FakeContainer, Op, most_at_once};
use crate::reconcile::apply::{Options, plan_for};
use crate::reconcile::model::instance_name;
use crate::reconcile::plan::Reason;

/// How long the fake takes to stop a container, and to create and start one.
const STOP: Duration = Duration::from_secs(3);
const START: Duration = Duration::from_secs(1);

const SCOPE: &str = "t";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `n` services `s01`…, one replica each, with `extra` spec lines.
fn services(n: usize, env: &str, extra: &str) -> Desired {
    let docs: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: s{i:02}}}\nspec:\n  image: img:1\n  env: {{V: '{env}'}}\n{extra}"
            )
        })
        .collect();
    desired(&docs.join("---\n"))
}

fn desired(yaml: &str) -> Desired {
    tend_specs::load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|d| panic!("bad test spec: {d:?}"))
}

/// A docker service document: `image: img:1` and `extra` spec lines.
fn svc(name: &str, extra: &str) -> String {
    let mut doc = format!("---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n");
    if !extra.contains("image:") {
        doc.push_str("  image: img:1\n");
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        doc.push_str(&format!("  {line}\n"));
    }
    doc
}

/// Services `names`, one replica each, on `img:1`.
fn plain(names: &[&str]) -> Desired {
    desired(&names.iter().map(|n| svc(n, "")).collect::<String>())
}

fn options(dir: &Path, parallel: usize) -> Options {
    let host = crate::host::Host {
        scope: SCOPE.into(),
        state_dir: dir.join("state"),
        locks: crate::maintain::locks::LockDir::new(dir.join("locks")),
        unit_dir: dir.join("units"),
        env_dir: dir.join("env"),
        tend_bin: "/bin/false".into(),
        timeouts: crate::engine::Timeouts::default(),
        agent_config: None,
    };
    let mut options = Options::new(host, dir.join("specs"), parallel, CancellationToken::new());
    options.ignore_windows = true;
    options
}

/// One fake on both sides, and a temporary directory for locks and unit files.
struct Host {
    fake: Arc<Fake>,
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        Host { fake: Arc::new(Fake::new()), dir: tempfile::tempdir().expect("a temporary directory") }
    }

    fn options(&self, parallel: usize) -> Options {
        options(self.dir.path(), parallel)
    }

    fn engines(&self) -> Arc<Engines<Fake, Fake>> {
        Arc::new(Engines { docker: Some(self.fake.clone()), systemd: Some(self.fake.clone()) })
    }

    async fn execute(&self, desired: &Desired, plan: &Plan, options: &Options) -> BTreeMap<usize, Outcome> {
        execute(self.engines(), Arc::new(desired.clone()), plan, options).await
    }

    /// What a pass would plan for `desired` now: observed through the fake.
    async fn plan(&self, desired: &Desired, options: &Options) -> Plan {
        let engines = self.engines();
        let observed = crate::reconcile::observe::observe_all(&engines, options, desired).await.expect("observed");
        plan_for(desired, &observed, &crate::reconcile::state::State::default(), options, &BTreeSet::new())
    }

    /// Plans `desired` against the fake and executes the plan.
    async fn pass(&self, desired: &Desired, options: &Options) -> (Plan, BTreeMap<usize, Outcome>) {
        let plan = self.plan(desired, options).await;
        let outcomes = self.execute(desired, &plan, options).await;
        (plan, outcomes)
    }

    fn call(&self, op: Op, object: &str) -> Call {
        self.fake.call(op, object).unwrap_or_else(|| panic!("no {op:?} of {object}: {:#?}", self.fake.calls()))
    }
}

fn step(id: usize, action: Action, after: &[usize]) -> Step {
    Step { id, action, reason: Reason::Missing, after: after.to_vec(), pause_ms: 0 }
}

fn paused(mut s: Step, pause: Duration) -> Step {
    s.pause_ms = ms(pause);
    s
}

fn create(service: &str, instance: u32) -> Action {
    Action::Create { service: service.into(), instance, name: instance_name(service, instance) }
}

fn remove(service: &str, instance: u32) -> Action {
    let name = instance_name(service, instance);
    Action::Remove { service: service.into(), instance, id: format!("id-{name}"), name, stop_timeout_s: None }
}

fn await_(name: &str, condition: Condition, timeout: Duration) -> Action {
    let service = name.rsplit_once('-').map_or(name, |(s, _)| s);
    Action::Await { service: service.into(), name: Some(name.into()), condition, timeout_ms: ms(timeout) }
}

fn plan(steps: Vec<Step>) -> Plan {
    Plan { steps, ..Plan::default() }
}

fn done(outcomes: &BTreeMap<usize, Outcome>) -> bool {
    outcomes.values().all(|o| matches!(o, Outcome::Done { .. }))
}

fn error(outcome: Option<&Outcome>) -> &str {
    match outcome {
        Some(Outcome::Failed { error }) => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The call by which a step acts (awaits and holds have none of their own).
fn acting(step: &Step) -> Option<(Op, String)> {
    Some(match &step.action {
        Action::PullImage { image } => (Op::Pull, image.clone()),
        Action::CreateNetwork { network } => (Op::CreateNetwork, network.clone()),
        Action::CreateVolume { volume } => (Op::CreateVolume, volume.clone()),
        Action::Create { name, .. } => (Op::Create, name.clone()),
        Action::Start { name, .. } => (Op::Start, name.clone()),
        Action::Remove { name, .. } => (Op::StopAndRemove, name.clone()),
        Action::Stop { name, .. } => (Op::Stop, name.clone()),
        Action::Rename { from, to, .. } => (Op::Rename, format!("{from} → {to}")),
        Action::WriteUnit { unit, .. } => (Op::WriteUnitFile, unit.clone()),
        Action::DaemonReload => (Op::DaemonReload, "the systemd manager".into()),
        Action::EnableUnits { units } => (Op::Enable, units.join(" ")),
        Action::StartUnit { unit } => (Op::StartUnit, unit.clone()),
        _ => return None,
    })
}

/// The span during which `service` had no container from the first stop of one of its
/// instances to the end of the last create: as a call, for [`most_at_once`].
fn outage(fake: &Fake, service: &str) -> Call {
    let calls = fake.calls();
    let mine = |op: Op| calls.iter().filter(move |c| c.op == op && c.object.starts_with(&format!("{service}-")));
    let down = mine(Op::StopAndRemove).next().unwrap_or_else(|| panic!("{service} never went down"));
    let up = mine(Op::Create).next_back().unwrap_or_else(|| panic!("{service} never came up"));
    Call { ended: up.ended, seq: (down.seq.0, up.seq.1), ..down.clone() }
}

/// Seeds the fake with `old` running, then plans the change to `new` and executes it with
/// `parallel` slots, stops taking [`STOP`] and creates [`START`].
async fn change(old: &Desired, new: &Desired, parallel: usize) -> (Host, Plan, BTreeMap<usize, Outcome>) {
    let host = Host::new();
    host.fake.add_running(SCOPE, old).takes(Op::StopAndRemove, ANY, STOP).takes(Op::Create, ANY, START);
    let (plan, outcomes) = host.pass(new, &host.options(parallel)).await;
    (host, plan, outcomes)
}

#[tokio::test(start_paused = true)]
async fn changing_every_service_takes_down_at_most_parallel_at_once_each_for_one_stop_and_one_start() {
    let (host, plan, outcomes) = change(&services(50, "a", ""), &services(50, "b", ""), 8).await;
    assert_eq!(plan.steps.len(), 100, "a remove and a create per service");
    assert!(done(&outcomes), "{outcomes:?}");
    assert_eq!(host.fake.calls_of(Op::Create).len(), 50);
    let outages: Vec<Call> = (1..=50).map(|i| outage(&host.fake, &format!("s{i:02}"))).collect();
    assert_eq!(most_at_once(&outages), 8, "never more services down at once than steps may run at once");
    for o in &outages {
        let down_for = o.ended.expect("up again") - o.began;
        assert_eq!(down_for, STOP + START, "{} was down for more than its own stop and start", o.object);
    }
}

#[tokio::test(start_paused = true)]
async fn one_slot_replaces_services_one_after_another() {
    let (host, _, outcomes) = change(&services(5, "a", ""), &services(5, "b", ""), 1).await;
    assert!(done(&outcomes), "{outcomes:?}");
    let mut outages: Vec<Call> = (1..=5).map(|i| outage(&host.fake, &format!("s{i:02}"))).collect();
    assert_eq!(most_at_once(&outages), 1);
    // Each service is back before the next one goes down.
    outages.sort_by_key(|o| o.seq.0);
    assert!(outages.windows(2).all(|w| w[0].seq.1 < Some(w[1].seq.0)), "{outages:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_rollout_keeps_max_unavailable_and_its_pause_with_slots_to_spare() {
    let paced = "  replicas: 4\n  rollout: {maxUnavailable: 2, interval: 10s}\n";
    let (host, plan, outcomes) = change(&services(1, "a", paced), &services(1, "b", paced), 8).await;
    assert!(done(&outcomes), "{outcomes:?}");
    assert_eq!(plan.steps.iter().filter(|s| s.pause_ms == 10_000).count(), 2, "the second batch is paced");
    // Two batches of two, the second 10 s after the first is up.
    let removes = host.fake.calls_of(Op::StopAndRemove);
    assert_eq!(most_at_once(&removes), 2, "{removes:#?}");
    let last_up = host.fake.calls_of(Op::Create).iter().filter_map(|c| c.ended).max();
    assert_eq!(last_up, Some(STOP + START + secs(10) + STOP + START));
}

#[test]
fn only_targets_the_specs_no_longer_want_lose_their_lock_files() {
    let d = services(1, "a", "  replicas: 2\n");
    let remove = |service: &str, instance: u32, name: &str| Action::Remove {
        service: service.into(),
        instance,
        name: name.into(),
        id: "x".into(),
        stop_timeout_s: None,
    };
    // A replacement removes an instance the specs still want; a leftover `-next` is not one.
    assert_eq!(gone_target(&d, &remove("s01", 2, "s01-2")), None);
    assert_eq!(gone_target(&d, &remove("s01", 1, "s01-1-next")), None);
    // Scaled down, or the spec removed.
    assert_eq!(gone_target(&d, &remove("s01", 3, "s01-3")), Some("s01-3".into()));
    assert_eq!(gone_target(&d, &remove("old", 1, "old-1")), Some("old-1".into()));
    // Units: a Timer's timer unit is keyed by its job.
    assert_eq!(gone_target(&d, &Action::RemoveUnit { unit: "x.timer".into() }), Some("x.job".into()));
    assert_eq!(gone_target(&d, &Action::RemoveUnit { unit: "x.service".into() }), Some("x.service".into()));
    assert_eq!(
        gone_target(
            &d,
            &Action::Stop {
                service: "s01".into(),
                instance: 1,
                name: "s01-1".into(),
                id: "x".into(),
                stop_timeout_s: None
            }
        ),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_error_that_echoes_any_secret_of_the_set_is_redacted() {
    let host = Host::new();
    let dir = host.dir.path().join("specs");
    std::fs::create_dir_all(&dir).expect("specs");
    std::fs::write(dir.join("a"), "alpha-secret\n").expect("secret");
    std::fs::write(dir.join("b"), "beta-secret\n").expect("secret");
    let doc = |name: &str, file: &str| {
        format!(
            "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: img:1\n  env: {{PW: {{fromFile: {file}}}}}\n"
        )
    };
    std::fs::write(dir.join("s.yaml"), doc("a", "a") + &doc("b", "b")).expect("specs");
    let desired = tend_specs::load_path(&dir).unwrap_or_else(|d| panic!("{d:?}"));
    // The engine echoes both services' environments in each error, as an echo of a
    // request holding another's secret would.
    let echo = "bad: [\"PW=alpha-secret\",\"PW=beta-secret\"]";
    host.fake.fails_saying(Op::Create, ANY, EngineErrorKind::Refused, echo);
    let (_, outcomes) = host.pass(&desired, &host.options(2)).await;
    let errors: Vec<&String> = outcomes
        .values()
        .filter_map(|o| match o {
            Outcome::Failed { error } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 2, "{outcomes:?}");
    for e in errors {
        assert!(!e.contains("alpha-secret") && !e.contains("beta-secret"), "{e}");
        assert!(e.contains("PW=<secret from ") && e.starts_with("creating container "), "{e}");
    }
}

// ---- dependency order and concurrency ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_step_never_starts_before_the_steps_it_comes_after() {
    let d = plain(&["a", "b", "c", "d"]);
    // (what, steps, slots, how long each create takes)
    let rows: Vec<(&str, Vec<Step>, usize, [u64; 4])> = vec![
        (
            "a chain",
            vec![step(1, create("c", 1), &[]), step(2, create("b", 1), &[1]), step(3, create("a", 1), &[2])],
            8,
            [1, 2, 3, 1],
        ),
        (
            "a diamond after a network",
            vec![
                step(1, Action::CreateNetwork { network: "front".into() }, &[]),
                step(2, create("a", 1), &[1]),
                step(3, create("b", 1), &[1]),
                step(4, create("c", 1), &[2, 3]),
            ],
            8,
            [2, 5, 1, 1],
        ),
        (
            "a fan-out after a pull, one slot",
            vec![
                step(1, Action::PullImage { image: "img:2".into() }, &[]),
                step(2, create("a", 1), &[1]),
                step(3, create("b", 1), &[1]),
                step(4, create("c", 1), &[1]),
            ],
            1,
            [1, 1, 1, 1],
        ),
        (
            "a chain beside a long independent step",
            vec![
                step(1, create("a", 1), &[]),
                step(2, create("b", 1), &[]),
                step(3, create("c", 1), &[2]),
                step(4, create("d", 1), &[3, 2]),
            ],
            2,
            [10, 1, 1, 1],
        ),
    ];
    for (what, steps, slots, took) in rows {
        let host = Host::new();
        host.fake.add_image("img:1", "sha256:1").takes(Op::Pull, ANY, secs(3)).takes(Op::CreateNetwork, ANY, secs(2));
        for (name, s) in ["a-1", "b-1", "c-1", "d-1"].iter().zip(took) {
            host.fake.takes(Op::Create, name, secs(s));
        }
        let plan = plan(steps);
        let outcomes = host.execute(&d, &plan, &host.options(slots)).await;
        assert!(done(&outcomes), "{what}: {outcomes:?}");
        for s in &plan.steps {
            let (op, object) = acting(s).expect("an acting step");
            let began = host.call(op, &object).seq.0;
            for a in &s.after {
                let (op, object) = acting(&plan.steps[a - 1]).expect("an acting step");
                let ended = host.call(op, &object).seq.1.expect("ended");
                assert!(ended < began, "{what}: step {} began before step {a} ended", s.id);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn never_more_steps_act_at_once_than_parallel_allows() {
    // (independent creates, parallel, most at once, when the last is done)
    let rows = [(5, 1, 1, 10), (5, 2, 2, 6), (5, 8, 5, 2), (8, 8, 8, 2), (9, 4, 4, 6), (3, 0, 1, 6)];
    for (n, parallel, most, last) in rows {
        let names: Vec<String> = (1..=n).map(|i| format!("s{i:02}")).collect();
        let d = plain(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let host = Host::new();
        host.fake.add_image("img:1", "sha256:1").takes(Op::Create, ANY, secs(2));
        let steps = names.iter().enumerate().map(|(i, s)| step(i + 1, create(s, 1), &[])).collect();
        let outcomes = host.execute(&d, &plan(steps), &host.options(parallel)).await;
        assert!(done(&outcomes), "{outcomes:?}");
        let creates = host.fake.calls_of(Op::Create);
        assert_eq!(creates.len(), n, "{n} steps, {parallel} slots");
        assert_eq!(most_at_once(&creates), most, "{n} steps, {parallel} slots");
        assert_eq!(creates.iter().filter_map(|c| c.ended).max(), Some(secs(last)), "{n} steps, {parallel} slots");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_step_skips_its_dependents_while_independent_steps_still_run() {
    let d = plain(&["a", "b", "c", "d"]);
    let host = Host::new();
    host.fake.add_image("img:1", "sha256:1").fails(Op::Create, "a-1", EngineErrorKind::Refused);
    let plan = plan(vec![
        step(1, create("a", 1), &[]),
        step(2, await_("a-1", Condition::Started, secs(10)), &[1]),
        step(3, create("b", 1), &[2]),
        step(4, create("c", 1), &[]),
        step(5, create("d", 1), &[4, 1]),
    ]);
    let outcomes = host.execute(&d, &plan, &host.options(2)).await;
    assert_eq!(error(outcomes.get(&1)), "creating container a-1: injected: a-1");
    assert_eq!(outcomes[&2], Outcome::Skipped { because_of: 1 });
    assert_eq!(outcomes[&3], Outcome::Skipped { because_of: 2 }, "the skip names the step it waited for");
    assert!(matches!(outcomes[&4], Outcome::Done { .. }), "{outcomes:?}");
    assert_eq!(outcomes[&5], Outcome::Skipped { because_of: 1 });
    let created: Vec<String> = host.fake.calls_of(Op::Create).into_iter().map(|c| c.object).collect();
    assert_eq!(created, ["a-1", "c-1"]);
    assert!(host.fake.calls_of(Op::Probe).iter().all(|c| c.object != "a-1"), "nothing waited for a-1");
    assert_eq!(host.fake.container_names(), ["c-1"]);
}

// ---- cancellation --------------------------------------------------------------------------

/// Cancels `stop` after `after` of virtual time.
fn stop_after(stop: &CancellationToken, after: Duration) {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        stop.cancel();
    });
}

#[tokio::test(start_paused = true)]
async fn stopping_lets_the_step_in_flight_finish_and_starts_no_new_one() {
    let d = plain(&["a", "b", "c"]);
    let host = Host::new();
    host.fake.add_image("img:1", "sha256:1").takes(Op::Create, ANY, secs(2));
    let options = host.options(1);
    let plan = plan(vec![
        step(1, create("a", 1), &[]),
        step(2, create("b", 1), &[]),
        step(3, create("c", 1), &[]),
        step(4, await_("b-1", Condition::Started, secs(10)), &[2]),
    ]);
    stop_after(&options.stop, secs(1));
    let outcomes = host.execute(&d, &plan, &options).await;
    assert!(matches!(outcomes[&1], Outcome::Done { .. }), "{outcomes:?}");
    for id in [2, 3, 4] {
        assert_eq!(outcomes[&id], Outcome::Cancelled, "step {id}");
    }
    let creates = host.fake.calls_of(Op::Create);
    assert_eq!(creates.len(), 1, "{creates:#?}");
    assert_eq!(creates[0].ended, Some(secs(2)), "the step in flight was not cut short");
    assert_eq!(host.fake.container("a-1").map(|c| c.state), Some(RunState::Running));
}

#[tokio::test(start_paused = true)]
async fn stopping_mid_replacement_still_starts_the_new_container() {
    let old = plain(&["a", "b"]);
    let host = Host::new();
    host.fake.add_running(SCOPE, &old).takes(Op::StopAndRemove, ANY, STOP);
    let options = host.options(1);
    let plan = plan(vec![step(1, remove("a", 1), &[]), step(2, create("a", 1), &[1]), step(3, remove("b", 1), &[])]);
    stop_after(&options.stop, secs(1));
    let outcomes = host.execute(&old, &plan, &options).await;
    assert!(matches!(outcomes[&1], Outcome::Done { .. }), "{outcomes:?}");
    assert!(matches!(outcomes[&2], Outcome::Done { .. }), "a half-done replacement is completed: {outcomes:?}");
    assert_eq!(outcomes[&3], Outcome::Cancelled);
    assert_eq!(host.fake.container_names(), ["a-1", "b-1"]);
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_a_rollout_pause_and_cancels_the_paused_step() {
    let d = plain(&["a"]);
    let host = Host::new();
    host.fake.add_image("img:1", "sha256:1").takes(Op::Create, ANY, START);
    let options = host.options(4);
    let plan = plan(vec![step(1, create("a", 1), &[]), paused(step(2, create("a", 2), &[1]), secs(60))]);
    stop_after(&options.stop, secs(5));
    let outcomes = host.execute(&d, &plan, &options).await;
    assert!(matches!(outcomes[&1], Outcome::Done { .. }), "{outcomes:?}");
    assert_eq!(outcomes[&2], Outcome::Cancelled);
    assert_eq!(host.fake.container_names(), ["a-1"]);
    assert_eq!(host.fake.now(), secs(5), "the pause ended when tend stopped");
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_an_await_even_while_the_engine_does_not_answer() {
    let d = plain(&["a"]);
    let host = Host::new();
    host.fake.add_running(SCOPE, &d).hangs(Op::Probe, "a-1");
    let options = host.options(1);
    let plan = plan(vec![step(1, await_("a-1", Condition::Healthy, secs(600)), &[])]);
    stop_after(&options.stop, secs(2));
    let outcomes = host.execute(&d, &plan, &options).await;
    // The wait was given up: a failure of that step (not "not run"), saying why.
    assert_eq!(error(outcomes.get(&1)), "tend is stopping");
    assert_eq!(host.fake.now(), secs(2));
    assert_eq!(host.fake.calls_of(Op::Probe)[0].ended, None, "the probe never answered");
}

// ---- rollout pacing --------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_paused_step_starts_its_pause_after_its_prerequisite_and_the_pause_holds_no_slot() {
    let d = plain(&["a", "b"]);
    let host = Host::new();
    host.fake.add_image("img:1", "sha256:1").takes(Op::Create, ANY, START).takes(Op::Create, "b-1", secs(5));
    let plan = plan(vec![
        step(1, create("a", 1), &[]),
        paused(step(2, create("a", 2), &[1]), secs(10)),
        step(3, create("b", 1), &[]),
    ]);
    let outcomes = host.execute(&d, &plan, &host.options(1)).await;
    assert!(done(&outcomes), "{outcomes:?}");
    let (a1, a2, b1) = (host.call(Op::Create, "a-1"), host.call(Op::Create, "a-2"), host.call(Op::Create, "b-1"));
    assert_eq!(a2.began, a1.ended.expect("ended") + secs(10), "the pause runs from the prerequisite's end");
    assert_eq!(b1.began, a1.ended.expect("ended"), "the one slot went to b-1 while a-2 paused");
    assert!(b1.ended.expect("ended") < a2.began);
}

// ---- awaits ------------------------------------------------------------------------------------

/// What a container does after its start: (ms after it, what).
type Script = &'static [(u64, Becomes)];

/// A host where `a-1` (a service with a health check) runs, `starting`, and follows `script`.
fn awaiting(script: Script) -> (Host, Desired) {
    let d = desired(&svc("a", "healthcheck: {command: [ok]}"));
    let host = Host::new();
    for (after, what) in script {
        host.fake.becomes("a-1", Duration::from_millis(*after), *what);
    }
    let mut c = FakeContainer::running(SCOPE, &d.services["a"], 1, "sha256:1");
    c.health = crate::reconcile::model::Health::Starting;
    host.fake.add_image("img:1", "sha256:1").add_container(c);
    (host, d)
}

#[tokio::test(start_paused = true)]
async fn an_await_on_a_container_that_becomes_healthy_in_time_passes() {
    let (host, d) = awaiting(&[(3_000, Becomes::Healthy)]);
    let plan = plan(vec![step(1, await_("a-1", Condition::Healthy, secs(5)), &[])]);
    let outcomes = host.execute(&d, &plan, &host.options(1)).await;
    assert!(done(&outcomes), "{outcomes:?}");
    let last = host.fake.calls_of(Op::Probe).last().and_then(|c| c.ended).expect("probed");
    assert!(last >= secs(3) && last < secs(3) + Duration::from_millis(400), "done at {last:?}");
}

#[tokio::test(start_paused = true)]
async fn an_await_fails_as_soon_as_its_condition_can_no_longer_be_met() {
    // (condition, script of a-1, the step's outcome)
    let rows: [(Condition, Script, Result<(), &str>); 5] = [
        (
            Condition::Healthy,
            &[(2_000, Becomes::Unhealthy)],
            Err("a-1 will not become healthy: its health check fails"),
        ),
        (Condition::Healthy, &[(2_000, Becomes::Exited(3))], Err("a-1 will not become healthy: it exited with code 3")),
        (Condition::Started, &[(2_000, Becomes::Exited(1))], Ok(())),
        (Condition::Completed, &[(2_000, Becomes::Exited(0))], Ok(())),
        (
            Condition::Completed,
            &[(2_000, Becomes::Exited(2))],
            Err("a-1 will not become completed: it exited with code 2"),
        ),
    ];
    for (condition, script, expected) in rows {
        let (host, d) = awaiting(script);
        let plan = plan(vec![step(1, await_("a-1", condition, secs(60)), &[])]);
        let outcomes = host.execute(&d, &plan, &host.options(1)).await;
        match expected {
            Ok(()) => assert!(done(&outcomes), "{condition}: {outcomes:?}"),
            Err(e) => assert_eq!(error(outcomes.get(&1)), e, "{condition}"),
        }
        assert!(host.fake.now() < secs(3), "{condition}: decided at {:?}, long before the timeout", host.fake.now());
    }
}

#[tokio::test(start_paused = true)]
async fn an_await_for_a_service_waits_for_every_one_of_its_instances() {
    let d = desired(&svc("a", "replicas: 2\nhealthcheck: {command: [ok]}"));
    let host = Host::new();
    host.fake.becomes("a-1", secs(1), Becomes::Healthy).becomes("a-2", secs(4), Becomes::Healthy);
    for i in 1..=2 {
        let mut c = FakeContainer::running(SCOPE, &d.services["a"], i, "sha256:1");
        c.health = crate::reconcile::model::Health::Starting;
        host.fake.add_container(c);
    }
    let all =
        |timeout| Action::Await { service: "a".into(), name: None, condition: Condition::Healthy, timeout_ms: timeout };
    let outcomes = host.execute(&d, &plan(vec![step(1, all(10_000), &[])]), &host.options(1)).await;
    assert!(done(&outcomes), "{outcomes:?}");
    assert!(host.fake.now() >= secs(4), "done at {:?}, before a-2 was healthy", host.fake.now());
    // A service without instances is never ready.
    let none = Action::Await { service: "b".into(), name: None, condition: Condition::Started, timeout_ms: 1_000 };
    let outcomes = host.execute(&d, &plan(vec![step(1, none, &[])]), &host.options(1)).await;
    assert!(error(outcomes.get(&1)).ends_with("(last seen: no instances of b)"), "{outcomes:?}");
}

// ---- pulls, locks, pids, engines -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_pull_comes_before_the_creates_that_need_it_and_a_failed_pull_skips_them() {
    let d = desired(&(svc("a", "") + &svc("b", "replicas: 2") + &svc("c", "image: img:2")));
    let host = Host::new();
    host.fake.takes(Op::Pull, ANY, secs(5)).fails(Op::Pull, "img:2", EngineErrorKind::Unavailable);
    let (plan, outcomes) = host.pass(&d, &host.options(4)).await;
    let pulls: Vec<String> = host.fake.calls_of(Op::Pull).into_iter().map(|c| c.object).collect();
    assert_eq!(pulls, ["img:1", "img:2"], "each image once");
    let pulled = host.call(Op::Pull, "img:1");
    for name in ["a-1", "b-1", "b-2"] {
        assert!(host.call(Op::Create, name).seq.0 > pulled.seq.1.expect("ended"), "{name} before its image");
    }
    let pull_c = plan.steps.iter().find(|s| matches!(&s.action, Action::PullImage { image } if image == "img:2"));
    let pull_c = pull_c.expect("a pull of img:2").id;
    assert_eq!(error(outcomes.get(&pull_c)), "pulling image img:2: injected: img:2");
    let create_c = plan.steps.iter().find(|s| s.action == create("c", 1)).expect("a create of c-1").id;
    assert_eq!(outcomes[&create_c], Outcome::Skipped { because_of: pull_c });
    assert_eq!(host.fake.container_names(), ["a-1", "b-1", "b-2"]);
}

#[tokio::test(start_paused = true)]
async fn a_gone_instance_loses_its_lock_file_and_a_started_one_has_its_pid_recorded() {
    let old = services(1, "a", "  replicas: 3\n");
    let new = services(1, "b", "");
    let (host, _, outcomes) = change(&old, &new, 2).await;
    assert!(done(&outcomes), "{outcomes:?}");
    let locks = host.options(1).host.locks;
    let lock = |key: &str| locks.dir().join(format!("{key}.lock"));
    assert!(!lock("s01-2").exists() && !lock("s01-3").exists(), "scaled down: their lock files went");
    assert!(lock("s01-1").exists(), "replaced: its lock file stays");
    let pid = host.fake.container("s01-1").and_then(|c| c.pid);
    assert!(pid.is_some());
    assert_eq!(locks.pid("s01-1").expect("read"), pid, "the new container's pid");
}

#[tokio::test(start_paused = true)]
async fn a_target_under_maintenance_is_left_alone_and_its_step_fails_saying_who_holds_it() {
    let d = plain(&["a"]);
    let host = Host::new();
    host.fake.add_running(SCOPE, &d);
    let options = host.options(1);
    let holder = crate::maintain::locks::Holder {
        user: "alice".into(),
        pid: std::process::id(),
        ..crate::maintain::locks::Holder::unknown()
    };
    let _held = options.host.locks.take_exclusive(&["a-1".to_string()], &holder, false).expect("locked");
    let outcomes = host.execute(&d, &plan(vec![step(1, remove("a", 1), &[])]), &options).await;
    assert_eq!(error(outcomes.get(&1)), "a-1 is under maintenance (by alice): left alone");
    assert!(host.fake.calls_of(Op::StopAndRemove).is_empty());
    assert_eq!(host.fake.container_names(), ["a-1"]);
}

#[tokio::test(start_paused = true)]
async fn a_step_for_an_engine_the_host_lacks_fails_saying_so() {
    let host = Host::new();
    let engines = Arc::new(Engines::<Fake, Fake> { docker: Some(host.fake.clone()), systemd: None });
    let plan = plan(vec![step(1, Action::StartUnit { unit: "web.service".into() }, &[])]);
    let outcomes = execute(engines, Arc::new(Desired::default()), &plan, &host.options(1)).await;
    assert_eq!(error(outcomes.get(&1)), "systemd (as PID 1) is not available on this host");
    assert!(host.fake.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_hook_job_that_fails_keeps_the_new_version_from_starting() {
    let d = plain(&["a"]);
    let host = Host::new();
    host.fake.add_image("img:1", "sha256:1");
    // The options' tend binary is /bin/false: the job exits with code 1.
    let plan = plan(vec![step(1, Action::RunJob { job: "migrate".into() }, &[]), step(2, create("a", 1), &[1])]);
    let outcomes = host.execute(&d, &plan, &host.options(1)).await;
    assert_eq!(
        error(outcomes.get(&1)),
        "hook job migrate failed, so the new version was not started: it exited with code 1 \
         (see `tend job history migrate`)"
    );
    assert_eq!(outcomes[&2], Outcome::Skipped { because_of: 1 });
    assert!(host.fake.calls_of(Op::Create).is_empty());
}

// ---- whole passes ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_new_systemd_service_is_written_reloaded_enabled_and_started_and_its_pid_recorded() {
    let d = desired(
        "apiVersion: tend/v1\nkind: Service\nmetadata: {name: web}\nspec: {runtime: systemd, exec: [/bin/sleep, infinity]}\n",
    );
    let host = Host::new();
    let options = host.options(4);
    let (_, outcomes) = host.pass(&d, &options).await;
    assert!(done(&outcomes), "{outcomes:?}");
    let order: Vec<Op> = host.fake.calls().iter().map(|c| c.op).filter(|op| op.changes()).collect();
    assert_eq!(order, [Op::WriteUnitFile, Op::DaemonReload, Op::Enable, Op::StartUnit]);
    let unit = host.fake.unit("web.service").expect("touched");
    assert_eq!((unit.active.as_str(), unit.enabled), ("active", true));
    assert!(!host.fake.needs_reload("web.service"), "systemd read the file as written");
    assert!(host.fake.unit_file(&options.host.unit_dir, "web.service").is_some_and(|f| f.contains("X-Tend-")));
    assert_eq!(options.host.locks.pid("web.service").expect("read"), unit.main_pid);
    assert!(host.plan(&d, &options).await.is_empty(), "converged");
}

#[tokio::test(start_paused = true)]
async fn a_pass_from_nothing_converges_so_the_next_plan_is_empty() {
    let d = desired(
        &(svc("db", "volumes: ['data:/data']\nhealthcheck: {command: [ok]}")
            + &svc("web", "replicas: 2\nnetworks: [front]\ndependsOn: [{name: db, condition: healthy}]")
            + &svc("api", "image: api:3\nnetworks: [front]")),
    );
    let host = Host::new();
    host.fake.takes(Op::Create, ANY, START).takes(Op::Pull, ANY, secs(4));
    let options = host.options(8);
    let (plan, outcomes) = host.pass(&d, &options).await;
    assert!(done(&outcomes), "{outcomes:?}");
    assert!(host.fake.calls().iter().all(|c| c.failed.is_none()), "{:#?}", host.fake.calls());
    assert_eq!(host.fake.container_names(), ["api-1", "db-1", "web-1", "web-2"]);
    assert!(host.fake.volumes().contains("data") && host.fake.network("front").is_some());
    // web waited for db to be healthy, which the fake makes it a while after its start.
    let healthy = host.call(Op::Create, "db-1").ended.expect("ended") + crate::engine::fake::HEALTHY_AFTER;
    assert!(host.call(Op::Create, "web-1").began >= healthy, "{:#?}", plan.steps);
    let again = host.plan(&d, &options).await;
    assert!(again.is_empty(), "{:#?}", again.steps);
}

#[tokio::test(start_paused = true)]
async fn a_start_first_replacement_starts_the_new_container_before_the_old_one_stops() {
    let first = "rollout: {order: start-first}\nhealthcheck: {command: [ok]}";
    let old = desired(&svc("a", &format!("command: [old]\n{first}")));
    let new = desired(&svc("a", &format!("command: [new]\n{first}")));
    let host = Host::new();
    host.fake.add_running(SCOPE, &old).takes(Op::StopAndRemove, ANY, STOP).takes(Op::Create, ANY, START);
    let options = host.options(4);
    let (_, outcomes) = host.pass(&new, &options).await;
    assert!(done(&outcomes), "{outcomes:?}");
    let next_up = host.call(Op::Create, "a-1-next").ended.expect("ended");
    assert!(host.call(Op::StopAndRemove, "a-1").began >= next_up + crate::engine::fake::HEALTHY_AFTER);
    assert!(host.fake.call(Op::Rename, "a-1-next → a-1").is_some());
    let now = host.fake.container("a-1").expect("a-1");
    assert_eq!(now.labels.get(crate::reconcile::model::LABEL_HASH), Some(&new.services["a"].hash));
    assert!(host.plan(&new, &options).await.is_empty(), "converged");
}
