//! Loading: read spec files (a file, or a directory recursively), parse every document,
//! decode and validate, and collect every problem with its file:line:column. A set with
//! any problem is rejected whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::de::from_node;
use crate::desired::{Desired, Env, Secret, Service, template_hashes};
use crate::diag::{Diagnostic, Location};
use crate::hash::sha256_hex;
use crate::service::{EnvValue, MountSource, Runtime, ServiceSpec};
use crate::yaml::{Node, Value, parse_stream};

/// The only API version this tend reads.
pub const API_VERSION: &str = "tend/v1";

/// Kinds the language knows, and whether this version implements them.
const KINDS: &[(&str, bool)] = &[("Service", true), ("Timer", false), ("Backup", false), ("Replica", false)];

/// Largest spec file read (a guard against pointing tend at the wrong file).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Largest single file hashed for a bind mount; larger ones are mounted but not hashed.
const MAX_HASHED_MOUNT_BYTES: u64 = 16 << 20;

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

/// A decoded document with the node it came from, for locating later problems.
struct Decoded<S> {
    file: Arc<Path>,
    node: Node,
    metadata: Metadata,
    spec: S,
}

/// Loads and validates the specs at `path` (a file or a directory, read recursively for
/// `*.yaml` and `*.yml`; hidden files and editor backups are skipped).
pub fn load_path(path: &Path) -> Result<Desired, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let files = match spec_files(path) {
        Ok(f) => f,
        Err(d) => return Err(vec![d]),
    };
    let mut services = Vec::new();
    for file in files {
        let file: Arc<Path> = Arc::from(file.as_path());
        let text = match read_spec_file(&file) {
            Ok(t) => t,
            Err(msg) => {
                diags.push(Diagnostic::general(format!("{}: {msg}", file.display())));
                continue;
            }
        };
        decode_file(&file, &text, &mut services, &mut diags);
    }
    let desired = validate(services, &mut diags);
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
    let mut diags = Vec::new();
    let mut services = Vec::new();
    decode_file(&Arc::from(file), text, &mut services, &mut diags);
    let desired = validate(services, &mut diags);
    if diags.is_empty() { Ok(desired) } else { Err(diags) }
}

fn read_spec_file(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("file is {} bytes; spec files are limited to {MAX_FILE_BYTES}", meta.len()));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
}

fn is_spec_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn spec_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Diagnostic::general(format!("{}: cannot read specs: {e}", path.display())))?;
    if meta.is_file() {
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
            } else if ft.is_file() && is_spec_file(&p) {
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

fn decode_file(file: &Arc<Path>, text: &str, services: &mut Vec<Decoded<ServiceSpec>>, diags: &mut Vec<Diagnostic>) {
    let docs = match parse_stream(text) {
        Ok(d) => d,
        Err(e) => {
            let loc = Location { file: file.clone(), line: e.mark.line, column: e.mark.column };
            diags.push(Diagnostic::at(loc, format!("malformed YAML: {}", e.message)));
            return;
        }
    };
    for node in docs {
        match &node.value {
            Value::Null => continue,
            Value::Map(_) => {}
            _ => {
                diags.push(Diagnostic::at(
                    at(file, &node),
                    format!(
                        "expected a document (a mapping with apiVersion, kind, metadata, spec), found {}",
                        node.kind_name()
                    ),
                ));
                continue;
            }
        }
        if !check_header(file, &node, diags) {
            continue;
        }
        if let Some(doc) = from_node::<Document<ServiceSpec>>(&node, file, diags) {
            services.push(Decoded { file: file.clone(), node, metadata: doc.metadata, spec: doc.spec });
        }
    }
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
            _ => {
                diags.push(Diagnostic::at(at(file, n), format!("unsupported apiVersion: expected `{API_VERSION}`")));
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
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The node at `path`, or the deepest node on the way that exists.
fn locate<'n>(node: &'n Node, path: &[Seg<'_>]) -> &'n Node {
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
    let why = if name.is_empty() {
        "it is empty".to_string()
    } else if name.len() > 63 {
        format!("it is {} characters long (at most 63)", name.len())
    } else if name.starts_with('-') || name.ends_with('-') {
        "it starts or ends with `-`".to_string()
    } else {
        let bad = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')).unwrap_or('?');
        format!("`{}` is not allowed", bad.escape_default())
    };
    Some(format!(
        "invalid name `{}`: {why}; names are DNS labels (lowercase letters, digits and `-`, at most 63 characters) because they become container names, file names and keys",
        name.escape_default()
    ))
}

fn is_volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn valid_signal(s: &str) -> bool {
    let name = s.strip_prefix("SIG").unwrap_or(s);
    (!name.is_empty() && name.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
        || s.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
}

fn validate(decoded: Vec<Decoded<ServiceSpec>>, diags: &mut Vec<Diagnostic>) -> Desired {
    let mut seen: BTreeMap<String, Location> = BTreeMap::new();
    let mut out: Vec<(Decoded<ServiceSpec>, Service)> = Vec::new();
    for mut d in decoded {
        let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
        let name_loc = here(&[Seg::Key("metadata"), Seg::Key("name")]);
        let mut ok = true;
        if let Some(msg) = dns_label_problem(&d.metadata.name) {
            diags.push(Diagnostic::at(name_loc.clone(), msg));
            ok = false;
        } else if let Some(first) = seen.get(&d.metadata.name) {
            diags.push(Diagnostic::at(
                name_loc.clone(),
                format!("duplicate Service name `{}` (first defined at {first})", d.metadata.name),
            ));
            ok = false;
        } else {
            seen.insert(d.metadata.name.clone(), name_loc.clone());
        }
        for key in d.metadata.labels.keys().chain(d.spec.labels.keys()) {
            if key.starts_with("tend.") {
                let loc = if d.metadata.labels.contains_key(key) {
                    here(&[Seg::Key("metadata"), Seg::Key("labels"), Seg::Key(key)])
                } else {
                    here(&[Seg::Key("spec"), Seg::Key("labels"), Seg::Key(key)])
                };
                diags.push(Diagnostic::at(
                    loc,
                    format!("label `{key}`: the `tend.` prefix is reserved for tend's own labels"),
                ));
                ok = false;
            }
        }
        let spec = &d.spec;
        let spec_loc = |k: &str| here(&[Seg::Key("spec"), Seg::Key(k)]);
        match spec.runtime {
            Runtime::Systemd => {
                diags.push(Diagnostic::at(
                    spec_loc("runtime"),
                    "runtime `systemd` is not supported by this version of tend yet; use `docker`",
                ));
                ok = false;
            }
            Runtime::Docker => match spec.image.as_deref() {
                None => {
                    diags.push(Diagnostic::at(
                        here(&[Seg::Key("spec")]),
                        "missing field `image` (a docker service needs an image)",
                    ));
                    ok = false;
                }
                Some(img) if img.is_empty() || img.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                    diags.push(Diagnostic::at(
                        spec_loc("image"),
                        format!("invalid image reference `{}`", img.escape_default()),
                    ));
                    ok = false;
                }
                Some(_) => {}
            },
        }
        for (field, argv) in [("command", &spec.command), ("entrypoint", &spec.entrypoint)] {
            if argv.as_ref().is_some_and(|a| a.is_empty()) {
                diags.push(Diagnostic::at(
                    spec_loc(field),
                    format!("`{field}` is empty; leave it out to use the image's"),
                ));
                ok = false;
            }
        }
        if let Some(hc) = &spec.healthcheck
            && hc.command.is_empty()
        {
            diags.push(Diagnostic::at(
                here(&[Seg::Key("spec"), Seg::Key("healthcheck"), Seg::Key("command")]),
                "health check `command` is empty",
            ));
            ok = false;
        }
        for (i, net) in spec.networks.iter().enumerate() {
            if let Some(msg) = dns_label_problem(net) {
                diags.push(Diagnostic::at(
                    here(&[Seg::Key("spec"), Seg::Key("networks"), Seg::Index(i)]),
                    format!("network: {msg}"),
                ));
                ok = false;
            }
        }
        if spec.rollout.max_unavailable == 0 {
            diags.push(Diagnostic::at(
                here(&[Seg::Key("spec"), Seg::Key("rollout"), Seg::Key("maxUnavailable")]),
                "`maxUnavailable` must be at least 1",
            ));
            ok = false;
        }
        if spec.restart.backoff.initial.get().is_zero() || spec.restart.backoff.initial > spec.restart.backoff.max {
            diags.push(Diagnostic::at(
                here(&[Seg::Key("spec"), Seg::Key("restart"), Seg::Key("backoff")]),
                "backoff `initial` must be more than 0 and at most `max`",
            ));
            ok = false;
        }
        if let Some(cpus) = spec.resources.as_ref().and_then(|r| r.cpus)
            && !(cpus > 0.0 && cpus <= 1024.0)
        {
            diags.push(Diagnostic::at(
                here(&[Seg::Key("spec"), Seg::Key("resources"), Seg::Key("cpus")]),
                "`cpus` must be more than 0 and at most 1024",
            ));
            ok = false;
        }
        if let Some(sig) = &spec.stop_signal
            && !valid_signal(sig)
        {
            diags.push(Diagnostic::at(
                spec_loc("stopSignal"),
                format!("invalid signal `{}`: expected a name like SIGTERM or a number", sig.escape_default()),
            ));
            ok = false;
        }
        if spec.replicas > 1 && !spec.ports.is_empty() {
            diags.push(Diagnostic::at(
                spec_loc("replicas"),
                format!(
                    "{} replicas cannot all publish the same host ports; remove `ports` or use 1 replica",
                    spec.replicas
                ),
            ));
            ok = false;
        }
        let base_dir = d.file.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
        // Environment: names checked, secrets read now so a missing file is a spec error.
        let mut env = BTreeMap::new();
        for (key, value) in &spec.env {
            let loc = here(&[Seg::Key("spec"), Seg::Key("env"), Seg::Key(key)]);
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                diags.push(Diagnostic::at(
                    loc.clone(),
                    format!("invalid environment variable name `{}`", key.escape_default()),
                ));
                ok = false;
            }
            match value {
                EnvValue::Literal(s) => {
                    env.insert(key.clone(), Env::Literal(s.clone()));
                }
                EnvValue::FromFile { from_file } => {
                    let path = normalize(&base_dir.join(from_file));
                    match std::fs::read(&path) {
                        Ok(bytes) => match String::from_utf8(bytes) {
                            Ok(mut s) => {
                                if s.ends_with('\n') {
                                    s.pop();
                                    if s.ends_with('\r') {
                                        s.pop();
                                    }
                                }
                                env.insert(key.clone(), Env::Secret { path, value: Secret::new(s) });
                            }
                            Err(_) => {
                                diags.push(Diagnostic::at(
                                    loc,
                                    format!("secret file `{}` for `{key}` is not UTF-8 text", path.display()),
                                ));
                                ok = false;
                            }
                        },
                        Err(e) => {
                            diags.push(Diagnostic::at(
                                loc,
                                format!("cannot read secret file `{}` for `{key}`: {}", path.display(), io_reason(&e)),
                            ));
                            ok = false;
                        }
                    }
                }
            }
        }
        // Volumes: bind sources resolved and checked; single files hashed by content.
        let mut file_digests = BTreeMap::new();
        let mut targets = BTreeSet::new();
        for (i, m) in d.spec.volumes.iter_mut().enumerate() {
            let loc = at(&d.file, locate(&d.node, &[Seg::Key("spec"), Seg::Key("volumes"), Seg::Index(i)]));
            if !targets.insert(m.target.clone()) {
                diags.push(Diagnostic::at(loc.clone(), format!("two mounts target `{}`", m.target)));
                ok = false;
            }
            match &mut m.source {
                MountSource::Volume(name) => {
                    if !is_volume_name(name) {
                        diags.push(Diagnostic::at(loc, format!("invalid volume name `{}`: letters, digits, `_`, `.` and `-`, starting with a letter or digit", name.escape_default())));
                        ok = false;
                    }
                }
                MountSource::Bind(p) => {
                    let abs = normalize(&base_dir.join(&*p));
                    match std::fs::metadata(&abs) {
                        Ok(meta) => {
                            if meta.is_file() && meta.len() <= MAX_HASHED_MOUNT_BYTES {
                                match std::fs::read(&abs) {
                                    Ok(bytes) => {
                                        file_digests.insert(abs.clone(), sha256_hex(&bytes));
                                    }
                                    Err(e) => {
                                        diags.push(Diagnostic::at(
                                            loc,
                                            format!("cannot read mounted file `{}`: {}", abs.display(), io_reason(&e)),
                                        ));
                                        ok = false;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            diags.push(Diagnostic::at(
                                loc,
                                format!("bind mount source `{}`: {}", abs.display(), io_reason(&e)),
                            ));
                            ok = false;
                        }
                    }
                    *p = abs;
                }
            }
        }
        if !ok {
            continue;
        }
        let (hash, field_hashes) = template_hashes(&d.spec, &d.metadata.labels, &env, &file_digests);
        let service = Service {
            name: d.metadata.name.clone(),
            metadata_labels: d.metadata.labels.clone(),
            spec: d.spec.clone(),
            env,
            location: at(&d.file, &d.node),
            hash,
            field_hashes,
        };
        out.push((d, service));
    }
    check_dependencies(&out, &seen, diags);
    check_ports(&out, diags);
    Desired { services: out.into_iter().map(|(_, s)| (s.name.clone(), s)).collect() }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
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

fn check_dependencies(
    services: &[(Decoded<ServiceSpec>, Service)],
    all_names: &BTreeMap<String, Location>,
    diags: &mut Vec<Diagnostic>,
) {
    let by_name: BTreeMap<&str, &(Decoded<ServiceSpec>, Service)> =
        services.iter().map(|e| (e.1.name.as_str(), e)).collect();
    for (d, s) in services {
        for (i, dep) in s.spec.depends_on.iter().enumerate() {
            if !all_names.contains_key(&dep.name) {
                let loc = at(
                    &d.file,
                    locate(&d.node, &[Seg::Key("spec"), Seg::Key("dependsOn"), Seg::Index(i), Seg::Key("name")]),
                );
                let hint = all_names
                    .keys()
                    .map(|k| (strsim::jaro_winkler(k, &dep.name), k))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, k)| format!(", did you mean `{k}`?"))
                    .unwrap_or_default();
                diags.push(Diagnostic::at(loc, format!("`dependsOn` names unknown service `{}`{hint}", dep.name)));
            }
        }
    }
    // Cycles: depth-first search over the known edges; each cycle reported once, at the
    // dependsOn entry of its alphabetically first member.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on the stack, 2 = done
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    fn visit<'a>(
        name: &'a str,
        by_name: &BTreeMap<&'a str, &'a (Decoded<ServiceSpec>, Service)>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        reported: &mut BTreeSet<Vec<String>>,
        diags: &mut Vec<Diagnostic>,
    ) {
        state.insert(name, 1);
        stack.push(name);
        if let Some((_, s)) = by_name.get(name) {
            for dep in &s.spec.depends_on {
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
                            let (d, s) = by_name[first.as_str()];
                            let idx = s.spec.depends_on.iter().position(|x| &x.name == next).unwrap_or(0);
                            let loc = at(
                                &d.file,
                                locate(&d.node, &[Seg::Key("spec"), Seg::Key("dependsOn"), Seg::Index(idx)]),
                            );
                            let mut path = cycle.clone();
                            path.push(first.clone());
                            diags.push(Diagnostic::at(loc, format!("dependency cycle: {}", path.join(" → "))));
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

fn check_ports(services: &[(Decoded<ServiceSpec>, Service)], diags: &mut Vec<Diagnostic>) {
    // (port, protocol) → claims so far: (address or None for all, service, location)
    /// A claim on a host port: the address (None = all), the service, where.
    type Claim = (Option<IpAddr>, String, Location);
    let mut claims: BTreeMap<(u16, String), Vec<Claim>> = BTreeMap::new();
    for (d, s) in services {
        for (i, p) in s.spec.ports.iter().enumerate() {
            let loc = at(&d.file, locate(&d.node, &[Seg::Key("spec"), Seg::Key("ports"), Seg::Index(i)]));
            let entry = claims.entry((p.host_port, p.protocol.to_string())).or_default();
            let unspecified = |ip: &Option<IpAddr>| {
                ip.is_none_or(|ip| ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            };
            if let Some((_, other, first)) =
                entry.iter().find(|(ip, _, _)| unspecified(ip) || unspecified(&p.host_ip) || *ip == p.host_ip)
            {
                diags.push(Diagnostic::at(
                    loc.clone(),
                    format!(
                        "host port {}/{} is already claimed by service `{other}` at {first}",
                        p.host_port, p.protocol
                    ),
                ));
            }
            entry.push((p.host_ip, s.name.clone(), loc));
        }
    }
}

#[cfg(test)]
mod tests;
