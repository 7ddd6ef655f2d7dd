//! The agent's configuration file (`/etc/tend/agent.yaml`): where specs come from (a
//! directory or a git repository), where state and the API socket live, how often to
//! resync, the mass-removal guard, and membership of a cluster ([`cluster`]). It has its
//! own schema (`tend schema --agent-config`) and is checked like the specs: every problem
//! at once, each with its file:line:column.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Location};
use crate::quantity::Duration;
use crate::yaml::{Node, Value, parse_stream};

pub mod cluster;

pub use cluster::{ClusterConfig, EtcdConfig, NodeNameError};

/// How long tend waits for an engine (Docker, systemd) to answer one call, unless set
/// (`engineTimeout`, `--engine-timeout`). A healthy engine answers in milliseconds and a
/// loaded one in seconds; sd-bus, systemd's own client library, gives up after 25 s.
pub const DEFAULT_ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The shortest engine timeout: below a second a busy but healthy engine would be taken for
/// a hung one (and Docker's client counts whole seconds).
pub const MIN_ENGINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest engine timeout: beyond it a hung engine is no longer noticed in useful time.
pub const MAX_ENGINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// `resync`: at most 1h (and at least 1s: a pass more often than every second would be a
/// busy loop).
pub const RESYNC: crate::bounds::Bound<Duration> = crate::bounds::Bound {
    max: Duration::from_secs(3600),
    why: "drift no event announced is repaired within the hour",
};

/// `debounce`: at most 1m (changes wait this long before they are read).
pub const DEBOUNCE: crate::bounds::Bound<Duration> =
    crate::bounds::Bound { max: Duration::from_secs(60), why: "a spec change waits this long before it is read" };

/// `parallel`: 1 to 64 steps at once (each may hold an engine connection).
pub const PARALLEL: crate::bounds::Bound<usize> =
    crate::bounds::Bound { max: 64, why: "steps at once, each holding a connection to an engine" };

/// `source.git.interval`: at least 1s, at most 1d.
pub const GIT_INTERVAL: crate::bounds::Bound<Duration> =
    crate::bounds::Bound { max: Duration::from_secs(86_400), why: "a pushed commit is fetched within a day" };

/// `socket.path`: a Unix socket's path holds at most 107 bytes (`sun_path`, 108 with the
/// final NUL).
pub const SOCKET_PATH: crate::bounds::Bound<usize> =
    crate::bounds::Bound { max: 107, why: "a Unix socket's address holds at most 108 bytes with its final NUL" };

/// `source.git.url`.
pub const GIT_URL: crate::bounds::Bound<usize> = crate::bounds::Bound { max: 4096, why: "URLs" };

/// A git branch or tag name.
pub const GIT_REF: crate::bounds::Bound<usize> = crate::bounds::Bound { max: 255, why: "git ref names" };

/// Checks an engine timeout against [`MIN_ENGINE_TIMEOUT`] and [`MAX_ENGINE_TIMEOUT`]; the
/// error completes "engineTimeout …" with what is allowed.
pub fn check_engine_timeout(d: Duration) -> Result<(), String> {
    if (MIN_ENGINE_TIMEOUT..=MAX_ENGINE_TIMEOUT).contains(&d.get()) {
        Ok(())
    } else {
        Err(format!("must be 1s to 10m (found {d})"))
    }
}

/// The agent's configuration. Every field has a default, so an empty file is valid (specs
/// from `/etc/tend/specs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// The scope this agent owns (objects labelled `tend.scope=SCOPE`); default `default`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Where specs come from (default: the directory `/etc/tend/specs`).
    #[serde(default)]
    pub source: Source,
    /// State directory: holds, restart history, job histories, git checkouts (default
    /// `/var/lib/tend`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Where unit files of systemd services and Timers are written (default
    /// `/etc/systemd/system`).
    #[serde(default)]
    pub unit_dir: Option<PathBuf>,
    /// Where environment files with secrets are written (default `/etc/tend/env`).
    #[serde(default)]
    pub env_dir: Option<PathBuf>,
    /// A full pass at least this often, even when no event came (default 60s; 1s to 1h).
    #[serde(default = "AgentConfig::default_resync")]
    pub resync: Duration,
    /// Quiet time after a spec file changes before the set is read again (default 300ms; at
    /// most 1m).
    #[serde(default = "AgentConfig::default_debounce")]
    pub debounce: Duration,
    /// Steps run at once in a pass (default 8; 1 to 64).
    #[serde(default = "AgentConfig::default_parallel")]
    #[schemars(range(min = 1, max = PARALLEL.max))]
    pub parallel: usize,
    /// How long to wait for an engine (Docker, systemd) to answer one call before taking it
    /// for unresponsive (default 30s; 1s to 10m). Calls that last by nature get more: a
    /// stop its grace period on top, a pull this long twice without a progress message.
    #[serde(default = "AgentConfig::default_engine_timeout")]
    pub engine_timeout: Duration,
    /// The local API socket.
    #[serde(default)]
    pub socket: SocketConfig,
    /// Prometheus metrics on a TCP address, besides the socket.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The guard against removing most of what is managed in one pass.
    #[serde(default)]
    pub mass_removal: MassRemoval,
    /// Membership of a cluster coordinated through etcd (default: none; the node is a
    /// cluster of one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

impl AgentConfig {
    fn default_resync() -> Duration {
        Duration::from_secs(60)
    }

    fn default_debounce() -> Duration {
        Duration::from_millis(300)
    }

    fn default_parallel() -> usize {
        8
    }

    fn default_engine_timeout() -> Duration {
        DEFAULT_ENGINE_TIMEOUT
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            scope: None,
            source: Source::default(),
            state_dir: None,
            unit_dir: None,
            env_dir: None,
            resync: Self::default_resync(),
            debounce: Self::default_debounce(),
            parallel: Self::default_parallel(),
            engine_timeout: Self::default_engine_timeout(),
            socket: SocketConfig::default(),
            metrics: None,
            mass_removal: MassRemoval::default(),
            cluster: None,
        }
    }
}

/// Where specs come from: exactly one of `dir` and `git`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// A local directory of spec files, watched for changes.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A git repository, polled; each new commit is checked out whole, validated, then
    /// switched to.
    #[serde(default)]
    pub git: Option<GitSource>,
}

/// A git repository holding the specs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSource {
    /// The repository: `https://…`, `ssh://…`, `git://…` or `file:///…`.
    pub url: String,
    /// The branch to follow (one of `branch` and `tag`).
    #[serde(default)]
    pub branch: Option<String>,
    /// The tag to follow (one of `branch` and `tag`).
    #[serde(default)]
    pub tag: Option<String>,
    /// The directory inside the repository holding the specs (default: its root).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How often to fetch (default 60s; 1s to 1d).
    #[serde(default = "GitSource::default_interval")]
    pub interval: Duration,
    /// A private key file for `ssh://` URLs.
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// A file holding an HTTPS access token (sent as a header; never logged).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl GitSource {
    fn default_interval() -> Duration {
        Duration::from_secs(60)
    }
}

/// The local API socket.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SocketConfig {
    /// Its path (default `/run/tend/tend.sock`; absolute, at most 107 bytes).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The group that may use it (mode 0660, owner root); default: root's group only.
    #[serde(default)]
    pub group: Option<String>,
}

/// Prometheus metrics on TCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address to serve `/metrics` on, e.g. `127.0.0.1:9713`.
    pub listen: String,
}

/// The mass-removal guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MassRemoval {
    /// Allow any removal (as `tend agent --allow-mass-removal`).
    #[serde(default)]
    pub allow: bool,
    /// The largest share of managed objects (services and Timers), in percent, that one spec
    /// set may remove (default 50; at most 100). A set that removes more is not applied.
    #[serde(default = "MassRemoval::default_max_percent")]
    #[schemars(range(max = 100))]
    pub max_percent: u8,
}

impl MassRemoval {
    fn default_max_percent() -> u8 {
        50
    }
}

impl Default for MassRemoval {
    fn default() -> Self {
        Self { allow: false, max_percent: Self::default_max_percent() }
    }
}

/// Reads and checks the configuration file at `path`.
pub fn load_agent_config(path: &Path) -> Result<AgentConfig, Vec<Diagnostic>> {
    let problem = |why: String| vec![Diagnostic::general(format!("{}: {why}", path.display()))];
    let text = match crate::files::read_text(path, crate::files::AGENT_CONFIG) {
        Ok(Ok(text)) => text,
        Ok(Err(offset)) => return Err(problem(format!("not UTF-8 text (invalid byte at offset {offset})"))),
        Err(e @ crate::files::ReadError::Read { .. }) => {
            return Err(problem(format!("cannot read the agent configuration: {}", e.reason())));
        }
        Err(e) => return Err(problem(e.reason())),
    };
    parse_agent_config(path, &text)
}

/// Checks configuration text, as if read from `file`.
pub fn parse_agent_config(file: &Path, text: &str) -> Result<AgentConfig, Vec<Diagnostic>> {
    let file: Arc<Path> = Arc::from(file);
    let loc = |node: &Node| Location { file: file.clone(), line: node.mark.line, column: node.mark.column };
    let Some(node) = read_document(&file, text)? else { return Ok(AgentConfig::default()) };
    let mut diags = Vec::new();
    let config: Option<AgentConfig> = crate::de::from_node(&node, &file, &mut diags);
    let Some(config) = config else { return Err(diags) };
    let at = |path: &[&str]| {
        let mut cur = &node;
        for k in path {
            match cur.get(k) {
                Some(n) => cur = n,
                None => break,
            }
        }
        loc(cur)
    };
    if let Some(scope) = &config.scope
        && !crate::load::is_dns_label(scope)
    {
        diags.push(Diagnostic::at(
            at(&["scope"]),
            format!("scope `{scope}` is not a DNS label (lowercase letters, digits, `-`)"),
        ));
    }
    check_source(&config, &at, &mut diags);
    check_paths(&config, &at, &mut diags);
    check_socket(&config, &at, &mut diags);
    if let Some(m) = &config.metrics
        && m.listen.parse::<SocketAddr>().is_err()
    {
        diags.push(Diagnostic::at(
            at(&["metrics", "listen"]),
            format!("`{}` is not an address and port (such as 127.0.0.1:9713)", m.listen),
        ));
    }
    check_numbers(&config, &at, &mut diags);
    if let Some(cluster) = &config.cluster {
        cluster::check(cluster, &node, &file, &mut diags);
    }
    diags.sort();
    if diags.is_empty() { Ok(config) } else { Err(diags) }
}

/// Parses the text as the one YAML document a configuration is, a mapping; `None` when it
/// has none.
fn read_document(file: &Arc<Path>, text: &str) -> Result<Option<Node>, Vec<Diagnostic>> {
    let loc = |node: &Node| Location { file: file.clone(), line: node.mark.line, column: node.mark.column };
    let nodes = parse_stream(text).map_err(|e| {
        let at = Location { file: file.clone(), line: e.mark.line, column: e.mark.column };
        vec![Diagnostic::at(at, format!("malformed YAML: {}", e.message))]
    })?;
    let mut docs = nodes.into_iter().filter(|n| !n.is_null());
    let Some(node) = docs.next() else { return Ok(None) };
    if let Some(extra) = docs.next() {
        return Err(vec![Diagnostic::at(loc(&extra), "the agent configuration is one document; found a second")]);
    }
    if !matches!(node.value, Value::Map(_)) {
        return Err(vec![Diagnostic::at(loc(&node), format!("expected a mapping, found {}", node.kind_name()))]);
    }
    Ok(Some(node))
}

/// Checks `source`: one of `dir` (absolute) and `git` (checked by [`check_git`]).
fn check_source(config: &AgentConfig, at: &dyn Fn(&[&str]) -> Location, diags: &mut Vec<Diagnostic>) {
    match (&config.source.dir, &config.source.git) {
        (Some(_), Some(_)) => {
            diags.push(Diagnostic::at(at(&["source"]), "source: set one of `dir` and `git`, not both"));
        }
        (Some(dir), None) if !dir.is_absolute() => {
            diags.push(Diagnostic::at(at(&["source", "dir"]), "source.dir must be an absolute path"));
        }
        _ => {}
    }
    if let Some(git) = &config.source.git {
        check_git(git, &|k: &str| at(&["source", "git", k]), diags);
    }
}

/// Checks the agent's directories: `stateDir`, `unitDir` and `envDir` absolute, and each
/// of them and `source.dir` within the length of a path.
fn check_paths(config: &AgentConfig, at: &dyn Fn(&[&str]) -> Location, diags: &mut Vec<Diagnostic>) {
    for (key, value) in [("stateDir", &config.state_dir), ("unitDir", &config.unit_dir), ("envDir", &config.env_dir)] {
        if value.as_ref().is_some_and(|p| !p.is_absolute()) {
            diags.push(Diagnostic::at(at(&[key]), format!("{key} must be an absolute path")));
        }
    }
    let paths = [
        (&["stateDir"][..], &config.state_dir),
        (&["unitDir"], &config.unit_dir),
        (&["envDir"], &config.env_dir),
        (&["source", "dir"], &config.source.dir),
    ];
    for (path, value) in paths {
        if let Some(p) = value
            && let Some(msg) = crate::bounds::PATH.check_bytes(&format!("`{}`", path.join(".")), p.as_os_str().len())
        {
            diags.push(Diagnostic::at(at(path), msg));
        }
    }
}

/// Checks `socket`: its `path` absolute and short enough for a socket, its `group` a group.
fn check_socket(config: &AgentConfig, at: &dyn Fn(&[&str]) -> Location, diags: &mut Vec<Diagnostic>) {
    if config.socket.path.as_ref().is_some_and(|p| !p.is_absolute()) {
        diags.push(Diagnostic::at(at(&["socket", "path"]), "socket.path must be an absolute path"));
    }
    if let Some(path) = &config.socket.path
        && let Some(msg) = SOCKET_PATH.check_bytes("`socket.path`", path.as_os_str().len())
    {
        diags.push(Diagnostic::at(at(&["socket", "path"]), msg));
    }
    if let Some(group) = &config.socket.group
        && !crate::load::is_account(group)
    {
        diags.push(Diagnostic::at(
            at(&["socket", "group"]),
            format!(
                "`{}` is not a group name (letters, digits, `_`, `.` and `-`, starting with a letter or `_`, at most 32 characters) or number",
                crate::diag::shown(group)
            ),
        ));
    }
}

/// Checks the numbers and durations: `massRemoval.maxPercent`, `resync`, `debounce`,
/// `parallel` and `engineTimeout` within their bounds.
fn check_numbers(config: &AgentConfig, at: &dyn Fn(&[&str]) -> Location, diags: &mut Vec<Diagnostic>) {
    if config.mass_removal.max_percent > 100 {
        diags.push(Diagnostic::at(
            at(&["massRemoval", "maxPercent"]),
            "massRemoval.maxPercent is a percentage: 0 to 100",
        ));
    }
    if config.resync.get() < std::time::Duration::from_secs(1) {
        diags.push(Diagnostic::at(at(&["resync"]), "resync must be at least 1s"));
    }
    if config.parallel == 0 {
        diags.push(Diagnostic::at(at(&["parallel"]), "parallel must be at least 1"));
    }
    let bounded = [
        ("resync", RESYNC.check("resync", config.resync)),
        ("debounce", DEBOUNCE.check("debounce", config.debounce)),
        ("parallel", PARALLEL.check("parallel", config.parallel)),
    ];
    for (key, problem) in bounded {
        if let Some(msg) = problem {
            diags.push(Diagnostic::at(at(&[key]), msg));
        }
    }
    if let Err(why) = check_engine_timeout(config.engine_timeout) {
        diags.push(Diagnostic::at(at(&["engineTimeout"]), format!("engineTimeout {why}")));
    }
}

fn check_git(git: &GitSource, at: &dyn Fn(&str) -> Location, diags: &mut Vec<Diagnostic>) {
    let schemes = ["https://", "http://", "ssh://", "git://", "file:///"];
    if !schemes.iter().any(|s| git.url.starts_with(s)) {
        diags.push(Diagnostic::at(
            at("url"),
            "source.git.url must start with https://, http://, ssh://, git:// or file:///".to_string(),
        ));
    }
    if git.url.contains('@')
        && git
            .url
            .split("://")
            .nth(1)
            .is_some_and(|rest| rest.split('/').next().is_some_and(|h| h.contains(':') && h.contains('@')))
    {
        diags.push(Diagnostic::at(
            at("url"),
            "source.git.url holds a password: put the token in a file and name it in tokenFile".to_string(),
        ));
    }
    match (&git.branch, &git.tag) {
        (Some(_), Some(_)) => {
            diags.push(Diagnostic::at(at("branch"), "source.git: set one of `branch` and `tag`, not both"))
        }
        (None, None) => diags.push(Diagnostic::at(at("url"), "source.git: set `branch` or `tag`")),
        _ => {}
    }
    for r in git.branch.iter().chain(&git.tag) {
        if r.is_empty()
            || r.len() > GIT_REF.max
            || r.starts_with('-')
            || r.contains([' ', '~', '^', ':', '?', '*', '[', '\\'])
            || r.contains(char::is_control)
            || r.contains("..")
        {
            diags.push(Diagnostic::at(
                at(if git.branch.is_some() { "branch" } else { "tag" }),
                format!(
                    "`{}` is not a valid git ref name (at most {} bytes, without spaces, control characters, `..` or any of `~^:?*[\\`)",
                    crate::diag::shown(r),
                    GIT_REF.max
                ),
            ));
        }
    }
    if let Some(p) = &git.path
        && (p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)))
    {
        diags
            .push(Diagnostic::at(at("path"), "source.git.path is a relative path inside the repository, without `..`"));
    }
    if git.token_file.is_some() && !git.url.starts_with("https://") {
        diags.push(Diagnostic::at(at("tokenFile"), "source.git.tokenFile is sent only over https:// URLs"));
    }
    if git.ssh_key.is_some() && !git.url.starts_with("ssh://") && git.url.contains("://") {
        diags.push(Diagnostic::at(at("sshKey"), "source.git.sshKey is used only with ssh:// URLs"));
    }
    for (key, file) in [("sshKey", &git.ssh_key), ("tokenFile", &git.token_file)] {
        if file.as_ref().is_some_and(|p| !p.is_absolute()) {
            diags.push(Diagnostic::at(at(key), format!("source.git.{key} must be an absolute path")));
        }
    }
    if git.interval.get() < std::time::Duration::from_secs(1) {
        diags.push(Diagnostic::at(at("interval"), "source.git.interval must be at least 1s"));
    }
    if let Some(msg) = GIT_INTERVAL.check("source.git.interval", git.interval) {
        diags.push(Diagnostic::at(at("interval"), msg));
    }
    if let Some(msg) = GIT_URL.check_bytes("`source.git.url`", git.url.len()) {
        diags.push(Diagnostic::at(at("url"), msg));
    } else if git.url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        diags.push(Diagnostic::at(at("url"), "source.git.url cannot contain spaces or control characters"));
    }
    for (key, file) in [("path", &git.path), ("sshKey", &git.ssh_key), ("tokenFile", &git.token_file)] {
        if let Some(p) = file
            && let Some(msg) = crate::bounds::PATH.check_bytes(&format!("`source.git.{key}`"), p.as_os_str().len())
        {
            diags.push(Diagnostic::at(at(key), msg));
        }
    }
}

/// The JSON Schema (draft 2020-12) of the configuration file.
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<AgentConfig>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("$id".into(), "https://tend.invalid/schema/agent-config.schema.json".into());
    }
    schema
}

/// The schema as the committed text (`specs/schema/agent-config.schema.json`).
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, Vec<String>> {
        parse_agent_config(Path::new("agent.yaml"), text).map_err(|d| d.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn a_byte_order_mark_is_read_past() {
        assert_eq!(parse("\u{feff}parallel: 3\n").expect("with a BOM").parallel, 3);
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(parse("").expect("empty"), AgentConfig::default());
        assert_eq!(parse("# nothing\n").expect("comment"), AgentConfig::default());
    }

    #[test]
    fn a_full_configuration_reads() {
        let c = parse(
            "scope: vm-a\nsource:\n  git:\n    url: https://git.example.org/ops/specs.git\n    branch: main\n    path: hosts/vm-a\n    interval: 30s\n    tokenFile: /etc/tend/git-token\nstateDir: /var/lib/tend\nresync: 2m\nsocket: {path: /run/tend/tend.sock, group: tend}\nmetrics: {listen: '127.0.0.1:9713'}\nmassRemoval: {maxPercent: 30}\n",
        )
        .expect("valid");
        let git = c.source.git.expect("git");
        assert_eq!(git.branch.as_deref(), Some("main"));
        assert_eq!(git.interval.get(), std::time::Duration::from_secs(30));
        assert_eq!(c.resync.get(), std::time::Duration::from_secs(120));
        assert_eq!(c.mass_removal.max_percent, 30);
        assert_eq!(c.socket.group.as_deref(), Some("tend"));
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let errs = parse(
            "scope: VM_A\nsource:\n  dir: specs\n  git: {url: 'ftp://x', branch: main, tag: v1, path: ../up}\nresync: 10ms\nmetrics: {listen: localhost}\nmassRemoval: {maxPercent: 150}\nsockett: {}\n",
        )
        .expect_err("invalid");
        let all = errs.join("\n");
        let want = "agent.yaml:8:1: unknown field `sockett`";
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
        // Decoding problems come first; once the types decode, the rules are checked.
        let errs = parse(
            "scope: VM_A\nsource:\n  dir: specs\n  git: {url: 'ftp://x', branch: main, tag: v1, path: ../up}\nresync: 10ms\nmetrics: {listen: localhost}\nmassRemoval: {maxPercent: 100}\n",
        )
        .expect_err("invalid");
        let all = errs.join("\n");
        for want in [
            "agent.yaml:1:8: scope `VM_A` is not a DNS label",
            "agent.yaml:3:3: source: set one of `dir` and `git`, not both",
            "agent.yaml:4:14: source.git.url must start with",
            "set one of `branch` and `tag`, not both",
            "agent.yaml:4:54: source.git.path is a relative path",
            "agent.yaml:5:9: resync must be at least 1s",
            "agent.yaml:6:19: `localhost` is not an address and port",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn the_engine_timeout_defaults_to_30s_and_is_bounded() {
        assert_eq!(parse("").expect("empty").engine_timeout.get(), std::time::Duration::from_secs(30));
        assert_eq!(parse("engineTimeout: 2m\n").expect("2m").engine_timeout.get(), std::time::Duration::from_secs(120));
        for (text, found) in [("500ms", "500ms"), ("11m", "11m"), ("0s", "0s")] {
            let errs = parse(&format!("parallel: 4\nengineTimeout: {text}\n")).expect_err(text).join("\n");
            assert!(
                errs.contains(&format!("agent.yaml:2:16: engineTimeout must be 1s to 10m (found {found})")),
                "{errs}"
            );
        }
        for edge in ["1s", "10m"] {
            assert!(parse(&format!("engineTimeout: {edge}\n")).is_ok(), "{edge}");
        }
    }

    #[test]
    fn every_value_has_a_bound() {
        let ok = "resync: 1h\ndebounce: 1m\nparallel: 64\nsocket: {path: /run/tend/tend.sock, group: tend}\n\
                  source:\n  git: {url: 'https://example.org/x.git', branch: main, interval: 1d}\n";
        parse(ok).expect("at the bounds");
        let long_socket = format!("/run/{}", "s".repeat(103));
        let long_dir = format!("/{}", "d".repeat(4095));
        let errs = parse(&format!(
            "resync: 61m\ndebounce: 2m\nparallel: 65\nsocket: {{path: {long_socket}, group: \"a\\nb\"}}\nstateDir: {long_dir}\n\
             source:\n  git: {{url: 'https://example.org/x y.git', branch: \"m\\tx\", interval: 2d}}\n"
        ))
        .expect_err("over the bounds");
        let all = errs.join("\n");
        for want in [
            "agent.yaml:1:9: `resync` is 1h1m; at most 1h",
            "agent.yaml:2:11: `debounce` is 2m; at most 1m",
            "agent.yaml:3:11: `parallel` is 65; at most 64",
            "agent.yaml:4:16: `socket.path` is 108 bytes long; at most 107",
            "`a\\nb` is not a group name",
            "agent.yaml:5:11: `stateDir` is 4096 bytes long; at most 4095",
            "source.git.url cannot contain spaces or control characters",
            "`m\\tx` is not a valid git ref name",
            "`source.git.interval` is 2d; at most 1d",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 9, "{all}");
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        let errs = parse("source:\n  git: {url: 'https://bob:s3cret@example.org/x.git', branch: main}\n")
            .expect_err("password");
        let all = errs.join("\n");
        assert!(all.contains("holds a password"), "{all}");
        assert!(!all.contains("s3cret"), "{all}");
    }

    #[test]
    fn the_file_must_be_a_regular_file_of_at_most_1_mib() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("agent.yaml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; (1 << 20) + 1]).expect("write");
        for (path, why) in [
            (
                fifo.clone(),
                "it is not a regular file (a FIFO); the agent configuration is read only from a regular file",
            ),
            (big.clone(), "it is 1048577 bytes; the agent configuration is at most 1048576"),
            ("/dev/zero".into(), "it is not a regular file (a character device)"),
        ] {
            let (tx, rx) = std::sync::mpsc::channel();
            let p = path.clone();
            std::thread::spawn(move || {
                let _ = tx.send(load_agent_config(&p));
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("no blocking");
            let errs: Vec<String> = got.expect_err("refused").iter().map(ToString::to_string).collect();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with(&format!("{}: {why}", path.display())), "{errs:?}");
        }
    }

    const CLUSTER: &str = "cluster:\n  name: judicators\n  node: vm-a\n  address: 10.0.0.5\n  roles: [judicator, mongo]\n  etcd:\n    endpoints: ['https://10.0.0.1:2379', 'https://10.0.0.2:2379/']\n    caFile: /etc/tend/etcd/ca.pem\n    certFile: /etc/tend/etcd/vm-a.pem\n    keyFile: /etc/tend/etcd/vm-a-key.pem\n    usernameFile: /etc/tend/etcd/user\n    passwordFile: /etc/tend/etcd/password\n  leaseTTL: 15s\n";

    #[test]
    fn a_cluster_block_reads_and_is_absent_by_default() {
        assert_eq!(parse("parallel: 3\n").expect("no cluster").cluster, None);
        let c = parse(CLUSTER).expect("valid").cluster.expect("a cluster");
        assert_eq!(
            (c.name.as_str(), c.node.as_deref(), c.address.as_deref()),
            ("judicators", Some("vm-a"), Some("10.0.0.5"))
        );
        assert_eq!(c.roles, ["judicator", "mongo"]);
        assert_eq!(c.etcd.endpoints.len(), 2);
        assert_eq!(c.etcd.cert_file.as_deref(), Some(Path::new("/etc/tend/etcd/vm-a.pem")));
        assert_eq!(c.lease_ttl.get(), std::time::Duration::from_secs(15));
        let minimal =
            parse("cluster: {name: c, etcd: {endpoints: ['http://127.0.0.1:2379']}}\n").expect("minimal").cluster;
        let minimal = minimal.expect("a cluster");
        assert_eq!((minimal.node, minimal.address, minimal.roles.len()), (None, None, 0));
        assert_eq!(minimal.lease_ttl.get(), std::time::Duration::from_secs(10), "the default");
    }

    #[test]
    fn unknown_cluster_fields_are_named_with_the_nearest_one() {
        let errs = parse(
            "cluster:\n  name: c\n  role: [a]\n  leaseTtl: 5s\n  etcd:\n    endpoint: ['http://127.0.0.1:2379']\n",
        )
        .expect_err("typos");
        let all = errs.join("\n");
        for want in [
            "agent.yaml:3:3: unknown field `role`, did you mean `roles`?",
            "agent.yaml:4:3: unknown field `leaseTtl`, did you mean `leaseTTL`?",
            "agent.yaml:6:5: unknown field `endpoint`, did you mean `endpoints`?",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        let errs = parse("cluster: {name: c}\n").expect_err("no etcd").join("\n");
        assert!(errs.contains("agent.yaml:1:10: missing field `etcd`"), "{errs}");
    }

    #[test]
    fn every_problem_of_a_cluster_block_is_reported_with_its_place() {
        let errs = parse(
            "cluster:\n  name: Judicators\n  node: vm_a\n  address: '10.0.0.5:22'\n  roles: [judicator, judicator, -x]\n  etcd:\n    endpoints: ['https://10.0.0.1:2379', 'http://10.0.0.2:2379', 'https://10.0.0.1:2379/', 'https://root:pw@10.0.0.3:2379', 'https://10.0.0.4']\n    caFile: etc/ca.pem\n    certFile: /etc/tend/etcd/cert.pem\n    usernameFile: /etc/tend/etcd/user\n  leaseTTL: 1500ms\n",
        )
        .expect_err("invalid");
        let all = errs.join("\n");
        for want in [
            "agent.yaml:2:9: `cluster.name` `Judicators` is not a DNS label",
            "agent.yaml:3:9: `cluster.node` `vm_a` is not a DNS label",
            "agent.yaml:4:12: `cluster.address` `10.0.0.5:22` is not a host name or an IP address (without a port)",
            "agent.yaml:5:22: `cluster.roles` lists `judicator` twice (first as roles[0])",
            "agent.yaml:5:33: `cluster.roles[2]` `-x` is not a DNS label",
            "agent.yaml:7:42: `cluster.etcd.endpoints[1]` is http://: the endpoints share one scheme, like the first (https://)",
            "agent.yaml:7:66: `cluster.etcd.endpoints[2]` lists the endpoint of endpoints[0] again",
            "agent.yaml:7:92: `cluster.etcd.endpoints[3]`: holds a user name or password",
            "agent.yaml:7:125: `cluster.etcd.endpoints[4]`: `https://10.0.0.4` has no port",
            "agent.yaml:8:13: `cluster.etcd.caFile` must be an absolute path",
            "agent.yaml:9:15: `cluster.etcd.certFile` needs `keyFile` beside it (a client certificate goes with its key)",
            "agent.yaml:10:19: `cluster.etcd.usernameFile` needs `passwordFile` beside it",
            "agent.yaml:11:13: `cluster.leaseTTL` is 1s500ms; at least 2s",
            "agent.yaml:11:13: `cluster.leaseTTL` is 1s500ms; write whole seconds",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 14, "{all}");
        assert!(!all.contains("pw@"), "a password in an endpoint is not shown: {all}");
    }

    #[test]
    fn a_cluster_block_has_bounds_and_takes_credentials_over_https_only() {
        let roles: Vec<String> = (0..33).map(|i| format!("r{i}")).collect();
        let endpoints: Vec<String> = (0..17).map(|i| format!("'http://10.0.0.{i}:2379'")).collect();
        let errs = parse(&format!(
            "cluster:\n  name: {}\n  roles: [{}]\n  etcd:\n    endpoints: [{}]\n    caFile: /ca.pem\n    usernameFile: /u\n    passwordFile: /p\n  leaseTTL: 6m\n",
            "c".repeat(64),
            roles.join(", "),
            endpoints.join(", ")
        ))
        .expect_err("over the bounds");
        let all = errs.join("\n");
        for want in [
            "agent.yaml:2:9: `cluster.name` is 64 bytes long; at most 63",
            "agent.yaml:3:10: `cluster.roles` has 33 entries; at most 32",
            "agent.yaml:5:16: `cluster.etcd.endpoints` has 17 entries; at most 16",
            "agent.yaml:6:13: `cluster.etcd.caFile` is used only with https:// endpoints: it is for TLS",
            "agent.yaml:7:19: `cluster.etcd.usernameFile` is used only with https:// endpoints: over http:// the password would cross the network in clear",
            "agent.yaml:8:19: `cluster.etcd.passwordFile` is used only with https:// endpoints",
            "agent.yaml:9:13: `cluster.leaseTTL` is 6m; at most 5m",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 7, "{all}");
        let errs = parse("cluster: {name: c, etcd: {endpoints: []}}\n").expect_err("no endpoint").join("\n");
        assert!(errs.contains("agent.yaml:1:38: `cluster.etcd.endpoints` is empty"), "{errs}");
        for edge in ["2s", "5m"] {
            let text =
                format!("cluster: {{name: c, etcd: {{endpoints: ['http://127.0.0.1:2379']}}, leaseTTL: {edge}}}\n");
            assert!(parse(&text).is_ok(), "{edge}");
        }
    }

    #[test]
    fn the_commented_cluster_block_of_the_sample_configuration_is_valid() {
        let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../units/agent.yaml"))
            .expect("units/agent.yaml");
        let block: String = sample
            .lines()
            .skip_while(|l| *l != "# cluster:")
            .take_while(|l| !l.is_empty())
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let c = parse(&block).unwrap_or_else(|e| panic!("{e:?}\n{block}")).cluster.expect("a cluster block");
        assert_eq!((c.name.as_str(), c.etcd.endpoints.len()), ("judicators", 3));
    }

    #[test]
    fn a_git_source_needs_a_ref() {
        let errs = parse("source:\n  git: {url: 'file:///srv/specs.git'}\n").expect_err("no ref");
        assert!(errs.join("\n").contains("set `branch` or `tag`"));
    }
}
