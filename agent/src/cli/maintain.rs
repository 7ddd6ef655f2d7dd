//! `tend maintain` and `tend locks`: maintenance windows on the command line.

use super::*;

/// `tend maintain`.
#[allow(clippy::too_many_arguments)]
pub(super) fn maintain(
    cli: &Cli,
    targets: &[String],
    selectors: &[String],
    reason: Option<String>,
    window: Option<tend_specs::quantity::Duration>,
    wait: bool,
    specs: Option<&Path>,
    command: &[String],
) -> Result<ExitCode, CliError> {
    let path = specs_for(cli, specs)?;
    let mut desired = load(cli, &path)?;
    let rt = runtime()?;
    let cluster = match agent::host_cluster()? {
        Some(settings) => join_unless_local(&rt, settings, &mut desired, targets, selectors)?,
        None => None,
    };
    let keys = crate::maintain::resolve(&desired, targets, selectors)?;
    let (user, uid) = crate::maintain::locks::current_user();
    let since_ms = crate::support::now_ms();
    let until_ms = window.map(|w| since_ms + w.get().as_millis() as u64);
    let holder = crate::maintain::locks::Holder { user, uid, pid: std::process::id(), reason, since_ms, until_ms };
    // In a cluster: a slot of the disruption budget of every placed service it touches.
    let budget = match &cluster {
        Some(c) => Some(rt.block_on(budget::take_all(c, &desired, &keys, &holder, wait))?),
        None => None,
    };
    let dir = crate::maintain::locks::LockDir::new(&cli.lock_dir);
    if wait {
        eoutln!("waiting for {} …", keys.join(", "));
    }
    let held = dir.take_exclusive(&keys, &holder, wait).map_err(crate::maintain::MaintainError::from)?;
    // What the operator stops in the window is not a crash: not held for triage after it.
    crate::maintain::mark_stopped_on_purpose(&cli.state_dir, &keys)?;
    let paint = Paint::stderr();
    eoutln!(
        "{} {} ({}): tend leaves {} alone until this {} exits",
        paint.green("holding"),
        held.keys().join(", "),
        holder.describe(),
        if held.keys().len() == 1 { "it" } else { "them" },
        if command.is_empty() { "shell" } else { "command" },
    );
    let status = rt.block_on(crate::maintain::run_window(
        held,
        command,
        window.map(|w| w.get()),
        std::time::Duration::from_secs(10),
    ))?;
    if let Some(budget) = budget {
        rt.block_on(budget.release());
    }
    eoutln!("{} {}: the agent reconciles them on its next pass", paint.green("released"), keys.join(", "));
    // The agent looks at once (best effort: it also notices the release by itself).
    rt.block_on(async {
        if let Ok(Some(mut client)) = crate::daemon::api::Client::connect(&cli.socket).await {
            let _ = client.post("/v1/pass").await;
        }
    });
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(128 + 15),
    })
}

/// `tend locks`.
pub(super) fn locks(cli: &Cli, output: Output) -> Result<ExitCode, CliError> {
    let held =
        crate::maintain::locks::LockDir::new(&cli.lock_dir).list().map_err(crate::maintain::MaintainError::from)?;
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> =
                held.iter().map(|(k, h)| serde_json::json!({"target": k, "holder": h})).collect();
            print_json(&v)?;
        }
        Output::Text => {
            if held.is_empty() {
                outln!("No target is held for maintenance.");
            } else {
                let mut rows = vec![vec![
                    "TARGET".into(),
                    "BY".into(),
                    "SINCE".into(),
                    "UNTIL".into(),
                    "PID".into(),
                    "REASON".into(),
                ]];
                for (k, h) in &held {
                    rows.push(vec![
                        k.clone(),
                        h.user.clone(),
                        crate::support::time::format_ms(h.since_ms),
                        h.until_ms.map(crate::support::time::format_ms).unwrap_or_else(|| "-".into()),
                        h.pid.to_string(),
                        h.reason.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                table(&rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Joins the cluster for a window (the slots placed here, the disruption budget). When etcd
/// cannot be reached — the very case of the disaster-recovery procedure — a window that
/// touches no placed service goes on without it (it needs no budget), saying so; one that
/// touches a placed service is refused.
fn join_unless_local(
    rt: &tokio::runtime::Runtime,
    settings: crate::daemon::cluster::ClusterSettings,
    desired: &mut tend_specs::Desired,
    targets: &[String],
    selectors: &[String],
) -> Result<Option<budget::Joined>, CliError> {
    match rt.block_on(budget::join(settings, desired)) {
        Ok(joined) => Ok(Some(joined)),
        Err(CliError::Etcd(e)) if !touches_placed(desired, targets, selectors) => {
            eoutln!(
                "{} {}: going on without the cluster — no target is a placed service, so no disruption budget is needed",
                Paint::stderr().yellow("note:"),
                crate::support::chain(&e)
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether the window's targets or selectors name a placed service.
fn touches_placed(desired: &tend_specs::Desired, targets: &[String], selectors: &[String]) -> bool {
    desired.services.values().filter(|s| s.spec.placement.is_some()).any(|s| {
        targets.iter().any(|t| t.split('/').next() == Some(s.name.as_str()))
            || selectors
                .iter()
                .any(|sel| sel.split_once('=').is_some_and(|(k, v)| s.metadata_labels.get(k).is_some_and(|l| l == v)))
    })
}
