//! An in-memory engine for unit tests, behind both narrow traits ([`ContainerEngine`] and
//! [`UnitEngine`]): containers, networks, volumes, images, unit files and units, held in
//! memory and changed by the calls as the real engines would change them.
//!
//! Run its tests under `tokio::time::pause()`: calls take the virtual time a test gives them
//! ([`Fake::takes`]), fail ([`Fake::fails`]) or never answer ([`Fake::hangs`]) where it says
//! so, and containers and units change on their own after a start ([`Fake::becomes`]). Every
//! call is recorded in order with its virtual begin and end ([`Fake::calls`]), so a test
//! asserts what was done, in which order and how much at once ([`most_at_once`]).
//!
//! It refuses what the real engines refuse, so that a plan that works only against a lenient
//! fake fails here too: a container name already taken, an image not on the host, a network
//! that does not exist yet, a network still in use, a rename onto a taken name, starting a
//! unit that has no file. It does not bound calls: bounding is the adapters' job (see
//! [`crate::engine::bounded`]), so a hung call here hangs for good.
//!
//! Extending it with a new trait method: add an [`Op`], then implement the method as one
//! [`Fake::act`] call whose effect is a method of the world.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tend_specs::{Desired, Service};
use tokio::time::Instant;

use crate::engine::systemd;
use crate::engine::unit::{
    ActiveState, BusErrorKind, Interest, JobResult, SystemdError, UnitEngine, UnitFile, UnitState, Wakeups,
};
use crate::engine::{ContainerEngine, EngineError, EngineErrorKind, NoAnswer, Probe, Timeouts};
use crate::reconcile::model::{
    Container, Health, LABEL_FIELDS, LABEL_HASH, LABEL_INSTANCE, LABEL_KIND, LABEL_NAME, LABEL_SCOPE, Network,
    Observed, RunState, decode_fields, instance_name,
};
use crate::reconcile::plan::normalize_image;

/// Matches every object in [`Fake::takes`], [`Fake::fails`] and [`Fake::hangs`]; a rule
/// naming the object wins over one with `ANY`.
pub const ANY: &str = "*";

/// How long a container with a health check stays `starting` after a start before it is
/// healthy, unless [`Fake::becomes`] says otherwise for it.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Every call of either trait: what a test configures, and what the log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// [`ContainerEngine::observe`] (object: the scope).
    Observe,
    /// [`ContainerEngine::pull`] (the image reference as given).
    Pull,
    /// [`ContainerEngine::create_network`] (the network).
    CreateNetwork,
    /// [`ContainerEngine::remove_network`] (the network's name).
    RemoveNetwork,
    /// [`ContainerEngine::create_volume`] (the volume).
    CreateVolume,
    /// [`ContainerEngine::create_and_start`] (the container name).
    Create,
    /// [`ContainerEngine::start`] (the container name).
    Start,
    /// [`ContainerEngine::stop_and_remove`] (the container name).
    StopAndRemove,
    /// [`ContainerEngine::stop`] (the container name).
    Stop,
    /// [`ContainerEngine::rename`] (`FROM → TO`).
    Rename,
    /// [`ContainerEngine::probe`] (the name or ID asked about).
    Probe,
    /// [`ContainerEngine::instances_of`] (the service).
    InstancesOf,
    /// [`UnitEngine::available`] (`systemd`).
    Available,
    /// [`UnitEngine::list_unit_files`] (the directory).
    ListUnitFiles,
    /// [`UnitEngine::write_unit_file`] (the unit).
    WriteUnitFile,
    /// [`UnitEngine::remove_unit_file`] (the unit).
    RemoveUnitFile,
    /// [`UnitEngine::daemon_reload`] (`the systemd manager`).
    DaemonReload,
    /// [`UnitEngine::enable`] (the units, space-separated).
    Enable,
    /// [`UnitEngine::disable`] (the units, space-separated).
    Disable,
    /// [`UnitEngine::start`] (the unit).
    StartUnit,
    /// [`UnitEngine::stop`] (the unit).
    StopUnit,
    /// [`UnitEngine::restart`] (the unit).
    RestartUnit,
    /// [`UnitEngine::states`] (the units, space-separated).
    States,
    /// [`UnitEngine::watch`] (`systemd`).
    Watch,
}

impl Op {
    /// The operation as the real adapters name it in their errors (`creating container`).
    pub fn doing(self) -> &'static str {
        match self {
            Op::Observe => "listing",
            Op::Pull => "pulling image",
            Op::CreateNetwork => "creating network",
            Op::RemoveNetwork => "removing network",
            Op::CreateVolume => "creating volume",
            Op::Create => "creating container",
            Op::Start => "starting container",
            Op::StopAndRemove | Op::Stop => "stopping container",
            Op::Rename => "renaming container",
            Op::Probe => "inspecting container",
            Op::InstancesOf => "listing containers of",
            Op::Available => "reading the version of",
            Op::ListUnitFiles => "listing unit directory",
            Op::WriteUnitFile => "writing unit file",
            Op::RemoveUnitFile => "removing unit file",
            Op::DaemonReload => "reloading",
            Op::Enable => "enabling units",
            Op::Disable => "disabling units",
            Op::StartUnit => "starting unit",
            Op::StopUnit => "stopping unit",
            Op::RestartUnit => "restarting unit",
            Op::States => "listing units",
            Op::Watch => "subscribing to",
        }
    }

    /// Whether the call changes something (the others only look).
    pub fn changes(self) -> bool {
        !matches!(
            self,
            Op::Observe | Op::Probe | Op::InstancesOf | Op::Available | Op::ListUnitFiles | Op::States | Op::Watch
        )
    }
}

/// What a container or unit does on its own, some time after it (re)started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Becomes {
    /// Its health check has not passed yet (a script of only this: it never becomes healthy).
    Starting,
    /// Its health check passes.
    Healthy,
    /// Its health check fails.
    Unhealthy,
    /// Its main process exits with this code.
    Exited(i64),
}

/// One call, as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// What was called.
    pub op: Op,
    /// On what (see [`Op`]).
    pub object: String,
    /// When it began: virtual time since the fake was made.
    pub began: Duration,
    /// When it returned; `None` while it runs, or when it never returns ([`Fake::hangs`]).
    pub ended: Option<Duration>,
    /// How it failed, when it did (a fault a test injected, or a refusal the engine makes).
    pub failed: Option<EngineErrorKind>,
    /// Its begin and end among all calls' begins and ends: orders what happened within one
    /// virtual instant.
    pub seq: (u64, Option<u64>),
}

impl Call {
    /// Whether this is `op` on `object`.
    pub fn is(&self, op: Op, object: &str) -> bool {
        self.op == op && self.object == object
    }
}

/// The most calls of `calls` running at any one moment (a call that never ended runs on).
pub fn most_at_once<'a>(calls: impl IntoIterator<Item = &'a Call>) -> usize {
    let mut edges: Vec<(u64, bool)> = Vec::new();
    for c in calls {
        edges.push((c.seq.0, true));
        edges.extend(c.seq.1.map(|e| (e, false)));
    }
    edges.sort();
    let (mut now, mut most) = (0usize, 0usize);
    for (_, begins) in edges {
        now = if begins { now + 1 } else { now.saturating_sub(1) };
        most = most.max(now);
    }
    most
}

/// A container, as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeContainer {
    /// Its ID (`c1`, `c2`, ...).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its labels (tend's identity among them, for the containers tend creates).
    pub labels: BTreeMap<String, String>,
    /// The image reference it was created from.
    pub image: String,
    /// The image ID it runs.
    pub image_id: String,
    /// The networks it is attached to.
    pub networks: Vec<String>,
    /// Run state.
    pub state: RunState,
    /// Health.
    pub health: Health,
    /// Exit code, once exited.
    pub exit_code: Option<i64>,
    /// Its main process's pid while it runs.
    pub pid: Option<u32>,
    /// Whether it has a health check: each start makes it `starting`.
    pub healthcheck: bool,
    /// When it last started.
    pub started: Option<Instant>,
    /// What is still to happen to it, by time after its last start.
    pub script: Vec<(Duration, Becomes)>,
}

impl FakeContainer {
    /// A running instance of `service` in `scope`, labelled as tend labels it, from the image
    /// `image_id` (make the image present with [`Fake::add_image`]).
    pub fn running(scope: &str, service: &Service, instance: u32, image_id: &str) -> Self {
        FakeContainer {
            id: format!("id-{}", instance_name(&service.name, instance)),
            name: instance_name(&service.name, instance),
            labels: crate::engine::docker::service_labels(scope, service, instance),
            image: service.spec.image.clone().unwrap_or_default(),
            image_id: image_id.to_string(),
            networks: service.spec.networks.clone(),
            state: RunState::Running,
            health: if service.spec.healthcheck.is_some() { Health::Healthy } else { Health::None },
            exit_code: None,
            pid: None,
            healthcheck: service.spec.healthcheck.is_some(),
            started: None,
            script: Vec::new(),
        }
    }

    /// Applies what its script says has happened by `now`.
    fn settle(&mut self, now: Instant) {
        let Some(started) = self.started else { return };
        while self.state == RunState::Running && self.script.first().is_some_and(|(after, _)| started + *after <= now) {
            match self.script.remove(0).1 {
                Becomes::Starting => self.health = Health::Starting,
                Becomes::Healthy => self.health = Health::Healthy,
                Becomes::Unhealthy => self.health = Health::Unhealthy,
                Becomes::Exited(code) => {
                    (self.state, self.exit_code, self.pid) = (RunState::Exited, Some(code), None);
                }
            }
        }
    }

    /// tend's view of it, as the Docker adapter's listing converts it.
    fn observed(&self) -> Container {
        let label = |k: &str| self.labels.get(k).cloned().unwrap_or_default();
        Container {
            id: self.id.clone(),
            name: self.name.clone(),
            service: label(LABEL_NAME),
            instance: label(LABEL_INSTANCE).parse().unwrap_or(0),
            hash: label(LABEL_HASH),
            fields: decode_fields(&label(LABEL_FIELDS)),
            image_id: self.image_id.clone(),
            state: self.state,
            health: self.health,
            exit_code: if matches!(self.state, RunState::Exited | RunState::Dead) { self.exit_code } else { None },
        }
    }
}

/// A network, as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeNetwork {
    /// Its ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The tend scope that created it; `None` for another's.
    pub scope: Option<String>,
}

/// A systemd unit's live state, as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeUnit {
    /// Its name.
    pub name: String,
    /// `ActiveState`.
    pub active: ActiveState,
    /// `SubState`.
    pub sub_state: String,
    /// `Result`.
    pub result: String,
    /// Enabled at boot.
    pub enabled: bool,
    /// `MainPID` while a service runs.
    pub main_pid: Option<u32>,
    /// `ExecMainStatus`, once the main process exited.
    pub exec_main_status: Option<i32>,
    /// When it last started.
    pub started: Option<Instant>,
    /// What is still to happen to it, by time after its last start.
    pub script: Vec<(Duration, Becomes)>,
}

impl FakeUnit {
    fn new(name: &str) -> Self {
        FakeUnit {
            name: name.to_string(),
            active: ActiveState::Inactive,
            sub_state: "dead".into(),
            result: "success".into(),
            enabled: false,
            main_pid: None,
            exec_main_status: None,
            started: None,
            script: Vec::new(),
        }
    }

    /// Applies what its script says has happened by `now` (health does not apply to units).
    fn settle(&mut self, now: Instant) {
        let Some(started) = self.started else { return };
        while self.active == ActiveState::Active && self.script.first().is_some_and(|(a, _)| started + *a <= now) {
            if let Becomes::Exited(code) = self.script.remove(0).1 {
                let code = i32::try_from(code).unwrap_or(i32::MAX);
                self.active = if code == 0 { ActiveState::Inactive } else { ActiveState::Failed };
                self.sub_state = if code == 0 { "dead" } else { "failed" }.into();
                self.result = if code == 0 { "success" } else { "exit-code" }.into();
                (self.exec_main_status, self.main_pid) = (Some(code), None);
            }
        }
    }
}

/// A fault a test injects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// Fails with this kind, and this message (else one naming the call) as the cause.
    Fails(EngineErrorKind, Option<String>),
    Hangs,
}

/// A refusal, before it becomes the engine's own error.
#[derive(Debug)]
pub struct Refusal {
    kind: EngineErrorKind,
    message: String,
}

fn refuse<T>(kind: EngineErrorKind, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { kind, message: message.into() })
}

/// The engine error a refusal of `op` on `object` becomes, as the real adapter would say it.
pub trait FromRefusal {
    /// The error.
    fn from_refusal(op: Op, object: &str, refusal: Refusal) -> Self;
}

impl FromRefusal for EngineError {
    fn from_refusal(op: Op, object: &str, r: Refusal) -> Self {
        let source: Box<dyn std::error::Error + Send + Sync> = match r.kind {
            EngineErrorKind::Timeout => Box::new(NoAnswer { engine: "Docker", waited: Timeouts::default().call }),
            _ => Box::new(std::io::Error::other(r.message)),
        };
        EngineError { op: op.doing(), object: object.to_string(), kind: r.kind, source }
    }
}

impl FromRefusal for SystemdError {
    /// A job that fails is a failed job; a file operation an I/O error; anything else an
    /// error on the bus of the refusal's kind.
    fn from_refusal(op: Op, object: &str, r: Refusal) -> Self {
        let (op_name, object) = (op.doing(), object.to_string());
        let message = r.message.clone();
        let bus = |kind| SystemdError::Bus {
            op: op_name,
            object: object.clone(),
            kind,
            source: Box::new(std::io::Error::other(message)),
        };
        match (r.kind, op) {
            (EngineErrorKind::Timeout, _) => SystemdError::Timeout {
                op: op_name,
                object: object.clone(),
                source: NoAnswer { engine: "systemd", waited: Timeouts::default().call },
            },
            (EngineErrorKind::Unavailable, _) => bus(BusErrorKind::Unavailable),
            (EngineErrorKind::NotFound, _) => bus(BusErrorKind::NotFound),
            (_, Op::StartUnit | Op::StopUnit | Op::RestartUnit) => {
                SystemdError::Job { op: op_name, unit: object.clone(), result: JobResult::Failed }
            }
            (_, Op::WriteUnitFile | Op::RemoveUnitFile | Op::ListUnitFiles) => SystemdError::File {
                op: op_name,
                path: PathBuf::from(&object),
                source: std::io::Error::other(r.message),
            },
            _ => bus(BusErrorKind::Refused),
        }
    }
}

/// Everything the fake holds: live state, what tests configured, and the log.
#[derive(Debug, Default)]
pub struct World {
    containers: BTreeMap<String, FakeContainer>,
    networks: BTreeMap<String, FakeNetwork>,
    volumes: BTreeSet<String>,
    /// Normalized reference → image ID.
    images: BTreeMap<String, String>,
    /// Unit files by path.
    unit_files: BTreeMap<PathBuf, String>,
    /// Unit name → the content systemd read at the last reload.
    loaded: BTreeMap<String, String>,
    units: BTreeMap<String, FakeUnit>,
    durations: BTreeMap<(Op, String), Duration>,
    faults: BTreeMap<(Op, String), Fault>,
    scripts: BTreeMap<String, Vec<(Duration, Becomes)>>,
    calls: Vec<Call>,
    seq: u64,
    next_id: u64,
}

/// An in-memory container engine and systemd. Cheap to share: wrap it in an `Arc` and hand
/// the same one to both sides of [`crate::engine::Engines`], so one log holds every call.
#[derive(Debug)]
pub struct Fake {
    t0: Instant,
    world: Mutex<World>,
}

impl Default for Fake {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a rule for `rule` applies to a call on `object` (an object of several names
/// matches a rule for any of them).
fn applies(rule: &str, object: &str) -> bool {
    rule == ANY || rule == object || object.split(' ').any(|part| part == rule)
}

impl World {
    /// The rule of `op` for `object` in `rules`: one naming the object first, then `ANY`.
    fn rule<T: Clone>(rules: &BTreeMap<(Op, String), T>, op: Op, object: &str) -> Option<T> {
        let named = rules.iter().find(|((o, r), _)| *o == op && r != ANY && applies(r, object));
        named.or_else(|| rules.get_key_value(&(op, ANY.to_string()))).map(|(_, v)| v.clone())
    }

    fn tick(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn new_pid(&mut self) -> u32 {
        self.next_id += 1;
        1000 + u32::try_from(self.next_id).unwrap_or(u32::MAX - 1000)
    }

    /// The script of `name` (else of `owner`) for a start at `now`; a container with a
    /// health check and no script becomes healthy after [`HEALTHY_AFTER`].
    fn script_for(&self, name: &str, owner: &str, healthcheck: bool) -> Vec<(Duration, Becomes)> {
        let mut script = self
            .scripts
            .get(name)
            .or_else(|| self.scripts.get(owner))
            .cloned()
            .unwrap_or_else(|| if healthcheck { vec![(HEALTHY_AFTER, Becomes::Healthy)] } else { Vec::new() });
        script.sort_by_key(|(after, _)| *after);
        script
    }

    /// The container called `name_or_id`, settled at `now`.
    fn find(&mut self, name_or_id: &str, now: Instant) -> Option<&mut FakeContainer> {
        let key = match self.containers.contains_key(name_or_id) {
            true => Some(name_or_id.to_string()),
            false => self.containers.values().find(|c| c.id == name_or_id).map(|c| c.name.clone()),
        }?;
        let c = self.containers.get_mut(&key)?;
        c.settle(now);
        Some(c)
    }

    fn has_unit_file(&self, name: &str) -> bool {
        self.unit_files.keys().any(|p| p.file_name().is_some_and(|f| f == name))
    }

    fn unit(&mut self, name: &str, now: Instant) -> &mut FakeUnit {
        let u = self.units.entry(name.to_string()).or_insert_with(|| FakeUnit::new(name));
        u.settle(now);
        u
    }
}

/// The container side: what the calls do.
impl World {
    fn observe(
        &mut self,
        now: Instant,
        scope: &str,
        wanted: &BTreeSet<String>,
        images: &BTreeSet<String>,
        vols: bool,
    ) -> Observed {
        let mut o = Observed::default();
        for c in self.containers.values_mut() {
            c.settle(now);
            let label = |k: &str| c.labels.get(k).map(String::as_str);
            if label(LABEL_SCOPE) == Some(scope) {
                if !matches!(label(LABEL_KIND), Some("job" | "drill")) {
                    o.containers.push(c.observed());
                }
            } else if wanted.contains(&c.name) {
                o.foreign.insert(c.name.clone(), c.id.clone());
            }
        }
        o.networks = self
            .networks
            .values()
            .map(|n| Network { id: n.id.clone(), name: n.name.clone(), owned: n.scope.as_deref() == Some(scope) })
            .collect();
        if vols {
            o.volumes = self.volumes.clone();
        }
        for image in images {
            let reference = normalize_image(image);
            if let Some(id) = self.images.get(&reference) {
                o.images.insert(reference, id.clone());
            }
        }
        o
    }

    fn pull(&mut self, image: &str) {
        let reference = normalize_image(image);
        let id = format!("sha256:{reference}");
        self.images.entry(reference).or_insert(id);
    }

    fn create_network(&mut self, scope: &str, name: &str) {
        if !self.networks.contains_key(name) {
            let id = self.new_id("net");
            self.networks.insert(name.into(), FakeNetwork { id, name: name.into(), scope: Some(scope.into()) });
        }
    }

    fn remove_network(&mut self, id: &str, now: Instant) -> Result<(), Refusal> {
        let Some(name) = self.networks.values().find(|n| n.id == id).map(|n| n.name.clone()) else { return Ok(()) };
        let in_use = self.containers.values_mut().any(|c| {
            c.settle(now);
            c.state == RunState::Running && c.networks.contains(&name)
        });
        if in_use {
            return refuse(EngineErrorKind::Conflict, format!("network {name} has active endpoints"));
        }
        self.networks.remove(&name);
        Ok(())
    }

    fn create(
        &mut self,
        now: Instant,
        scope: &str,
        service: &Service,
        instance: u32,
        name: &str,
    ) -> Result<String, Refusal> {
        if self.containers.contains_key(name) {
            return refuse(EngineErrorKind::Conflict, format!("the container name {name} is already in use"));
        }
        let image = service.spec.image.clone().unwrap_or_default();
        let Some(image_id) = self.images.get(&normalize_image(&image)).cloned() else {
            return refuse(EngineErrorKind::NotFound, format!("no such image: {image}"));
        };
        if let Some(missing) = service.spec.networks.iter().find(|n| !self.networks.contains_key(*n)) {
            return refuse(EngineErrorKind::NotFound, format!("network {missing} not found"));
        }
        let mut c = FakeContainer::running(scope, service, instance, &image_id);
        (c.id, c.name, c.state, c.health) = (self.new_id("c"), name.to_string(), RunState::Created, Health::None);
        let id = c.id.clone();
        self.containers.insert(name.to_string(), c);
        self.start(now, &id)?;
        Ok(id)
    }

    fn start(&mut self, now: Instant, id: &str) -> Result<(), Refusal> {
        let pid = self.new_pid();
        let Some(c) = self.find(id, now) else {
            return refuse(EngineErrorKind::NotFound, format!("no such container: {id}"));
        };
        if c.state == RunState::Running {
            return Ok(());
        }
        let (name, owner, healthcheck) =
            (c.name.clone(), c.labels.get(LABEL_NAME).cloned().unwrap_or_default(), c.healthcheck);
        let script = self.script_for(&name, &owner, healthcheck);
        let Some(c) = self.containers.get_mut(&name) else { return Ok(()) };
        (c.state, c.exit_code, c.pid, c.started, c.script) = (RunState::Running, None, Some(pid), Some(now), script);
        c.health = if c.healthcheck { Health::Starting } else { Health::None };
        c.settle(now);
        Ok(())
    }

    fn stop(&mut self, now: Instant, id: &str, remove: bool) {
        let Some(c) = self.find(id, now) else { return };
        if c.state == RunState::Running {
            (c.state, c.exit_code, c.pid) = (RunState::Exited, Some(0), None);
        }
        let name = c.name.clone();
        if remove {
            self.containers.remove(&name);
        }
    }

    fn rename(&mut self, now: Instant, from: &str, to: &str) -> Result<(), Refusal> {
        if self.containers.contains_key(to) {
            return refuse(EngineErrorKind::Conflict, format!("the container name {to} is already in use"));
        }
        let Some(c) = self.find(from, now) else {
            return refuse(EngineErrorKind::NotFound, format!("no such container: {from}"));
        };
        let old = std::mem::replace(&mut c.name, to.to_string());
        if let Some(c) = self.containers.remove(&old) {
            self.containers.insert(to.to_string(), c);
        }
        Ok(())
    }

    fn probe(&mut self, now: Instant, name: &str) -> Option<Probe> {
        let c = self.find(name, now)?;
        let exited = matches!(c.state, RunState::Exited | RunState::Dead);
        Some(Probe { state: c.state, health: c.health, exit_code: c.exit_code.filter(|_| exited), pid: c.pid })
    }

    fn instances_of(&self, scope: &str, service: &str) -> Vec<String> {
        let of = |c: &&FakeContainer| {
            c.labels.get(LABEL_SCOPE).is_some_and(|s| s == scope)
                && c.labels.get(LABEL_NAME).is_some_and(|s| s == service)
        };
        self.containers.values().filter(of).map(|c| c.name.clone()).collect()
    }
}

/// The systemd side: what the calls do.
impl World {
    fn list_unit_files(&self, dir: &Path) -> Vec<UnitFile> {
        let in_dir = self.unit_files.iter().filter(|(p, _)| p.parent() == Some(dir));
        in_dir
            .filter_map(|(path, content)| {
                let name = path.file_name()?.to_str()?.to_string();
                Some(UnitFile { name, marks: systemd::parse_marks(content), content: content.clone(), link: None })
            })
            .collect()
    }

    fn daemon_reload(&mut self) {
        self.loaded.clear();
        for (path, content) in &self.unit_files {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                self.loaded.entry(name.to_string()).or_insert_with(|| content.clone());
            }
        }
    }

    fn enable(&mut self, names: &[String], enabled: bool, now: Instant) -> Result<(), Refusal> {
        if let Some(missing) = names.iter().find(|n| enabled && !self.has_unit_file(n)) {
            return refuse(EngineErrorKind::NotFound, format!("Unit file {missing} does not exist."));
        }
        for name in names {
            self.unit(name, now).enabled = enabled;
        }
        Ok(())
    }

    fn start_unit(&mut self, name: &str, now: Instant) -> Result<JobResult, Refusal> {
        if !self.has_unit_file(name) {
            return refuse(EngineErrorKind::NotFound, format!("Unit {name} not found."));
        }
        if self.unit(name, now).active == ActiveState::Active {
            return Ok(JobResult::Done);
        }
        let (pid, script) = (self.new_pid(), self.script_for(name, name, false));
        let u = self.unit(name, now);
        let service = name.ends_with(".service");
        (u.active, u.result, u.started, u.script) = (ActiveState::Active, "success".into(), Some(now), script);
        u.sub_state = if service { "running" } else { "waiting" }.into();
        u.main_pid = service.then_some(pid);
        u.settle(now);
        Ok(JobResult::Done)
    }

    fn stop_unit(&mut self, name: &str, now: Instant) -> JobResult {
        let u = self.unit(name, now);
        if u.active == ActiveState::Active {
            (u.active, u.sub_state, u.main_pid) = (ActiveState::Inactive, "dead".into(), None);
        }
        JobResult::Done
    }

    fn states(&mut self, names: &[String], now: Instant) -> Vec<UnitState> {
        let mut out = Vec::new();
        for name in names {
            let has_file = self.has_unit_file(name);
            let u = self.unit(name, now);
            out.push(UnitState {
                name: name.clone(),
                load_state: if has_file { "loaded" } else { "not-found" }.into(),
                active_state: u.active.clone(),
                sub_state: u.sub_state.clone(),
                result: u.result.clone(),
                exec_main_status: u.exec_main_status,
                main_pid: u.main_pid,
                unit_file_state: match (has_file, u.enabled) {
                    (false, _) => String::new(),
                    (true, true) => "enabled".into(),
                    (true, false) => "disabled".into(),
                },
                n_restarts: name.ends_with(".service").then_some(0),
            });
        }
        out
    }
}

impl Fake {
    /// An empty engine: no containers, networks, volumes, images or units; every call
    /// answers at once and succeeds (where the real engine would).
    pub fn new() -> Self {
        Fake { t0: Instant::now(), world: Mutex::new(World::default()) }
    }

    /// The world. A std mutex: it is never held across an await, only for the bookkeeping
    /// of one call.
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Virtual time since the fake was made.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// One call: logged when it begins, delayed as configured, failed or hung as injected,
    /// else `effect` on the world; logged again when it ends.
    pub async fn act<T, E: FromRefusal>(
        &self,
        op: Op,
        object: &str,
        effect: impl FnOnce(&mut World, Instant) -> Result<T, Refusal>,
    ) -> Result<T, E> {
        let (index, delay, fault) = {
            let mut w = self.world();
            let seq = w.tick();
            let call =
                Call { op, object: object.into(), began: self.now(), ended: None, failed: None, seq: (seq, None) };
            w.calls.push(call);
            (w.calls.len() - 1, World::rule(&w.durations, op, object), World::rule(&w.faults, op, object))
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if fault == Some(Fault::Hangs) {
            std::future::pending::<()>().await;
        }
        let mut w = self.world();
        let result = match fault {
            Some(Fault::Fails(kind, said)) => refuse(kind, said.unwrap_or_else(|| format!("injected: {object}"))),
            _ => effect(&mut w, Instant::now()),
        };
        let seq = w.tick();
        let call = &mut w.calls[index];
        (call.ended, call.seq.1) = (Some(self.t0.elapsed()), Some(seq));
        call.failed = result.as_ref().err().map(|r| r.kind);
        result.map_err(|r| E::from_refusal(op, object, r))
    }
}

/// Configuring: how calls behave. Each returns the fake, to chain.
impl Fake {
    /// Calls of `op` on `object` (or on [`ANY`]) take `how_long` of virtual time, then act.
    pub fn takes(&self, op: Op, object: &str, how_long: Duration) -> &Self {
        self.world().durations.insert((op, object.into()), how_long);
        self
    }

    /// Calls of `op` on `object` (or on [`ANY`]) fail with `kind`, changing nothing.
    pub fn fails(&self, op: Op, object: &str, kind: EngineErrorKind) -> &Self {
        self.world().faults.insert((op, object.into()), Fault::Fails(kind, None));
        self
    }

    /// Calls of `op` on `object` (or on [`ANY`]) fail with `kind`, the engine saying `message`
    /// (an engine that echoes a request, say).
    pub fn fails_saying(&self, op: Op, object: &str, kind: EngineErrorKind, message: &str) -> &Self {
        self.world().faults.insert((op, object.into()), Fault::Fails(kind, Some(message.into())));
        self
    }

    /// Calls of `op` on `object` (or on [`ANY`]) never answer.
    pub fn hangs(&self, op: Op, object: &str) -> &Self {
        self.world().faults.insert((op, object.into()), Fault::Hangs);
        self
    }

    /// Calls of `op` on `object` behave normally again.
    pub fn heals(&self, op: Op, object: &str) -> &Self {
        self.world().faults.remove(&(op, object.into()));
        self
    }

    /// At each (re)start, the container or unit `name` (or every container of the service
    /// `name`) becomes `what` `after` the start. Several calls make a script, applied in time
    /// order; a script replaces the default of a container with a health check (healthy
    /// after [`HEALTHY_AFTER`]).
    pub fn becomes(&self, name: &str, after: Duration, what: Becomes) -> &Self {
        self.world().scripts.entry(name.into()).or_default().push((after, what));
        self
    }
}

/// Seeding: live state as it is before a test acts. Nothing here is logged.
impl Fake {
    /// The image `reference` is on the host with ID `id`.
    pub fn add_image(&self, reference: &str, id: &str) -> &Self {
        self.world().images.insert(normalize_image(reference), id.into());
        self
    }

    /// A network `name`, created by tend's `scope` (`None`: by someone else).
    pub fn add_network(&self, name: &str, scope: Option<&str>) -> &Self {
        let mut w = self.world();
        let id = format!("net-{name}");
        w.networks.insert(name.into(), FakeNetwork { id, name: name.into(), scope: scope.map(str::to_string) });
        drop(w);
        self
    }

    /// A container. A running one started now, with a pid, and follows the script
    /// [`Fake::becomes`] gave its name or service (no default: it is as healthy as it says).
    pub fn add_container(&self, mut c: FakeContainer) -> &Self {
        let mut w = self.world();
        if c.state == RunState::Running {
            c.started = Some(Instant::now());
            c.pid = c.pid.or_else(|| Some(w.new_pid()));
            let owner = c.labels.get(LABEL_NAME).cloned().unwrap_or_default();
            c.script = w.script_for(&c.name, &owner, false);
        }
        w.containers.insert(c.name.clone(), c);
        drop(w);
        self
    }

    /// A running container `name` that is not tend's (no labels).
    pub fn add_foreign(&self, name: &str) -> &Self {
        self.add_container(FakeContainer {
            id: format!("foreign-{name}"),
            name: name.into(),
            labels: BTreeMap::new(),
            image: "other:1".into(),
            image_id: "sha256:other".into(),
            networks: Vec::new(),
            state: RunState::Running,
            health: Health::None,
            exit_code: None,
            pid: None,
            healthcheck: false,
            started: None,
            script: Vec::new(),
        })
    }

    /// Every docker service of `desired` runs in `scope` as it says: its image on the host
    /// (`sha256:REF`), its networks, and each of its instances running and healthy.
    pub fn add_running(&self, scope: &str, desired: &Desired) -> &Self {
        for s in desired.docker_services() {
            let reference = normalize_image(s.spec.image.as_deref().unwrap_or_default());
            let id = format!("sha256:{reference}");
            self.add_image(&reference, &id);
            for n in &s.spec.networks {
                self.add_network(n, Some(scope));
            }
            for i in 1..=s.spec.replicas {
                self.add_container(FakeContainer::running(scope, s, i, &id));
            }
        }
        self
    }

    /// A unit file `dir/name` that systemd has read.
    pub fn add_unit_file(&self, dir: &Path, name: &str, content: &str) -> &Self {
        let mut w = self.world();
        w.unit_files.insert(dir.join(name), content.into());
        w.loaded.insert(name.into(), content.into());
        drop(w);
        self
    }
}

/// Looking: what was called, and what is live now.
impl Fake {
    /// Every call so far, in the order they began.
    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// The calls of `op`, in the order they began.
    pub fn calls_of(&self, op: Op) -> Vec<Call> {
        self.world().calls.iter().filter(|c| c.op == op).cloned().collect()
    }

    /// The first call of `op` on `object`.
    pub fn call(&self, op: Op, object: &str) -> Option<Call> {
        self.world().calls.iter().find(|c| c.is(op, object)).cloned()
    }

    /// The container `name` (or with that ID) as it is now.
    pub fn container(&self, name: &str) -> Option<FakeContainer> {
        self.world().find(name, Instant::now()).cloned()
    }

    /// The names of every container, sorted.
    pub fn container_names(&self) -> Vec<String> {
        self.world().containers.keys().cloned().collect()
    }

    /// The ID of the image `reference`, when it is on the host.
    pub fn image(&self, reference: &str) -> Option<String> {
        self.world().images.get(&normalize_image(reference)).cloned()
    }

    /// The network `name`.
    pub fn network(&self, name: &str) -> Option<FakeNetwork> {
        self.world().networks.get(name).cloned()
    }

    /// The names of the volumes.
    pub fn volumes(&self) -> BTreeSet<String> {
        self.world().volumes.clone()
    }

    /// The unit `name` as it is now (`None` until something touched it).
    pub fn unit(&self, name: &str) -> Option<FakeUnit> {
        let mut w = self.world();
        w.units.contains_key(name).then(|| w.unit(name, Instant::now()).clone())
    }

    /// The content of the unit file `dir/name`.
    pub fn unit_file(&self, dir: &Path, name: &str) -> Option<String> {
        self.world().unit_files.get(&dir.join(name)).cloned()
    }

    /// Whether the unit file `name` changed (or appeared, or went) since systemd last read it.
    pub fn needs_reload(&self, name: &str) -> bool {
        let w = self.world();
        let on_disk = w.unit_files.iter().find(|(p, _)| p.file_name().is_some_and(|f| f == name)).map(|(_, c)| c);
        on_disk != w.loaded.get(name)
    }
}

impl ContainerEngine for Fake {
    async fn observe(
        &self,
        scope: &str,
        wanted: &BTreeSet<String>,
        images: &BTreeSet<String>,
        want_volumes: bool,
    ) -> Result<Observed, EngineError> {
        self.act(Op::Observe, scope, |w, now| Ok(w.observe(now, scope, wanted, images, want_volumes))).await
    }

    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        self.act(Op::Pull, image, |w, _| {
            w.pull(image);
            Ok(())
        })
        .await
    }

    async fn create_network(&self, scope: &str, name: &str) -> Result<(), EngineError> {
        self.act(Op::CreateNetwork, name, |w, _| {
            w.create_network(scope, name);
            Ok(())
        })
        .await
    }

    async fn remove_network(&self, id: &str, name: &str) -> Result<(), EngineError> {
        self.act(Op::RemoveNetwork, name, |w, now| w.remove_network(id, now)).await
    }

    async fn create_volume(&self, _scope: &str, name: &str) -> Result<(), EngineError> {
        self.act(Op::CreateVolume, name, |w, _| {
            w.volumes.insert(name.into());
            Ok(())
        })
        .await
    }

    async fn create_and_start(
        &self,
        scope: &str,
        service: &Service,
        instance: u32,
        name: &str,
    ) -> Result<String, EngineError> {
        self.act(Op::Create, name, |w, now| w.create(now, scope, service, instance, name)).await
    }

    async fn start(&self, id: &str, name: &str) -> Result<(), EngineError> {
        self.act(Op::Start, name, |w, now| w.start(now, id)).await
    }

    async fn stop_and_remove(&self, id: &str, name: &str, _timeout_s: Option<u64>) -> Result<(), EngineError> {
        self.act(Op::StopAndRemove, name, |w, now| {
            w.stop(now, id, true);
            Ok(())
        })
        .await
    }

    async fn stop(&self, id: &str, name: &str, _timeout_s: Option<u64>) -> Result<(), EngineError> {
        self.act(Op::Stop, name, |w, now| {
            w.stop(now, id, false);
            Ok(())
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), EngineError> {
        self.act(Op::Rename, &format!("{from} → {to}"), |w, now| w.rename(now, from, to)).await
    }

    async fn probe(&self, name: &str) -> Result<Option<Probe>, EngineError> {
        self.act(Op::Probe, name, |w, now| Ok(w.probe(now, name))).await
    }

    async fn instances_of(&self, scope: &str, service: &str) -> Result<Vec<String>, EngineError> {
        self.act(Op::InstancesOf, service, |w, _| Ok(w.instances_of(scope, service))).await
    }
}

impl UnitEngine for Fake {
    async fn available(&self) -> Result<(), SystemdError> {
        self.act(Op::Available, "systemd", |_, _| Ok(())).await
    }

    async fn list_unit_files(&self, dir: &Path) -> Result<Vec<UnitFile>, SystemdError> {
        self.act(Op::ListUnitFiles, &dir.display().to_string(), |w, _| Ok(w.list_unit_files(dir))).await
    }

    async fn write_unit_file(&self, dir: &Path, name: &str, content: &str) -> Result<(), SystemdError> {
        // Checked before the call, as the real adapter checks before it touches the directory.
        systemd::check_unit_name(name)?;
        self.act(Op::WriteUnitFile, name, |w, _| Ok(w.unit_files.insert(dir.join(name), content.into()))).await?;
        Ok(())
    }

    async fn remove_unit_file(&self, dir: &Path, name: &str) -> Result<(), SystemdError> {
        systemd::check_unit_name(name)?;
        self.act(Op::RemoveUnitFile, name, |w, _| Ok(w.unit_files.remove(&dir.join(name)))).await?;
        Ok(())
    }

    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.act(Op::DaemonReload, "the systemd manager", |w, _| {
            w.daemon_reload();
            Ok(())
        })
        .await
    }

    async fn enable(&self, names: &[String]) -> Result<(), SystemdError> {
        self.act(Op::Enable, &names.join(" "), |w, now| w.enable(names, true, now)).await
    }

    async fn disable(&self, names: &[String]) -> Result<(), SystemdError> {
        self.act(Op::Disable, &names.join(" "), |w, now| w.enable(names, false, now)).await
    }

    async fn start(&self, name: &str) -> Result<JobResult, SystemdError> {
        self.act(Op::StartUnit, name, |w, now| w.start_unit(name, now)).await
    }

    async fn stop(&self, name: &str) -> Result<JobResult, SystemdError> {
        self.act(Op::StopUnit, name, |w, now| Ok(w.stop_unit(name, now))).await
    }

    async fn restart(&self, name: &str) -> Result<JobResult, SystemdError> {
        self.act(Op::RestartUnit, name, |w, now| {
            w.stop_unit(name, now);
            w.start_unit(name, now)
        })
        .await
    }

    async fn states(&self, names: &[String]) -> Result<Vec<UnitState>, SystemdError> {
        self.act(Op::States, &names.join(" "), |w, now| Ok(w.states(names, now))).await
    }

    async fn watch(&self, _interest: Interest) -> Result<Wakeups, SystemdError> {
        // Nothing wakes the loop: tests drive passes themselves.
        self.act(Op::Watch, "systemd", |_, _| Ok(Box::pin(futures::stream::pending()) as Wakeups)).await
    }
}
