//! The agent (`tend agent`) against real Docker: event-driven repair, spec edits, a bad set
//! keeping the last good one, the mass-removal guard, per-object backoff, SIGTERM leaving
//! services running, unclean-boot holds, a git source, and the API socket's permissions.
//!
//! Each test runs its own agent on its own scope, state directory, spec directory and
//! socket. Waits poll with deadlines; no test asserts a wall-clock time (the repair delay
//! is printed, and measured properly by `scripts/bench/agent.sh`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{self, Env, describe, docker_ok, stdout_of, wait_for, wait_until};
use crate::services::service;

/// A running `tend agent`, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Agent {
    child: Option<Child>,
    log: PathBuf,
    socket: PathBuf,
}

impl Agent {
    /// Starts `tend agent ARGS` for `env` and waits until its first pass is done.
    pub(crate) fn start(env: &Env, args: &[&str]) -> Agent {
        Agent::start_with_env(env, args, &[])
    }

    /// As [`Agent::start`], with these variables in the agent's environment (they override
    /// the harness's own, `TEND_LOG` included).
    pub(crate) fn start_with_env(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Agent {
        let log = env.state_path().join(format!("agent-{}.log", Instant::now().elapsed().as_nanos()));
        let file = std::fs::File::create(&log).expect("create the agent log");
        let child = Command::new(harness::tend_bin())
            .arg("--state-dir")
            .arg(env.state_path())
            .arg("--scope")
            .arg(&env.scope)
            .arg("--socket")
            .arg(env.socket_path())
            .arg("agent")
            .args(args)
            .env("TEND_LOG", "info,tend=debug")
            .env("TEND_LOCK_DIR", env.lock_path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            // Last, so a test may set any of the above (`TEND_LOG=trace`).
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start tend agent");
        let agent = Agent { child: Some(child), log, socket: env.socket_path() };
        wait_for(Duration::from_secs(60), "the agent's first pass", || {
            agent.status_any(env).is_some_and(|s| s["agent"]["passes"].as_u64().unwrap_or(0) >= 1)
        });
        agent
    }

    /// `tend status -o json` through the agent, whatever its exit status; None when it did
    /// not print JSON (no agent yet).
    pub(crate) fn status_any(&self, env: &Env) -> Option<Value> {
        let out = env.tend(&["status", "--output", "json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    pub(crate) fn status(&self, env: &Env) -> Value {
        self.status_any(env).unwrap_or_else(|| panic!("no status from the agent\n{}", self.log()))
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `curl --unix-socket` GET of the metrics.
    pub(crate) fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(&self.socket)
            .arg("http://tend/metrics")
            .output()
            .expect("run curl");
        assert!(out.status.success(), "metrics: {}", describe(&out));
        stdout_of(&out)
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub(crate) fn stop(&mut self) -> Option<i32> {
        self.stop_with(1)
    }

    /// Sends SIGTERM `signals` times (a second one forces the exit) and waits; returns the
    /// exit code.
    pub(crate) fn stop_with(&mut self, signals: usize) -> Option<i32> {
        let mut child = self.child.take().expect("the agent runs");
        for _ in 0..signals {
            signal(child.id(), "TERM");
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the agent did not stop on SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            harness::stop_within(&mut child, Duration::from_secs(20));
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) fn started_at(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", name]).trim().to_string()
}

pub(crate) fn running(name: &str) -> bool {
    let out = harness::docker(&["inspect", "-f", "{{.State.Running}}", name]);
    out.status.success() && stdout_of(&out).trim() == "true"
}

pub(crate) fn container_id(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.Id}}", name]).trim().to_string()
}

#[test]
fn a_killed_container_is_restarted_on_the_event_and_counted_as_a_repair() {
    let env = Env::new("agent_repair");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    let name = format!("{web}-1");
    wait_for(Duration::from_secs(30), "the service to run", || running(&name));
    let before = started_at(&name);
    let t0 = Instant::now();
    docker_ok(&["kill", &name]);
    wait_for(Duration::from_secs(20), "the agent to restart the killed container", || {
        running(&name) && started_at(&name) != before
    });
    eprintln!("repaired {:?} after the kill (event-driven; benchmarked in scripts/bench/agent.sh)", t0.elapsed());
    let m = agent.metrics();
    assert!(metric(&m, "tend_drift_repairs_total") >= 1.0, "no repair counted:\n{m}");
    assert!(metric(&m, "tend_actions_total{kind=\"start\",result=\"ok\"}") >= 1.0, "{m}");
}

#[test]
fn a_spec_edit_is_picked_up_and_only_that_service_is_recreated() {
    let env = Env::new("agent_edit");
    let (a, b) = (env.name("a"), env.name("b"));
    env.write_spec("a.yaml", &service(&a, ""));
    env.write_spec("b.yaml", &service(&b, ""));
    let _agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(30), "both services to run", || {
        running(&format!("{a}-1")) && running(&format!("{b}-1"))
    });
    let (id_a, id_b) = (container_id(&format!("{a}-1")), container_id(&format!("{b}-1")));
    // An in-place edit (open, truncate, write, close), as an editor without atomic saves does.
    std::fs::write(env.spec_path().join("a.yaml"), service(&a, "env: {GREETING: hello}")).expect("edit the spec");
    wait_for(Duration::from_secs(30), "the edited service to be recreated", || {
        let out = harness::docker(&["inspect", "-f", "{{.Id}} {{.State.Running}}", &format!("{a}-1")]);
        let text = stdout_of(&out);
        out.status.success() && !text.starts_with(&id_a) && text.trim().ends_with("true")
    });
    assert_eq!(container_id(&format!("{b}-1")), id_b, "the other service was touched");
    let env_of = docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &format!("{a}-1")]);
    assert!(env_of.contains("GREETING=hello"), "{env_of}");
}

#[test]
fn an_edit_of_only_a_backup_reaches_the_running_agent() {
    let env = Env::new("agent_backup_edit");
    let web = env.name("web");
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    env.write_spec("web.yaml", &service(&web, ""));
    let backup = |schedule: &str| {
        crate::backup::backup_doc(
            "nightly",
            &format!(
                "  schedule: '{schedule}'\n  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n",
                data.display(),
                env.state_path().join("backups").display()
            ),
        )
    };
    env.write_spec("backup.yaml", &backup("*-*-* 03:15:00"));
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    let schedule = |agent: &Agent| {
        let status = agent.status(&env);
        let timer = status["timers"].as_array().into_iter().flatten().find(|t| t["name"] == "backup-nightly").cloned();
        timer.and_then(|t| t["schedule"].as_str().map(str::to_string))
    };
    assert_eq!(schedule(&agent).as_deref(), Some("*-*-* 03:15:00"));
    // Only the Backup changes: its schedule.
    env.write_spec("backup.yaml", &backup("*-*-* 04:45:00"));
    wait_for(Duration::from_secs(30), "the agent to use the new schedule", || {
        schedule(&agent).as_deref() == Some("*-*-* 04:45:00")
    });
}

#[test]
fn a_bad_spec_set_is_rejected_whole_and_the_last_good_set_stays() {
    let env = Env::new("agent_bad_set");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    let name = format!("{web}-1");
    wait_for(Duration::from_secs(30), "the service to run", || running(&name));
    let id = container_id(&name);
    // A new service (valid) next to a broken file: nothing of the set is applied.
    let extra = env.name("extra");
    env.write_spec("extra.yaml", &service(&extra, ""));
    env.write_spec("broken.yaml", "apiVersion: tend/v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  imagee: x\n");
    wait_for(Duration::from_secs(20), "the agent to report the spec errors", || {
        agent.status(&env)["agent"]["specErrors"].as_array().is_some_and(|e| !e.is_empty())
    });
    let status = agent.status(&env);
    let errors = status["agent"]["specErrors"].to_string();
    assert!(errors.contains("broken.yaml:5:3: unknown field `imagee`"), "{errors}");
    let out = env.tend(&["status"]);
    assert_eq!(out.status.code(), Some(1), "status exits 1 while the newest set is rejected\n{}", describe(&out));
    assert!(stdout_of(&out).contains("the last good set stays in use"), "{}", describe(&out));
    assert!(metric(&agent.metrics(), "tend_spec_errors") >= 1.0);
    // Kill the running service: the last good set is still enforced.
    docker_ok(&["kill", &name]);
    wait_for(Duration::from_secs(20), "the last good set to be enforced", || running(&name));
    assert_eq!(container_id(&name), id, "the container was replaced");
    assert!(env.container(&format!("{extra}-1")).is_none(), "a service of the rejected set was created");
    // Fixed: the whole set is applied, errors cleared.
    env.remove_spec("broken.yaml");
    wait_for(Duration::from_secs(30), "the fixed set to be applied", || running(&format!("{extra}-1")));
    wait_until(Duration::from_secs(10), || agent.status(&env)["agent"]["specErrors"].is_null());
    assert!(agent.status(&env)["agent"]["specErrors"].is_null(), "{}", agent.status(&env));
    assert_eq!(metric(&agent.metrics(), "tend_spec_errors"), 0.0);
}

#[test]
fn removing_most_services_at_once_needs_allow_mass_removal() {
    let env = Env::new("agent_mass_removal");
    // The agent's spec directory is a subdirectory, so the test can delete it.
    let specs = env.spec_path().join("set");
    let names: Vec<String> = (1..=3).map(|i| env.name(&format!("s{i}"))).collect();
    for n in &names {
        env.write_spec(&format!("set/{n}.yaml"), &service(n, ""));
    }
    let specs_arg = specs.to_str().expect("utf-8").to_string();
    let mut agent = Agent::start(&env, &["--specs", &specs_arg]);
    wait_for(Duration::from_secs(30), "three services to run", || names.iter().all(|n| running(&format!("{n}-1"))));
    // An emptied directory (a bad checkout, a wrong rsync) is not "delete everything".
    for n in &names {
        env.remove_spec(&format!("set/{n}.yaml"));
    }
    wait_for(Duration::from_secs(20), "the agent to report the blocked mass removal", || {
        agent.status(&env)["agent"]["massRemoval"].is_string()
    });
    let why = agent.status(&env)["agent"]["massRemoval"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("would remove 3 of the 3"), "{why}");
    assert!(names.iter().all(|n| running(&format!("{n}-1"))), "a service was removed");
    assert_eq!(metric(&agent.metrics(), "tend_mass_removal_blocked"), 1.0);
    // Deleting the directory itself: a set that cannot be read is rejected, nothing removed.
    std::fs::remove_dir(&specs).expect("remove the spec directory");
    wait_for(Duration::from_secs(20), "the unreadable directory to be reported", || {
        agent.status(&env)["agent"]["specErrors"].to_string().contains("cannot read specs")
    });
    assert!(names.iter().all(|n| running(&format!("{n}-1"))), "a service was removed");
    std::fs::create_dir(&specs).expect("re-create the spec directory");
    assert_eq!(agent.stop(), Some(0));
    // With the operator's explicit consent, the removal goes ahead.
    let _agent = Agent::start(&env, &["--specs", &specs_arg, "--allow-mass-removal"]);
    wait_for(Duration::from_secs(60), "the services to be removed", || env.containers().is_empty());
}

#[test]
fn a_failing_service_backs_off_and_does_not_stall_the_others() {
    let env = Env::new("agent_backoff");
    // A host port that is taken: starting the container fails, every time.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("address").port();
    let (bad, good) = (env.name("bad"), env.name("good"));
    env.write_spec("bad.yaml", &service(&bad, &format!("ports: ['127.0.0.1:{port}:80']")));
    env.write_spec("good.yaml", &service(&good, ""));
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(30), "the good service to run", || running(&format!("{good}-1")));
    wait_for(Duration::from_secs(30), "the failing service to be backing off", || {
        agent.status(&env)["agent"]["backoff"].get(&bad).is_some()
    });
    // The good one is still repaired while the bad one backs off.
    docker_ok(&["kill", &format!("{good}-1")]);
    wait_for(Duration::from_secs(20), "the good service to be repaired", || running(&format!("{good}-1")));
    assert!(metric(&agent.metrics(), "tend_actions_total{kind=\"create\",result=\"failed\"}") >= 1.0);
    drop(taken);
}

#[test]
fn sigterm_stops_the_agent_and_leaves_services_running() {
    let env = Env::new("agent_sigterm");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    let mut agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    let name = format!("{web}-1");
    wait_for(Duration::from_secs(30), "the service to run", || running(&name));
    let id = container_id(&name);
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    assert!(running(&name), "the service was stopped with the agent");
    assert_eq!(container_id(&name), id);
    let marker: Value =
        serde_json::from_slice(&std::fs::read(env.state_path().join("agent-run.json")).expect("the boot marker"))
            .expect("JSON");
    assert_eq!(marker["running"], false, "no clean-shutdown marker: {marker}");
    assert!(!env.socket_path().exists(), "the socket was left behind");
    // Without an agent, status works stand-alone again.
    let out = env.tend(&["status", env.spec_arg()]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn after_an_unclean_boot_marked_services_are_held_until_released() {
    let env = Env::new("agent_unclean_boot");
    let (db, web) = (env.name("db"), env.name("web"));
    env.write_spec("db.yaml", &service(&db, "holdAfterUncleanBoot: true"));
    env.write_spec("web.yaml", &service(&web, ""));
    env.apply();
    // The host "went down": both containers stopped, and the marker says the agent was
    // running in another boot.
    docker_ok(&["stop", "-t", "1", &format!("{db}-1"), &format!("{web}-1")]);
    std::fs::write(env.state_path().join("agent-run.json"), r#"{"bootId":"an-earlier-boot","running":true}"#)
        .expect("write the marker");
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(30), "the unmarked service to be started", || running(&format!("{web}-1")));
    let status = agent.status(&env);
    assert_eq!(status["agent"]["uncleanBoot"], true, "{status}");
    let notes = status["notes"].to_string();
    assert!(notes.contains("\"unclean_boot\":true"), "{notes}");
    assert!(!running(&format!("{db}-1")), "the marked service was started after an unclean boot");
    let text = stdout_of(&env.tend(&["status"]));
    assert!(text.contains("was not started after an unclean boot"), "{text}");
    // Released through the agent: started at once.
    let out = env.tend(&["release", &db]);
    assert!(out.status.success(), "{}", describe(&out));
    wait_for(Duration::from_secs(20), "the released service to start", || running(&format!("{db}-1")));
    // The marker now records this boot.
    let marker = std::fs::read_to_string(env.state_path().join("agent-run.json")).expect("marker");
    assert!(!marker.contains("an-earlier-boot"), "{marker}");
}

/// The instances the agent's status says are held.
fn held(agent: &Agent, env: &Env) -> Vec<String> {
    let status = agent.status(env);
    let notes = status["notes"].as_array().cloned().unwrap_or_default();
    notes.iter().filter(|n| n["note"] == "held").filter_map(|n| n["name"].as_str().map(str::to_string)).collect()
}

#[test]
fn restart_hold_holds_after_a_crash_but_not_after_a_clean_reboot_or_a_stop_under_maintenance() {
    let env = Env::new("agent_hold_rules");
    let db = env.name("db");
    let db1 = format!("{db}-1");
    env.write_spec("db.yaml", &service(&db, "restart: {policy: hold}"));
    let mut agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(30), "db to run", || running(&db1));
    // A clean reboot: the agent stops cleanly (tend.service stops before Docker), then the
    // host's shutdown stops the container, and the next boot has another id.
    assert_eq!(agent.stop(), Some(0));
    docker_ok(&["stop", "-t", "1", &db1]);
    let marker_path = env.state_path().join("agent-run.json");
    let marker: Value = serde_json::from_slice(&std::fs::read(&marker_path).expect("marker")).expect("JSON");
    assert_eq!(marker["running"], false, "{marker}");
    std::fs::write(&marker_path, r#"{"bootId":"an-earlier-boot","running":false}"#).expect("write the marker");
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(30), "db to be started again after the clean reboot", || running(&db1));
    assert!(held(&agent, &env).is_empty(), "held after a clean reboot\n{}", agent.log());
    // Stopped by an operator inside `tend maintain`: started again when the window ends.
    let out = env.tend(&["maintain", &db, "--specs", env.spec_arg(), "--", "docker", "stop", "-t", "1", &db1]);
    assert!(out.status.success(), "{}", describe(&out));
    wait_for(Duration::from_secs(30), "db to be started again after the window", || running(&db1));
    assert!(held(&agent, &env).is_empty(), "held after a stop under maintenance\n{}", agent.log());
    // A crash is still held for triage.
    docker_ok(&["kill", &db1]);
    wait_for(Duration::from_secs(30), "the crash to be held", || held(&agent, &env) == [db1.clone()]);
    assert!(!running(&db1));
}

#[test]
fn the_unclean_boot_banner_goes_when_its_holds_are_released() {
    let env = Env::new("agent_unclean_banner");
    let db = env.name("db");
    env.write_spec("db.yaml", &service(&db, "holdAfterUncleanBoot: true"));
    env.apply();
    docker_ok(&["stop", "-t", "1", &format!("{db}-1")]);
    std::fs::write(env.state_path().join("agent-run.json"), r#"{"bootId":"an-earlier-boot","running":true}"#)
        .expect("write the marker");
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    assert_eq!(agent.status(&env)["agent"]["uncleanBoot"], true);
    assert!(stdout_of(&env.tend(&["status"])).contains("unclean boot:"));
    let out = env.tend(&["release", &db]);
    assert!(out.status.success(), "{}", describe(&out));
    wait_for(Duration::from_secs(20), "the released service to start", || running(&format!("{db}-1")));
    assert_ne!(agent.status(&env)["agent"]["uncleanBoot"], true);
    assert!(!stdout_of(&env.tend(&["status"])).contains("unclean boot:"));
}

#[test]
fn without_systemd_scheduled_backups_are_no_error_and_both_paths_agree_on_exit_codes() {
    assert!(
        !Path::new("/run/systemd/system").exists(),
        "this test needs a host where systemd is not PID 1, as the Docker tests' machines are"
    );
    let env = Env::new("agent_exit_codes");
    let web = env.name("web");
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    env.write_spec("web.yaml", &service(&web, ""));
    env.write_spec(
        "backup.yaml",
        &crate::backup::backup_doc(
            "nightly",
            &format!(
                "  schedule: daily\n  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n",
                data.display(),
                env.state_path().join("archives").display()
            ),
        ),
    );
    env.apply();
    let code = |out: &std::process::Output| out.status.code();
    // Stand-alone: the host matches; the scheduled Backup is the agent's scheduler's.
    for cmd in ["plan", "apply", "status"] {
        let out = env.tend(&[cmd, env.spec_arg()]);
        assert_eq!(code(&out), Some(0), "{cmd}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("run by the agent's own scheduler"),
            "{}",
            describe(&out)
        );
    }
    // Through the agent: the same.
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    for cmd in ["plan", "status"] {
        let out = env.tend(&[cmd]);
        assert_eq!(code(&out), Some(0), "{cmd} through the agent: {}", describe(&out));
    }
    // A systemd service cannot run here: every path says so, with the reason, and exits 1.
    env.write_spec("unit.yaml", &format!(
        "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {}}}\nspec: {{runtime: systemd, exec: [/bin/sleep, infinity]}}\n",
        env.name("unit")
    ));
    for cmd in ["plan", "status"] {
        let out = env.tend(&[cmd, env.spec_arg()]);
        assert_eq!(code(&out), Some(1), "{cmd}: {}", describe(&out));
        let text = format!("{}{}", stdout_of(&out), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("1 systemd service(s) cannot run here"), "{cmd}: {text}");
    }
    wait_for(Duration::from_secs(30), "the agent to use the new set", || {
        agent.status(&env)["unchecked"].as_str().is_some()
    });
    for cmd in ["plan", "status"] {
        let out = env.tend(&[cmd]);
        assert_eq!(code(&out), Some(1), "{cmd} through the agent: {}", describe(&out));
        let text = format!("{}{}", stdout_of(&out), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("1 systemd service(s) cannot run here"), "{cmd} through the agent: {text}");
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    stdout_of(&out)
}

#[test]
fn a_git_source_applies_new_commits_and_keeps_the_last_good_one_on_a_bad_commit() {
    let env = Env::new("agent_git");
    let work = tempfile::tempdir().expect("tmp");
    let (repo, bare) = (work.path().join("repo"), work.path().join("specs.git"));
    std::fs::create_dir_all(repo.join("hosts/vm-a")).expect("mkdir");
    git(work.path(), &["init", "-q", repo.to_str().expect("utf-8")]);
    let web = env.name("web");
    std::fs::write(repo.join("hosts/vm-a/web.yaml"), service(&web, "")).expect("write");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "web"]);
    git(work.path(), &["clone", "-q", "--bare", repo.to_str().expect("utf-8"), bare.to_str().expect("utf-8")]);
    git(&repo, &["remote", "add", "origin", bare.to_str().expect("utf-8")]);
    let config = env.state_path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "source:\n  git:\n    url: file://{}\n    branch: main\n    path: hosts/vm-a\n    interval: 1s\nresync: 5s\n",
            bare.display()
        ),
    )
    .expect("write the config");
    let agent = Agent::start(&env, &["--config", config.to_str().expect("utf-8")]);
    wait_for(Duration::from_secs(30), "the first commit to be applied", || running(&format!("{web}-1")));
    let first = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(agent.status(&env)["agent"]["commit"], first.as_str());

    // A bad commit: rejected whole, the last good commit stays.
    let api = env.name("api");
    std::fs::write(repo.join("hosts/vm-a/api.yaml"), service(&api, "replicas: many")).expect("write");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "bad"]);
    git(&repo, &["push", "-q", "origin", "main"]);
    let bad = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    wait_for(Duration::from_secs(30), "the bad commit to be rejected", || {
        agent.status(&env)["agent"]["rejectedCommit"] == bad.as_str()
    });
    let status = agent.status(&env);
    assert_eq!(status["agent"]["commit"], first.as_str(), "{status}");
    assert!(status["agent"]["specErrors"].to_string().contains("api.yaml"), "{status}");

    // Fixed: applied, and the commit is shown.
    let t0 = Instant::now();
    std::fs::write(repo.join("hosts/vm-a/api.yaml"), service(&api, "replicas: 1")).expect("write");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "fixed"]);
    git(&repo, &["push", "-q", "origin", "main"]);
    let fixed = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    wait_for(Duration::from_secs(30), "the fixed commit to be applied", || running(&format!("{api}-1")));
    eprintln!("commit to converged: {:?} (poll interval 1s)", t0.elapsed());
    wait_until(Duration::from_secs(10), || agent.status(&env)["agent"]["commit"] == fixed.as_str());
    let status = agent.status(&env);
    assert_eq!(status["agent"]["commit"], fixed.as_str(), "{status}");
    assert!(status["agent"]["specErrors"].is_null(), "{status}");
    // Specs are read through the stable `current` link, so paths do not change per commit.
    assert!(status["agent"]["specs"].as_str().unwrap_or_default().ends_with("git/current/hosts/vm-a"), "{status}");
}

#[test]
fn the_socket_is_root_and_group_only_and_others_get_a_clear_refusal() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new("agent_socket_perms");
    // The socket in a directory anyone may enter, so only the socket's own mode decides.
    let run = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = run.path().join("tend.sock");
    let config = env.state_path().join("agent.yaml");
    std::fs::write(
        &config,
        format!("source: {{dir: {}}}\nsocket: {{path: {}, group: adm}}\n", env.spec_arg(), socket.display()),
    )
    .expect("config");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    let mut child = Command::new(harness::tend_bin())
        .arg("--state-dir")
        .arg(env.state_path())
        .arg("--scope")
        .arg(&env.scope)
        .args(["agent", "--config"])
        .arg(&config)
        .env_remove("TEND_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let ok = wait_until(Duration::from_secs(30), || socket.exists());
    let meta = std::fs::metadata(&socket);
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(harness::tend_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .expect("run setpriv");
    let as_root =
        Command::new(harness::tend_bin()).arg("--socket").arg(&socket).args(["status", "-o", "json"]).output();
    signal(child.id(), "TERM");
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(ok, "the agent never made its socket\n{err}");
    let meta = meta.expect("socket metadata");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.uid(), 0, "socket owner");
    let adm = std::fs::read_to_string("/etc/group")
        .expect("/etc/group")
        .lines()
        .find_map(|l| l.strip_prefix("adm:x:").and_then(|r| r.split(':').next()).and_then(|g| g.parse::<u32>().ok()))
        .expect("group adm");
    assert_eq!(meta.gid(), adm, "socket group");
    assert!(!as_nobody.status.success(), "an unprivileged user read the status\n{}", describe(&as_nobody));
    let text = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(text.to_lowercase().contains("permission denied"), "{text}");
    let as_root = as_root.expect("run tend status");
    assert!(as_root.status.success(), "{}", describe(&as_root));
}

#[test]
fn sigterm_during_a_replacement_finishes_it_so_the_service_is_not_left_down() {
    let env = Env::new("agent_sigterm_mid");
    let web = env.name("web");
    // Stopping takes two seconds: the TERM trap sleeps before it exits.
    let slow = r#"command: ["sh", "-c", "trap 'sleep 2; exit 0' TERM; sleep 3600 & wait"]"#;
    env.write_spec("web.yaml", &service(&web, slow));
    let mut agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    let name = format!("{web}-1");
    wait_for(Duration::from_secs(30), "the service to run", || running(&name));
    let old = container_id(&name);
    env.write_spec("web.yaml", &service(&web, &format!("{slow}\nenv: {{VERSION: '2'}}")));
    // SIGTERM while the old container is being stopped.
    wait_for(Duration::from_secs(20), "the replacement to begin", || agent.log().contains("action=\"remove\""));
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    // The replacement was finished: a new container runs the new spec.
    assert!(running(&name), "the service was left down\n{}", agent.log());
    assert_ne!(container_id(&name), old, "the old container is still there");
    let env_of = docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &name]);
    assert!(env_of.contains("VERSION=2"), "{env_of}");
}

#[test]
fn a_second_sigterm_exits_at_once_without_waiting_for_the_running_step() {
    let env = Env::new("agent_sigterm_twice");
    let web = env.name("web");
    // Stopping takes five seconds: the TERM trap sleeps before it exits.
    let slow = r#"command: ["sh", "-c", "trap 'sleep 5; exit 0' TERM; sleep 3600 & wait"]"#;
    env.write_spec("web.yaml", &service(&web, slow));
    let mut agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(30), "the service to run", || running(&format!("{web}-1")));
    env.write_spec("web.yaml", &service(&web, &format!("{slow}\nenv: {{VERSION: '2'}}")));
    wait_for(Duration::from_secs(20), "the replacement to begin", || agent.log().contains("action=\"remove\""));
    // A graceful stop would finish the step and exit 0; the forced one exits 1 at once.
    assert_eq!(agent.stop_with(2), Some(1), "a forced stop exits 1\n{}", agent.log());
    assert!(agent.log().contains("second signal"), "{}", agent.log());
}

#[test]
fn a_spec_file_being_written_is_not_read_until_it_is_closed() {
    use std::io::Write;
    let env = Env::new("agent_partial_write");
    let (a, b) = (env.name("a"), env.name("b"));
    env.write_spec("a.yaml", &service(&a, ""));
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(30), "the first service to run", || running(&format!("{a}-1")));
    let reads = |log: &str| log.matches("spec set in use").count() + log.matches("spec set rejected").count();
    // A writer that stops halfway for longer than the debounce: half a file (here the first
    // of two documents, a valid but smaller set) must never be applied.
    let full = [service(&a, ""), service(&b, "")].concat();
    let half = full.len() / 2;
    let mut f = std::fs::File::create(env.spec_path().join("a.yaml")).expect("open for writing");
    f.write_all(&full.as_bytes()[..half]).expect("write half");
    f.flush().expect("flush");
    let before = reads(&agent.log());
    std::thread::sleep(Duration::from_secs(2));
    let status = agent.status(&env);
    assert!(status["agent"]["specErrors"].is_null(), "half a file was read: {status}");
    assert_eq!(reads(&agent.log()), before, "half a file was read\n{}", agent.log());
    f.write_all(&full.as_bytes()[half..]).expect("write the rest");
    drop(f);
    wait_for(Duration::from_secs(30), "the whole file to be applied", || running(&format!("{b}-1")));
    assert!(running(&format!("{a}-1")));
}
