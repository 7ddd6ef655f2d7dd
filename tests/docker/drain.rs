//! `tend drain` / `tend undrain` end to end: services stopped (not removed) dependents
//! first, kept stopped by later passes, started again in dependency order; and through a
//! running agent.

use std::time::Duration;

use serde_json::Value;

use crate::agent::{Agent, container_id, running};
use crate::harness::{Env, describe, docker_ok, stdout_of, wait_for};
use crate::services::service;

/// A Docker timestamp (`2026-01-02T03:04:05.123456789Z`, trailing zeros of the fraction
/// trimmed) with a nine-digit fraction, so that two of them compare as text.
fn timestamp(name: &str, field: &str) -> String {
    let text = docker_ok(&["inspect", "-f", &format!("{{{{.State.{field}}}}}"), name]).trim().to_string();
    let utc = text.strip_suffix('Z').unwrap_or_else(|| panic!("{field} of {name} is not UTC: {text}"));
    let (secs, frac) = utc.split_once('.').unwrap_or((utc, ""));
    format!("{secs}.{frac:0<9}Z")
}

/// The steps of an apply report.
fn steps(report: &Value) -> Vec<Value> {
    report.pointer("/plan/steps").and_then(Value::as_array).cloned().unwrap_or_else(|| panic!("no steps: {report:#}"))
}

/// (action, container name, id) of each step, and the ids each waits for.
fn actions(report: &Value) -> Vec<(String, String, u64, Vec<u64>)> {
    steps(report)
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            let after = s["after"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
            (text("action"), text("name"), s["id"].as_u64().unwrap_or(0), after)
        })
        .collect()
}

fn has_drained_note(v: &Value) -> bool {
    let notes = v.pointer("/plan/notes").or_else(|| v.get("notes"));
    notes.and_then(Value::as_array).is_some_and(|ns| ns.iter().any(|n| n["note"] == "drained"))
}

#[test]
fn drain_stops_dependents_first_keeps_them_stopped_and_undrain_starts_them_again_in_order() {
    let env = Env::new("drain_undrain");
    let (web, api) = (env.name("web"), env.name("api"));
    let (web1, api1) = (format!("{web}-1"), format!("{api}-1"));
    // The policies would leave a cleanly stopped container stopped: undrain must not.
    env.write_spec(
        "app.yaml",
        &(service(&api, "restart: {policy: on-failure}")
            + &service(&web, &format!("dependsOn: [{{name: {api}}}]\nrestart: {{policy: never}}"))),
    );
    env.apply();
    let ids = (container_id(&web1), container_id(&api1));
    assert!(running(&web1) && running(&api1));

    let out = env.tend_ok(&["drain", "--reason", "kernel update"]);
    let text = stdout_of(&out);
    assert!(text.contains("drained since") && text.contains(": kernel update"), "{}", describe(&out));
    assert!(text.contains("`tend apply` stops the services"), "no agent runs: {}", describe(&out));
    let report = env.tend_json("apply", &[]);
    let acts = actions(&report);
    assert_eq!(
        acts.iter().map(|(a, n, _, _)| (a.as_str(), n.as_str())).collect::<Vec<_>>(),
        [("stop", web1.as_str()), ("stop", api1.as_str())],
        "{report:#}"
    );
    assert_eq!(acts[1].3, [acts[0].2], "api's stop waits for web's: {report:#}");
    assert!(report["outcomes"].as_object().is_some_and(|o| o.values().all(|r| r["result"] == "done")), "{report:#}");
    assert!(has_drained_note(&report), "{report:#}");
    assert!(!running(&web1) && !running(&api1), "both stopped");
    assert_eq!((container_id(&web1), container_id(&api1)), ids, "stopped, not removed");
    assert!(
        timestamp(&web1, "FinishedAt") < timestamp(&api1, "FinishedAt"),
        "web (the dependent) stops before api: {} vs {}",
        timestamp(&web1, "FinishedAt"),
        timestamp(&api1, "FinishedAt")
    );

    let status = env.status_json();
    assert_eq!(status["drain"]["reason"], "kernel update", "{status:#}");
    assert!(status["drain"]["user"].as_str().is_some_and(|u| !u.is_empty()), "{status:#}");
    assert!(status["drain"]["since_ms"].as_u64().is_some(), "{status:#}");
    let text = stdout_of(&env.tend_ok(&["status", env.spec_arg()]));
    assert!(text.contains("drained since") && text.contains("kernel update"), "{text}");

    // Later passes keep them stopped.
    let report = env.tend_json("apply", &[]);
    assert!(steps(&report).is_empty(), "{report:#}");
    assert!(has_drained_note(&report), "{report:#}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!running(&web1) && !running(&api1), "still stopped");
    assert_eq!(env.tend(&["plan", env.spec_arg()]).status.code(), Some(0), "nothing to do while drained");

    let out = env.tend_ok(&["undrain"]);
    assert!(stdout_of(&out).contains("undrained"), "{}", describe(&out));
    let report = env.tend_json("apply", &[]);
    let starts: Vec<String> = actions(&report).into_iter().filter(|(a, ..)| a == "start").map(|(_, n, ..)| n).collect();
    assert_eq!(starts, [api1.clone(), web1.clone()], "{report:#}");
    assert!(running(&web1) && running(&api1), "both run again");
    assert_eq!((container_id(&web1), container_id(&api1)), ids, "the same containers");
    assert!(
        timestamp(&api1, "StartedAt") < timestamp(&web1, "StartedAt"),
        "api (the dependency) starts before web: {} vs {}",
        timestamp(&api1, "StartedAt"),
        timestamp(&web1, "StartedAt")
    );
    let status = env.status_json();
    assert!(status.get("drain").is_none(), "{status:#}");
    assert!(!has_drained_note(&status), "{status:#}");
    assert_eq!(env.tend(&["plan", env.spec_arg()]).status.code(), Some(0), "converged after undrain");
    let state = std::fs::read_to_string(env.state_path().join("state.json")).expect("state file");
    assert!(!state.contains("stopped_by_drain") && !state.contains("\"drain\""), "{state}");

    let out = env.tend_ok(&["undrain"]);
    assert!(stdout_of(&out).contains("not drained"), "{}", describe(&out));
}

#[test]
fn a_running_agent_drains_and_undrains_at_once() {
    let env = Env::new("drain_agent");
    let (web, api) = (env.name("web"), env.name("api"));
    let (web1, api1) = (format!("{web}-1"), format!("{api}-1"));
    env.write_spec("app.yaml", &(service(&api, "") + &service(&web, &format!("dependsOn: [{{name: {api}}}]"))));
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(30), "both services to run", || running(&web1) && running(&api1));
    let ids = (container_id(&web1), container_id(&api1));

    let out = env.tend_ok(&["drain"]);
    assert!(stdout_of(&out).contains("the agent stops the services now"), "{}", describe(&out));
    wait_for(Duration::from_secs(30), "the agent to stop both", || !running(&web1) && !running(&api1));
    assert!(timestamp(&web1, "FinishedAt") < timestamp(&api1, "FinishedAt"), "dependents first");
    // A restart policy of `always` (the default) does not bring them back while drained.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!running(&web1) && !running(&api1), "still stopped\n{}", agent.log());
    let status = agent.status(&env);
    assert!(status["drain"].is_object(), "{status:#}");
    assert_eq!(status["agent"]["drained"], true, "{status:#}");

    let out = env.tend_ok(&["undrain"]);
    assert!(stdout_of(&out).contains("the agent starts the services again now"), "{}", describe(&out));
    wait_for(Duration::from_secs(30), "the agent to start both again", || running(&web1) && running(&api1));
    assert_eq!((container_id(&web1), container_id(&api1)), ids, "the same containers");
    assert!(timestamp(&api1, "StartedAt") < timestamp(&web1, "StartedAt"), "dependencies first");
}
