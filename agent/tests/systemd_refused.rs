//! Until the systemd backend lands, `plan`, `apply` and `status` refuse a spec set that
//! declares systemd services or Timers — whole, with one error, before touching any engine —
//! while `validate` accepts it.

use std::path::Path;
use std::process::{Command, Output};

const SPECS: &str = r#"apiVersion: tend/v1
kind: Service
metadata: {name: ims-web}
spec: {image: "registry.example/ims-web:3.2"}
---
apiVersion: tend/v1
kind: Service
metadata: {name: ims-nginx}
spec:
  runtime: systemd
  exec: ["/usr/sbin/nginx", "-g", "daemon off;"]
---
apiVersion: tend/v1
kind: Timer
metadata: {name: ims-updates}
spec:
  schedule: "*-*-* 01:00:00"
  job: {runtime: host, exec: ["/usr/local/bin/ims-update"]}
"#;

fn tend(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(["--scope", "refused", "--state-dir"])
        .arg(state_dir)
        .args(args)
        // An engine that does not exist: reaching for one would fail differently.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("running tend {args:?}: {e}"))
}

#[test]
fn plan_apply_and_status_refuse_systemd_services_and_timers_and_validate_accepts_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let specs = dir.path().join("specs.yaml");
    std::fs::write(&specs, SPECS).expect("write specs");
    let state = dir.path().join("state");
    let specs = specs.to_str().expect("UTF-8 path");
    for command in ["plan", "apply", "status"] {
        let out = tend(&state, &[command, specs]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "tend {command}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            "error: Timer `ims-updates` and systemd service `ims-nginx` cannot be applied by this version yet \
             (the systemd backend is being built); `tend validate` checks them",
            "tend {command}"
        );
        assert!(out.stdout.is_empty(), "tend {command} printed {}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(!state.exists(), "a refused command touched the state directory");
    let out = tend(&state, &["validate", specs]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("ok: 2 service(s) and 1 timer(s) in {specs}\n"));
}
