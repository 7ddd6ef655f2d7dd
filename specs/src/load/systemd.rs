//! Checks of what runs on the host under systemd: systemd services, Timers and their jobs.
//! Argument lists are checked for what would need a shell, accounts and paths for what a
//! unit file can hold, schedules with the calendar parser (reported at the column of the
//! expression where it goes wrong), time zones against the system tz database.

use super::*;
use crate::calendar::CalendarSpec;
use crate::diag::shown;
use crate::service::{Condition, ServiceType};
use crate::timer::{Job, JobRuntime, TimerSpec};

/// Where the tz database is read from (systemd reads the same).
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Arguments that only mean something to a shell.
const SHELL_OPERATORS: &[&str] = &["|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"];

/// Shells: `[SHELL, "-c", LINE]` is the explicit way to ask for one.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "ksh", "mksh", "zsh"];

/// What a Timer's own checks produce: its schedule parsed, the job's environment with
/// secrets read, and the digests of the single files the job bind-mounts.
pub(super) type TimerInputs = (Option<CalendarSpec>, BTreeMap<String, Env>, BTreeMap<PathBuf, String>);

/// Fields of a job that apply to one runtime only.
const JOB_RUNTIME_FIELDS: &[(&str, JobRuntime)] = &[
    ("image", JobRuntime::Docker),
    ("pullPolicy", JobRuntime::Docker),
    ("entrypoint", JobRuntime::Docker),
    ("command", JobRuntime::Docker),
    ("volumes", JobRuntime::Docker),
    ("networks", JobRuntime::Docker),
    ("exec", JobRuntime::Host),
    ("group", JobRuntime::Host),
];

/// Whether `name` is a user or group systemd accepts: a numeric id, or a name of letters,
/// digits, `_`, `.` and `-` that starts with a letter or `_` (at most 32 characters).
pub fn is_account(name: &str) -> bool {
    let b = name.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        return name.parse::<u32>().is_ok_and(|id| id < u32::MAX);
    }
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// Checks the parts of a systemd service that only it has (the fields of the other runtime
/// are reported by the caller).
pub(super) fn check_systemd_service(file: &Arc<Path>, node: &Node, spec: &ServiceSpec, diags: &mut Vec<Diagnostic>) {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let spec_loc = |k: &str| here(&[Seg::Key("spec"), Seg::Key(k)]);
    match &spec.exec {
        None => diags.push(Diagnostic::at(
            here(&[Seg::Key("spec")]),
            "missing field `exec` (a systemd service needs the program to run, e.g. `exec: [\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"]`)",
        )),
        Some(argv) => check_exec(argv, |i| here(&[Seg::Key("spec"), Seg::Key("exec"), Seg::Index(i)]), diags),
    }
    check_accounts(spec.user.as_deref(), spec.group.as_deref(), spec_loc, diags);
    if let Some(dir) = &spec.working_dir {
        check_host_path("workingDir", dir, spec_loc("workingDir"), diags);
    }
    match (spec.unit_type(), &spec.pid_file) {
        (ServiceType::Forking, None) => diags.push(Diagnostic::at(
            spec_loc("type"),
            "`type: forking` needs `pidFile`: systemd cannot tell which process is the daemon otherwise",
        )),
        (ServiceType::Forking, Some(path)) => check_host_path("pidFile", path, spec_loc("pidFile"), diags),
        (other, Some(_)) => {
            let loc = key_node(node, &["spec", "pidFile"]).map_or_else(|| spec_loc("pidFile"), |k| at(file, k));
            diags.push(Diagnostic::at(
                loc,
                format!(
                    "`pidFile` applies to `type: forking` only (this service is `type: {other}`, whose main process systemd knows)"
                ),
            ));
        }
        (_, None) => {}
    }
    if spec.replicas != 1 {
        diags.push(Diagnostic::at(
            spec_loc("replicas"),
            format!("a systemd service runs one unit: `replicas` must be 1, found {}", spec.replicas),
        ));
    }
    for (i, dep) in spec.depends_on.iter().enumerate() {
        let dep_path = |k| [Seg::Key("spec"), Seg::Key("dependsOn"), Seg::Index(i), Seg::Key(k)];
        if dep.condition != Condition::Started {
            diags.push(Diagnostic::at(
                here(&dep_path("condition")),
                format!(
                    "condition `{}` applies to docker services only; a systemd service waits for its dependencies to be `started` (systemd's Requires= and After=)",
                    dep.condition
                ),
            ));
        }
        if dep.timeout.is_some() {
            diags.push(Diagnostic::at(
                here(&dep_path("timeout")),
                "a dependency's `timeout` applies to docker services only; systemd starts a unit after its dependencies and fails it when one fails",
            ));
        }
    }
}

/// Checks an argument list run without a shell (a systemd service's or a host job's `exec`).
fn check_exec(argv: &[String], loc: impl Fn(usize) -> Location, diags: &mut Vec<Diagnostic>) {
    check_argv("exec", ArgvUse::Unit, argv, loc, diags);
}

/// Where an argument list is run, which decides what it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ArgvUse {
    /// A unit file's `ExecStart=`: an absolute program, no line breaks.
    Unit,
    /// Started by tend on the host: an absolute program.
    Host,
    /// Run in a container (`docker exec`): the image's PATH finds the program.
    Container,
}

/// Checks an argument list run without a shell: what only a shell would understand, a
/// whole command line in one item, and (on the host) a program that is not an absolute
/// path. `field` names the list in messages.
pub(super) fn check_argv(
    field: &str,
    usage: ArgvUse,
    argv: &[String],
    loc: impl Fn(usize) -> Location,
    diags: &mut Vec<Diagnostic>,
) {
    const SHELL_HINT: &str = "[\"/bin/sh\", \"-c\", \"...\"]";
    let Some(program) = argv.first() else {
        // `exec: []` is located at its `[`, as the first item would be.
        let what = if usage == ArgvUse::Container { "the program" } else { "the program's absolute path" };
        diags.push(Diagnostic::at(loc(0), format!("`{field}` is empty; give {what} and its arguments")));
        return;
    };
    let shell_line = Path::new(program).file_name().and_then(|n| n.to_str()).is_some_and(|n| SHELLS.contains(&n))
        && argv[1..].iter().take_while(|a| a.starts_with('-')).any(|a| !a.starts_with("--") && a.contains('c'));
    let mut program_ok = true;
    for (i, arg) in argv.iter().enumerate() {
        if usage == ArgvUse::Unit && arg.contains(['\n', '\r', '\0']) {
            diags.push(Diagnostic::at(
                loc(i),
                "an `exec` argument cannot contain a line break or a NUL character (a unit file cannot hold it); pass such text in a file or in `env`",
            ));
            program_ok &= i != 0;
        } else if arg.contains('\0') {
            diags.push(Diagnostic::at(
                loc(i),
                format!(
                    "an argument of `{field}` cannot contain a NUL character (a program's arguments cannot hold it)"
                ),
            ));
            program_ok &= i != 0;
        } else if !shell_line && SHELL_OPERATORS.contains(&arg.as_str()) {
            diags.push(Diagnostic::at(
                loc(i),
                format!(
                    "`{arg}` in `{field}` needs a shell, and tend runs `{field}` without one; for a shell command line write {SHELL_HINT}"
                ),
            ));
            program_ok &= i != 0;
        }
    }
    if !program_ok {
        return;
    }
    if argv.len() == 1 && program.contains(char::is_whitespace) {
        diags.push(Diagnostic::at(
            loc(0),
            format!(
                "`{field}` is a list of arguments, but its only item `{}` is a whole command line; write one argument per item, e.g. [\"/usr/bin/prog\", \"--flag\"], or {SHELL_HINT} for a shell command line",
                shown(program)
            ),
        ));
    } else if usage != ArgvUse::Container && !program.starts_with('/') {
        let why = if usage == ArgvUse::Unit {
            "so that a unit never depends on it"
        } else {
            "so that a command never depends on the PATH it is started with"
        };
        diags.push(Diagnostic::at(
            loc(0),
            format!(
                "the program `{0}` is not an absolute path: tend does not search PATH, {why}; write its full path (`command -v {0}` shows it), or {SHELL_HINT} for a shell command line",
                shown(program)
            ),
        ));
    }
}

/// Checks `user` and `group` of something that runs on the host.
fn check_accounts(
    user: Option<&str>,
    group: Option<&str>,
    loc: impl Fn(&str) -> Location,
    diags: &mut Vec<Diagnostic>,
) {
    for (field, value) in [("user", user), ("group", group)] {
        let Some(value) = value else { continue };
        if is_account(value) {
            continue;
        }
        let hint = if field == "user" && value.contains(':') { "; put the group in `group`" } else { "" };
        diags.push(Diagnostic::at(
            loc(field),
            format!(
                "invalid {field} `{}`: on the host, a {field} is a name (letters, digits, `_`, `.` and `-`, starting with a letter or `_`, at most 32 characters) or a numeric id{hint}",
                value.escape_default()
            ),
        ));
    }
}

/// Checks a path on the host that a unit file names (`workingDir`, `pidFile`).
fn check_host_path(field: &str, path: &str, loc: Location, diags: &mut Vec<Diagnostic>) {
    if !path.starts_with('/') {
        diags.push(Diagnostic::at(
            loc,
            format!("`{field}` must be an absolute path on the host, found `{}`", path.escape_default()),
        ));
    } else if path.contains(['\n', '\r', '\0']) {
        diags.push(Diagnostic::at(loc, format!("`{field}` cannot contain a line break or a NUL character")));
    }
}

/// Checks one Timer on its own: the schedule and time zone, the settings and the job
/// (reading its secrets and hashing the files it mounts, resolving relative bind-mount
/// sources in `spec`). `None` when it found a problem.
pub(super) fn check_timer(
    file: &Arc<Path>,
    source: &str,
    node: &Node,
    metadata: &Metadata,
    spec: &mut TimerSpec,
    secrets: &mut SecretBudget,
    diags: &mut Vec<Diagnostic>,
) -> Option<TimerInputs> {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let spec_loc = |k: &str| here(&[Seg::Key("spec"), Seg::Key(k)]);
    let before = diags.len();
    super::values::check_labels(
        &metadata.labels,
        |key| here(&[Seg::Key("metadata"), Seg::Key("labels"), Seg::Key(key)]),
        diags,
    );
    let mut calendar = None;
    match &spec.schedule {
        None if spec.enabled => diags.push(Diagnostic::at(
            here(&[Seg::Key("spec")]),
            "missing field `schedule` (an enabled Timer needs one, e.g. \"*-*-* 01:00:00\" or `daily`; with `enabled: false` the job runs only with `tend job run`)",
        )),
        None => {}
        Some(expr) => match expr.parse::<CalendarSpec>() {
            Ok(spec) => calendar = Some(spec),
            Err(e) => {
                let value = locate(node, &[Seg::Key("spec"), Seg::Key("schedule")]);
                diags.push(Diagnostic::at(
                    column_in_scalar(file, source, value, expr, e.column()),
                    format!("invalid schedule: {e}"),
                ));
            }
        },
    }
    if let Some(tz) = &spec.timezone {
        if let Some(msg) = timezone_problem(tz) {
            diags.push(Diagnostic::at(spec_loc("timezone"), msg));
        } else if let (Some(parsed), Some(expr)) = (&calendar, &spec.schedule) {
            if let Some(zone) = zone_of(parsed) {
                diags.push(Diagnostic::at(
                    spec_loc("timezone"),
                    format!(
                        "the schedule already names the time zone `{zone}`; give the zone in `schedule` or in `timezone`, not in both"
                    ),
                ));
            } else {
                // The zone is a suffix of the expression for systemd; read it the same way.
                match format!("{expr} {tz}").parse::<CalendarSpec>() {
                    Ok(zoned) => calendar = Some(zoned),
                    Err(e) => diags.push(Diagnostic::at(
                        spec_loc("timezone"),
                        format!("time zone `{tz}` cannot be read after the schedule: {e}"),
                    )),
                }
            }
        }
    }
    if spec.timeout.is_some_and(|t| t.get().is_zero()) {
        diags.push(Diagnostic::at(spec_loc("timeout"), "`timeout` must be more than 0s (leave it out for no limit)"));
    }
    super::values::Limits::new(&here, diags).timer(&metadata.labels, spec);
    let (env, file_digests) = check_job(file, node, &mut spec.job, secrets, diags);
    (diags.len() == before).then_some((calendar, env, file_digests))
}

/// Checks a Timer's job: the fields of its runtime, and its environment and mounts.
fn check_job(
    file: &Arc<Path>,
    node: &Node,
    job: &mut Job,
    secrets: &mut SecretBudget,
    diags: &mut Vec<Diagnostic>,
) -> (BTreeMap<String, Env>, BTreeMap<PathBuf, String>) {
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let job_loc = |k: &str| here(&[Seg::Key("spec"), Seg::Key("job"), Seg::Key(k)]);
    for (field, runtime) in JOB_RUNTIME_FIELDS {
        if *runtime != job.runtime
            && let Some(key) = key_node(node, &["spec", "job", field])
        {
            let hint = match *field {
                "command" | "entrypoint" => "; a host job runs `exec`",
                "exec" => "; a docker job runs `command` in its image",
                _ => "",
            };
            diags.push(Diagnostic::at(
                at(file, key),
                format!("field `{field}` applies to runtime {runtime} only{hint}"),
            ));
        }
    }
    let base_dir = base_dir(file);
    let env_loc = |rest: &[Seg<'_>]| here(&[&[Seg::Key("spec"), Seg::Key("job"), Seg::Key("env")], rest].concat());
    match job.runtime {
        JobRuntime::Docker => {
            match job.image.as_deref() {
                None => diags.push(Diagnostic::at(
                    here(&[Seg::Key("spec"), Seg::Key("job")]),
                    "missing field `image` (a docker job needs an image)",
                )),
                Some(img) => values::check_image(img, job_loc("image"), diags),
            }
            check_container_fields(
                job.command.as_deref(),
                job.entrypoint.as_deref(),
                job.user.as_deref(),
                job.working_dir.as_deref(),
                |path| here(&[&[Seg::Key("spec"), Seg::Key("job")], path].concat()),
                diags,
            );
            let net_loc = |i| here(&[Seg::Key("spec"), Seg::Key("job"), Seg::Key("networks"), Seg::Index(i)]);
            check_networks(&job.networks, net_loc, diags);
            let env = resolve_env(&job.env, &base_dir, env_loc, secrets, diags);
            let vol_loc = |i| here(&[Seg::Key("spec"), Seg::Key("job"), Seg::Key("volumes"), Seg::Index(i)]);
            let file_digests = resolve_volumes(&mut job.volumes, &base_dir, vol_loc, diags);
            (env, file_digests)
        }
        JobRuntime::Host => {
            match &job.exec {
                None => diags.push(Diagnostic::at(
                    here(&[Seg::Key("spec"), Seg::Key("job")]),
                    "missing field `exec` (a host job needs the program to run, e.g. `exec: [\"/usr/local/bin/backup\"]`)",
                )),
                Some(argv) => check_exec(
                    argv,
                    |i| here(&[Seg::Key("spec"), Seg::Key("job"), Seg::Key("exec"), Seg::Index(i)]),
                    diags,
                ),
            }
            check_accounts(job.user.as_deref(), job.group.as_deref(), job_loc, diags);
            if let Some(dir) = &job.working_dir {
                check_host_path("workingDir", dir, job_loc("workingDir"), diags);
            }
            (resolve_env(&job.env, &base_dir, env_loc, secrets, diags), BTreeMap::new())
        }
    }
}

/// The place of character `column` (1-based) of the string `value`, which `node` holds: on
/// the same line, after an opening quote if there is one. When the text in the file is not
/// the value character for character up to there (escapes, folded lines), the node's own
/// place.
pub(super) fn column_in_scalar(file: &Arc<Path>, source: &str, node: &Node, value: &str, column: usize) -> Location {
    let start = at(file, node);
    let Some(line) = source.lines().nth(node.mark.line.saturating_sub(1)) else { return start };
    let rest: String = line.chars().skip(node.mark.column.saturating_sub(1)).collect();
    let (content, quote) = match rest.strip_prefix(['"', '\'']) {
        Some(content) => (content, 1),
        None => (rest.as_str(), 0),
    };
    let before: String = value.chars().take(column.saturating_sub(1)).collect();
    if column == 0 || !content.starts_with(&before) || before.contains(['\n', '\r']) {
        return start;
    }
    Location { column: start.column + quote + column - 1, ..start }
}

/// The time zone an expression names, if any. The normalized form always ends with the
/// time (`HH:MM:SS`), so a last word without `:` is the zone.
fn zone_of(spec: &CalendarSpec) -> Option<String> {
    let normalized = spec.normalized();
    let last = normalized.rsplit(' ').next()?;
    (!last.contains(':')).then(|| last.to_string())
}

/// What is wrong with a `timezone`, if anything: it must be an IANA name (checked as systemd
/// checks one, so no path gets near the file system) of a zone in the tz database.
fn timezone_problem(tz: &str) -> Option<String> {
    let parts_ok = tz.split('/').all(|p| !p.is_empty() && !p.starts_with(['-', '.']));
    let chars_ok = tz.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_+/".contains(&b));
    if !(parts_ok && chars_ok) {
        return Some(format!(
            "invalid time zone `{}`: expected an IANA name like `Europe/Berlin` (letters, digits, `-`, `_` and `+`, parts separated by `/`), not a path",
            tz.escape_default()
        ));
    }
    let path = Path::new(ZONEINFO).join(tz);
    let loads = crate::files::read(&path, crate::files::ZONE_FILE)
        .is_ok_and(|data| data.starts_with(b"TZif") && jiff::tz::TimeZone::tzif(tz, &data).is_ok());
    if loads {
        return None;
    }
    if !Path::new(ZONEINFO).is_dir() {
        return Some(format!(
            "unknown time zone `{tz}`: there is no tz database at {ZONEINFO} (install the `tzdata` package)"
        ));
    }
    let hint = zone_names()
        .into_iter()
        .map(|name| (strsim::jaro_winkler(&name.to_lowercase(), &tz.to_lowercase()), name))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| format!(", did you mean `{name}`?"))
        .unwrap_or_default();
    Some(format!("unknown time zone `{tz}`: it is not in {ZONEINFO}{hint}"))
}

/// The zone names of the tz database (for suggestions only).
fn zone_names() -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(ZONEINFO)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(ZONEINFO) else { continue };
            let Some(rel) = rel.to_str() else { continue };
            if rel == "posix" || rel == "right" || rel.contains('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(rel.to_string());
            }
        }
    }
    out.sort();
    out
}
