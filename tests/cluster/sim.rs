//! The fleet simulation's small run, in CI: `tend-sim` with 50 nodes against a real
//! 3-member etcd for a minute of steady state. A change that makes an idle node write to
//! etcd fails here: the check is a count of etcd's own writes (puts, deletes and
//! transactions, from its `/metrics`), never a time.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::etcd::{EtcdCluster, run_with_timeout};

/// Writes the steady minute may see at most, in all: none are expected (membership is
/// keep-alives, which are no writes, and nothing is polled); a few allow one node's
/// session to start over (its member key and candidacy written again).
const MAX_WRITES: f64 = 5.0;

#[test]
fn fifty_simulated_nodes_write_nothing_to_etcd_in_a_steady_minute() {
    let etcd = EtcdCluster::start("sim");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tend-sim"));
    cmd.args(["--nodes", "50", "--duration", "60s", "--lease-ttl", "5s", "-o", "json", "--etcd"])
        .arg(etcd.endpoints().join(","));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap_or_else(|e| panic!("tend-sim: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tend-sim failed: {stderr}");
    let figures: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("tend-sim's JSON: {e}: {stderr}"));
    eprintln!("measured: {figures}");
    assert_eq!(figures["nodes"], 50);
    assert_eq!(figures["slots"], 15, "5 placed services of 3 slots: {figures}");
    let writes = figures["writes"].as_f64().expect("writes");
    assert!(writes <= MAX_WRITES, "50 idle nodes wrote {writes} times to etcd in a minute: {figures}");
    // Every node renewed its lease (every TTL/3): the simulation ran for real.
    let renewals = figures["renewals_per_node_s"].as_f64().expect("renewals");
    assert!(renewals > 0.3, "the nodes did not renew their leases: {figures}");
}
