//! What the local API asks of the running agent (`api::Control`): its status, its plan, a
//! pass, a release, job histories, its cluster (members and status, read from etcd within
//! a few seconds) and the metrics. Status and plan observe afresh, leaving
//! out an engine that does not answer so that the API answers at once while it hangs.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use tend_specs::Desired;

use crate::cluster::report;
use crate::daemon::api::{Control, Failure, Reply};
use crate::daemon::engine_health::{
    Engine, UNAVAILABLE, UNRESPONSIVE_KIND, engine_failure, lose_docker, note_engine, problem_line, unobservable,
    without,
};
use crate::daemon::shared::{Shared, Wake, lock};
use crate::engine::Engines;
use crate::reconcile::apply;
use crate::reconcile::model::Observed;
use crate::reconcile::state;
use crate::reconcile::status::Status;

/// The API, served from the shared state.
pub(super) struct AgentControl(pub(super) Arc<Shared>);

/// What the API observed: the part of the specs it could check, what runs, the state and
/// the plan, and the engines it left out because they do not answer.
struct Observation {
    desired: Desired,
    observed: Observed,
    state: state::State,
    plan: crate::reconcile::plan::Plan,
    skipped: Vec<Engine>,
}

impl AgentControl {
    /// Observes for the API. An engine known to be unresponsive is left out with the part
    /// of the specs it runs (when `partial`; otherwise the request fails), so the API
    /// answers at once while it hangs; one found unresponsive now is noted and left out
    /// the same way. The loop's passes find out when it answers again.
    async fn observe(shared: &Shared, partial: bool) -> Result<Observation, Failure> {
        let full = shared.current().map(|s| (*s.desired).clone()).unwrap_or_default();
        let options = match shared.current() {
            Some(set) => crate::daemon::with_specs(&shared.options, &set.dir),
            None => shared.options.clone(),
        };
        // At most one more try than there are engines: each failure leaves one out.
        for _ in 0..3 {
            let skipped = unobservable(shared);
            if let Some(engine) = skipped.first().filter(|_| !partial) {
                return Err(Failure::new(503, problem_line(shared, *engine)));
            }
            let all = shared.engines();
            let engines = Engines {
                docker: all.docker.clone().filter(|_| !skipped.contains(&Engine::Docker)),
                systemd: all.systemd.clone().filter(|_| !skipped.contains(&Engine::Systemd)),
            };
            let desired = without(full.clone(), &skipped);
            let observed = match crate::reconcile::observe::observe_all(&engines, &options, &desired).await {
                Ok(observed) => observed,
                Err(e) => match engine_failure(&e) {
                    Some((engine, kind @ UNRESPONSIVE_KIND, error)) => {
                        note_engine(shared, engine, Some((kind, error)));
                        continue;
                    }
                    Some((Engine::Docker, kind @ UNAVAILABLE, error)) => {
                        note_engine(shared, Engine::Docker, Some((kind, error.clone())));
                        lose_docker(shared, error);
                        continue;
                    }
                    _ => return Err(Failure::new(503, crate::support::chain(&e))),
                },
            };
            let state = state::read_state(&shared.settings.host.state_dir)
                .map_err(|e| Failure::new(500, crate::support::chain(&e)))?;
            let plan = apply::plan_for(&desired, &observed, &state, &options, &BTreeSet::new());
            return Ok(Observation { desired, observed, state, plan, skipped });
        }
        Err(Failure::new(503, "the engines do not answer".to_string()))
    }
}

/// What of `desired` this agent cannot run (systemd services where systemd is missing), as
/// the stand-alone commands say it.
fn unchecked(shared: &Shared, desired: &Desired) -> Option<String> {
    let why = lock(&shared.engines).systemd_missing.clone()?;
    crate::reconcile::observe::unmet_without_systemd(desired, &why)
}

impl Control for AgentControl {
    fn status(&self) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let seen = AgentControl::observe(&shared, true).await?;
            let mut status: Status =
                crate::reconcile::status::build(&seen.desired, &seen.observed, &seen.state, &seen.plan);
            let desired = shared.current().map(|s| (*s.desired).clone()).unwrap_or_default();
            status.timers =
                crate::jobs::list(&shared.settings.host.state_dir, &desired, tend_specs::calendar::Timestamp::now());
            let unanswered = seen.skipped.iter().map(|e| problem_line(&shared, *e));
            let unchecked: Vec<String> = unanswered.chain(unchecked(&shared, &desired)).collect();
            status.unchecked = (!unchecked.is_empty()).then(|| unchecked.join("; "));
            status.backups = desired
                .backups
                .values()
                .map(|b| crate::backup::health::health(&shared.settings.host.state_dir, b, crate::support::now_ms()))
                .collect();
            let mut agent = shared.agent_status();
            // The banner lasts as long as one of its holds.
            agent.unclean_boot &= seen.state.holds.values().any(|h| h.unclean_boot);
            agent.cluster = shared.cluster.as_ref().map(crate::daemon::cluster::summary);
            status.agent = Some(agent);
            serde_json::to_value(&status).map_err(|e| Failure::new(500, e.to_string()))
        })
    }

    fn plan(&self) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let mut seen = AgentControl::observe(&shared, false).await?;
            seen.plan.unchecked = unchecked(&shared, &seen.desired);
            serde_json::to_value(&seen.plan).map_err(|e| Failure::new(500, e.to_string()))
        })
    }

    fn trigger(&self) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let queued = shared.wake.try_send(Wake::Api).is_ok();
            Ok(json!({ "queued": queued }))
        })
    }

    fn release(&self, name: String) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let dir = shared.settings.host.state_dir.clone();
            let n = name.clone();
            let released = tokio::task::spawn_blocking(move || state::release(&dir, &n, crate::support::now_ms()))
                .await
                .map_err(|e| Failure::new(500, e.to_string()))?
                .map_err(|e| Failure::new(500, crate::support::chain(&e)))?;
            if released.is_empty() {
                return Err(Failure::new(404, format!("nothing is held under `{name}` (see `tend status`)")));
            }
            let _ = shared.wake.try_send(Wake::Api);
            Ok(json!({ "released": released }))
        })
    }

    fn jobs(&self, name: Option<String>, limit: Option<usize>) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let dir = &shared.settings.host.state_dir;
            match name {
                Some(name) => {
                    let records = crate::jobs::history(dir, &name, limit)
                        .map_err(|e| Failure::new(404, crate::support::chain(&e)))?;
                    serde_json::to_value(&records).map_err(|e| Failure::new(500, e.to_string()))
                }
                None => {
                    let desired = shared.current().map(|s| (*s.desired).clone()).unwrap_or_default();
                    let list = crate::jobs::list(dir, &desired, tend_specs::calendar::Timestamp::now());
                    serde_json::to_value(&list).map_err(|e| Failure::new(500, e.to_string()))
                }
            }
        })
    }

    fn cluster_members(&self) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let handle = in_cluster(&shared)?;
            let members = report::members(handle, report::READ_DEADLINE).await.map_err(|e| {
                Failure::new(
                    503,
                    format!("{} (`tend cluster status` shows this node's last view)", crate::support::chain(&e)),
                )
            })?;
            serde_json::to_value(&members).map_err(|e| Failure::new(500, e.to_string()))
        })
    }

    fn cluster_status(&self) -> Reply {
        let shared = self.0.clone();
        Box::pin(async move {
            let handle = in_cluster(&shared)?;
            let endpoints = shared.settings.cluster.as_ref().map(|c| c.etcd.endpoints.clone()).unwrap_or_default();
            let status = report::status(handle, &endpoints, report::READ_DEADLINE).await;
            serde_json::to_value(&status).map_err(|e| Failure::new(500, e.to_string()))
        })
    }

    fn metrics(&self) -> String {
        self.0.metrics.encode()
    }
}

/// This node's part in its cluster, or the API's refusal when it is in none.
fn in_cluster(shared: &Shared) -> Result<&crate::cluster::node::Handle, Failure> {
    shared.cluster.as_ref().ok_or_else(|| Failure::new(NOT_IN_CLUSTER_STATUS, NOT_IN_CLUSTER))
}

/// The answer of `/v1/cluster/*` on an agent outside a cluster.
const NOT_IN_CLUSTER: &str = "this agent is not in a cluster: its configuration has no cluster block";

/// Its status: the request is fine, the agent's configuration does not allow it.
const NOT_IN_CLUSTER_STATUS: u16 = 409;
