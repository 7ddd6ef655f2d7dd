//! A hung Docker daemon never hangs tend (issue 11, defect 7). The fault is real: a Unix
//! socket that accepts connections and never answers, named by `DOCKER_HOST`. It can also
//! answer `/version` only (so tend connects, and the calls after that hang), and it can come
//! back: then it forwards new connections to the real daemon, as a daemon that was hung and
//! answers again.
//!
//! Stand-alone commands exit 1 with a message naming Docker, the call and the wait; an agent
//! keeps running, answers `tend status` through its socket saying Docker is unresponsive,
//! and converges by itself once Docker answers. No test asserts a wall-clock time: every
//! tend call runs under `run_with_timeout`, so a hang fails the test instead of hanging it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread;
use std::time::Duration;

use crate::agent::{Agent, metric, running};
use crate::harness::{self, Env, describe, wait_for};
use crate::services::service;

/// How long one tend call may take here before the test fails: far more than the 2 s
/// engine timeout the tests set, far less than the harness's default.
const TEND_BOUND: Duration = Duration::from_secs(60);

/// Accepts and holds every connection, never answering.
const HUNG: u8 = 0;
/// Answers `GET /version` (so a client connects), holds every other request unanswered.
const VERSION_ONLY: u8 = 1;
/// Forwards new connections to the real daemon.
const ANSWERING: u8 = 2;

/// A Docker daemon on a Unix socket in its own temporary directory, hung until told
/// otherwise.
struct FakeDocker {
    path: PathBuf,
    mode: Arc<AtomicU8>,
    _dir: tempfile::TempDir,
}

impl FakeDocker {
    fn start(mode: u8) -> FakeDocker {
        let dir = tempfile::tempdir().expect("a directory for the socket");
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).expect("bind the fake daemon's socket");
        let mode = Arc::new(AtomicU8::new(mode));
        let shared = mode.clone();
        // Runs until the test process ends; held connections stay open until the daemon
        // "comes back" (then they are dropped, as by a restarted daemon).
        thread::spawn(move || {
            let mut held: Vec<UnixStream> = Vec::new();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                match shared.load(Ordering::SeqCst) {
                    HUNG => held.push(conn),
                    VERSION_ONLY => {
                        thread::spawn(move || answer_version_only(conn));
                    }
                    _ => {
                        held.clear();
                        thread::spawn(move || forward(conn));
                    }
                }
            }
        });
        FakeDocker { path, mode, _dir: dir }
    }

    /// `DOCKER_HOST` for it.
    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// From now on, forward to the real daemon.
    fn come_back(&self) {
        self.mode.store(ANSWERING, Ordering::SeqCst);
    }
}

/// Answers each `/version` request of the connection; reads and ignores anything else,
/// never answering it.
fn answer_version_only(conn: UnixStream) {
    let Ok(mut out) = conn.try_clone() else { return };
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let target = line.split_whitespace().nth(1).unwrap_or("");
        if !target.ends_with("/version") {
            continue;
        }
        let body = r#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Copies bytes both ways between `conn` and the real daemon.
fn forward(conn: UnixStream) {
    let Ok(real) = UnixStream::connect(real_docker_socket()) else { return };
    let (Ok(mut conn_in), Ok(mut real_out)) = (conn.try_clone(), real.try_clone()) else { return };
    let up = thread::spawn(move || {
        let _ = std::io::copy(&mut conn_in, &mut real_out);
        let _ = real_out.shutdown(std::net::Shutdown::Write);
    });
    let (mut real_in, mut conn_out) = (real, conn);
    let _ = std::io::copy(&mut real_in, &mut conn_out);
    let _ = conn_out.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// The real daemon's socket: `DOCKER_HOST` when it names one, else the default.
fn real_docker_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(host.trim_start_matches("unix://")),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// `tend --state-dir … --scope … ARGS` with `DOCKER_HOST` at `docker`, bounded by
/// [`TEND_BOUND`].
fn tend_on(env: &Env, docker: &FakeDocker, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(harness::tend_bin());
    cmd.arg("--state-dir")
        .arg(env.state_path())
        .arg("--scope")
        .arg(&env.scope)
        .args(args)
        .env("DOCKER_HOST", docker.host())
        .env("TEND_LOG", "warn")
        .env("TEND_SOCKET", env.socket_path())
        .env("TEND_LOCK_DIR", env.lock_path())
        .env_remove("TEND_ENGINE_TIMEOUT")
        .envs(vars.iter().copied());
    harness::run_with_timeout(&mut cmd, TEND_BOUND).unwrap_or_else(|e| panic!("tend hung on a hung Docker: {e}"))
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A spec directory holding one docker service.
fn env_with_a_service(test: &str) -> (Env, String) {
    let env = Env::new(test);
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    (env, web)
}

#[test]
fn apply_plan_and_status_exit_promptly_naming_docker_the_call_and_the_wait() {
    let (env, _) = env_with_a_service("hung_connect");
    let docker = FakeDocker::start(HUNG);
    let spec = env.spec_arg();
    let timeout = [("TEND_ENGINE_TIMEOUT", "2s")];
    for (args, vars) in [
        (vec!["--engine-timeout", "2s", "apply", spec], &[][..]),
        (vec!["plan", spec, "--engine-timeout", "2s"], &[][..]),
        // The environment variable sets it as well.
        (vec!["status", spec], &timeout[..]),
    ] {
        let out = tend_on(&env, &docker, &args, vars);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "tend {args:?}\n{}", describe(&out));
        assert!(
            err.contains(
                "Docker is unresponsive (nothing was changed): connecting to the Docker daemon: \
                 Docker did not answer within 2s"
            ),
            "tend {args:?}\n{}",
            describe(&out)
        );
    }
    assert!(env.containers().is_empty(), "nothing may be created");
}

#[test]
fn a_daemon_that_connects_and_then_hangs_fails_the_call_that_hung() {
    let (env, _) = env_with_a_service("hung_after_connect");
    let docker = FakeDocker::start(VERSION_ONLY);
    for command in ["apply", "plan", "status"] {
        let out = tend_on(&env, &docker, &["--engine-timeout", "2s", command, env.spec_arg()], &[]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "tend {command}\n{}", describe(&out));
        assert!(
            err.contains("observing live state (nothing was changed): listing ")
                && err.contains(": Docker did not answer within 2s"),
            "tend {command}\n{}",
            describe(&out)
        );
    }
}

#[test]
fn an_engine_timeout_out_of_bounds_is_refused() {
    let env = Env::new("engine_timeout_bounds");
    let docker = FakeDocker::start(HUNG);
    for bad in ["500ms", "11m"] {
        let out = tend_on(&env, &docker, &["--engine-timeout", bad, "plan", env.spec_arg()], &[]);
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(stderr_of(&out).contains(&format!("must be 1s to 10m (found {bad})")), "{}", describe(&out));
    }
}

#[test]
fn the_agent_reports_a_hung_docker_keeps_answering_and_recovers_by_itself() {
    // Docker never answers: not even the connection is made.
    agent_outlives_a_hung_docker(
        "agent_hung_docker",
        HUNG,
        "connecting to the Docker daemon: ",
        "Docker is unresponsive: ",
    );
}

#[test]
fn the_agent_reports_a_docker_that_hangs_once_connected_and_recovers_by_itself() {
    // Docker connects, then hangs: the observation that checks the first spec set times
    // out, and the set waits (it is not lost) until Docker answers.
    agent_outlives_a_hung_docker(
        "agent_hung_listing",
        VERSION_ONLY,
        "listing ",
        "checking the new spec set against live state: observing live state (nothing was changed): listing ",
    );
}

/// Runs an agent against a daemon in `mode`: it keeps passing, answers `tend status` through
/// its socket saying Docker is unresponsive (the failed call starts with `call`, the last
/// pass's result with `result`), and converges by itself once Docker answers.
fn agent_outlives_a_hung_docker(test: &str, mode: u8, call: &str, result: &str) {
    let (env, web) = env_with_a_service(test);
    let docker = FakeDocker::start(mode);
    let host = docker.host();
    let agent = Agent::start_with_env(
        &env,
        &["--specs", env.spec_arg(), "--engine-timeout", "2s"],
        &[("DOCKER_HOST", host.as_str())],
    );
    // The loop goes on: passes keep coming, each failing without planning anything.
    wait_for(Duration::from_secs(60), "a second pass", || {
        agent.status_any(&env).is_some_and(|s| s["agent"]["passes"].as_u64().unwrap_or(0) >= 2)
    });
    let status = agent.status(&env);
    let problem = &status["agent"]["engines"]["docker"];
    assert_eq!(problem["state"], "unresponsive", "{status:#}\n{}", agent.log());
    let error = problem["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(call) && error.ends_with(": Docker did not answer within 2s"), "{status:#}");
    let last = status["agent"]["lastResult"].as_str().unwrap_or_default();
    assert!(last.starts_with(result), "{status:#}");
    assert!(status["unchecked"].as_str().unwrap_or_default().contains("Docker is unresponsive"), "{status:#}");

    // Through the agent's socket, a person reads it too (and the exit status says so).
    let out = env.tend(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text.contains("Docker is unresponsive since "), "{}", describe(&out));
    // A plan cannot be made without Docker: the agent says why instead of hanging.
    let out = env.tend(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr_of(&out).contains("Docker is unresponsive"), "{}", describe(&out));
    let m = agent.metrics();
    assert_eq!(metric(&m, "tend_engine_up{engine=\"docker\"}"), 0.0, "{m}");
    assert!(metric(&m, "tend_engine_errors_total{engine=\"docker\",kind=\"timeout\"}") >= 1.0, "{m}");
    let name = format!("{web}-1");
    assert!(!running(&name), "nothing may be created while Docker hangs");

    // Docker answers again: the agent notices by itself and converges.
    docker.come_back();
    wait_for(Duration::from_secs(120), "the agent to create the service once Docker answers", || running(&name));
    wait_for(Duration::from_secs(30), "the status to show Docker answering", || {
        agent.status_any(&env).is_some_and(|s| s["agent"]["engines"].get("docker").is_none())
    });
    let m = agent.metrics();
    assert_eq!(metric(&m, "tend_engine_up{engine=\"docker\"}"), 1.0, "{m}");
}
