//! Network namespaces for tend's cluster tests: N "nodes", each a namespace with one
//! interface (`eth0`, an address in 10.231.K.0/24) on a bridge, so that tests can run etcd
//! members and clients on separate "machines" and cut one off.
//!
//! Isolation: the bridge itself lives in a namespace of its own (the "hub"), so nothing is
//! added to the test's own network namespace: no interface, no address, no route. The
//! 10.231.K.0/24 addresses exist only inside the namespaces a [`Net`] creates, and traffic
//! between them never leaves the hub. Dropping the [`Net`] deletes every namespace it made,
//! which removes the veth pairs and the bridge with them; namespaces left behind by a test
//! process that died are deleted by the next [`Net::new`].
//!
//! ```ignore
//! #[path = "../harness/netns.rs"]
//! mod netns;
//!
//! let net = netns::Net::new("partition", 4);
//! net.link_down(3);              // node 3's port on the bridge goes down: packets to and
//! net.link_up(3);                // from it are dropped until it is up again
//! let out = net.command(0, "ip").args(["addr"]).output();
//! let answer = net.run_in(3, || /* a thread inside node 3's namespace */ 42).join();
//! ```
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip` (iproute2); [`require_netns`]
//! fails loudly, with the reason, when namespaces cannot be made. Latency (`tc netem`) needs
//! the kernel's `sch_netem`, which some kernels (this project's CI VMs) do not have:
//! [`Net::add_latency`] says so rather than pretending.

#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What every namespace a [`Net`] makes is called: `tendt-<pid>-<net>-<node|hub>`.
const PREFIX: &str = "tendt-";

/// How long one `ip`/`tc` call may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// The first two octets of every test address (a private range used nowhere else).
pub const RANGE: &str = "10.231";

static CHECKED: OnceLock<()> = OnceLock::new();
static NETS: AtomicUsize = AtomicUsize::new(0);

/// Panics, loudly and with the reason, unless this process can create a network namespace
/// with a veth pair and a bridge. Checked once per test process.
pub fn require_netns() {
    CHECKED.get_or_init(|| {
        let probe = format!("{PREFIX}{}-probe", std::process::id());
        let steps: [&[&str]; 3] = [
            &["netns", "add", &probe],
            &["-n", &probe, "link", "add", "br0", "type", "bridge"],
            &["-n", &probe, "link", "add", "va", "type", "veth", "peer", "name", "vb"],
        ];
        let mut failure = None;
        for step in steps {
            if let Err(e) = ip(step) {
                failure = Some(e);
                break;
            }
        }
        let _ = ip(&["netns", "del", &probe]);
        if let Some(e) = failure {
            panic!(
                "\n\n*** Network namespaces cannot be set up here. ***\ntend's cluster tests need root \
                 (CAP_SYS_ADMIN, CAP_NET_ADMIN), iproute2, and a kernel with network namespaces, veth and \
                 bridges; they never skip.\n{e}\n"
            );
        }
    });
}

/// Runs `ip ARGS...`; the error has the command and what it printed.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    let deadline = std::time::Instant::now() + IP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown} did not finish within {IP_TIMEOUT:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("could not wait for {shown}: {e}")),
        }
    }
    let out: Output = child.wait_with_output().map_err(|e| format!("could not read {shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Deletes the namespaces of test processes that are gone (a test killed before its drop).
fn sweep_orphans() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// One node of a [`Net`].
#[derive(Debug, Clone)]
pub struct Node {
    /// Its namespace.
    pub ns: String,
    /// Its address (`10.231.K.(i+1)`).
    pub ip: String,
    /// Its port on the bridge (an interface of the hub namespace).
    port: String,
}

/// Namespaces on a bridge; dropping it deletes them all.
#[derive(Debug)]
pub struct Net {
    hub: String,
    nodes: Vec<Node>,
}

impl Net {
    /// `n` nodes (at most 250) on one bridge, every link up. Panics with the failing
    /// command when a step fails.
    pub fn new(test: &str, n: usize) -> Net {
        require_netns();
        assert!((1..=250).contains(&n), "a Net has 1 to 250 nodes");
        sweep_orphans();
        let k = NETS.fetch_add(1, Ordering::SeqCst);
        let base = format!("{PREFIX}{}-{k}", std::process::id());
        let subnet = format!("{RANGE}.{}", k % 250);
        let mut net = Net { hub: format!("{base}-hub"), nodes: Vec::new() };
        let must = |args: &[&str]| {
            if let Err(e) = ip(args) {
                panic!("setting up the test network of {test}: {e}");
            }
        };
        must(&["netns", "add", &net.hub]);
        must(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &net.hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let node = Node { ns: format!("{base}-{i}"), ip: format!("{subnet}.{}", i + 1), port: format!("p{i}") };
            must(&["netns", "add", &node.ns]);
            net.nodes.push(node.clone());
            must(&[
                "-n", &net.hub, "link", "add", &node.port, "type", "veth", "peer", "name", "eth0", "netns", &node.ns,
            ]);
            must(&["-n", &net.hub, "link", "set", &node.port, "master", "br0"]);
            must(&["-n", &net.hub, "link", "set", &node.port, "up"]);
            must(&["-n", &node.ns, "addr", "add", &format!("{}/24", node.ip), "dev", "eth0"]);
            must(&["-n", &node.ns, "link", "set", "eth0", "up"]);
            must(&["-n", &node.ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i].ns
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> &str {
        &self.nodes[i].ip
    }

    /// Cuts node `i` off: its port on the bridge goes down, so every packet to or from it
    /// is dropped (its own interface keeps its address and routes, as a host whose cable
    /// was pulled at the switch: connections hang and time out rather than fail at once).
    pub fn link_down(&self, i: usize) {
        if let Err(e) = ip(&["-n", &self.hub, "link", "set", &self.nodes[i].port, "down"]) {
            panic!("taking node {i}'s link down: {e}");
        }
    }

    /// Connects node `i` again.
    pub fn link_up(&self, i: usize) {
        if let Err(e) = ip(&["-n", &self.hub, "link", "set", &self.nodes[i].port, "up"]) {
            panic!("taking node {i}'s link up: {e}");
        }
    }

    /// Adds `ms` of latency to everything node `i` sends (`tc qdisc … netem delay`).
    /// Fails, with the reason, where the kernel has no `sch_netem`.
    pub fn add_latency(&self, i: usize, ms: u64) -> Result<(), String> {
        run(Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.nodes[i].ns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
            ])
            .arg(format!("{ms}ms")))
        .map(drop)
        .map_err(|e| {
            format!(
                "{e}\n(`tc netem` needs the kernel's sch_netem; where `Specified qdisc kind is unknown` is the \
                     answer, the kernel was built without CONFIG_NET_SCH_NETEM and cannot load it)"
            )
        })
    }

    /// Removes the latency [`Net::add_latency`] added.
    pub fn clear_latency(&self, i: usize) -> Result<(), String> {
        run(Command::new("ip").args(["netns", "exec", &self.nodes[i].ns, "tc", "qdisc", "del", "dev", "eth0", "root"]))
            .map(drop)
    }

    /// A command that runs `program` in node `i`'s namespace (`ip netns exec`).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.nodes[i].ns, program]);
        cmd
    }

    /// Runs `f` on a new thread that has moved into node `i`'s network namespace: every
    /// socket it opens (a tokio runtime of its own, built on that thread with
    /// `new_current_thread`, keeps its tasks there too) is one of that node's.
    pub fn run_in<T: Send + 'static>(&self, i: usize, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.nodes[i].ns);
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open the namespace {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("cannot enter the namespace {path}: {e}"));
            f()
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Err(e) = ip(&["netns", "del", &node.ns]) {
                eprintln!("cleaning up the test network: {e}");
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.hub]) {
            eprintln!("cleaning up the test network: {e}");
        }
    }
}
