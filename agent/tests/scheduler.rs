//! `tend job schedule`: tend's own scheduler for hosts where systemd is not PID 1. Real
//! processes, real time: runs elapse by the calendar, never overlap, and a persistent Timer
//! catches up a run missed since its last recorded run.

use std::path::Path;
use std::process::Command;

fn tend(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tend"))
        .arg("--state-dir")
        .arg(state)
        .args(["--scope", "sched-test"])
        .args(args)
        .env("TEND_LOG", "warn")
        .output()
        .expect("run tend")
}

fn history(state: &Path, name: &str) -> Vec<serde_json::Value> {
    let out = tend(state, &["job", "history", name, "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("history JSON");
    runs.sort_by_key(|r| r["start_ms"].as_u64());
    runs
}

#[test]
fn scheduled_runs_elapse_by_the_calendar_and_never_overlap() {
    let dir = tempfile::tempdir().expect("tmp");
    let (specs, state) = (dir.path().join("specs"), dir.path().join("state"));
    std::fs::create_dir_all(&specs).expect("specs dir");
    std::fs::write(
        specs.join("tick.yaml"),
        "apiVersion: tend/v1\nkind: Timer\nmetadata: {name: tick}\nspec:\n  schedule: '*:*:0/2'\n  job: {runtime: host, exec: [/bin/sh, -c, 'sleep 3']}\n---\napiVersion: tend/v1\nkind: Timer\nmetadata: {name: manual}\nspec:\n  enabled: false\n  job: {runtime: host, exec: [/bin/true]}\n",
    )
    .expect("spec");
    let out = tend(&state, &["job", "schedule", specs.to_str().expect("utf-8"), "--for", "9s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Scheduling 1 Timer(s): tick"));
    let runs = history(&state, "tick");
    let ok: Vec<&serde_json::Value> = runs.iter().filter(|r| r["result"] == "ok").collect();
    assert!(ok.len() >= 2, "{runs:#?}");
    assert!(ok.iter().all(|r| r["trigger"] == "timer"), "{runs:#?}");
    for pair in ok.windows(2) {
        assert!(pair[1]["start_ms"].as_u64() >= pair[0]["end_ms"].as_u64(), "runs overlap: {pair:#?}");
    }
    assert!(history(&state, "manual").is_empty(), "an on-demand Timer is never scheduled");
}

#[test]
fn a_persistent_timer_catches_up_a_run_missed_since_its_last_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let (specs, state) = (dir.path().join("specs"), dir.path().join("state"));
    std::fs::create_dir_all(&specs).expect("specs dir");
    std::fs::write(
        specs.join("hourly.yaml"),
        "apiVersion: tend/v1\nkind: Timer\nmetadata: {name: hourly}\nspec:\n  schedule: hourly\n  persistent: true\n  job: {runtime: host, exec: [/bin/true]}\n",
    )
    .expect("spec");
    // A run recorded three hours ago: the hourly runs since were missed.
    let out = tend(&state, &["job", "run", "hourly", specs.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = state.join("jobs/hourly/history.jsonl");
    let line = std::fs::read_to_string(&file).expect("history");
    let mut record: serde_json::Value = serde_json::from_str(line.trim()).expect("record");
    let three_hours = 3 * 3600 * 1000;
    for key in ["start_ms", "end_ms"] {
        record[key] = (record[key].as_u64().expect("ms") - three_hours).into();
    }
    std::fs::write(&file, format!("{record}\n")).expect("rewrite history");

    let out = tend(&state, &["job", "schedule", specs.to_str().expect("utf-8"), "--for", "3s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs = history(&state, "hourly");
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!((runs[1]["trigger"].as_str(), runs[1]["result"].as_str()), (Some("catch-up"), Some("ok")), "{runs:#?}");
}
