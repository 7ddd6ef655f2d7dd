//! Services end to end: converge, no-op, drift, removal, conflicts, holds, rollouts.
//!
//! Every test has its own [`Env`] (scope, state and spec directories), so they run in
//! parallel. Waits poll with timeouts; pauses are asserted only as lower bounds.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{self, ContainerInfo, Env, describe, docker, docker_ok, stdout_of, wait_for, wait_until};

/// A long-running command that exits at once on SIGTERM. A bare `sleep` as PID 1 ignores
/// SIGTERM, so every stop would wait for the kill timeout.
pub(crate) const SLEEPER: &str = r#"["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]"#;

/// A Service document: the test image with `pullPolicy: never` and [`SLEEPER`] unless
/// `extra` (spec-level YAML lines, indented relative to `spec:`) sets them.
pub(crate) fn service(name: &str, extra: &str) -> String {
    let mut doc = format!("---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n");
    let sets = |key: &str| extra.lines().any(|l| l.starts_with(key));
    if !sets("image:") {
        doc.push_str(&format!("  image: {}\n", harness::test_image()));
    }
    if !sets("pullPolicy:") {
        doc.push_str("  pullPolicy: never\n");
    }
    if !sets("command:") {
        doc.push_str(&format!("  command: {SLEEPER}\n"));
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        doc.push_str("  ");
        doc.push_str(line);
        doc.push('\n');
    }
    doc
}

/// Container name → ID of every container of the scope.
fn ids(env: &Env) -> BTreeMap<String, String> {
    env.containers().into_iter().map(|c| (c.name, c.id)).collect()
}

/// The container `name`, which must exist.
fn container(env: &Env, name: &str) -> ContainerInfo {
    env.container(name).unwrap_or_else(|| panic!("container {name} does not exist; have: {:?}", ids(env)))
}

/// `tend apply --output json`, asserting success.
fn apply_json(env: &Env) -> Value {
    env.tend_json("apply", &[])
}

/// `tend apply --output json` whatever its exit status: (status code, report, output).
fn apply_json_any(env: &Env) -> (Option<i32>, Value, Output) {
    let output = env.tend(&["apply", "--output", "json", env.spec_arg()]);
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("tend apply did not print a JSON report: {e}\n{}", describe(&output)));
    (output.status.code(), report, output)
}

/// `tend plan --output json`, which must exit 0 (no changes) or 2 (changes), parsed.
fn plan_json(env: &Env) -> Value {
    let output = env.tend(&["plan", "--output", "json", env.spec_arg()]);
    assert!(matches!(output.status.code(), Some(0 | 2)), "tend plan failed\n{}", describe(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("tend plan did not print JSON: {e}\n{}", describe(&output)))
}

/// Exit status of `tend plan` (0 no changes, 2 changes, 1 error).
fn plan_exit(env: &Env) -> Option<i32> {
    env.tend(&["plan", env.spec_arg()]).status.code()
}

/// The steps of a plan, or of the plan inside an apply report.
fn steps(v: &Value) -> Vec<Value> {
    let steps = v.pointer("/plan/steps").or_else(|| v.get("steps"));
    steps.and_then(Value::as_array).cloned().unwrap_or_else(|| panic!("no steps in {v:#}"))
}

/// The notes of a plan, a status or the plan inside an apply report.
fn notes(v: &Value) -> Vec<Value> {
    let notes = v.pointer("/plan/notes").or_else(|| v.get("notes"));
    notes.and_then(Value::as_array).cloned().unwrap_or_else(|| panic!("no notes in {v:#}"))
}

/// The first step matching `pred`, or a panic showing the steps.
fn find_step(v: &Value, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    steps(v).into_iter().find(|s| pred(s)).unwrap_or_else(|| panic!("no {what} step in {v:#}"))
}

/// The outcome of step `id` in an apply report (`done`, `failed`, `skipped`).
fn outcome(report: &Value, id: &Value) -> Value {
    let key = id.as_u64().map(|n| n.to_string()).unwrap_or_else(|| panic!("step id {id}"));
    report
        .pointer(&format!("/outcomes/{key}"))
        .cloned()
        .unwrap_or_else(|| panic!("no outcome for step {key} in {:#}", report["outcomes"]))
}

fn result_of(report: &Value, step: &Value) -> String {
    outcome(report, &step["id"])["result"].as_str().unwrap_or_default().to_string()
}

fn s(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Nanoseconds since the epoch of an RFC 3339 UTC timestamp as Docker prints it
/// (`2026-01-02T03:04:05.123456789Z`).
fn rfc3339_ns(text: &str) -> i128 {
    let bad = || panic!("unexpected timestamp {text:?}");
    let Some(utc) = text.strip_suffix('Z') else { bad() };
    let Some((date, time)) = utc.split_once('T') else { bad() };
    let num = |p: &str| p.parse::<i64>().unwrap_or_else(|_| bad());
    let ymd: Vec<i64> = date.split('-').map(num).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let hms: Vec<i64> = hms.split(':').map(num).collect();
    if ymd.len() != 3 || hms.len() != 3 || frac.is_empty() || frac.len() > 9 {
        bad();
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, d) = (if ymd[1] <= 2 { ymd[0] - 1 } else { ymd[0] }, ymd[1], ymd[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    let frac_ns = num(&format!("{frac:0<9}"));
    i128::from(secs) * 1_000_000_000 + i128::from(frac_ns)
}

/// When the container was created (ns since the epoch).
fn created_ns(c: &ContainerInfo) -> i128 {
    rfc3339_ns(c.inspect["Created"].as_str().unwrap_or_default())
}

/// When the container's process last started (ns since the epoch).
fn started_ns(c: &ContainerInfo) -> i128 {
    rfc3339_ns(c.inspect.pointer("/State/StartedAt").and_then(Value::as_str).unwrap_or_default())
}

fn exec_cat(name: &str, path: &str) -> String {
    docker_ok(&["exec", name, "cat", path])
}

/// Removes a container made by hand (without tend's labels, so the harness would not).
pub(crate) struct HandMade(pub(crate) String);

impl Drop for HandMade {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", self.0.as_str()]);
    }
}

#[test]
fn first_apply_creates_everything_and_a_second_apply_changes_nothing() {
    harness::require_docker();
    let env = Env::new("first_apply_converges");
    let (web, api, net, vol) = (env.name("web"), env.name("api"), env.name("net"), env.name("data"));
    env.write_spec(
        "web.yaml",
        &(service(&web, &format!("replicas: 2\nnetworks: [{net}]"))
            + &service(&api, &format!("networks: [{net}]\nvolumes: [\"{vol}:/data\"]\nenv: {{MODE: test}}"))),
    );
    assert_eq!(plan_exit(&env), Some(2), "a fresh scope has changes to apply");
    env.apply();

    let names: Vec<String> = ids(&env).into_keys().collect();
    assert_eq!(names, [format!("{api}-1"), format!("{web}-1"), format!("{web}-2")]);
    assert!(env.containers().iter().all(ContainerInfo::is_running), "{:#?}", env.containers());
    assert_eq!(env.networks(), std::slice::from_ref(&net));
    assert_eq!(env.volumes(), std::slice::from_ref(&vol));
    let api1 = container(&env, &format!("{api}-1"));
    assert_eq!(api1.label("tend.scope"), Some(env.scope.as_str()));
    assert_eq!(api1.label("tend.name"), Some(api.as_str()));
    assert_eq!(api1.label("tend.instance"), Some("1"));

    assert_eq!(plan_exit(&env), Some(0), "plan after apply must report no changes");
    let before = ids(&env);
    let report = apply_json(&env);
    assert!(steps(&report).is_empty(), "a re-apply must be a no-op: {report:#}");
    assert!(report["pulls"].as_array().is_some_and(Vec::is_empty), "{report:#}");
    assert_eq!(ids(&env), before, "no container may be replaced by a no-op apply");
}

#[test]
fn changing_one_of_ten_services_recreates_only_that_one() {
    harness::require_docker();
    let env = Env::new("one_of_ten_changes");
    let names: Vec<String> = (0..10).map(|i| env.name(&format!("svc{i}"))).collect();
    let specs = |changed: Option<&str>| {
        names
            .iter()
            .map(|n| {
                let value = if Some(n.as_str()) == changed { "two" } else { "one" };
                service(n, &format!("env: {{VERSION: {value}}}"))
            })
            .collect::<String>()
    };
    env.write_spec("all.yaml", &specs(None));
    env.apply();
    let before = ids(&env);
    assert_eq!(before.len(), 10, "{before:?}");

    let target = names[4].clone();
    env.write_spec("all.yaml", &specs(Some(&target)));
    let plan = plan_json(&env);
    let plan_steps = steps(&plan);
    assert!(!plan_steps.is_empty(), "changing env must plan a recreate");
    for step in &plan_steps {
        assert_eq!(s(step, "service"), target, "only the changed service may have steps: {plan:#}");
        assert_eq!(s(step, "reason"), "changed", "{step:#}");
        assert_eq!(step["fields"], serde_json::json!(["env"]), "the reason names the changed field: {step:#}");
    }
    let cli = env.tend(&["plan", env.spec_arg()]);
    assert_eq!(cli.status.code(), Some(2), "{}", describe(&cli));
    assert!(stdout_of(&cli).contains("changed: env"), "{}", describe(&cli));

    env.apply();
    let after = ids(&env);
    assert_eq!(after.len(), 10, "{after:?}");
    for (name, id) in &before {
        if *name == format!("{target}-1") {
            assert_ne!(after.get(name), Some(id), "{name} must be recreated");
        } else {
            assert_eq!(after.get(name), Some(id), "{name} must keep its container");
        }
    }
    let changed = container(&env, &format!("{target}-1"));
    assert!(changed.is_running());
    let env_list = changed.inspect.pointer("/Config/Env").cloned().unwrap_or_default();
    assert!(env_list.as_array().is_some_and(|a| a.iter().any(|e| e == "VERSION=two")), "{env_list}");
    assert_eq!(plan_exit(&env), Some(0));
}

#[test]
fn editing_a_bind_mounted_config_file_recreates_the_service() {
    harness::require_docker();
    let env = Env::new("bind_mount_content");
    let web = env.name("web");
    env.write_spec("site/index.html", "version one\n");
    env.write_spec("web.yaml", &service(&web, "volumes: [\"./site/index.html:/www/index.html:ro\"]"));
    env.apply();
    let name = format!("{web}-1");
    let old = container(&env, &name);
    assert_eq!(exec_cat(&name, "/www/index.html"), "version one");
    assert_eq!(plan_exit(&env), Some(0));

    env.write_spec("site/index.html", "version two\n");
    let plan = plan_json(&env);
    let recreate = find_step(&plan, "create", |st| s(st, "action") == "create");
    assert_eq!(s(&recreate, "reason"), "changed", "{plan:#}");
    assert_eq!(recreate["fields"], serde_json::json!(["volumes"]), "{plan:#}");

    env.apply();
    let new = container(&env, &name);
    assert_ne!(new.id, old.id, "a changed mounted file must recreate the container");
    assert!(new.is_running());
    assert_eq!(exec_cat(&name, "/www/index.html"), "version two");
    assert_eq!(plan_exit(&env), Some(0));
}

#[test]
fn containers_removed_or_stopped_by_hand_are_repaired_by_the_next_apply() {
    harness::require_docker();
    let env = Env::new("drift_repaired");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, "replicas: 2"));
    env.apply();
    let (one, two) = (format!("{web}-1"), format!("{web}-2"));
    let before = ids(&env);

    docker_ok(&["rm", "-f", one.as_str()]);
    docker_ok(&["stop", "-t", "5", two.as_str()]);
    assert!(env.container(&one).is_none());
    assert!(!container(&env, &two).is_running());

    let report = apply_json(&env);
    let create = find_step(&report, "create", |st| s(st, "action") == "create");
    assert_eq!((s(&create, "name"), s(&create, "reason")), (one.clone(), "missing".into()), "{report:#}");
    let start = find_step(&report, "start", |st| s(st, "action") == "start");
    assert_eq!((s(&start, "name"), s(&start, "reason")), (two.clone(), "exited".into()), "{report:#}");

    let after = ids(&env);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(after[&one], before[&one], "the removed instance is created anew");
    assert_eq!(after[&two], before[&two], "the stopped instance is restarted in place");
    assert!(env.containers().iter().all(ContainerInfo::is_running), "{:#?}", env.containers());
    assert_eq!(plan_exit(&env), Some(0));
}

#[test]
fn removing_a_spec_removes_its_containers_and_unused_network_only() {
    harness::require_docker();
    let env = Env::new("spec_removed");
    let (gone, kept, net) = (env.name("gone"), env.name("kept"), env.name("net"));
    env.write_spec("gone.yaml", &service(&gone, &format!("replicas: 2\nnetworks: [{net}]")));
    env.write_spec("kept.yaml", &service(&kept, ""));
    env.apply();
    assert_eq!(ids(&env).len(), 3);
    assert_eq!(env.networks(), std::slice::from_ref(&net));
    let kept_id = container(&env, &format!("{kept}-1")).id;

    env.remove_spec("gone.yaml");
    let plan = plan_json(&env);
    let plan_steps = steps(&plan);
    let removes: Vec<&Value> = plan_steps.iter().filter(|st| s(st, "action") == "remove").collect();
    assert_eq!(removes.len(), 2, "{plan:#}");
    assert!(removes.iter().all(|st| s(st, "reason") == "spec-removed"), "{plan:#}");
    let rm_net = find_step(&plan, "remove-network", |st| s(st, "action") == "remove-network");
    assert_eq!(s(&rm_net, "network"), net);

    env.apply();
    let after = ids(&env);
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), [format!("{kept}-1")]);
    assert_eq!(after[&format!("{kept}-1")], kept_id, "the other service is untouched");
    assert!(env.networks().is_empty(), "the unused network is removed: {:?}", env.networks());
    assert_eq!(plan_exit(&env), Some(0));
}

#[test]
fn a_container_tend_does_not_own_is_a_conflict_and_is_left_untouched() {
    harness::require_docker();
    let env = Env::new("foreign_conflict");
    let (web, api) = (env.name("web"), env.name("api"));
    let squatter = format!("{web}-1");
    let _guard = HandMade(squatter.clone());
    let foreign_id = docker_ok(&[
        "run",
        "-d",
        "--name",
        squatter.as_str(),
        harness::test_image().as_str(),
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ]);
    env.write_spec("web.yaml", &service(&web, ""));
    env.write_spec("api.yaml", &service(&api, ""));

    let plan = plan_json(&env);
    let conflict = notes(&plan).into_iter().find(|n| s(n, "note") == "conflict");
    let conflict = conflict.unwrap_or_else(|| panic!("plan must note the conflict: {plan:#}"));
    assert_eq!((s(&conflict, "name"), s(&conflict, "id")), (squatter.clone(), foreign_id.clone()));
    assert!(steps(&plan).iter().all(|st| s(st, "service") != web), "nothing is planned for {web}: {plan:#}");

    let output = env.tend(&["apply", env.spec_arg()]);
    let text = format!("{}{}", stdout_of(&output), String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("conflict") && text.contains(&squatter), "apply must show the conflict\n{text}");
    assert_eq!(output.status.code(), Some(1), "apply that leaves a conflict fails\n{}", describe(&output));

    // The rest of the specs is applied; the foreign container is untouched.
    assert!(container(&env, &format!("{api}-1")).is_running());
    assert!(env.container(&squatter).is_none(), "tend must not create or label {squatter}");
    let foreign = harness::inspect_all(std::slice::from_ref(&foreign_id));
    let foreign = foreign.first().map(ContainerInfo::from_inspect).expect("the foreign container still exists");
    assert_eq!(foreign.id, foreign_id);
    assert!(foreign.is_running(), "the foreign container keeps running");
    assert!(foreign.label("tend.scope").is_none());

    let status = env.status_json();
    assert!(
        notes(&status).iter().any(|n| s(n, "note") == "conflict" && s(n, "name") == squatter),
        "status must show the conflict: {status:#}"
    );
    let text = stdout_of(&env.tend_ok(&["status", env.spec_arg()]));
    assert!(text.contains("conflict") && !text.contains("Converged"), "{text}");
}

#[test]
fn a_dependent_is_created_only_after_its_dependency_is_healthy() {
    harness::require_docker();
    let env = Env::new("depends_on_healthy");
    let (db, app) = (env.name("db"), env.name("app"));
    env.write_spec(
        "db.yaml",
        &service(
            &db,
            "command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3; touch /tmp/ready; sleep 3600 & wait\"]\n\
             healthcheck: {command: [\"test\", \"-f\", \"/tmp/ready\"], interval: 1s, timeout: 1s, retries: 60}",
        ),
    );
    env.write_spec("app.yaml", &service(&app, &format!("dependsOn: [{{name: {db}, condition: healthy}}]")));

    let report = apply_json(&env);
    let wait = find_step(&report, "await", |st| s(st, "action") == "await" && s(st, "service") == db);
    let create = find_step(&report, "create", |st| s(st, "action") == "create" && s(st, "service") == app);
    assert!(
        create["after"].as_array().is_some_and(|a| a.contains(&wait["id"])),
        "the dependent's create waits for the await: {report:#}"
    );
    assert_eq!(result_of(&report, &wait), "done");
    assert_eq!(result_of(&report, &create), "done");

    let db1 = container(&env, &format!("{db}-1"));
    let app1 = container(&env, &format!("{app}-1"));
    assert_eq!(db1.health.as_deref(), Some("healthy"));
    // The dependency cannot be healthy before its file appears, 3 s after it started (the
    // bound leaves slack for the moment between the process starting and Docker noting it).
    let gap = created_ns(&app1) - started_ns(&db1);
    assert!(gap >= 2_500_000_000, "{app} was created {gap} ns after {db} started, before it could be healthy");
    assert_eq!(plan_exit(&env), Some(0), "a healthy dependency needs no await once all is created");
}

#[test]
fn a_dependency_that_never_becomes_healthy_fails_the_apply_and_blocks_the_dependent() {
    harness::require_docker();
    let env = Env::new("depends_on_timeout");
    let (db, app) = (env.name("db"), env.name("app"));
    env.write_spec(
        "db.yaml",
        &service(&db, "healthcheck: {command: [\"false\"], interval: 1s, timeout: 1s, retries: 1000}"),
    );
    env.write_spec(
        "app.yaml",
        &service(&app, &format!("dependsOn: [{{name: {db}, condition: healthy, timeout: 5s}}]")),
    );

    let (code, report, output) = apply_json_any(&env);
    assert_eq!(code, Some(1), "{}", describe(&output));
    let wait = find_step(&report, "await", |st| s(st, "action") == "await" && s(st, "service") == db);
    let waited = outcome(&report, &wait["id"]);
    assert_eq!(s(&waited, "result"), "failed", "{report:#}");
    let error = s(&waited, "error");
    assert!(error.contains("timed out") && error.contains(&db) && error.contains("healthy"), "unclear error: {error}");
    let create = find_step(&report, "create", |st| s(st, "action") == "create" && s(st, "service") == app);
    assert_eq!(result_of(&report, &create), "skipped", "{report:#}");
    assert!(env.container(&format!("{app}-1")).is_none(), "the dependent must not be created");

    let text = stdout_of(&env.tend(&["apply", env.spec_arg()]));
    assert!(text.contains("timed out") && text.contains(&db), "the text report shows the timeout\n{text}");
}

#[test]
fn a_held_instance_stays_down_until_released() {
    harness::require_docker();
    let env = Env::new("hold_until_release");
    let db = env.name("db");
    let name = format!("{db}-1");
    env.write_spec("db.yaml", &service(&db, "restart: {policy: hold}"));
    env.apply();
    let id = container(&env, &name).id;

    docker_ok(&["kill", name.as_str()]);
    wait_for(Duration::from_secs(30), "the killed container to exit", || !container(&env, &name).is_running());

    let report = apply_json(&env);
    let hold = find_step(&report, "hold", |st| s(st, "action") == "hold");
    assert_eq!((s(&hold, "name"), s(&hold, "reason")), (name.clone(), "unexpected-exit".into()));
    assert_eq!(hold["code"], 137, "{hold:#}");
    assert!(!container(&env, &name).is_running(), "a held instance is not restarted");

    let status = env.status_json();
    let instance = status["services"]
        .as_array()
        .and_then(|ss| ss.iter().find(|sv| s(sv, "name") == db))
        .and_then(|sv| sv["instances"].as_array())
        .and_then(|is| is.iter().find(|i| s(i, "name") == name))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in status {status:#}"));
    assert_eq!(instance["held"], true, "{status:#}");
    assert!(notes(&status).iter().any(|n| s(n, "note") == "held" && s(n, "name") == name), "{status:#}");
    assert!(env.state_path().join("state.json").is_file(), "the hold is recorded in the state directory");

    // Another tend process still honours the hold.
    let report = apply_json(&env);
    assert!(steps(&report).is_empty(), "{report:#}");
    assert!(notes(&report).iter().any(|n| s(n, "note") == "held"), "{report:#}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!container(&env, &name).is_running(), "still held after another apply");
    assert_eq!(plan_exit(&env), Some(0));

    let released = env.tend_ok(&["release", name.as_str()]);
    assert!(stdout_of(&released).contains(&name), "{}", describe(&released));
    let again = env.tend(&["release", name.as_str()]);
    assert_eq!(again.status.code(), Some(1), "nothing left to release\n{}", describe(&again));

    let report = apply_json(&env);
    let start = find_step(&report, "start", |st| s(st, "action") == "start");
    assert_eq!(s(&start, "name"), name, "{report:#}");
    let after = container(&env, &name);
    assert!(after.is_running(), "a released instance is started again");
    assert_eq!(after.id, id, "started in place");
    assert_eq!(plan_exit(&env), Some(0));

    // A new unexpected exit holds it again.
    docker_ok(&["kill", name.as_str()]);
    wait_for(Duration::from_secs(30), "the killed container to exit", || !container(&env, &name).is_running());
    let report = apply_json(&env);
    find_step(&report, "hold", |st| s(st, "action") == "hold");
    assert!(!container(&env, &name).is_running());
}

#[test]
fn restart_always_restarts_an_exited_container_and_backs_off_a_crash_loop() {
    harness::require_docker();
    let env = Env::new("restart_always");
    let (web, crash) = (env.name("web"), env.name("crash"));
    env.write_spec("web.yaml", &service(&web, "restart: {policy: always}"));
    env.write_spec(
        "crash.yaml",
        &service(
            &crash,
            "command: [\"sh\", \"-c\", \"exit 3\"]\nrestart: {policy: always, backoff: {initial: 1m, max: 5m}}",
        ),
    );
    env.apply();
    let (web1, crash1) = (format!("{web}-1"), format!("{crash}-1"));
    let web_before = container(&env, &web1);

    docker_ok(&["kill", web1.as_str()]);
    wait_for(Duration::from_secs(30), "the killed container to exit", || !container(&env, &web1).is_running());
    wait_for(Duration::from_secs(30), "the crashing container to exit", || container(&env, &crash1).state == "exited");

    // Both exited: the first restart of each is immediate.
    let report = apply_json(&env);
    for name in [&web1, &crash1] {
        let start = find_step(&report, "start", |st| s(st, "action") == "start" && s(st, "name") == *name);
        assert_eq!(s(&start, "reason"), "exited", "{start:#}");
        assert_eq!(start["attempt"], 1, "{start:#}");
    }
    let web_after = container(&env, &web1);
    assert_eq!(web_after.id, web_before.id, "restarted in place");
    assert!(web_after.is_running());

    // The crash loop: exited again right away, so the next restart waits for the backoff.
    let crash_started = started_ns(&container(&env, &crash1));
    wait_for(Duration::from_secs(30), "the crashing container to exit again", || {
        container(&env, &crash1).state == "exited"
    });
    let report = apply_json(&env);
    assert!(
        steps(&report).iter().all(|st| s(st, "name") != crash1),
        "a crash loop within its backoff is not restarted: {report:#}"
    );
    let backing_off = notes(&report).into_iter().find(|n| s(n, "note") == "backing-off" && s(n, "name") == crash1);
    let backing_off = backing_off.unwrap_or_else(|| panic!("no backing-off note: {report:#}"));
    assert_eq!(backing_off["attempt"], 2, "{backing_off:#}");
    let crash_now = container(&env, &crash1);
    assert_eq!(started_ns(&crash_now), crash_started, "not started again");
    assert_eq!(crash_now.state, "exited");
    let text = stdout_of(&env.tend_ok(&["apply", env.spec_arg()]));
    assert!(text.contains("backing off") && text.contains(&crash1), "{text}");
}

#[test]
fn scaling_up_paces_new_instances_and_scaling_down_removes_the_highest_first() {
    harness::require_docker();
    let env = Env::new("scale_up_down");
    let web = env.name("web");
    let spec = |n: u32| service(&web, &format!("replicas: {n}\nrollout: {{interval: 2s, scaleDownInterval: 1s}}"));
    env.write_spec("web.yaml", &spec(1));
    env.apply();
    let first = container(&env, &format!("{web}-1")).id;

    env.write_spec("web.yaml", &spec(5));
    env.apply();
    let all = env.containers();
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<String> = (1..=5).map(|i| format!("{web}-{i}")).collect();
    assert_eq!(names, expected);
    assert!(all.iter().all(ContainerInfo::is_running), "{all:#?}");
    assert_eq!(all[0].id, first, "the existing instance is kept");
    for pair in all[1..].windows(2) {
        let gap = created_ns(&pair[1]) - created_ns(&pair[0]);
        assert!(gap >= 1_950_000_000, "{} was created only {gap} ns after {}", pair[1].name, pair[0].name);
    }
    let kept: BTreeMap<String, String> = all.iter().take(2).map(|c| (c.name.clone(), c.id.clone())).collect();

    env.write_spec("web.yaml", &spec(2));
    let plan = plan_json(&env);
    let removes: Vec<(String, u64)> = steps(&plan)
        .iter()
        .filter(|st| s(st, "action") == "remove")
        .map(|st| (s(st, "name"), st["pause_ms"].as_u64().unwrap_or(0)))
        .collect();
    let expected: Vec<(String, u64)> =
        [(5, 0), (4, 1000), (3, 1000)].iter().map(|(i, p)| (format!("{web}-{i}"), *p)).collect();
    assert_eq!(removes, expected, "highest first, paced by scaleDownInterval: {plan:#}");
    env.apply();
    assert_eq!(ids(&env), kept, "instances 1 and 2 keep their containers");
    assert_eq!(plan_exit(&env), Some(0));
}

#[test]
fn an_apply_killed_midway_is_completed_by_the_next_apply() {
    harness::require_docker();
    let env = Env::new("kill_midway");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, "replicas: 6\nrollout: {interval: 1s}"));

    let mut child: Child = Command::new(harness::tend_bin())
        .arg("--state-dir")
        .arg(env.state_path())
        .arg("--scope")
        .arg(&env.scope)
        .args(["apply", env.spec_arg()])
        .env("TEND_LOG", "warn")
        .env_remove("TEND_STATE_DIR")
        .env_remove("TEND_SCOPE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tend apply");
    let started = wait_until(Duration::from_secs(60), || env.container_ids().len() >= 2);
    let exited_early = child.try_wait().expect("poll tend").is_some();
    child.kill().expect("SIGKILL tend");
    child.wait().expect("reap tend");
    assert!(started, "tend did not create 2 containers within 60 s");
    assert!(!exited_early, "tend finished before it could be killed midway");
    let partial = env.container_ids().len();
    assert!(partial < 6, "the killed apply had already created all {partial} containers");

    env.apply();
    let all = env.containers();
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<String> = (1..=6).map(|i| format!("{web}-{i}")).collect();
    assert_eq!(names, expected, "exactly the desired containers: no duplicates, no orphans");
    assert!(all.iter().all(ContainerInfo::is_running), "{all:#?}");
    assert_eq!(plan_exit(&env), Some(0));
}

#[test]
fn a_rollout_stops_at_the_first_replacement_that_fails_its_health_check() {
    harness::require_docker();
    let env = Env::new("rollout_unhealthy");
    let web = env.name("web");
    let spec = |command: &str| {
        service(
            &web,
            &format!(
                "replicas: 3\ncommand: [\"sh\", \"-c\", \"{command}trap 'exit 0' TERM; sleep 3600 & wait\"]\n\
                 healthcheck: {{command: [\"test\", \"-f\", \"/tmp/ok\"], interval: 1s, timeout: 1s, retries: 2}}"
            ),
        )
    };
    env.write_spec("web.yaml", &spec("touch /tmp/ok; "));
    env.apply();
    // Apply waits for each new instance before starting the next, but not for the last one.
    wait_for(Duration::from_secs(30), "all three instances to be healthy", || {
        let all = env.containers();
        all.len() == 3 && all.iter().all(|c| c.health.as_deref() == Some("healthy"))
    });
    let before = env.containers();
    let old_hash = before[0].label("tend.hash").unwrap_or_default().to_string();

    // The new version never creates the file its health check looks for.
    env.write_spec("web.yaml", &spec("echo broken; "));
    let (code, report, output) = apply_json_any(&env);
    assert_eq!(code, Some(1), "a failed rollout fails the apply\n{}", describe(&output));
    let failed: Vec<Value> = steps(&report).into_iter().filter(|st| result_of(&report, st) == "failed").collect();
    assert_eq!(failed.len(), 1, "{report:#}");
    let first = format!("{web}-1");
    assert_eq!((s(&failed[0], "action"), s(&failed[0], "name")), ("await".into(), first.clone()), "{report:#}");
    let error = s(&outcome(&report, &failed[0]["id"]), "error");
    assert!(error.contains(&first) && error.contains("health"), "unclear error: {error}");
    for step in steps(&report) {
        let result = result_of(&report, &step);
        if s(&step, "name") == first {
            assert!(result == "done" || step["id"] == failed[0]["id"], "{report:#}");
        } else {
            assert_eq!(result, "skipped", "the other replacements must not run: {step:#}");
        }
    }

    // The instances not yet replaced still run the old configuration.
    for old in &before[1..] {
        let now = container(&env, &old.name);
        assert_eq!(now.id, old.id, "{} must not be replaced", old.name);
        assert!(now.is_running());
        assert_eq!(now.label("tend.hash"), Some(old_hash.as_str()));
    }
    let new = container(&env, &first);
    assert_ne!(new.label("tend.hash"), Some(old_hash.as_str()), "the first instance was replaced");
    assert_eq!(new.health.as_deref(), Some("unhealthy"));
}

#[test]
fn start_first_starts_the_new_container_beside_the_old_then_swaps_names() {
    harness::require_docker();
    let env = Env::new("start_first");
    let web = env.name("web");
    let spec =
        |version: &str| service(&web, &format!("env: {{VERSION: \"{version}\"}}\nrollout: {{order: start-first}}"));
    env.write_spec("web.yaml", &spec("1"));
    env.apply();
    let name = format!("{web}-1");
    let old = container(&env, &name);

    env.write_spec("web.yaml", &spec("2"));
    let report = apply_json(&env);
    let actions: Vec<(String, String)> = steps(&report)
        .iter()
        .map(|st| {
            let target = match s(st, "action").as_str() {
                "rename" => format!("{} -> {}", s(st, "from"), s(st, "to")),
                "await" => s(st, "name"),
                _ => s(st, "name"),
            };
            (s(st, "action"), target)
        })
        .collect();
    let next = format!("{name}-next");
    let expected = [
        ("create".to_string(), next.clone()),
        ("await".to_string(), next.clone()),
        ("remove".to_string(), name.clone()),
        ("rename".to_string(), format!("{next} -> {name}")),
    ];
    assert_eq!(actions, expected, "{report:#}");
    assert!(steps(&report).iter().all(|st| result_of(&report, st) == "done"), "{report:#}");

    let all = env.containers();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].name, name);
    assert_ne!(all[0].id, old.id);
    assert!(all[0].is_running());
    assert_eq!(all[0].label("tend.instance"), Some("1"));
    assert_eq!(plan_exit(&env), Some(0));
}

/// A `docker-registry` (Debian's distribution/registry) serving on a free loopback port,
/// stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let bin = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("docker-registry"))
            .find(|p| p.is_file());
        let Some(bin) = bin else {
            panic!(
                "\n\n*** `docker-registry` is not installed: this test needs a real registry on \
                 loopback and never skips. Install it with `apt-get install docker-registry`. ***\n"
            )
        };
        let dir = tempfile::Builder::new().prefix("tend-registry-").tempdir().expect("registry temp dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .expect("write the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(&bin)
            .args([OsArg::from("serve"), config.into_os_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
        let mut registry = Registry { child, port, dir };
        let up = wait_until(Duration::from_secs(30), || registry.answers());
        if !up {
            let exited = registry.child.try_wait().ok().flatten();
            panic!(
                "\n\n*** docker-registry did not answer on 127.0.0.1:{port} within 30 s (exited: {exited:?}) ***\n{}\n",
                std::fs::read_to_string(registry.log_path()).unwrap_or_default()
            );
        }
        registry
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Whether `GET /v2/` answers 200.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port);
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
    }
}

type OsArg = std::ffi::OsString;

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Untags an image reference on drop.
struct LocalTag(String);

impl Drop for LocalTag {
    fn drop(&mut self) {
        let _ = docker(&["rmi", self.0.as_str()]);
    }
}

#[test]
fn an_image_missing_locally_is_pulled_from_a_registry() {
    harness::require_docker();
    let env = Env::new("pull_from_registry");
    let registry = Registry::start();
    let image = format!("127.0.0.1:{}/tend-test/{}/busybox:1", registry.port, env.scope);
    let tag = LocalTag(image.clone());
    docker_ok(&["tag", harness::test_image().as_str(), image.as_str()]);
    let pushed = docker(&["push", image.as_str()]);
    assert!(pushed.status.success(), "pushing to the loopback registry failed\n{}", describe(&pushed));
    docker_ok(&["rmi", image.as_str()]);
    let gone = docker(&["image", "inspect", image.as_str()]);
    assert!(!gone.status.success(), "{image} must be gone locally before the test");

    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, &format!("image: {image}\npullPolicy: ifNotPresent")));
    let plan = plan_json(&env);
    let pull = find_step(&plan, "pull", |st| s(st, "action") == "pull-image");
    assert_eq!((s(&pull, "image"), s(&pull, "reason")), (image.clone(), "image-missing".into()));

    let report = apply_json(&env);
    let pulls = report["pulls"].as_array().cloned().unwrap_or_default();
    assert_eq!(pulls.len(), 1, "{report:#}");
    assert_eq!(s(&pulls[0][0], "image"), image);
    assert_eq!(s(&pulls[0][1], "result"), "done", "{report:#}");
    let web1 = container(&env, &format!("{web}-1"));
    assert!(web1.is_running());
    assert_eq!(web1.image, image);
    docker_ok(&["image", "inspect", image.as_str()]);
    assert_eq!(plan_exit(&env), Some(0), "a present image is not pulled again");

    env.cleanup();
    drop(tag);
}

/// A host job the hook runs: it appends to `marker` and exits with `code`.
fn hook_timer(name: &str, marker: &std::path::Path, code: i32) -> String {
    format!(
        "---\napiVersion: tend/v1\nkind: Timer\nmetadata: {{name: {name}}}\nspec:\n  enabled: false\n  job: {{runtime: host, exec: [/bin/sh, -c, 'echo ran >> {}; exit {code}']}}\n",
        marker.display()
    )
}

#[test]
fn a_before_start_hook_runs_before_a_new_version_and_a_failing_one_keeps_the_old() {
    harness::require_docker();
    let env = Env::new("before_start_hook");
    let (web, migrate) = (env.name("web"), env.name("migrate"));
    let marker = env.state_path().join("migrations");
    let hook = format!("hooks: {{beforeStart: {migrate}}}");
    env.write_spec("migrate.yaml", &hook_timer(&migrate, &marker, 0));
    env.write_spec("web.yaml", &service(&web, &format!("env: {{VERSION: '1'}}\n{hook}")));

    // First start: the hook runs first, then the container is created.
    let report = apply_json(&env);
    let run = find_step(&report, "run-job", |st| s(st, "action") == "run-job");
    let create = find_step(&report, "create", |st| s(st, "action") == "create");
    assert!(create["after"].as_array().is_some_and(|a| a.contains(&run["id"])), "{report:#}");
    assert_eq!(std::fs::read_to_string(&marker).expect("the hook ran").lines().count(), 1);
    let v1 = container(&env, &format!("{web}-1"));

    // A crash restart of the running version does not run it again.
    harness::docker_ok(&["kill", &v1.id]);
    env.apply();
    assert_eq!(std::fs::read_to_string(&marker).expect("marker").lines().count(), 1);

    // A new version whose hook fails is not started: the old container keeps running.
    env.write_spec("migrate.yaml", &hook_timer(&migrate, &marker, 3));
    env.write_spec("web.yaml", &service(&web, &format!("env: {{VERSION: '2'}}\n{hook}")));
    let (code, report, output) = apply_json_any(&env);
    assert_eq!(code, Some(1), "a failed hook fails the apply\n{}", describe(&output));
    let run = find_step(&report, "run-job", |st| s(st, "action") == "run-job");
    let failed = report["outcomes"][run["id"].to_string()].to_string();
    assert!(failed.contains("hook job") && failed.contains("exited with code 3"), "{failed}");
    let still = container(&env, &format!("{web}-1"));
    assert_eq!(still.id, v1.id, "the old version must be left in place");
    assert!(still.is_running());
    let history = env.tend_ok(&["job", "history", &migrate, "--output", "json"]);
    let runs: Value = serde_json::from_slice(&history.stdout).expect("history JSON");
    assert!(
        runs.as_array().is_some_and(|r| r.iter().any(|r| r["trigger"] == "hook" && r["result"] == "failed")),
        "{runs:#}"
    );
}

#[test]
fn apply_on_an_empty_or_wrong_directory_removes_nothing_without_consent() {
    let env = Env::new("apply_mass_removal");
    let names: Vec<String> = (1..=3).map(|i| env.name(&format!("s{i}"))).collect();
    for n in &names {
        env.write_spec(&format!("{n}.yaml"), &service(n, ""));
    }
    env.apply();
    let empty = env.state_path().join("empty");
    std::fs::create_dir_all(&empty).expect("an empty directory");
    let empty_arg = empty.to_str().expect("utf-8");
    // The plan says the directory holds nothing, and that apply would refuse it.
    let out = env.tend(&["plan", empty_arg]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("holds no spec at all"), "{}", describe(&out));
    assert!(err.contains("refuses it without --allow-mass-removal"), "{}", describe(&out));
    // apply refuses, naming what would go, and changes nothing.
    let out = env.tend(&["apply", empty_arg]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("would remove 3 of the 3") && err.contains("nothing was changed"), "{err}");
    assert!(names.iter().all(|n| err.contains(n.as_str())), "the services that would go are not named: {err}");
    assert_eq!(env.containers().len(), 3, "a container was removed");
    // Removing one of three is not a mass removal.
    env.remove_spec(&format!("{}.yaml", names[0]));
    env.apply();
    assert_eq!(env.containers().len(), 2);
    // With consent it goes ahead.
    let out = env.tend(&["apply", empty_arg, "--allow-mass-removal"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(env.containers().is_empty());
}
