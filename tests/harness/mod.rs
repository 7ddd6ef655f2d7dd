//! Harness for tend's integration tests against a real Docker engine.
//!
//! Include it from a test target of the `tend` crate (so `CARGO_BIN_EXE_tend` is set):
//!
//! ```ignore
//! #[path = "../harness/mod.rs"]
//! mod harness;
//!
//! #[test]
//! fn creates_a_service() {
//!     let env = harness::Env::new("creates_a_service");
//!     env.write_spec("web.yaml", &format!("...image: {}...", harness::test_image()));
//!     env.apply();
//!     assert_eq!(env.containers().len(), 1);
//! }
//! ```
//!
//! Rules it enforces:
//! - Tests fail, never skip, when the Docker engine or the test image is missing
//!   ([`require_docker`], called by [`Env::new`]).
//! - Every [`Env`] has its own scope (`tend --scope`), state directory and spec directory,
//!   so tests can run in parallel; its `Drop` removes every container, network and volume
//!   labelled `tend.scope=<scope>`, even when the test panicked. Set `TEND_TEST_KEEP=1` to
//!   keep them for debugging.
//! - No external command may hang a test forever: docker calls time out after
//!   [`DOCKER_TIMEOUT`], tend calls after [`TEND_TIMEOUT`] (or `TEND_TEST_TIMEOUT` seconds).
//!
//! Only std, tempfile, serde_json and the `docker` CLI are used here (no bollard), so what
//! the harness observes is independent of the code under test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod process;
pub use process::{describe, run_with_timeout, stop_within};

/// The image tests run when `TEND_TEST_IMAGE` is not set; `scripts/test.sh` builds it.
pub const DEFAULT_TEST_IMAGE: &str = "tend-demo/busybox:1";

/// The label tend puts on everything it creates, with the scope as its value.
pub const SCOPE_LABEL: &str = "tend.scope";

/// How long one `docker` CLI call may take before the test fails.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one `tend` call may take by default (override: `TEND_TEST_TIMEOUT` seconds).
pub const TEND_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest scope name [`Env::new`] makes.
pub const MAX_SCOPE_LEN: usize = 30;

/// Longest DNS label (and so longest name [`Env::name`] makes).
pub const MAX_DNS_LABEL: usize = 63;

/// The image integration tests run: `TEND_TEST_IMAGE`, or [`DEFAULT_TEST_IMAGE`].
pub fn test_image() -> String {
    match std::env::var("TEND_TEST_IMAGE") {
        Ok(image) if !image.trim().is_empty() => image.trim().to_string(),
        _ => DEFAULT_TEST_IMAGE.to_string(),
    }
}

/// Path of the tend binary under test.
pub fn tend_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tend"))
}

/// Stdout of `output` as text.
pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `docker ARGS...` (no assertion on its exit status); panics only if docker cannot
/// be started or hangs past [`DOCKER_TIMEOUT`].
pub fn docker<S: AsRef<OsStr>>(args: &[S]) -> Output {
    match run_with_timeout(Command::new("docker").args(args), DOCKER_TIMEOUT) {
        Ok(output) => output,
        Err(e) => panic!("docker failed to run: {e}"),
    }
}

/// An RFC 3339 time as Docker prints it (`…:05.12Z`), as text that compares in time order:
/// Docker trims the fraction's trailing zeros, so its own text does not.
pub fn comparable_time(t: &str) -> String {
    let t = t.trim().trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{secs}.{frac:0<9}")
}

/// Runs `docker ARGS...`, asserts it succeeded, and returns its trimmed stdout.
pub fn docker_ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {:?} failed\n{}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        describe(&output)
    );
    stdout_of(&output).trim().to_string()
}

/// Polls `cond` every 100 ms until it returns true (then `true`) or `timeout` passes
/// (then `false`). `cond` runs at least once.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Like [`wait_until`], but panics with `what` when the condition never held.
pub fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(wait_until(timeout, cond), "timed out after {timeout:?} waiting for {what}");
}

static DOCKER_CHECKED: OnceLock<()> = OnceLock::new();

/// Panics, loudly, unless the Docker engine answers and the test image exists locally.
///
/// Integration tests must fail, never skip, when the engine is missing. Checked once per
/// test process.
pub fn require_docker() {
    DOCKER_CHECKED.get_or_init(|| {
        let info =
            run_with_timeout(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]), DOCKER_TIMEOUT);
        match info {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "\n\n*** The Docker engine is not answering (`docker info` failed). ***\n\
                 tend's integration tests need a running dockerd; they never skip.\n\
                 Run scripts/test.sh, which installs and starts it.\n{}\n",
                describe(&output)
            ),
            Err(e) => panic!(
                "\n\n*** Could not run `docker info`: {e} ***\n\
                 tend's integration tests need the docker CLI and a running dockerd; they \
                 never skip. Run scripts/test.sh, which installs and starts them.\n"
            ),
        }
        let image = test_image();
        let found = run_with_timeout(
            Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &image]),
            DOCKER_TIMEOUT,
        );
        match found {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "\n\n*** The test image {image} is missing from the local engine. ***\n\
                 Run scripts/test.sh (or `source scripts/lib.sh; ensure_demo_image`), which \
                 builds it locally; tests never pull.\n{}\n",
                describe(&output)
            ),
            Err(e) => panic!("could not check for the test image {image}: {e}"),
        }
    });
}

/// Turns `raw` into lowercase `[a-z0-9-]`, with no leading, trailing or doubled dashes.
pub fn dns_safe(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Cuts `s` (ASCII) to at most `max` chars, never ending in a dash.
fn truncate_label(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A container as `docker inspect` shows it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// Full container ID.
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    /// `created`, `running`, `exited`, `restarting`, `paused`, `dead`, ...
    pub state: String,
    /// Health status (`starting`, `healthy`, `unhealthy`) if it has a health check.
    pub health: Option<String>,
    /// The image as configured (`Config.Image`).
    pub image: String,
    /// Docker's restart count.
    pub restart_count: u64,
    /// Labels (`Config.Labels`).
    pub labels: BTreeMap<String, String>,
    /// The whole `docker inspect` object, for anything else.
    pub inspect: serde_json::Value,
}

impl ContainerInfo {
    /// Parses one object of `docker inspect`'s output.
    pub fn from_inspect(v: &serde_json::Value) -> Self {
        let s = |ptr: &str| v.pointer(ptr).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let labels = v
            .pointer("/Config/Labels")
            .and_then(|l| l.as_object())
            .map(|m| m.iter().map(|(k, val)| (k.clone(), val.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        ContainerInfo {
            id: s("/Id"),
            name: s("/Name").trim_start_matches('/').to_string(),
            state: s("/State/Status"),
            health: v.pointer("/State/Health/Status").and_then(|x| x.as_str()).map(str::to_string),
            image: s("/Config/Image"),
            restart_count: v.pointer("/RestartCount").and_then(|x| x.as_u64()).unwrap_or(0),
            labels,
            inspect: v.clone(),
        }
    }

    /// The value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// True when the container is running.
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

/// `docker inspect` of the given objects, parsed; objects that vanished meanwhile are
/// left out (docker still prints the others).
pub fn inspect_all(ids: &[String]) -> Vec<serde_json::Value> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["inspect".to_string()];
    args.extend(ids.iter().cloned());
    let output = docker(&args);
    let text = stdout_of(&output);
    if text.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(items)) => items,
        other => panic!("unexpected `docker inspect` output ({other:?})\n{}", describe(&output)),
    }
}

/// One test's isolated world: a scope, a state directory and a spec directory.
///
/// Dropping it removes every container, network and volume labelled with its scope.
pub struct Env {
    /// The scope passed as `tend --scope` (DNS-label safe, at most 30 chars).
    pub scope: String,
    /// Passed as `tend --state-dir`.
    pub state_dir: TempDir,
    /// Where [`Env::write_spec`] writes; the PATH given to tend by the helpers.
    pub spec_dir: TempDir,
}

impl Env {
    /// A fresh environment for the test `test_name` (any text; only a short, DNS-safe part
    /// of it goes into the scope `t-<name>-<pid>-<counter>`).
    ///
    /// Panics (loudly) if Docker or the test image is missing. Removes leftovers of an
    /// earlier run that had the same scope.
    pub fn new(test_name: &str) -> Env {
        require_docker();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let suffix = format!("-{}-{n}", std::process::id());
        let short = test_name.rsplit("::").next().unwrap_or(test_name);
        let budget = MAX_SCOPE_LEN.saturating_sub(2 + suffix.len()).max(1);
        let mut short = truncate_label(&dns_safe(short), budget);
        if short.is_empty() {
            short.push('x');
        }
        let scope = format!("t-{short}{suffix}");
        debug_assert!(scope.len() <= MAX_SCOPE_LEN, "scope {scope} too long");
        let state_dir = tempfile::Builder::new()
            .prefix(&format!("tend-state-{scope}-"))
            .tempdir()
            .expect("create the state directory");
        let spec_dir = tempfile::Builder::new()
            .prefix(&format!("tend-specs-{scope}-"))
            .tempdir()
            .expect("create the spec directory");
        let env = Env { scope, state_dir, spec_dir };
        env.cleanup();
        env
    }

    /// `<scope>-<base>`, DNS-label safe and at most 63 chars: a unique name for anything a
    /// test creates (service names in specs, containers made by hand, ...).
    pub fn name(&self, base: &str) -> String {
        let base = dns_safe(base);
        let full = if base.is_empty() { self.scope.clone() } else { format!("{}-{base}", self.scope) };
        truncate_label(&full, MAX_DNS_LABEL)
    }

    /// The spec directory.
    pub fn spec_path(&self) -> &Path {
        self.spec_dir.path()
    }

    /// The spec directory as a `&str` argument for [`Env::tend`].
    pub fn spec_arg(&self) -> &str {
        self.spec_dir.path().to_str().expect("temporary directory paths are UTF-8")
    }

    /// The state directory.
    pub fn state_path(&self) -> &Path {
        self.state_dir.path()
    }

    /// The API socket of an agent run for this environment (in the state directory, so a
    /// stand-alone command never reaches another test's agent).
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.path().join("tend.sock")
    }

    /// The maintenance lock directory of this environment (in the state directory).
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.path().join("locks")
    }

    /// Writes (or replaces, atomically) `file_name` in the spec directory; returns its
    /// path. `file_name` may contain subdirectories.
    pub fn write_spec(&self, file_name: &str, yaml: &str) -> PathBuf {
        let path = self.spec_dir.path().join(file_name);
        let parent = path.parent().expect("a spec file has a parent directory");
        std::fs::create_dir_all(parent).expect("create the spec file's directory");
        let tmp = parent.join(format!(".{}.tmp", path.file_name().and_then(|f| f.to_str()).expect("a spec file name")));
        std::fs::write(&tmp, yaml).expect("write the spec file");
        std::fs::rename(&tmp, &path).expect("move the spec file into place");
        path
    }

    /// Removes `file_name` from the spec directory (panics if it is not there).
    pub fn remove_spec(&self, file_name: &str) {
        let path = self.spec_dir.path().join(file_name);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove spec {}: {e}", path.display()));
    }

    /// Runs `tend --state-dir <state> --scope <scope> ARGS...` with `TEND_LOG=warn`, in
    /// the spec directory; no assertion on the result. Panics only on a hang (see
    /// [`TEND_TIMEOUT`]) or if tend cannot be started.
    pub fn tend<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let timeout = std::env::var("TEND_TEST_TIMEOUT")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(TEND_TIMEOUT);
        let mut cmd = Command::new(tend_bin());
        cmd.arg("--state-dir")
            .arg(self.state_dir.path())
            .arg("--scope")
            .arg(&self.scope)
            .args(args)
            .current_dir(self.spec_dir.path())
            .env("TEND_LOG", "warn")
            .env("TEND_SOCKET", self.socket_path())
            .env("TEND_LOCK_DIR", self.lock_path())
            .env_remove("TEND_STATE_DIR")
            .env_remove("TEND_SCOPE");
        match run_with_timeout(&mut cmd, timeout) {
            Ok(output) => output,
            Err(e) => panic!("tend (scope {}) did not finish: {e}", self.scope),
        }
    }

    /// Runs tend and asserts it succeeded; returns its output.
    pub fn tend_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let output = self.tend(args);
        assert!(
            output.status.success(),
            "tend {:?} (scope {}) failed\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            self.scope,
            describe(&output)
        );
        output
    }

    /// Runs tend and asserts it failed; returns its output (to check the message).
    pub fn tend_fail<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let output = self.tend(args);
        assert!(
            !output.status.success(),
            "tend {:?} (scope {}) succeeded but should have failed\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            self.scope,
            describe(&output)
        );
        output
    }

    /// Runs `tend SUBCOMMAND --output json [EXTRA...] <spec dir>`, asserts success, and
    /// parses stdout as JSON.
    pub fn tend_json(&self, subcommand: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![subcommand, "--output", "json"];
        args.extend_from_slice(extra);
        args.push(self.spec_arg());
        let output = self.tend_ok(&args);
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("tend {args:?} did not print JSON: {e}\n{}", describe(&output)))
    }

    /// `tend apply <spec dir>`, asserting success; returns its stdout.
    pub fn apply(&self) -> String {
        let spec = self.spec_arg().to_string();
        stdout_of(&self.tend_ok(&["apply", spec.as_str()]))
    }

    /// `tend plan --output json <spec dir>`, asserting success, parsed.
    pub fn plan_json(&self) -> serde_json::Value {
        self.tend_json("plan", &[])
    }

    /// `tend status --output json <spec dir>`, asserting success, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        self.tend_json("status", &[])
    }

    /// The `--filter` argument selecting this scope's objects.
    pub fn scope_filter(&self) -> String {
        format!("label={SCOPE_LABEL}={}", self.scope)
    }

    /// IDs of all containers (running or not) labelled with this scope.
    pub fn container_ids(&self) -> Vec<String> {
        let filter = self.scope_filter();
        let out = docker_ok(&["ps", "-a", "-q", "--no-trunc", "--filter", filter.as_str()]);
        out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
    }

    /// All containers (running or not) labelled with this scope, sorted by name.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let mut all: Vec<ContainerInfo> =
            inspect_all(&self.container_ids()).iter().map(ContainerInfo::from_inspect).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The container of this scope named `name`, if any.
    pub fn container(&self, name: &str) -> Option<ContainerInfo> {
        self.containers().into_iter().find(|c| c.name == name)
    }

    /// Names of the networks labelled with this scope, sorted.
    pub fn networks(&self) -> Vec<String> {
        let filter = self.scope_filter();
        let out = docker_ok(&["network", "ls", "--format", "{{.Name}}", "--filter", filter.as_str()]);
        let mut names: Vec<String> = out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
        names.sort();
        names
    }

    /// Names of the volumes labelled with this scope, sorted.
    pub fn volumes(&self) -> Vec<String> {
        let filter = self.scope_filter();
        let out = docker_ok(&["volume", "ls", "-q", "--filter", filter.as_str()]);
        let mut names: Vec<String> = out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
        names.sort();
        names
    }

    /// Force-removes every container, then network, then volume labelled with this scope.
    /// Never panics and never loops forever; prints what it could not remove.
    pub fn cleanup(&self) {
        let filter = self.scope_filter();
        let list = |args: &[&str]| -> Vec<String> {
            match run_with_timeout(Command::new("docker").args(args), DOCKER_TIMEOUT) {
                Ok(o) if o.status.success() => {
                    stdout_of(&o).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
                }
                Ok(o) => {
                    eprintln!("harness cleanup: docker {args:?} failed\n{}", describe(&o));
                    Vec::new()
                }
                Err(e) => {
                    eprintln!("harness cleanup: {e}");
                    Vec::new()
                }
            }
        };
        let remove = |what: &[&str], names: &[String]| -> bool {
            if names.is_empty() {
                return true;
            }
            match run_with_timeout(Command::new("docker").args(what).args(names), DOCKER_TIMEOUT) {
                Ok(o) if o.status.success() => true,
                Ok(o) => {
                    eprintln!("harness cleanup ({}): docker {what:?} {names:?} failed\n{}", self.scope, describe(&o));
                    false
                }
                Err(e) => {
                    eprintln!("harness cleanup ({}): {e}", self.scope);
                    false
                }
            }
        };

        let containers = list(&["ps", "-a", "-q", "--no-trunc", "--filter", filter.as_str()]);
        remove(&["rm", "-f", "-v"], &containers);

        // A network can stay "in use" for a moment after its last container went away.
        for attempt in 1..=5 {
            let networks = list(&["network", "ls", "-q", "--filter", filter.as_str()]);
            if remove(&["network", "rm"], &networks) {
                break;
            }
            if attempt < 5 {
                thread::sleep(Duration::from_millis(500));
            }
        }

        let volumes = list(&["volume", "ls", "-q", "--filter", filter.as_str()]);
        remove(&["volume", "rm", "-f"], &volumes);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::env::var_os("TEND_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
            let state = self.state_dir.path().to_path_buf();
            let specs = self.spec_dir.path().to_path_buf();
            // Keep the directories too: TempDir would delete them.
            let _ =
                std::mem::replace(&mut self.state_dir, tempfile::tempdir().expect("create a placeholder directory"))
                    .keep();
            let _ = std::mem::replace(&mut self.spec_dir, tempfile::tempdir().expect("create a placeholder directory"))
                .keep();
            eprintln!(
                "TEND_TEST_KEEP: kept scope {} (state {}, specs {})",
                self.scope,
                state.display(),
                specs.display()
            );
            return;
        }
        self.cleanup();
    }
}
