//! The unit files `tend::reconcile::unit_files` renders, against a real systemd 252 in a node: each passes
//! `systemd-analyze verify`, and a service started from one gets exactly the argv and the
//! environment its spec says (spaces, quotes, `$`, `%`, backslashes, line breaks), through
//! `Environment=` lines and through an environment file. Rendering is pure, so it runs on
//! the host; the node only receives the files, as apply would write them.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tend::reconcile::unit_files::{Context, Rendered, render_service, render_timer};
use tend_specs::Desired;

use super::assert_verified;
use super::node::{Node, describe};

/// Where the tend binary goes in the node (the Timers' job units run it).
const NODE_TEND: &str = "/usr/local/bin/tend";
const UNIT_DIR: &str = "/etc/systemd/system";
const ENV_DIR: &str = "/etc/tend/env";

fn ctx() -> Context<'static> {
    Context {
        specs: std::path::Path::new("/etc/tend/specs"),
        scope: "units-test",
        tend_bin: Path::new(NODE_TEND),
        state_dir: Path::new("/var/lib/tend"),
        env_dir: Path::new(ENV_DIR),
        agent_config: None,
    }
}

/// Specs from JSON documents (JSON is YAML, and spares the test a second escaping layer).
fn load(docs: &[Value]) -> Desired {
    let text: Vec<String> = docs.iter().map(Value::to_string).collect();
    tend_specs::load_str(Path::new("units-test.yaml"), &text.join("\n---\n"))
        .unwrap_or_else(|d| panic!("bad test spec: {d:?}"))
}

/// Writes what was rendered into the node, as apply does: the environment file with mode
/// 0600, the units into the unit directory. Returns the units' paths.
fn install(node: &Node, rendered: &Rendered) -> Vec<String> {
    if let Some(env) = &rendered.env_file {
        let path = env.path.to_string_lossy();
        node.exec_ok(&["mkdir", "-p", ENV_DIR]);
        node.write_file(&path, &env.content);
        node.exec_ok(&["chmod", "600", &path]);
    }
    rendered
        .units
        .iter()
        .map(|u| {
            let path = format!("{UNIT_DIR}/{}", u.name);
            node.write_file(&path, &u.content);
            path
        })
        .collect()
}

/// Waits until `path` exists in the node.
fn wait_for_file(node: &Node, path: &str, unit: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.exec(&["test", "-e", path]).status.success() {
        if Instant::now() > deadline {
            let status = node.systemctl(&["status", unit]);
            panic!("{path} never appeared in {}\n{}\n{}", node.name(), describe(&status), node.journal(unit));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The environment a service wrote with `printenv -0`.
fn environment(node: &Node, path: &str) -> std::collections::BTreeMap<String, String> {
    let text = node.exec_ok(&["cat", path]);
    text.split('\0')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Arguments no shell or unit file may change.
const TRICKY_ARGS: &[&str] = &[
    "a b",
    "\"q\"",
    "'single'",
    "$HOME",
    "${HOME}",
    "$$",
    "%h",
    "100%",
    "back\\slash",
    "trailing\\",
    "",
    "  padded  ",
    "ünïcödé ✓",
    "tab\there",
    ";",
    "# not a comment",
    "--opt=x=y",
];

/// A value that tests every escaping rule of both `Environment=` and environment files.
const TRICKY_VALUE: &str =
    "  lead \"dq\" 'sq' $HOME ${HOME} $$ `tick` # hash = eq back\\slash 100% %h ü\nsecond line\ttab\\";

/// A program whose path holds what systemd would substitute (`$`) or expand (`%`).
const ODD_PROGRAM: &str = "/opt/we$ird%dir/sh";
/// It writes its own command line, NUL-separated as the kernel keeps it, one per line.
const ODD_SCRIPT: &str =
    "tr '\\0' '\\n' < /proc/$$/cmdline > /tmp/odd.argv.tmp && mv /tmp/odd.argv.tmp /tmp/odd.argv; exec sleep infinity";

#[test]
fn a_rendered_service_passes_verify_and_gets_its_argv_and_environment_literally() {
    let secret_dir = tempfile::tempdir().expect("a temporary directory");
    let secret_path = secret_dir.path().join("password");
    let secret = "s3cr\"et $PW ${PW} `x` \\ # = 'q' %s  end";
    std::fs::write(&secret_path, format!("{secret}\n")).expect("the secret file");

    // Each service records its argv, environment, user and directory, then stays up.
    let script = |name: &str| {
        format!(
            "printf '%s\\n' \"$@\" > /tmp/{name}.argv; printenv -0 > /tmp/{name}.env; \
             id -un > /tmp/{name}.who; pwd >> /tmp/{name}.who; touch /tmp/{name}.done; exec sleep infinity"
        )
    };
    let exec = |name: &str| {
        let mut argv = vec![json!("/bin/sh"), json!("-c"), json!(script(name)), json!("sh")];
        argv.extend(TRICKY_ARGS.iter().map(|a| json!(a)));
        Value::Array(argv)
    };
    let desired = load(&[
        json!({
            "apiVersion": "tend/v1", "kind": "Service", "metadata": {"name": "literal"},
            "spec": {
                "runtime": "systemd", "exec": exec("literal"),
                "env": {"TRICKY": TRICKY_VALUE, "EMPTY": "", "PLAIN": "plain"},
                "user": "www-data", "group": "www-data", "workingDir": "/tmp",
                "resources": {"memory": "256Mi", "cpus": 0.5},
                "stopSignal": "SIGINT", "stopTimeout": "5s",
                "restart": {"policy": "on-failure", "backoff": {"initial": "1500ms", "max": "1m"}},
            },
        }),
        json!({
            "apiVersion": "tend/v1", "kind": "Service", "metadata": {"name": "secret"},
            "spec": {
                "runtime": "systemd", "exec": exec("secret"), "type": "exec",
                "env": {"TRICKY": TRICKY_VALUE, "PASSWORD": {"fromFile": secret_path}},
                "dependsOn": [{"name": "literal"}],
                "restart": {"policy": "hold"},
            },
        }),
        json!({
            "apiVersion": "tend/v1", "kind": "Service", "metadata": {"name": "odd-path"},
            "spec": {"runtime": "systemd", "exec": [ODD_PROGRAM, "-c", ODD_SCRIPT, "$x"], "type": "exec"},
        }),
    ]);
    let literal = render_service(&ctx(), &desired.services["literal"]);
    let with_secret = render_service(&ctx(), &desired.services["secret"]);
    assert!(literal.env_file.is_none(), "no secret, no environment file");
    let env_file = with_secret.env_file.as_ref().expect("an environment file for the secret");
    assert!(env_file.content.contains("s3cr"), "the secret is in the environment file");
    for u in literal.units.iter().chain(&with_secret.units) {
        assert!(!u.content.contains("s3cr"), "the secret is in {}:\n{}", u.name, u.content);
    }

    let odd = render_service(&ctx(), &desired.services["odd-path"]);

    let node = Node::start("units_service_round_trip");
    node.exec_ok(&["sh", "-c", "mkdir -p \"${1%/*}\" && cp /bin/sh \"$1\"", "sh", ODD_PROGRAM]);
    let mut paths = install(&node, &literal);
    paths.extend(install(&node, &with_secret));
    paths.extend(install(&node, &odd));
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    assert_verified(&node, &paths);
    node.systemctl_ok(&["daemon-reload"]);
    // Starting `secret` pulls in `literal` (Requires=).
    node.systemctl_ok(&["start", "secret.service"]);
    assert_eq!(node.show_property("literal.service", "ActiveState"), "active");

    let expected_argv: String = TRICKY_ARGS.iter().map(|a| format!("{a}\n")).collect();
    for name in ["literal", "secret"] {
        wait_for_file(&node, &format!("/tmp/{name}.done"), &format!("{name}.service"));
        let argv = node.exec_ok(&["cat", &format!("/tmp/{name}.argv")]);
        assert_eq!(argv, expected_argv, "argv of {name}.service");
        let env = environment(&node, &format!("/tmp/{name}.env"));
        assert_eq!(env.get("TRICKY").map(String::as_str), Some(TRICKY_VALUE), "TRICKY of {name}.service");
    }
    let env = environment(&node, "/tmp/literal.env");
    assert_eq!(env.get("EMPTY").map(String::as_str), Some(""));
    assert_eq!(env.get("PLAIN").map(String::as_str), Some("plain"));
    assert_eq!(environment(&node, "/tmp/secret.env").get("PASSWORD").map(String::as_str), Some(secret));
    assert_eq!(node.exec_ok(&["cat", "/tmp/literal.who"]), "www-data\n/tmp\n");
    assert_eq!(node.exec_ok(&["cat", "/tmp/secret.who"]), "root\n/\n");

    // systemd substitutes `$` in argv but not in the program's path: both are literal.
    node.systemctl_ok(&["start", "odd-path.service"]);
    wait_for_file(&node, "/tmp/odd.argv", "odd-path.service");
    let argv = node.exec_ok(&["cat", "/tmp/odd.argv"]);
    assert_eq!(argv, format!("{ODD_PROGRAM}\n-c\n{ODD_SCRIPT}\n$x\n"));

    // The settings mean in systemd what the spec says.
    for (unit, property, value) in [
        ("literal.service", "MemoryMax", "268435456"),
        ("literal.service", "CPUQuotaPerSecUSec", "500ms"),
        ("literal.service", "KillSignal", "2"),
        ("literal.service", "TimeoutStopUSec", "5s"),
        ("literal.service", "Restart", "on-failure"),
        ("literal.service", "RestartUSec", "1.500000s"),
        ("literal.service", "StartLimitIntervalUSec", "0"),
        ("secret.service", "Type", "exec"),
        ("secret.service", "Restart", "no"),
        ("secret.service", "EnvironmentFiles", "/etc/tend/env/secret.env (ignore_errors=no)"),
    ] {
        assert_eq!(node.show_property(unit, property), value, "{unit} {property}");
    }
    for property in ["Requires", "After"] {
        let units = node.show_property("secret.service", property);
        assert!(units.split(' ').any(|u| u == "literal.service"), "secret.service {property}={units}");
    }
    let shown = node.systemctl_ok(&["cat", "secret.service"]);
    assert!(!shown.contains("s3cr"), "systemctl cat shows the secret:\n{shown}");
}

#[test]
fn rendered_timers_pass_verify_and_an_enabled_one_is_listed_with_its_next_elapse() {
    let job = json!({"runtime": "host", "exec": ["/bin/true"]});
    let desired = load(&[
        json!({
            "apiVersion": "tend/v1", "kind": "Timer", "metadata": {"name": "far-future"},
            "spec": {
                "schedule": "2099-12-25 06:00:00", "timezone": "Europe/Berlin", "persistent": true,
                "accuracy": "1s", "timeout": "10m", "job": job,
            },
        }),
        json!({
            "apiVersion": "tend/v1", "kind": "Timer", "metadata": {"name": "spread"},
            "spec": {"schedule": "Mon..Fri *-*-* 06:30", "randomizedDelay": "5m", "job": job},
        }),
        json!({
            "apiVersion": "tend/v1", "kind": "Timer", "metadata": {"name": "restore"},
            "spec": {"enabled": false, "job": job},
        }),
    ]);
    let far = render_timer(&ctx(), &desired.timers["far-future"]);
    let spread = render_timer(&ctx(), &desired.timers["spread"]);
    let restore = render_timer(&ctx(), &desired.timers["restore"]);
    let names: Vec<&str> = restore.units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["restore.service"], "a Timer without schedule has no .timer");

    let node = Node::start("units_timers");
    // The jobs' units run tend: verify checks that the program exists.
    node.copy_in(env!("CARGO_BIN_EXE_tend"), NODE_TEND);
    let mut paths = install(&node, &far);
    paths.extend(install(&node, &spread));
    paths.extend(install(&node, &restore));
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    assert_eq!(paths.len(), 5);
    assert_verified(&node, &paths);
    node.systemctl_ok(&["daemon-reload"]);
    node.systemctl_ok(&["enable", "--now", "far-future.timer"]);

    // 06:00 in Berlin on 25 December is 05:00 UTC, the node's zone.
    let next = "Fri 2099-12-25 05:00:00 UTC";
    assert_eq!(node.show_property("far-future.timer", "NextElapseUSecRealtime"), next);
    let listed = node.systemctl_ok(&["list-timers", "--all", "--no-legend", "far-future.timer"]);
    assert!(listed.contains(next) && listed.contains("far-future.service"), "list-timers:\n{listed}");
    assert_eq!(node.show_property("far-future.timer", "Persistent"), "yes");
    assert_eq!(node.show_property("far-future.timer", "AccuracyUSec"), "1s");
    // The job's timeout is tend's; systemd's is a backstop 30 s later.
    assert_eq!(node.show_property("far-future.service", "TimeoutStartUSec"), "10min 30s");
    assert_eq!(node.show_property("far-future.service", "KillMode"), "mixed");
    assert_eq!(node.show_property("restore.service", "TimeoutStartUSec"), "infinity");
    assert_eq!(node.show_property("spread.timer", "RandomizedDelayUSec"), "5min");
    let exec = node.systemctl_ok(&["show", "-p", "ExecStart", "far-future.service"]);
    assert!(
        exec.contains(
            "argv[]=/usr/local/bin/tend --scope units-test --state-dir /var/lib/tend job run far-future /etc/tend/specs --trigger timer ;"
        ),
        "the job runs tend: {exec}"
    );
}
