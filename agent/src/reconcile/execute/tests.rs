//! The executor against a fake container engine, in tokio's paused time: stops and starts
//! take (virtual) time, and the fake counts how many services are down at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tend_specs::{Desired, Service};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::engine::systemd::SystemdEngine;
use crate::engine::{ContainerEngine, EngineError, Probe};
use crate::reconcile::apply::{Options, plan_for};
use crate::reconcile::model::{Container, Health, Observed, RunState};

/// How long the fake takes to stop a container, and to create and start one.
const STOP: Duration = Duration::from_secs(3);
const START: Duration = Duration::from_secs(1);

/// What the fake saw: per service, when it went down and came up (virtual ms since the
/// test began), and the most services down at once.
#[derive(Debug, Default)]
struct Seen {
    down: BTreeSet<String>,
    most_down: usize,
    went_down: BTreeMap<String, u64>,
    came_up: BTreeMap<String, u64>,
}

/// A container engine whose containers are only names in a set.
struct Fake {
    t0: tokio::time::Instant,
    seen: Mutex<Seen>,
    /// When set, every create fails with an error that says this (an echoed request).
    echo: Option<String>,
}

impl Fake {
    fn new() -> Self {
        Self { t0: tokio::time::Instant::now(), seen: Mutex::new(Seen::default()), echo: None }
    }

    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ContainerEngine for Fake {
    async fn observe(
        &self,
        _: &str,
        _: &BTreeSet<String>,
        _: &BTreeSet<String>,
        _: bool,
    ) -> Result<Observed, EngineError> {
        Ok(Observed::default())
    }
    async fn pull(&self, _: &str) -> Result<(), EngineError> {
        Ok(())
    }
    async fn create_network(&self, _: &str, _: &str) -> Result<(), EngineError> {
        Ok(())
    }
    async fn remove_network(&self, _: &str, _: &str) -> Result<(), EngineError> {
        Ok(())
    }
    async fn create_volume(&self, _: &str, _: &str) -> Result<(), EngineError> {
        Ok(())
    }
    async fn create_and_start(&self, _: &str, s: &Service, _: u32, name: &str) -> Result<String, EngineError> {
        if let Some(echo) = &self.echo {
            return Err(EngineError {
                op: "creating container",
                object: name.to_string(),
                kind: crate::engine::EngineErrorKind::Refused,
                source: Box::new(std::io::Error::other(echo.clone())),
            });
        }
        tokio::time::sleep(START).await;
        let now = self.now_ms();
        let mut seen = self.seen();
        seen.down.remove(&s.name);
        seen.came_up.insert(s.name.clone(), now);
        Ok(format!("id-{}", s.name))
    }
    async fn start(&self, _: &str, _: &str) -> Result<(), EngineError> {
        Ok(())
    }
    async fn stop_and_remove(&self, _: &str, name: &str, _: Option<u64>) -> Result<(), EngineError> {
        let service = name.rsplit_once('-').map_or(name, |(s, _)| s).to_string();
        {
            let now = self.now_ms();
            let mut seen = self.seen();
            seen.down.insert(service.clone());
            seen.most_down = seen.most_down.max(seen.down.len());
            seen.went_down.insert(service, now);
        }
        tokio::time::sleep(STOP).await;
        Ok(())
    }
    async fn stop(&self, _: &str, _: &str, _: Option<u64>) -> Result<(), EngineError> {
        Ok(())
    }
    async fn rename(&self, _: &str, _: &str) -> Result<(), EngineError> {
        Ok(())
    }
    async fn probe(&self, _: &str) -> Result<Option<Probe>, EngineError> {
        Ok(Some(Probe { state: RunState::Running, health: Health::None, exit_code: None, pid: None }))
    }
    async fn instances_of(&self, _: &str, _: &str) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }
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
    tend_specs::load_str(Path::new("t.yaml"), &docs.join("---\n")).unwrap_or_else(|d| panic!("bad test spec: {d:?}"))
}

/// Running containers of every instance of `old`'s services, made from `old`'s specs.
fn running(old: &Desired) -> Observed {
    let mut o = Observed::default();
    for s in old.services.values() {
        o.images.insert("img:1".into(), "sha256:aaaa".into());
        for i in 1..=s.spec.replicas {
            o.containers.push(Container {
                id: format!("id-{}-{i}", s.name),
                name: crate::reconcile::model::instance_name(&s.name, i),
                service: s.name.clone(),
                instance: i,
                hash: s.hash.clone(),
                fields: s.field_hashes.clone(),
                image_id: "sha256:aaaa".into(),
                state: RunState::Running,
                health: Health::None,
                exit_code: None,
            });
        }
    }
    o
}

fn options(locks: &Path, parallel: usize) -> Options {
    let host = crate::host::Host {
        scope: "t".into(),
        state_dir: locks.join("state"),
        locks: crate::maintain::locks::LockDir::new(locks),
        unit_dir: locks.join("units"),
        env_dir: locks.join("env"),
        tend_bin: "/bin/false".into(),
        timeouts: crate::engine::Timeouts::default(),
    };
    let mut options = Options::new(host, locks.join("specs"), parallel, CancellationToken::new());
    options.ignore_windows = true;
    options
}

/// Plans the change from `old` to `new` and executes it with `parallel` slots.
async fn change(old: &Desired, new: Desired, parallel: usize) -> (Arc<Fake>, Plan, BTreeMap<usize, Outcome>) {
    let dir = tempfile::tempdir().expect("a lock directory");
    let options = options(dir.path(), parallel);
    let observed = running(old);
    let plan = plan_for(&new, &observed, &crate::reconcile::state::State::default(), &options, &BTreeSet::new());
    let fake = Arc::new(Fake::new());
    let engines = Arc::new(Engines::<Fake, SystemdEngine> { docker: Some(fake.clone()), systemd: None });
    let outcomes = execute(engines, Arc::new(new), &plan, &options).await;
    (fake, plan, outcomes)
}

#[tokio::test(start_paused = true)]
async fn changing_every_service_takes_down_at_most_parallel_at_once_each_for_one_stop_and_one_start() {
    let (fake, plan, outcomes) = change(&services(50, "a", ""), services(50, "b", ""), 8).await;
    assert_eq!(plan.steps.len(), 100, "a remove and a create per service");
    assert!(outcomes.values().all(|o| matches!(o, Outcome::Done { .. })), "{outcomes:?}");
    let seen = fake.seen();
    assert_eq!(seen.came_up.len(), 50);
    assert_eq!(seen.most_down, 8, "never more services down at once than steps may run at once");
    for (service, down) in &seen.went_down {
        let gap = seen.came_up[service] - down;
        assert_eq!(gap, (STOP + START).as_millis() as u64, "{service} was down for more than its own stop and start");
    }
}

#[tokio::test(start_paused = true)]
async fn one_slot_replaces_services_one_after_another() {
    let (fake, _, outcomes) = change(&services(5, "a", ""), services(5, "b", ""), 1).await;
    assert!(outcomes.values().all(|o| matches!(o, Outcome::Done { .. })), "{outcomes:?}");
    let seen = fake.seen();
    assert_eq!(seen.most_down, 1);
    // Each service is back before the next one goes down.
    let mut order: Vec<(u64, u64)> = seen.went_down.iter().map(|(s, d)| (*d, seen.came_up[s])).collect();
    order.sort();
    assert!(order.windows(2).all(|w| w[0].1 <= w[1].0), "{order:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rollout_keeps_max_unavailable_and_its_pause_with_slots_to_spare() {
    let paced = "  replicas: 4\n  rollout: {maxUnavailable: 2, interval: 10s}\n";
    let (fake, plan, outcomes) = change(&services(1, "a", paced), services(1, "b", paced), 8).await;
    assert!(outcomes.values().all(|o| matches!(o, Outcome::Done { .. })), "{outcomes:?}");
    assert_eq!(plan.steps.iter().filter(|s| s.pause_ms == 10_000).count(), 2, "the second batch is paced");
    // The fake counts services, and one service's instances share a name: count the time
    // instead. Two batches of two, the second 10 s after the first is up.
    let seen = fake.seen();
    assert_eq!(seen.came_up["s01"], (STOP + START + Duration::from_secs(10) + STOP + START).as_millis() as u64);
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
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("a"), "alpha-secret\n").expect("secret");
    std::fs::write(dir.path().join("b"), "beta-secret\n").expect("secret");
    let doc = |name: &str, file: &str| {
        format!(
            "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: img:1\n  env: {{PW: {{fromFile: {file}}}}}\n"
        )
    };
    std::fs::write(dir.path().join("s.yaml"), doc("a", "a") + &doc("b", "b")).expect("specs");
    let desired = Arc::new(tend_specs::load_path(dir.path()).unwrap_or_else(|d| panic!("{d:?}")));
    let options = options(dir.path(), 2);
    let plan = plan_for(
        &desired,
        &Observed::default(),
        &crate::reconcile::state::State::default(),
        &options,
        &BTreeSet::new(),
    );
    // The engine echoes both services' environments in each error, as an echo of a
    // request holding another's secret would.
    let fake = Arc::new(Fake { echo: Some("bad: [\"PW=alpha-secret\",\"PW=beta-secret\"]".into()), ..Fake::new() });
    let engines = Arc::new(Engines::<Fake, SystemdEngine> { docker: Some(fake), systemd: None });
    let outcomes = execute(engines, desired, &plan, &options).await;
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
