//! Real etcd clusters for tend's integration tests: N members (3 by default), each an
//! `etcd` child process (Debian's `etcd-server`, 3.4) with its own data directory, on
//! loopback with free ports or each in a network namespace of its own
//! (`tests/harness/netns.rs`, started through `ip netns exec`).
//!
//! Include it from an integration test target:
//!
//! ```ignore
//! #[path = "../harness/etcd.rs"]
//! mod etcd;
//!
//! #[test]
//! fn survives_a_member_kill() {
//!     let mut cluster = etcd::EtcdCluster::start("survives_a_member_kill");
//!     cluster.kill(0);
//!     cluster.wait_quorum(etcd::QUORUM_TIMEOUT);
//!     cluster.restart(0);
//!     cluster.wait_healthy(0, etcd::QUORUM_TIMEOUT);
//! }
//! ```
//!
//! Rules it follows, like `harness/mod.rs`:
//! - Tests fail, never skip: a missing `etcd` or `etcdctl` panics with the command that
//!   installs them ([`require_etcd`], called by every constructor), and so does a cluster
//!   that does not reach quorum in [`START_TIMEOUT`] (with the tail of each member's log).
//! - Every member is killed (SIGKILL) and reaped when the cluster is dropped, even when the
//!   test panicked; the data directories go with the temporary directory
//!   (`TEND_TEST_KEEP=1` keeps them, and the logs, for a look).
//! - No `etcdctl` call can hang a test: each one is killed after [`ETCDCTL_TIMEOUT`].
//!
//! What it observes goes through `etcdctl` (Debian's `etcd-client`), never through the code
//! under test. Only std, tempfile and serde_json are used here.

#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use crate::harness::{describe, run_with_timeout, stop_within};

/// The command that installs etcd (run from the repository root, as root).
pub const INSTALL_COMMAND: &str = "bash -c 'source scripts/lib.sh; ensure_etcd'";

/// How long a new cluster may take to elect a leader and answer a linearizable read.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long tests usually wait for a cluster (or a member) to be healthy again.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one `etcdctl` call may take before it is killed.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(10);

/// etcd's raft heartbeat, in milliseconds (etcd's default, stated so tests can reason on it).
pub const HEARTBEAT_MS: u64 = 100;

/// etcd's election timeout, in milliseconds (etcd's default): a follower that hears no
/// leader for this long starts an election.
pub const ELECTION_TIMEOUT_MS: u64 = 1000;

/// The client and peer ports of members in namespaces (each has its own port space).
const NS_CLIENT_PORT: u16 = 2379;
const NS_PEER_PORT: u16 = 2380;

static ETCD_CHECKED: OnceLock<()> = OnceLock::new();

/// Panics, loudly, unless `etcd` and `etcdctl` run. Checked once per test process.
pub fn require_etcd() {
    ETCD_CHECKED.get_or_init(|| {
        for (bin, arg) in [("etcd", "--version"), ("etcdctl", "version")] {
            match run_with_timeout(Command::new(bin).arg(arg), ETCDCTL_TIMEOUT) {
                Ok(out) if out.status.success() => {}
                Ok(out) => panic!(
                    "\n\n*** `{bin} {arg}` failed. ***\ntend's cluster tests need Debian's etcd-server and \
                     etcd-client (etcd 3.4); they never skip. Install them with:\n    {INSTALL_COMMAND}\n\n{}",
                    describe(&out)
                ),
                Err(e) => panic!(
                    "\n\n*** `{bin}` is not installed or does not run: {e} ***\ntend's cluster tests need \
                     Debian's etcd-server and etcd-client (etcd 3.4); they never skip. Install them with:\n    \
                     {INSTALL_COMMAND}\n"
                ),
            }
        }
    });
}

/// Where a member runs.
#[derive(Debug, Clone)]
pub enum Place {
    /// On 127.0.0.1 of the test's own network namespace, with free ports.
    Loopback,
    /// In the network namespace `ns`, listening on `ip` (ports 2379 and 2380).
    Namespace {
        /// The namespace's name (`ip netns`).
        ns: String,
        /// The member's address there.
        ip: String,
    },
}

/// One etcd member: its addresses, data directory, log and (while it runs) its process.
#[derive(Debug)]
pub struct Member {
    /// The member's name (`m0`, `m1`, …).
    pub name: String,
    /// The address it listens on.
    pub host: String,
    /// Its client port.
    pub client_port: u16,
    /// Its peer port.
    pub peer_port: u16,
    /// Its network namespace, when it runs in one.
    pub ns: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Member {
    /// Its client URL (`http://127.0.0.1:23791`).
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    /// Its peer URL.
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    /// Whether its process runs (it was started, not killed, and has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text =
            std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A command that runs `program` where this member runs (in its namespace, if any).
    pub fn command(&self, program: &str) -> Command {
        match &self.ns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, program]);
                cmd
            }
            None => Command::new(program),
        }
    }
}

/// A running etcd cluster; dropping it kills every member.
#[derive(Debug)]
pub struct EtcdCluster {
    /// A name unique to this test process, used as the cluster token.
    pub token: String,
    members: Vec<Member>,
    initial_cluster: String,
    dir: Option<TempDir>,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

impl EtcdCluster {
    /// Three members on loopback, started and with quorum.
    pub fn start(test: &str) -> Self {
        Self::start_at(test, &[Place::Loopback, Place::Loopback, Place::Loopback])
    }

    /// One member per place, started and with quorum. Panics (with every member's log)
    /// when the cluster does not answer a linearizable read within [`START_TIMEOUT`].
    pub fn start_at(test: &str, places: &[Place]) -> Self {
        require_etcd();
        assert!(!places.is_empty(), "an etcd cluster needs at least one member");
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let token = format!("tend-{}-{n}-{}", std::process::id(), short(test));
        let dir = temp_dir(&token);
        let mut members = Vec::new();
        for (i, place) in places.iter().enumerate() {
            let (host, client_port, peer_port, ns) = match place {
                Place::Loopback => ("127.0.0.1".to_string(), free_port(), free_port(), None),
                Place::Namespace { ns, ip } => (ip.clone(), NS_CLIENT_PORT, NS_PEER_PORT, Some(ns.clone())),
            };
            members.push(Member {
                name: format!("m{i}"),
                host,
                client_port,
                peer_port,
                ns,
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
                starts: 0,
            });
        }
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { token, members, initial_cluster, dir: Some(dir) };
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        let t0 = Instant::now();
        if !cluster.quorum_within(START_TIMEOUT) {
            panic!(
                "the etcd cluster {} did not reach quorum within {START_TIMEOUT:?}\n{}",
                cluster.token,
                cluster.logs()
            );
        }
        eprintln!(
            "etcd cluster {}: {} members up in {:?} ({})",
            cluster.token,
            places.len(),
            t0.elapsed(),
            cluster.endpoints().join(",")
        );
        cluster
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// Starts member `i`'s process (again, on its data directory).
    fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let token = self.token.clone();
        let m = &mut self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap_or_else(|e| panic!("cannot open the etcd log {}: {e}", m.log.display()));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("cannot clone the etcd log handle: {e}"));
        let mut cmd = m.command("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_TIMEOUT_MS.to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start etcd member {} ({cmd:?}): {e}", m.name));
        m.child = Some(child);
        m.starts += 1;
    }

    /// Kills member `i` with SIGKILL and reaps it (a crash, not a shutdown).
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut child) = m.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory (it rejoins; it does not wait).
    pub fn restart(&mut self, i: usize) {
        assert!(!self.members[i].is_running(), "member {i} still runs; kill it first");
        self.members[i].child = None;
        self.spawn(i);
    }

    /// Whether member `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].is_running()
    }

    /// `etcdctl ARGS...` against `endpoints`, where member `via` runs.
    pub fn etcdctl_via(&self, via: usize, endpoints: &[String], args: &[&str]) -> Result<Output, String> {
        let mut cmd = self.members[via].command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=2s"])
            .args(args);
        run_with_timeout(&mut cmd, ETCDCTL_TIMEOUT)
    }

    /// `etcdctl ARGS...` against every member, from member 0's place; panics unless it
    /// succeeded, and returns its stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        match self.etcdctl_via(0, &self.endpoints(), args) {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => panic!("etcdctl {args:?} failed\n{}", describe(&out)),
            Err(e) => panic!("etcdctl {args:?} did not run: {e}"),
        }
    }

    /// Whether member `i` answers a linearizable read (`etcdctl endpoint health`), which
    /// needs it to be up and part of a quorum.
    pub fn is_healthy(&self, i: usize) -> bool {
        matches!(self.etcdctl_via(i, &[self.endpoint(i)], &["endpoint", "health"]), Ok(out) if out.status.success())
    }

    /// Waits until member `i` is healthy; panics (with the logs) after `timeout`.
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        while !self.is_healthy(i) {
            if t0.elapsed() >= timeout {
                panic!("etcd member {i} was not healthy within {timeout:?}\n{}", self.logs());
            }
            thread::sleep(Duration::from_millis(100));
        }
        t0.elapsed()
    }

    /// Whether some running member answers a linearizable read (the cluster has quorum).
    pub fn has_quorum(&mut self) -> bool {
        (0..self.members.len()).any(|i| self.members[i].is_running() && self.is_healthy(i))
    }

    fn quorum_within(&mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            if self.has_quorum() {
                return true;
            }
            let exited: Vec<usize> = (0..self.members.len()).filter(|&i| !self.members[i].is_running()).collect();
            if exited.len() == self.members.len() || t0.elapsed() >= timeout {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the cluster has quorum again; returns how long that took, panics (with
    /// the logs) after `timeout`.
    pub fn wait_quorum(&mut self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        if !self.quorum_within(timeout) {
            panic!("the etcd cluster {} had no quorum within {timeout:?}\n{}", self.token, self.logs());
        }
        t0.elapsed()
    }

    /// The index of the member that is raft leader, as the running members report it.
    pub fn leader(&mut self) -> Option<usize> {
        let running: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].is_running()).collect();
        let &via = running.first()?;
        let endpoints: Vec<String> = running.iter().map(|&i| self.endpoint(i)).collect();
        let out = self.etcdctl_via(via, &endpoints, &["endpoint", "status", "-w", "json"]).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let statuses = v.as_array()?;
        let leader_id = statuses.iter().find_map(|s| s["Status"]["leader"].as_u64().filter(|&l| l != 0))?;
        statuses.iter().find_map(|s| {
            if s["Status"]["header"]["member_id"].as_u64() == Some(leader_id) {
                let ep = s["Endpoint"].as_str()?;
                self.members.iter().position(|m| m.client_url() == ep)
            } else {
                None
            }
        })
    }

    /// Every member's log tail, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- etcd member {} ({}) log tail ---\n{}", m.name, m.client_url(), m.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::env::var_os("TEND_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("TEND_TEST_KEEP: kept etcd data and logs in {}", dir.keep().display());
        }
    }
}

/// Where data directories go: `/dev/shm` when it is a writable directory (etcd fsyncs its
/// WAL on every write; on tmpfs that costs nothing), the temporary directory otherwise.
fn temp_dir(token: &str) -> TempDir {
    let shm = Path::new("/dev/shm");
    let prefix = format!("{token}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return dir;
    }
    builder.tempdir().unwrap_or_else(|e| panic!("cannot create a temporary directory for etcd: {e}"))
}

/// A short, name-safe form of a test name.
fn short(test: &str) -> String {
    test.chars().filter(|c| c.is_ascii_alphanumeric()).take(16).collect()
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A free TCP port on 127.0.0.1, below Linux's ephemeral range (32768 and up) so that no
/// outgoing connection takes it between this check and etcd's bind, and spread by process
/// id so that two test processes rarely try the same ones.
pub fn free_port() -> u16 {
    const LOW: u16 = 20000;
    const SPAN: u16 = 12000;
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id() % u32::from(SPAN / 40)) as u16 * 40,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = LOW + NEXT_PORT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {}", LOW + SPAN);
}
