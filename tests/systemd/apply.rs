//! `tend apply` end to end inside a systemd node: systemd services and Timers become unit
//! files that systemd runs; a changed spec restarts exactly its unit; a removed spec stops,
//! disables and deletes exactly its units; a hand-written unit is a conflict, untouched;
//! secrets go to a 0600 environment file, never into a unit file.

use super::node::{self, Node, describe};

const TEND: &str = "/usr/local/bin/tend";
const SPECS: &str = "/etc/tend/specs";

fn service(name: &str, exec: &str, extra: &str) -> String {
    format!(
        "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  runtime: systemd\n  exec: {exec}\n{extra}"
    )
}

fn tend(node: &Node, args: &[&str]) -> std::process::Output {
    let mut full = vec![TEND];
    full.extend_from_slice(args);
    node.exec(&full)
}

fn apply(node: &Node) -> String {
    let out = tend(node, &["apply", SPECS]);
    assert!(out.status.success(), "tend apply failed in the node:\n{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main_pid(node: &Node, unit: &str) -> String {
    node.show_property(unit, "MainPID")
}

#[test]
fn tend_apply_reconciles_systemd_services_in_a_real_systemd() {
    node::require_systemd_node_image();
    let node = Node::start("tend-apply-units");
    node.copy_in(env!("CARGO_BIN_EXE_tend"), TEND);
    node.exec_ok(&["mkdir", "-p", SPECS, "/etc/tend/secrets"]);
    node.write_file("/etc/tend/secrets/token", "s3cret-token-value\n");
    node.write_file(&format!("{SPECS}/web.yaml"), &service("web", "[/bin/sleep, infinity]", ""));
    node.write_file(
        &format!("{SPECS}/worker.yaml"),
        &service(
            "worker",
            r#"[/bin/sh, -c, 'echo "$TOKEN" > /tmp/token; exec sleep infinity']"#,
            "  env: {MODE: fast, TOKEN: {fromFile: /etc/tend/secrets/token}}\n  restart: {policy: always}\n",
        ),
    );

    // First apply: both units written, enabled and running.
    let out = apply(&node);
    for unit in ["web.service", "worker.service"] {
        assert_eq!(node.systemctl_ok(&["is-active", unit]).trim(), "active", "{unit}\n{out}");
        assert_eq!(node.systemctl_ok(&["is-enabled", unit]).trim(), "enabled", "{unit}");
        let file = node.exec_ok(&["cat", &format!("/etc/systemd/system/{unit}")]);
        assert!(file.contains("X-Tend-Hash="), "{file}");
        assert!(!file.contains("s3cret"), "a secret leaked into {unit}:\n{file}");
    }
    // The secret reached the process through a 0600 environment file.
    assert_eq!(node.exec_ok(&["cat", "/tmp/token"]).trim(), "s3cret-token-value");
    assert_eq!(node.exec_ok(&["stat", "-c", "%a", "/etc/tend/env/worker.env"]).trim(), "600");
    assert!(!out.contains("s3cret"), "{out}");
    // The salt that keys the secret's digest in the unit's hash is the host's, and 0600.
    assert_eq!(node.exec_ok(&["stat", "-c", "%a", "/var/lib/tend/secret-salt"]).trim(), "600");
    assert!(node.exec(&["test", "-f", "/run/tend/locks/worker.service.lock"]).status.success());

    // Second apply: nothing to do.
    let plan = tend(&node, &["plan", SPECS]);
    assert_eq!(plan.status.code(), Some(0), "{}", describe(&plan));

    // Change one spec: exactly that unit restarts.
    let (web_pid, worker_pid) = (main_pid(&node, "web.service"), main_pid(&node, "worker.service"));
    node.write_file(&format!("{SPECS}/web.yaml"), &service("web", "[/bin/sleep, '99999']", ""));
    apply(&node);
    assert_ne!(main_pid(&node, "web.service"), web_pid, "web must be restarted");
    assert_eq!(main_pid(&node, "worker.service"), worker_pid, "worker must be untouched");
    assert!(node.exec_ok(&["cat", "/etc/systemd/system/web.service"]).contains("99999"));

    // A hand-written unit with a spec's name is a conflict: reported, untouched.
    let manual = "[Unit]\nDescription=hand-written\n[Service]\nExecStart=/bin/sleep infinity\n";
    node.write_file("/etc/systemd/system/manual.service", manual);
    node.write_file(&format!("{SPECS}/manual.yaml"), &service("manual", "[/bin/true]", ""));
    let out = tend(&node, &["apply", SPECS]);
    assert_eq!(out.status.code(), Some(1), "a conflict fails the apply\n{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("conflict"), "{}", describe(&out));
    assert_eq!(node.exec_ok(&["cat", "/etc/systemd/system/manual.service"]), manual);
    node.exec_ok(&["rm", &format!("{SPECS}/manual.yaml")]);

    // Remove a spec: its unit is stopped, disabled and deleted, with its environment file.
    node.exec_ok(&["rm", &format!("{SPECS}/worker.yaml")]);
    apply(&node);
    assert!(node.exec(&["test", "-e", "/etc/systemd/system/worker.service"]).status.code() == Some(1));
    assert!(node.exec(&["test", "-e", "/etc/tend/env/worker.env"]).status.code() == Some(1));
    // And its lock file, its target gone.
    assert!(node.exec(&["test", "-e", "/run/tend/locks/worker.service.lock"]).status.code() == Some(1));
    assert_ne!(node.systemctl(&["is-active", "worker.service"]).status.code(), Some(0));
    assert_eq!(node.systemctl_ok(&["is-active", "web.service"]).trim(), "active");
    // The hand-written unit is still there.
    assert_eq!(node.exec_ok(&["cat", "/etc/systemd/system/manual.service"]), manual);
}

#[test]
fn a_timer_becomes_a_real_timer_that_systemd_lists() {
    node::require_systemd_node_image();
    let node = Node::start("tend-apply-timer");
    node.copy_in(env!("CARGO_BIN_EXE_tend"), TEND);
    node.exec_ok(&["mkdir", "-p", SPECS]);
    node.write_file(
        &format!("{SPECS}/nightly.yaml"),
        "apiVersion: tend/v1\nkind: Timer\nmetadata: {name: nightly}\nspec:\n  schedule: '*-*-* 01:00:00'\n  persistent: true\n  job: {runtime: host, exec: [/bin/true]}\n",
    );
    node.write_file(
        &format!("{SPECS}/restore.yaml"),
        "apiVersion: tend/v1\nkind: Timer\nmetadata: {name: restore}\nspec:\n  enabled: false\n  job: {runtime: host, exec: [/bin/true]}\n",
    );
    apply(&node);
    let timers = node.systemctl_ok(&["list-timers", "--all", "--no-pager"]);
    assert!(timers.contains("nightly.timer"), "{timers}");
    assert!(!timers.contains("restore.timer"), "a disabled Timer is never scheduled:\n{timers}");
    assert_eq!(node.systemctl_ok(&["is-enabled", "nightly.timer"]).trim(), "enabled");
    let service = node.exec_ok(&["cat", "/etc/systemd/system/nightly.service"]);
    assert!(service.contains("job") && service.contains("nightly"), "{service}");
    // The on-demand job's service unit exists, but no timer.
    node.exec_ok(&["test", "-e", "/etc/systemd/system/restore.service"]);
    assert_eq!(node.exec(&["test", "-e", "/etc/systemd/system/restore.timer"]).status.code(), Some(1));
    let plan = tend(&node, &["plan", SPECS]);
    assert_eq!(plan.status.code(), Some(0), "{}", describe(&plan));
}

#[test]
fn the_research_service_example_runs_in_a_real_systemd() {
    node::require_systemd_node_image();
    let node = Node::start("tend-apply-example");
    node.copy_in(env!("CARGO_BIN_EXE_tend"), TEND);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/research-service");
    node.exec_ok(&["mkdir", "-p", "/etc/tend"]);
    node.copy_in(example, SPECS);
    // The programs the example runs, as stand-ins that stay up, and their users.
    let programs = [
        "/usr/lib/postgresql/15/bin/postgres",
        "/usr/share/elasticsearch/bin/elasticsearch",
        "/usr/bin/uwsgi",
        "/usr/sbin/nginx",
        "/srv/rds/venv/bin/python",
        "/usr/local/bin/restore-db",
        "/usr/local/bin/restore-media",
    ];
    for p in programs {
        let dir = p.rsplit_once('/').map_or("/", |(d, _)| d);
        node.exec_ok(&["mkdir", "-p", dir]);
        // Jobs (manage.py migrate, the restores) finish; services stay up.
        let body = if p.contains("python") || p.contains("restore") { "exit 0" } else { "exec sleep infinity" };
        node.write_file(p, &format!("#!/bin/sh\n{body}\n"));
        node.exec_ok(&["chmod", "755", p]);
    }
    node.exec_ok(&["mkdir", "-p", "/srv/rds", "/etc/rds"]);
    for user in ["postgres", "elasticsearch"] {
        node.exec_ok(&["useradd", "--system", "--no-create-home", user]);
    }
    let out = apply(&node);
    for unit in ["rds-postgres", "rds-elasticsearch", "rds-uwsgi", "rds-nginx"] {
        let unit = format!("{unit}.service");
        assert_eq!(node.systemctl_ok(&["is-active", &unit]).trim(), "active", "{unit}\n{out}");
        let verify = node.exec(&["systemd-analyze", "verify", &format!("/etc/systemd/system/{unit}")]);
        assert!(verify.status.success(), "{unit} fails verify:\n{}", describe(&verify));
    }
    let timers = node.systemctl_ok(&["list-timers", "--all", "--no-pager"]);
    for scheduled in ["rds-nightly-import.timer", "rds-analysis.timer"] {
        assert!(timers.contains(scheduled), "{scheduled} missing:\n{timers}");
    }
    for on_demand in ["rds-deploy", "rds-restore-db", "rds-restore-media"] {
        assert!(!timers.contains(&format!("{on_demand}.timer")), "{on_demand} must not be scheduled:\n{timers}");
        node.exec_ok(&["test", "-e", &format!("/etc/systemd/system/{on_demand}.service")]);
    }
    // The uwsgi secret is in its 0600 environment file only.
    assert!(!node.exec_ok(&["cat", "/etc/systemd/system/rds-uwsgi.service"]).contains("example-password"));
    assert_eq!(node.exec_ok(&["stat", "-c", "%a", "/etc/tend/env/rds-uwsgi.env"]).trim(), "600");
    let plan = tend(&node, &["plan", SPECS]);
    assert_eq!(plan.status.code(), Some(0), "{}", describe(&plan));
    // uwsgi's before-start hook ran once, before its first start, and is recorded.
    let deploys = history(&node, "rds-deploy");
    assert_eq!(deploys.len(), 1, "{deploys:#?}");
    assert_eq!((deploys[0]["trigger"].as_str(), deploys[0]["result"].as_str()), (Some("hook"), Some("ok")));
}

/// The runs recorded for a Timer in the node, oldest first.
fn history(node: &Node, name: &str) -> Vec<serde_json::Value> {
    let out = tend(node, &["job", "history", name, "--output", "json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let mut runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("history JSON");
    runs.sort_by_key(|r| r["start_ms"].as_u64());
    runs
}

#[test]
fn timers_fire_their_jobs_through_tend_never_overlapping_and_catch_up_after_downtime() {
    node::require_systemd_node_image();
    let node = Node::start("tend-timer-fires");
    node.copy_in(env!("CARGO_BIN_EXE_tend"), TEND);
    node.exec_ok(&["mkdir", "-p", SPECS]);
    // Every 2 seconds, a job that takes 3: systemd must never start it while it runs.
    node.write_file(
        &format!("{SPECS}/tick.yaml"),
        "apiVersion: tend/v1\nkind: Timer\nmetadata: {name: tick}\nspec:\n  schedule: '*:*:0/2'\n  accuracy: 1ms\n  concurrency: forbid\n  job: {runtime: host, exec: [/bin/sh, -c, 'date +%s >> /tmp/ticks; sleep 3']}\n",
    );
    apply(&node);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut runs = Vec::new();
    while std::time::Instant::now() < deadline {
        runs = history(&node, "tick");
        if runs.iter().filter(|r| r["result"] == "ok").count() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let ok: Vec<&serde_json::Value> = runs.iter().filter(|r| r["result"] == "ok").collect();
    assert!(ok.len() >= 2, "the timer must fire its job through tend: {runs:#?}");
    assert!(ok.iter().all(|r| r["trigger"] == "timer"), "{runs:#?}");
    for pair in ok.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b["start_ms"].as_u64() >= a["end_ms"].as_u64(), "runs overlap: {a} and {b}");
    }

    // Persistent catch-up: a run due while the node is down happens when it boots.
    let due = node.exec_ok(&["date", "-u", "-d", "+8 seconds", "+%Y-%m-%d %H:%M:%S"]);
    node.write_file(
        &format!("{SPECS}/once.yaml"),
        &format!(
            "apiVersion: tend/v1\nkind: Timer\nmetadata: {{name: once}}\nspec:\n  schedule: '{} UTC'\n  persistent: true\n  accuracy: 1ms\n  job: {{runtime: host, exec: [/bin/true]}}\n",
            due.trim()
        ),
    );
    apply(&node);
    assert!(history(&node, "once").is_empty(), "not due yet");
    node.stop_container();
    std::thread::sleep(std::time::Duration::from_secs(12));
    node.start_container();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut caught_up = false;
    while !caught_up && std::time::Instant::now() < deadline {
        let out = tend(&node, &["job", "history", "once", "--output", "json"]);
        caught_up = String::from_utf8_lossy(&out.stdout).contains("\"ok\"");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(caught_up, "the missed run must run at boot: {:#?}", history(&node, "once"));
}
