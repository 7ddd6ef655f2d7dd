//! Hard edges (issue 12) against real Docker: a reader that closes the pipe early, secrets
//! that must not show anywhere, a Docker that is down, how many services a mass change
//! takes down at once, a foreign container on a `-next` name, unchecked job names.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};

use crate::harness::{self, Env, describe};
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
