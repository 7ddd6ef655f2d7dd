//! Maintenance windows (`tend maintain`, `tend locks`) with real processes, real Docker and
//! the real agent: a target an operator holds is left alone and comes back after the
//! window; locks die with their holder; overlapping operators never deadlock; the agent
//! mid-step makes an operator wait; `--for` ends a window; bad input changes nothing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{Agent, container_id, running};
use crate::harness::{self, Env, describe, docker_ok, stdout_of, wait_for};
use crate::services::service;

/// `tend maintain ARGS` started in the background for `env`.
fn maintain(env: &Env, args: &[&str]) -> Child {
    Command::new(harness::tend_bin())
        .arg("--state-dir")
        .arg(env.state_path())
        .arg("--scope")
        .arg(&env.scope)
        .arg("--socket")
        .arg(env.socket_path())
        .arg("--lock-dir")
        .arg(env.lock_path())
        .arg("maintain")
        .args(["--specs", env.spec_arg()])
        .args(args)
        .env("TEND_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tend maintain")
}

/// Waits for a background command; panics after `timeout`.
fn finish(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("tend maintain did not finish within {timeout:?}: {:?}", child.wait_with_output());
}

fn held(env: &Env) -> Vec<String> {
    let out = env.tend(&["locks", "--output", "json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v.as_array().into_iter().flatten().filter_map(|l| l["target"].as_str().map(str::to_string)).collect()
}

#[test]
fn a_service_the_operator_stops_under_a_lock_stays_down_until_the_window_ends() {
    let env = Env::new("maint_stays_down");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    let name = format!("{web}-1");
    wait_for(Duration::from_secs(30), "the service to run", || running(&name));
    // The operator's runbook: lock, stop the module, work on it, leave.
    let flag = env.state_path().join("go");
    let script = format!("docker stop -t 1 {name} >/dev/null; while [ ! -e {} ]; do sleep 0.1; done", flag.display());
    let child = maintain(&env, &[&web, "--reason", "resize the disk", "--", "sh", "-c", &script]);
    wait_for(Duration::from_secs(20), "the operator to stop the service", || !running(&name));
    // The agent sees the exit but leaves the service alone, and says why.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!running(&name), "the agent restarted a service under maintenance\n{}", agent.log());
    let status = agent.status(&env);
    let instance = &status["services"][0]["instances"][0];
    assert_eq!(instance["maintenance"]["reason"], "resize the disk", "{status}");
    let text = stdout_of(&env.tend(&["status"]));
    assert!(text.contains("maintenance (by "), "{text}");
    assert!(stdout_of(&env.tend(&["plan"])).contains(&format!("maintenance: {name} (by ")), "plan shows it");
    assert_eq!(held(&env), std::slice::from_ref(&name));
    // The window ends: the agent brings the service back by itself.
    std::fs::write(&flag, "").expect("flag");
    let out = finish(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", describe(&out));
    let t0 = Instant::now();
    wait_for(Duration::from_secs(20), "the agent to start the service after the window", || running(&name));
    eprintln!("back {:?} after the window ended", t0.elapsed());
    assert!(held(&env).is_empty());
}

#[test]
fn a_killed_maintain_releases_its_locks_at_once() {
    let env = Env::new("maint_sigkill");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, "replicas: 2"));
    env.apply();
    // The lock file names the pid of the instance tend started.
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &format!("{web}-1")]).trim().to_string();
    let record = std::fs::read_to_string(env.lock_path().join(format!("{web}-1.lock"))).expect("the lock file");
    assert_eq!(record.lines().next(), Some(pid.as_str()), "{record}");
    let mut child = maintain(&env, &[&web, "--", "sleep", "60"]);
    wait_for(Duration::from_secs(20), "the locks to be held", || held(&env).len() == 2);
    child.kill().expect("SIGKILL tend maintain");
    let _ = child.wait();
    assert!(held(&env).is_empty(), "locks outlived their holder: {:?}", held(&env));
    // And the next pass acts on the targets again.
    docker_ok(&["stop", "-t", "1", &format!("{web}-1")]);
    env.apply();
    assert!(running(&format!("{web}-1")));
}

#[test]
fn overlapping_operators_in_opposite_orders_never_deadlock() {
    let env = Env::new("maint_overlap");
    let (a, b) = (env.name("a"), env.name("b"));
    env.write_spec("a.yaml", &service(&a, ""));
    env.write_spec("b.yaml", &service(&b, ""));
    let log = env.state_path().join("overlap.log");
    let script = |who: &str| format!("echo start {who} >> {0}; sleep 0.2; echo end {who} >> {0}", log.display());
    let mut children = Vec::new();
    for round in 0..4 {
        children.push(maintain(&env, &["--wait", &a, &b, "--", "sh", "-c", &script(&format!("x{round}"))]));
        children.push(maintain(&env, &["--wait", &b, &a, "--", "sh", "-c", &script(&format!("y{round}"))]));
    }
    for c in children {
        let out = finish(c, Duration::from_secs(60));
        assert!(out.status.success(), "{}", describe(&out));
    }
    // Never two holders at once: every start is followed by its own end.
    let lines: Vec<String> = std::fs::read_to_string(&log).expect("log").lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 16, "{lines:?}");
    for pair in lines.chunks(2) {
        let who = pair[0].strip_prefix("start ").expect("a start");
        assert_eq!(pair[1], format!("end {who}"), "two operators held a target at once: {lines:?}");
    }
}

#[test]
fn the_agent_mid_replacement_makes_an_operator_wait() {
    let env = Env::new("maint_wait_agent");
    let web = env.name("web");
    let slow = r#"command: ["sh", "-c", "trap 'sleep 3; exit 0' TERM; sleep 3600 & wait"]"#;
    env.write_spec("web.yaml", &service(&web, slow));
    let agent = Agent::start(&env, &["--specs", env.spec_arg()]);
    let name = format!("{web}-1");
    wait_for(Duration::from_secs(30), "the service to run", || running(&name));
    let old = container_id(&name);
    env.write_spec("web.yaml", &service(&web, &format!("{slow}\nenv: {{V: '2'}}")));
    wait_for(Duration::from_secs(20), "the replacement to begin", || agent.log().contains("action=\"remove\""));
    // Without --wait: refused, and told that tend is acting on it.
    let out = finish(maintain(&env, &[&web, "--", "true"]), Duration::from_secs(20));
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("tend"), "{err}");
    // With --wait: it gets the lock once tend is done with the target.
    let out = finish(maintain(&env, &["--wait", &web, "--", "true"]), Duration::from_secs(60));
    assert!(out.status.success(), "{}", describe(&out));
    wait_for(Duration::from_secs(30), "the new version to run", || running(&name) && container_id(&name) != old);
}

#[test]
fn a_window_with_for_ends_the_command_and_releases() {
    let env = Env::new("maint_for");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    let out = finish(maintain(&env, &[&web, "--for", "1s", "--", "sleep", "30"]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(143), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("window of 1s is over"), "{}", describe(&out));
    assert!(held(&env).is_empty());
}

#[test]
fn bad_targets_and_bad_lock_paths_are_refused_and_change_nothing() {
    use std::os::unix::fs::symlink;
    let env = Env::new("maint_bad");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    env.apply();
    let id = container_id(&format!("{web}-1"));
    // An unknown target, with a suggestion.
    let typo = format!("{web}x");
    let out = finish(maintain(&env, &[&typo, "--", "true"]), Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains(&format!("unknown target `{typo}`")) && err.contains("did you mean"), "{err}");
    // A lock file replaced by a symlink: refused, the link's target untouched.
    let victim = env.state_path().join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    std::fs::create_dir_all(env.lock_path()).expect("lock dir");
    let lock = env.lock_path().join(format!("{web}-1.lock"));
    let _ = std::fs::remove_file(&lock);
    symlink(&victim, &lock).expect("symlink");
    let out = finish(maintain(&env, &[&web, "--", "true"]), Duration::from_secs(20));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n");
    // The agent's pass refuses it as well, and changes nothing.
    docker_ok(&["stop", "-t", "1", &format!("{web}-1")]);
    let out = env.tend(&["apply", env.spec_arg()]);
    assert!(!out.status.success(), "apply acted through a symlinked lock\n{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n");
    assert_eq!(container_id(&format!("{web}-1")), id);
    std::fs::remove_file(&lock).expect("remove the symlink");
    // A lock directory that cannot be one (a regular file): a clear error.
    let not_a_dir = env.state_path().join("not-a-dir");
    std::fs::write(&not_a_dir, "").expect("file");
    let out = Command::new(harness::tend_bin())
        .args(["--lock-dir", not_a_dir.to_str().expect("utf-8"), "--state-dir"])
        .arg(env.state_path())
        .args(["--scope", &env.scope, "maintain", "--specs", env.spec_arg(), &web, "--", "true"])
        .output()
        .expect("run tend");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"), "{}", describe(&out));
}
