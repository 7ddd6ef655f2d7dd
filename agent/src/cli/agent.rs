//! `tend agent`: its settings, from the configuration file and the command line; and the
//! cluster this node is in, for the commands that act in it beside the agent.

use super::*;

/// The agent's configuration file when none is named.
const DEFAULT_CONFIG: &str = "/etc/tend/agent.yaml";

/// The variable that names the agent's configuration file to the commands that act in its
/// cluster beside it (`tend maintain`, `tend job run|history`); `tend agent` itself reads
/// `TEND_CONFIG`.
pub(super) const AGENT_CONFIG_ENV: &str = "TEND_AGENT_CONFIG";

/// The agent's configuration and the file it was read from: the file `config`, else the
/// default one when it exists and no spec directory is given (`tend agent --specs` runs
/// without one); the defaults without a file. Its problems are printed, and make the error.
fn read_config(
    config: Option<&Path>,
    specs: Option<&Path>,
) -> Result<(Option<PathBuf>, tend_specs::agent_config::AgentConfig), CliError> {
    use tend_specs::agent_config::{AgentConfig, load_agent_config};
    let path = match (config, specs) {
        (Some(p), _) => Some(p.to_path_buf()),
        (None, None) if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
        _ => None,
    };
    let file = match &path {
        Some(p) => load_agent_config(p).map_err(|diags| {
            let paint = Paint::stderr();
            for d in &diags {
                eoutln!("{} {d}", paint.red("error:"));
            }
            CliError::Config { path: p.clone(), count: diags.len() }
        })?,
        None => AgentConfig::default(),
    };
    Ok((path, file))
}

/// The cluster this node is in, as the agent's configuration (`config`, else the default
/// file when it exists) says; none without a `cluster:` block.
pub(super) fn node_cluster(config: Option<&Path>) -> Result<Option<crate::daemon::cluster::ClusterSettings>, CliError> {
    read_config(config, None)?.1.cluster.as_ref().map(cluster_settings).transpose()
}

/// The agent's settings: the configuration file, overridden by explicit options.
pub(super) fn agent_settings(
    cli: &Cli,
    config: Option<&Path>,
    specs: Option<&Path>,
    allow_mass_removal: bool,
    metrics_listen: Option<std::net::SocketAddr>,
) -> Result<crate::daemon::Settings, CliError> {
    use crate::daemon::{Settings, SourceSettings};
    let (path, file) = read_config(config, specs)?;
    let explicit = |id: &str| cli.explicit.iter().any(|e| e == id);
    let pick = |id: &str, flag: &PathBuf, file: &Option<PathBuf>| match file {
        Some(f) if !explicit(id) => f.clone(),
        _ => flag.clone(),
    };
    let scope = match &file.scope {
        Some(s) if !explicit("scope") => s.clone(),
        _ => cli.scope.clone(),
    };
    let source = match (specs, &file.source.git, &file.source.dir) {
        (Some(dir), _, _) => SourceSettings::Dir(absolute(dir)),
        (None, Some(git), _) => SourceSettings::Git(crate::daemon::source::GitConfig {
            url: git.url.clone(),
            reference: match (&git.branch, &git.tag) {
                (_, Some(tag)) => crate::daemon::source::GitRef::Tag(tag.clone()),
                (Some(branch), None) => crate::daemon::source::GitRef::Branch(branch.clone()),
                (None, None) => crate::daemon::source::GitRef::Branch("main".into()),
            },
            path: git.path.clone(),
            interval: git.interval.get(),
            ssh_key: git.ssh_key.clone(),
            token_file: git.token_file.clone(),
        }),
        (None, None, Some(dir)) => SourceSettings::Dir(dir.clone()),
        (None, None, None) => SourceSettings::Dir(PathBuf::from(DEFAULT_SPECS)),
    };
    let host = crate::host::Host {
        scope,
        state_dir: absolute(&pick("state_dir", &cli.state_dir, &file.state_dir)),
        locks: crate::maintain::locks::LockDir::new(absolute(&cli.lock_dir)),
        unit_dir: pick("unit_dir", &cli.unit_dir, &file.unit_dir),
        env_dir: absolute(&pick("env_dir", &cli.env_dir, &file.env_dir)),
        tend_bin: tend_bin(),
        timeouts: Timeouts::new(
            if explicit("engine_timeout") { cli.engine_timeout } else { file.engine_timeout }.get(),
        ),
        // The runs the agent starts read the default file without being told.
        agent_config: path.filter(|p| p != Path::new(DEFAULT_CONFIG)).map(|p| absolute(&p)),
    };
    Ok(Settings {
        host,
        source,
        resync: file.resync.get(),
        debounce: file.debounce.get(),
        parallel: file.parallel,
        socket: absolute(&pick("socket", &cli.socket, &file.socket.path)),
        socket_group: file.socket.group.clone(),
        metrics_listen: metrics_listen.or_else(|| file.metrics.as_ref().and_then(|m| m.listen.parse().ok())),
        allow_mass_removal: allow_mass_removal || file.mass_removal.allow,
        max_removal_percent: file.mass_removal.max_percent,
        cluster: file.cluster.as_ref().map(cluster_settings).transpose()?,
    })
}

/// The cluster this host's agent is in, for commands that act on the cluster's behalf
/// (`tend maintain`): from the agent configuration `$TEND_AGENT_CONFIG`, else
/// `/etc/tend/agent.yaml` when it exists; `None` without a configuration or a cluster block.
pub(super) fn host_cluster() -> Result<Option<crate::daemon::cluster::ClusterSettings>, CliError> {
    node_cluster(std::env::var_os(AGENT_CONFIG_ENV).map(PathBuf::from).as_deref())
}

/// The cluster this node joins, from the configuration's `cluster:` block.
fn cluster_settings(
    c: &tend_specs::agent_config::cluster::ClusterConfig,
) -> Result<crate::daemon::cluster::ClusterSettings, CliError> {
    use crate::engine::etcd::{CredentialFiles, EtcdConfig, TlsFiles};
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let node = c.node_name(host_name.trim()).map_err(CliError::NodeName)?;
    let e = &c.etcd;
    // https:// endpoints (validation allows no mix) speak TLS, with the CA file or the
    // host's trusted CAs.
    let https = e.endpoints.iter().any(|u| u.starts_with("https://"));
    let tls = https.then(|| TlsFiles {
        ca_file: e.ca_file.clone(),
        cert_file: e.cert_file.clone(),
        key_file: e.key_file.clone(),
    });
    let credentials = match (&e.username_file, &e.password_file) {
        (Some(u), Some(p)) => Some(CredentialFiles { username_file: u.clone(), password_file: p.clone() }),
        _ => None,
    };
    let mut etcd = EtcdConfig::new(c.etcd.endpoints.clone());
    (etcd.tls, etcd.credentials) = (tls, credentials);
    let identity = crate::cluster::node::Identity {
        cluster: c.name.clone(),
        node,
        roles: c.roles.iter().cloned().collect(),
        address: c.address.clone(),
        ttl: c.lease_ttl.get(),
    };
    Ok(crate::daemon::cluster::ClusterSettings { identity, etcd })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cluster settings of a configuration file holding `cluster`.
    fn settings(cluster: &str) -> crate::daemon::cluster::ClusterSettings {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, format!("cluster:\n  name: c\n  node: a\n{cluster}")).expect("write");
        node_cluster(Some(&path)).expect("valid").expect("a cluster")
    }

    #[test]
    fn https_endpoints_speak_tls_with_the_ca_file_or_the_host_s_cas_and_http_ones_do_not() {
        let tls = |c: &str| settings(c).etcd.tls;
        let https = tls("  etcd: {endpoints: [\"https://10.0.0.1:2379\"]}\n").expect("TLS");
        assert_eq!((https.ca_file, https.cert_file), (None, None));
        let with_ca = tls("  etcd: {endpoints: [\"https://10.0.0.1:2379\"], caFile: /etc/tend/ca.pem}\n");
        assert_eq!(with_ca.expect("TLS").ca_file, Some(PathBuf::from("/etc/tend/ca.pem")));
        assert_eq!(tls("  etcd: {endpoints: [\"http://10.0.0.1:2379\"]}\n"), None);
    }
}
