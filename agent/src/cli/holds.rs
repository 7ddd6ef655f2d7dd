//! `tend release`, `drain` and `undrain`: what keeps services down, through a running
//! agent when there is one.

use super::*;

/// `tend release` through a running agent (which passes at once); `None` when no agent runs.
pub(super) async fn release_by_agent(socket: &Path, name: &str) -> Result<Option<ExitCode>, CliError> {
    let Some(mut client) = crate::daemon::api::Client::connect(socket).await? else { return Ok(None) };
    match client.post(&format!("/v1/release/{name}")).await {
        Ok(v) => {
            for k in v["released"].as_array().into_iter().flatten().filter_map(|k| k.as_str()) {
                outln!("released {k}: the agent starts it again now");
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        Err(crate::daemon::api::ApiError::Agent { status: 404, .. }) => Err(CliError::NotHeld(name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// `tend drain`: in a cluster, takes the disruption budget's slots first (refused when it
/// is spent); records the drain in the state directory, then has a running agent act on it
/// at once; without an agent, the next `tend apply` stops the services.
pub(super) fn drain(cli: &Cli, reason: Option<String>, wait: bool, specs: Option<&Path>) -> Result<ExitCode, CliError> {
    let user = crate::maintain::locks::current_user().0;
    let since_ms = crate::support::now_ms();
    let drained = state::read_state(&cli.state_dir)?.drain.is_some();
    if let (false, Some(settings)) = (drained, agent::host_cluster()?) {
        let mut desired = load(cli, &specs_for(cli, specs)?)?;
        let who = crate::cluster::budget::Holder {
            node: settings.identity.node.clone(),
            user: user.clone(),
            reason: reason.clone(),
            since_ms,
            kind: crate::cluster::budget::HoldKind::Drain,
        };
        runtime()?.block_on(async {
            let joined = budget::join(settings, &mut desired).await?;
            budget::take_for_drain(&joined, &desired, who, wait).await
        })?;
    }
    let (drain, already) = state::drain(&cli.state_dir, state::Drain { reason, since_ms, user })?;
    let line = drained_line(&drain);
    outln!("{}{line}", if already { "already " } else { "" });
    match runtime()?.block_on(pass_by_agent(&cli.socket, true))? {
        Some(true) => outln!("the agent stops the services now, dependents first (see `tend status`)"),
        Some(false) => return Ok(agent_elsewhere(cli)),
        None => outln!("no agent runs here: `tend apply` stops the services, dependents first"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `tend undrain`: lifts the drain; a running agent starts the services again at once.
pub(super) fn undrain(cli: &Cli) -> Result<ExitCode, CliError> {
    let Some(lifted) = state::undrain(&cli.state_dir)? else {
        outln!("not drained: nothing to do");
        return Ok(ExitCode::SUCCESS);
    };
    outln!("undrained (was {})", drained_line(&lifted));
    match runtime()?.block_on(pass_by_agent(&cli.socket, false))? {
        Some(true) => outln!("the agent starts the services again now, dependencies first (see `tend status`)"),
        Some(false) => return Ok(agent_elsewhere(cli)),
        None => outln!("no agent runs here: `tend apply` starts the services again, dependencies first"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Has a running agent pass now, once it sees the drain as `drained`: `None` when no agent
/// runs; `Some(false)` when the agent keeps its state elsewhere (it does not see the change).
pub(super) async fn pass_by_agent(socket: &Path, drained: bool) -> Result<Option<bool>, CliError> {
    let Some(mut client) = crate::daemon::api::Client::connect(socket).await? else { return Ok(None) };
    let status = client.get("/v1/status").await?;
    if status.get("drain").is_some_and(|d| !d.is_null()) != drained {
        return Ok(Some(false));
    }
    client.post("/v1/pass").await?;
    Ok(Some(true))
}

/// The agent on the socket uses another state directory than this command did: say so.
pub(super) fn agent_elsewhere(cli: &Cli) -> ExitCode {
    eoutln!(
        "{} the agent on {} does not see this change: it keeps its state in another directory than {} (give the agent's --state-dir)",
        Paint::stderr().red("error:"),
        cli.socket.display(),
        cli.state_dir.display()
    );
    ExitCode::from(1)
}

pub(super) fn release(state_dir: &Path, name: &str) -> Result<ExitCode, CliError> {
    let released = state::release(state_dir, name, crate::support::now_ms())?;
    if released.is_empty() {
        return Err(CliError::NotHeld(name.to_string()));
    }
    for k in &released {
        outln!("released {k}: the next apply starts it again");
    }
    Ok(ExitCode::SUCCESS)
}
