//! The Docker adapter: tend's engine trait on the Engine API (bollard). Docker's types stop
//! here; the rest of tend sees `model` types only.
//!
//! No call waits on the daemon without a bound ([`Timeouts`]). A request/response call
//! goes through [`DockerEngine::call`] or [`DockerEngine::answer`], bounded by the call
//! timeout (a stop by its grace period on top). bollard's own client timeout only bounds
//! the arrival of a response's headers, never its body (bollard 0.21, `execute_request`):
//! set a second above tend's bound ([`Timeouts::client`]), it bounds the setup of the
//! streams (events, logs, waits, exec output). The streams themselves, which may rightly
//! last hours, run under [`DockerEngine::while_alive`]: the daemon must answer a ping
//! every call timeout. A pull fails when no progress message comes for
//! [`Timeouts::pull_idle`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, EndpointSettings, HealthConfig, HealthStatusEnum,
    HostConfig, Mount, MountType, NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, PortBinding,
    RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions, RenameContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use tend_specs::service::{MountSource, PortMapping};
use tend_specs::{Env, Service};

use crate::engine::{
    self, ContainerEngine, ContainerRuns, EngineError, EngineErrorKind, JobContainer, Probe, Timeouts,
};
use crate::reconcile::model::{
    Container, Health, LABEL_FIELDS, LABEL_HASH, LABEL_INSTANCE, LABEL_KIND, LABEL_NAME, LABEL_RUN, LABEL_SCOPE,
    Network, Observed, RunState, encode_fields,
};
use crate::support::redact::Redactor;

/// The engine's name in messages.
const DOCKER: &str = "Docker";

/// A connection to a Docker daemon.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    timeouts: Timeouts,
}

fn classify(e: &BollardError) -> EngineErrorKind {
    match e {
        BollardError::RequestTimeoutError => EngineErrorKind::Timeout,
        BollardError::DockerResponseServerError { status_code: 404, .. } => EngineErrorKind::NotFound,
        BollardError::DockerResponseServerError { status_code: 409, .. } => EngineErrorKind::Conflict,
        BollardError::DockerResponseServerError { .. } => EngineErrorKind::Refused,
        _ => EngineErrorKind::Unavailable,
    }
}

fn err(op: &'static str, object: impl Into<String>) -> impl FnOnce(BollardError) -> EngineError {
    let object = object.into();
    move |e| EngineError { op, object, kind: classify(&e), source: Box::new(e) }
}

/// As [`err`], but bollard's own timeout (the headers of a stream's response did not come
/// within the client's timeout, `waited`) reads as no answer.
fn fail(op: &'static str, object: impl Into<String>, waited: Duration) -> impl FnOnce(BollardError) -> EngineError {
    let object = object.into();
    move |e| match e {
        BollardError::RequestTimeoutError => {
            EngineError::timed_out(op, &object, engine::NoAnswer { engine: DOCKER, waited })
        }
        e => err(op, object)(e),
    }
}

impl DockerEngine {
    /// Connects to the daemon named by `DOCKER_HOST`, or the local socket, and agrees on an
    /// API version (Debian's docker.io 20.10 speaks 1.41). Every later call is bounded by
    /// `timeouts`.
    pub async fn connect(timeouts: Timeouts) -> Result<Self, EngineError> {
        let (op, object) = ("connecting to", "the Docker daemon");
        let docker = Docker::connect_with_local_defaults()
            .map_err(err(op, object))?
            .with_timeout(Timeouts::client(timeouts.call));
        let docker = engine::bounded(DOCKER, timeouts.call, docker.negotiate_version())
            .await
            .map_err(|e| EngineError::timed_out(op, object, e))?
            .map_err(err(op, object))?;
        Ok(Self { docker, timeouts })
    }

    /// One request/response call, bounded by `bound`. `Ok(Err(e))`: the daemon answered
    /// with an error (for callers that accept some, such as a 404); `Err`: it did not
    /// answer within `bound`.
    async fn answer<T>(
        &self,
        op: &'static str,
        object: &str,
        bound: Duration,
        call: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<Result<T, BollardError>, EngineError> {
        engine::bounded(DOCKER, bound, call).await.map_err(|e| EngineError::timed_out(op, object, e))
    }

    /// One request/response call bounded by the call timeout, any error named `op object`.
    async fn call<T>(
        &self,
        op: &'static str,
        object: &str,
        call: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, EngineError> {
        self.answer(op, object, self.timeouts.call, call).await?.map_err(self.fail(op, object))
    }

    /// The error of a failed call or stream item (see [`fail`]).
    fn fail(&self, op: &'static str, object: impl Into<String>) -> impl FnOnce(BollardError) -> EngineError {
        fail(op, object, Timeouts::client(self.timeouts.call))
    }

    /// A client whose own timeout lets a call of `bound` finish (a stop, a pull).
    fn client_for(&self, bound: Duration) -> Docker {
        self.docker.clone().with_timeout(Timeouts::client(bound))
    }

    /// Runs `work` (a stream read to its end, a wait for a container), which may rightly
    /// last any time, while asking the daemon every call timeout whether it still answers
    /// (`/_ping`). A ping without an answer within the call timeout ends `work` with that
    /// error, so a hung daemon is noticed even where the stream is rightly silent. A
    /// refused ping is left to the stream, which ends by itself when the daemon went away.
    async fn while_alive<T>(
        &self,
        op: &'static str,
        object: &str,
        work: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        let check = async {
            loop {
                tokio::time::sleep(self.timeouts.call).await;
                if let Err(e) = engine::bounded(DOCKER, self.timeouts.call, self.docker.ping()).await {
                    return EngineError::timed_out(op, object, e);
                }
            }
        };
        tokio::select! {
            r = work => r,
            e = check => Err(e),
        }
    }

    #[allow(clippy::type_complexity)]
    async fn exec_start(
        &self,
        name: &str,
        cmd: &[String],
        user: Option<&str>,
        stdin: bool,
    ) -> Result<
        (
            String,
            std::pin::Pin<Box<dyn futures::Stream<Item = Result<bollard::container::LogOutput, BollardError>> + Send>>,
            Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
        ),
        EngineError,
    > {
        let options = bollard::exec::CreateExecOptions::<String> {
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            user: user.map(str::to_string),
            ..Default::default()
        };
        let exec = self.call("creating an exec in", name, self.docker.create_exec(name, options)).await?;
        match self.call("starting an exec in", name, self.docker.start_exec(&exec.id, None)).await? {
            bollard::exec::StartExecResults::Attached { output, input } => {
                Ok((exec.id, output, stdin.then_some(input)))
            }
            bollard::exec::StartExecResults::Detached => {
                Err(err("attaching to an exec in", name)(BollardError::DockerStreamError {
                    error: "the exec started detached".into(),
                }))
            }
        }
    }

    async fn exec_result(&self, id: &str, name: &str, stderr: Vec<u8>) -> Result<(i64, String), EngineError> {
        // The exit code is set a moment after the output ends.
        for _ in 0..50 {
            let info = self.call("inspecting an exec in", name, self.docker.inspect_exec(id)).await?;
            if info.running != Some(true) {
                return Ok((info.exit_code.unwrap_or(-1), String::from_utf8_lossy(&stderr).trim().to_string()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok((-1, String::from_utf8_lossy(&stderr).trim().to_string()))
    }

    async fn list_owned(&self, filters: HashMap<String, Vec<String>>) -> Result<Vec<ContainerSummary>, EngineError> {
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        self.call("listing", "containers", self.docker.list_containers(Some(options))).await
    }

    async fn observe_images(&self, images: &BTreeSet<String>) -> Result<BTreeMap<String, String>, EngineError> {
        let lookups = images.iter().map(|image| async move {
            match self.answer("inspecting image", image, self.timeouts.call, self.docker.inspect_image(image)).await? {
                Ok(info) => Ok(info.id.map(|id| (crate::reconcile::model::normalize_image(image), id))),
                Err(e) if classify(&e) == EngineErrorKind::NotFound => Ok(None),
                Err(e) => Err(err("inspecting image", image.clone())(e)),
            }
        });
        let found = futures::future::try_join_all(lookups).await?;
        Ok(found.into_iter().flatten().collect())
    }
}

/// Keeps the last 4 KiB of a command's stderr.
fn keep_tail(buf: &mut Vec<u8>, more: &[u8]) {
    buf.extend_from_slice(more);
    if buf.len() > 4096 {
        buf.drain(..buf.len() - 4096);
    }
}

fn label_filter(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), pairs.iter().map(|(k, v)| format!("{k}={v}")).collect())])
}

fn parse_health(status: &str) -> Health {
    if status.contains("(healthy)") {
        Health::Healthy
    } else if status.contains("(unhealthy)") {
        Health::Unhealthy
    } else if status.contains("(health: starting)") {
        Health::Starting
    } else {
        Health::None
    }
}

fn parse_exit_code(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

fn run_state(s: Option<ContainerSummaryStateEnum>) -> RunState {
    match s {
        Some(ContainerSummaryStateEnum::CREATED) => RunState::Created,
        Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::STOPPING) => RunState::Running,
        Some(ContainerSummaryStateEnum::PAUSED) => RunState::Paused,
        Some(ContainerSummaryStateEnum::RESTARTING) => RunState::Restarting,
        Some(ContainerSummaryStateEnum::EXITED) => RunState::Exited,
        Some(ContainerSummaryStateEnum::REMOVING) => RunState::Removing,
        Some(ContainerSummaryStateEnum::DEAD) => RunState::Dead,
        Some(ContainerSummaryStateEnum::EMPTY) | None => RunState::Dead,
    }
}

fn container_name(c: &ContainerSummary) -> String {
    c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default()
}

fn to_container(c: ContainerSummary) -> Container {
    let labels = c.labels.clone().unwrap_or_default();
    let status = c.status.clone().unwrap_or_default();
    let state = run_state(c.state);
    Container {
        name: container_name(&c),
        id: c.id.unwrap_or_default(),
        service: labels.get(LABEL_NAME).cloned().unwrap_or_default(),
        instance: labels.get(LABEL_INSTANCE).and_then(|i| i.parse().ok()).unwrap_or(0),
        hash: labels.get(LABEL_HASH).cloned().unwrap_or_default(),
        fields: labels.get(LABEL_FIELDS).map(|f| crate::reconcile::model::decode_fields(f)).unwrap_or_default(),
        image_id: c.image_id.unwrap_or_default(),
        health: parse_health(&status),
        exit_code: if matches!(state, RunState::Exited | RunState::Dead) { parse_exit_code(&status) } else { None },
        state,
    }
}

fn nanos(d: Option<tend_specs::quantity::Duration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.get().as_nanos()).unwrap_or(i64::MAX))
}

fn port_key(p: &PortMapping) -> String {
    format!("{}/{}", p.container_port, p.protocol)
}

/// The labels of instance `instance` of `service` in `scope`: the spec's own, then tend's
/// identity (which [`ContainerEngine::observe`] reads back). The in-memory engine of unit
/// tests labels its containers with them too.
pub(crate) fn service_labels(scope: &str, service: &Service, instance: u32) -> BTreeMap<String, String> {
    let mut labels = service.container_labels();
    labels.insert(LABEL_SCOPE.into(), scope.into());
    labels.insert(LABEL_KIND.into(), "service".into());
    labels.insert(LABEL_NAME.into(), service.name.clone());
    labels.insert(LABEL_INSTANCE.into(), instance.to_string());
    labels.insert(LABEL_HASH.into(), service.hash.clone());
    labels.insert(LABEL_FIELDS.into(), encode_fields(&service.field_hashes));
    labels
}

/// The container config of one instance.
fn container_body(scope: &str, service: &Service, instance: u32) -> ContainerCreateBody {
    let spec = &service.spec;
    let labels: HashMap<String, String> = service_labels(scope, service, instance).into_iter().collect();
    let env = engine_env(&service.env);
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        bindings.entry(port_key(p)).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(
            PortBinding { host_ip: p.host_ip.map(|ip| ip.to_string()), host_port: Some(p.host_port.to_string()) },
        );
    }
    let mounts = engine_mounts(&spec.volumes);
    let healthcheck = spec.healthcheck.as_ref().map(|h| {
        let mut test = vec!["CMD".to_string()];
        test.extend(h.command.iter().cloned());
        HealthConfig {
            test: Some(test),
            interval: nanos(h.interval),
            timeout: nanos(h.timeout),
            retries: h.retries.map(i64::from),
            start_period: nanos(h.start_period),
            ..Default::default()
        }
    });
    let resources = spec.resources.as_ref();
    let networking_config = spec
        .networks
        .first()
        .map(|n| NetworkingConfig { endpoints_config: Some(HashMap::from([(n.clone(), endpoint(service))])) });
    ContainerCreateBody {
        image: spec.image.clone(),
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.command.clone(),
        env: Some(env),
        labels: Some(labels),
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        healthcheck,
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: spec.stop_timeout.map(|t| i64::try_from(t.get().as_secs()).unwrap_or(i64::MAX)),
        exposed_ports: (!spec.ports.is_empty()).then(|| spec.ports.iter().map(port_key).collect()),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            mounts: (!mounts.is_empty()).then_some(mounts),
            memory: resources.and_then(|r| r.memory).map(|m| i64::try_from(m.0).unwrap_or(i64::MAX)),
            nano_cpus: resources.and_then(|r| r.cpus).map(|c| (c * 1e9) as i64),
            // tend is the supervisor: the engine never restarts on its own, so holds and
            // maintenance locks are honoured.
            restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    }
}

/// Every instance is reachable on its networks under its service's name.
fn endpoint(service: &Service) -> EndpointSettings {
    EndpointSettings { aliases: Some(vec![service.name.clone()]), ..Default::default() }
}

impl ContainerEngine for DockerEngine {
    async fn observe(
        &self,
        scope: &str,
        wanted: &BTreeSet<String>,
        images: &BTreeSet<String>,
        want_volumes: bool,
    ) -> Result<Observed, EngineError> {
        let containers = self.list_owned(label_filter(&[(LABEL_SCOPE, scope)]));
        let networks =
            self.call("listing", "networks", self.docker.list_networks(Some(ListNetworksOptions { filters: None })));
        let volumes = async {
            if !want_volumes {
                return Ok(BTreeSet::new());
            }
            let list = self
                .call("listing", "volumes", self.docker.list_volumes(Some(ListVolumesOptions { filters: None })))
                .await?;
            Ok(list.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect())
        };
        let (containers, networks, volumes, images) =
            futures::try_join!(containers, networks, volumes, self.observe_images(images))?;
        // Containers of job runs (`tend job run`) and of restore drills are theirs, not the
        // planner's.
        let containers: Vec<Container> = containers
            .into_iter()
            .filter(|c| c.labels.as_ref().and_then(|l| l.get(LABEL_KIND)).is_none_or(|k| k != "job" && k != "drill"))
            .map(to_container)
            .collect();
        let networks = networks
            .into_iter()
            .map(|n| {
                let owned = n.labels.as_ref().and_then(|l| l.get(LABEL_SCOPE)).is_some_and(|s| s == scope);
                Network { id: n.id.unwrap_or_default(), name: n.name.unwrap_or_default(), owned }
            })
            .collect();
        let owned_names: BTreeSet<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        let mut foreign = BTreeMap::new();
        if wanted.iter().any(|w| !owned_names.contains(w.as_str())) {
            // Only when something would be created: look for others' containers by name.
            let options = ListContainersOptions { all: true, ..Default::default() };
            let all = self.call("listing", "containers", self.docker.list_containers(Some(options))).await?;
            for c in all {
                let name = container_name(&c);
                let ours = c.labels.as_ref().and_then(|l| l.get(LABEL_SCOPE)).is_some_and(|s| s == scope);
                if !ours && wanted.contains(&name) {
                    foreign.insert(name, c.id.unwrap_or_default());
                }
            }
        }
        Ok(Observed { containers, networks, volumes, images, foreign, units: None, maintenance: Default::default() })
    }

    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
        // Any time while it progresses; no answer for `pull_idle` (the first included) fails it.
        let idle = self.timeouts.pull_idle();
        let client = self.client_for(idle);
        let mut stream = client.create_image(Some(options), None, None);
        let next = |e| EngineError::timed_out("pulling image", image, e);
        while let Some(item) = engine::bounded(DOCKER, idle, stream.next()).await.map_err(next)? {
            item.map_err(fail("pulling image", image, Timeouts::client(idle)))?;
        }
        Ok(())
    }

    async fn create_network(&self, scope: &str, name: &str) -> Result<(), EngineError> {
        let labels = HashMap::from([
            (LABEL_SCOPE.to_string(), scope.to_string()),
            (LABEL_KIND.to_string(), "network".to_string()),
        ]);
        let req = NetworkCreateRequest { name: name.to_string(), labels: Some(labels), ..Default::default() };
        match self.answer("creating network", name, self.timeouts.call, self.docker.create_network(req)).await? {
            Ok(_) => Ok(()),
            // Created meanwhile (a retried pass): nothing to do.
            Err(e) if classify(&e) == EngineErrorKind::Conflict => Ok(()),
            Err(e) => Err(err("creating network", name)(e)),
        }
    }

    async fn remove_network(&self, id: &str, name: &str) -> Result<(), EngineError> {
        // A stale endpoint can linger for a moment after its container is removed
        // (moby#42119): retry a few times, then report.
        let mut last = None;
        for attempt in 0..5u64 {
            match self.answer("removing network", name, self.timeouts.call, self.docker.remove_network(id)).await? {
                Ok(()) => return Ok(()),
                Err(e) if classify(&e) == EngineErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await;
        }
        Err(err("removing network", name)(last.unwrap_or(BollardError::RequestTimeoutError)))
    }

    async fn create_volume(&self, scope: &str, name: &str) -> Result<(), EngineError> {
        let labels = HashMap::from([
            (LABEL_SCOPE.to_string(), scope.to_string()),
            (LABEL_KIND.to_string(), "volume".to_string()),
        ]);
        let req = VolumeCreateRequest { name: Some(name.to_string()), labels: Some(labels), ..Default::default() };
        self.call("creating volume", name, self.docker.create_volume(req)).await.map(|_| ())
    }

    async fn create_and_start(
        &self,
        scope: &str,
        service: &Service,
        instance: u32,
        name: &str,
    ) -> Result<String, EngineError> {
        // The request holds the environment, secrets and all; an error may echo it.
        let redactor = Redactor::of_envs([&service.env]);
        let body = container_body(scope, service, instance);
        let options = CreateContainerOptions { name: Some(name.to_string()), ..Default::default() };
        let created = self
            .call("creating container", name, self.docker.create_container(Some(options), body))
            .await
            .map_err(|e| redactor.engine_error(e))?;
        for net in service.spec.networks.iter().skip(1) {
            let req = NetworkConnectRequest { container: created.id.clone(), endpoint_config: Some(endpoint(service)) };
            let object = format!("{name} → {net}");
            self.call("connecting to network", &object, self.docker.connect_network(net, req)).await?;
        }
        self.call("starting container", name, self.docker.start_container(&created.id, None))
            .await
            .map_err(|e| redactor.engine_error(e))?;
        Ok(created.id)
    }

    async fn start(&self, id: &str, name: &str) -> Result<(), EngineError> {
        match self.answer("starting container", name, self.timeouts.call, self.docker.start_container(id, None)).await?
        {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(err("starting container", name)(e)),
        }
    }

    async fn stop_and_remove(&self, id: &str, name: &str, timeout_s: Option<u64>) -> Result<(), EngineError> {
        let t = timeout_s.map(|t| i32::try_from(t).unwrap_or(i32::MAX));
        let bound = self.timeouts.stop(timeout_s);
        let client = self.client_for(bound);
        let stop = client.stop_container(id, Some(StopContainerOptions { t, signal: None }));
        match self.answer("stopping container", name, bound, stop).await? {
            Ok(()) => {}
            Err(BollardError::DockerResponseServerError { status_code: 304 | 404, .. }) => {}
            Err(e) => return Err(err("stopping container", name)(e)),
        }
        let options = RemoveContainerOptions { force: true, v: false, link: false };
        match self
            .answer("removing container", name, self.timeouts.call, self.docker.remove_container(id, Some(options)))
            .await?
        {
            Ok(()) => Ok(()),
            Err(e) if classify(&e) == EngineErrorKind::NotFound => Ok(()),
            // Already being removed (a retried pass): done once it is gone.
            Err(e) if classify(&e) == EngineErrorKind::Conflict => Ok(()),
            Err(e) => Err(err("removing container", name)(e)),
        }
    }

    async fn stop(&self, id: &str, name: &str, timeout_s: Option<u64>) -> Result<(), EngineError> {
        let t = timeout_s.map(|t| i32::try_from(t).unwrap_or(i32::MAX));
        let bound = self.timeouts.stop(timeout_s);
        let client = self.client_for(bound);
        let stop = client.stop_container(id, Some(StopContainerOptions { t, signal: None }));
        match self.answer("stopping container", name, bound, stop).await? {
            // 304: already stopped; 404: gone, so not running either.
            Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 304 | 404, .. }) => Ok(()),
            Err(e) => Err(err("stopping container", name)(e)),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), EngineError> {
        let rename = self.docker.rename_container(from, RenameContainerOptions { name: to.to_string() });
        self.call("renaming container", &format!("{from} → {to}"), rename).await
    }

    async fn probe(&self, name: &str) -> Result<Option<Probe>, EngineError> {
        let inspect = self.docker.inspect_container(name, None);
        let info = match self.answer("inspecting container", name, self.timeouts.call, inspect).await? {
            Ok(info) => info,
            Err(e) if classify(&e) == EngineErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err("inspecting container", name)(e)),
        };
        let st = info.state.unwrap_or_default();
        let state = if st.running == Some(true) {
            RunState::Running
        } else if st.restarting == Some(true) {
            RunState::Restarting
        } else if st.status.as_ref().map(|s| s.to_string()).as_deref() == Some("created") {
            RunState::Created
        } else {
            RunState::Exited
        };
        let health = match st.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            _ => Health::None,
        };
        let exit_code = if state == RunState::Exited { st.exit_code } else { None };
        let pid = st.pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p != 0 && state == RunState::Running);
        Ok(Some(Probe { state, health, exit_code, pid }))
    }

    async fn instances_of(&self, scope: &str, service: &str) -> Result<Vec<String>, EngineError> {
        let list = self.list_owned(label_filter(&[(LABEL_SCOPE, scope), (LABEL_NAME, service)])).await?;
        Ok(list.iter().map(container_name).collect())
    }
}

/// One-off containers and execs: jobs (`crate::jobs`: a container created for one run of a
/// Timer's job, followed to its exit and removed after it, never restarted, never observed
/// by a pass), restore drills of exec sources (`crate::backup::drill::drill`: a scratch
/// container made from a service's image, labelled `tend.kind=drill` and `tend.name=BACKUP`
/// so passes never take it for an instance, with no ports, no mounts and no network,
/// removed with its anonymous volumes after the check), execs streaming a dump out or a
/// restore in, and the event stream.
impl ContainerRuns for DockerEngine {
    /// Wake-ups from the daemon's event stream: one item for each event of a container in
    /// `scope` that may need a pass (it died, was destroyed, was killed by the OOM killer,
    /// its health check's verdict changed).
    /// Events only wake the loop; state is always observed afresh. The stream ends, after an
    /// error item, when the connection to the daemon drops.
    fn events(&self, scope: &str) -> futures::stream::BoxStream<'static, Result<(), EngineError>> {
        let mut filters = label_filter(&[(LABEL_SCOPE, scope)]);
        filters.insert("type".into(), vec!["container".into()]);
        let events = ["die", "destroy", "oom", "health_status"];
        filters.insert("event".into(), events.iter().map(|e| e.to_string()).collect());
        let options = bollard::query_parameters::EventsOptions { filters: Some(filters), ..Default::default() };
        let waited = Timeouts::client(self.timeouts.call);
        let stream = self.docker.events(Some(options));
        stream.map(move |r| r.map(|_| ()).map_err(|e| fail("watching", "Docker events", waited)(e))).boxed()
    }

    /// Runs `cmd` in the container `name` (as `user`, else the container's), each chunk of
    /// its stdout sent to `stdout` as it comes (a backup streams a dump this way, with no copy
    /// on disk). Returns the exit code and the end of its stderr (for messages).
    async fn exec_out(
        &self,
        name: &str,
        cmd: &[String],
        user: Option<&str>,
        stdout: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<(i64, String), EngineError> {
        let (id, mut output, _input) = self.exec_start(name, cmd, user, false).await?;
        let op = "reading the output of an exec in";
        let read = async {
            let mut stderr = Vec::new();
            while let Some(item) = output.next().await {
                match item.map_err(self.fail(op, name))? {
                    bollard::container::LogOutput::StdOut { message } => {
                        // The reader gave up (the archive failed): stop reading.
                        let Ok(()) = stdout.send(message).await else { break };
                    }
                    bollard::container::LogOutput::StdErr { message } => keep_tail(&mut stderr, &message),
                    _ => {}
                }
            }
            Ok(stderr)
        };
        let stderr = self.while_alive(op, name, read).await?;
        drop(stdout);
        self.exec_result(&id, name, stderr).await
    }

    /// Runs `cmd` in the container `name` with `input` as its stdin (closed at its end): a
    /// restore streams an archive into a command this way. Returns the exit code and the end
    /// of its stderr.
    async fn exec_in<R: tokio::io::AsyncRead + Unpin + Send>(
        &self,
        name: &str,
        cmd: &[String],
        user: Option<&str>,
        mut input: R,
    ) -> Result<(i64, String), EngineError> {
        use tokio::io::AsyncWriteExt;
        let (id, mut output, stdin) = self.exec_start(name, cmd, user, true).await?;
        let mut stdin = stdin.ok_or_else(|| {
            err("attaching to the stdin of an exec in", name)(BollardError::DockerStreamError {
                error: "no stdin".into(),
            })
        })?;
        let feed = async {
            tokio::io::copy(&mut input, &mut stdin).await?;
            stdin.shutdown().await
        };
        let drain = async {
            let mut stderr = Vec::new();
            while let Some(item) = output.next().await {
                if let Ok(bollard::container::LogOutput::StdErr { message }) = item {
                    keep_tail(&mut stderr, &message);
                }
            }
            stderr
        };
        let streams = async { Ok(tokio::join!(feed, drain)) };
        let (fed, stderr) = self.while_alive("streaming into an exec in", name, streams).await?;
        let (code, tail) = self.exec_result(&id, name, stderr).await?;
        if let Err(e) = fed
            && code == 0
        {
            return Err(EngineError {
                op: "streaming into an exec in",
                object: name.to_string(),
                kind: EngineErrorKind::Unavailable,
                source: Box::new(e),
            });
        }
        Ok((code, tail))
    }

    /// Whether `image` is present in the engine.
    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        match self.answer("inspecting image", image, self.timeouts.call, self.docker.inspect_image(image)).await? {
            Ok(_) => Ok(true),
            Err(e) if classify(&e) == EngineErrorKind::NotFound => Ok(false),
            Err(e) => Err(err("inspecting image", image)(e)),
        }
    }

    /// The containers of job `name` in `scope`, running or not.
    async fn job_containers(&self, scope: &str, name: &str) -> Result<Vec<JobContainer>, EngineError> {
        let list =
            self.list_owned(label_filter(&[(LABEL_SCOPE, scope), (LABEL_KIND, "job"), (LABEL_NAME, name)])).await?;
        Ok(list
            .into_iter()
            .map(|c| JobContainer {
                name: container_name(&c),
                run: c.labels.as_ref().and_then(|l| l.get(LABEL_RUN)).cloned().unwrap_or_default(),
                id: c.id.unwrap_or_default(),
            })
            .collect())
    }

    /// Creates (does not start) the container `name` for run `run` of `timer`'s job, joined to
    /// the job's networks. Returns its ID.
    async fn create_job(
        &self,
        scope: &str,
        timer: &tend_specs::Timer,
        run: &str,
        name: &str,
    ) -> Result<String, EngineError> {
        let job = &timer.spec.job;
        let labels = HashMap::from([
            (LABEL_SCOPE.to_string(), scope.to_string()),
            (LABEL_KIND.to_string(), "job".to_string()),
            (LABEL_NAME.to_string(), timer.name.clone()),
            (LABEL_RUN.to_string(), run.to_string()),
            (LABEL_HASH.to_string(), timer.hash.clone()),
        ]);
        let env = engine_env(&timer.env);
        let mounts = engine_mounts(&job.volumes);
        let networking_config = job.networks.first().map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(n.clone(), EndpointSettings::default())])),
        });
        let body = ContainerCreateBody {
            image: job.image.clone(),
            entrypoint: job.entrypoint.clone(),
            cmd: job.command.clone(),
            env: Some(env),
            labels: Some(labels),
            user: job.user.clone(),
            working_dir: job.working_dir.clone(),
            host_config: Some(HostConfig {
                mounts: (!mounts.is_empty()).then_some(mounts),
                // tend follows the run and removes the container itself, after reading its
                // exit code and the end of its output.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.to_string()), ..Default::default() };
        let created = self
            .call("creating container", name, self.docker.create_container(Some(options), body))
            .await
            .map_err(|e| Redactor::of_envs([&timer.env]).engine_error(e))?;
        for net in job.networks.iter().skip(1) {
            let req = NetworkConnectRequest { container: created.id.clone(), endpoint_config: None };
            let object = format!("{name} → {net}");
            self.call("connecting to network", &object, self.docker.connect_network(net, req)).await?;
        }
        Ok(created.id)
    }

    /// Copies the container's output (stdout and stderr, in the order they come) into `out`
    /// until the container exits.
    async fn copy_job_logs<W: std::io::Write + Send>(
        &self,
        id: &str,
        name: &str,
        out: &mut W,
    ) -> Result<(), EngineError> {
        let options =
            bollard::query_parameters::LogsOptions { follow: true, stdout: true, stderr: true, ..Default::default() };
        let mut stream = self.docker.logs(id, Some(options));
        let op = "reading the output of container";
        let copy = async {
            while let Some(item) = stream.next().await {
                let bytes = item.map_err(self.fail(op, name))?.into_bytes();
                out.write_all(&bytes).map_err(|e| EngineError {
                    op: "saving the output of container",
                    object: name.to_string(),
                    kind: EngineErrorKind::Refused,
                    source: Box::new(e),
                })?;
            }
            Ok(())
        };
        self.while_alive(op, name, copy).await
    }

    /// Waits until the container is not running; its exit code.
    async fn wait_job(&self, id: &str, name: &str) -> Result<i64, EngineError> {
        let options = bollard::query_parameters::WaitContainerOptions { condition: "not-running".to_string() };
        let mut stream = self.docker.wait_container(id, Some(options));
        let op = "waiting for container";
        self.while_alive(op, name, async {
            match stream.next().await {
                Some(Ok(response)) => Ok(response.status_code),
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(self.fail(op, name)(e)),
                None => Err(err(op, name)(BollardError::DockerStreamError {
                    error: "the wait ended without an exit code".into(),
                })),
            }
        })
        .await
    }

    /// Stops a container: its stop signal (SIGTERM by default), SIGKILL after `grace_s`
    /// seconds. A container that is not running, or gone, counts as stopped.
    async fn stop_job(&self, id: &str, name: &str, grace_s: u64) -> Result<(), EngineError> {
        let t = Some(i32::try_from(grace_s).unwrap_or(i32::MAX));
        let bound = self.timeouts.stop(Some(grace_s));
        let client = self.client_for(bound);
        let stop = client.stop_container(id, Some(StopContainerOptions { t, signal: None }));
        match self.answer("stopping container", name, bound, stop).await? {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError { status_code: 304 | 404, .. }) => Ok(()),
            Err(e) => Err(err("stopping container", name)(e)),
        }
    }

    /// The IDs of the drill containers of backup `backup` in `scope` (leftovers of a drill
    /// that was killed included).
    async fn drill_containers(&self, scope: &str, backup: &str) -> Result<Vec<(String, String)>, EngineError> {
        let filters = label_filter(&[(LABEL_SCOPE, scope), (LABEL_KIND, "drill"), (LABEL_NAME, backup)]);
        let list = self.list_owned(filters).await?;
        Ok(list.iter().map(|c| (c.id.clone().unwrap_or_default(), container_name(c))).collect())
    }

    /// Creates and starts the scratch container `name` for a drill of `backup`: `service`'s
    /// image, command, environment, user and health check, nothing reachable from outside nor
    /// anything of the live service's data. Returns its ID.
    async fn start_drill(
        &self,
        scope: &str,
        backup: &str,
        service: &Service,
        name: &str,
    ) -> Result<String, EngineError> {
        let mut body = container_body(scope, service, 1);
        body.labels = Some(HashMap::from([
            (LABEL_SCOPE.to_string(), scope.to_string()),
            (LABEL_KIND.to_string(), "drill".to_string()),
            (LABEL_NAME.to_string(), backup.to_string()),
        ]));
        body.exposed_ports = None;
        body.networking_config = None;
        if let Some(host) = body.host_config.as_mut() {
            host.port_bindings = None;
            host.mounts = None;
            host.network_mode = Some("none".to_string());
        }
        let redactor = Redactor::of_envs([&service.env]);
        let options = CreateContainerOptions { name: Some(name.to_string()), ..Default::default() };
        let created = self
            .call("creating container", name, self.docker.create_container(Some(options), body))
            .await
            .map_err(|e| redactor.engine_error(e))?;
        self.call("starting container", name, self.docker.start_container(&created.id, None))
            .await
            .map_err(|e| redactor.engine_error(e))?;
        Ok(created.id)
    }

    /// Removes a drill container and its anonymous volumes, running or not.
    async fn remove_drill(&self, id: &str, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions { force: true, v: true, link: false };
        let remove = self.docker.remove_container(id, Some(options));
        match self.answer("removing container", name, self.timeouts.call, remove).await? {
            Ok(()) => Ok(()),
            Err(e) if matches!(classify(&e), EngineErrorKind::NotFound | EngineErrorKind::Conflict) => Ok(()),
            Err(e) => Err(err("removing container", name)(e)),
        }
    }
}

/// The engine's `NAME=value` environment, secrets included: for the engine only, never shown.
fn engine_env(env: &std::collections::BTreeMap<String, Env>) -> Vec<String> {
    env.iter()
        .map(|(k, v)| match v {
            Env::Literal(s) => format!("{k}={s}"),
            Env::Secret { value, .. } => format!("{k}={}", value.expose()),
        })
        .collect()
}

/// The engine's mounts for tend's volume mounts (of a service's instance or of a job).
fn engine_mounts(volumes: &[tend_specs::service::VolumeMount]) -> Vec<Mount> {
    volumes
        .iter()
        .map(|m| {
            let (typ, source) = match &m.source {
                MountSource::Bind(p) => (MountType::BIND, p.display().to_string()),
                MountSource::Volume(v) => (MountType::VOLUME, v.clone()),
            };
            Mount {
                typ: Some(typ),
                source: Some(source),
                target: Some(m.target.clone()),
                read_only: Some(m.read_only),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine on a daemon that accepts connections and never answers (a Unix socket in
    /// a temporary directory), with a 30 s call timeout.
    async fn hung_engine(dir: &std::path::Path) -> DockerEngine {
        let path = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind a socket");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let timeouts = Timeouts::new(Duration::from_secs(30));
        let addr = path.to_str().expect("a UTF-8 path");
        let docker = Docker::connect_with_unix(addr, 120, bollard::API_DEFAULT_VERSION).expect("a client");
        DockerEngine { docker: docker.with_timeout(Timeouts::client(timeouts.call)), timeouts }
    }

    /// An engine on a daemon that answers every request with `200 OK` (enough for a ping).
    async fn answering_engine(dir: &std::path::Path) -> DockerEngine {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let path = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind a socket");
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = conn.into_split();
                    let mut lines = tokio::io::BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        // The blank line ends a request's headers (none has a body).
                        if line.is_empty()
                            && write.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        let timeouts = Timeouts::new(Duration::from_secs(30));
        let addr = path.to_str().expect("a UTF-8 path");
        let docker = Docker::connect_with_unix(addr, 120, bollard::API_DEFAULT_VERSION).expect("a client");
        DockerEngine { docker: docker.with_timeout(Timeouts::client(timeouts.call)), timeouts }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_stream_is_not_cut_while_the_daemon_answers_its_pings() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let engine = answering_engine(dir.path()).await;
        let an_hour = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(7)
        };
        assert_eq!(engine.while_alive("waiting for container", "job-run-1", an_hour).await.expect("alive"), 7);
    }

    // Time is paused: it jumps ahead whenever every task waits, so the bounds pass at once.
    #[tokio::test(start_paused = true)]
    async fn every_kind_of_call_on_a_hung_daemon_fails_naming_the_call_and_its_bound() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let engine = hung_engine(dir.path()).await;
        let chain = |r: Result<(), EngineError>| {
            let e = r.expect_err("a hung daemon cannot answer");
            assert_eq!(e.kind(), "timeout", "{e:?}");
            crate::support::chain(&e)
        };
        let probe = engine.probe("web-1").await.map(|_| ());
        assert_eq!(chain(probe), "inspecting container web-1: Docker did not answer within 30s");
        // A stop has the container's grace period on top (Docker's 10 s when unset).
        let stop = engine.stop("id", "web-1", Some(60)).await;
        assert_eq!(chain(stop), "stopping container web-1: Docker did not answer within 1m30s");
        let stop = engine.stop_and_remove("id", "web-1", None).await;
        assert_eq!(chain(stop), "stopping container web-1: Docker did not answer within 40s");
        // A pull may go twice the call timeout without progress.
        let pull = engine.pull("busybox:1").await;
        assert_eq!(chain(pull), "pulling image busybox:1: Docker did not answer within 1m");
        // The setup of a stream (its response headers) is bounded by bollard's timeout, a
        // second above the call timeout.
        let wait = engine.wait_job("id", "job-run-1").await.map(|_| ());
        assert_eq!(chain(wait), "waiting for container job-run-1: Docker did not answer within 31s");
        let first = engine.events("default").next().await.expect("an error item");
        assert_eq!(chain(first), "watching Docker events: Docker did not answer within 31s");
        // Once it runs, a stream may last forever, but the daemon must answer its pings.
        let forever = engine.while_alive("reading the output of container", "job-run-1", std::future::pending());
        assert_eq!(chain(forever.await), "reading the output of container job-run-1: Docker did not answer within 30s");
    }

    #[test]
    fn status_strings_give_health_and_exit_codes() {
        assert_eq!(parse_health("Up 3 seconds (healthy)"), Health::Healthy);
        assert_eq!(parse_health("Up 3 seconds (health: starting)"), Health::Starting);
        assert_eq!(parse_health("Up 3 seconds (unhealthy)"), Health::Unhealthy);
        assert_eq!(parse_health("Up 3 seconds"), Health::None);
        assert_eq!(parse_exit_code("Exited (137) 2 minutes ago"), Some(137));
        assert_eq!(parse_exit_code("Up 2 minutes"), None);
    }
}
