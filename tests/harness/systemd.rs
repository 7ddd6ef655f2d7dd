//! Systemd nodes for tend's integration tests: Docker containers that boot a real systemd
//! (Debian bookworm, systemd 252) as PID 1, with the system D-Bus, journald, timers and
//! watchdogs working. `scripts/systemd-node.sh` builds their image and
//! `docs/DEVELOPERS.md` explains the recipe and every `docker run` flag.
//!
//! Include it from an integration test target:
//!
//! ```ignore
//! #[path = "../harness/systemd.rs"]
//! mod systemd;
//!
//! #[test]
//! fn starts_a_unit() {
//!     let node = systemd::Node::start("starts_a_unit");
//!     node.write_file("/etc/systemd/system/x.service", "[Service]\nExecStart=/bin/sleep infinity\n");
//!     node.systemctl_ok(&["daemon-reload"]);
//!     node.systemctl_ok(&["start", "x.service"]);
//!     assert_eq!(node.show_property("x.service", "ActiveState"), "active");
//! }
//! ```
//!
//! Rules it follows, like `harness/mod.rs`:
//! - Tests fail, never skip: a missing Docker engine or node image panics with the command
//!   that fixes it ([`require_systemd_node_image`], called by [`Node::start`]).
//! - Every [`Node`] has a unique container name; its `Drop` removes the container, even
//!   when the test panicked (`TEND_TEST_KEEP=1` keeps it for a look:
//!   `docker exec -it NAME bash`).
//! - No `docker` call can hang a test: each one times out after [`DOCKER_TIMEOUT`], and a
//!   boot after [`BOOT_TIMEOUT`].
//!
//! Only std and the `docker` CLI are used here.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The node image when `TEND_SYSTEMD_NODE_IMAGE` is not set.
pub const DEFAULT_NODE_IMAGE: &str = "tend-test/systemd-node:bookworm";

/// The command that builds the node image (run from the repository root, as root).
pub const BUILD_COMMAND: &str = "bash scripts/systemd-node.sh build";

/// The label every node carries (`docker ps --filter label=tend.test=systemd-node`).
pub const NODE_LABEL: &str = "tend.test=systemd-node";

/// How long one `docker` CLI call may take before the test fails.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long systemd in a node may take to boot (to `running` or `degraded`).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `docker run` flags of a node; `scripts/systemd-node.sh` has the same list
/// (`_TEND_NODE_RUN_FLAGS`) and `docs/DEVELOPERS.md` says why each one is there.
pub const RUN_FLAGS: &[&str] = &[
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--cgroupns=host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run:rw,nosuid,nodev,exec,mode=755",
    "--tmpfs",
    "/run/lock:rw,nosuid,nodev,noexec,mode=1777,size=5m",
    "--stop-signal",
    "SIGRTMIN+3",
    "-e",
    "container=docker",
];

/// Longest container name [`Node::start`] makes (it is also the hostname: at most 63).
pub const MAX_NODE_NAME: usize = 63;

/// The node image: `TEND_SYSTEMD_NODE_IMAGE`, or [`DEFAULT_NODE_IMAGE`].
pub fn node_image() -> String {
    match std::env::var("TEND_SYSTEMD_NODE_IMAGE") {
        Ok(image) if !image.trim().is_empty() => image.trim().to_string(),
        _ => DEFAULT_NODE_IMAGE.to_string(),
    }
}

/// Runs `cmd` with piped output (and `input` on its stdin, if any), killing it after
/// `timeout`. Spawn failures and timeouts come back as text, with what it printed.
pub fn run_timeout(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {shown}: {e}"))?;
    let writer = match (input, child.stdin.take()) {
        (Some(data), Some(mut stdin)) => {
            let data = data.to_vec();
            Some(thread::spawn(move || {
                // A child that exits without reading all its input is not an error here.
                let _ = stdin.write_all(&data);
            }))
        }
        _ => None,
    };
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = out_pipe.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = err_pipe.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    match status {
        Some(status) => Ok(Output { status, stdout, stderr }),
        None => Err(format!(
            "{shown} did not finish within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// Runs `docker ARGS` (with a timeout); panics only when it cannot run or times out.
pub fn docker(args: &[&str]) -> Output {
    docker_input(args, None)
}

fn docker_input(args: &[&str], input: Option<&[u8]>) -> Output {
    match run_timeout(Command::new("docker").args(args), input, DOCKER_TIMEOUT) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

/// Text of an [`Output`], for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Panics, with the command that fixes it, unless the Docker engine answers and the node
/// image exists. Checked once per test binary.
pub fn require_systemd_node_image() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        let image = node_image();
        match run_timeout(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]), None, DOCKER_TIMEOUT)
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(format!(
                    "the Docker engine does not answer; start it with \
                     `bash -c 'source scripts/lib.sh; ensure_docker'`\n{}",
                    describe(&out)
                ));
            }
            Err(e) => return Err(format!("cannot run the docker CLI: {e}")),
        }
        match run_timeout(
            Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &image]),
            None,
            DOCKER_TIMEOUT,
        ) {
            Ok(out) if out.status.success() => Ok(()),
            Ok(_) => Err(format!(
                "the systemd node image {image} is missing. Build it (as root, from the \
                 repository root; about 2 minutes) with:\n\n    {BUILD_COMMAND}\n"
            )),
            Err(e) => Err(e),
        }
    });
    if let Err(e) = result {
        panic!("systemd node tests cannot run: {e}");
    }
}

/// Whether `TEND_TEST_KEEP=1` asks to keep nodes after the test.
fn keep_nodes() -> bool {
    std::env::var("TEND_TEST_KEEP").map(|v| v == "1").unwrap_or(false)
}

/// A unique container name (and hostname) for a test: `tsd-<test>-<pid>-<n>`.
fn node_name(test_name: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let suffix = format!("-{}-{n}", std::process::id());
    let mut slug: String =
        test_name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let room = MAX_NODE_NAME - "tsd-".len() - suffix.len();
    slug.truncate(room);
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "node" } else { slug };
    format!("tsd-{slug}{suffix}")
}

/// One systemd node (a container booting systemd). Removed on drop.
#[derive(Debug)]
pub struct Node {
    name: String,
}

impl Node {
    /// Starts a fresh node for the test `test_name` and waits until systemd has booted.
    pub fn start(test_name: &str) -> Node {
        Node::start_with(test_name, &[])
    }

    /// Like [`Node::start`], with extra `docker run` arguments (e.g. `["-p", "8080:80"]`).
    pub fn start_with(test_name: &str, extra_run_args: &[&str]) -> Node {
        require_systemd_node_image();
        let name = node_name(test_name);
        let image = node_image();
        let mut args: Vec<&str> = vec!["run", "-d", "--name", &name, "--hostname", &name, "--label", NODE_LABEL];
        args.extend_from_slice(RUN_FLAGS);
        args.extend_from_slice(extra_run_args);
        args.push(&image);
        let out = docker(&args);
        if !out.status.success() {
            // `docker run` may have created the container before failing to start it.
            let _ = run_timeout(Command::new("docker").args(["rm", "-f", "-v", &name]), None, DOCKER_TIMEOUT);
            panic!("docker run of systemd node {name} failed\n{}", describe(&out));
        }
        // From here on `node` removes the container, also when the wait below panics.
        let node = Node { name };
        node.wait_booted(BOOT_TIMEOUT);
        node
    }

    /// The container's name (also its hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until `systemctl is-system-running` says `running` or `degraded` (printing the
    /// failed units then) and returns that state. Panics with the journal on timeout, or
    /// when the container is not running.
    pub fn wait_booted(&self, timeout: Duration) -> String {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let status = docker(&["inspect", "--format", "{{.State.Status}}", &self.name]);
            let status = String::from_utf8_lossy(&status.stdout).trim().to_string();
            if status != "running" {
                let logs = docker(&["logs", "--tail", "40", &self.name]);
                panic!("systemd node {} is not running (container status '{status}')\n{}", self.name, describe(&logs));
            }
            if let Ok(out) = run_timeout(
                Command::new("docker").args(["exec", &self.name, "systemctl", "is-system-running"]),
                None,
                Duration::from_secs(10),
            ) {
                last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            match last.as_str() {
                "running" => return last,
                "degraded" => {
                    let failed = self.systemctl(&["--failed", "--no-legend"]);
                    eprintln!(
                        "systemd node {} booted degraded; failed units:\n{}",
                        self.name,
                        String::from_utf8_lossy(&failed.stdout)
                    );
                    return last;
                }
                _ => {}
            }
            if start.elapsed() >= timeout {
                let journal = self.exec(&["journalctl", "-b", "--no-pager", "-n", "80"]);
                let jobs = self.systemctl(&["list-jobs"]);
                panic!(
                    "systemd node {} still '{last}' after {timeout:?}\n--- journal\n{}\n--- jobs\n{}",
                    self.name,
                    String::from_utf8_lossy(&journal.stdout),
                    String::from_utf8_lossy(&jobs.stdout)
                );
            }
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs `ARGS` in the node (`docker exec`) and returns its output, whatever its exit.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// Runs `ARGS` in the node; panics (with its output) unless it exits 0. Returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        if !out.status.success() {
            panic!("in systemd node {}: {args:?} failed\n{}", self.name, describe(&out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a `bash -c SCRIPT` in the node and returns its output, whatever its exit.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["bash", "-c", script])
    }

    /// Writes `contents` to `node_path` in the node (through `docker exec -i`, so it works
    /// on the tmpfs /run too, unlike `docker cp`).
    pub fn write_file(&self, node_path: &str, contents: &str) {
        let out = docker_input(
            &["exec", "-i", &self.name, "sh", "-c", "cat > \"$1\"", "write_file", node_path],
            Some(contents.as_bytes()),
        );
        if !out.status.success() {
            panic!("cannot write {node_path} in systemd node {}\n{}", self.name, describe(&out));
        }
    }

    /// Copies `host_path` (a file or directory) to `node_path` with `docker cp`.
    ///
    /// `docker cp` writes to the container's own filesystem: a path under a tmpfs mount
    /// (`/run`, `/run/lock`) lands *under* the mount and is invisible in the node; use
    /// [`Node::write_file`] or copy elsewhere and `mv` there instead.
    pub fn copy_in(&self, host_path: impl AsRef<Path>, node_path: &str) {
        let host_path = host_path.as_ref();
        let host = host_path.to_string_lossy();
        let target = format!("{}:{node_path}", self.name);
        let out = docker(&["cp", &host, &target]);
        if !out.status.success() {
            panic!("docker cp {host} {target} failed\n{}", describe(&out));
        }
    }

    /// Runs `systemctl ARGS` (with `--no-pager`) in the node, whatever its exit.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["systemctl", "--no-pager"];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// Runs `systemctl ARGS` in the node; panics unless it exits 0. Returns stdout.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        if !out.status.success() {
            let status = if let Some(unit) = args.iter().rev().find(|a| a.contains('.')) {
                String::from_utf8_lossy(&self.systemctl(&["status", unit]).stdout).into_owned()
            } else {
                String::new()
            };
            panic!("in systemd node {}: systemctl {args:?} failed\n{}\n{status}", self.name, describe(&out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One property of a unit (`systemctl show -P PROPERTY UNIT`), trimmed.
    pub fn show_property(&self, unit: &str, property: &str) -> String {
        self.systemctl_ok(&["show", "-P", property, unit]).trim().to_string()
    }

    /// The journal of one unit (all container boots: they share the host's boot ID).
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "--no-pager", "-q", "-u", unit]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the container gracefully (`docker stop`: SIGRTMIN+3 makes systemd shut down),
    /// keeping its filesystem, e.g. for a timer's `Persistent=` catch-up test.
    pub fn stop_container(&self) {
        let out = docker(&["stop", &self.name]);
        if !out.status.success() {
            panic!("docker stop {} failed\n{}", self.name, describe(&out));
        }
    }

    /// Starts the stopped container again (`docker start`) and waits until systemd has
    /// booted. Returns `running` or `degraded`.
    pub fn start_container(&self) -> String {
        let out = docker(&["start", &self.name]);
        if !out.status.success() {
            panic!("docker start {} failed\n{}", self.name, describe(&out));
        }
        self.wait_booted(BOOT_TIMEOUT)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if keep_nodes() {
            eprintln!("TEND_TEST_KEEP=1: keeping systemd node {} (docker exec -it {} bash)", self.name, self.name);
            return;
        }
        match run_timeout(Command::new("docker").args(["rm", "-f", "-v", &self.name]), None, DOCKER_TIMEOUT) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("could not remove systemd node {}\n{}", self.name, describe(&out)),
            Err(e) => eprintln!("could not remove systemd node {}: {e}", self.name),
        }
    }
}
