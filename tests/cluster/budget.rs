//! The disruption budget of `tend maintain` against real etcd: two operators on two nodes
//! racing for the last slot — exactly one wins, the other is refused naming the holder;
//! and a member already down spends the budget by itself. The placement is written into
//! etcd as the leader would (member keys and assignments); no agent and no engine is needed.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::etcd::EtcdCluster;

const SPEC: &str = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: judi}\nspec:\n  image: tend-demo/busybox:1\n  replicas: 3\n  placement: {role: judicator}\n";

/// A node's directories and agent configuration (no agent runs).
fn node(root: &Path, name: &str, endpoints: &[String]) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    let list = endpoints.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    let config = format!(
        "scope: b{name}\nstateDir: {}\nsource: {{dir: {}}}\ncluster:\n  name: budget\n  node: {name}\n  roles: [judicator]\n  leaseTTL: 5s\n  etcd: {{endpoints: [{list}]}}\n",
        dir.join("state").display(),
        root.join("specs").display(),
    );
    std::fs::write(dir.join("agent.yaml"), config).expect("config");
    dir
}

/// `tend maintain judi -- COMMAND` on node `dir`.
fn maintain(dir: &Path, specs: &Path, command: &[&str]) -> Child {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    Command::new(env!("CARGO_BIN_EXE_tend"))
        .env("TEND_AGENT_CONFIG", dir.join("agent.yaml"))
        .env("TEND_SOCKET", dir.join("no-agent.sock"))
        .args(["--scope", &format!("b{name}"), "--state-dir"])
        .arg(dir.join("state"))
        .arg("--lock-dir")
        .arg(dir.join("locks"))
        .args(["maintain", "judi", "--specs"])
        .arg(specs)
        .arg("--")
        .args(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tend maintain starts")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("tend maintain ends");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Places slot k of `judi` on node-k (k = 1..=3) with a member key for each live node.
fn place(etcd: &EtcdCluster, live: &[&str]) {
    for (k, n) in ["n1", "n2", "n3"].iter().enumerate() {
        etcd.etcdctl_ok(&["put", &format!("/tend/budget/assign/{n}/judi/{}", k + 1), "{}"]);
    }
    for n in live {
        let record = format!(
            "{{\"node\":\"{n}\",\"roles\":[\"judicator\"],\"address\":null,\"version\":\"t\",\"startedMs\":0,\"drained\":false}}"
        );
        etcd.etcdctl_ok(&["put", &format!("/tend/budget/members/{n}"), &record]);
    }
}

#[test]
fn two_operators_racing_for_the_last_slot_exactly_one_wins() {
    let etcd = EtcdCluster::start("budget-race");
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join("specs")).expect("specs dir");
    std::fs::write(root.path().join("specs/judi.yaml"), SPEC).expect("spec");
    place(&etcd, &["n1", "n2", "n3"]);
    let specs = root.path().join("specs");
    let nodes: Vec<_> = ["n1", "n2"].iter().map(|n| node(root.path(), n, &etcd.endpoints())).collect();
    // The budget of 3 replicas is 1: both start at once, each holding its window 3 s.
    let children: Vec<Child> = nodes.iter().map(|d| maintain(d, &specs, &["sleep", "3"])).collect();
    let results: Vec<(i32, String)> = children.into_iter().map(finish).collect();
    let winners = results.iter().filter(|(code, _)| *code == 0).count();
    assert_eq!(winners, 1, "exactly one window opens: {results:?}");
    let (_, refused) = results.iter().find(|(code, _)| *code != 0).expect("one refused");
    assert!(
        refused.contains("disruption budget of judi is spent") && refused.contains("held by root@n"),
        "the refusal names the holder: {refused}"
    );
    // The winner's slot is given back: the next window opens.
    let (code, err) = finish(maintain(&nodes[1], &specs, &["true"]));
    assert_eq!(code, 0, "{err}");
    assert!(etcd.etcdctl_ok(&["get", "--prefix", "/tend/budget/budget/", "--keys-only"]).trim().is_empty());
}

#[test]
fn a_member_already_down_spends_the_budget() {
    let etcd = EtcdCluster::start("budget-down");
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join("specs")).expect("specs dir");
    std::fs::write(root.path().join("specs/judi.yaml"), SPEC).expect("spec");
    // n3 holds slot 3 but has no member key: it is down.
    place(&etcd, &["n1", "n2"]);
    let dir = node(root.path(), "n1", &etcd.endpoints());
    let (code, err) = finish(maintain(&dir, &root.path().join("specs"), &["true"]));
    assert_ne!(code, 0, "refused: {err}");
    assert!(err.contains("1 instance(s) may be down at once, 1 already are"), "{err}");
}
