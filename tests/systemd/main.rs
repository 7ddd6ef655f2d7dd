//! Integration tests of tend's systemd adapter (`tend::engine::systemd`) against a real systemd.
//!
//! The adapter must run where systemd is PID 1, so each test boots its own systemd node
//! (`tests/harness/systemd.rs`), copies this very test binary into it and runs one in-node
//! half there: `tend-systemd-tests inner_NAME --exact` with `TEND_IN_NODE=1`. The `inner_*`
//! tests return at once unless `TEND_IN_NODE` is set, so on the host they pass as no-ops;
//! the outer test asserts that the inner one ran and passed (printing its output when not),
//! then checks the result with `systemctl` and `systemd-analyze`, independently of the
//! adapter. The tests fail, never skip, when the node image is missing.

mod agent;
mod apply;
mod backup;
#[path = "../harness/systemd.rs"]
mod node;
mod units;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tend::engine::systemd::{
    ActiveState, JobResult, SystemdEngine, SystemdError, UNIT_DIR, UnitEngine, UnitState, booted,
};

use node::{Node, describe};

/// Where the test binary goes in a node (not /tmp or /run: `docker cp` and tmpfs mounts).
const NODE_BIN: &str = "/usr/local/bin/tend-systemd-tests";

// ---------------------------------------------------------------------------------------
// Outer side (host)

/// Copies this test binary into `node`, runs the in-node test `inner` there and returns its
/// output; panics with that output unless it ran and passed.
fn run_inner(node: &Node, inner: &str) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    node.copy_in(&exe, NODE_BIN);
    let started = Instant::now();
    let out = node.exec(&[
        "env",
        "TEND_IN_NODE=1",
        "RUST_BACKTRACE=1",
        NODE_BIN,
        inner,
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    let text = describe(&out);
    assert!(out.status.success(), "in-node test {inner} failed in {}\n{text}", node.name());
    // A misspelt name runs nothing and exits 0.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("test {inner} ... ok")),
        "in-node test {inner} did not run in {}\n{text}",
        node.name()
    );
    eprintln!("{inner}: passed in the node in {:.1}s", started.elapsed().as_secs_f64());
    text
}

/// `systemd-analyze verify` in the node accepts these unit files.
fn assert_verified(node: &Node, paths: &[&str]) {
    let mut args = vec!["systemd-analyze", "verify"];
    args.extend_from_slice(paths);
    let out = node.exec(&args);
    assert!(out.status.success(), "systemd-analyze verify rejected {paths:?}\n{}", describe(&out));
    // verify exits 0 on some warnings too; a generated unit should draw none about itself.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in paths {
        let name = Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or(path);
        assert!(!stderr.contains(name), "systemd-analyze verify warned about {name}:\n{stderr}");
    }
}

#[test]
fn systemd_is_reported_unavailable_on_a_host_without_it() {
    let runtime = runtime();
    if Path::new("/run/systemd/system").is_dir() {
        // This host boots with systemd: then the adapter must find it.
        booted().expect("systemd is PID 1 here");
        runtime
            .block_on(SystemdEngine::connect(tend::engine::Timeouts::default()))
            .expect("the adapter connects to this host's systemd");
        return;
    }
    let pid1 = std::fs::read_to_string("/proc/1/comm").expect("/proc/1/comm").trim().to_string();
    let e = booted().expect_err("systemd is not PID 1 on this host");
    assert_eq!(e.to_string(), format!("systemd is not running as PID 1 on this host (PID 1 is {pid1})"));
    assert_eq!(e.kind(), "unavailable");
    let e = runtime
        .block_on(SystemdEngine::connect(tend::engine::Timeouts::default()))
        .expect_err("no systemd to connect to");
    assert!(matches!(e, SystemdError::NotBooted { .. }), "{e:?}");
}

#[test]
fn the_adapter_is_available_inside_a_node() {
    let node = Node::start("adapter_available");
    run_inner(&node, "inner_available");
}

#[test]
fn unit_files_are_written_atomically_and_bad_names_and_symlinks_are_refused() {
    let node = Node::start("unit_files_written");
    run_inner(&node, "inner_write_unit_file");
    let stat = node.exec_ok(&["stat", "-c", "%a %U %F", "/etc/systemd/system/tend-written.service"]);
    assert_eq!(stat.trim(), "644 root regular file");
    let left = node.exec_ok(&["sh", "-c", "ls -A /etc/systemd/system | grep tend-tmp || true"]);
    assert_eq!(left.trim(), "", "temporary files left behind");
    // The symlinks the inner test planted still point where they did.
    assert_eq!(node.exec_ok(&["readlink", "/etc/systemd/system/tend-masked.service"]).trim(), "/dev/null");
    assert_eq!(node.exec_ok(&["stat", "-c", "%F", "/dev/null"]).trim(), "character special file");
    assert_eq!(node.exec_ok(&["cat", "/root/vendor.service"]), "[Unit]\nDescription=vendor\n");
}

#[test]
fn lists_unit_files_with_their_marks_and_hand_written_ones_with_none() {
    let node = Node::start("lists_unit_files");
    // Written by hand, by the harness: not the adapter.
    node.write_file(
        "/etc/systemd/system/hand-written.service",
        "[Unit]\nDescription=written by an operator\nX-Other=1\n\n[Service]\nExecStart=/bin/sleep infinity\n",
    );
    run_inner(&node, "inner_list_unit_files");
}

#[test]
fn enables_starts_restarts_and_stops_a_unit() {
    let node = Node::start("unit_lifecycle");
    run_inner(&node, "inner_lifecycle");
    // Checked again with systemctl: enabled (the wants symlink exists), stopped.
    assert_eq!(node.systemctl_ok(&["is-enabled", "tend-sleeper.service"]).trim(), "enabled");
    node.exec_ok(&["test", "-L", "/etc/systemd/system/multi-user.target.wants/tend-sleeper.service"]);
    assert_eq!(node.show_property("tend-sleeper.service", "ActiveState"), "inactive");
    let journal = node.journal("tend-sleeper.service");
    assert!(journal.matches("Started tend-sleeper.service").count() >= 2, "start and restart:\n{journal}");
    assert_verified(&node, &["/etc/systemd/system/tend-sleeper.service"]);
}

#[test]
fn a_unit_that_exits_1_fails_its_start_job() {
    let node = Node::start("failing_unit");
    run_inner(&node, "inner_failing_unit");
    assert_eq!(node.show_property("tend-fails.service", "ActiveState"), "failed");
    assert_eq!(node.show_property("tend-fails.service", "ExecMainStatus"), "1");
    assert_eq!(node.show_property("tend-fails-later.service", "ActiveState"), "failed");
    assert_verified(&node, &["/etc/systemd/system/tend-fails.service", "/etc/systemd/system/tend-fails-later.service"]);
}

#[test]
fn a_notify_unit_is_active_when_its_start_job_returns() {
    let node = Node::start("notify_unit");
    run_inner(&node, "inner_notify_unit");
    assert_eq!(node.show_property("tend-notify.service", "StatusText"), "ready from tend's test");
    assert_verified(
        &node,
        &["/etc/systemd/system/tend-notify.service", "/etc/systemd/system/tend-never-ready.service"],
    );
}

#[test]
fn disabling_removing_and_reloading_leaves_no_unit() {
    let node = Node::start("unit_removed");
    run_inner(&node, "inner_remove_unit");
    assert_eq!(node.show_property("tend-gone.service", "LoadState"), "not-found");
    node.exec_ok(&["test", "!", "-e", "/etc/systemd/system/tend-gone.service"]);
    node.exec_ok(&["test", "!", "-e", "/etc/systemd/system/multi-user.target.wants/tend-gone.service"]);
    // list-unit-files exits 1 when nothing matches.
    let listed = node.systemctl(&["list-unit-files", "--no-legend", "tend-gone.service"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "", "systemd still lists the unit file");
}

#[test]
fn watch_wakes_up_when_a_unit_changes() {
    let node = Node::start("watch_wakes");
    run_inner(&node, "inner_watch");
}

#[test]
fn a_hung_bus_is_a_timeout_naming_the_call_and_the_wait() {
    let node = Node::start("hung_bus");
    run_inner(&node, "inner_hung_bus");
}

// ---------------------------------------------------------------------------------------
// Inner side (in the node)

fn in_node() -> bool {
    std::env::var_os("TEND_IN_NODE").is_some()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a Tokio runtime")
}

/// Runs `f` with an engine connected to the node's systemd.
fn with_engine<F, Fut>(f: F)
where
    F: FnOnce(SystemdEngine) -> Fut,
    Fut: Future<Output = ()>,
{
    runtime().block_on(async {
        let engine =
            SystemdEngine::connect(tend::engine::Timeouts::default()).await.expect("connecting to systemd in the node");
        f(engine.with_job_timeout(Duration::from_secs(60))).await;
    });
}

fn dir() -> &'static Path {
    Path::new(UNIT_DIR)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A unit as tend would write one: marks in `[Unit]`, then the given sections.
fn unit(name: &str, hash: &str, rest: &str) -> String {
    format!(
        "[Unit]\nDescription=tend test unit {name}\nX-Tend-Name={name}\nX-Tend-Kind=service\nX-Tend-Hash={hash}\n\n{rest}"
    )
}

async fn state(engine: &SystemdEngine, name: &str) -> UnitState {
    let mut states = engine.states(&names(&[name])).await.expect("states");
    assert_eq!(states.len(), 1);
    states.remove(0)
}

/// Polls the state of `name` until `done` holds (10 s at most).
async fn wait_state(engine: &SystemdEngine, name: &str, done: impl Fn(&UnitState) -> bool) -> UnitState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = state(engine, name).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{name} did not reach the expected state: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `signal` to the system bus daemon (found through systemd's private socket, which
/// does not need the bus).
fn signal_bus(signal: &str) {
    let out = std::process::Command::new("systemctl")
        .args(["kill", "--kill-whom=main", "--signal", signal, "dbus.service"])
        .output()
        .expect("run systemctl kill");
    assert!(out.status.success(), "systemctl kill {signal} dbus.service: {out:?}");
}

#[test]
fn inner_hung_bus() {
    if !in_node() {
        return;
    }
    runtime().block_on(async {
        let timeouts = tend::engine::Timeouts::new(Duration::from_secs(2));
        let engine = SystemdEngine::connect(timeouts).await.expect("connecting to systemd in the node");
        let unit = names(&["dbus.service"]);
        engine.states(&unit).await.expect("the bus answers");
        // A hung bus: it accepts connections and reads nothing.
        signal_bus("STOP");
        let e = engine.states(&unit).await.expect_err("a stopped bus does not answer");
        let chain = tend::support::chain(&e);
        signal_bus("CONT");
        assert_eq!(e.kind(), "timeout", "{chain}");
        assert_eq!(chain, "listing units dbus.service: systemd did not answer within 2s");
        signal_bus("STOP");
        let e = SystemdEngine::connect(timeouts).await.map(|_| ()).expect_err("no connection to a stopped bus");
        let chain = tend::support::chain(&e);
        signal_bus("CONT");
        assert_eq!(e.kind(), "timeout", "{chain}");
        assert_eq!(
            chain,
            "connecting to the system bus (/run/dbus/system_bus_socket): systemd did not answer within 2s"
        );
        // The same connection works again once the bus does.
        assert_eq!(engine.states(&unit).await.expect("the bus answers again").len(), 1);
    });
}

#[test]
fn inner_available() {
    if !in_node() {
        return;
    }
    booted().expect("systemd is PID 1 in the node");
    with_engine(|engine| async move {
        engine.available().await.expect("available");
        let version = engine.version().await.expect("version");
        assert!(version.starts_with("252"), "bookworm's systemd, got {version}");
    });
}

#[test]
fn inner_write_unit_file() {
    if !in_node() {
        return;
    }
    with_engine(|engine| async move {
        let name = "tend-written.service";
        let path = dir().join(name);
        // A temporary file left by a crash is replaced, then gone.
        std::fs::write(dir().join(format!(".{name}.tend-tmp")), "half a unit").expect("stale file");
        let first = unit(name, "1", "[Service]\nExecStart=/bin/sleep infinity\n");
        engine.write_unit_file(dir(), name, &first).await.expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);
        let second = unit(name, "2", "[Service]\nExecStart=/bin/sleep 1000\n");
        engine.write_unit_file(dir(), name, &second).await.expect("overwrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), second);

        for bad in ["../x.service", "tend-x.socket", "Tend.service", "a_b.service", "x@.service", "x"] {
            let e = engine.write_unit_file(dir(), bad, "[Unit]\n").await.expect_err(bad);
            assert_eq!(e.kind(), "bad_name", "{bad}: {e}");
            assert!(e.to_string().starts_with("refusing unit file name"), "{e}");
        }
        assert!(!Path::new("/etc/systemd/x.service").exists());

        // A masked unit (-> /dev/null) and a unit linked from elsewhere are not written
        // through, nor replaced, nor removed.
        std::os::unix::fs::symlink("/dev/null", dir().join("tend-masked.service")).expect("mask");
        std::fs::write("/root/vendor.service", "[Unit]\nDescription=vendor\n").expect("vendor file");
        std::os::unix::fs::symlink("/root/vendor.service", dir().join("tend-linked.service")).expect("link");
        for name in ["tend-masked.service", "tend-linked.service"] {
            let e = engine.write_unit_file(dir(), name, "[Unit]\n").await.expect_err(name);
            assert_eq!(e.kind(), "not_regular", "{e}");
            assert!(e.to_string().contains("it is a symlink to"), "{e}");
            let e = engine.remove_unit_file(dir(), name).await.expect_err(name);
            assert_eq!(e.kind(), "not_regular", "{e}");
        }
    });
}

#[test]
fn inner_list_unit_files() {
    if !in_node() {
        return;
    }
    with_engine(|engine| async move {
        let web = unit("tend-web.service", "h-web", "[Service]\nExecStart=/bin/sleep infinity\n");
        engine.write_unit_file(dir(), "tend-web.service", &web).await.expect("write");
        let timer = "[Unit]\nX-Tend-Name=tend-nightly\nX-Tend-Kind=timer\nX-Tend-Hash=h-timer\n\n\
                     [Timer]\nOnCalendar=daily\nAccuracySec=1s\n";
        engine.write_unit_file(dir(), "tend-nightly.timer", timer).await.expect("write");
        let files = engine.list_unit_files(dir()).await.expect("list");
        let by_name = |n: &str| files.iter().find(|f| f.name == n).unwrap_or_else(|| panic!("{n} not listed"));

        let web_file = by_name("tend-web.service");
        assert_eq!(web_file.content, web);
        assert_eq!(web_file.marks.get("X-Tend-Hash").map(String::as_str), Some("h-web"));
        assert_eq!(web_file.marks.get("X-Tend-Name").map(String::as_str), Some("tend-web.service"));
        assert_eq!(by_name("tend-nightly.timer").marks.get("X-Tend-Kind").map(String::as_str), Some("timer"));

        let hand = by_name("hand-written.service");
        assert!(hand.marks.is_empty(), "{:?}", hand.marks);
        assert!(hand.content.contains("written by an operator"));
        // The node masks some of Debian's units: symlinks to /dev/null, listed as such.
        let masked: Vec<&str> =
            files.iter().filter(|f| f.link.as_deref() == Some(Path::new("/dev/null"))).map(|f| &*f.name).collect();
        assert!(masked.contains(&"apt-daily.timer"), "masked units listed: {masked:?}");
        // Sorted, and nothing but services and timers.
        assert!(files.windows(2).all(|w| w[0].name < w[1].name));
        assert!(files.iter().all(|f| f.name.ends_with(".service") || f.name.ends_with(".timer")));
    });
}

#[test]
fn inner_lifecycle() {
    if !in_node() {
        return;
    }
    with_engine(|engine| async move {
        let name = "tend-sleeper.service";
        let content =
            unit(name, "h1", "[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n");
        engine.write_unit_file(dir(), name, &content).await.expect("write");
        engine.daemon_reload().await.expect("daemon-reload");
        let loaded = state(&engine, name).await;
        assert_eq!(loaded.load_state, "loaded");
        assert_eq!(loaded.active_state, ActiveState::Inactive);
        assert_eq!(loaded.unit_file_state, "disabled");
        assert_eq!(loaded.main_pid, None);
        assert_eq!(loaded.exec_main_status, None);

        engine.enable(&names(&[name])).await.expect("enable");
        engine.daemon_reload().await.expect("daemon-reload");
        assert_eq!(state(&engine, name).await.unit_file_state, "enabled");

        assert_eq!(engine.start(name).await.expect("start"), JobResult::Done);
        let running = state(&engine, name).await;
        assert_eq!(running.active_state, ActiveState::Active, "{running:?}");
        assert_eq!(running.sub_state, "running");
        assert_eq!(running.unit_file_state, "enabled");
        assert_eq!(running.result, "success");
        assert_eq!(running.n_restarts, Some(0));
        let first_pid = running.main_pid.expect("a main PID");

        // Starting what runs is a job too, and done at once.
        assert_eq!(engine.start(name).await.expect("start again"), JobResult::Done);
        assert_eq!(state(&engine, name).await.main_pid, Some(first_pid));

        assert_eq!(engine.restart(name).await.expect("restart"), JobResult::Done);
        let restarted = state(&engine, name).await;
        assert_eq!(restarted.active_state, ActiveState::Active);
        let second_pid = restarted.main_pid.expect("a main PID after restart");
        assert_ne!(second_pid, first_pid, "restart gave a new main process");
        // NRestarts counts systemd's own restarts (Restart=), not ours.
        assert_eq!(restarted.n_restarts, Some(0));

        assert_eq!(engine.stop(name).await.expect("stop"), JobResult::Done);
        let stopped = state(&engine, name).await;
        assert_eq!(stopped.active_state, ActiveState::Inactive, "{stopped:?}");
        assert_eq!(stopped.sub_state, "dead");
        assert_eq!(stopped.main_pid, None);
        // Killed by SIGTERM, as systemd reports it: the signal number.
        assert_eq!(stopped.exec_main_status, Some(15));

        // Many jobs at once on one connection: each waits for its own.
        let many: Vec<String> = (0..20).map(|i| format!("tend-many-{i}.service")).collect();
        for n in &many {
            let content = unit(n, "h", "[Service]\nExecStart=/bin/sleep infinity\n");
            engine.write_unit_file(dir(), n, &content).await.expect("write");
        }
        engine.daemon_reload().await.expect("daemon-reload");
        let started = futures::future::try_join_all(many.iter().map(|n| engine.start(n))).await.expect("starts");
        assert!(started.iter().all(|r| *r == JobResult::Done));
        let states = engine.states(&many).await.expect("states");
        assert!(states.iter().all(|s| s.active_state == ActiveState::Active), "{states:?}");
        futures::future::try_join_all(many.iter().map(|n| engine.stop(n))).await.expect("stops");
        let states = engine.states(&many).await.expect("states");
        assert!(states.iter().all(|s| s.active_state == ActiveState::Inactive), "{states:?}");

        // Bulk: several units, in the order asked, unknown ones included.
        let asked = names(&["dbus.service", name, "tend-nothing.service", "systemd-tmpfiles-clean.timer"]);
        let many = engine.states(&asked).await.expect("states");
        let got: Vec<(&str, &str, &str)> =
            many.iter().map(|s| (&*s.name, &*s.load_state, s.active_state.as_str())).collect();
        assert_eq!(
            got,
            [
                ("dbus.service", "loaded", "active"),
                (name, "loaded", "inactive"),
                ("tend-nothing.service", "not-found", "inactive"),
                ("systemd-tmpfiles-clean.timer", "loaded", "active"),
            ]
        );
        assert_eq!(many[0].unit_file_state, "static");
        assert_eq!(many[2].unit_file_state, "");
        assert_eq!(many[3].n_restarts, None);
        assert_eq!(many[3].result, "success");
    });
}

#[test]
fn inner_failing_unit() {
    if !in_node() {
        return;
    }
    with_engine(|engine| async move {
        // Type=oneshot: the start job waits for the process, so it fails with it.
        let name = "tend-fails.service";
        engine
            .write_unit_file(dir(), name, &unit(name, "h", "[Service]\nType=oneshot\nExecStart=/bin/false\n"))
            .await
            .expect("write");
        // Type=simple: the job is done once the process is forked; the unit fails after.
        let later = "tend-fails-later.service";
        engine
            .write_unit_file(dir(), later, &unit(later, "h", "[Service]\nExecStart=/bin/sh -c 'sleep 0.2; exit 1'\n"))
            .await
            .expect("write");
        engine.daemon_reload().await.expect("daemon-reload");

        let e = engine.start(name).await.expect_err("a failing start job");
        assert_eq!(e.job_result(), Some(&JobResult::Failed), "{e:?}");
        assert_eq!(e.kind(), "job_failed");
        assert_eq!(e.to_string(), "starting unit tend-fails.service: the job finished with result 'failed'");
        let failed = state(&engine, name).await;
        assert_eq!(failed.active_state, ActiveState::Failed, "{failed:?}");
        assert_eq!(failed.result, "exit-code");
        assert_eq!(failed.exec_main_status, Some(1));

        assert_eq!(engine.start(later).await.expect("the job is done"), JobResult::Done);
        let s = wait_state(&engine, later, |s| s.active_state == ActiveState::Failed).await;
        assert_eq!(s.result, "exit-code");
        assert_eq!(s.exec_main_status, Some(1));

        // A unit that does not exist: systemd refuses the job, and the error says which.
        let e = engine.start("tend-missing.service").await.expect_err("no such unit");
        assert_eq!(e.to_string(), "starting unit tend-missing.service");
        assert_eq!(e.kind(), "not_found", "{e:?}");
        let source = std::error::Error::source(&e).expect("the D-Bus error").to_string();
        assert!(source.contains("tend-missing.service"), "{source}");
    });
}

#[test]
fn inner_notify_unit() {
    if !in_node() {
        return;
    }
    with_engine(|engine| async move {
        let script = Path::new("/usr/local/bin/tend-notify-test");
        std::fs::write(
            script,
            "#!/bin/bash\nsleep 1\nsystemd-notify --ready --status=\"ready from tend's test\"\nexec sleep infinity\n",
        )
        .expect("script");
        std::fs::set_permissions(script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let name = "tend-notify.service";
        let body = "[Service]\nType=notify\nNotifyAccess=all\nExecStart=/usr/local/bin/tend-notify-test\n\
                    TimeoutStartSec=30s\n";
        engine.write_unit_file(dir(), name, &unit(name, "h", body)).await.expect("write");
        let never = "tend-never-ready.service";
        let body = "[Service]\nType=notify\nExecStart=/bin/sleep infinity\nTimeoutStartSec=60s\n";
        engine.write_unit_file(dir(), never, &unit(never, "h", body)).await.expect("write");
        engine.daemon_reload().await.expect("daemon-reload");

        let started = Instant::now();
        assert_eq!(engine.start(name).await.expect("start"), JobResult::Done);
        // The script sleeps 1 s before READY=1: start() waited for it.
        assert!(started.elapsed() >= Duration::from_millis(900), "start returned before READY=1");
        let s = state(&engine, name).await;
        assert_eq!((s.active_state, s.sub_state.as_str()), (ActiveState::Active, "running"));

        // A unit that never says READY=1: tend's own job timeout ends the wait, with a clear
        // error, while systemd still has the job.
        let impatient = engine.clone().with_job_timeout(Duration::from_secs(2));
        let e = impatient.start(never).await.expect_err("never ready");
        assert_eq!(e.kind(), "job_timeout", "{e:?}");
        assert_eq!(e.to_string(), "starting unit tend-never-ready.service: the job did not finish within 2s");
        assert_eq!(state(&engine, never).await.active_state, ActiveState::Activating);
        // Stopping it replaces the start job, which ends "canceled".
        assert_eq!(engine.stop(never).await.expect("stop"), JobResult::Done);
        assert_eq!(state(&engine, never).await.active_state, ActiveState::Inactive);
    });
}

#[test]
fn inner_remove_unit() {
    if !in_node() {
        return;
    }
    with_engine(|engine| async move {
        let name = "tend-gone.service";
        let body = "[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";
        engine.write_unit_file(dir(), name, &unit(name, "h", body)).await.expect("write");
        engine.daemon_reload().await.expect("daemon-reload");
        engine.enable(&names(&[name])).await.expect("enable");
        engine.start(name).await.expect("start");
        assert!(Path::new("/etc/systemd/system/multi-user.target.wants/tend-gone.service").exists());

        engine.stop(name).await.expect("stop");
        engine.disable(&names(&[name])).await.expect("disable");
        engine.remove_unit_file(dir(), name).await.expect("remove");
        engine.remove_unit_file(dir(), name).await.expect("removing again is done already");
        engine.daemon_reload().await.expect("daemon-reload");

        let s = state(&engine, name).await;
        assert_eq!(s.load_state, "not-found", "{s:?}");
        assert_eq!(s.active_state, ActiveState::Inactive);
        assert_eq!(s.unit_file_state, "");
        assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/tend-gone.service").exists());
        let files = engine.list_unit_files(dir()).await.expect("list");
        assert!(files.iter().all(|f| f.name != name));
    });
}

/// Whether a wake-up arrived within `ms` (false when none did, or the stream ended).
async fn drained(wakeups: &mut tend::engine::systemd::Wakeups, ms: u64) -> bool {
    matches!(tokio::time::timeout(Duration::from_millis(ms), wakeups.next()).await, Ok(Some(())))
}

#[test]
fn inner_watch() {
    if !in_node() {
        return;
    }
    with_engine(|engine| async move {
        let name = "tend-watched.service";
        let body = "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sleep infinity\n";
        engine.write_unit_file(dir(), name, &unit(name, "h", body)).await.expect("write");
        engine.daemon_reload().await.expect("daemon-reload");
        let interest: tend::engine::systemd::Interest = std::sync::Arc::new(move |u: &str| u == name);
        let mut wakeups = engine.watch(interest).await.expect("watch");
        // Let the reload's own signals pass, then drain what is pending.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while drained(&mut wakeups, 100).await {}

        // A change made outside tend (systemctl) wakes the watcher.
        let out = std::process::Command::new("systemctl").args(["start", name]).output().expect("systemctl");
        assert!(out.status.success(), "systemctl start: {out:?}");
        let woke = tokio::time::timeout(Duration::from_secs(10), wakeups.next()).await;
        assert_eq!(woke, Ok(Some(())), "no wake-up within 10 s after systemctl start");

        // Hundreds of signals while nobody reads the wake-ups: zbus would block the
        // connection once a signal queue is full; the adapter drains it, so calls still work.
        for _ in 0..40 {
            engine.restart(name).await.expect("restart");
        }
        let s = tokio::time::timeout(Duration::from_secs(10), state(&engine, name)).await;
        assert_eq!(s.expect("states answers while wake-ups pile up").active_state, ActiveState::Active);
        // The pile is one pending wake-up, not hundreds.
        let mut pending = 0;
        while drained(&mut wakeups, 300).await {
            pending += 1;
        }
        assert!((1..=3).contains(&pending), "{pending} wake-ups pending");

        // A daemon-reload (the Reloading signal) wakes it too.
        let out = std::process::Command::new("systemctl").args(["stop", name]).output().expect("systemctl");
        assert!(out.status.success());
        while drained(&mut wakeups, 300).await {}
        engine.daemon_reload().await.expect("daemon-reload");
        let woke = tokio::time::timeout(Duration::from_secs(10), wakeups.next()).await;
        assert_eq!(woke, Ok(Some(())), "no wake-up after daemon-reload");
        engine.stop(name).await.expect("stop");
    });
}
