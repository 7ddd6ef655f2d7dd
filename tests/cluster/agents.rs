//! Real tend agents in a cluster: every node is a `tend agent` process (the test binary's
//! sibling, as in tests/docker) with its own scope, state directory, socket, lock directory
//! and configuration file (`cluster:` with `leaseTTL: 5s`, `source: {dir}` on one spec
//! directory all nodes share), against a real 3-member etcd (`tests/harness/etcd.rs`) and
//! the real Docker engine (`tests/harness/mod.rs`). The nodes share that one engine; each
//! runs the slots placed on it as containers `SERVICE-SLOT` labelled with its own scope.
//!
//! What is observed goes through `etcdctl` (members, candidates for leadership,
//! assignments), `docker` (which scope runs which slot; start times from the engine's
//! `.State.StartedAt`, removals from `docker events`) and the agents' JSON logs, never
//! through the code under test. No test asserts a wall-clock duration: they assert counts
//! and order (and gaps between the engine's own timestamps, for pacing), and print what
//! they measured (`measured: …`; `-- --nocapture | grep measured`).
//!
//! Agents join one at a time (each waits for the previous one's member key), so the
//! placement is known: with `spread`, slot k lands on node n(k−1), and n0 leads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tempfile::TempDir;

use crate::harness;

use crate::etcd::{self, EtcdCluster, Place};
use crate::netns::Net;
use harness::Env;

/// The agents' lease TTL.
const TTL: Duration = Duration::from_secs(5);

/// The role every node has and every placed service asks for.
const ROLE: &str = "judicator";

/// The cluster's name (each test has an etcd of its own).
const CLUSTER: &str = "tc";

/// The service's command: sleeps, and exits at once on SIGTERM.
pub(super) const SLEEPER: &str = r#"["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]"#;

/// Slack on gaps between two of Docker's timestamps, for the agents' reaction times (each
/// node sees the leader's write on its own watch and starts its container on its own).
const PACING_SLACK: f64 = 1.0;

/// Seconds since the epoch, now (only printed, or compared with the engine's timestamps in
/// printed figures).
pub(super) fn now_s() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Seconds since the epoch of an RFC 3339 time (`2025-01-02T03:04:05.123456789Z`, or with
/// an offset), as Docker and tracing print them.
fn epoch_s(t: &str) -> f64 {
    let t = t.trim();
    let (date, rest) = t.split_once('T').unwrap_or_else(|| panic!("not an RFC 3339 time: {t:?}"));
    let num = |s: &str| s.parse::<i64>().unwrap_or_else(|_| panic!("not an RFC 3339 time: {t:?}"));
    let d: Vec<i64> = date.split('-').map(num).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    let cut = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(cut);
    let offset = match zone {
        "" | "Z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let hm: Vec<i64> = z[1..].split(':').map(num).collect();
            sign * (hm[0] * 3600 + hm.get(1).copied().unwrap_or(0) * 60)
        }
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let c: Vec<i64> = hms.split(':').map(num).collect();
    let frac: f64 = format!("0.{frac}").parse().unwrap_or(0.0);
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = if yy >= 0 { yy } else { yy - 399 } / 400;
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    (days * 86_400 + c[0] * 3600 + c[1] * 60 + c[2] - offset) as f64 + frac
}

/// Standard base64 (etcdctl's JSON output encodes keys and values so).
fn base64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A key of etcd as `etcdctl get -w json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    key: String,
    value: String,
    create_revision: i64,
    lease: i64,
}

/// A copy of a slot: a container of the service, on the node whose scope it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Copy {
    node: String,
    slot: u32,
    id: String,
    running: bool,
}

/// One node: a `tend agent` with its own scope (the [`Env`]), state, socket, locks and
/// configuration; killed with SIGKILL when dropped (the scope's containers go with the
/// `Env`).
pub(super) struct Agent {
    pub(super) node: String,
    /// The network namespace it runs in, if any.
    pub(super) ns: Option<String>,
    pub(super) config: PathBuf,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) env: Env,
}

impl Agent {
    pub(super) fn spawn(&mut self) {
        let file = File::options().create(true).append(true).open(&self.log).expect("open the agent's log");
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(harness::tend_bin());
                cmd
            }
            None => Command::new(harness::tend_bin()),
        };
        self.node_args(&mut cmd)
            .args(["agent", "--log-format", "json", "--config"])
            .arg(&self.config)
            .env("TEND_LOG", "info,tend=debug,tend::engine::etcd=info")
            .env("TEND_LOCK_DIR", self.env.lock_path())
            .env_remove("TEND_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the agent's log"))
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start the agent of {} ({cmd:?}): {e}", self.node));
        self.child = Some(child);
    }

    /// SIGKILL, and reaped: a crash of the agent (its containers run on).
    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the exit (a stop of the agent: its containers run on).
    pub(super) fn stop(&mut self) {
        let mut child = self.child.take().expect("the agent runs");
        if !etcd::stop_within(&mut child, Duration::from_secs(30)) {
            panic!("the agent of {} did not stop on SIGTERM\n{}", self.node, self.log_tail(30));
        }
    }

    /// Adds this node's state directory, scope and socket to a tend command line.
    fn node_args<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.arg("--state-dir")
            .arg(self.env.state_path())
            .arg("--scope")
            .arg(&self.env.scope)
            .arg("--socket")
            .arg(self.env.socket_path())
    }

    /// Runs `tend ARGS` on this node, as an operator would: its state, scope, socket and
    /// locks, and its agent configuration for the cluster (`TEND_AGENT_CONFIG`).
    pub(super) fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(harness::tend_bin());
        self.node_args(&mut cmd)
            .args(args)
            .env("TEND_AGENT_CONFIG", &self.config)
            .env("TEND_LOCK_DIR", self.env.lock_path())
            .env("TEND_LOG", "warn");
        etcd::run_with_timeout(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether its process still runs.
    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether it answers on its socket and has done a pass.
    pub(super) fn passed(&self) -> bool {
        let out = self.env.tend(&["status", "--output", "json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| s["agent"]["passes"].as_u64().unwrap_or(0) >= 1)
    }

    /// Its log, one JSON object a line (lines that are not JSON are left out).
    pub(super) fn log_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The log lines whose message is `message`.
    pub(super) fn logged(&self, message: &str) -> Vec<Value> {
        self.log_lines().into_iter().filter(|l| l["fields"]["message"] == message).collect()
    }

    /// The last `n` lines of its log, shortened to time, level, message and fields.
    pub(super) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => format!("{} {} {}", v["timestamp"].as_str().unwrap_or(""), v["level"], v["fields"]),
                Err(_) => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A service of the role: the test image, [`SLEEPER`], `replicas`, a 1 s stop timeout, and
/// `extra` lines under `spec:` (two spaces of indentation added).
pub(super) fn service_yaml(name: &str, replicas: u32, extra: &str) -> String {
    let mut doc = format!(
        "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {}\n  pullPolicy: never\n  \
         command: {SLEEPER}\n  replicas: {replicas}\n  stopTimeout: 1s\n  placement: {{role: {ROLE}}}\n",
        harness::test_image()
    );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        doc.push_str("  ");
        doc.push_str(line);
        doc.push('\n');
    }
    doc
}

/// Where the cluster's pieces run.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Agents and etcd members in the test's own network namespace (etcd on loopback).
    Loopback,
    /// Each etcd member and each agent in a namespace of its own on one bridge. The agents
    /// resync every 5 s: all nodes share one Docker engine, where a copy of a slot still
    /// running on a cut-off node holds the container's name, and its removal wakes no other
    /// node (a container of another scope is no event of theirs); on separate hosts there
    /// is no such wait.
    Namespaces,
}

/// A cluster under test: etcd, the shared spec directory, the agents. Dropped in field
/// order: the agents are killed first (their containers removed by scope), then etcd, then
/// the namespaces.
struct Cluster {
    agents: Vec<Agent>,
    etcd: EtcdCluster,
    net: Option<Net>,
    specs: TempDir,
    service: String,
    t0: Instant,
}

impl Cluster {
    /// A 3-member etcd and `n` agents n0…n(n−1) of role [`ROLE`], started one at a time
    /// (each once its member key is in etcd and it has done a pass), with the service of
    /// `replicas` and `extra` in their shared spec directory. Fails loudly when etcd, Docker
    /// or the namespaces cannot be set up.
    fn start(test: &str, layout: Layout, n: usize, replicas: u32, extra: &str) -> Cluster {
        harness::require_docker();
        etcd::require_etcd();
        let t0 = Instant::now();
        let (net, etcd) = match layout {
            Layout::Loopback => (None, EtcdCluster::start(test)),
            Layout::Namespaces => {
                let net = Net::new(test, 3 + n);
                let places: Vec<Place> =
                    (0..3).map(|i| Place::Namespace { ns: net.ns(i).to_string(), ip: net.ip(i).to_string() }).collect();
                let etcd = EtcdCluster::start_at(test, &places);
                (Some(net), etcd)
            }
        };
        let specs = tempfile::Builder::new().prefix("tend-cluster-specs-").tempdir().expect("a spec directory");
        let mut agents: Vec<Agent> = Vec::new();
        for i in 0..n {
            let env = Env::new(test);
            let node = format!("n{i}");
            let config = env.state_path().join("agent.yaml");
            let endpoints = etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
            std::fs::write(
                &config,
                format!(
                    "source: {{dir: {}}}\ncluster:\n  name: {CLUSTER}\n  node: {node}\n  roles: [{ROLE}]\n  \
                     leaseTTL: {}s\n  etcd: {{endpoints: [{endpoints}]}}\n",
                    specs.path().display(),
                    TTL.as_secs()
                ),
            )
            .expect("write the agent's configuration");
            if matches!(layout, Layout::Namespaces) {
                let mut f = File::options().append(true).open(&config).expect("the agent's configuration");
                std::io::Write::write_all(&mut f, b"resync: 5s\n").expect("write the agent's configuration");
            }
            let log = env.state_path().join("agent.log");
            let ns = net.as_ref().map(|net| net.ns(3 + i).to_string());
            agents.push(Agent { node, ns, config, log, child: None, env });
        }
        let service = agents.first().map(|a| a.env.name("j")).unwrap_or_else(|| "j".into());
        let cluster = Cluster { agents, etcd, net, specs, service, t0 };
        cluster.write_service(replicas, extra);
        let mut cluster = cluster;
        for i in 0..n {
            cluster.agents[i].spawn();
            let node = cluster.agents[i].node.clone();
            cluster.wait(&format!("{node} to join and do a pass"), Duration::from_secs(60), |c| {
                (c.members().contains(&node) && c.agents[i].passed()).then_some(())
            });
        }
        eprintln!("cluster of {n} agents up in {:?} (service {})", cluster.t0.elapsed(), cluster.service);
        cluster
    }

    /// Writes the service's spec (atomically) into the shared spec directory.
    fn write_service(&self, replicas: u32, extra: &str) {
        let path = self.specs.path().join("service.yaml");
        let tmp = self.specs.path().join(".service.yaml.tmp");
        std::fs::write(&tmp, service_yaml(&self.service, replicas, extra)).expect("write the spec");
        std::fs::rename(&tmp, &path).expect("move the spec into place");
    }

    /// The keys under `/tend/tc/<prefix>`; `None` when etcd did not answer.
    fn try_kvs(&self, prefix: &str) -> Option<Vec<Kv>> {
        let full = format!("/tend/{CLUSTER}/{prefix}");
        let out = self.etcd.etcdctl_via(0, &self.etcd.endpoints(), &["get", "--prefix", &full, "-w", "json"]).ok()?;
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let text = |v: &Value| String::from_utf8_lossy(&base64(v.as_str().unwrap_or_default())).into_owned();
        Some(
            v["kvs"]
                .as_array()
                .map(|kvs| {
                    kvs.iter()
                        .map(|kv| Kv {
                            key: text(&kv["key"]),
                            value: text(&kv["value"]),
                            create_revision: kv["create_revision"].as_i64().unwrap_or_default(),
                            lease: kv["lease"].as_i64().unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// As [`Cluster::try_kvs`]; panics when etcd does not answer.
    fn kvs(&self, prefix: &str) -> Vec<Kv> {
        self.try_kvs(prefix).unwrap_or_else(|| panic!("etcdctl get /tend/{CLUSTER}/{prefix} failed\n{}", self.dump()))
    }

    /// The member keys, by node: the nodes etcd holds as live.
    fn member_kvs(&self) -> BTreeMap<String, Kv> {
        let prefix = format!("/tend/{CLUSTER}/members/");
        self.kvs("members/").into_iter().map(|kv| (kv.key.trim_start_matches(&prefix).to_string(), kv)).collect()
    }

    fn members(&self) -> BTreeSet<String> {
        self.member_kvs().into_keys().collect()
    }

    /// The candidates for leadership (etcd's election keys), oldest first: the first is
    /// the leader. Each value is a node's name.
    fn candidates(&self) -> Vec<Kv> {
        let mut keys = self.kvs("leader/");
        keys.sort_by_key(|kv| kv.create_revision);
        keys
    }

    fn leader(&self) -> Option<String> {
        self.candidates().first().map(|kv| kv.value.clone())
    }

    /// The slots of the service placed in etcd: slot → node.
    fn assignments(&self) -> BTreeMap<u32, String> {
        let prefix = format!("/tend/{CLUSTER}/assign/");
        let mut out = BTreeMap::new();
        for kv in self.kvs("assign/") {
            let parts: Vec<&str> = kv.key.trim_start_matches(&prefix).split('/').collect();
            if let [node, service, slot] = parts[..]
                && service == self.service
                && let Ok(slot) = slot.parse()
            {
                let old = out.insert(slot, node.to_string());
                assert!(old.is_none(), "slot {slot} is assigned twice in etcd: {old:?} and {node}\n{}", self.dump());
            }
        }
        out
    }

    /// Every container of the service, on whichever node (scope) it is, by slot.
    fn copies(&self) -> Vec<Copy> {
        let filter = format!("label=tend.name={}", self.service);
        let format = r#"{{.ID}}	{{.Label "tend.scope"}}	{{.Label "tend.instance"}}	{{.State}}"#;
        let out = harness::docker_ok(&["ps", "-a", "--no-trunc", "--filter", &filter, "--format", format]);
        let mut copies: Vec<Copy> = out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let [id, scope, slot, state] = f[..] else { return None };
                let node = self.agents.iter().find(|a| a.env.scope == scope).map_or(scope, |a| a.node.as_str());
                Some(Copy {
                    node: node.to_string(),
                    slot: slot.parse().ok()?,
                    id: id.to_string(),
                    running: state == "running",
                })
            })
            .collect();
        copies.sort_by(|a, b| (a.slot, &a.node).cmp(&(b.slot, &b.node)));
        copies
    }

    /// When etcd places exactly `slots`, each slot's one container runs on the node it is
    /// assigned to, and no other container of the service exists: slot → its copy.
    fn settled(&self, slots: &[u32]) -> Option<BTreeMap<u32, Copy>> {
        let assigned = self.assignments();
        if assigned.keys().copied().collect::<Vec<_>>() != slots {
            return None;
        }
        let copies = self.copies();
        if copies.len() != slots.len() {
            return None;
        }
        let mut out = BTreeMap::new();
        for c in copies {
            if !c.running || assigned.get(&c.slot) != Some(&c.node) {
                return None;
            }
            out.insert(c.slot, c);
        }
        Some(out)
    }

    /// Polls `check` every 100 ms until it yields `Some` (returned with how long it took)
    /// or `timeout` passes (panics with `what` and the state of everything).
    fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Self) -> Option<T>) -> (T, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(v) = check(self) {
                return (v, t0.elapsed());
            }
            if t0.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.dump());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything a failure message should show.
    fn dump(&self) -> String {
        let mut s = String::new();
        let kvs = self.try_kvs("");
        s.push_str(&format!("--- etcd /tend/{CLUSTER}/ ---\n"));
        match kvs {
            Some(kvs) => {
                for kv in kvs {
                    s.push_str(&format!(
                        "{} = {} (create {}, lease {:x})\n",
                        kv.key, kv.value, kv.create_revision, kv.lease
                    ));
                }
            }
            None => s.push_str("(etcd did not answer)\n"),
        }
        s.push_str("--- containers ---\n");
        for c in self.copies() {
            s.push_str(&format!("{c:?}\n"));
        }
        const EVENTS: [&str; 10] = [
            "this node's lease is unconfirmed (etcd does not answer); waiting for it",
            "this node's lease is alive again",
            "campaigning or leading failed; campaigning again",
            "placement written",
            "joined the cluster",
            "leading the cluster",
            "cluster leader",
            "cluster session lost; retrying",
            "a member left the cluster (its lease ended)",
            "placed",
        ];
        for a in &self.agents {
            s.push_str(&format!("--- agent {} (scope {}): cluster events ---\n", a.node, a.env.scope));
            for l in a.log_lines().iter().filter(|l| EVENTS.iter().any(|e| l["fields"]["message"] == *e)) {
                s.push_str(&format!("{} {}\n", l["timestamp"].as_str().unwrap_or(""), l["fields"]));
            }
            s.push_str(&format!("--- agent {} log tail ---\n{}\n", a.node, a.log_tail(25)));
        }
        s
    }

    fn agent(&mut self, node: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.node == node).unwrap_or_else(|| panic!("no node {node}"))
    }

    /// The ID of each slot's copy.
    fn ids(copies: &BTreeMap<u32, Copy>) -> BTreeMap<u32, String> {
        copies.iter().map(|(slot, c)| (*slot, c.id.clone())).collect()
    }
}

/// `.State.StartedAt` of a container, in seconds since the epoch (the engine's clock).
fn started_at(id: &str) -> f64 {
    epoch_s(&harness::docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", id]))
}

/// How long the engine took from creating a container to starting it (`.Created` to
/// `.State.StartedAt`): one container start, as the benchmark's goals count it.
fn start_took(id: &str) -> f64 {
    started_at(id) - epoch_s(&harness::docker_ok(&["inspect", "-f", "{{.Created}}", id]))
}

/// The time (the engine's clock, seconds since the epoch) of each `event` Docker recorded
/// since `since` for the containers `names`, in order: `(name, time)`.
pub(super) fn docker_events(since: f64, names: &[String], event: &str) -> Vec<(String, f64)> {
    let mut args = vec![
        "events".to_string(),
        "--since".into(),
        format!("{since:.3}"),
        "--until".into(),
        format!("{:.3}", now_s()),
        "--filter".into(),
        "type=container".into(),
        "--filter".into(),
        format!("event={event}"),
        "--format".into(),
        "{{.Actor.Attributes.name}} {{.TimeNano}}".into(),
    ];
    for n in names {
        args.push("--filter".into());
        args.push(format!("container={n}"));
    }
    harness::docker_ok(&args)
        .lines()
        .filter_map(|l| {
            let (name, nanos) = l.split_once(' ')?;
            Some((name.to_string(), nanos.trim().parse::<f64>().ok()? / 1e9))
        })
        .collect()
}

/// One of etcd's counters (summed over its label sets), from member `i`'s `/metrics`.
fn etcd_counter(cluster: &Cluster, i: usize, name: &str) -> Option<f64> {
    let url = format!("{}/metrics", cluster.etcd.endpoint(i));
    let out = etcd::run_with_timeout(Command::new("curl").args(["-sf", &url]), Duration::from_secs(10)).ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[test]
fn agents_join_and_each_runs_one_slot_of_a_spread_service() {
    let c = Cluster::start("cl_join", Layout::Loopback, 3, 3, "");
    let (placed, took) = c.wait("one slot on each node", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    eprintln!("measured: 3 slots placed and running {took:?} after the last of 3 agents joined");
    let nodes: BTreeSet<&str> = placed.values().map(|c| c.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "a node runs two slots of a spread service: {placed:?}");
    assert_eq!(c.members(), BTreeSet::from(["n0".into(), "n1".into(), "n2".into()]));
    // One leader: every agent campaigns (one election key each), the oldest leads, and each
    // agent's last word on the leader names it.
    let candidates = c.candidates();
    assert_eq!(candidates.len(), 3, "one candidacy per agent: {candidates:?}");
    let leader = c.leader().expect("a leader");
    assert_eq!(leader, "n0", "the first agent to join leads");
    for a in &c.agents {
        let seen = a.logged("cluster leader");
        let last = seen.last().unwrap_or_else(|| panic!("{} never logged the leader\n{}", a.node, a.log_tail(30)));
        assert_eq!(last["fields"]["leader"], leader.as_str(), "{} sees another leader", a.node);
        let leads = !a.logged("leading the cluster").is_empty();
        assert_eq!(leads, a.node == leader, "{} led: {leads}", a.node);
    }
}

#[test]
fn idle_agents_write_almost_nothing_to_etcd() {
    let c = Cluster::start("cl_idle", Layout::Loopback, 3, 3, "");
    c.wait("one slot on each node", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    thread::sleep(Duration::from_secs(2));
    const WINDOW: Duration = Duration::from_secs(30);
    let names = [
        "etcd_mvcc_put_total",
        "etcd_mvcc_delete_total",
        "etcd_mvcc_txn_total",
        "etcd_server_proposals_committed_total",
    ];
    let read = || -> Vec<f64> {
        names.iter().map(|n| etcd_counter(&c, 0, n).unwrap_or_else(|| panic!("etcd has no metric {n}"))).collect()
    };
    let members = c.member_kvs();
    let before = read();
    thread::sleep(WINDOW);
    let after = read();
    // No session was lost: the same member keys under the same leases, and no agent said so.
    for a in &c.agents {
        let lost = a.logged("cluster session lost; retrying");
        assert!(lost.is_empty(), "{} lost its session while idle: {}\n{}", a.node, lost[0]["fields"], c.dump());
    }
    assert_eq!(c.member_kvs(), members, "membership changed while idle\n{}", c.dump());
    let per_node_s = |i: usize| (after[i] - before[i]) / 3.0 / WINDOW.as_secs_f64();
    for (i, n) in names.iter().enumerate() {
        eprintln!(
            "measured: {n}: {} in {WINDOW:?} with 3 idle agents = {:.3}/node/s",
            after[i] - before[i],
            per_node_s(i)
        );
    }
    // Keep-alives are not writes (etcd's leader renews leases without a raft entry): an idle
    // cluster puts, deletes and commits nothing.
    assert!(per_node_s(0) + per_node_s(1) + per_node_s(2) <= 0.1, "idle agents write to etcd\n{}", c.dump());
    assert!(per_node_s(3) <= 0.1, "idle agents make etcd commit raft entries\n{}", c.dump());
}

#[test]
fn a_lost_node_s_slot_is_placed_on_a_survivor_after_its_lease_runs_out() {
    let mut c = Cluster::start("cl_lostvm", Layout::Loopback, 4, 3, "");
    let (placed, _) = c.wait("3 slots on 3 of 4 nodes", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    assert_eq!(c.leader().as_deref(), Some("n0"));
    // n1 holds slot 2 and does not lead; n3 holds nothing.
    assert_eq!(placed[&2].node, "n1", "{placed:?}");
    let idle: Vec<&str> =
        ["n0", "n1", "n2", "n3"].into_iter().filter(|n| placed.values().all(|c| c.node != *n)).collect();
    assert_eq!(idle, ["n3"]);
    let before = Cluster::ids(&placed);
    // The VM is lost: its agent dies and its containers with it.
    let t_kill = now_s();
    let t0 = Instant::now();
    c.agent("n1").kill();
    c.agent("n1").env.cleanup();
    let (_, gone) =
        c.wait("n1's member key to go", TTL + Duration::from_secs(10), |c| (!c.members().contains("n1")).then_some(()));
    let (now, _) = c.wait("slot 2 to run on n3", Duration::from_secs(30), |c| c.settled(&[1, 2, 3]));
    let replaced = started_at(&now[&2].id) - t_kill;
    eprintln!(
        "measured: dead node seen (member key gone) {gone:?} after the kill (leaseTTL {TTL:?}); slot re-placed and \
         running {replaced:.2}s after the kill (by the container's StartedAt; its create-to-start {:.2}s); observed \
         at {:?}",
        start_took(&now[&2].id),
        t0.elapsed()
    );
    assert_eq!(now[&2].node, "n3", "the slot went to the member that had none");
    assert_eq!(Cluster::ids(&now)[&1], before[&1], "slot 1 was touched");
    assert_eq!(Cluster::ids(&now)[&3], before[&3], "slot 3 was touched");
    let leader = c.agent("n0");
    assert!(!leader.logged("a member left the cluster (its lease ended)").is_empty(), "{}", leader.log_tail(30));
}

#[test]
fn a_killed_leader_is_replaced_and_its_slot_placed_by_the_new_one() {
    let mut c = Cluster::start("cl_leader", Layout::Loopback, 4, 3, "");
    let (placed, _) = c.wait("3 slots on 3 of 4 nodes", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    assert_eq!(c.leader().as_deref(), Some("n0"));
    assert_eq!(placed[&1].node, "n0", "{placed:?}");
    let before = Cluster::ids(&placed);
    let t_kill = now_s();
    c.agent("n0").kill();
    c.agent("n0").env.cleanup();
    let (leader, failover) =
        c.wait("another node to lead", TTL + Duration::from_secs(10), |c| c.leader().filter(|l| l != "n0"));
    let (now, _) = c.wait("slot 1 to run on n3", Duration::from_secs(30), |c| c.settled(&[1, 2, 3]));
    let replaced = started_at(&now[&1].id) - t_kill;
    let new_leader = c.agent(&leader).logged("leading the cluster");
    let led_at =
        new_leader.last().and_then(|l| l["timestamp"].as_str()).map(epoch_s).expect("the new leader logged it");
    eprintln!(
        "measured: leader fail-over {failover:?} after the SIGKILL as etcd shows it, {:.2}s by the new leader's log \
         (leaseTTL {TTL:?}); the old leader's slot running again {replaced:.2}s after the kill (its create-to-start \
         {:.2}s)",
        led_at - t_kill,
        start_took(&now[&1].id)
    );
    assert_eq!(c.candidates().len(), 3, "one candidacy per live agent: {:?}", c.candidates());
    assert_eq!(now[&1].node, "n3");
    assert_eq!(Cluster::ids(&now)[&2], before[&2], "slot 2 was touched");
    assert_eq!(Cluster::ids(&now)[&3], before[&3], "slot 3 was touched");
    let leaders: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| c.agents.iter().any(|a| a.node == *n && !a.logged("leading the cluster").is_empty()))
        .collect();
    assert_eq!(leaders, [leader.as_str()], "exactly one survivor led");
}

#[test]
fn scaling_3_to_5_and_back_is_paced_across_the_cluster() {
    const INTERVAL: f64 = 4.0;
    let pace = "rollout: {interval: 4s, scaleDownInterval: 4s}";
    let c = Cluster::start("cl_scale", Layout::Loopback, 5, 3, pace);
    let (placed, _) = c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    // The first placement is paced too: the leader placed the slots one interval apart (its
    // log's times). The containers' start times are printed only: the first container of a
    // fresh agent takes longer to start than the next ones.
    let placed_at: Vec<f64> =
        c.agents[0].logged("placed").iter().map(|l| epoch_s(l["timestamp"].as_str().expect("a timestamp"))).collect();
    let initial: Vec<f64> = (1..=3).map(|k| started_at(&placed[&k].id)).collect();
    eprintln!(
        "measured: initial placements {:.2}s, {:.2}s apart; containers started {:.2}s, {:.2}s apart",
        placed_at[1] - placed_at[0],
        placed_at[2] - placed_at[1],
        initial[1] - initial[0],
        initial[2] - initial[1]
    );
    assert_eq!(placed_at.len(), 3, "the leader placed 3 slots\n{}", c.dump());
    for w in placed_at.windows(2) {
        assert!(w[1] - w[0] >= INTERVAL - 0.1, "slots placed too close: {placed_at:?}\n{}", c.dump());
    }
    // 3 → 5: slot 4, then slot 5 at least one interval later, each on a node of its own.
    c.write_service(5, pace);
    let (up, took) = c.wait("5 slots", Duration::from_secs(40), |c| c.settled(&[1, 2, 3, 4, 5]));
    assert_eq!(
        Cluster::ids(&up).into_iter().filter(|(k, _)| *k <= 3).collect::<BTreeMap<_, _>>(),
        Cluster::ids(&placed)
    );
    let nodes: BTreeSet<&str> = up.values().map(|c| c.node.as_str()).collect();
    assert_eq!(nodes.len(), 5, "spread: {up:?}");
    let (s4, s5) = (started_at(&up[&4].id), started_at(&up[&5].id));
    eprintln!("measured: 3 → 5 done in {took:?}; slot 5 started {:.2}s after slot 4 (interval 4s)", s5 - s4);
    assert!(s4 < s5, "slot 5 started before slot 4\n{}", c.dump());
    assert!(s5 - s4 >= INTERVAL - PACING_SLACK, "slots 4 and 5 started {:.2}s apart\n{}", s5 - s4, c.dump());
    // 5 → 3: slot 5 removed, then slot 4 at least one interval later.
    let since = now_s() - 1.0;
    c.write_service(3, pace);
    let (down, took) = c.wait("3 slots again", Duration::from_secs(40), |c| c.settled(&[1, 2, 3]));
    assert_eq!(Cluster::ids(&down), Cluster::ids(&placed), "slots 1 to 3 were touched");
    let names = [format!("{}-4", c.service), format!("{}-5", c.service)];
    let gone = docker_events(since, &names, "destroy");
    assert_eq!(gone.len(), 2, "one removal each of {names:?}: {gone:?}\n{}", c.dump());
    assert_eq!(gone[0].0, names[1], "the highest slot goes first: {gone:?}\n{}", c.dump());
    let gap = gone[1].1 - gone[0].1;
    eprintln!("measured: 5 → 3 done in {took:?}; slot 4 removed {gap:.2}s after slot 5 (scaleDownInterval 4s)");
    assert!(gap >= INTERVAL - PACING_SLACK, "slots 5 and 4 removed {gap:.2}s apart\n{}", c.dump());
}

#[test]
fn losing_an_etcd_member_changes_nothing_and_losing_quorum_stops_nothing() {
    const UNCONFIRMED: &str = "this node's lease is unconfirmed (etcd does not answer); waiting for it";
    const LOST: &str = "cluster session lost; retrying";
    let mut c = Cluster::start("cl_quorum", Layout::Loopback, 3, 3, "");
    let (placed, _) = c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    let ids = Cluster::ids(&placed);
    let members = c.member_kvs();
    let leader = c.leader();
    let said = |c: &Cluster, what: &str| -> usize { c.agents.iter().map(|a| a.logged(what).len()).sum() };
    assert_eq!(said(&c, LOST) + said(&c, UNCONFIRMED), 0);

    // One member (etcd's raft leader) killed: quorum kept, nothing changes — not a
    // container, not a member key (no session was lost, so none was written again).
    let first = c.etcd.leader().expect("etcd has a leader");
    c.etcd.kill(first);
    let t = c.etcd.wait_quorum(etcd::QUORUM_TIMEOUT);
    eprintln!("measured: etcd quorum back {t:?} after its leader (member {first}) was killed");
    thread::sleep(TTL * 2);
    let (now, _) = c.wait("3 slots", Duration::from_secs(5), |c| c.settled(&[1, 2, 3]));
    assert_eq!(Cluster::ids(&now), ids, "a container changed with one etcd member down\n{}", c.dump());
    assert_eq!(c.member_kvs(), members, "a member key was written again: a session was lost\n{}", c.dump());
    assert_eq!(c.leader(), leader, "{}", c.dump());
    assert_eq!(said(&c, LOST) + said(&c, UNCONFIRMED), 0, "{}", c.dump());

    // A second member killed: quorum lost. Every agent says so, and nothing local stops.
    let second = (0..3).find(|&i| i != first).expect("another member");
    c.etcd.kill(second);
    let t_lost = Instant::now();
    c.wait("every agent to say its lease is unconfirmed", TTL * 3, |c| {
        c.agents.iter().all(|a| !a.logged(UNCONFIRMED).is_empty()).then_some(())
    });
    eprintln!("measured: every agent said its lease was unconfirmed {:?} after quorum was lost", t_lost.elapsed());
    thread::sleep((TTL * 2).saturating_sub(t_lost.elapsed()));
    let copies = c.copies();
    assert_eq!(copies.len(), 3, "{copies:?}");
    for copy in &copies {
        assert!(copy.running, "{copy:?} stopped without etcd");
        assert_eq!(ids[&copy.slot], copy.id, "{copy:?} was replaced without etcd");
    }

    // Both members back: etcd gives every lease its full TTL again as it elects a leader,
    // so every agent's lease is alive again — the same member keys, never deleted — one
    // of them leads, and still nothing was stopped or replaced.
    c.etcd.restart(first);
    c.etcd.restart(second);
    let t_back = Instant::now();
    let t = c.etcd.wait_quorum(etcd::QUORUM_TIMEOUT);
    eprintln!("measured: etcd quorum back {t:?} after both members restarted");
    let (_, back) = c.wait("every agent's lease to be alive again", Duration::from_secs(60), |c| {
        c.agents.iter().all(|a| !a.logged("this node's lease is alive again").is_empty()).then_some(())
    });
    eprintln!("measured: every agent's lease alive again {:?} after quorum was back", t_back.elapsed().max(back));
    c.wait("one leader", Duration::from_secs(20), |c| c.leader());
    thread::sleep(TTL + Duration::from_secs(2));
    let (now, _) = c.wait("3 slots", Duration::from_secs(10), |c| c.settled(&[1, 2, 3]));
    assert_eq!(Cluster::ids(&now), ids, "a container was replaced around the loss of quorum\n{}", c.dump());
    assert_eq!(c.member_kvs(), members, "a member key went and came back around the loss of quorum\n{}", c.dump());
    assert_eq!(said(&c, LOST), 0, "an agent started its session over\n{}", c.dump());
    for a in &mut c.agents {
        assert!(a.alive(), "the agent of {} exited\n{}", a.node, a.log_tail(30));
    }
}

#[test]
fn a_partitioned_node_keeps_its_copy_until_it_reads_the_assignments_again() {
    let c = Cluster::start("cl_part", Layout::Namespaces, 4, 3, "");
    let (placed, _) = c.wait("3 slots on 3 of 4 nodes", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    assert_eq!(placed[&2].node, "n1", "{placed:?}");
    let ids = Cluster::ids(&placed);
    let net = c.net.as_ref().expect("namespaces");
    // n1 (agent 1, in namespace 3 + 1) is cut off from etcd and the other nodes.
    net.link_down(4);
    let t_cut = Instant::now();
    let (_, gone) =
        c.wait("n1's member key to go", TTL + Duration::from_secs(10), |c| (!c.members().contains("n1")).then_some(()));
    let (_, moved) = c.wait("slot 2 to be assigned to n3", Duration::from_secs(10), |c| {
        (c.assignments().get(&2).map(String::as_str) == Some("n3")).then_some(())
    });
    eprintln!("measured: partitioned node's lease gone {gone:?} after the cut; slot 2 re-assigned {moved:?} later");
    // onLostLease: keep — the cut-off node keeps its copy running. (n3 cannot start its own
    // copy meanwhile: every node here shares one Docker engine, where the name SERVICE-2 is
    // taken; on separate hosts both would run.)
    thread::sleep(Duration::from_secs(2));
    let copies = c.copies();
    let kept = copies.iter().find(|k| k.node == "n1").unwrap_or_else(|| panic!("n1's copy is gone: {copies:?}"));
    assert!(kept.running && kept.id == ids[&2], "n1 stopped or replaced its copy while cut off: {copies:?}");
    eprintln!("partitioned for {:?}; healing", t_cut.elapsed());
    // Healed: n1 joins again, reads that slot 2 is n3's, and stops its copy; n3 runs it.
    net.link_up(4);
    let t_heal = Instant::now();
    let (_, stopped) = c.wait("n1 to remove its copy", Duration::from_secs(45), |c| {
        c.copies().iter().all(|k| k.node != "n1").then_some(())
    });
    let (now, running) = c.wait("slot 2 to run on n3", Duration::from_secs(45), |c| c.settled(&[1, 2, 3]));
    eprintln!("measured: after the heal n1 removed its copy in {stopped:?}; n3 ran slot 2 after {running:?}");
    assert_eq!(now[&2].node, "n3");
    assert_eq!(now[&1].id, ids[&1]);
    assert_eq!(now[&3].id, ids[&3]);
    c.wait("n1 to join again", Duration::from_secs(30), |c| c.members().contains("n1").then_some(()));
    let _ = t_heal;
}

#[test]
fn a_restarted_agent_keeps_its_copy_running() {
    let mut c = Cluster::start("cl_restart", Layout::Loopback, 3, 3, "");
    let (placed, _) = c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    let ids = Cluster::ids(&placed);
    // An agent restarted (an upgrade, `systemctl restart tend`): its services keep running
    // while it is down, and it takes them back as they are.
    c.agent("n1").stop();
    // A stopped agent does not leave the cluster: its lease runs out unless it is back
    // within the TTL, so its slots stay where they are meanwhile.
    assert!(c.members().contains("n1"), "n1's member key went with its agent's stop\n{}", c.dump());
    c.agent("n1").spawn();
    c.wait("n1 to be back", Duration::from_secs(30), |c| {
        (c.members().contains("n1") && c.agents[1].passed()).then_some(())
    });
    thread::sleep(TTL + Duration::from_secs(2));
    let (now, _) = c.wait("3 slots", Duration::from_secs(10), |c| c.settled(&[1, 2, 3]));
    assert_eq!(Cluster::ids(&now), ids, "a copy was stopped or replaced around an agent's restart\n{}", c.dump());
    // The leader, too: another node leads meanwhile, and n0's copy is left alone.
    let t_stop = Instant::now();
    c.agent("n0").stop();
    // The leader resigned as it stopped: the next candidate leads at once, not a TTL later.
    let stopped = t_stop.elapsed();
    let candidates = c.candidates();
    assert_eq!(candidates.len(), 2, "the stopped leader's candidacy is still there: {candidates:?}");
    assert_ne!(candidates[0].value, "n0");
    eprintln!(
        "measured: {} led as soon as the leader's agent had stopped ({stopped:?} after the SIGTERM)",
        candidates[0].value
    );
    c.agent("n0").spawn();
    c.wait("n0 to be back", Duration::from_secs(30), |c| {
        (c.members().contains("n0") && c.agents[0].passed()).then_some(())
    });
    thread::sleep(TTL + Duration::from_secs(2));
    let (now, _) = c.wait("3 slots", Duration::from_secs(10), |c| c.settled(&[1, 2, 3]));
    assert_eq!(Cluster::ids(&now), ids, "a copy was stopped or replaced around the leader's restart\n{}", c.dump());
    assert_eq!(c.candidates().len(), 3, "{:?}", c.candidates());
}

#[test]
fn an_agent_restarted_while_etcd_has_no_quorum_keeps_its_copy_running() {
    let mut c = Cluster::start("cl_restart_noq", Layout::Loopback, 3, 3, "");
    let (placed, _) = c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    let ids = Cluster::ids(&placed);
    c.etcd.kill(0);
    c.etcd.kill(1);
    c.agent("n1").stop();
    c.agent("n1").spawn();
    c.wait("n1's first pass", Duration::from_secs(30), |c| c.agents[1].passed().then_some(()));
    thread::sleep(TTL);
    let copies = c.copies();
    assert_eq!(copies.len(), 3, "{copies:?}\n{}", c.dump());
    for copy in &copies {
        assert!(copy.running && ids[&copy.slot] == copy.id, "{copy:?} stopped without etcd\n{}", c.dump());
    }
    // etcd back: n1 joins again and still runs its copy.
    c.etcd.restart(0);
    c.etcd.restart(1);
    c.etcd.wait_quorum(etcd::QUORUM_TIMEOUT);
    c.wait("n1 to join again", Duration::from_secs(60), |c| {
        c.try_kvs("members/")?.iter().any(|kv| kv.key.ends_with("/n1")).then_some(())
    });
    thread::sleep(TTL + Duration::from_secs(2));
    let (now, _) = c.wait("3 slots", Duration::from_secs(30), |c| c.settled(&[1, 2, 3]));
    assert_eq!(Cluster::ids(&now), ids, "a copy was replaced\n{}", c.dump());
}

#[test]
fn pacing_holds_across_a_change_of_leader() {
    const INTERVAL: f64 = 4.0;
    let pace = "rollout: {interval: 4s, scaleDownInterval: 4s}";
    let mut c = Cluster::start("cl_pace_leader", Layout::Loopback, 3, 1, pace);
    let (placed, _) = c.wait("slot 1", Duration::from_secs(30), |c| c.settled(&[1]));
    assert_eq!(placed[&1].node, "n0");
    // 1 → 3: as soon as the leader has placed slot 2, it stops (and resigns: n1 leads at
    // once) and comes back. The new leader places slot 3 one interval after slot 2 all the
    // same.
    c.write_service(3, pace);
    c.wait("slot 2 to be placed", Duration::from_secs(20), |c| c.assignments().contains_key(&2).then_some(()));
    c.agent("n0").stop();
    c.agent("n0").spawn();
    let (up, _) = c.wait("3 slots", Duration::from_secs(40), |c| c.settled(&[1, 2, 3]));
    assert_eq!(up[&1].id, placed[&1].id, "slot 1 was touched\n{}", c.dump());
    assert_ne!(c.leader().as_deref(), Some("n0"), "another node leads\n{}", c.dump());
    let (s2, s3) = (started_at(&up[&2].id), started_at(&up[&3].id));
    eprintln!("measured: slot 3 started {:.2}s after slot 2, across a change of leader (interval 4s)", s3 - s2);
    assert!(s3 - s2 >= INTERVAL - PACING_SLACK, "slots 2 and 3 started {:.2}s apart\n{}", s3 - s2, c.dump());
}

/// `tend drain` on node `n` of `c` (through its agent), with the shared spec set.
fn drain(c: &Cluster, n: usize) -> (bool, String) {
    let specs = c.specs.path().to_str().expect("a UTF-8 path").to_string();
    let out = c.agents[n].cli(&["drain", "--reason", "kernel", "--specs", &specs]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The slots of the service's disruption budget in etcd, with the lease each lives under.
fn budget_slots(c: &Cluster) -> Vec<Kv> {
    c.kvs(&format!("budget/{}/", c.service))
}

#[test]
fn a_drain_takes_a_slot_of_the_disruption_budget_and_two_at_once_are_refused() {
    let mut c = Cluster::start("cl_drain", Layout::Loopback, 3, 3, "");
    c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    // 3 replicas may lose one at a time: n1's drain takes the one slot of the budget, under
    // n1's membership lease.
    let (ok, out) = drain(&c, 1);
    assert!(ok, "the first drain is refused: {out}");
    assert!(out.contains("took slot 1 of the disruption budget"), "{out}");
    let held = budget_slots(&c);
    let n1_lease = c.member_kvs()["n1"].lease;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].lease, n1_lease, "the drain's slot is not under n1's lease\n{}", c.dump());
    assert!(held[0].value.contains(r#""kind":"drain""#), "{held:?}");
    // Its member record says drained (`tend cluster members` shows it so).
    c.wait("n1's member record to say drained", Duration::from_secs(30), |c| {
        c.member_kvs()["n1"].value.contains(r#""drained":true"#).then_some(())
    });
    // Its slot has nowhere to go (spread, and every other member runs one): it is down, and
    // the drain holds the budget for it — a second drain is refused, naming the first.
    c.wait("n1's slot to be taken off it", Duration::from_secs(30), |c| {
        (!c.assignments().values().any(|n| n == "n1") && !c.copies().iter().any(|k| k.node == "n1" && k.running))
            .then_some(())
    });
    let (ok, out) = drain(&c, 2);
    assert!(!ok, "a second drain went through while the budget is spent: {out}");
    assert!(out.contains("is spent") && out.contains("held by drain by "), "the refusal names the drain: {out}");
    assert!(out.contains("@n1 since"), "{out}");
    let state: Value = serde_json::from_slice(&c.agents[2].env.tend(&["status", "-o", "json"]).stdout).expect("JSON");
    assert!(state["drain"].is_null(), "the refused drain was recorded: {state}");
    // An agent restarted while its node is drained keeps the drain's slot: moved under its
    // new lease, it outlives the old one.
    c.agent("n1").stop();
    c.agent("n1").spawn();
    c.wait("n1 back under a new lease", Duration::from_secs(30), |c| {
        c.member_kvs().get("n1").is_some_and(|m| m.lease != n1_lease).then_some(())
    });
    thread::sleep(TTL + Duration::from_secs(2));
    let held = budget_slots(&c);
    assert_eq!(held.len(), 1, "the drain's slot went with the old lease\n{}", c.dump());
    assert_eq!(held[0].lease, c.member_kvs()["n1"].lease);
    // Undrained, n1's agent gives the slot back and n1 runs its slot again; now n2 may drain.
    let out = c.agents[1].cli(&["undrain"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait("the drain's slot given back", Duration::from_secs(30), |c| budget_slots(c).is_empty().then_some(()));
    assert!(c.member_kvs()["n1"].value.contains(r#""drained":false"#), "{}", c.dump());
    c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    let (ok, out) = drain(&c, 2);
    assert!(ok, "the drain after the undrain is refused: {out}");
}

/// A health check that fails once and passes from its second run on: an instance is
/// healthy about two seconds after it starts.
const SLOW_HEALTH: &str = r#"healthcheck: {command: [sh, -c, "test -f /tmp/seen || { touch /tmp/seen; exit 1; }"], interval: 1s, timeout: 1s, retries: 5}"#;

/// Whether the engine holds container `id` healthy now.
fn healthy(id: &str) -> bool {
    harness::docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", id]).trim() == "healthy"
}

/// When the engine first said container `id` healthy (its `health_status` event) since
/// `since`, in seconds since the epoch. (Not from `.State.Health.Log`: it keeps the last
/// five checks only.)
fn became_healthy(since: f64, id: &str) -> Option<f64> {
    docker_events(since, &[id.to_string()], "health_status").first().map(|(_, t)| *t)
}

#[test]
fn a_changed_spec_is_replaced_one_node_at_a_time_each_awaited_healthy() {
    let c = Cluster::start("cl_turns", Layout::Loopback, 3, 3, &format!("{SLOW_HEALTH}\nenv: {{V: \"1\"}}"));
    let (old, _) = c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    let old_ids = Cluster::ids(&old);
    let since = now_s();
    c.write_service(3, &format!("{SLOW_HEALTH}\nenv: {{V: \"2\"}}"));
    // Every copy replaced, and healthy.
    let (new, took) = c.wait("every copy replaced and healthy", Duration::from_secs(120), |c| {
        let now = c.settled(&[1, 2, 3])?;
        let replaced = now.iter().all(|(slot, copy)| old_ids[slot] != copy.id && healthy(&copy.id));
        replaced.then_some(now)
    });
    eprintln!("measured: 3 nodes replaced one at a time, each awaited healthy, in {took:?}");
    // Each node stopped its old copy only after the previous node's new copy was healthy
    // (the engine's timestamps): never two of the three down at once.
    let died = docker_events(since, &old.values().map(|c| c.id.clone()).collect::<Vec<_>>(), "die");
    let mut steps: Vec<(f64, f64, String)> = new
        .iter()
        .map(|(slot, copy)| {
            let stopped = died
                .iter()
                .find(|(name, _)| name.ends_with(&format!("-{slot}")))
                .map(|(_, t)| *t)
                .unwrap_or_else(|| panic!("no die event of slot {slot}'s old copy: {died:?}\n{}", c.dump()));
            (stopped, became_healthy(since, &copy.id).expect("a health_status event"), copy.node.clone())
        })
        .collect();
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!("measured: (old copy stopped, new copy healthy, node): {steps:?}");
    for pair in steps.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "{} stopped its copy at {:.3}, before {}'s new copy was healthy at {:.3}\n{}",
            pair[1].2,
            pair[1].0,
            pair[0].2,
            pair[0].1,
            c.dump()
        );
    }
    // Every turn was given back.
    c.wait("the turns given back", Duration::from_secs(30), |c| budget_slots(c).is_empty().then_some(()));
}

#[test]
fn a_rollout_waits_while_a_member_is_down() {
    let mut c = Cluster::start("cl_turns_down", Layout::Loopback, 3, 3, "env: {V: \"1\"}");
    let (old, _) = c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    // n2 is lost: its agent killed, its copy gone. With spread, no other member can take its
    // slot: one of three is down, which is all the budget allows.
    c.agent("n2").kill();
    harness::docker_ok(&["rm", "-f", &old[&3].id]);
    c.wait("n2's lease to run out", Duration::from_secs(30), |c| (!c.members().contains("n2")).then_some(()));
    c.write_service(3, "env: {V: \"2\"}");
    // The survivors see the change and wait for a turn they cannot get: their copies stay.
    c.wait("the survivors to wait for their turn", Duration::from_secs(30), |c| {
        c.agents[..2].iter().all(|a| !a.logged("waiting for this node's rollout turn").is_empty()).then_some(())
    });
    let now: BTreeMap<u32, String> = c.copies().iter().filter(|k| k.running).map(|k| (k.slot, k.id.clone())).collect();
    assert_eq!(now.get(&1), Some(&old[&1].id), "n0 replaced its copy while a member was down\n{}", c.dump());
    assert_eq!(now.get(&2), Some(&old[&2].id), "n1 replaced its copy while a member was down\n{}", c.dump());
    // n2 is back: its slot runs again (on the new spec), then the others take their turns.
    c.agent("n2").spawn();
    c.wait("every copy replaced", Duration::from_secs(120), |c| {
        let now = c.settled(&[1, 2, 3])?;
        now.iter().all(|(slot, copy)| old[slot].id != copy.id).then_some(())
    });
}

#[test]
fn an_unhealthy_instance_on_another_node_spends_the_budget() {
    let health = "healthcheck: {command: [sh, -c, \"test ! -f /tmp/sick\"], interval: 1s, timeout: 1s, retries: 1}";
    let c = Cluster::start("cl_unready", Layout::Loopback, 3, 3, health);
    let (copies, _) = c.wait("3 slots", Duration::from_secs(60), |c| c.settled(&[1, 2, 3]));
    c.wait("3 healthy copies", Duration::from_secs(30), |_| copies.values().all(|k| healthy(&k.id)).then_some(()));
    let specs = c.specs.path().to_str().expect("UTF-8").to_string();
    let maintain = |n: usize| {
        let out = c.agents[n].cli(&["maintain", &c.service, "--specs", &specs, "--", "true"]);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // n1's copy fails its health check: n1 says so in etcd, and n0's window is refused,
    // the budget of one being spent by it.
    harness::docker_ok(&["exec", &copies[&2].id, "touch", "/tmp/sick"]);
    let unready = format!("unready/{}/n1", c.service);
    c.wait("n1 to say its copy is not ready", Duration::from_secs(30), |c| {
        c.kvs(&unready).first().is_some_and(|kv| kv.value == "1").then_some(())
    });
    let (ok, err) = maintain(0);
    assert!(!ok && err.contains("1 instance(s) may be down at once, 1 already are"), "{err}");
    // Healthy again: the key goes, and the window opens.
    harness::docker_ok(&["exec", &copies[&2].id, "rm", "/tmp/sick"]);
    c.wait("n1's key to go", Duration::from_secs(30), |c| c.kvs(&unready).is_empty().then_some(()));
    let (ok, err) = maintain(0);
    assert!(ok, "{err}");
}
