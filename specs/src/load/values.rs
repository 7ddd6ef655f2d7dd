//! Checks of the values that reach Docker, unit files and processes, at their fields:
//!
//! - the bounds of [`crate::bounds`] on every count, duration, list and text of a Service,
//!   a Timer and a Backup ([`Limits`]), so that a valid spec is also one the agent can
//!   plan cheaply;
//! - the shape of text the engine or the kernel would refuse only at apply, or take and
//!   run wrongly: image references (`NAME[:TAG][@sha256:DIGEST]`), environment names and
//!   values, argument lists (no NUL), docker users and working directories, labels.

use std::fmt;

use super::*;
use crate::backup::{BackupSpec, ExecCommand, Retention};
use crate::bounds::{self, Bound};
use crate::diag::shown;
use crate::quantity::Duration;
use crate::timer::{Job, TimerSpec};

/// What an image reference looks like, for messages.
const IMAGE_FORM: &str = "expected NAME[:TAG][@sha256:DIGEST], e.g. `postgres:16`, `registry.example.org:5000/team/app:1.2` or `busybox@sha256:` and 64 hexadecimal digits";

/// The longest repository name, registry included (Docker's limit).
const MAX_IMAGE_NAME: usize = 255;

/// The longest tag (Docker's limit).
const MAX_IMAGE_TAG: usize = 128;

/// Checks an image reference (a docker service's or a job's).
pub(super) fn check_image(img: &str, loc: Location, diags: &mut Vec<Diagnostic>) {
    if img.is_empty() {
        diags.push(Diagnostic::at(loc, "`image` is empty"));
    } else if let Some(why) = image_problem(img) {
        diags.push(Diagnostic::at(loc, format!("invalid image reference `{}`: {why}; {IMAGE_FORM}", shown(img))));
    }
}

/// What is wrong with a non-empty image reference, if anything. The grammar is Docker's
/// (distribution's `reference`): `[REGISTRY[:PORT]/]PATH[:TAG][@sha256:DIGEST]`, the path
/// made of lowercase components.
fn image_problem(img: &str) -> Option<String> {
    if img.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("it must not contain spaces or control characters".into());
    }
    let (rest, digest) = match img.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (img, None),
    };
    if let Some(digest) = digest {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Some("the digest must be `sha256:` followed by 64 hexadecimal digits (lowercase)".into());
        }
    }
    // A tag follows the last `:` that comes after the last `/` (a `:` before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Some(format!(
            "the tag `{tag}` must start with a letter, a digit or `_` and hold only those, `.` and `-` (at most {MAX_IMAGE_TAG})"
        ));
    }
    name_problem(name)
}

/// Whether `tag` is a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= MAX_IMAGE_TAG
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// What is wrong with the name of an image reference (without tag and digest), if anything.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the repository name is empty".into());
    }
    if name.len() > MAX_IMAGE_NAME {
        return Some(format!("the name is {} characters long; at most {MAX_IMAGE_NAME}", name.len()));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // The first component is a registry when it looks like a host: it has a `.` or a `:`
    // (a port), or it is `localhost`; otherwise it is part of the path (`library/…`).
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost") {
        let registry = components.remove(0);
        if !is_registry(registry) {
            return Some(format!("`{registry}` is not a registry host (a host name or address, optionally `:PORT`)"));
        }
    }
    components.into_iter().find(|c| !is_path_component(c)).map(|c| {
        format!("`{c}` is not a repository name (lowercase letters and digits, separated by `.`, `_`, `__` or `-`)")
    })
}

/// Whether `host` is a registry: a host name (components of letters, digits and `-`, not at
/// either end, separated by `.`), an IPv4 address or a bracketed IPv6 one, optionally with
/// `:PORT`.
fn is_registry(host: &str) -> bool {
    let (host, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') == h.ends_with(']')) => (h, Some(p)),
        _ => (host, None),
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        })
}

/// Whether `c` is a path component of a repository: lowercase letters and digits, with
/// single separators `.`, `_`, `__` or runs of `-` between them.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-')) {
            return false;
        }
    }
    true
}

/// Whether `name` is an environment variable name: letters, digits and `_`, not starting
/// with a digit. One rule for every runtime: it is what shells and systemd take (systemd
/// drops other names), and a name with `=` or a line break would corrupt the environment
/// block or an environment file.
pub(super) fn is_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && !b[0].is_ascii_digit() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The problem of an environment variable's name, if any.
pub(super) fn env_name_problem(name: &str) -> Option<String> {
    (!is_env_name(name)).then(|| {
        format!(
            "invalid environment variable name `{}`: names are letters, digits and `_`, not starting with a digit (as shells and systemd take them)",
            shown(name)
        )
    })
}

/// Checks an argument list run in a container (`command`, `entrypoint`, a health check's
/// `command`): no argument can hold a NUL, which no program's arguments can (Docker would
/// start the container and cut the argument there).
pub(super) fn check_container_argv(
    field: &str,
    argv: &[String],
    loc: impl Fn(usize) -> Location,
    diags: &mut Vec<Diagnostic>,
) {
    for (i, arg) in argv.iter().enumerate() {
        if arg.contains('\0') {
            diags.push(Diagnostic::at(
                loc(i),
                format!(
                    "an argument of `{field}` cannot contain a NUL character (a program's arguments cannot hold it)"
                ),
            ));
        }
    }
}

/// What is wrong with a docker `user`, if anything: `NAME` or `UID`, optionally followed by
/// `:GROUP` or `:GID`, each part a name as on the host or a number.
pub(super) fn docker_user_problem(user: &str) -> Option<String> {
    let mut parts = user.splitn(2, ':');
    let ok = parts.all(systemd::is_account);
    (!ok).then(|| {
        format!(
            "invalid user `{}`: a docker user is NAME or UID, optionally with `:GROUP` or `:GID` (names of letters, digits, `_`, `.` and `-`, starting with a letter or `_`, at most 32 characters)",
            shown(user)
        )
    })
}

/// What is wrong with a docker `workingDir`, if anything: an absolute path inside the
/// container, without control characters (Docker refuses a relative one at create).
pub(super) fn container_dir_problem(dir: &str) -> Option<String> {
    if !dir.starts_with('/') {
        Some(format!("`workingDir` must be an absolute path inside the container, found `{}`", shown(dir)))
    } else if dir.contains(char::is_control) {
        Some(format!("`workingDir` cannot contain control characters, found `{}`", shown(dir)))
    } else {
        None
    }
}

/// Checks the keys and values of a `labels` mapping: keys are printable without spaces or
/// `=` (which `label=KEY=VALUE` filters could not name), values hold no NUL, and the
/// `tend.` prefix is tend's own. `loc`: the place of a label (its value).
pub(super) fn check_labels(
    labels: &BTreeMap<String, String>,
    loc: impl Fn(&str) -> Location,
    diags: &mut Vec<Diagnostic>,
) {
    for (key, value) in labels {
        if key.is_empty() || key.len() > 255 || key.contains(|c: char| c.is_control() || c.is_whitespace() || c == '=')
        {
            diags.push(Diagnostic::at(
                loc(key),
                format!(
                    "invalid label `{}`: a label key is printable text without spaces or `=`, at most 255 bytes",
                    shown(key)
                ),
            ));
        } else if key.starts_with("tend.") {
            diags.push(Diagnostic::at(
                loc(key),
                format!("label `{key}`: the `tend.` prefix is reserved for tend's own labels"),
            ));
        }
        if value.contains('\0') {
            diags.push(Diagnostic::at(
                loc(key),
                format!("the value of label `{}` contains a NUL character", shown(key)),
            ));
        }
    }
}

/// Reports the values of one document that are out of their bounds, each at its place.
pub(super) struct Limits<'a, F: Fn(&[Seg<'_>]) -> Location> {
    /// Locates a path from the document's root.
    here: F,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'a, F: Fn(&[Seg<'_>]) -> Location> Limits<'a, F> {
    pub(super) fn new(here: F, diags: &'a mut Vec<Diagnostic>) -> Self {
        Self { here, diags }
    }

    /// Reports `problem`, if any, at `path`.
    fn put(&mut self, path: &[Seg<'_>], problem: Option<String>) {
        if let Some(message) = problem {
            self.diags.push(Diagnostic::at((self.here)(path), message));
        }
    }

    /// A value and its bound, at `path`, named `field` in the message.
    fn value<T: PartialOrd + fmt::Display>(&mut self, path: &[Seg<'_>], field: &str, value: T, bound: Bound<T>) {
        self.put(path, bound.check(field, value));
    }

    /// An optional duration and its bound.
    fn duration(&mut self, path: &[Seg<'_>], field: &str, value: Option<Duration>, bound: Bound<Duration>) {
        if let Some(value) = value {
            self.value(path, field, value, bound);
        }
    }

    /// A list's or a mapping's number of entries.
    fn items(&mut self, path: &[Seg<'_>], field: &str, n: usize, bound: Bound<usize>) {
        self.put(path, bound.check_items(field, n));
    }

    /// The length of a text; `subject` is the whole subject of the message.
    fn bytes(&mut self, path: &[Seg<'_>], subject: &str, text: &str, bound: Bound<usize>) {
        self.put(path, bound.check_bytes(subject, text.len()));
    }

    /// A path's length.
    fn path(&mut self, path: &[Seg<'_>], field: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.bytes(path, &format!("`{field}`"), value, bounds::PATH);
        }
    }

    /// An argument list: its length and each argument's.
    fn argv(&mut self, path: &[Seg<'_>], field: &str, argv: Option<&[String]>) {
        let Some(argv) = argv else { return };
        self.items(path, field, argv.len(), bounds::ARGS);
        let subject = format!("an argument of `{field}`");
        for (i, arg) in argv.iter().enumerate() {
            self.bytes(&[path, &[Seg::Index(i)]].concat(), &subject, arg, bounds::TEXT);
        }
    }

    /// An environment: its size, each name's and literal value's length, each secret's path.
    fn env(&mut self, path: &[Seg<'_>], env: &BTreeMap<String, EnvValue>) {
        self.items(path, "env", env.len(), bounds::ENV);
        for (key, value) in env {
            let at = [path, &[Seg::Key(key)]].concat();
            self.put(&at, bounds::ENV_NAME.check_bytes("the name of an environment variable", key.len()));
            match value {
                EnvValue::Literal(text) => {
                    self.bytes(&at, &format!("the value of `{}`", shown_cut(key)), text, bounds::TEXT)
                }
                EnvValue::FromFile { from_file } => {
                    let len = from_file.as_os_str().len();
                    let at = [&at[..], &[Seg::Key("fromFile")]].concat();
                    self.put(&at, bounds::PATH.check_bytes("`fromFile`", len));
                }
            }
        }
    }

    /// A `labels` mapping: its size, each key's and value's length.
    fn labels(&mut self, path: &[Seg<'_>], field: &str, labels: &BTreeMap<String, String>) {
        self.items(path, field, labels.len(), bounds::LABELS);
        for (key, value) in labels {
            let at = [path, &[Seg::Key(key)]].concat();
            self.put(&at, bounds::LABEL_KEY.check_bytes("a label key", key.len()));
            self.bytes(&at, &format!("the value of label `{}`", shown_cut(key)), value, bounds::LABEL_VALUE);
        }
    }

    /// A calendar expression's length.
    fn schedule(&mut self, path: &[Seg<'_>], field: &str, expr: Option<&str>) {
        if let Some(expr) = expr {
            self.bytes(path, &format!("`{field}`"), expr, bounds::SCHEDULE);
        }
    }

    /// The bounds of a Service: its metadata's labels and every value of its spec.
    pub(super) fn service(&mut self, metadata_labels: &BTreeMap<String, String>, spec: &ServiceSpec) {
        let p = |k: &'static str| [Seg::Key("spec"), Seg::Key(k)];
        self.labels(&[Seg::Key("metadata"), Seg::Key("labels")], "metadata.labels", metadata_labels);
        self.value(&p("replicas"), "replicas", spec.replicas, bounds::REPLICAS);
        self.argv(&p("exec"), "exec", spec.exec.as_deref());
        self.env(&p("env"), &spec.env);
        self.path(&p("workingDir"), "workingDir", spec.working_dir.as_deref());
        self.path(&p("pidFile"), "pidFile", spec.pid_file.as_deref());
        self.duration(&p("stopTimeout"), "stopTimeout", spec.stop_timeout, bounds::STOP_TIMEOUT);
        if let Some(memory) = spec.resources.as_ref().and_then(|r| r.memory) {
            let at = [Seg::Key("spec"), Seg::Key("resources"), Seg::Key("memory")];
            self.put(&at, memory_problem(memory.0));
        }
        self.items(&p("dependsOn"), "dependsOn", spec.depends_on.len(), bounds::DEPENDS_ON);
        for (i, dep) in spec.depends_on.iter().enumerate() {
            let at = [Seg::Key("spec"), Seg::Key("dependsOn"), Seg::Index(i), Seg::Key("timeout")];
            self.duration(&at, &format!("dependsOn[{i}].timeout"), dep.timeout, bounds::DEPENDENCY_TIMEOUT);
        }
        let backoff = |k| [Seg::Key("spec"), Seg::Key("restart"), Seg::Key("backoff"), Seg::Key(k)];
        let b = spec.restart.backoff;
        self.value(&backoff("initial"), "restart.backoff.initial", b.initial, bounds::BACKOFF_INITIAL);
        self.value(&backoff("max"), "restart.backoff.max", b.max, bounds::BACKOFF_MAX);
        if let Some(window) = &spec.update_window {
            let at = |k| [Seg::Key("spec"), Seg::Key("updateWindow"), Seg::Key(k)];
            self.schedule(&at("schedule"), "updateWindow.schedule", Some(&window.schedule));
            self.value(&at("duration"), "updateWindow.duration", window.duration, bounds::UPDATE_WINDOW);
        }
        if spec.runtime == Runtime::Docker {
            self.docker_service(spec);
        }
    }

    /// The bounds of the fields of a docker service only.
    fn docker_service(&mut self, spec: &ServiceSpec) {
        let p = |k: &'static str| [Seg::Key("spec"), Seg::Key(k)];
        self.argv(&p("command"), "command", spec.command.as_deref());
        self.argv(&p("entrypoint"), "entrypoint", spec.entrypoint.as_deref());
        self.items(&p("ports"), "ports", spec.ports.len(), bounds::PORTS);
        self.items(&p("volumes"), "volumes", spec.volumes.len(), bounds::VOLUMES);
        self.items(&p("networks"), "networks", spec.networks.len(), bounds::NETWORKS);
        self.labels(&p("labels"), "labels", &spec.labels);
        let rollout = |k| [Seg::Key("spec"), Seg::Key("rollout"), Seg::Key(k)];
        let r = spec.rollout;
        self.value(&rollout("maxUnavailable"), "rollout.maxUnavailable", r.max_unavailable, bounds::REPLICAS);
        self.value(&rollout("interval"), "rollout.interval", r.interval, bounds::ROLLOUT_PAUSE);
        let field = "rollout.scaleDownInterval";
        self.value(&rollout("scaleDownInterval"), field, r.scale_down_interval, bounds::ROLLOUT_PAUSE);
        if let Some(placement) = &spec.placement {
            let at = |k| [Seg::Key("spec"), Seg::Key("placement"), Seg::Key(k)];
            self.bytes(&at("role"), "`placement.role`", &placement.role, bounds::ROLE);
            if let Some(n) = placement.max_unavailable {
                self.value(&at("maxUnavailable"), "placement.maxUnavailable", n, bounds::REPLICAS);
            }
            let grace = placement.lost_lease_grace;
            self.value(&at("lostLeaseGrace"), "placement.lostLeaseGrace", grace, bounds::LOST_LEASE_GRACE);
        }
        if let Some(hc) = &spec.healthcheck {
            let at = |k| [Seg::Key("spec"), Seg::Key("healthcheck"), Seg::Key(k)];
            self.argv(&at("command"), "healthcheck.command", Some(&hc.command));
            self.duration(&at("interval"), "healthcheck.interval", hc.interval, bounds::HEALTHCHECK_PERIOD);
            self.duration(&at("timeout"), "healthcheck.timeout", hc.timeout, bounds::HEALTHCHECK_PERIOD);
            let field = "healthcheck.startPeriod";
            self.duration(&at("startPeriod"), field, hc.start_period, bounds::HEALTHCHECK_START_PERIOD);
            if let Some(retries) = hc.retries {
                self.value(&at("retries"), "healthcheck.retries", retries, bounds::HEALTHCHECK_RETRIES);
            }
        }
    }

    /// The bounds of a Timer: its metadata's labels, its settings and its job.
    pub(super) fn timer(&mut self, metadata_labels: &BTreeMap<String, String>, spec: &TimerSpec) {
        let p = |k: &'static str| [Seg::Key("spec"), Seg::Key(k)];
        self.labels(&[Seg::Key("metadata"), Seg::Key("labels")], "metadata.labels", metadata_labels);
        self.schedule(&p("schedule"), "schedule", spec.schedule.as_deref());
        self.duration(&p("randomizedDelay"), "randomizedDelay", spec.randomized_delay, bounds::RANDOMIZED_DELAY);
        self.duration(&p("accuracy"), "accuracy", spec.accuracy, bounds::ACCURACY);
        self.duration(&p("timeout"), "timeout", spec.timeout, bounds::JOB_TIMEOUT);
        self.job(&spec.job);
    }

    /// The bounds of a Timer's job.
    fn job(&mut self, job: &Job) {
        let p = |k: &'static str| [Seg::Key("spec"), Seg::Key("job"), Seg::Key(k)];
        self.argv(&p("exec"), "exec", job.exec.as_deref());
        self.argv(&p("command"), "command", job.command.as_deref());
        self.argv(&p("entrypoint"), "entrypoint", job.entrypoint.as_deref());
        self.env(&p("env"), &job.env);
        self.items(&p("volumes"), "volumes", job.volumes.len(), bounds::VOLUMES);
        self.items(&p("networks"), "networks", job.networks.len(), bounds::NETWORKS);
        self.path(&p("workingDir"), "workingDir", job.working_dir.as_deref());
    }

    /// The bounds of a Backup: its metadata's labels and every value of its spec.
    pub(super) fn backup(&mut self, metadata_labels: &BTreeMap<String, String>, spec: &BackupSpec) {
        let p = |k: &'static str| [Seg::Key("spec"), Seg::Key(k)];
        self.labels(&[Seg::Key("metadata"), Seg::Key("labels")], "metadata.labels", metadata_labels);
        self.schedule(&p("schedule"), "schedule", spec.schedule.as_deref());
        if let Some(paths) = &spec.source.paths {
            let at = [Seg::Key("spec"), Seg::Key("source"), Seg::Key("paths")];
            self.items(&at, "source.paths", paths.len(), bounds::SOURCE_PATHS);
            for (i, path) in paths.iter().enumerate() {
                self.path(&[&at[..], &[Seg::Index(i)]].concat(), "source.paths", Some(path));
            }
        }
        self.exec(&["source", "exec"], spec.source.exec.as_ref());
        if let Some(quiesce) = &spec.quiesce {
            let at = |k| [Seg::Key("spec"), Seg::Key("quiesce"), Seg::Key(k)];
            self.items(&at("stop"), "quiesce.stop", quiesce.stop.len(), bounds::QUIESCE_STOP);
            self.value(&at("timeout"), "quiesce.timeout", quiesce.timeout, bounds::QUIESCE_TIMEOUT);
        }
        let dest = |k| [Seg::Key("spec"), Seg::Key("destination"), Seg::Key(k)];
        self.path(&dest("dir"), "destination.dir", Some(&spec.destination.dir));
        self.path(&dest("layout"), "destination.layout", spec.destination.layout.as_deref());
        self.items(&p("copies"), "copies", spec.copies.len(), bounds::COPIES);
        for (i, copy) in spec.copies.iter().enumerate() {
            let at = |k| [Seg::Key("spec"), Seg::Key("copies"), Seg::Index(i), Seg::Key(k)];
            self.path(&at("dir"), "copies.dir", copy.dir.as_deref());
            self.path(&at("rsync"), "copies.rsync", copy.rsync.as_deref());
            self.retention(&at("retention"), &format!("copies[{i}].retention"), copy.retention.as_ref());
        }
        self.retention(&p("retention"), "retention", spec.retention.as_ref());
        let threads = [Seg::Key("spec"), Seg::Key("compression"), Seg::Key("threads")];
        self.value(&threads, "compression.threads", spec.compression.threads, bounds::COMPRESSION_THREADS);
        if let Some(restore) = &spec.restore {
            let at = |k| [Seg::Key("spec"), Seg::Key("restore"), Seg::Key(k)];
            self.path(&at("moveAsideTo"), "restore.moveAsideTo", restore.move_aside_to.as_deref());
            self.exec(&["restore", "exec"], restore.exec.as_ref());
            self.items(&at("vars"), "restore.vars", restore.vars.len(), bounds::RESTORE_VARS);
            for (key, value) in &restore.vars {
                let subject = format!("the value of `{}` in `restore.vars`", shown_cut(key));
                self.bytes(&[&at("vars")[..], &[Seg::Key(key)]].concat(), &subject, value, bounds::TEXT);
            }
        }
        if let Some(drill) = &spec.drill {
            let at = |k| [Seg::Key("spec"), Seg::Key("drill"), Seg::Key(k)];
            self.schedule(&at("schedule"), "drill.schedule", Some(&drill.schedule));
            self.argv(&at("check"), "drill.check", Some(&drill.check));
        }
    }

    /// A Backup's command, at `spec.PARENT.exec`.
    fn exec(&mut self, keys: &[&'static str; 2], exec: Option<&ExecCommand>) {
        let Some(exec) = exec else { return };
        let at = [Seg::Key("spec"), Seg::Key(keys[0]), Seg::Key(keys[1]), Seg::Key("command")];
        self.argv(&at, &format!("{}.{}.command", keys[0], keys[1]), Some(&exec.command));
    }

    /// A retention's counts.
    fn retention(&mut self, path: &[Seg<'_>], field: &str, retention: Option<&Retention>) {
        let Some(r) = retention else { return };
        for (key, n) in [
            ("keepLast", r.keep_last),
            ("keepDaily", r.keep_daily),
            ("keepWeekly", r.keep_weekly),
            ("keepMonthly", r.keep_monthly),
            ("keepYearly", r.keep_yearly),
        ] {
            if let Some(n) = n {
                let at = [path, &[Seg::Key(key)]].concat();
                self.value(&at, &format!("{field}.{key}"), n, bounds::RETENTION_KEEP);
            }
        }
    }
}

/// The problem of a memory limit, if any: at least [`bounds::MIN_MEMORY`], at most
/// [`bounds::MEMORY`].
fn memory_problem(bytes: u64) -> Option<String> {
    if bytes < bounds::MIN_MEMORY {
        Some(format!(
            "`resources.memory` is {bytes} bytes; at least {} (6 MiB: Docker refuses a smaller limit, and under systemd the service would only be killed)",
            bounds::MIN_MEMORY
        ))
    } else if bytes > bounds::MEMORY.max {
        Some(format!("`resources.memory` is {bytes} bytes; at most {} ({})", bounds::MEMORY.max, bounds::MEMORY.why))
    } else {
        None
    }
}

/// A name for a message: control characters escaped, and cut after 64 characters.
fn shown_cut(text: &str) -> String {
    crate::diag::shown_cut(text, 64)
}

/// Checks that the docker services of a set run at most [`bounds::INSTANCES`] instances in
/// all: reported once, at the `replicas` of the service (in file order) whose instances
/// take the sum over it.
pub(super) fn check_instances(services: &[Checked], diags: &mut Vec<Diagnostic>) {
    let mut docker: Vec<&Checked> = services.iter().filter(|c| c.runtime == Some(Runtime::Docker)).collect();
    docker.sort_by_key(|c| c.at(&[]));
    // A service over its own bound is reported already: it counts as its bound here.
    let replicas = |c: &Checked| u64::from(c.spec.replicas.min(bounds::REPLICAS.max));
    let total: u64 = docker.iter().map(|c| replicas(c)).sum();
    let mut sum = 0u64;
    for c in docker {
        sum += replicas(c);
        if sum > bounds::INSTANCES.max {
            diags.push(Diagnostic::at(
                c.at(&[Seg::Key("spec"), Seg::Key("replicas")]),
                format!(
                    "the docker services of this set would run {total} instances; at most {} ({})",
                    bounds::INSTANCES.max,
                    bounds::INSTANCES.why
                ),
            ));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_follow_dockers_grammar() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        for good in [
            "busybox".to_string(),
            "busybox:1".into(),
            "tend-demo/busybox:1".into(),
            "library/postgres:16.2-alpine".into(),
            "registry.example.org:5000/team/app:1.2".into(),
            "localhost/app".into(),
            "localhost:5000/a__b/c.d/e---f:V_1".into(),
            "[::1]:5000/app:1".into(),
            "127.0.0.1:5000/app".into(),
            format!("busybox@{digest}"),
            format!("busybox:1@{digest}"),
        ] {
            assert_eq!(image_problem(&good), None, "{good}");
        }
        for (bad, why) in [
            ("busybox@sha256:../..", "the digest must be"),
            ("busybox@sha256:ABC", "the digest must be"),
            ("busybox@md5:0", "the digest must be"),
            ("Busybox", "`Busybox` is not a repository name"),
            ("a/../b", "`..` is not a repository name"),
            ("a//b", "`` is not a repository name"),
            ("a_/b", "`a_` is not a repository name"),
            ("a.-b", "`a.-b` is not a repository name"),
            ("busybox:", "the tag ``"),
            ("busybox:.x", "the tag `.x`"),
            ("reg-.example/x", "`reg-.example` is not a registry host"),
            ("reg.example:99999/x", "is not a registry host"),
            (":1", "the repository name is empty"),
            ("a b", "spaces or control characters"),
        ] {
            let got = image_problem(bad).unwrap_or_else(|| panic!("{bad} should be refused"));
            assert!(got.contains(why), "{bad}: {got}");
        }
        assert!(image_problem(&format!("busybox:{}", "x".repeat(129))).is_some());
        assert!(image_problem(&"a".repeat(256)).is_some());
    }

    #[test]
    fn docker_users_are_names_or_ids_with_an_optional_group() {
        for good in ["postgres", "1000", "1000:1000", "app:staff", "_svc.x-1"] {
            assert_eq!(docker_user_problem(good), None, "{good}");
        }
        for bad in ["", "app\nroot", "a:b:c", ":1", "1:", "a b", "-x"] {
            assert!(docker_user_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn environment_names_take_one_rule() {
        for good in ["A", "_", "a_1", "DB_PASSWORD"] {
            assert!(is_env_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "a.b", "A\nB", "A=B", "Ä"] {
            assert!(!is_env_name(bad), "{bad:?}");
        }
    }
}
