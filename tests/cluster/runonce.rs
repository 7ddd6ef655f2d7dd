//! Timers that run once per cluster: real `tend job run` processes of one `runOn: leader`
//! Timer, each a node of the cluster by its own agent configuration and state directory,
//! against a real 3-member etcd. Exactly one of two concurrent runs runs; a run whose node
//! dies holds the run key until its lease expires, so no run starts before then
//! (hashicorp/nomad#11052), and one started after runs; a run cut off from etcd stops its
//! job before its lease can expire; `tend job history` on any node shows every node's runs.
//! What is in etcd is read with `etcdctl`, not with tend's adapter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::etcd::{EtcdCluster, Place, describe};
use crate::netns::Net;

/// The cluster's name in these tests' configurations.
const CLUSTER: &str = "runonce";
/// The Timer.
const TIMER: &str = "nightly";
/// The run key of the Timer.
const RUN_KEY: &str = "/tend/runonce/runs/nightly";
/// The cluster's history of the Timer.
const HISTORY: &str = "/tend/runonce/history/nightly/";
/// The lease TTL of these nodes (`cluster.leaseTTL`).
const LEASE_TTL: Duration = Duration::from_secs(3);
/// `tend job run`'s exit status when the run key is held elsewhere.
const EXIT_HELD: i32 = 76;
/// How long one `tend job run` or `tend job history` may take in these tests.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A node: its agent configuration (the cluster block only), state directory and specs.
struct Node {
    name: String,
    config: PathBuf,
    state: PathBuf,
    specs: PathBuf,
}

/// The specs of the Timer, a host job running `script` with `/bin/sh`.
fn write_specs(dir: &Path, script: &str) {
    std::fs::create_dir_all(dir).expect("specs dir");
    let yaml = format!(
        "apiVersion: tend/v1\nkind: Timer\nmetadata: {{name: {TIMER}}}\nspec:\n  enabled: false\n  runOn: leader\n  job:\n    runtime: host\n    exec: [/bin/sh, -c, {script:?}]\n"
    );
    std::fs::write(dir.join("timer.yaml"), yaml).expect("write specs");
}

impl Node {
    fn new(root: &Path, name: &str, endpoints: &[String], script: &str) -> Node {
        let dir = root.join(name);
        let config = dir.join("agent.yaml");
        let state = dir.join("state");
        let specs = dir.join("specs");
        std::fs::create_dir_all(&state).expect("state dir");
        write_specs(&specs, script);
        let endpoints = endpoints.iter().map(|e| format!("'{e}'")).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &config,
            format!(
                "cluster:\n  name: {CLUSTER}\n  node: {name}\n  etcd:\n    endpoints: [{endpoints}]\n  leaseTTL: {}s\n",
                LEASE_TTL.as_secs()
            ),
        )
        .expect("write config");
        Node { name: name.to_string(), config, state, specs }
    }

    /// `tend --state-dir … ARGS --config …`, as a command that runs in `net`'s namespace
    /// `ns` when given.
    fn tend(&self, place: Option<(&Net, usize)>, args: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_tend");
        let mut cmd = match place {
            Some((net, i)) => net.command(i, bin),
            None => Command::new(bin),
        };
        cmd.arg("--scope")
            .arg(format!("runonce-{}", self.name))
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("TEND_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts `tend job run nightly` (in namespace `ns` of `net`, when given).
    fn start_run(&self, place: Option<(&Net, usize)>) -> Child {
        let specs = self.specs.to_string_lossy().into_owned();
        self.tend(place, &["job", "run", TIMER, &specs]).spawn().expect("start tend job run")
    }

    /// `tend job history nightly -o json` on this node: the records, newest first.
    fn history(&self, place: Option<(&Net, usize)>) -> Vec<serde_json::Value> {
        let out = crate::etcd::run_with_timeout(
            &mut self.tend(place, &["job", "history", TIMER, "-o", "json"]),
            COMMAND_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("tend job history on {}: {e}", self.name));
        assert!(out.status.success(), "tend job history on {}\n{}", self.name, describe(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
        v.as_array().expect("a list").clone()
    }

    /// The job's process group of the run in progress, from `running.json`.
    fn running_pgid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.state.join("jobs").join(TIMER).join("running.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v.as_array()?.iter().find_map(|r| r["pgid"].as_i64()).and_then(|p| i32::try_from(p).ok())
    }
}

/// Waits for `child` (at most [`COMMAND_TIMEOUT`]) and returns its output.
fn finish(child: Child, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{what} did not end within {COMMAND_TIMEOUT:?}");
        }
    }
}

/// The value of `key` as `etcdctl` reads it, if it exists.
fn etcd_value(cluster: &EtcdCluster, key: &str) -> Option<serde_json::Value> {
    let out = cluster.etcdctl_ok(&["get", key, "--print-value-only"]);
    let text = out.trim();
    (!text.is_empty()).then(|| serde_json::from_str(text).unwrap_or_else(|e| panic!("{key} = {text}: {e}")))
}

/// The keys under `prefix`, as `etcdctl` lists them.
fn etcd_keys(cluster: &EtcdCluster, prefix: &str) -> Vec<String> {
    cluster
        .etcdctl_ok(&["get", prefix, "--prefix", "--keys-only"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Now, in ms since the epoch (the clock the records use).
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !check() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// The record of run `run` in a history listing.
fn record<'a>(history: &'a [serde_json::Value], run: &str, node: &str) -> &'a serde_json::Value {
    history
        .iter()
        .find(|r| r["run"] == run && r["node"] == node)
        .unwrap_or_else(|| panic!("no run {run} of node {node} in {history:#?}"))
}

#[test]
fn of_two_concurrent_runs_on_two_nodes_exactly_one_runs_and_the_other_names_it() {
    let cluster = EtcdCluster::start("runonce_two");
    let root = TempDir::new().expect("tmp");
    let endpoints = cluster.endpoints();
    let a = Node::new(root.path(), "a", &endpoints, "sleep 3");
    let b = Node::new(root.path(), "b", &endpoints, "sleep 3");

    let t0 = Instant::now();
    let (run_a, run_b) = (a.start_run(None), b.start_run(None));
    let (out_a, out_b) = (finish(run_a, "the run on a"), finish(run_b, "the run on b"));
    let took = t0.elapsed();
    let codes = (out_a.status.code(), out_b.status.code());
    eprintln!("measured: two concurrent runs ended with {codes:?} after {took:?}");
    let (ran, skipped, out_ran, out_skipped) = match codes {
        (Some(0), Some(EXIT_HELD)) => (&a, &b, &out_a, &out_b),
        (Some(EXIT_HELD), Some(0)) => (&b, &a, &out_b, &out_a),
        _ => {
            panic!("not exactly one run and one skip\n--- a ---\n{}\n--- b ---\n{}", describe(&out_a), describe(&out_b))
        }
    };
    assert!(took >= Duration::from_secs(3), "the job ran: {took:?}");
    let stderr = String::from_utf8_lossy(&out_skipped.stderr);
    assert!(
        stderr.contains(&format!("{TIMER}: skipped: run ")) && stderr.contains(&format!(" on node {} ", ran.name)),
        "the skip names the run that holds the key:\n{stderr}"
    );
    assert!(stderr.contains(RUN_KEY), "{stderr}");
    let stdout = String::from_utf8_lossy(&out_ran.stdout);
    assert!(stdout.contains(&format!("{TIMER}: run ")) && stdout.contains(" ok after "), "{stdout}");

    // The key went with the run; the cluster's history has both.
    assert_eq!(etcd_value(&cluster, RUN_KEY), None, "the run key outlived the run");
    assert_eq!(etcd_keys(&cluster, HISTORY).len(), 2, "{:?}", etcd_keys(&cluster, HISTORY));

    // Each node's history shows both runs, marked by node.
    for node in [&a, &b] {
        let history = node.history(None);
        assert_eq!(history.len(), 2, "{} shows {history:#?}", node.name);
        let ok = history.iter().find(|r| r["result"] == "ok").expect("the run that ran");
        let skip = history.iter().find(|r| r["result"] == "skipped").expect("the skip");
        assert_eq!(ok["node"], ran.name.as_str());
        assert_eq!(skip["node"], skipped.name.as_str());
        assert_eq!(skip["held_by"]["node"], ran.name.as_str());
        assert_eq!(skip["held_by"]["run"], ok["run"]);
        assert_eq!(skip["log"], serde_json::Value::Null, "a skipped run has no log");
    }
    // Only the node that ran has a log.
    let logs = |n: &Node| {
        std::fs::read_dir(n.state.join("jobs").join(TIMER))
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "log")).count())
            .unwrap_or(0)
    };
    assert_eq!((logs(ran), logs(skipped)), (1, 0));
}

#[test]
fn a_run_whose_node_dies_holds_the_key_until_its_lease_expires_then_the_next_runs() {
    // hashicorp/nomad#11052: a periodic job ran twice around a leader change. Here the
    // node running it dies (its tend and its job are SIGKILLed): a run started elsewhere
    // during the TTL is refused, one started after it runs.
    let cluster = EtcdCluster::start("runonce_dies");
    let root = TempDir::new().expect("tmp");
    let endpoints = cluster.endpoints();
    let a = Node::new(root.path(), "a", &endpoints, "sleep 3");
    let b = Node::new(root.path(), "b", &endpoints, "sleep 3");

    let mut run_a = a.start_run(None);
    wait_for("a's run to hold the key", Duration::from_secs(10), || etcd_value(&cluster, RUN_KEY).is_some());
    let holder = etcd_value(&cluster, RUN_KEY).expect("the holder");
    assert_eq!(holder["node"], "a");
    let pgid = {
        let mut pgid = None;
        wait_for("a's job to start", Duration::from_secs(10), || {
            pgid = a.running_pgid();
            pgid.is_some()
        });
        pgid.expect("a pgid")
    };
    // The node dies: its tend and its job, at once.
    run_a.kill().expect("kill a's tend");
    let died = Instant::now();
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
    let _ = run_a.wait();

    // During the TTL: refused, naming a's run.
    let refused = finish(b.start_run(None), "b's run during the TTL");
    let refused_at = died.elapsed();
    assert_eq!(refused.status.code(), Some(EXIT_HELD), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let holder_run = holder["run"].as_str().expect("run");
    assert!(stderr.contains(&format!("run {holder_run} on node a ")), "{stderr}");
    assert!(refused_at < LEASE_TTL, "b's refused run ended {refused_at:?} after the death, past the TTL");

    // The key goes with a's lease, one TTL after its last renewal.
    let gone = wait_for("a's run key to expire", LEASE_TTL * 3, || etcd_value(&cluster, RUN_KEY).is_none());
    let gone_after = died.elapsed();
    eprintln!(
        "measured: the run key of a dead node's run was gone {gone_after:?} after the node died (TTL {LEASE_TTL:?}); waited {gone:?} after b's refused run"
    );
    assert!(
        gone_after >= LEASE_TTL - Duration::from_secs(1),
        "the key went before its lease could expire: {gone_after:?}"
    );
    assert!(gone_after <= LEASE_TTL + Duration::from_millis(1500), "{gone_after:?}");

    // After it: b runs.
    let ran = finish(b.start_run(None), "b's run after the TTL");
    assert_eq!(ran.status.code(), Some(0), "{}", describe(&ran));

    // a comes back: its next run records the run its death cut short (as `error`), in the
    // cluster's history too, and runs.
    let back = finish(a.start_run(None), "a's run after it came back");
    assert_eq!(back.status.code(), Some(0), "{}", describe(&back));

    // b's history shows a's runs and its own.
    let history = b.history(None);
    let nodes: Vec<(&str, &str)> =
        history.iter().map(|r| (r["node"].as_str().unwrap_or("-"), r["result"].as_str().unwrap_or("-"))).collect();
    eprintln!("b's view of the cluster's history (newest first): {nodes:?}");
    assert_eq!(nodes, [("a", "ok"), ("b", "ok"), ("b", "skipped"), ("a", "error")]);
    let killed = record(&history, holder_run, "a");
    assert!(
        killed["detail"].as_str().is_some_and(|d| d.contains("ended during the run without recording it")),
        "{killed:#}"
    );
    assert_eq!(history[2]["held_by"]["run"], holder_run);
    // a's own view is the same four runs.
    assert_eq!(a.history(None).len(), 4);
}

#[test]
fn a_run_cut_off_from_etcd_stops_its_job_before_its_lease_can_expire() {
    // etcd's members in namespaces 0..2, node a in 3, node b in 4. a's job ignores SIGTERM,
    // so only the kill at the last instant a's lease is known to live ends it.
    let net = Arc::new(Net::new("runonce_cut", 5));
    let places: Vec<Place> =
        (0..3).map(|i| Place::Namespace { ns: net.ns(i).to_string(), ip: net.ip(i).to_string() }).collect();
    let cluster = EtcdCluster::start_at("runonce_cut", &places);
    let root = TempDir::new().expect("tmp");
    let endpoints = cluster.endpoints();
    let script = "trap '' TERM; sleep 60";
    let a = Node::new(root.path(), "a", &endpoints, script);
    let b = Node::new(root.path(), "b", &endpoints, "sleep 1");

    let run_a = a.start_run(Some((&net, 3)));
    wait_for("a's run to hold the key", Duration::from_secs(10), || etcd_value(&cluster, RUN_KEY).is_some());
    wait_for("a's job to start", Duration::from_secs(10), || a.running_pgid().is_some());
    net.link_down(3);
    let cut = Instant::now();
    let cut_ms = now_ms();

    // b tries every 200 ms: refused while a's lease lives, then it runs.
    let mut refusals = 0;
    let ran = loop {
        let out = finish(b.start_run(Some((&net, 4))), "b's run");
        match out.status.code() {
            Some(EXIT_HELD) => refusals += 1,
            Some(0) => break out,
            _ => panic!("b's run neither ran nor was refused\n{}", describe(&out)),
        }
        assert!(cut.elapsed() < Duration::from_secs(30), "b never ran");
        std::thread::sleep(Duration::from_millis(200));
    };
    let b_ran = cut.elapsed();
    assert!(refusals > 0, "b ran at once: a's key should have stood");
    let out_a = finish(run_a, "a's run");
    net.link_up(3);
    eprintln!(
        "measured: with a's link cut, b was refused {refusals} time(s); its run (a 1 s job) ended {b_ran:?} after the cut (TTL {LEASE_TTL:?})"
    );
    assert!(String::from_utf8_lossy(&ran.stdout).contains(" ok after "), "{}", describe(&ran));

    // a's run: stopped for its lease, its job killed (it ignored SIGTERM), never
    // overlapping b's: a's job was dead before b's run began.
    let a_history = a.history(Some((&net, 3)));
    let a_rec = a_history.iter().find(|r| r["node"] == "a").expect("a's record");
    assert_eq!(a_rec["result"], "failed", "{a_rec:#}");
    assert_eq!(a_rec["exit_code"], 137, "killed by SIGKILL: {a_rec:#}");
    let detail = a_rec["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("stopped: the renewals of the run key's lease went unacknowledged"), "{detail}");
    assert!(detail.contains("not in the cluster's history"), "a could not reach etcd to record it: {detail}");
    assert_eq!(out_a.status.code(), Some(137), "{}", describe(&out_a));
    let b_rec =
        b.history(Some((&net, 4))).into_iter().find(|r| r["node"] == "b" && r["result"] == "ok").expect("b's run");
    let (a_end, b_start) = (a_rec["end_ms"].as_u64().expect("end"), b_rec["start_ms"].as_u64().expect("start"));
    eprintln!(
        "measured: after a's link was cut, a's job (deaf to SIGTERM) was killed at +{} ms and b's run began at +{} ms (TTL {LEASE_TTL:?})",
        a_end as i64 - cut_ms as i64,
        b_start as i64 - cut_ms as i64
    );
    assert!(a_end <= b_start, "a's job (ended {a_end}) overlapped b's run (started {b_start})");
    // Killed by the last instant its lease was known to live: at most a TTL after the cut.
    assert!(a_end <= cut_ms + LEASE_TTL.as_millis() as u64 + 300, "a's job ended {} ms after the cut", a_end - cut_ms);
    let log = std::fs::read_to_string(a_rec["log"].as_str().expect("a's log")).expect("read a's log");
    assert!(log.contains("SIGKILL in"), "{log}");
    drop(cluster);
}

#[test]
fn a_run_that_cannot_reach_etcd_does_not_start() {
    // Nothing listens on the port: every connection is refused until the call's bound.
    let root = TempDir::new().expect("tmp");
    let endpoints = [format!("http://127.0.0.1:{}", crate::etcd::free_port())];
    let a = Node::new(root.path(), "a", &endpoints, "touch ran");
    let t0 = Instant::now();
    let out = finish(a.start_run(None), "a's run without etcd");
    let took = t0.elapsed();
    eprintln!("measured: a run that could not reach etcd gave up after {took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected =
        format!("not started (runOn: leader): taking the cluster's run key {RUN_KEY}: etcd lease grant (ttl 3s): ");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("Connection refused") || stderr.contains("did not answer"), "{stderr}");
    // Recorded as an error of this node, without a log: the job never ran.
    let history = a.history(None);
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!((history[0]["result"].as_str(), history[0]["node"].as_str()), (Some("error"), Some("a")));
    assert_eq!(history[0]["log"], serde_json::Value::Null);
}
