//! `tend cluster members` and `tend cluster status`: the cluster as the agent running on
//! this node sees it, asked through its socket. The agent holds the node's etcd session;
//! these commands never talk to etcd themselves, so they need a running agent whose
//! configuration has a `cluster:` block.

use super::*;
use crate::cluster::report::{ClusterStatus, MemberEntry};

/// `tend cluster`: the cluster this node's agent is in.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the cluster's members: roles, live or drained, lease time left, version,
    /// address (read from etcd by the running agent).
    Members {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Show the leader and its term, etcd as this node sees it, this node's slots and every
    /// placement. Exit 1 when this node is not connected or etcd cannot be read (then it
    /// shows the agent's last view).
    Status {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs a `tend cluster` command.
pub(super) fn cluster(cli: &Cli, command: &ClusterCommand) -> Result<ExitCode, CliError> {
    match command {
        ClusterCommand::Members { output } => {
            let members: Vec<MemberEntry> = ask(cli, "/v1/cluster/members")?;
            match output {
                Output::Json => print_json(&members)?,
                Output::Text => table(&member_rows(&members)),
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Status { output } => {
            let status: ClusterStatus = ask(cli, "/v1/cluster/status")?;
            match output {
                Output::Json => print_json(&status)?,
                Output::Text => print_cluster_status(&status),
            }
            Ok(if status.connected && status.etcd.healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// The running agent's answer to `GET path`: an error when no agent answers, or when it is
/// not in a cluster.
fn ask<T: serde::de::DeserializeOwned>(cli: &Cli, path: &str) -> Result<T, CliError> {
    let socket = &cli.socket;
    match runtime()?.block_on(from_agent::<T>(socket, path)) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(CliError::NoAgent { socket: socket.clone() }),
        Err(CliError::Api(crate::daemon::api::ApiError::Agent { status: 409, message })) => {
            Err(CliError::NotInCluster { socket: socket.clone(), message })
        }
        Err(e) => Err(e),
    }
}

/// The members table: NODE ROLES STATE LEASE-LEFT VERSION ADDRESS.
pub(super) fn member_rows(members: &[MemberEntry]) -> Vec<Vec<String>> {
    let mut rows = vec![["NODE", "ROLES", "STATE", "LEASE-LEFT", "VERSION", "ADDRESS"].map(String::from).to_vec()];
    for m in members {
        rows.push(vec![
            m.node.clone(),
            if m.roles.is_empty() { "-".into() } else { m.roles.join(",") },
            m.state.to_string(),
            m.lease_time_left_ms.map_or_else(|| "gone".into(), seconds),
            m.version.clone(),
            m.address.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    rows
}

/// `9s`, `1m30s`; `0s` for nothing left.
fn seconds(ms: u64) -> String {
    if ms < 1000 { "0s".into() } else { crate::support::time::format_duration(std::time::Duration::from_millis(ms)) }
}

/// The lines of `tend cluster status` above the placements.
pub(super) fn status_lines(s: &ClusterStatus, paint: Paint) -> Vec<String> {
    let mut lines = vec![format!("cluster {}, seen from node {}", s.cluster, s.node)];
    let term = s.term.map(|t| format!(" (term {t})")).unwrap_or_default();
    let (seen, role) = match (s.connected, s.is_leader) {
        (false, _) => ("leader as last seen", "this node leads nothing while it is not connected"),
        (true, true) => ("leader", "this node leads"),
        (true, false) => ("leader", "this node follows"),
    };
    lines.push(match &s.leader {
        Some(leader) => format!("{seen}: {leader}{term}; {role}; {} leader change(s) seen", s.leader_changes),
        None => format!("leader: none seen yet; {role}"),
    });
    lines.push(match (s.connected, &s.error) {
        (true, _) => format!("this node: {}", paint.green("connected")),
        (false, Some(e)) => {
            format!("this node: {} ({e}); its services and last slots keep running", paint.red("not connected to etcd"))
        }
        (false, None) => format!("this node: {}", paint.yellow("connecting to etcd")),
    });
    let e = &s.etcd;
    lines.push(if e.healthy {
        let leader = match (&e.raft_leader, e.raft_term) {
            (Some(l), Some(t)) => format!(", raft leader {l} (term {t})"),
            (Some(l), None) => format!(", raft leader {l}"),
            _ => String::new(),
        };
        let revision = e.revision.map(|r| format!(", revision {r}")).unwrap_or_default();
        let version = e.version.as_deref().map(|v| format!(", etcd {v}")).unwrap_or_default();
        format!("etcd: {}{revision}{leader}{version}", paint.green("healthy"))
    } else {
        let why = e.error.as_deref().unwrap_or("etcd was not read");
        format!("{}; showing this node's last view", paint.red(why))
    });
    lines.push(format!("endpoints: {}", e.endpoints.join(", ")));
    lines.push(format!("this node's slots: {}", slot_list(s.slots.iter().map(|(k, v)| (k, v.iter().copied())))));
    match &s.unplaced {
        Some(u) if !u.is_empty() => {
            lines.push(format!("unplaced: {}", paint.yellow(&slot_list(u.iter().map(|(k, v)| (k, v.iter().copied()))))))
        }
        Some(_) => {}
        None => lines.push("placements: unknown while etcd cannot be read".into()),
    }
    lines
}

/// `etcd 1,2; mongo 1`, or `none`.
fn slot_list<'a, I: Iterator<Item = u32>>(slots: impl Iterator<Item = (&'a String, I)>) -> String {
    let parts: Vec<String> = slots
        .map(|(service, slots)| format!("{service} {}", slots.map(|k| k.to_string()).collect::<Vec<_>>().join(",")))
        .collect();
    if parts.is_empty() { "none".into() } else { parts.join("; ") }
}

/// The placements table: SERVICE SLOT NODE, one row per placed slot.
pub(super) fn placement_rows(s: &ClusterStatus) -> Vec<Vec<String>> {
    let mut rows = vec![["SERVICE", "SLOT", "NODE"].map(String::from).to_vec()];
    for (service, slots) in s.placements.iter().flatten() {
        for (slot, node) in slots {
            rows.push(vec![service.clone(), slot.to_string(), node.clone()]);
        }
    }
    rows
}

fn print_cluster_status(s: &ClusterStatus) {
    let paint = Paint::stdout();
    for line in status_lines(s, paint) {
        outln!("{line}");
    }
    let rows = placement_rows(s);
    if rows.len() > 1 {
        outln!("{}", paint.bold("placements:"));
        table(&rows);
    } else if s.placements.is_some() {
        outln!("placements: none");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::report::{EtcdView, MemberState};

    fn member(node: &str, roles: &[&str], state: MemberState, left: Option<u64>) -> MemberEntry {
        MemberEntry {
            node: node.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            state,
            lease_time_left_ms: left,
            last_seen_ms: left.map(|_| 1_000),
            started_ms: 500,
            version: "0.1.0".into(),
            address: (node == "vm-a").then(|| "10.0.0.5".into()),
        }
    }

    #[test]
    fn the_members_table_shows_roles_state_lease_left_version_and_address() {
        let rows = member_rows(&[
            member("vm-a", &["judicator", "mongo"], MemberState::Live, Some(9_000)),
            member("vm-b", &[], MemberState::Drained, Some(90_000)),
            member("vm-c", &["judicator"], MemberState::Live, None),
        ]);
        assert_eq!(rows[0], ["NODE", "ROLES", "STATE", "LEASE-LEFT", "VERSION", "ADDRESS"]);
        assert_eq!(rows[1], ["vm-a", "judicator,mongo", "live", "9s", "0.1.0", "10.0.0.5"]);
        assert_eq!(rows[2], ["vm-b", "-", "drained", "1m30s", "0.1.0", "-"]);
        assert_eq!(rows[3], ["vm-c", "judicator", "live", "gone", "0.1.0", "-"]);
        assert_eq!(seconds(400), "0s");
    }

    fn status() -> ClusterStatus {
        ClusterStatus {
            cluster: "judicators".into(),
            node: "vm-a".into(),
            leader: Some("vm-b".into()),
            term: Some(1234),
            is_leader: false,
            leader_changes: 1,
            connected: true,
            error: None,
            etcd: EtcdView {
                endpoints: vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()],
                healthy: true,
                revision: Some(57),
                raft_leader: Some("m1".into()),
                raft_term: Some(3),
                version: Some("3.4.23".into()),
                members: vec!["m0".into(), "m1".into(), "m2".into()],
                error: None,
            },
            slots: [("judicator-etcd".to_string(), [2].into())].into(),
            placements: Some(
                [("judicator-etcd".to_string(), [(1, "vm-b".to_string()), (2, "vm-a".to_string())].into())].into(),
            ),
            unplaced: Some([("judicator-etcd".to_string(), vec![3])].into()),
        }
    }

    #[test]
    fn the_status_names_the_leader_etcd_this_nodes_slots_and_every_placement() {
        let lines = status_lines(&status(), Paint(false));
        assert_eq!(
            lines,
            [
                "cluster judicators, seen from node vm-a",
                "leader: vm-b (term 1234); this node follows; 1 leader change(s) seen",
                "this node: connected",
                "etcd: healthy, revision 57, raft leader m1 (term 3), etcd 3.4.23",
                "endpoints: http://10.0.0.1:2379, http://10.0.0.2:2379",
                "this node's slots: judicator-etcd 2",
                "unplaced: judicator-etcd 3",
            ]
        );
        let rows = placement_rows(&status());
        assert_eq!(
            rows,
            [["SERVICE", "SLOT", "NODE"], ["judicator-etcd", "1", "vm-b"], ["judicator-etcd", "2", "vm-a"]]
        );
    }

    #[test]
    fn with_etcd_unreachable_the_status_says_so_and_shows_the_last_view() {
        let mut s = status();
        s.connected = false;
        s.error = Some("cluster session: the lease of this node is lost: no renewal was acknowledged".into());
        s.etcd.healthy = false;
        s.etcd.error = Some("etcd is unreachable: it did not answer within 3s".into());
        s.placements = None;
        s.unplaced = None;
        let lines = status_lines(&s, Paint(false));
        assert_eq!(
            lines[1],
            "leader as last seen: vm-b (term 1234); this node leads nothing while it is not connected; 1 leader change(s) seen"
        );
        assert_eq!(
            lines[2],
            "this node: not connected to etcd (cluster session: the lease of this node is lost: no renewal was acknowledged); its services and last slots keep running"
        );
        assert_eq!(lines[3], "etcd is unreachable: it did not answer within 3s; showing this node's last view");
        assert_eq!(lines[5], "this node's slots: judicator-etcd 2");
        assert_eq!(lines[6], "placements: unknown while etcd cannot be read");
        assert_eq!(placement_rows(&s).len(), 1, "no placement rows");
    }
}
