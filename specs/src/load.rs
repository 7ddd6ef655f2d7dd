//! Loading: read spec files (a file, or a directory recursively), parse every document,
//! decode and validate, and collect every problem with its file:line:column. A set with
//! any problem is rejected whole.
//!
//! Every problem comes in one round: a document with problems of its own is still decoded
//! as far as it can be ([`partial_from_node`]), and the checks across documents (the
//! names `dependsOn`, hooks, `quiesce.stop` and a Backup's commands give; host ports) run
//! on what it wrote correctly. Its own further checks wait until it decodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::backup::BackupSpec;
use crate::bounds;
use crate::de::{Partial, from_node, partial_from_node};
use crate::desired::{Desired, Env, Secret, Service, Timer, systemd_hashes, template_hashes, timer_hashes};
use crate::diag::{Diagnostic, Location, shown};
use crate::files::{self, io_reason};
use crate::hash::sha256_hex;
use crate::service::{
    Backoff, Dependency, EnvValue, HealthCheck, MountSource, OnLostLease, Placement, Protocol, RolloutOrder, Runtime,
    ServiceSpec, UpdateWindow, VolumeMount,
};
use crate::timer::TimerSpec;
use crate::yaml::{Node, Value, parse_stream, strip_bom};

/// The only API version this tend reads.
pub const API_VERSION: &str = "tend/v1";

/// Kinds the language knows, and whether this version implements them.
const KINDS: &[(&str, bool)] = &[("Service", true), ("Timer", true), ("Backup", true), ("Replica", false)];

/// Object metadata.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// One document as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // apiVersion and kind are checked on the node, before decoding.
struct Document<S> {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: S,
}

/// A document of a kind this tend decodes, with the node it came from for locating later
/// problems.
struct Decoded<S> {
    file: Arc<Path>,
    /// The text of the file, for mapping a column inside a scalar back to the file.
    source: Arc<str>,
    node: Node,
    metadata: Metadata,
    spec: Spec<S>,
}

/// How far a document's spec decoded. A document with problems still has its name, so
/// that a typo in one service does not also make every `dependsOn` naming it an "unknown
/// service".
enum Spec<S> {
    /// Without problems: every check runs on it.
    Whole(S),
    /// With problems (reported), leaving out what had them: only the checks across
    /// documents run on it, on what it kept.
    Partial(Partial<S>),
    /// Not at all (its header is wrong, or nothing but its name could be read).
    Unread,
}

impl<S> Spec<S> {
    /// The spec, whole or partial.
    fn value(&self) -> Option<&S> {
        match self {
            Spec::Whole(spec) => Some(spec),
            Spec::Partial(partial) => Some(&partial.value),
            Spec::Unread => None,
        }
    }
}

impl Decoded<ServiceSpec> {
    /// The service's runtime, when it is known: as written, or not written and so the
    /// default (unknown when it is written wrong).
    fn runtime(&self) -> Option<Runtime> {
        match &self.spec {
            Spec::Whole(spec) => Some(spec.runtime),
            Spec::Partial(p) => p.is_real(&self.node, &["spec", "runtime"]).then_some(p.value.runtime),
            Spec::Unread => None,
        }
    }
}

/// The documents of a spec set, decoded as far as they could be.
struct Documents {
    services: Vec<Decoded<ServiceSpec>>,
    timers: Vec<Decoded<TimerSpec>>,
    backups: Vec<Decoded<BackupSpec>>,
    /// False when the name of some document could not be read (a file that does not parse,
    /// a broken `metadata`): it may be the service a `dependsOn` (or the Timer a hook)
    /// names, so no reference is called unknown until that is fixed.
    all_named: bool,
    /// Documents met so far (of any kind); past [`bounds::OBJECTS`] the rest is not read.
    count: usize,
}

impl Default for Documents {
    fn default() -> Self {
        Self { services: Vec::new(), timers: Vec::new(), backups: Vec::new(), all_named: true, count: 0 }
    }
}

/// A decoded service whose name is valid and unique: what the checks across services
/// (dependencies, host ports) look at, whether or not its own checks passed, and also
/// when it decoded only partly.
struct Checked {
    file: Arc<Path>,
    node: Node,
    name: String,
    spec: ServiceSpec,
    /// The runtime, unless it is unknown (written wrong).
    runtime: Option<Runtime>,
    /// `None` when the service's own checks failed, or it decoded only partly.
    service: Option<Service>,
}

impl Checked {
    fn at(&self, path: &[Seg<'_>]) -> Location {
        at(&self.file, locate(&self.node, path))
    }
}

/// How specs are loaded. The loader stays pure: the caller reads what it needs (the host's
/// salt from tend's state directory) and hands it in.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// The host's salt of the digests that stand for secrets in hashes
    /// ([`crate::hash::secret_digest`]). Empty: the unsalted digest (`tend validate`, tests).
    pub secret_salt: &'a [u8],
}

/// Loads and validates the specs at `path` (a file or a directory, read recursively for
/// `*.yaml` and `*.yml`; hidden files and editor backups are skipped), with secrets' digests
/// unsalted ([`load_path_with`] takes the host's salt).
pub fn load_path(path: &Path) -> Result<Desired, Vec<Diagnostic>> {
    load_path_with(path, &LoadOptions::default())
}

/// [`load_path`] with `options`.
pub fn load_path_with(path: &Path, options: &LoadOptions<'_>) -> Result<Desired, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let files = match spec_files(path) {
        Ok(f) => f,
        Err(d) => return Err(vec![d]),
    };
    let mut docs = Documents::default();
    for file in files {
        let file: Arc<Path> = Arc::from(file.as_path());
        let text = match read_spec_file(&file) {
            Ok(t) => t,
            Err(msg) => {
                diags.push(Diagnostic::general(format!("{}: {msg}", file.display())));
                docs.all_named = false;
                continue;
            }
        };
        decode_file(&file, &text, &mut docs, &mut diags);
    }
    let desired = validate(docs, options, &mut diags);
    if diags.is_empty() {
        Ok(desired)
    } else {
        diags.sort();
        diags.dedup();
        Err(diags)
    }
}

/// Loads specs from text, as if read from `file` (for tests and stdin).
pub fn load_str(file: &Path, text: &str) -> Result<Desired, Vec<Diagnostic>> {
    load_str_with(file, text, &LoadOptions::default())
}

/// [`load_str`] with `options`.
pub fn load_str_with(file: &Path, text: &str, options: &LoadOptions<'_>) -> Result<Desired, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut docs = Documents::default();
    decode_file(&Arc::from(file), text, &mut docs, &mut diags);
    let desired = validate(docs, options, &mut diags);
    if diags.is_empty() { Ok(desired) } else { Err(diags) }
}

fn read_spec_file(file: &Path) -> Result<String, String> {
    match files::read_text(file, files::SPEC_FILE) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(offset)) => Err(format!("not UTF-8 text (invalid byte at offset {offset})")),
        Err(e @ files::ReadError::Read { .. }) => Err(format!("cannot read: {}", e.reason())),
        Err(e) => Err(e.reason()),
    }
}

fn is_spec_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn spec_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Diagnostic::general(format!("{}: cannot read specs: {e}", path.display())))?;
    if !meta.is_dir() {
        // A FIFO or device named on its own is refused by the read, with what it is.
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Diagnostic::general(format!("{}: cannot read directory: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| Diagnostic::general(format!("{}: cannot read directory: {e}", dir.display())))?;
            let p = entry.path();
            let hidden = entry.file_name().to_str().is_some_and(|n| n.starts_with('.'));
            let ft =
                std::fs::metadata(&p).map_err(|e| Diagnostic::general(format!("{}: cannot read: {e}", p.display())))?;
            if ft.is_dir() && !hidden {
                stack.push(p);
            } else if !ft.is_dir() && is_spec_file(&p) {
                // Not only regular files: a FIFO or device named `*.yaml` is reported by the
                // read rather than skipped, so no spec file is ignored without a word.
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn at(file: &Arc<Path>, node: &Node) -> Location {
    Location { file: file.clone(), line: node.mark.line, column: node.mark.column }
}

fn decode_file(file: &Arc<Path>, text: &str, docs: &mut Documents, diags: &mut Vec<Diagnostic>) {
    let text = strip_bom(text);
    let source: Arc<str> = Arc::from(text);
    let nodes = match parse_stream(text) {
        Ok(n) => n,
        Err(e) => {
            let loc = Location { file: file.clone(), line: e.mark.line, column: e.mark.column };
            // A calendar expression such as `*-*-* 01:00` reads as an alias when unquoted.
            let hint = if e.message.ends_with("refers to an unknown anchor") {
                "; to write a value that starts with `*`, quote it (schedule: \"*-*-* 01:00:00\")"
            } else {
                ""
            };
            diags.push(Diagnostic::at(loc, format!("malformed YAML: {}{hint}", e.message)));
            docs.all_named = false;
            return;
        }
    };
    for node in nodes {
        match &node.value {
            Value::Null => continue,
            Value::Map(_) => {
                docs.count += 1;
                if docs.count > bounds::OBJECTS.max {
                    if docs.count == bounds::OBJECTS.max + 1 {
                        diags.push(Diagnostic::at(
                            at(file, &node),
                            format!(
                                "this is document {} of the spec set; a set holds at most {} ({}), so it and the rest are not read",
                                docs.count,
                                bounds::OBJECTS.max,
                                bounds::OBJECTS.why
                            ),
                        ));
                    }
                    docs.all_named = false;
                    continue;
                }
            }
            _ => {
                diags.push(Diagnostic::at(
                    at(file, &node),
                    format!(
                        "expected a document (a mapping with apiVersion, kind, metadata, spec), found {}",
                        node.kind_name()
                    ),
                ));
                docs.all_named = false;
                continue;
            }
        }
        let kind = node.get("kind").and_then(Node::as_str).map(str::to_owned);
        let header = check_header(file, &node, diags);
        let source = source.clone();
        match kind.as_deref() {
            Some("Service") => match decode_doc(file, source, node, header, diags) {
                Some(d) => docs.services.push(d),
                None => docs.all_named = false,
            },
            Some("Timer") => match decode_doc(file, source, node, header, diags) {
                Some(d) => docs.timers.push(d),
                None => docs.all_named = false,
            },
            // A Backup's name is its own namespace: keep it for duplicates, and since nothing
            // refers to a Backup, an unreadable one hides no reference.
            Some("Backup") => docs.backups.extend(decode_doc(file, source, node, header, diags)),
            // Other kinds' names are not referenced yet; an unknown kind may be a typo.
            kind => docs.all_named &= KINDS.iter().any(|(k, _)| Some(*k) == kind),
        }
    }
}

/// Decodes a document of a kind this tend decodes: whole, or when it has problems (each
/// reported into `diags`), partly. `header`: whether its apiVersion and kind are right (if
/// not, only its name is read). `None` when its name cannot be read.
fn decode_doc<S: DeserializeOwned>(
    file: &Arc<Path>,
    source: Arc<str>,
    node: Node,
    header: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<Decoded<S>> {
    let decoded = |node, metadata, spec| Some(Decoded { file: file.clone(), source, node, metadata, spec });
    if header {
        if let Some(doc) = from_node::<Document<S>>(&node, file, diags) {
            return decoded(node, doc.metadata, Spec::Whole(doc.spec));
        }
        if let Some(partial) = partial_from_node::<Document<S>>(&node)
            && partial.is_real(&node, &["metadata", "name"])
        {
            let mut metadata = None;
            let spec = partial.map(|doc| {
                metadata = Some(doc.metadata);
                doc.spec
            });
            return decoded(node, metadata?, Spec::Partial(spec));
        }
    }
    // Quietly: decoding the document reported any problem of the metadata already.
    let metadata = node.get("metadata").and_then(|m| from_node::<Metadata>(m, file, &mut Vec::new()))?;
    decoded(node, metadata, Spec::Unread)
}

/// Checks apiVersion and kind; returns whether the document is a kind this tend decodes.
fn check_header(file: &Arc<Path>, node: &Node, diags: &mut Vec<Diagnostic>) -> bool {
    let mut ok = true;
    match node.get("apiVersion") {
        None => {
            diags
                .push(Diagnostic::at(at(file, node), format!("missing field `apiVersion` (expected `{API_VERSION}`)")));
            ok = false;
        }
        Some(n) => match &n.value {
            Value::String(s) if s == API_VERSION => {}
            Value::String(s) => {
                diags.push(Diagnostic::at(
                    at(file, n),
                    format!("unsupported apiVersion `{}`: expected `{API_VERSION}`", s.escape_default()),
                ));
                ok = false;
            }
            _ => {
                diags.push(Diagnostic::at(
                    at(file, n),
                    format!("expected `{API_VERSION}` for `apiVersion`, found {}", n.kind_name()),
                ));
                ok = false;
            }
        },
    }
    let known = KINDS.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    match node.get("kind") {
        None => {
            diags.push(Diagnostic::at(at(file, node), format!("missing field `kind` (one of {known})")));
            ok = false;
        }
        Some(n) => match &n.value {
            Value::String(s) => match KINDS.iter().find(|(k, _)| k == s) {
                Some((_, true)) => {}
                Some((k, false)) => {
                    diags.push(Diagnostic::at(
                        at(file, n),
                        format!("kind `{k}` is not supported by this version of tend yet"),
                    ));
                    ok = false;
                }
                None => {
                    let hint = KINDS
                        .iter()
                        .find(|(k, _)| strsim::jaro_winkler(&k.to_lowercase(), &s.to_lowercase()) > 0.85)
                        .map(|(k, _)| format!(", did you mean `{k}`?"))
                        .unwrap_or_else(|| format!("; expected one of {known}"));
                    diags.push(Diagnostic::at(at(file, n), format!("unknown kind `{s}`{hint}")));
                    ok = false;
                }
            },
            _ => {
                diags.push(Diagnostic::at(
                    at(file, n),
                    format!("expected a string for `kind`, found {}", n.kind_name()),
                ));
                ok = false;
            }
        },
    }
    ok
}

/// A path into a document's node tree, for locating a problem found after decoding.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    /// The value of a mapping's key.
    Key(&'a str),
    /// An item of a sequence.
    Index(usize),
}

/// The node at `path`, or the deepest node on the way that exists.
pub(crate) fn locate<'n>(node: &'n Node, path: &[Seg<'_>]) -> &'n Node {
    let mut cur = node;
    for seg in path {
        let next = match (seg, &cur.value) {
            (Seg::Key(k), Value::Map(_)) => cur.get(k),
            (Seg::Index(i), Value::Seq(items)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    cur
}

/// Returns whether `name` is a DNS label: lowercase letters, digits and `-`, starting and
/// ending with a letter or digit, at most 63 characters. Names become container names,
/// unit file names, paths and etcd keys, so nothing else is allowed.
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn dns_label_problem(name: &str) -> Option<String> {
    if is_dns_label(name) {
        return None;
    }
    let bad = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'));
    let why = if name.is_empty() {
        "it is empty".to_string()
    } else if let Some(bad) = bad {
        format!("`{}` is not allowed", bad.escape_default())
    } else if name.len() > 63 {
        format!("it is {} characters long (at most 63)", name.len())
    } else if name.starts_with('-') {
        "it starts with `-`".to_string()
    } else {
        "it ends with `-`".to_string()
    };
    let shown = if name.is_empty() { String::new() } else { format!(" `{}`", name.escape_default()) };
    Some(format!(
        "invalid name{shown}: {why}; names are DNS labels (lowercase letters, digits and `-`, at most 63 characters, not starting or ending with `-`) because they become container names, file names and keys"
    ))
}

fn is_volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// The signal names both Docker and systemd know (without `SIG`). Any other name passed
/// validation and was refused by Docker at create ("Invalid signal").
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM",
    "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO",
    "PWR", "SYS",
];

fn valid_signal(s: &str) -> bool {
    let name = s.strip_prefix("SIG").unwrap_or(s);
    SIGNALS.contains(&name) || s.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
}

/// What owns a name. Services and Timers share one namespace: each becomes a systemd unit
/// `NAME.service` (a Timer also `NAME.timer`), and references (`dependsOn`, hooks) name
/// either without saying which.
#[derive(Debug, Clone)]
struct Owner {
    /// `Service` or `Timer`.
    kind: &'static str,
    /// A service's runtime, when its spec could be decoded.
    runtime: Option<Runtime>,
    /// Where the name is written.
    location: Location,
}

impl Owner {
    /// How messages name the owner of `name`: "Timer `x`", "systemd service `x`".
    fn describe(&self, name: &str) -> String {
        match self.runtime {
            Some(runtime) if self.kind == "Service" => format!("{runtime} service `{name}`"),
            _ => format!("{} `{name}`", self.kind),
        }
    }
}

/// Claims the names of all documents in file order; returns the owners, and for each
/// service and each timer whether its name is valid and its own.
fn claim_names(docs: &Documents, diags: &mut Vec<Diagnostic>) -> (BTreeMap<String, Owner>, Vec<bool>, Vec<bool>) {
    let name_loc = |file: &Arc<Path>, node: &Node| at(file, locate(node, &[Seg::Key("metadata"), Seg::Key("name")]));
    let mut claims: Vec<(Location, &'static str, usize)> = docs
        .services
        .iter()
        .enumerate()
        .map(|(i, d)| (name_loc(&d.file, &d.node), "Service", i))
        .chain(docs.timers.iter().enumerate().map(|(i, d)| (name_loc(&d.file, &d.node), "Timer", i)))
        .collect();
    claims.sort();
    let mut names: BTreeMap<String, Owner> = BTreeMap::new();
    let mut unique = (vec![false; docs.services.len()], vec![false; docs.timers.len()]);
    for (location, kind, i) in claims {
        let (name, runtime) = if kind == "Service" {
            let d = &docs.services[i];
            (&d.metadata.name, d.runtime())
        } else {
            (&docs.timers[i].metadata.name, None)
        };
        if let Some(msg) = dns_label_problem(name) {
            diags.push(Diagnostic::at(location, msg));
        } else if let Some(first) = names.get(name) {
            let msg = if first.kind == kind {
                format!("duplicate {kind} name `{name}` (first defined at {})", first.location)
            } else {
                format!(
                    "name `{name}` is already used by {} (first defined at {}); Services and Timers share one namespace, as each becomes the systemd unit `{name}.service`",
                    first.describe(name),
                    first.location
                )
            };
            diags.push(Diagnostic::at(location, msg));
        } else {
            names.insert(name.clone(), Owner { kind, runtime, location });
            if kind == "Service" {
                unique.0[i] = true;
            } else {
                unique.1[i] = true;
            }
        }
    }
    (names, unique.0, unique.1)
}

fn validate(docs: Documents, options: &LoadOptions<'_>, diags: &mut Vec<Diagnostic>) -> Desired {
    let mut secrets = SecretBudget::default();
    let salt = options.secret_salt;
    let (names, unique_services, unique_timers) = claim_names(&docs, diags);
    let mut checked: Vec<Checked> = Vec::new();
    for (d, unique) in docs.services.into_iter().zip(unique_services) {
        let runtime = d.runtime();
        let mut spec = match d.spec {
            Spec::Whole(spec) => spec,
            Spec::Partial(partial) => {
                if unique {
                    let (file, node, name, spec) = (d.file, d.node, d.metadata.name, partial.value);
                    checked.push(Checked { file, node, name, spec, runtime, service: None });
                }
                continue;
            }
            Spec::Unread => continue,
        };
        let checks = check_service(&d.file, &d.source, &d.node, &d.metadata, &mut spec, &mut secrets, diags);
        if !unique {
            // Left out of the checks across services: its conflicts would only repeat the
            // problem with its name.
            continue;
        }
        let service = match checks {
            Some((env, file_digests)) => {
                let (hash, field_hashes) = match spec.runtime {
                    Runtime::Docker => template_hashes(&spec, &d.metadata.labels, &env, &file_digests, salt),
                    Runtime::Systemd => systemd_hashes(&spec, &env, salt),
                };
                Some(Service {
                    name: d.metadata.name.clone(),
                    metadata_labels: d.metadata.labels.clone(),
                    spec: spec.clone(),
                    env,
                    location: at(&d.file, &d.node),
                    hash,
                    field_hashes,
                    slots: None,
                })
            }
            None => None,
        };
        checked.push(Checked { file: d.file, node: d.node, name: d.metadata.name, spec, runtime, service });
    }
    let mut timers = BTreeMap::new();
    for (d, unique) in docs.timers.into_iter().zip(unique_timers) {
        let Spec::Whole(mut spec) = d.spec else { continue };
        let checks = systemd::check_timer(&d.file, &d.source, &d.node, &d.metadata, &mut spec, &mut secrets, diags);
        if let (true, Some((calendar, env, file_digests))) = (unique, checks) {
            let (hash, field_hashes) = timer_hashes(&spec, &env, &file_digests, salt);
            let timer = Timer {
                name: d.metadata.name.clone(),
                metadata_labels: d.metadata.labels,
                spec,
                calendar,
                env,
                location: at(&d.file, &d.node),
                hash,
                field_hashes,
            };
            timers.insert(d.metadata.name, timer);
        }
    }
    check_dependencies(&checked, &names, docs.all_named, diags);
    check_hooks(&checked, &names, &timers, docs.all_named, diags);
    check_ports(&checked, diags);
    values::check_instances(&checked, diags);
    let backups = backup::check_backups(docs.backups, &names, docs.all_named, diags);
    let services = checked.into_iter().filter_map(|c| c.service).map(|s| (s.name.clone(), s)).collect();
    Desired { services, timers, backups }
}

/// What a service's own checks produce: its environment with secrets read, and the
/// digests of the single files it bind-mounts.
type ServiceInputs = (BTreeMap<String, Env>, BTreeMap<PathBuf, String>);

/// Fields of a service that apply to one runtime only.
const SERVICE_RUNTIME_FIELDS: &[(&str, Runtime)] = &[
    ("image", Runtime::Docker),
    ("pullPolicy", Runtime::Docker),
    ("entrypoint", Runtime::Docker),
    ("command", Runtime::Docker),
    ("ports", Runtime::Docker),
    ("volumes", Runtime::Docker),
    ("networks", Runtime::Docker),
    ("labels", Runtime::Docker),
    ("healthcheck", Runtime::Docker),
    ("rollout", Runtime::Docker),
    ("placement", Runtime::Docker),
    ("exec", Runtime::Systemd),
    ("group", Runtime::Systemd),
    ("type", Runtime::Systemd),
    ("pidFile", Runtime::Systemd),
    ("enabled", Runtime::Systemd),
];

/// Checks one service on its own, reading its secrets and hashing its mounted files.
/// Resolves relative bind-mount sources in `spec`. `None` when it found a problem.
fn check_service(
    file: &Arc<Path>,
    source: &str,
    node: &Node,
    metadata: &Metadata,
    spec: &mut ServiceSpec,
    secrets: &mut SecretBudget,
    diags: &mut Vec<Diagnostic>,
) -> Option<ServiceInputs> {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let before = diags.len();
    let docker = spec.runtime == Runtime::Docker;
    check_service_runtime(file, node, metadata, spec, diags);
    if docker {
        check_docker_service(file, node, spec, diags);
    }
    check_backoff(file, node, spec.restart.backoff, diags);
    check_service_limits(file, node, metadata, spec, diags);
    check_service_ports(file, node, spec, diags);
    check_depends_on(file, node, &spec.depends_on, diags);
    if let Some(window) = &spec.update_window {
        check_update_window(file, source, node, window, diags);
    }
    let base_dir = base_dir(file);
    let env = resolve_env(
        &spec.env,
        &base_dir,
        |rest| here(&[&[Seg::Key("spec"), Seg::Key("env")], rest].concat()),
        secrets,
        diags,
    );
    let file_digests = if docker {
        resolve_volumes(
            &mut spec.volumes,
            &base_dir,
            |i| here(&[Seg::Key("spec"), Seg::Key("volumes"), Seg::Index(i)]),
            diags,
        )
    } else {
        BTreeMap::new()
    };
    (diags.len() == before).then_some((env, file_digests))
}

/// Checks what depends on a service's runtime: its labels, that no field of the other
/// runtime is written, and the image of a docker service or the systemd-only fields.
fn check_service_runtime(
    file: &Arc<Path>,
    node: &Node,
    metadata: &Metadata,
    spec: &ServiceSpec,
    diags: &mut Vec<Diagnostic>,
) {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let label_sections: &[(&str, &BTreeMap<String, String>)] = if spec.runtime == Runtime::Docker {
        &[("metadata", &metadata.labels), ("spec", &spec.labels)]
    } else {
        &[("metadata", &metadata.labels)]
    };
    for (section, labels) in label_sections {
        values::check_labels(labels, |key| here(&[Seg::Key(section), Seg::Key("labels"), Seg::Key(key)]), diags);
    }
    for (field, runtime) in SERVICE_RUNTIME_FIELDS {
        if *runtime != spec.runtime
            && let Some(key) = key_node(node, &["spec", field])
        {
            let hint = match *field {
                "command" | "entrypoint" => "; a systemd service runs `exec`",
                "exec" => "; a docker service runs `command` in its image",
                "placement" => "; a systemd service runs on the node whose specs hold it",
                _ => "",
            };
            diags.push(Diagnostic::at(
                at(file, key),
                format!("field `{field}` applies to runtime {runtime} only{hint}"),
            ));
        }
    }
    match spec.runtime {
        Runtime::Systemd => systemd::check_systemd_service(file, node, spec, diags),
        Runtime::Docker => match spec.image.as_deref() {
            None => {
                diags.push(Diagnostic::at(
                    here(&[Seg::Key("spec")]),
                    "missing field `image` (a docker service needs an image)",
                ));
            }
            Some(img) => values::check_image(img, here(&[Seg::Key("spec"), Seg::Key("image")]), diags),
        },
    }
}

/// Checks the fields only a docker service has: the container's fields, its health
/// check, networks, `rollout.maxUnavailable` and `placement`.
fn check_docker_service(file: &Arc<Path>, node: &Node, spec: &ServiceSpec, diags: &mut Vec<Diagnostic>) {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    check_container_fields(
        spec.command.as_deref(),
        spec.entrypoint.as_deref(),
        spec.user.as_deref(),
        spec.working_dir.as_deref(),
        |path| here(&[&[Seg::Key("spec")], path].concat()),
        diags,
    );
    if let Some(hc) = &spec.healthcheck {
        check_healthcheck(file, node, hc, diags);
    }
    check_networks(&spec.networks, |i| here(&[Seg::Key("spec"), Seg::Key("networks"), Seg::Index(i)]), diags);
    if spec.rollout.max_unavailable == 0 {
        diags.push(Diagnostic::at(
            here(&[Seg::Key("spec"), Seg::Key("rollout"), Seg::Key("maxUnavailable")]),
            "`maxUnavailable` must be at least 1, or a rollout could never stop an instance",
        ));
    }
    if let Some(placement) = &spec.placement {
        check_placement(file, node, placement, diags);
    }
}

/// Checks a docker service's `healthcheck`: its command is not empty and is a valid argv,
/// and a written `interval` or `timeout` is more than 0.
fn check_healthcheck(file: &Arc<Path>, node: &Node, hc: &HealthCheck, diags: &mut Vec<Diagnostic>) {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let hc_loc = |k: &str| here(&[Seg::Key("spec"), Seg::Key("healthcheck"), Seg::Key(k)]);
    if hc.command.is_empty() {
        diags.push(Diagnostic::at(hc_loc("command"), "health check `command` is empty"));
    }
    values::check_container_argv(
        "healthcheck.command",
        &hc.command,
        |i| here(&[Seg::Key("spec"), Seg::Key("healthcheck"), Seg::Key("command"), Seg::Index(i)]),
        diags,
    );
    for (field, value) in [("interval", hc.interval), ("timeout", hc.timeout)] {
        if value.is_some_and(|v| v.get().is_zero()) {
            diags.push(Diagnostic::at(
                hc_loc(field),
                format!("health check `{field}` must be more than 0s (leave it out for the default, 30s)"),
            ));
        }
    }
}

/// Checks `restart.backoff`: `initial` is more than 0 and no longer than `max`.
fn check_backoff(file: &Arc<Path>, node: &Node, backoff: Backoff, diags: &mut Vec<Diagnostic>) {
    let backoff_loc =
        |k: &str| at(file, locate(node, &[Seg::Key("spec"), Seg::Key("restart"), Seg::Key("backoff"), Seg::Key(k)]));
    if backoff.initial.get().is_zero() {
        diags.push(Diagnostic::at(backoff_loc("initial"), "backoff `initial` must be more than 0s"));
    } else if backoff.initial > backoff.max {
        let loc = if locate_has(node, &["spec", "restart", "backoff", "initial"]) {
            backoff_loc("initial")
        } else {
            backoff_loc("max")
        };
        diags.push(Diagnostic::at(
            loc,
            format!(
                "backoff `initial` ({}) is longer than `max` ({}); the delay starts at `initial` and doubles up to `max`",
                backoff.initial, backoff.max
            ),
        ));
    }
}

/// Checks a service's bounded values: `resources.cpus`, the size and count limits, and
/// `stopSignal`.
fn check_service_limits(
    file: &Arc<Path>,
    node: &Node,
    metadata: &Metadata,
    spec: &ServiceSpec,
    diags: &mut Vec<Diagnostic>,
) {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    if let Some(cpus) = spec.resources.as_ref().and_then(|r| r.cpus)
        && !(bounds::MIN_CPUS..=bounds::CPUS.max).contains(&cpus)
    {
        diags.push(Diagnostic::at(
            here(&[Seg::Key("spec"), Seg::Key("resources"), Seg::Key("cpus")]),
            format!(
                "`resources.cpus` must be at least {} (Docker's smallest share of a core) and at most {}, found {cpus}",
                bounds::MIN_CPUS,
                bounds::CPUS.max
            ),
        ));
    }
    values::Limits::new(&here, diags).service(&metadata.labels, spec);
    if let Some(sig) = &spec.stop_signal
        && !valid_signal(sig)
    {
        diags.push(Diagnostic::at(
            here(&[Seg::Key("spec"), Seg::Key("stopSignal")]),
            format!(
                "invalid signal `{}`: expected a name like SIGTERM or SIGINT (upper case), or a number from 1 to 64",
                sig.escape_default()
            ),
        ));
    }
}

/// Checks that a docker service publishing host ports can bind them: one instance per
/// node (1 replica, or spread), and `stop-first` rollouts.
fn check_service_ports(file: &Arc<Path>, node: &Node, spec: &ServiceSpec, diags: &mut Vec<Diagnostic>) {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let docker = spec.runtime == Runtime::Docker;
    // Spread instances each run on a node of their own, so each may publish the ports.
    let spread = spec.placement.as_ref().is_some_and(|p| p.spread);
    if docker && spec.replicas > 1 && !spec.ports.is_empty() && !spread {
        diags.push(Diagnostic::at(
            here(&[Seg::Key("spec"), Seg::Key("replicas")]),
            format!(
                "{} replicas cannot all publish the same host ports; remove `ports` or use 1 replica",
                spec.replicas
            ),
        ));
    }
    if docker && spec.rollout.order == RolloutOrder::StartFirst && !spec.ports.is_empty() {
        diags.push(Diagnostic::at(
            here(&[Seg::Key("spec"), Seg::Key("rollout"), Seg::Key("order")]),
            "`order: start-first` cannot be used with published `ports`: the new instance cannot bind a host port \
             the old one still holds; use `stop-first` or remove `ports`",
        ));
    }
}

/// Checks that `dependsOn` names no service twice.
fn check_depends_on(file: &Arc<Path>, node: &Node, depends_on: &[Dependency], diags: &mut Vec<Diagnostic>) {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let mut deps: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, dep) in depends_on.iter().enumerate() {
        if let Some(first) = deps.insert(dep.name.as_str(), i) {
            let first_loc = here(&[Seg::Key("spec"), Seg::Key("dependsOn"), Seg::Index(first)]);
            diags.push(Diagnostic::at(
                here(&[Seg::Key("spec"), Seg::Key("dependsOn"), Seg::Index(i)]),
                format!("`dependsOn` lists `{}` twice (first at {first_loc})", dep.name),
            ));
        }
    }
}

/// Checks a docker service's `placement` (its bounds are checked with the others'): the
/// role is a DNS label, a budget written is at least 1, and `lostLeaseGrace` is written
/// only where it applies.
fn check_placement(file: &Arc<Path>, node: &Node, placement: &Placement, diags: &mut Vec<Diagnostic>) {
    let here = |k| at(file, locate(node, &[Seg::Key("spec"), Seg::Key("placement"), Seg::Key(k)]));
    if placement.role.len() <= bounds::ROLE.max && !is_dns_label(&placement.role) {
        diags.push(Diagnostic::at(
            here("role"),
            format!(
                "`placement.role` `{}` is not a DNS label (lowercase letters, digits and `-`, not starting or ending with `-`), as the roles in `cluster.roles` of the agents' configuration are",
                shown(&placement.role)
            ),
        ));
    }
    if placement.max_unavailable == Some(0) {
        diags.push(Diagnostic::at(
            here("maxUnavailable"),
            "`placement.maxUnavailable` must be at least 1, or no member could ever be maintained; leave it out for a minority of `replicas`",
        ));
    }
    if placement.on_lost_lease == OnLostLease::Keep
        && let Some(key) = key_node(node, &["spec", "placement", "lostLeaseGrace"])
    {
        diags.push(Diagnostic::at(
            at(file, key),
            "`placement.lostLeaseGrace` applies only with `onLostLease: stop`; with `keep` the instances of a member cut off from etcd go on running",
        ));
    }
}

/// Checks `updateWindow`: its schedule parses (an error is reported at its column in the
/// expression) and its duration is more than 0.
fn check_update_window(
    file: &Arc<Path>,
    source: &str,
    node: &Node,
    window: &UpdateWindow,
    diags: &mut Vec<Diagnostic>,
) {
    let path = |k| [Seg::Key("spec"), Seg::Key("updateWindow"), Seg::Key(k)];
    if let Err(e) = window.schedule.parse::<crate::calendar::CalendarSpec>() {
        let value = locate(node, &path("schedule"));
        diags.push(Diagnostic::at(
            systemd::column_in_scalar(file, source, value, &window.schedule, e.column()),
            format!("invalid update window schedule: {e}"),
        ));
    }
    if window.duration.get().is_zero() {
        diags.push(Diagnostic::at(
            at(file, locate(node, &path("duration"))),
            "update window `duration` must be more than 0s (how long the window stays open, e.g. 2h)",
        ));
    }
}

/// Checks the fields a container is created with that a docker service and a docker job
/// share: `command` and `entrypoint` (not empty, no NUL), `user` and `workingDir`. `at`
/// locates a path from the mapping that holds them.
fn check_container_fields(
    command: Option<&[String]>,
    entrypoint: Option<&[String]>,
    user: Option<&str>,
    working_dir: Option<&str>,
    at: impl Fn(&[Seg<'_>]) -> Location,
    diags: &mut Vec<Diagnostic>,
) {
    for (field, argv) in [("command", command), ("entrypoint", entrypoint)] {
        let Some(argv) = argv else { continue };
        if argv.is_empty() {
            diags.push(Diagnostic::at(
                at(&[Seg::Key(field)]),
                format!("`{field}` is empty; leave it out to use the image's"),
            ));
        }
        values::check_container_argv(field, argv, |i| at(&[Seg::Key(field), Seg::Index(i)]), diags);
    }
    if let Some(msg) = user.and_then(values::docker_user_problem) {
        diags.push(Diagnostic::at(at(&[Seg::Key("user")]), msg));
    }
    if let Some(msg) = working_dir.and_then(values::container_dir_problem) {
        diags.push(Diagnostic::at(at(&[Seg::Key("workingDir")]), msg));
    }
}

/// Checks network names (a docker service's or a job's).
fn check_networks(networks: &[String], loc: impl Fn(usize) -> Location, diags: &mut Vec<Diagnostic>) {
    for (i, net) in networks.iter().enumerate() {
        if let Some(msg) = dns_label_problem(net) {
            diags.push(Diagnostic::at(loc(i), format!("network: {msg}")));
        }
    }
}

/// The directory relative paths in a spec file are resolved against.
fn base_dir(file: &Path) -> PathBuf {
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    std::path::absolute(&base_dir).unwrap_or(base_dir)
}

/// What the secrets of a set have taken so far, against [`bounds::SECRETS`].
#[derive(Debug, Default)]
struct SecretBudget {
    /// Bytes of the secrets read so far.
    used: u64,
}

impl SecretBudget {
    /// Takes `bytes` for a secret; the problem when the set's secrets would exceed their
    /// bound together (the secret is then not kept).
    fn take(&mut self, bytes: usize) -> Result<(), String> {
        let total = self.used.saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        if total > bounds::SECRETS.max {
            return Err(format!(
                "the secrets of this spec set would take {total} bytes together; at most {} ({})",
                bounds::SECRETS.max,
                bounds::SECRETS.why
            ));
        }
        self.used = total;
        Ok(())
    }
}

/// Checks environment names and values and reads secrets now, so a missing file is a spec
/// error. Names and values follow one rule for every runtime ([`values::is_env_name`], no
/// NUL). No message here may show a secret's value: only its variable name and file. An
/// environment over its bound ([`bounds::ENV`], reported by the bounds' checks) is not
/// read, and no secret is read past the set's [`SecretBudget`].
fn resolve_env(
    spec_env: &BTreeMap<String, EnvValue>,
    base_dir: &Path,
    env_at: impl Fn(&[Seg<'_>]) -> Location,
    secrets: &mut SecretBudget,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Env> {
    let mut env = BTreeMap::new();
    if spec_env.len() > bounds::ENV.max {
        return env;
    }
    for (key, value) in spec_env {
        let loc = env_at(&[Seg::Key(key)]);
        if let Some(msg) = values::env_name_problem(key) {
            diags.push(Diagnostic::at(loc.clone(), msg));
        }
        match value {
            EnvValue::Literal(s) => {
                if s.contains('\0') {
                    diags.push(Diagnostic::at(
                        loc,
                        format!(
                            "the value of `{}` contains a NUL character, which an environment cannot hold",
                            shown(key)
                        ),
                    ));
                }
                env.insert(key.clone(), Env::Literal(s.clone()));
            }
            EnvValue::FromFile { from_file } => {
                let path = normalize(&base_dir.join(from_file));
                match read_secret(key, &path).and_then(|value| secrets.take(value.len()).map(|()| value)) {
                    Ok(value) => {
                        env.insert(key.clone(), Env::Secret { path, value: Secret::new(value) });
                    }
                    Err(msg) => diags.push(Diagnostic::at(env_at(&[Seg::Key(key), Seg::Key("fromFile")]), msg)),
                }
            }
        }
    }
    env
}

/// Reads the secret of the variable `key` from `path` (a regular file of at most
/// [`files::SECRET`]): UTF-8 text, one trailing line break removed, without NUL (which no
/// environment can hold, whatever the runtime). A problem names the file and the variable,
/// never the value.
fn read_secret(key: &str, path: &Path) -> Result<String, String> {
    let shown = path.display();
    let key = crate::diag::shown_cut(key, 64);
    let mut value = match files::read_text(path, files::SECRET) {
        Ok(Ok(value)) => value,
        Ok(Err(_)) => return Err(format!("secret file `{shown}` for `{key}` is not UTF-8 text")),
        Err(files::ReadError::Read { source, .. }) => {
            return Err(format!("cannot read secret file `{shown}` for `{key}`: {}", io_reason(&source)));
        }
        Err(e) => return Err(format!("secret file for `{key}`: {e}")),
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.contains('\0') {
        return Err(format!(
            "secret file `{shown}` for `{key}` contains a NUL character, which an environment cannot hold"
        ));
    }
    Ok(value)
}

/// Checks mounts: targets unique, volume names valid, bind sources resolved (in place) and
/// present. Returns the digests of single bound files (so editing one changes the hash).
fn resolve_volumes(
    volumes: &mut [VolumeMount],
    base_dir: &Path,
    loc_of: impl Fn(usize) -> Location,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<PathBuf, String> {
    let mut file_digests = BTreeMap::new();
    let mut targets = BTreeMap::new();
    for (i, m) in volumes.iter_mut().enumerate() {
        let loc = loc_of(i);
        if let Some(first) = targets.insert(m.target.clone(), loc.clone()) {
            diags.push(Diagnostic::at(
                loc.clone(),
                format!("two mounts target `{}` (the other is at {first})", m.target),
            ));
        }
        match &mut m.source {
            MountSource::Volume(name) => {
                if !is_volume_name(name) {
                    diags.push(Diagnostic::at(
                        loc,
                        format!(
                            "invalid volume name `{}`: letters, digits, `_`, `.` and `-`, starting with a letter or digit",
                            name.escape_default()
                        ),
                    ));
                }
            }
            MountSource::Bind(p) => {
                let abs = normalize(&base_dir.join(&*p));
                match mounted_file_digest(&abs) {
                    Ok(Some(digest)) => {
                        file_digests.insert(abs.clone(), digest);
                    }
                    Ok(None) => {}
                    Err(msg) => diags.push(Diagnostic::at(loc, msg)),
                }
                *p = abs;
            }
        }
    }
    file_digests
}

/// The digest of a bind-mount source that is a regular file of at most
/// [`files::HASHED_MOUNT`], so that editing it recreates; `None` for anything else, which is
/// mounted as it is and never read (a directory, a larger file, a socket such as
/// `/var/run/docker.sock`, a device, a FIFO). An error when the source does not exist or
/// cannot be read.
fn mounted_file_digest(path: &Path) -> Result<Option<String>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("bind mount source `{}`: {}", path.display(), io_reason(&e)))?;
    if !meta.is_file() || meta.len() > files::HASHED_MOUNT.max {
        return Ok(None);
    }
    match files::read(path, files::HASHED_MOUNT) {
        Ok(bytes) => Ok(Some(sha256_hex(&bytes))),
        // Replaced by something else, or grown, since it was looked at: mounted, not hashed.
        Err(files::ReadError::NotRegular { .. } | files::ReadError::TooLarge { .. }) => Ok(None),
        Err(files::ReadError::Read { source, .. }) => {
            Err(format!("cannot read mounted file `{}`: {}", path.display(), io_reason(&source)))
        }
    }
}

/// The key node of the field at `path` (mapping keys from `node` down), if it is written.
fn key_node<'n>(node: &'n Node, path: &[&str]) -> Option<&'n Node> {
    let (last, parents) = path.split_last()?;
    let parent = parents.iter().try_fold(node, |n, k| n.get(k))?;
    match &parent.value {
        Value::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(last)).map(|(k, _)| k),
        _ => None,
    }
}

/// Whether the mapping keys `path` all exist from `node` down.
fn locate_has(node: &Node, path: &[&str]) -> bool {
    path.iter().try_fold(node, |n, k| n.get(k)).is_some()
}

/// Makes a path lexically clean (`a/./b/../c` → `a/c`) without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Checks `dependsOn` across services: every name exists and is a service of the same
/// runtime, and no service waits on itself through a cycle (no order could start them).
/// `names`: every name in the set; `all_named`: false when some could not be read (then no
/// name is called unknown).
fn check_dependencies(
    services: &[Checked],
    names: &BTreeMap<String, Owner>,
    all_named: bool,
    diags: &mut Vec<Diagnostic>,
) {
    for c in services {
        for (i, dep) in c.spec.depends_on.iter().enumerate() {
            let loc = || c.at(&[Seg::Key("spec"), Seg::Key("dependsOn"), Seg::Index(i), Seg::Key("name")]);
            match names.get(&dep.name) {
                _ if dep.name == c.name => {
                    diags.push(Diagnostic::at(loc(), format!("service `{}` depends on itself", c.name)));
                }
                Some(owner) if owner.kind == "Timer" => {
                    diags.push(Diagnostic::at(
                        loc(),
                        format!(
                            "`dependsOn` names Timer `{0}`, not a service; to run its job before this service starts, use `hooks: {{beforeStart: {0}}}`",
                            dep.name
                        ),
                    ));
                }
                Some(Owner { runtime: Some(theirs), .. }) if c.runtime.is_some_and(|ours| ours != *theirs) => {
                    let ours = c.spec.runtime;
                    let (waiter, waited) = match ours {
                        Runtime::Systemd => ("a unit", "a container"),
                        Runtime::Docker => ("a container", "a unit"),
                    };
                    diags.push(Diagnostic::at(
                        loc(),
                        format!(
                            "{ours} service `{}` cannot depend on {theirs} service `{}`: {waiter} cannot wait for {waited} in this version; a {ours} service may depend on {ours} services only",
                            c.name, dep.name
                        ),
                    ));
                }
                Some(_) => {}
                None if all_named => {
                    // Never the service itself: it cannot depend on itself.
                    let hint = names
                        .iter()
                        .filter(|(k, o)| o.kind == "Service" && **k != c.name)
                        .map(|(k, _)| (strsim::jaro_winkler(k, &dep.name), k))
                        .filter(|(score, _)| *score > 0.8)
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .map(|(_, k)| format!(", did you mean `{k}`?"))
                        .unwrap_or_default();
                    diags
                        .push(Diagnostic::at(loc(), format!("`dependsOn` names unknown service `{}`{hint}", dep.name)));
                }
                None => {}
            }
        }
    }
    // Cycles: depth-first search over the known edges (self-edges were reported above);
    // each cycle reported once, at the dependsOn entry of its alphabetically first member.
    let by_name: BTreeMap<&str, &Checked> = services.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on the stack, 2 = done
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    fn visit<'a>(
        name: &'a str,
        by_name: &BTreeMap<&'a str, &'a Checked>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        reported: &mut BTreeSet<Vec<String>>,
        diags: &mut Vec<Diagnostic>,
    ) {
        state.insert(name, 1);
        stack.push(name);
        if let Some(c) = by_name.get(name) {
            for dep in c.spec.depends_on.iter().filter(|d| d.name != name) {
                let Some((dep_name, _)) = by_name.get_key_value(dep.name.as_str()) else { continue };
                match state.get(dep_name) {
                    Some(1) => {
                        let start = stack.iter().position(|n| n == dep_name).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                        let min = cycle.iter().enumerate().min_by_key(|(_, n)| n.as_str()).map(|(i, _)| i).unwrap_or(0);
                        cycle.rotate_left(min);
                        if reported.insert(cycle.clone()) {
                            let first = &cycle[0];
                            let next = cycle.get(1).unwrap_or(first);
                            let c = by_name[first.as_str()];
                            let idx = c.spec.depends_on.iter().position(|x| &x.name == next).unwrap_or(0);
                            let mut path = cycle.clone();
                            path.push(first.clone());
                            diags.push(Diagnostic::at(
                                c.at(&[Seg::Key("spec"), Seg::Key("dependsOn"), Seg::Index(idx)]),
                                format!(
                                    "dependency cycle: {}; none of them can start first, so remove one of these `dependsOn` entries",
                                    path.join(" → ")
                                ),
                            ));
                        }
                    }
                    Some(_) => {}
                    None => visit(dep_name, by_name, state, stack, reported, diags),
                }
            }
        }
        stack.pop();
        state.insert(name, 2);
    }
    let names: Vec<&str> = by_name.keys().copied().collect();
    for name in names {
        if !state.contains_key(name) {
            visit(name, &by_name, &mut state, &mut Vec::new(), &mut reported, diags);
        }
    }
}

/// Checks `hooks.beforeStart`: it names a Timer of the set, one that runs on every node
/// (`timers`: the Timers that passed their own checks).
fn check_hooks(
    services: &[Checked],
    names: &BTreeMap<String, Owner>,
    timers: &BTreeMap<String, Timer>,
    all_named: bool,
    diags: &mut Vec<Diagnostic>,
) {
    for c in services {
        let Some(target) = c.spec.before_start() else { continue };
        let loc = || c.at(&[Seg::Key("spec"), Seg::Key("hooks"), Seg::Key("beforeStart")]);
        match names.get(target) {
            Some(owner) if owner.kind == "Timer" && timers.get(target).is_some_and(|t| !t.spec.run_on.is_node()) => {
                diags.push(Diagnostic::at(
                    loc(),
                    format!(
                        "`hooks.beforeStart` names Timer `{target}`, which runs on the cluster's leader only (`runOn: leader`); a hook runs on the node that starts the service, so its Timer needs `runOn: node`"
                    ),
                ));
            }
            Some(owner) if owner.kind == "Timer" => {}
            Some(owner) => diags.push(Diagnostic::at(
                loc(),
                format!(
                    "`hooks.beforeStart` names {}; it must name a Timer, whose job runs before a new version starts",
                    owner.describe(target)
                ),
            )),
            None if all_named => {
                let timers: Vec<&String> = names.iter().filter(|(_, o)| o.kind == "Timer").map(|(k, _)| k).collect();
                let hint = timers
                    .iter()
                    .map(|k| (strsim::jaro_winkler(k, target), k))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, k)| format!(", did you mean `{k}`?"))
                    .unwrap_or_else(|| {
                        if timers.is_empty() {
                            "; declare it as a `kind: Timer` (with `enabled: false` to run it only as a hook)"
                                .to_string()
                        } else {
                            format!(
                                "; the Timers are {}",
                                timers.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                            )
                        }
                    });
                diags.push(Diagnostic::at(loc(), format!("`hooks.beforeStart` names unknown Timer `{target}`{hint}")));
            }
            None => {}
        }
    }
}

/// Checks that no two published ports claim the same host port on overlapping addresses
/// (a port on all addresses overlaps every address).
fn check_ports(services: &[Checked], diags: &mut Vec<Diagnostic>) {
    /// A claim on a host port: the address (None = all), the service, where.
    type Claim = (Option<IpAddr>, String, Location);
    let unspecified =
        |ip: Option<IpAddr>| ip.is_none_or(|ip| ip == Ipv4Addr::UNSPECIFIED || ip == Ipv6Addr::UNSPECIFIED);
    let shown = |ip: Option<IpAddr>, port: u16, protocol: Protocol| match ip {
        None => format!("{port}/{protocol} (all addresses)"),
        Some(IpAddr::V6(ip)) => format!("[{ip}]:{port}/{protocol}"),
        Some(ip) => format!("{ip}:{port}/{protocol}"),
    };
    let mut claims: BTreeMap<(u16, Protocol), Vec<Claim>> = BTreeMap::new();
    for c in services.iter().filter(|c| c.runtime == Some(Runtime::Docker)) {
        for (i, p) in c.spec.ports.iter().enumerate() {
            let loc = c.at(&[Seg::Key("spec"), Seg::Key("ports"), Seg::Index(i)]);
            let entry = claims.entry((p.host_port, p.protocol)).or_default();
            if let Some((ip, other, first)) =
                entry.iter().find(|(ip, _, _)| unspecified(*ip) || unspecified(p.host_ip) || *ip == p.host_ip)
            {
                let mine = shown(p.host_ip, p.host_port, p.protocol);
                let theirs = shown(*ip, p.host_port, p.protocol);
                let what = if mine == theirs { mine } else { format!("{mine} overlaps {theirs}, which") };
                diags.push(Diagnostic::at(
                    loc.clone(),
                    format!("host port {what} is already claimed by service `{other}` at {first}"),
                ));
            }
            entry.push((p.host_ip, c.name.clone(), loc));
        }
    }
}

mod backup;
mod systemd;
mod values;

pub use systemd::is_account;

#[cfg(test)]
mod tests;
