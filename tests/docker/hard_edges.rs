//! Hard edges (issue 12) against real Docker: a reader that closes the pipe early, secrets
//! that must not show anywhere, a Docker that is down, how many services a mass change
//! takes down at once, a foreign container on a `-next` name, unchecked job names.

use std::process::{Command, Output, Stdio};

use crate::harness::{self, Env, describe};
use crate::services::service;

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
