//! Hard edges (issue 12) against real Docker: a reader that closes the pipe early, secrets
//! that must not show anywhere, a Docker that is down, how many services a mass change
//! takes down at once, a foreign container on a `-next` name, unchecked job names.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::agent::{Agent, metric, running};
use crate::harness::{self, Env, describe, wait_for};
use crate::services::{HandMade, service};

/// `tend --state-dir … --scope … ARGS` with its stdout a pipe whose reader is already
/// closed, as `tend status | head -0` would leave it.
fn tend_into_closed_pipe(env: &Env, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut cmd = Command::new(harness::tend_bin());
    cmd.arg("--state-dir")
        .arg(env.state_path())
        .arg("--scope")
        .arg(&env.scope)
        .args(args)
        .env("TEND_LOG", "warn")
        .env("TEND_SOCKET", env.socket_path())
        .env("TEND_LOCK_DIR", env.lock_path())
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start tend");
    // The harness's runner wants both pipes; stderr is enough here.
    let out = child.wait_with_output().expect("wait for tend");
    Output { status: out.status, stdout: Vec::new(), stderr: out.stderr }
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let env = Env::new("closed_stdout");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    env.write_spec(
        "nightly.yaml",
        &format!(
            "---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: nightly}}\nspec:\n  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n",
            env.spec_arg(),
            env.state_path().join("backups").display()
        ),
    );
    env.apply();
    let spec = env.spec_arg();
    let commands: [&[&str]; 9] = [
        &["status", spec],
        &["status", "--output", "json", spec],
        &["plan", spec],
        &["plan", "--output", "json", spec],
        &["job", "list", spec],
        &["job", "history", "backup-nightly"],
        &["backup", "list", "nightly", "--specs", spec],
        &["schema"],
        &["validate", spec],
    ];
    for args in commands {
        let out = tend_into_closed_pipe(&env, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "tend {args:?} panicked\n{}", describe(&out));
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "tend {args:?}\n{}", describe(&out));
        assert!(err.trim().is_empty(), "tend {args:?} said something about its closed stdout\n{}", describe(&out));
    }
    // The exit code is still the command's own: `plan` says whether there are changes.
    let out = tend_into_closed_pipe(&env, &["plan", spec]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// Now, as `docker events --since` takes it (Unix seconds and nanoseconds).
fn docker_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// Docker's `die` and `start` events of the scope's containers since `since`
/// ([`docker_now`]), as (time in ns, action, container ID, service).
fn die_and_start_events(env: &Env, since: &str) -> Vec<(u128, String, String, String)> {
    let (since, until, scope) = (since.to_string(), docker_now(), env.scope_filter());
    let args = [
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &scope,
        "--filter",
        "type=container",
        "--filter",
        "event=die",
        "--filter",
        "event=start",
        "--format",
        "{{json .}}",
    ];
    let text = harness::docker_ok(&args);
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let time = v["timeNano"].as_u64().map(u128::from).or_else(|| v["timeNano"].as_f64().map(|t| t as u128));
            (
                time.unwrap_or_else(|| panic!("no timeNano in {l}")),
                v["Action"].as_str().unwrap_or_default().to_string(),
                v["id"].as_str().unwrap_or_default().to_string(),
                v["Actor"]["Attributes"]["tend.name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn changing_twenty_services_at_once_takes_down_at_most_parallel_of_them() {
    let env = Env::new("mass_change");
    let names: Vec<String> = (1..=20).map(|i| env.name(&format!("s{i:02}"))).collect();
    for n in &names {
        env.write_spec(&format!("{n}.yaml"), &service(n, "env: {V: a}"));
    }
    env.apply();
    let old: BTreeSet<String> = env.container_ids().into_iter().collect();
    assert_eq!(old.len(), 20);
    let since = docker_now();
    for n in &names {
        env.write_spec(&format!("{n}.yaml"), &service(n, "env: {V: b}"));
    }
    env.tend_ok(&["apply", "--parallel", "4", env.spec_arg()]);
    // Each service goes down when its old container dies and is back when its new one
    // starts (Docker's own times): one stop and one start, never waiting on the others.
    let mut events = die_and_start_events(&env, &since);
    let mut seen: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (_, action, id, service) in &events {
        let e = seen.entry(service.as_str()).or_default();
        match (action.as_str(), old.contains(id)) {
            ("die", true) => e.0 += 1,
            ("start", false) => e.1 += 1,
            other => panic!("unexpected event {other:?} of {service}"),
        }
    }
    assert_eq!(seen.len(), 20, "{seen:?}");
    assert!(seen.values().all(|c| *c == (1, 1)), "one old container died and one new started per service: {seen:?}");
    // Sweep in time order (a start before a death at the same instant).
    events.sort_by_key(|(t, action, ..)| (*t, action == "die"));
    let (mut down, mut most) = (0usize, 0usize);
    for (_, action, ..) in &events {
        if action == "die" {
            down += 1;
            most = most.max(down);
        } else {
            down -= 1;
        }
    }
    eprintln!("services down at once: at most {most} of 20 (--parallel 4)");
    assert!(most <= 4, "{most} services were down at once with --parallel 4");
}

#[test]
fn a_foreign_container_on_the_next_name_is_a_conflict_not_a_docker_error() {
    let env = Env::new("next_conflict");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, "env: {V: a}\nrollout: {order: start-first}"));
    env.apply();
    let old_id = harness::docker_ok(&["inspect", "-f", "{{.Id}}", &format!("{web}-1")]);
    let squatter = format!("{web}-1-next");
    let _guard = HandMade(squatter.clone());
    let image = harness::test_image();
    let foreign_id = harness::docker_ok(&["run", "-d", "--name", &squatter, &image, "sleep", "3600"]);
    env.write_spec("web.yaml", &service(&web, "env: {V: b}\nrollout: {order: start-first}"));

    let out = env.tend(&["apply", env.spec_arg()]);
    let text = format!("{}{}", harness::stdout_of(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "a conflict needs an operator\n{}", describe(&out));
    assert!(text.contains(&format!("conflict: container {squatter}")), "{text}");
    assert!(!text.contains("409") && !text.contains("already in use"), "not a Docker error: {text}");
    // The old instance keeps running the old spec; the foreign container is untouched.
    assert_eq!(harness::docker_ok(&["inspect", "-f", "{{.Id}}", &format!("{web}-1")]), old_id);
    assert_eq!(
        harness::docker_ok(&["inspect", "-f", "{{.Id}} {{.State.Running}}", &squatter]),
        format!("{foreign_id} true")
    );
    let plan = env.tend(&["plan", "--output", "json", env.spec_arg()]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    assert!(
        plan["notes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["note"] == "conflict" && n["name"] == squatter.as_str())),
        "{plan:#}"
    );
}

/// The lock files in the environment's lock directory, by name.
fn lock_files(env: &Env) -> BTreeSet<String> {
    std::fs::read_dir(env.lock_path())
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

#[test]
fn the_lock_files_of_removed_instances_are_removed_with_them() {
    let env = Env::new("lock_files_go");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, "replicas: 3"));
    env.apply();
    let lock = |i: u32| format!("{web}-{i}.lock");
    assert!((1..=3).all(|i| lock_files(&env).contains(&lock(i))), "{:?}", lock_files(&env));
    env.write_spec("web.yaml", &service(&web, "replicas: 1"));
    env.apply();
    assert_eq!(lock_files(&env), BTreeSet::from([lock(1)]), "scaled down: only web-1's lock file stays");
    // A replacement keeps its instance's lock file.
    env.write_spec("web.yaml", &service(&web, "replicas: 1\nenv: {V: b}"));
    env.apply();
    assert_eq!(lock_files(&env), BTreeSet::from([lock(1)]));
    env.remove_spec("web.yaml");
    env.tend_ok(&["apply", "--allow-mass-removal", env.spec_arg()]);
    assert!(env.containers().is_empty());
    assert_eq!(lock_files(&env), BTreeSet::new(), "the spec is gone, and so is its lock file");
}

/// A Docker socket that forwards to the real daemon and can go away (its socket removed,
/// every connection cut) and come back, as a stopped and restarted daemon.
struct DockerProxy {
    path: std::path::PathBuf,
    conns: std::sync::Arc<std::sync::Mutex<Vec<UnixStream>>>,
    _dir: tempfile::TempDir,
}

impl DockerProxy {
    fn start() -> DockerProxy {
        let dir = tempfile::tempdir().expect("a directory for the socket");
        let proxy = DockerProxy { path: dir.path().join("docker.sock"), conns: Default::default(), _dir: dir };
        proxy.up();
        proxy
    }

    /// `DOCKER_HOST` for it.
    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Listens (again) and forwards every connection to the real daemon.
    fn up(&self) {
        let listener = UnixListener::bind(&self.path).expect("bind the proxy's socket");
        let conns = self.conns.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let Ok(real) = UnixStream::connect(real_docker_socket()) else { return };
                let mut tracked = conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                tracked.extend([conn.try_clone(), real.try_clone()].into_iter().flatten());
                drop(tracked);
                let (Ok(mut conn_in), Ok(mut real_out)) = (conn.try_clone(), real.try_clone()) else { return };
                std::thread::spawn(move || std::io::copy(&mut conn_in, &mut real_out));
                let (mut real_in, mut conn_out) = (real, conn);
                std::thread::spawn(move || std::io::copy(&mut real_in, &mut conn_out));
            }
        });
    }

    /// Goes away: the socket is removed, and every connection through it is cut.
    fn down(&self) {
        std::fs::remove_file(&self.path).expect("remove the proxy's socket");
        // (Its accepting thread waits on a socket nobody can reach any more.)
        for c in self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The real daemon's socket: `DOCKER_HOST` when it names one, else the default.
fn real_docker_socket() -> std::path::PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => host.trim_start_matches("unix://").into(),
        _ => "/var/run/docker.sock".into(),
    }
}

/// `tend ARGS` for `env` with `DOCKER_HOST` at `host`.
fn tend_with_docker(env: &Env, host: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(harness::tend_bin());
    cmd.arg("--state-dir")
        .arg(env.state_path())
        .arg("--scope")
        .arg(&env.scope)
        .args(args)
        .env("DOCKER_HOST", host)
        .env("TEND_LOG", "warn")
        .env("TEND_SOCKET", env.socket_path())
        .env("TEND_LOCK_DIR", env.lock_path());
    harness::run_with_timeout(&mut cmd, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts what says Docker is down: `tend status` (text and JSON, through the agent) exits
/// 1 naming it unavailable, lists no instance as missing, and the metrics say Docker is down
/// and count no object.
fn assert_reported_down(env: &Env, agent: &Agent) {
    let out = env.tend(&["status"]);
    let text = harness::stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text.contains("Docker is unavailable since "), "{}", describe(&out));
    assert!(!text.contains("missing"), "instances are unknown, not missing\n{}", describe(&out));
    let status = agent.status(env);
    assert!(status["unchecked"].as_str().unwrap_or_default().contains("Docker is unavailable"), "{status:#}");
    assert_eq!(status["agent"]["engines"]["docker"]["state"], "unavailable", "{status:#}");
    let m = agent.metrics();
    assert_eq!(metric(&m, "tend_engine_up{engine=\"docker\"}"), 0.0, "{m}");
    assert!(!m.contains("tend_objects{"), "no object count is current while Docker is down\n{m}");
    let out = env.tend(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}

#[test]
fn a_docker_that_is_not_there_is_reported_not_its_instances_as_missing() {
    let env = Env::new("docker_not_there");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    let host = "unix:///nonexistent/docker.sock";
    // Stand-alone: an error naming Docker, exit 1.
    for args in
        [&["status", env.spec_arg()][..], &["status", "--output", "json", env.spec_arg()], &["plan", env.spec_arg()]]
    {
        let out = tend_with_docker(&env, host, args);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Docker is not available"), "{}", describe(&out));
    }
    // An agent that never reached it: says so, plans no create, counts nothing.
    let agent = Agent::start_with_env(&env, &["--specs", env.spec_arg()], &[("DOCKER_HOST", host)]);
    wait_for(Duration::from_secs(30), "a pass that left Docker out", || {
        agent
            .status_any(&env)
            .is_some_and(|s| s["agent"]["lastResult"].as_str().is_some_and(|r| r.contains("not checked")))
    });
    assert_reported_down(&env, &agent);
    assert!(!agent.log().contains("step failed"), "nothing was tried without Docker\n{}", agent.log());
}

#[test]
fn the_agent_reports_a_docker_that_went_away_and_converges_when_it_is_back() {
    let env = Env::new("docker_went_away");
    let web = env.name("web");
    env.write_spec("web.yaml", &service(&web, ""));
    let docker = DockerProxy::start();
    let host = docker.host();
    let agent = Agent::start_with_env(&env, &["--specs", env.spec_arg()], &[("DOCKER_HOST", host.as_str())]);
    let name = format!("{web}-1");
    wait_for(Duration::from_secs(60), "the service", || running(&name));
    wait_for(Duration::from_secs(30), "a running object in the metrics", || {
        metric(&agent.metrics(), "tend_objects{state=\"running\"}") == 1.0
    });
    docker.down();
    wait_for(Duration::from_secs(60), "the agent to see Docker gone", || {
        agent.status_any(&env).is_some_and(|s| s["agent"]["engines"]["docker"]["state"] == "unavailable")
            && !agent.metrics().contains("tend_objects{")
    });
    assert_reported_down(&env, &agent);
    // Back: the agent reconnects by itself, and the counts are current again.
    docker.up();
    wait_for(Duration::from_secs(90), "the agent to see Docker back", || {
        agent.status_any(&env).is_some_and(|s| s["agent"]["engines"].get("docker").is_none())
            && metric(&agent.metrics(), "tend_objects{state=\"running\"}") == 1.0
    });
    assert_eq!(metric(&agent.metrics(), "tend_engine_up{engine=\"docker\"}"), 1.0);
    assert_eq!(env.tend(&["status"]).status.code(), Some(0));
}

/// A spec directory with the service `web` whose `TOKEN` is a secret (in `secrets/token`),
/// and the secret.
fn env_with_a_secret(test: &str) -> (Env, String, String) {
    let env = Env::new(test);
    let web = env.name("web");
    // A quote and a backslash: escaped differently by JSON, Go and Rust.
    let secret = format!("s3cr\"t\\{}", env.scope);
    env.write_spec("secrets/token", &format!("{secret}\n"));
    env.write_spec("web.yaml", &service(&web, "env: {PLAIN: visible, TOKEN: {fromFile: secrets/token}}"));
    (env, web, secret)
}

/// Panics when `text` (what `what` printed) holds `secret`, raw or JSON-escaped.
fn assert_no_secret(what: &str, text: &str, secret: &str) {
    let json = serde_json::to_string(secret).expect("json");
    let json = &json[1..json.len() - 1];
    for form in [secret, json] {
        if let Some(at) = text.find(form) {
            let start = text[..at].char_indices().rev().nth(80).map_or(0, |(i, _)| i);
            panic!("{what} shows the secret: …{}…", &text[start..(at + form.len()).min(text.len())]);
        }
    }
}

/// Everything `tend ARGS` printed at `TEND_LOG=trace`.
fn printed_at_trace(env: &Env, args: &[&str]) -> (Output, String) {
    let mut cmd = Command::new(harness::tend_bin());
    cmd.arg("--state-dir")
        .arg(env.state_path())
        .arg("--scope")
        .arg(&env.scope)
        .args(args)
        .env("TEND_LOG", "trace")
        .env("TEND_SOCKET", env.socket_path())
        .env("TEND_LOCK_DIR", env.lock_path());
    let out = harness::run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{}{}", harness::stdout_of(&out), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

#[test]
fn a_secret_never_appears_in_any_output_at_any_log_level() {
    let (env, web, secret) = env_with_a_secret("secret_nowhere");
    let spec = env.spec_arg();
    for args in [
        &["apply", spec][..],
        &["apply", "--output", "json", spec],
        &["plan", spec],
        &["plan", "--output", "json", spec],
        &["status", spec],
        &["status", "--output", "json", spec],
    ] {
        let (out, text) = printed_at_trace(&env, args);
        assert!(out.status.success(), "{}", describe(&out));
        assert_no_secret(&format!("tend {args:?}"), &text, &secret);
    }
    let name = format!("{web}-1");
    let labels = harness::docker_ok(&["inspect", "-f", "{{json .Config.Labels}}", &name]);
    assert_no_secret("the container's labels", &labels, &secret);
    let env_seen = harness::docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &name]);
    assert!(env_seen.contains("TOKEN=s3cr"), "the container does get its secret: {env_seen}");
    // The salt that keys the secret's digest in the hash is the host's, 0600.
    let salt = env.state_path().join("secret-salt");
    assert_eq!(
        std::fs::metadata(&salt).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).ok(),
        Some(0o600)
    );

    // An agent at trace, through a change that recreates the container (its create request
    // and inspect answers hold the environment).
    let agent = Agent::start_with_env(&env, &["--specs", spec], &[("TEND_LOG", "trace")]);
    env.write_spec("web.yaml", &service(&web, "env: {PLAIN: changed, TOKEN: {fromFile: secrets/token}}"));
    wait_for(Duration::from_secs(60), "the agent to recreate the service", || {
        // Between the old container's removal and the new one's creation there is none.
        let out = harness::docker(&["inspect", "-f", "{{json .Config.Env}}", &name]);
        out.status.success() && harness::stdout_of(&out).contains("PLAIN=changed")
    });
    for args in [&["status"][..], &["status", "--output", "json"], &["plan", "--output", "json"]] {
        let (_, text) = printed_at_trace(&env, args);
        assert_no_secret(&format!("tend {args:?} through the agent"), &text, &secret);
    }
    assert_no_secret("the metrics", &agent.metrics(), &secret);
    let log = agent.log();
    assert!(log.contains("DEBUG"), "the agent logs below info\n{log}");
    assert_no_secret("the agent's log", &log, &secret);
}

/// A Docker daemon that knows nothing and refuses every container it is asked to create
/// with an error that echoes the whole request, environment and all (as Docker's errors
/// may). It answers what `tend apply` and an agent ask before that: a version, empty
/// listings, a present image, an event stream that stays open.
struct EchoingDocker {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl EchoingDocker {
    fn start() -> EchoingDocker {
        let dir = tempfile::tempdir().expect("a directory for the socket");
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).expect("bind the fake daemon's socket");
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || serve_echoing(conn));
            }
        });
        EchoingDocker { path, _dir: dir }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

/// Answers the requests of one connection (see [`EchoingDocker`]).
fn serve_echoing(conn: UnixStream) {
    use std::io::{BufRead, BufReader, Read, Write};
    let Ok(mut out) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut head = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = target.split('?').next().unwrap_or("");
        let (status, answer) = if path.ends_with("/version") {
            ("200 OK", r#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#.to_string())
        } else if path.ends_with("/_ping") {
            ("200 OK", "OK".to_string())
        } else if path.ends_with("/events") {
            let _ = out
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
            // Open, and silent, until the client goes.
            let _ = reader.read(&mut [0u8; 1]);
            return;
        } else if path.ends_with("/containers/create") {
            let message = format!("invalid container config: {}", String::from_utf8_lossy(&body));
            ("500 Internal Server Error", serde_json::json!({ "message": message }).to_string())
        } else if path.contains("/images/") {
            (
                "200 OK",
                r#"{"Id":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}"#.to_string(),
            )
        } else if path.ends_with("/volumes") {
            ("200 OK", r#"{"Volumes":[],"Warnings":[]}"#.to_string())
        } else if path.ends_with("/json") || path.ends_with("/networks") {
            ("200 OK", "[]".to_string())
        } else {
            ("404 Not Found", r#"{"message":"not here"}"#.to_string())
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_docker_error_that_echoes_the_request_never_shows_the_secret() {
    let (env, web, secret) = env_with_a_secret("secret_echoed");
    let docker = EchoingDocker::start();
    let host = docker.host();
    let spec = env.spec_arg();
    for args in [&["apply", spec][..], &["apply", "--output", "json", spec]] {
        let out = tend_with_docker(&env, &host, args);
        let text = format!("{}{}", harness::stdout_of(&out), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        // The daemon's message is shown, the secret in it replaced by where it comes from.
        assert!(text.contains("invalid container config: "), "{text}");
        assert!(text.contains("TOKEN=<secret from "), "{text}");
        assert!(text.contains("PLAIN=visible"), "only secrets are replaced: {text}");
        assert_no_secret(&format!("tend {args:?}"), &text, &secret);
    }
    // The agent's log (its WARN of the failed step).
    let agent =
        Agent::start_with_env(&env, &["--specs", spec], &[("DOCKER_HOST", host.as_str()), ("TEND_LOG", "trace")]);
    wait_for(Duration::from_secs(60), "the agent to try to create the service", || agent.log().contains("step failed"));
    let log = agent.log();
    assert!(log.contains(&format!("creating container {web}-1")) && log.contains("TOKEN=<secret from "), "{log}");
    assert_no_secret("the agent's log", &log, &secret);
    let (_, text) = printed_at_trace(&env, &["status", "--output", "json"]);
    assert_no_secret("tend status through the agent", &text, &secret);
}
