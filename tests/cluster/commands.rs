//! `tend cluster members`, `tend cluster status`, the cluster line of `tend status` and the
//! cluster's metrics, against real agents: two `tend agent` processes (each with its own
//! scope, state directory, socket and lock directory, and a configuration whose `cluster:`
//! block names the harness's etcd) in one cluster on a real 3-member etcd. The leader's
//! agent stopped with SIGTERM hands the leadership over at once (it resigns); with etcd's
//! quorum lost, the survivor says so in `tend status`, `tend cluster status` (which still
//! answers within a few seconds, with its last view) and `tend_cluster_connected`.
//!
//! The spec sets are empty: nothing here needs Docker to run anything.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::etcd::{self, EtcdCluster};

/// How long one `tend` command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the agents may take to join, elect and agree.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

static NODES: AtomicUsize = AtomicUsize::new(0);

/// One node: a `tend agent` with its own directories and socket, stopped when dropped.
struct Node {
    name: String,
    scope: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    /// Starts an agent named `name` in cluster `cluster` on `endpoints`; `None`: an agent
    /// without a `cluster:` block.
    fn start(name: &str, cluster: Option<(&str, &[String])>) -> Node {
        let n = NODES.fetch_add(1, Ordering::SeqCst);
        let scope = format!("tc{}x{n}", std::process::id());
        let dir = tempfile::Builder::new().prefix("tend-cc-").tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["specs", "state", "units", "env", "locks"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let mut config = format!(
            "scope: {scope}\nsource: {{dir: {specs}}}\nstateDir: {state}\nunitDir: {units}\nenvDir: {env}\n\
             socket: {{path: {socket}}}\nresync: 1h\n",
            specs = d.join("specs").display(),
            state = d.join("state").display(),
            units = d.join("units").display(),
            env = d.join("env").display(),
            socket = d.join("tend.sock").display(),
        );
        if let Some((cluster, endpoints)) = cluster {
            let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
            config.push_str(&format!(
                "cluster:\n  name: {cluster}\n  node: {name}\n  address: 127.0.0.1\n  roles: [judicator]\n  \
                 etcd: {{endpoints: [{}]}}\n  leaseTTL: 2s\n",
                endpoints.join(", ")
            ));
        }
        std::fs::write(d.join("agent.yaml"), config).expect("write the agent configuration");
        let log = std::fs::File::create(d.join("agent.log")).expect("create the agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_tend"))
            .arg("--lock-dir")
            .arg(d.join("locks"))
            .args(["agent", "--config"])
            .arg(d.join("agent.yaml"))
            .env("TEND_LOG", "info,tend=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start tend agent");
        Node { name: name.to_string(), scope, dir, child: Some(child) }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tend.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `tend ARGS` against this node's agent.
    fn tend(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tend"));
        cmd.arg("--socket").arg(self.socket()).arg("--state-dir").arg(self.dir.path().join("state"));
        cmd.args(["--scope", &self.scope]).args(args);
        etcd::run_with_timeout(&mut cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// The JSON `tend ARGS` printed, whatever its exit status; `None` when it printed none.
    fn json(&self, args: &[&str]) -> Option<Value> {
        serde_json::from_slice(&self.tend(args).stdout).ok()
    }

    /// The agent's metrics, read from its socket.
    fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "10", "--unix-socket"])
            .arg(self.socket())
            .arg("http://tend/metrics")
            .output()
            .expect("run curl");
        assert!(out.status.success(), "metrics of {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends SIGTERM and waits for the agent to exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if !crate::etcd::stop_within(&mut child, Duration::from_secs(20)) {
            panic!("the agent of {} did not stop on SIGTERM\n{}", self.name, self.log());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && crate::etcd::stop_within(&mut child, Duration::from_secs(10))
        {
            return;
        }
        if std::thread::panicking() {
            eprintln!("--- agent log of {} ---\n{}", self.name, self.log());
        }
    }
}

/// Polls `check` every 100 ms until it yields `Some` (returns it and the time it took) or
/// `timeout` passes (panics naming `what`, with `last` describing what was seen).
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut(&mut String) -> Option<T>) -> (T, Duration) {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = check(&mut last) {
            return (v, t0.elapsed());
        }
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}; last seen: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the metric line `series` (its full name and labels), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The nodes `tend cluster members -o json` lists on `node`, by name.
fn member_names(node: &Node, last: &mut String) -> Option<Vec<String>> {
    let members = node.json(&["cluster", "members", "-o", "json"])?;
    *last = members.to_string();
    Some(members.as_array()?.iter().filter_map(|m| m["node"].as_str().map(str::to_string)).collect())
}

#[test]
fn members_and_status_show_both_agents_one_leader_a_handover_and_a_lost_quorum() {
    let mut etcd = EtcdCluster::start("cluster_commands");
    let endpoints = etcd.endpoints();
    let cluster = format!("cc{}", std::process::id());
    let mut a = Node::start("node-a", Some((&cluster, &endpoints)));
    let mut b = Node::start("node-b", Some((&cluster, &endpoints)));

    // Both are members, as either sees it.
    let (_, joined) = wait_for("both agents to be members", JOIN_TIMEOUT, |last| {
        (member_names(&a, last)? == ["node-a", "node-b"] && member_names(&b, last)? == ["node-a", "node-b"])
            .then_some(())
    });
    eprintln!("measured: both agents listed as members {joined:?} after they started");
    let members = a.json(&["cluster", "members", "-o", "json"]).expect("members");
    for m in members.as_array().expect("a list") {
        assert_eq!(m["state"], "live", "{m}");
        assert_eq!(m["roles"], serde_json::json!(["judicator"]), "{m}");
        assert_eq!(m["address"], "127.0.0.1", "{m}");
        assert_eq!(m["version"], env!("CARGO_PKG_VERSION"), "{m}");
        let left = m["leaseTimeLeftMs"].as_u64().expect("a lease time left");
        assert!(left <= 2_000, "{m}");
        assert!(m["lastSeenMs"].as_u64().is_some() && m["startedMs"].as_u64().is_some(), "{m}");
    }
    let table = a.tend(&["cluster", "members"]);
    assert!(table.status.success(), "{}", stderr_of(&table));
    let text = stdout_of(&table);
    assert!(text.contains("NODE") && text.contains("LEASE-LEFT") && text.contains("ADDRESS"), "{text}");
    assert!(text.contains("node-a") && text.contains("node-b") && text.contains("judicator"), "{text}");

    // One leader, named alike on both nodes; exactly one of them says it leads.
    let ((leader, sa, sb), _) = wait_for("one leader named on both nodes", JOIN_TIMEOUT, |last| {
        let sa = a.json(&["cluster", "status", "-o", "json"])?;
        let sb = b.json(&["cluster", "status", "-o", "json"])?;
        *last = format!("{sa} / {sb}");
        let leader = sa["leader"].as_str()?.to_string();
        let agreed = sb["leader"] == sa["leader"]
            && sa["isLeader"] == (leader == "node-a")
            && sb["isLeader"] == (leader == "node-b");
        agreed.then_some((leader, sa, sb))
    });
    for s in [&sa, &sb] {
        assert_eq!(s["cluster"], cluster.as_str(), "{s}");
        assert_eq!(s["connected"], true, "{s}");
        assert_eq!(s["etcd"]["healthy"], true, "{s}");
        assert!(s["etcd"]["revision"].as_i64().is_some_and(|r| r > 0), "{s}");
        assert!(s["etcd"]["raftLeader"].as_str().is_some(), "{s}");
        assert_eq!(s["etcd"]["endpoints"], serde_json::json!(endpoints), "{s}");
        assert!(s["term"].as_i64().is_some(), "{s}");
        assert_eq!(s["placements"], serde_json::json!({}), "{s}");
    }
    let (leading, following) = if leader == "node-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let text = stdout_of(&following.tend(&["cluster", "status"]));
    assert!(text.contains(&format!("leader: {leader} (term ")), "{text}");
    assert!(text.contains("this node follows") && text.contains("etcd: healthy"), "{text}");

    // `tend status` carries the cluster, in JSON and as a line.
    let status = following.json(&["status", "-o", "json"]).expect("status");
    let c = &status["agent"]["cluster"];
    assert_eq!(
        (c["name"].as_str(), c["leader"].as_str(), c["connected"].as_bool()),
        (Some(cluster.as_str()), Some(leader.as_str()), Some(true)),
        "{status}"
    );
    assert_eq!(c["isLeader"], false, "{status}");
    let text = stdout_of(&following.tend(&["status"]));
    let line = format!("cluster {cluster} as node {}: leader {leader}; connected", following.name);
    assert!(text.contains(&line), "no `{line}` in\n{text}");

    let m = leading.metrics();
    assert_eq!(metric(&m, "tend_cluster_leader"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "tend_cluster_connected"), Some(1.0), "{m}");
    assert!(metric(&m, r#"tend_etcd_request_duration_seconds_count{call="put"}"#).is_some_and(|n| n >= 1.0), "{m}");
    let m = following.metrics();
    assert_eq!(metric(&m, "tend_cluster_leader"), Some(0.0), "{m}");

    // The leader's agent stops: it resigns, and the other leads at once.
    leading.stop();
    let stopped = Instant::now();
    let (_, took) = wait_for("the other node to lead", JOIN_TIMEOUT, |last| {
        let s = following.json(&["cluster", "status", "-o", "json"])?;
        *last = s.to_string();
        (s["leader"] == following.name.as_str() && s["isLeader"] == true && s["leaderChanges"].as_u64()? >= 1)
            .then_some(())
    });
    eprintln!(
        "measured: {} led {took:?} after SIGTERM to the leader's agent ({:?} after it exited)",
        following.name,
        stopped.elapsed()
    );
    let (_, _) = wait_for("the stopped node to leave the members", JOIN_TIMEOUT, |last| {
        (member_names(following, last)? == [following.name.clone()]).then_some(())
    });
    let m = following.metrics();
    assert_eq!(metric(&m, "tend_cluster_leader"), Some(1.0), "{m}");
    assert!(metric(&m, "tend_cluster_leader_changes_total").is_some_and(|n| n >= 1.0), "{m}");

    // etcd loses its quorum: the survivor says so within its lease's TTL and a few
    // seconds, in `tend status`, `tend cluster status` and the metrics.
    etcd.kill(0);
    etcd.kill(1);
    let lost = Instant::now();
    let (error, took) = wait_for("the survivor to say it is not connected", JOIN_TIMEOUT, |last| {
        let s = following.json(&["status", "-o", "json"])?;
        let c = &s["agent"]["cluster"];
        *last = c.to_string();
        (c["connected"] == false).then(|| c["error"].as_str().map(str::to_string))?
    });
    eprintln!(
        "measured: quorum loss shown in `tend status` {took:?} after two of three etcd members were killed: {error}"
    );
    let t0 = Instant::now();
    let out = following.tend(&["cluster", "status", "-o", "json"]);
    let answered = t0.elapsed();
    eprintln!("measured: `tend cluster status` answered in {answered:?} with etcd's quorum lost");
    assert!(answered < Duration::from_secs(8), "{answered:?}");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let s: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(s["etcd"]["healthy"], false, "{s}");
    assert!(s["etcd"]["error"].as_str().is_some_and(|e| e.starts_with("etcd is unreachable")), "{s}");
    assert_eq!(s["connected"], false, "{s}");
    assert_eq!(s["leader"], following.name.as_str(), "the last view: {s}");
    assert_eq!(s["placements"], Value::Null, "{s}");
    let text = stdout_of(&following.tend(&["cluster", "status"]));
    assert!(text.contains("not connected to etcd") && text.contains("showing this node's last view"), "{text}");
    let out = following.tend(&["cluster", "members"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("etcd is unreachable"), "{}", stderr_of(&out));
    let m = following.metrics();
    assert_eq!(metric(&m, "tend_cluster_connected"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "tend_cluster_leader"), Some(0.0), "{m}");
    assert!(m.contains("tend_etcd_errors_total{"), "{m}");
    let text = stdout_of(&following.tend(&["status"]));
    assert!(text.contains("not connected (etcd unreachable or without quorum"), "{text}");
    eprintln!("measured: checks with the quorum lost took {:?}", lost.elapsed());
}

#[test]
fn the_cluster_commands_need_an_agent_in_a_cluster_and_say_so() {
    // No agent at all.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_tend"))
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .args(["cluster", "members"])
        .output()
        .expect("run tend");
    assert_eq!(out.status.code(), Some(1));
    let e = stderr_of(&out);
    assert!(e.contains("no agent answers on") && e.contains("none.sock"), "{e}");

    // An agent without a cluster block.
    let alone = Node::start("alone", None);
    wait_for("the agent to answer", JOIN_TIMEOUT, |last| {
        let s = alone.json(&["status", "-o", "json"])?;
        *last = s.to_string();
        s["agent"].is_object().then_some(())
    });
    let status = alone.json(&["status", "-o", "json"]).expect("status");
    assert!(status["agent"].get("cluster").is_none(), "{status}");
    for command in ["members", "status"] {
        let out = alone.tend(&["cluster", command]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let e = stderr_of(&out);
        assert!(e.contains("is not in a cluster: its configuration has no cluster block"), "{command}: {e}");
        assert!(stdout_of(&out).is_empty(), "{command}");
    }
    let m = alone.metrics();
    assert!(!m.contains("tend_cluster_") && !m.contains("tend_etcd_"), "{m}");
}
