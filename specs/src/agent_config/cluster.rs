//! The agent configuration's `cluster:` block: which cluster this node belongs to, under
//! which name, with which roles, and how it reaches etcd. Without the block a node is a
//! cluster of one and nothing else changes. The checks here run with the rest of the file's,
//! so every problem of the block comes at once with its file:line:column.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::bounds::{self, Bound};
use crate::diag::{Diagnostic, Location, shown_cut};
use crate::load::{Seg, is_dns_label, locate};
use crate::quantity::Duration;
use crate::yaml::Node;

/// `cluster.name`: a DNS label.
pub const NAME: Bound<usize> =
    Bound { max: 63, why: "the cluster's name is a DNS label; its keys in etcd live under `/tend/NAME/`" };

/// `cluster.node`: a DNS label.
pub const NODE: Bound<usize> = Bound { max: 63, why: "a node's name is a DNS label; it names the node's keys in etcd" };

/// `cluster.roles`: roles of one node.
pub const ROLES: Bound<usize> =
    Bound { max: 32, why: "roles of one node; every placed service is matched against each of them" };

/// `cluster.address`: a host name or an IP address.
pub const ADDRESS: Bound<usize> = Bound { max: 253, why: "the longest DNS name" };

/// `cluster.etcd.endpoints`: how many.
pub const ENDPOINTS: Bound<usize> =
    Bound { max: 16, why: "client URLs of one etcd cluster, which has 3 to 7 members (and a proxy or two)" };

/// One etcd endpoint's length.
pub const ENDPOINT: Bound<usize> = Bound { max: 512, why: "an http(s) URL of a host and a port" };

/// `cluster.leaseTTL`: at most 5m.
pub const LEASE_TTL: Bound<Duration> = Bound {
    max: Duration::from_secs(300),
    why: "a dead node's slots are placed elsewhere only once its lease has run out; later than that, a dead node is noticed too late to matter",
};

/// The shortest `cluster.leaseTTL`: etcd raises a shorter lease to its own minimum (one and
/// a half election timeouts, 1.5s with etcd's defaults), and a lease shorter than an etcd
/// leader election would drop live members while etcd elects.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// `cluster.leaseTTL` when not set.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// Membership of a cluster coordinated through etcd (`cluster:` in the agent's
/// configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: a DNS label (lowercase letters, digits, `-`; at most 63). Every
    /// key of the cluster lives under `/tend/NAME/` in etcd, so two clusters can share one
    /// etcd.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// This node's name in the cluster: a DNS label, unique in the cluster. Default: the host
    /// name up to its first `.`, in lowercase.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub node: Option<String>,
    /// The address other members and operators reach this node at: a host name or an IP
    /// address, without a port (at most 253 characters). Shown by `tend cluster members`.
    #[serde(default)]
    #[schemars(length(max = ADDRESS.max))]
    pub address: Option<String>,
    /// The roles this node takes, e.g. `[judicator]`: placed services of a role run only on
    /// nodes that have it. DNS labels, each listed once; at most 32. Default: none (the node
    /// is a member, may lead, and runs no placed service).
    #[serde(default)]
    #[schemars(length(max = ROLES.max), inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")))]
    pub roles: Vec<String>,
    /// How to reach etcd.
    pub etcd: EtcdConfig,
    /// How long the node's membership outlives its last keep-alive: a node that dies is gone
    /// from the cluster this long after (default 10s; whole seconds, 2s to 5m).
    #[serde(rename = "leaseTTL", default = "ClusterConfig::default_lease_ttl")]
    pub lease_ttl: Duration,
}

impl ClusterConfig {
    fn default_lease_ttl() -> Duration {
        DEFAULT_LEASE_TTL
    }

    /// This node's name: `node` when it is set, else the one `host_name` (the kernel's host
    /// name, as the agent reads it) gives: its part up to the first `.`, in lowercase, which
    /// must then be a DNS label.
    pub fn node_name(&self, host_name: &str) -> Result<String, NodeNameError> {
        if let Some(node) = &self.node {
            return Ok(node.clone());
        }
        let short = host_name.split('.').next().unwrap_or_default().to_ascii_lowercase();
        if is_dns_label(&short) { Ok(short) } else { Err(NodeNameError::HostName { host: shown_cut(host_name, 64) }) }
    }
}

/// Why this node's name could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameError {
    /// `cluster.node` is not set and the host name does not give a DNS label.
    #[error(
        "the host name `{host}` does not give a node name (its part up to the first `.`, in lowercase, must be a DNS label: letters, digits and `-`, at most 63); set `cluster.node` in the agent configuration"
    )]
    HostName {
        /// The host name (control characters escaped, cut after 64 characters).
        host: String,
    },
}

/// How the agent reaches etcd (`cluster.etcd`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd's client URLs, `http://HOST:PORT` or `https://HOST:PORT` (1 to 16, all with one
    /// scheme, without a path or a user name and password), e.g. `https://10.0.0.1:2379`.
    #[schemars(length(min = 1, max = ENDPOINTS.max), inner(length(max = ENDPOINT.max)))]
    pub endpoints: Vec<String>,
    /// The CA certificate (PEM) etcd's server certificate is checked against (https only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's `--client-cert-auth`, with `keyFile` (https
    /// only).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM), with `certFile` (https only).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A file holding the etcd user name, with `passwordFile` (https only: the password
    /// must not cross the network in clear).
    #[serde(default)]
    pub username_file: Option<PathBuf>,
    /// A file holding the etcd user's password, with `usernameFile` (https only). Never
    /// logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// The files the block names, by key, for the checks they share.
    fn files(&self) -> [(&'static str, Option<&PathBuf>); 5] {
        [
            ("caFile", self.ca_file.as_ref()),
            ("certFile", self.cert_file.as_ref()),
            ("keyFile", self.key_file.as_ref()),
            ("usernameFile", self.username_file.as_ref()),
            ("passwordFile", self.password_file.as_ref()),
        ]
    }
}

/// Checks the `cluster:` block of the configuration document `root`, read from `file`.
pub(super) fn check(cluster: &ClusterConfig, root: &Node, file: &Arc<Path>, diags: &mut Vec<Diagnostic>) {
    let at = |path: &[Seg<'_>]| {
        let node = locate(root, &[&[Seg::Key("cluster")], path].concat());
        Location { file: file.clone(), line: node.mark.line, column: node.mark.column }
    };
    let mut put = |path: &[Seg<'_>], problem: Option<String>| {
        if let Some(message) = problem {
            diags.push(Diagnostic::at(at(path), message));
        }
    };
    put(&[Seg::Key("name")], label_problem("cluster.name", &cluster.name, NAME));
    if let Some(node) = &cluster.node {
        put(&[Seg::Key("node")], label_problem("cluster.node", node, NODE));
    }
    if let Some(address) = &cluster.address {
        put(&[Seg::Key("address")], address_problem(address));
    }
    put(&[Seg::Key("roles")], ROLES.check_items("cluster.roles", cluster.roles.len()));
    for (i, role) in cluster.roles.iter().enumerate() {
        let here = [Seg::Key("roles"), Seg::Index(i)];
        put(&here, label_problem(&format!("cluster.roles[{i}]"), role, bounds::ROLE));
        if let Some(first) = cluster.roles[..i].iter().position(|r| r == role) {
            put(
                &here,
                Some(format!("`cluster.roles` lists `{}` twice (first as roles[{first}])", shown_cut(role, 64))),
            );
        }
    }
    let ttl = cluster.lease_ttl;
    if ttl < MIN_LEASE_TTL {
        put(
            &[Seg::Key("leaseTTL")],
            Some(format!(
                "`cluster.leaseTTL` is {ttl}; at least {MIN_LEASE_TTL} (etcd raises a shorter lease to its own minimum, and a lease shorter than an etcd leader election drops live members)"
            )),
        );
    }
    put(&[Seg::Key("leaseTTL")], LEASE_TTL.check("cluster.leaseTTL", ttl));
    if ttl.get().subsec_nanos() != 0 {
        put(
            &[Seg::Key("leaseTTL")],
            Some(format!("`cluster.leaseTTL` is {ttl}; write whole seconds (etcd grants leases in seconds)")),
        );
    }
    check_etcd(&cluster.etcd, &mut |path, message| put(&[&[Seg::Key("etcd")], path].concat(), Some(message)));
}

/// Checks `cluster.etcd`; `put` reports a problem at a path from the block.
fn check_etcd(etcd: &EtcdConfig, put: &mut dyn FnMut(&[Seg<'_>], String)) {
    let endpoints = &etcd.endpoints;
    if endpoints.is_empty() {
        put(
            &[Seg::Key("endpoints")],
            "`cluster.etcd.endpoints` is empty: list etcd's client URLs, such as https://10.0.0.1:2379".into(),
        );
    }
    if let Some(msg) = ENDPOINTS.check_items("cluster.etcd.endpoints", endpoints.len()) {
        put(&[Seg::Key("endpoints")], msg);
    }
    let mut https = None;
    for (i, url) in endpoints.iter().enumerate() {
        let here = [Seg::Key("endpoints"), Seg::Index(i)];
        let field = format!("cluster.etcd.endpoints[{i}]");
        if let Some(msg) = ENDPOINT.check_bytes(&format!("`{field}`"), url.len()) {
            put(&here, msg);
            continue;
        }
        match endpoint_problem(url) {
            Some(why) => put(&here, format!("`{field}`: {why}")),
            None => {
                let this = url.starts_with("https://");
                match https {
                    None => https = Some(this),
                    Some(first) if first != this => put(
                        &here,
                        format!(
                            "`{field}` is {}: the endpoints share one scheme, like the first ({}), as the client has one TLS setting",
                            if this { "https://" } else { "http://" },
                            if first { "https://" } else { "http://" },
                        ),
                    ),
                    Some(_) => {}
                }
                if let Some(first) =
                    endpoints[..i].iter().position(|e| e.trim_end_matches('/') == url.trim_end_matches('/'))
                {
                    put(&here, format!("`{field}` lists the endpoint of endpoints[{first}] again"));
                }
            }
        }
    }
    for (key, path) in etcd.files() {
        let Some(path) = path else { continue };
        if !path.is_absolute() {
            put(&[Seg::Key(key)], format!("`cluster.etcd.{key}` must be an absolute path"));
        }
        if let Some(msg) = bounds::PATH.check_bytes(&format!("`cluster.etcd.{key}`"), path.as_os_str().len()) {
            put(&[Seg::Key(key)], msg);
        }
        if https == Some(false) {
            let why = match key {
                "usernameFile" | "passwordFile" => "over http:// the password would cross the network in clear",
                _ => "it is for TLS, which http:// does not use",
            };
            put(&[Seg::Key(key)], format!("`cluster.etcd.{key}` is used only with https:// endpoints: {why}"));
        }
    }
    let pairs = [
        (
            "certFile",
            etcd.cert_file.is_some(),
            "keyFile",
            etcd.key_file.is_some(),
            "a client certificate goes with its key",
        ),
        (
            "usernameFile",
            etcd.username_file.is_some(),
            "passwordFile",
            etcd.password_file.is_some(),
            "etcd authenticates a user by name and password",
        ),
    ];
    for (a, has_a, b, has_b, why) in pairs {
        match (has_a, has_b) {
            (true, false) => put(&[Seg::Key(a)], format!("`cluster.etcd.{a}` needs `{b}` beside it ({why})")),
            (false, true) => put(&[Seg::Key(b)], format!("`cluster.etcd.{b}` needs `{a}` beside it ({why})")),
            _ => {}
        }
    }
}

/// The problem of the name `value` of `field`, if it is not a DNS label within `bound`.
fn label_problem(field: &str, value: &str, bound: Bound<usize>) -> Option<String> {
    if let Some(msg) = bound.check_bytes(&format!("`{field}`"), value.len()) {
        return Some(msg);
    }
    (!is_dns_label(value)).then(|| {
        format!(
            "`{field}` `{}` is not a DNS label (lowercase letters, digits and `-`, not starting or ending with `-`)",
            shown_cut(value, 64)
        )
    })
}

/// What is wrong with `cluster.address`, if anything: it is an IP address or a host name,
/// without a port.
fn address_problem(address: &str) -> Option<String> {
    if let Some(msg) = ADDRESS.check_bytes("`cluster.address`", address.len()) {
        return Some(msg);
    }
    if address.parse::<IpAddr>().is_ok() || is_host_name(address) {
        return None;
    }
    Some(format!(
        "`cluster.address` `{}` is not a host name or an IP address (without a port), such as vm-a.example.org or 10.0.0.5",
        shown_cut(address, 64)
    ))
}

/// Whether `host` is a host name: labels of letters, digits and `-` (not at either end), at
/// most 63 characters each, separated by `.`.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= ADDRESS.max
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What is wrong with an etcd endpoint, if anything: it is `http://HOST:PORT` or
/// `https://HOST:PORT` (one `/` at the end allowed), HOST a host name, an IPv4 address or a
/// bracketed IPv6 address. A message never shows an endpoint that holds an `@`: what comes
/// before it may be a password.
fn endpoint_problem(url: &str) -> Option<String> {
    if url.contains('@') {
        return Some(
            "holds a user name or password: put them in files and name those in `usernameFile` and `passwordFile`"
                .into(),
        );
    }
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("cannot contain spaces or control characters".into());
    }
    let shown = shown_cut(url, 64);
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return Some(format!("`{shown}` is not an http:// or https:// URL (such as https://10.0.0.1:2379)"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Some(format!(
            "`{shown}` has a path; an etcd endpoint is a host and a port, such as https://10.0.0.1:2379"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Some(format!("`{shown}` opens an IPv6 address with `[` and does not close it"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Some(format!("`[{addr}]` in `{shown}` is not an IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    if let Some(host) = host
        && host.parse::<std::net::Ipv4Addr>().is_err()
        && !is_host_name(host)
    {
        return Some(format!("`{}` in `{shown}` is not a host name or an IP address", shown_cut(host, 64)));
    }
    match port {
        None => Some(format!("`{shown}` has no port; write it, such as :2379 (etcd's client port)")),
        Some(port) if port.parse::<u16>().is_ok_and(|p| p > 0) => None,
        Some(port) => Some(format!("`{}` in `{shown}` is not a port (1 to 65535)", shown_cut(port, 16))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_urls_of_a_host_and_a_port() {
        for good in [
            "https://10.0.0.1:2379",
            "http://127.0.0.1:2379/",
            "https://etcd-1.example.org:2379",
            "https://[fd00::1]:2379",
            "http://localhost:12379",
        ] {
            assert_eq!(endpoint_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("10.0.0.1:2379", "is not an http:// or https:// URL"),
            ("unix:///run/etcd.sock", "is not an http:// or https:// URL"),
            ("https://10.0.0.1", "has no port"),
            ("https://10.0.0.1:0", "is not a port"),
            ("https://10.0.0.1:99999", "is not a port"),
            ("https://10.0.0.1:2379/v3", "has a path"),
            ("https://10.0.0.1:2379?x=1", "has a path"),
            ("https://[fd00::1:2379", "does not close it"),
            ("https://[fd00::zz]:2379", "is not an IPv6 address"),
            ("https://etcd_1:2379", "is not a host name"),
            ("https://-etcd:2379", "is not a host name"),
            ("https://a b:2379", "spaces or control characters"),
        ] {
            let got = endpoint_problem(bad).unwrap_or_else(|| panic!("{bad} should be refused"));
            assert!(got.contains(why), "{bad}: {got}");
        }
        let got = endpoint_problem("https://root:hunter2@10.0.0.1:2379").expect("credentials");
        assert!(got.contains("usernameFile") && !got.contains("hunter2"), "{got}");
    }

    #[test]
    fn an_address_is_a_host_name_or_an_ip_address_without_a_port() {
        for good in ["10.0.0.5", "fd00::5", "vm-a", "vm-a.example.org", "VM-A.Example.org"] {
            assert_eq!(address_problem(good), None, "{good}");
        }
        for bad in ["10.0.0.5:22", "[fd00::5]", "vm_a", "vm-a.", "", "a..b", "http://vm-a"] {
            assert!(address_problem(bad).is_some(), "{bad:?}");
        }
        assert!(address_problem(&format!("{}.org", "a".repeat(250))).expect("long").contains("at most 253"));
    }

    fn cluster(node: Option<&str>) -> ClusterConfig {
        ClusterConfig {
            name: "judicators".into(),
            node: node.map(str::to_owned),
            address: None,
            roles: Vec::new(),
            etcd: EtcdConfig {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                ca_file: None,
                cert_file: None,
                key_file: None,
                username_file: None,
                password_file: None,
            },
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }

    #[test]
    fn the_node_name_is_the_short_host_name_in_lowercase_unless_set() {
        assert_eq!(cluster(Some("vm-b")).node_name("vm-a.example.org"), Ok("vm-b".into()));
        assert_eq!(cluster(None).node_name("VM-A.example.org"), Ok("vm-a".into()));
        assert_eq!(cluster(None).node_name("judicator-3"), Ok("judicator-3".into()));
        for bad in ["", "vm_a", "-vm", &"a".repeat(64), "vm\na"] {
            let e = cluster(None).node_name(bad).expect_err(bad).to_string();
            assert!(e.contains("set `cluster.node`"), "{e}");
            assert!(!e.contains('\n'), "{e:?}");
        }
    }
}
