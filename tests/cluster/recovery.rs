//! The disaster-recovery walk of docs/cluster.md, end to end: three nodes whose etcd — the
//! one their agents coordinate through — runs as tend Services (one member per node, a
//! container of Debian's etcd binary bind-mounted into the test image, published on
//! loopback ports and reaching its peers through the Docker bridge's gateway), and a placed
//! service of role judicator on top. Two nodes are lost for good (agents killed, members and
//! their data gone): the survivor keeps everything running without quorum; its member is
//! re-initialised from its own data (`--force-new-cluster`, by a change of its spec, then
//! the flag taken out again); its agent leads again with the placement it had; two new
//! nodes are added member by member (`etcdctl member add`, then their agents start their
//! members with `--initial-cluster-state existing`), and the placed service runs on three
//! nodes again. The survivor's copy of the placed service is never restarted throughout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::agents::{Agent, service_yaml};
use crate::etcd::{self, free_port, run_with_timeout};
use crate::harness::{self, Env};

/// The agents' lease TTL.
const TTL_S: u64 = 5;

/// One node: its etcd member's ports and data, its spec directory, its agent.
struct Node {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    specs: PathBuf,
    agent: Agent,
}

/// How a member starts.
struct Start<'a> {
    /// `new` or `existing`.
    state: &'a str,
    /// The members of `--initial-cluster`, by index.
    cluster: &'a [usize],
    /// `--force-new-cluster`.
    force: bool,
}

struct Dr {
    nodes: Vec<Node>,
    gateway: String,
    judi: String,
    prefix: String,
    root: tempfile::TempDir,
}

impl Dr {
    fn new() -> Dr {
        harness::require_docker();
        etcd::require_etcd();
        let gateway = harness::docker_ok(&["network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}"])
            .trim()
            .to_string();
        let root = tempfile::Builder::new().prefix("tend-dr-").tempdir().expect("a temporary directory");
        let prefix = Env::new("dr").name("dr");
        let judi = format!("{prefix}-j");
        let nodes = Vec::new();
        let mut dr = Dr { nodes, gateway, judi, prefix, root };
        for k in 0..3 {
            let ports = (free_port(), free_port());
            dr.add_node(k, ports);
        }
        dr
    }

    /// A new node `nK` (no agent started yet): its directories and agent configuration.
    fn add_node(&mut self, k: usize, (client, peer): (u16, u16)) {
        let name = format!("n{k}");
        let dir = self.root.path().join(&name);
        let (data, specs) = (dir.join("etcd-data"), dir.join("specs"));
        std::fs::create_dir_all(&data).expect("the member's data directory");
        std::fs::create_dir_all(&specs).expect("the node's spec directory");
        let env = Env::new("dr");
        let config = env.state_path().join("agent.yaml");
        let log = env.state_path().join("agent.log");
        let agent = Agent { node: name.clone(), ns: None, config, log, child: None, env };
        let node = Node { name, client, peer, data, specs, agent };
        if k < self.nodes.len() {
            self.nodes[k] = node;
        } else {
            self.nodes.push(node);
        }
        self.write_config(k);
        let judi = service_yaml(&self.judi, 3, "")
            .replace("placement: {role: judicator}", "placement: {role: judicator, spread: true}");
        std::fs::write(self.nodes[k].specs.join("judi.yaml"), judi).expect("write the placed service");
    }

    fn write_config(&self, k: usize) {
        let n = &self.nodes[k];
        let endpoints =
            self.nodes.iter().map(|m| format!("\"http://127.0.0.1:{}\"", m.client)).collect::<Vec<_>>().join(", ");
        let text = format!(
            "source: {{dir: {}}}\ncluster:\n  name: dr\n  node: {}\n  roles: [judicator]\n  leaseTTL: {TTL_S}s\n  etcd: {{endpoints: [{endpoints}]}}\n",
            n.specs.display(),
            n.name
        );
        std::fs::write(&n.agent.config, text).expect("write the agent's configuration");
    }

    /// The member service's name on node `k`.
    fn member(&self, k: usize) -> String {
        format!("{}-etcd-{}", self.prefix, self.nodes[k].name)
    }

    /// Writes node `k`'s etcd member as a tend Service.
    fn write_member(&self, k: usize, start: &Start<'_>) {
        let n = &self.nodes[k];
        let gw = &self.gateway;
        let cluster = start
            .cluster
            .iter()
            .map(|&i| format!("{}=http://{gw}:{}", self.nodes[i].name, self.nodes[i].peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "etcd".to_string(),
            "--name".into(),
            n.name.clone(),
            "--data-dir".into(),
            "/data".into(),
            "--listen-client-urls".into(),
            "http://0.0.0.0:2379".into(),
            "--advertise-client-urls".into(),
            format!("http://{gw}:{}", n.client),
            "--listen-peer-urls".into(),
            "http://0.0.0.0:2380".into(),
            "--initial-advertise-peer-urls".into(),
            format!("http://{gw}:{}", n.peer),
            "--initial-cluster".into(),
            cluster,
            "--initial-cluster-state".into(),
            start.state.into(),
        ];
        if start.force {
            args.push("--force-new-cluster".into());
        }
        let command = args.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        let spec = format!(
            "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: {}}}\nspec:\n  image: {}\n  pullPolicy: never\n  \
             command: [{command}]\n  stopTimeout: 10s\n  ports: [\"{}:2379\", \"{}:2380\"]\n  volumes:\n    \
             - /usr/bin/etcd:/usr/bin/etcd:ro\n    - /lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro\n    \
             - /lib64:/lib64:ro\n    - {}:/data\n",
            self.member(k),
            harness::test_image(),
            n.client,
            n.peer,
            n.data.display()
        );
        let (tmp, path) = (n.specs.join(".member.yaml.tmp"), n.specs.join("member.yaml"));
        std::fs::write(&tmp, spec).expect("write the member's spec");
        std::fs::rename(&tmp, &path).expect("move the member's spec into place");
    }

    /// `etcdctl ARGS` against the members `via` (indexes).
    fn etcdctl(&self, via: &[usize], args: &[&str]) -> Result<String, String> {
        let endpoints =
            via.iter().map(|&i| format!("http://127.0.0.1:{}", self.nodes[i].client)).collect::<Vec<_>>().join(",");
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3").args(["--endpoints", &endpoints, "--command-timeout", "3s"]).args(args);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(10))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The started members of etcd, by name, as member `via` lists them.
    fn etcd_members(&self, via: usize) -> Option<Vec<String>> {
        let out = self.etcdctl(&[via], &["member", "list"]).ok()?;
        let mut names: Vec<String> =
            out.lines().filter_map(|l| l.split(", ").nth(2)).filter(|n| !n.is_empty()).map(String::from).collect();
        names.sort();
        Some(names)
    }

    /// The tend members etcd holds, as member `via` answers.
    fn tend_members(&self, via: &[usize]) -> Option<Vec<String>> {
        let out = self.etcdctl(via, &["get", "--prefix", "--keys-only", "/tend/dr/members/"]).ok()?;
        Some(
            out.lines()
                .filter(|l| !l.is_empty())
                .map(|l| l.trim_start_matches("/tend/dr/members/").to_string())
                .collect(),
        )
    }

    /// The running copies of the placed service: slot → (node, container ID).
    fn copies(&self) -> BTreeMap<u32, (String, String)> {
        let filter = format!("label=tend.name={}", self.judi);
        let format = r#"{{.ID}}	{{.Label "tend.scope"}}	{{.Label "tend.instance"}}"#;
        let out = harness::docker_ok(&["ps", "--no-trunc", "--filter", &filter, "--format", format]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let [id, scope, slot] = f[..] else { return None };
                let node = self.nodes.iter().find(|n| n.agent.env.scope == scope)?.name.clone();
                Some((slot.parse().ok()?, (node, id.to_string())))
            })
            .collect()
    }

    /// The ID of node `k`'s running member container.
    fn member_container(&self, k: usize) -> Option<String> {
        let filter = format!("label=tend.name={}", self.member(k));
        let out = harness::docker_ok(&["ps", "-q", "--no-trunc", "--filter", &filter]);
        out.lines().next().map(String::from)
    }

    /// Node `k`'s agent's view of its cluster (`tend status -o json`, `agent.cluster`).
    fn cluster_status(&self, k: usize) -> Value {
        let out = self.nodes[k].agent.env.tend(&["status", "-o", "json"]);
        serde_json::from_slice::<Value>(&out.stdout).map(|s| s["agent"]["cluster"].clone()).unwrap_or(Value::Null)
    }

    fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let t0 = Instant::now();
        loop {
            if let Some(v) = check(self) {
                eprintln!("measured: {what} after {:?}", t0.elapsed());
                return v;
            }
            if t0.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.dump());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn dump(&self) -> String {
        let mut s = format!("--- copies ---\n{:?}\n", self.copies());
        for (k, n) in self.nodes.iter().enumerate() {
            let logs = self.member_container(k).map(|id| {
                let out = Command::new("docker").args(["logs", "--tail", "15", &id]).output().ok();
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default()
            });
            s.push_str(&format!(
                "--- node {} (agent alive: {}) ---\nmember log tail:\n{}\nagent log tail:\n{}\n",
                n.name,
                n.agent.child.is_some(),
                logs.unwrap_or_else(|| "(no member container)".into()),
                n.agent.log_tail(20)
            ));
        }
        s
    }

    /// Loses node `k` for good: its agent killed, its containers and its member's data gone.
    fn lose(&mut self, k: usize) {
        self.nodes[k].agent.kill();
        let scope = self.nodes[k].agent.env.scope.clone();
        let ids = harness::docker_ok(&["ps", "-aq", "--filter", &format!("label=tend.scope={scope}")]);
        for id in ids.lines().filter(|l| !l.is_empty()) {
            harness::docker_ok(&["rm", "-f", id]);
        }
        std::fs::remove_dir_all(&self.nodes[k].data).expect("remove the member's data");
    }
}

impl Drop for Dr {
    fn drop(&mut self) {
        // The agents first (their Envs remove their containers), then the data.
        self.nodes.clear();
    }
}

#[test]
fn a_lost_etcd_quorum_is_recovered_from_one_member_as_the_docs_say() {
    let mut dr = Dr::new();
    // Bootstrap: every node's agent starts its member (a local service, applied without
    // etcd); once they have a quorum the agents join and the leader places the service.
    let all = [0, 1, 2];
    for k in all {
        dr.write_member(k, &Start { state: "new", cluster: &all, force: false });
        dr.nodes[k].agent.spawn();
    }
    dr.wait("a 3-member etcd run by tend", Duration::from_secs(90), |d| {
        (d.etcd_members(0)? == ["n0", "n1", "n2"] && d.etcdctl(&all, &["endpoint", "health"]).is_ok()).then_some(())
    });
    let before = dr.wait("three agents and three placed copies", Duration::from_secs(90), |d| {
        let copies = d.copies();
        (d.tend_members(&all)?.len() == 3 && copies.len() == 3).then_some(copies)
    });
    let (survivor_slot, (_, survivor_copy)) =
        before.iter().find(|(_, (node, _))| node == "n0").map(|(s, c)| (*s, c.clone())).expect("n0 runs a copy");
    let survivor_member = dr.member_container(0).expect("n0's member runs");

    // The disaster: n1 and n2 are lost for good. n0's member has no quorum.
    dr.lose(1);
    dr.lose(2);
    dr.wait("n0 to say it is cut off", Duration::from_secs(60), |d| {
        (d.cluster_status(0)["connected"] == false).then_some(())
    });
    // 1. Nothing local stops.
    thread::sleep(Duration::from_secs(TTL_S + 2));
    assert_eq!(dr.copies().get(&survivor_slot), Some(&("n0".to_string(), survivor_copy.clone())), "{}", dr.dump());
    assert_eq!(dr.member_container(0).as_ref(), Some(&survivor_member), "n0's member was restarted\n{}", dr.dump());

    // 2. A maintenance window still opens on the member, a local service (no budget is
    // needed), while one on the placed service is refused: its budget lives in etcd.
    let specs = dr.nodes[0].specs.to_str().expect("UTF-8").to_string();
    let member = dr.member(0);
    let t0 = Instant::now();
    let out = dr.nodes[0].agent.cli(&["maintain", &member, "--specs", &specs, "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a window on the member without quorum: {err}");
    assert!(err.contains("going on without the cluster"), "{err}");
    eprintln!("measured: a window on the member opened without quorum after {:?}", t0.elapsed());
    let out = dr.nodes[0].agent.cli(&["maintain", &dr.judi, "--specs", &specs, "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("etcd"), "a window on the placed service without quorum: {err}");

    // 3. Re-initialise etcd from the survivor's data: its spec says --force-new-cluster,
    // and its agent replaces the member (a local service: no quorum needed).
    dr.write_member(0, &Start { state: "new", cluster: &[0], force: true });
    dr.wait("a one-member etcd from n0's data", Duration::from_secs(60), |d| {
        (d.etcd_members(0)? == ["n0"] && d.etcdctl(&[0], &["endpoint", "health"]).is_ok()).then_some(())
    });
    // The flag comes out again at once: a member restarted with it would drop the others.
    dr.write_member(0, &Start { state: "new", cluster: &[0], force: false });
    dr.wait("n0's member without --force-new-cluster", Duration::from_secs(60), |d| {
        let id = d.member_container(0)?;
        // The container may be going as it is looked at (the agent replacing it): not yet.
        let inspected = harness::docker(&["inspect", "-f", "{{json .Args}}", &id]);
        let args = String::from_utf8_lossy(&inspected.stdout);
        let replaced = inspected.status.success() && !args.contains("force-new-cluster");
        (replaced && d.etcdctl(&[0], &["endpoint", "health"]).is_ok()).then_some(())
    });
    // 4. n0's agent is a member again and leads; the placement (kept with the data) is
    // where it was: its copy never moved, and was never restarted.
    dr.wait("n0 to lead a cluster of one", Duration::from_secs(60), |d| {
        let s = d.cluster_status(0);
        (s["connected"] == true && s["isLeader"] == true && d.tend_members(&[0])? == ["n0"]).then_some(())
    });
    assert_eq!(dr.copies().get(&survivor_slot), Some(&("n0".to_string(), survivor_copy.clone())), "{}", dr.dump());

    // 5. Scale back up, member by member: `etcdctl member add`, then the new node's agent
    // starts its member (`existing`, fresh data) and joins; the leader places a slot on it.
    for k in [1, 2] {
        let ports = (free_port(), free_port());
        dr.add_node(k, ports);
        for j in 0..dr.nodes.len() {
            dr.write_config(j);
        }
        let peer = format!("--peer-urls=http://{}:{}", dr.gateway, dr.nodes[k].peer);
        let name = dr.nodes[k].name.clone();
        // etcd refuses a member while the last one added has been connected for less than
        // 5 s ("unhealthy cluster"): tried again, as an operator would.
        let cluster_so_far: Vec<usize> = (0..k).collect();
        dr.wait(&format!("etcd to take {name} as a member"), Duration::from_secs(60), |d| {
            d.etcdctl(&cluster_so_far, &["member", "add", &name, &peer]).ok()
        });
        let cluster: Vec<usize> = (0..=k).collect();
        dr.write_member(k, &Start { state: "existing", cluster: &cluster, force: false });
        dr.nodes[k].agent.spawn();
        let want: Vec<String> = (0..=k).map(|i| format!("n{i}")).collect();
        dr.wait(&format!("{name}'s member to join etcd"), Duration::from_secs(90), |d| {
            (d.etcd_members(0)? == want && d.etcdctl(&cluster, &["endpoint", "health"]).is_ok()).then_some(())
        });
        dr.wait(&format!("{name} to join the tend cluster"), Duration::from_secs(60), |d| {
            (d.tend_members(&cluster)? == want).then_some(())
        });
    }
    let after = dr.wait("three placed copies again", Duration::from_secs(90), |d| {
        let copies = d.copies();
        let nodes: std::collections::BTreeSet<&String> = copies.values().map(|(n, _)| n).collect();
        (copies.len() == 3 && nodes.len() == 3).then_some(copies)
    });
    assert_eq!(after.get(&survivor_slot), Some(&("n0".to_string(), survivor_copy)), "{}", dr.dump());
}
