//! `tend job`: a Timer's job run now, against real processes and a real Docker daemon —
//! exit statuses, logs, history, secrets, concurrency, timeouts, leftovers, `job list`.
//!
//! Every test has its own [`Env`] (scope, state and spec directories), so they run in
//! parallel. Runs that must overlap are started in the background and waited for by
//! polling `running.json`, never by sleeping a fixed time.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{self, Env, describe, docker_ok, stdout_of, wait_for};

/// A Timer document with `spec` lines (YAML, indented under `spec:`).
fn timer(name: &str, spec: &str) -> String {
    let mut doc = format!("---\napiVersion: tend/v1\nkind: Timer\nmetadata: {{name: {name}}}\nspec:\n");
    for line in spec.lines().filter(|l| !l.trim().is_empty()) {
        doc.push_str("  ");
        doc.push_str(line);
        doc.push('\n');
    }
    doc
}

/// A host job Timer, on demand, running `exec` (a YAML flow list).
fn host_timer(name: &str, exec: &str, extra: &str) -> String {
    timer(name, &format!("enabled: false\n{extra}\njob:\n  runtime: host\n  exec: {exec}"))
}

/// A docker job Timer, on demand, with the test image and `command` (a YAML flow list).
fn docker_timer(name: &str, command: &str, extra: &str) -> String {
    let image = harness::test_image();
    timer(
        name,
        &format!(
            "enabled: false\n{extra}\njob:\n  runtime: docker\n  image: {image}\n  pullPolicy: never\n  command: {command}"
        ),
    )
}

/// `tend job run NAME <spec dir>`, whatever its exit status.
fn job_run(env: &Env, name: &str) -> Output {
    env.tend(&["job", "run", name, env.spec_arg()])
}

/// `tend job history NAME --output json`, parsed (newest first).
fn history(env: &Env, name: &str) -> Vec<Value> {
    let output = env.tend_ok(&["job", "history", name, "--output", "json"]);
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Array(records)) => records,
        other => panic!("job history did not print a JSON array ({other:?})\n{}", describe(&output)),
    }
}

/// `<state>/jobs/NAME/`.
fn job_dir(env: &Env, name: &str) -> PathBuf {
    env.state_path().join("jobs").join(name)
}

/// The runs `running.json` lists as started (with a process group or a container).
fn started_runs(env: &Env, name: &str) -> Vec<Value> {
    let Ok(bytes) = std::fs::read(job_dir(env, name).join("running.json")) else { return Vec::new() };
    let runs: Vec<Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    runs.into_iter().filter(|r| r.get("pgid").is_some() || r.get("container").is_some()).collect()
}

/// Waits until `n` runs of `name` have started their job.
fn wait_started(env: &Env, name: &str, n: usize) {
    wait_for(Duration::from_secs(60), &format!("{n} run(s) of {name} to start"), || started_runs(env, name).len() >= n);
}

/// Starts `tend job run NAME <spec dir>` in the background.
fn spawn_run(env: &Env, name: &str) -> Child {
    Command::new(harness::tend_bin())
        .arg("--state-dir")
        .arg(env.state_path())
        .arg("--scope")
        .arg(&env.scope)
        .args(["job", "run", name, env.spec_arg()])
        .current_dir(env.spec_path())
        .env("TEND_LOG", "warn")
        .env_remove("TEND_STATE_DIR")
        .env_remove("TEND_SCOPE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tend in the background")
}

/// Waits (at most two minutes) for a background tend and returns its output.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("poll tend").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("background tend did not finish\n{}", describe(&child.wait_with_output().expect("reap tend")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect tend's output")
}

fn text(output: &Output) -> String {
    format!("{}{}", stdout_of(output), String::from_utf8_lossy(&output.stderr))
}

/// The log of a record, read.
fn log_of(record: &Value) -> String {
    let path = record["log"].as_str().unwrap_or_else(|| panic!("record without a log: {record}"));
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read log {path}: {e}"))
}

fn ms(record: &Value, key: &str) -> u64 {
    record[key].as_u64().unwrap_or_else(|| panic!("record without {key}: {record}"))
}

#[test]
fn host_jobs_report_their_exit_status_history_and_log() {
    let env = Env::new("host_jobs_report");
    env.write_spec(
        "jobs.yaml",
        &(host_timer("good", r#"["/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2"]"#, "")
            + &host_timer("bad", r#"["/bin/sh", "-c", "echo failing; exit 7"]"#, "")),
    );

    let ok = job_run(&env, "good");
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    assert!(stdout_of(&ok).contains("good: run "), "{}", describe(&ok));
    let bad = job_run(&env, "bad");
    assert_eq!(bad.status.code(), Some(7), "the job's exit status is tend's\n{}", describe(&bad));

    let good = history(&env, "good");
    assert_eq!(good.len(), 1);
    assert_eq!(good[0]["result"], "ok");
    assert_eq!(good[0]["exit_code"], 0);
    assert_eq!(good[0]["trigger"], "manual");
    let log = log_of(&good[0]);
    assert!(log.contains("to-stdout") && log.contains("to-stderr"), "stdout and stderr are captured:\n{log}");
    let mode = std::fs::metadata(good[0]["log"].as_str().expect("log")).expect("log metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a log may hold secrets the job printed");

    let failed = history(&env, "bad");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["result"], "failed");
    assert_eq!(failed[0]["exit_code"], 7);
    assert!(log_of(&failed[0]).contains("failing"));

    let table = stdout_of(&env.tend_ok(&["job", "history", "bad"]));
    for column in ["START", "DURATION", "TRIGGER", "RESULT", "EXIT", "LOG"] {
        assert!(table.contains(column), "history table lacks {column}:\n{table}");
    }
    assert!(table.contains("failed") && table.contains(" 7 "), "{table}");
}

#[test]
fn job_history_json_has_one_record_per_run_newest_first() {
    let env = Env::new("job_history_json");
    env.write_spec("jobs.yaml", &host_timer("tick", r#"["/bin/true"]"#, ""));
    for _ in 0..3 {
        env.tend_ok(&["job", "run", "tick", env.spec_arg(), "--trigger", "catch-up"]);
    }
    let records = history(&env, "tick");
    assert_eq!(records.len(), 3);
    let keys: BTreeSet<&str> = records[0].as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["run", "trigger", "start_ms", "end_ms", "result", "exit_code", "log", "hash", "detail"]),
        "{}",
        records[0]
    );
    assert!(records[0]["run"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(records[0]["trigger"], "catch-up");
    assert!(records[0]["hash"].as_str().is_some_and(|h| h.len() == 64), "{}", records[0]);
    assert!(ms(&records[0], "end_ms") >= ms(&records[0], "start_ms"));
    assert!(ms(&records[0], "start_ms") >= ms(&records[1], "start_ms"), "newest first");
    assert!(ms(&records[1], "start_ms") >= ms(&records[2], "start_ms"), "newest first");

    let limited = env.tend_ok(&["job", "history", "tick", "--limit", "1", "--output", "json"]);
    let limited: Vec<Value> = serde_json::from_slice(&limited.stdout).expect("json");
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["run"], records[0]["run"]);

    // The file itself: one JSON object per line.
    let file = std::fs::read_to_string(job_dir(&env, "tick").join("history.jsonl")).expect("history.jsonl");
    assert_eq!(file.lines().count(), 3);
    for line in file.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
}

#[test]
fn docker_job_output_reaches_the_log_but_secrets_never_reach_tends_output() {
    let env = Env::new("docker_job_secret");
    let name = env.name("dump");
    let secret = format!("s3cret-{}", env.scope);
    env.write_spec("secrets/token", &format!("{secret}\n"));
    let command = r#"["sh", "-c", "echo \"token is $TOKEN\"; echo \"plain is $PLAIN\"; echo oops >&2; exit 3"]"#;
    let mut doc = docker_timer(&name, command, "");
    doc.push_str("    env: {PLAIN: visible, TOKEN: {fromFile: secrets/token}}\n");
    env.write_spec("jobs.yaml", &doc);

    let out = job_run(&env, &name);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(!text(&out).contains(&secret), "tend printed the secret\n{}", describe(&out));

    let records = history(&env, &name);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["result"], "failed");
    assert_eq!(records[0]["exit_code"], 3);
    let log = log_of(&records[0]);
    assert!(log.contains(&format!("token is {secret}")), "the job printed its secret, so its log holds it:\n{log}");
    assert!(log.contains("plain is visible") && log.contains("oops"), "{log}");
    let file = std::fs::read_to_string(job_dir(&env, &name).join("history.jsonl")).expect("history.jsonl");
    assert!(!file.contains(&secret), "the history holds the secret:\n{file}");
    let table = env.tend_ok(&["job", "history", &name]);
    assert!(!text(&table).contains(&secret));

    assert!(env.containers().is_empty(), "the job's container is removed after the run: {:?}", env.containers());
}

#[test]
fn a_disabled_timer_runs_on_demand() {
    let env = Env::new("disabled_on_demand");
    let name = env.name("restore");
    env.write_spec(
        "jobs.yaml",
        &(docker_timer(&name, r#"["echo", "restored"]"#, "")
            + &timer("nightly", "schedule: \"*-*-* 03:00:00\"\njob: {runtime: host, exec: [/bin/true]}")),
    );
    let out = job_run(&env, &name);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let records = history(&env, &name);
    assert_eq!(records[0]["result"], "ok");
    assert!(log_of(&records[0]).contains("restored"));
}

#[test]
fn a_bad_spec_set_or_an_unknown_timer_runs_nothing() {
    let env = Env::new("bad_set_runs_nothing");
    env.write_spec("jobs.yaml", &host_timer("backup", r#"["/bin/true"]"#, ""));
    env.write_spec("broken.yaml", &timer("broken", "job: {runtime: host, exec: [relative/prog]}"));
    let out = job_run(&env, "backup");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(!job_dir(&env, "backup").exists(), "nothing ran");

    env.remove_spec("broken.yaml");
    let out = job_run(&env, "bakup");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out).contains("did you mean `backup`?"), "{}", describe(&out));
    assert!(!job_dir(&env, "backup").exists() && !job_dir(&env, "bakup").exists());
}

#[test]
fn forbid_skips_a_run_while_one_is_in_progress() {
    let env = Env::new("forbid_skips");
    env.write_spec("jobs.yaml", &host_timer("single", r#"["/bin/sleep", "3"]"#, ""));
    let first = spawn_run(&env, "single");
    wait_started(&env, "single", 1);
    let pid = first.id();

    let second = job_run(&env, "single");
    assert_eq!(second.status.code(), Some(75), "EX_TEMPFAIL\n{}", describe(&second));
    let said = text(&second);
    assert!(said.contains("skipped") && said.contains(&format!("pid {pid}")), "names who runs:\n{said}");

    let first = finish(first);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let records = history(&env, "single");
    let results: Vec<&str> = records.iter().filter_map(|r| r["result"].as_str()).collect();
    assert_eq!(results.iter().filter(|r| **r == "skipped").count(), 1, "{records:?}");
    assert_eq!(results.iter().filter(|r| **r == "ok").count(), 1, "{records:?}");
    let skipped = records.iter().find(|r| r["result"] == "skipped").expect("skipped record");
    assert!(skipped["log"].is_null() && skipped["exit_code"].is_null(), "{skipped}");
}

#[test]
fn replace_stops_the_run_in_progress_and_runs() {
    let env = Env::new("replace_stops");
    env.write_spec(
        "jobs.yaml",
        &host_timer("swap", r#"["/bin/sh", "-c", "echo begin; sleep 4; echo end"]"#, "concurrency: replace"),
    );
    let started = Instant::now();
    let first = spawn_run(&env, "swap");
    wait_started(&env, "swap", 1);

    let second = job_run(&env, "swap");
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    let first = finish(first);
    assert_eq!(first.status.code(), Some(143), "stopped by SIGTERM\n{}", describe(&first));
    assert!(started.elapsed() < Duration::from_secs(30), "the first run was stopped, not waited for");

    let records = history(&env, "swap");
    assert_eq!(records.len(), 2, "{records:?}");
    let (newer, older) = (&records[0], &records[1]);
    assert_eq!(older["result"], "failed", "{older}");
    assert!(older["detail"].as_str().is_some_and(|d| d.contains("stopped by run")), "{older}");
    assert!(!log_of(older).contains("\nend"), "the first run did not finish");
    assert_eq!(newer["result"], "ok", "{newer}");
    assert!(log_of(newer).contains("end"));
    assert!(ms(newer, "start_ms") < ms(older, "end_ms") + 1000, "the second began while the first ran");
}

#[test]
fn replace_stops_a_docker_run_in_progress() {
    let env = Env::new("replace_docker");
    let name = env.name("swap");
    env.write_spec("jobs.yaml", &docker_timer(&name, r#"["sleep", "30"]"#, "concurrency: replace"));
    let first = spawn_run(&env, &name);
    wait_started(&env, &name, 1);
    // The second run must not wait for the first: change what it runs.
    env.write_spec("jobs.yaml", &docker_timer(&name, r#"["echo", "second"]"#, "concurrency: replace"));
    let second = job_run(&env, &name);
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    let first = finish(first);
    assert_ne!(first.status.code(), Some(0), "{}", describe(&first));
    let records = history(&env, &name);
    assert_eq!(records[1]["result"], "failed", "{records:?}");
    assert_eq!(records[0]["result"], "ok", "{records:?}");
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

#[test]
fn allow_runs_overlap() {
    let env = Env::new("allow_overlaps");
    env.write_spec("jobs.yaml", &host_timer("both", r#"["/bin/sleep", "2"]"#, "concurrency: allow"));
    let a = spawn_run(&env, "both");
    let b = spawn_run(&env, "both");
    let (a, b) = (finish(a), finish(b));
    assert_eq!(a.status.code(), Some(0), "{}", describe(&a));
    assert_eq!(b.status.code(), Some(0), "{}", describe(&b));
    let records = history(&env, "both");
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r["result"] == "ok"), "{records:?}");
    let (x, y) = (&records[0], &records[1]);
    assert!(
        ms(x, "start_ms") < ms(y, "end_ms") && ms(y, "start_ms") < ms(x, "end_ms"),
        "the runs overlap: {records:?}"
    );
}

#[test]
fn a_run_past_its_timeout_is_stopped_and_recorded() {
    let env = Env::new("timeout_stops");
    env.write_spec("jobs.yaml", &host_timer("stuck", r#"["/bin/sleep", "60"]"#, "timeout: 2s"));
    let started = Instant::now();
    let out = job_run(&env, "stuck");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", describe(&out));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "stopped after {took:?}");
    let records = history(&env, "stuck");
    assert_eq!(records[0]["result"], "timeout", "{records:?}");
    assert_eq!(records[0]["exit_code"], 143, "SIGTERM: {records:?}");
}

#[test]
fn a_container_left_by_a_killed_run_is_removed_by_the_next_run() {
    let env = Env::new("leftover_removed");
    let name = env.name("left");
    env.write_spec("jobs.yaml", &docker_timer(&name, r#"["sleep", "300"]"#, ""));
    let mut first = spawn_run(&env, &name);
    wait_started(&env, &name, 1);
    wait_for(Duration::from_secs(30), "the job's container to run", || env.containers().iter().any(|c| c.is_running()));
    first.kill().expect("SIGKILL tend");
    let _ = first.wait();
    let left = env.containers();
    assert_eq!(left.len(), 1, "{left:?}");
    let left = &left[0];
    assert!(left.name.starts_with(&format!("{name}-run-")), "{}", left.name);
    assert_eq!(left.label("tend.kind"), Some("job"));
    assert_eq!(left.label("tend.name"), Some(name.as_str()));
    assert_eq!(left.label("tend.scope"), Some(env.scope.as_str()));
    let killed_run = left.label("tend.run").expect("tend.run label").to_string();

    env.write_spec("jobs.yaml", &docker_timer(&name, r#"["echo", "next"]"#, ""));
    let out = job_run(&env, &name);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(env.containers().is_empty(), "the leftover is removed: {:?}", env.containers());
    let filter = format!("name={}", left.name);
    assert!(docker_ok(&["ps", "-a", "-q", "--filter", filter.as_str()]).is_empty());

    let records = history(&env, &name);
    let killed = records.iter().find(|r| r["run"] == killed_run.as_str()).expect("the killed run is recorded");
    assert_eq!(killed["result"], "error", "{killed}");
    assert_eq!(records[0]["result"], "ok");
}

#[test]
fn job_list_shows_schedules_next_elapses_and_last_runs() {
    let env = Env::new("job_list");
    env.write_spec(
        "jobs.yaml",
        &(timer("nightly", "schedule: \"*-*-* 03:00:00 UTC\"\njob: {runtime: host, exec: [/bin/true]}")
            + &host_timer("restore", r#"["/bin/true"]"#, "")),
    );
    env.tend_ok(&["job", "run", "nightly", env.spec_arg()]);
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock");
    let output = env.tend_ok(&["job", "list", "--output", "json", env.spec_arg()]);
    let list: Vec<Value> = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(list.len(), 2, "{list:?}");
    let nightly = list.iter().find(|t| t["name"] == "nightly").expect("nightly");
    assert_eq!(nightly["enabled"], true);
    assert_eq!(nightly["schedule"], "*-*-* 03:00:00 UTC");
    let next = ms(nightly, "next_ms");
    assert!(next > before_ms && next <= before_ms + 86_400_000, "next elapse within a day: {nightly}");
    assert_eq!(next % 86_400_000, 3 * 3_600_000, "at 03:00 UTC: {nightly}");
    assert!(nightly["next"].as_str().is_some_and(|n| n.contains("03:00:00")), "{nightly}");
    assert_eq!(nightly["last"]["result"], "ok", "{nightly}");
    let restore = list.iter().find(|t| t["name"] == "restore").expect("restore");
    assert_eq!(restore["enabled"], false);
    assert!(restore["next_ms"].is_null() && restore["last"].is_null(), "{restore}");

    let table = stdout_of(&env.tend_ok(&["job", "list", env.spec_arg()]));
    assert!(table.contains("03:00:00 UTC") && table.contains("on demand") && table.contains("never"), "{table}");
}
