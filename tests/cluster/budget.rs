//! The disruption budget of `tend maintain` against real etcd: two operators on two nodes
//! racing for the last slot — exactly one wins, the other is refused naming the holder;
//! and a member already down spends the budget by itself. The placement is written into
//! etcd as the leader would (member keys and assignments); no agent and no engine is needed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

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
    let mut args = vec!["maintain", "judi", "--specs", specs.to_str().expect("UTF-8"), "--"];
    args.extend_from_slice(command);
    tend(dir, &args)
}

/// `tend ARGS` on node `dir`, no agent running.
fn tend(dir: &Path, args: &[&str]) -> Child {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    Command::new(env!("CARGO_BIN_EXE_tend"))
        .env("TEND_AGENT_CONFIG", dir.join("agent.yaml"))
        .env("TEND_SOCKET", dir.join("no-agent.sock"))
        .args(["--scope", &format!("b{name}"), "--state-dir"])
        .arg(dir.join("state"))
        .arg("--lock-dir")
        .arg(dir.join("locks"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tend maintain starts")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("tend ends");
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

/// Writes the spec of `judi` with `replicas` (role judicator, `extra` in `placement`) into a
/// new spec directory under `root`.
fn specs(root: &Path, replicas: u32, extra: &str) -> std::path::PathBuf {
    let dir = root.join("specs");
    std::fs::create_dir_all(&dir).expect("specs dir");
    let spec = format!(
        "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: judi}}\nspec:\n  image: tend-demo/busybox:1\n  replicas: {replicas}\n  placement: {{role: judicator{extra}}}\n"
    );
    std::fs::write(dir.join("judi.yaml"), spec).expect("spec");
    dir
}

/// Member keys for `live` nodes, under a lease each (as their agents would hold them), and
/// `slots` (slot → node) of `judi` assigned.
fn place_at(etcd: &EtcdCluster, live: &[&str], slots: &[(u32, &str)]) {
    for (k, n) in slots {
        etcd.etcdctl_ok(&["put", &format!("/tend/budget/assign/{n}/judi/{k}"), "{}"]);
    }
    for n in live {
        let granted = etcd.etcdctl_ok(&["lease", "grant", "300"]);
        let lease = granted.split_whitespace().nth(1).expect("etcdctl names the lease").to_string();
        let record = format!(
            "{{\"node\":\"{n}\",\"roles\":[\"judicator\"],\"address\":null,\"version\":\"t\",\"startedMs\":0,\"drained\":false}}"
        );
        etcd.etcdctl_ok(&["put", &format!("--lease={lease}"), &format!("/tend/budget/members/{n}"), &record]);
    }
}

#[test]
fn a_window_over_two_instances_of_a_service_takes_two_slots() {
    let etcd = EtcdCluster::start("budget-two");
    let root = tempfile::tempdir().expect("temp dir");
    // 5 replicas, not spread: n1 runs two of them, and the budget is 2.
    let specs = specs(root.path(), 5, "");
    place_at(&etcd, &["n1", "n2", "n3"], &[(1, "n1"), (2, "n1"), (3, "n2"), (4, "n3"), (5, "n3")]);
    let n1 = node(root.path(), "n1", &etcd.endpoints());
    let n2 = node(root.path(), "n2", &etcd.endpoints());
    let window = maintain(&n1, &specs, &["sleep", "3"]);
    thread::sleep(Duration::from_millis(1500));
    // n1's window holds both slots: n2's is refused, though it takes down one instance.
    let (code, err) = finish(maintain(&n2, &specs, &["true"]));
    assert_ne!(code, 0, "a window opened beside one holding the whole budget: {err}");
    assert!(err.contains("2 instance(s) may be down at once, 0 already are, held by root@n1"), "{err}");
    let (code, err) = finish(window);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("took slot 1, 2 of the disruption budget of judi"), "{err}");
    // n3 runs two and the budget is 2, but one is taken: refused, all or none.
    let n3 = node(root.path(), "n3", &etcd.endpoints());
    let holder = maintain(&n2, &specs, &["sleep", "3"]);
    thread::sleep(Duration::from_millis(1500));
    let (code, err) = finish(maintain(&n3, &specs, &["true"]));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("and this node runs 2 of them"), "{err}");
    assert_eq!(finish(holder).0, 0);
    let left = etcd.etcdctl_ok(&["get", "--prefix", "/tend/budget/budget/", "--keys-only"]);
    assert!(left.trim().is_empty(), "a refused window left a slot taken: {left}");
}

#[test]
fn a_drain_holds_the_budget_for_the_instance_it_took_down_once() {
    let etcd = EtcdCluster::start("budget-drain");
    let root = tempfile::tempdir().expect("temp dir");
    // 5 replicas spread over n1..n5: a budget of 2.
    let specs = specs(root.path(), 5, ", spread: true");
    let all = ["n1", "n2", "n3", "n4", "n5"];
    place_at(&etcd, &all, &[(1, "n1"), (2, "n2"), (3, "n3"), (4, "n4"), (5, "n5")]);
    let dirs: Vec<_> = all.iter().map(|n| node(root.path(), n, &etcd.endpoints())).collect();
    let specs_arg = specs.to_str().expect("UTF-8");
    let (code, out) = finish(tend(&dirs[0], &["drain", "--specs", specs_arg]));
    assert_eq!(code, 0, "{out}");
    let held = etcd.etcdctl_ok(&["get", "/tend/budget/budget/judi/1", "-w", "fields"]);
    assert!(held.contains(r#"\"kind\":\"drain\""#) && !held.contains("\"Lease\" : 0"), "{held}");
    // The leader takes n1's slot off it; no other member can take it (spread): it is down,
    // for the drain that holds a slot of the budget already.
    etcd.etcdctl_ok(&["del", "/tend/budget/assign/n1/judi/1"]);
    // So one slot is left, not none: n2 may open a window.
    let (code, err) = finish(maintain(&dirs[1], &specs, &["true"]));
    assert_eq!(code, 0, "the drain's instance was counted twice: {err}");
    // A second drain takes it; then the budget is spent, naming both drains.
    let (code, out) = finish(tend(&dirs[2], &["drain", "--specs", specs_arg]));
    assert_eq!(code, 0, "{out}");
    let (code, err) = finish(maintain(&dirs[3], &specs, &["true"]));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("drain by root@n1") && err.contains("drain by root@n3"), "{err}");
    // A refused drain records nothing.
    let (code, out) = finish(tend(&dirs[4], &["drain", "--specs", specs_arg]));
    assert_ne!(code, 0, "{out}");
    assert!(
        !dirs[4].join("state/state.json").exists()
            || !std::fs::read_to_string(dirs[4].join("state/state.json")).unwrap_or_default().contains("\"drain\""),
        "the refused drain was recorded"
    );
}
