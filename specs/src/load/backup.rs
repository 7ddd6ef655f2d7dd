//! Checks of `kind: Backup`: names (their own namespace, but the units they become must
//! not clash with a Service's or Timer's), the source (absolute paths none inside another,
//! or a command run in or as a Service, or on the host), the quiesced services, the
//! destination layout and its tokens, copies, retention, compression, restore (with its
//! `${var}` placeholders) and the drill. Schedules are checked as a Timer's are.

use super::systemd::{ArgvUse, check_argv, column_in_scalar};
use super::*;
use crate::backup::{
    BackupSpec, DEFAULT_COMPRESSION_LEVEL, Drill, ExecCommand, LAYOUT_TOKENS, LayoutPart, Restore, SourceKind,
    TemplateError, is_var_name, layout_parts, placeholders,
};
use crate::calendar::CalendarSpec;
use crate::desired::{Backup, backup_hashes, backup_unit_name, drill_unit_name};

/// What a Backup's own checks produce: its schedule and its drill's schedule parsed, and
/// the placeholders of its restore command.
type BackupInputs = (Option<CalendarSpec>, Option<CalendarSpec>, BTreeSet<String>);

/// Checks every Backup: names, each on its own, and the directories they share. Returns
/// the ones without problems.
pub(super) fn check_backups(
    docs: Vec<Decoded<BackupSpec>>,
    names: &BTreeMap<String, Owner>,
    all_named: bool,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Backup> {
    let unique = claim_backup_names(&docs, names, diags);
    let mut backups = BTreeMap::new();
    let mut checked: Vec<(&Decoded<BackupSpec>, &BackupSpec)> = Vec::new();
    for (d, unique) in docs.iter().zip(unique) {
        let Some(spec) = d.spec.value() else { continue };
        check_references(d, spec, names, all_named, diags);
        let inputs = match &d.spec {
            Spec::Whole(_) => check_backup(d, spec, names, diags),
            // Its own checks wait until it decodes.
            _ => None,
        };
        if !unique {
            continue;
        }
        checked.push((d, spec));
        if let (Spec::Whole(_), Some((calendar, drill_calendar, restore_vars))) = (&d.spec, inputs) {
            let (hash, field_hashes) = backup_hashes(spec);
            let backup = Backup {
                name: d.metadata.name.clone(),
                metadata_labels: d.metadata.labels.clone(),
                spec: spec.clone(),
                calendar,
                drill_calendar,
                restore_vars,
                location: at(&d.file, &d.node),
                hash,
                field_hashes,
            };
            backups.insert(d.metadata.name.clone(), backup);
        }
    }
    check_shared_dirs(&checked, diags);
    backups
}

/// Claims the Backups' names in file order: each a DNS label, unique among Backups, and
/// the units it becomes (`backup-NAME`, `backup-NAME-drill`) nobody else's. Returns, for
/// each, whether its name is valid and its own.
fn claim_backup_names(
    docs: &[Decoded<BackupSpec>],
    names: &BTreeMap<String, Owner>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<bool> {
    let name_loc = |d: &Decoded<BackupSpec>| at(&d.file, locate(&d.node, &[Seg::Key("metadata"), Seg::Key("name")]));
    let mut order: Vec<(Location, usize)> = docs.iter().enumerate().map(|(i, d)| (name_loc(d), i)).collect();
    order.sort();
    let mut unique = vec![false; docs.len()];
    let mut claimed: BTreeMap<&str, Location> = BTreeMap::new();
    // Units of the Backups so far: the unit, what it is ("the unit of Backup `x`"), where.
    let mut units: BTreeMap<String, (String, Location)> = BTreeMap::new();
    for (location, i) in order {
        let d = &docs[i];
        let name = d.metadata.name.as_str();
        if let Some(msg) = dns_label_problem(name) {
            diags.push(Diagnostic::at(location, msg));
            continue;
        }
        if let Some(first) = claimed.get(name) {
            diags.push(Diagnostic::at(location, format!("duplicate Backup name `{name}` (first defined at {first})")));
            continue;
        }
        claimed.insert(name, location.clone());
        let has_drill = d.spec.value().is_some_and(|s| s.drill.is_some());
        let mine = [
            Some((backup_unit_name(name), format!("Backup `{name}` runs as"), format!("the unit of Backup `{name}`"))),
            has_drill.then(|| {
                (
                    drill_unit_name(name),
                    format!("the restore drill of Backup `{name}` runs as"),
                    format!("the drill unit of Backup `{name}`"),
                )
            }),
        ];
        let mut ok = true;
        for (unit, runs_as, what) in mine.into_iter().flatten() {
            let clash = match (names.get(&unit), units.get(&unit)) {
                (Some(owner), _) => Some((owner.describe(&unit), owner.location.clone())),
                (None, Some((other, loc))) => Some((other.clone(), loc.clone())),
                (None, None) => None,
            };
            match clash {
                Some((other, loc)) => {
                    diags.push(Diagnostic::at(
                        location.clone(),
                        format!(
                            "{runs_as} the systemd unit `{unit}.service`, which clashes with {other} (defined at {loc}); rename one of them"
                        ),
                    ));
                    ok = false;
                }
                None => {
                    units.insert(unit, (what, location.clone()));
                }
            }
        }
        unique[i] = ok;
    }
    unique
}

/// Checks that the services a Backup names exist: those `quiesce.stop` lists, and the
/// ones `source.exec` and `restore.exec` run in. Also for a Backup that decoded only
/// partly, so that these come with its other problems.
fn check_references(
    d: &Decoded<BackupSpec>,
    spec: &BackupSpec,
    names: &BTreeMap<String, Owner>,
    all_named: bool,
    diags: &mut Vec<Diagnostic>,
) {
    let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
    if let Some(quiesce) = &spec.quiesce {
        // (A name listed twice is reported by the Backup's own checks, and named once here.)
        let mut seen = BTreeSet::new();
        for (i, name) in quiesce.stop.iter().enumerate().filter(|(_, name)| seen.insert(name.as_str())) {
            let loc = here(&[Seg::Key("spec"), Seg::Key("quiesce"), Seg::Key("stop"), Seg::Index(i)]);
            service_ref("quiesce.stop", name, names, all_named, loc, diags);
        }
    }
    // A paths source's `restore.exec` is an error of its own, and runs nowhere.
    let paths = spec.source.paths.is_some() && spec.source.exec.is_none();
    let restore = spec.restore.as_ref().and_then(|r| r.exec.as_ref()).filter(|_| !paths);
    for (parent, exec) in [("source", spec.source.exec.as_ref()), ("restore", restore)] {
        // (With `runtime` too, the command's own check says it takes one of them.)
        if let Some(ExecCommand { service: Some(service), runtime: None, .. }) = exec {
            let loc = here(&[Seg::Key("spec"), Seg::Key(parent), Seg::Key("exec"), Seg::Key("service")]);
            service_ref(&format!("{parent}.exec.service"), service, names, all_named, loc, diags);
        }
    }
}

/// Checks one Backup on its own (where its commands run included; whether the services it
/// names exist is [`check_references`]'). `None` when it found a problem.
fn check_backup(
    d: &Decoded<BackupSpec>,
    spec: &BackupSpec,
    names: &BTreeMap<String, Owner>,
    diags: &mut Vec<Diagnostic>,
) -> Option<BackupInputs> {
    let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
    let before = diags.len();
    super::values::check_labels(
        &d.metadata.labels,
        |key| here(&[Seg::Key("metadata"), Seg::Key("labels"), Seg::Key(key)]),
        diags,
    );
    let calendar = spec
        .schedule
        .as_deref()
        .and_then(|expr| parse_schedule(d, &[Seg::Key("spec"), Seg::Key("schedule")], expr, "schedule", diags));
    let (kind, sources) = check_source(d, spec, names, diags);
    if let Some(quiesce) = &spec.quiesce {
        check_quiesce(d, quiesce, kind, diags);
    }
    check_destination(d, spec, kind, &sources, diags);
    check_copies(d, spec, &sources, diags);
    check_retentions(d, spec, diags);
    check_compression(d, spec, diags);
    super::values::Limits::new(&here, diags).backup(&d.metadata.labels, spec);
    let restore_vars = match &spec.restore {
        Some(restore) => check_restore(d, restore, kind, &sources, names, diags),
        None => BTreeSet::new(),
    };
    let drill_calendar =
        spec.drill.as_ref().and_then(|drill| check_drill(d, spec, drill, kind, &restore_vars, names, diags));
    (diags.len() == before).then_some((calendar, drill_calendar, restore_vars))
}

/// Parses the calendar expression `expr` at `path`, reporting an error as an invalid
/// `what` at its column in the expression.
fn parse_schedule(
    d: &Decoded<BackupSpec>,
    path: &[Seg<'_>],
    expr: &str,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<CalendarSpec> {
    match expr.parse::<CalendarSpec>() {
        Ok(calendar) => Some(calendar),
        Err(e) => {
            let value = locate(&d.node, path);
            diags.push(Diagnostic::at(
                column_in_scalar(&d.file, &d.source, value, expr, e.column()),
                format!("invalid {what}: {e}"),
            ));
            None
        }
    }
}

/// Checks `source`: exactly one of `paths` and `exec`, each checked. Returns the kind of
/// source (`None` when it is not one) and its paths that are well formed, for the checks
/// of what must not lie inside them.
fn check_source<'s>(
    d: &Decoded<BackupSpec>,
    spec: &'s BackupSpec,
    names: &BTreeMap<String, Owner>,
    diags: &mut Vec<Diagnostic>,
) -> (Option<SourceKind>, Vec<&'s str>) {
    let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
    let key_at = |path: &[&str]| key_node(&d.node, path).map(|k| at(&d.file, k));
    let kind = match (&spec.source.paths, &spec.source.exec) {
        (Some(_), Some(_)) => {
            diags.push(Diagnostic::at(
                key_at(&["spec", "source", "exec"]).unwrap_or_else(|| here(&[Seg::Key("spec"), Seg::Key("source")])),
                "`source` takes one of `paths` and `exec`, not both: a Backup archives either paths or a command's output; write two Backups for both",
            ));
            None
        }
        (None, None) => {
            diags.push(Diagnostic::at(
                here(&[Seg::Key("spec"), Seg::Key("source")]),
                "`source` needs `paths` (directories and files to archive) or `exec` (a command whose output is archived)",
            ));
            None
        }
        (Some(_), None) => Some(SourceKind::Paths),
        (None, Some(_)) => Some(SourceKind::Exec),
    };
    let paths: &[String] = spec.source.paths.as_deref().unwrap_or_default();
    check_source_paths(d, paths, diags);
    if let Some(exec) = &spec.source.exec {
        check_exec_command(d, &["source", "exec"], exec, names, diags);
    }
    // Checked paths only, for the checks of what must not lie inside them.
    let sources: Vec<&str> = paths.iter().map(String::as_str).filter(|p| host_path_problem("", p).is_none()).collect();
    (kind, sources)
}

/// Checks `destination`: its `dir` is an absolute host path outside the source paths, and
/// its `layout` is well formed for the kind of source.
fn check_destination(
    d: &Decoded<BackupSpec>,
    spec: &BackupSpec,
    kind: Option<SourceKind>,
    sources: &[&str],
    diags: &mut Vec<Diagnostic>,
) {
    let (file, node) = (&d.file, &d.node);
    let dest = &spec.destination;
    let dest_loc = |k| at(file, locate(node, &[Seg::Key("spec"), Seg::Key("destination"), Seg::Key(k)]));
    if let Some(msg) = host_path_problem("destination.dir", &dest.dir) {
        diags.push(Diagnostic::at(dest_loc("dir"), msg));
    } else if let Some(source) = inside(sources, &dest.dir) {
        diags.push(Diagnostic::at(
            dest_loc("dir"),
            format!(
                "`destination.dir` is inside the source path `{source}`: each archive would hold the ones before it; write archives outside the paths backed up"
            ),
        ));
    }
    if let Some(layout) = &dest.layout {
        let value = locate(node, &[Seg::Key("spec"), Seg::Key("destination"), Seg::Key("layout")]);
        for e in layout_problems(layout, kind) {
            diags.push(Diagnostic::at(column_in_scalar(file, &d.source, value, layout, e.column), e.message));
        }
    }
}

/// Checks that each `retention` (the Backup's and its copies') keeps some archive.
fn check_retentions(d: &Decoded<BackupSpec>, spec: &BackupSpec, diags: &mut Vec<Diagnostic>) {
    let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
    let retentions = std::iter::once((spec.retention.as_ref(), vec![Seg::Key("spec"), Seg::Key("retention")])).chain(
        spec.copies.iter().enumerate().map(|(i, c)| {
            (c.retention.as_ref(), vec![Seg::Key("spec"), Seg::Key("copies"), Seg::Index(i), Seg::Key("retention")])
        }),
    );
    for (retention, path) in retentions {
        let Some(r) = retention else { continue };
        let rules = [r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly];
        if rules.iter().all(|n| n.unwrap_or(0) == 0) {
            diags.push(Diagnostic::at(
                here(&path),
                "`retention` keeps no archive by any rule (every `keep…` is 0 or missing); leave `retention` out to keep every archive, or write `keepLast: 1` to keep only the newest",
            ));
        }
    }
}

/// Checks that the compression `level` is one of zstd's.
fn check_compression(d: &Decoded<BackupSpec>, spec: &BackupSpec, diags: &mut Vec<Diagnostic>) {
    let c = &spec.compression;
    if !(1..=19).contains(&c.level) {
        diags.push(Diagnostic::at(
            at(&d.file, locate(&d.node, &[Seg::Key("spec"), Seg::Key("compression"), Seg::Key("level")])),
            format!(
                "compression `level` must be from 1 to 19 (zstd's levels; default {DEFAULT_COMPRESSION_LEVEL}), found {}",
                c.level
            ),
        ));
    }
}

/// Checks `drill`: its schedule and check command, and that an exec source's drill can
/// restore. Returns its schedule parsed.
fn check_drill(
    d: &Decoded<BackupSpec>,
    spec: &BackupSpec,
    drill: &Drill,
    kind: Option<SourceKind>,
    restore_vars: &BTreeSet<String>,
    names: &BTreeMap<String, Owner>,
    diags: &mut Vec<Diagnostic>,
) -> Option<CalendarSpec> {
    let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
    let path = |k| [Seg::Key("spec"), Seg::Key("drill"), Seg::Key(k)];
    let drill_calendar = parse_schedule(d, &path("schedule"), &drill.schedule, "drill schedule", diags);
    check_argv(
        "drill.check",
        ArgvUse::Host,
        &drill.check,
        |i| here(&[&path("check")[..], &[Seg::Index(i)]].concat()),
        diags,
    );
    if kind == Some(SourceKind::Exec) && spec.restore.as_ref().is_none_or(|r| r.exec.is_none()) {
        diags.push(Diagnostic::at(
            drill_loc(d),
            "a drill restores the newest archive, and an exec source is restored through `restore.exec`, which this Backup does not have",
        ));
    }
    // An exec source's drill restores into a scratch container made from the image of
    // the Docker service `restore.exec` runs in: on the host there is no scratch place.
    if kind == Some(SourceKind::Exec)
        && let Some(restore) = &spec.restore
        && let Some(exec) = &restore.exec
    {
        check_exec_drill(d, restore, exec, restore_vars, names, diags);
    }
    drill_calendar
}

/// Where a problem of the drill as a whole is reported: its key, or else its schedule.
fn drill_loc(d: &Decoded<BackupSpec>) -> Location {
    match key_node(&d.node, &["spec", "drill"]) {
        Some(key) => at(&d.file, key),
        None => at(&d.file, locate(&d.node, &[Seg::Key("spec"), Seg::Key("drill"), Seg::Key("schedule")])),
    }
}

/// Checks the drill of an exec source restored through `restore.exec`: every placeholder
/// has a default (a drill has no `--set`), and the command runs in a Docker service.
fn check_exec_drill(
    d: &Decoded<BackupSpec>,
    restore: &Restore,
    exec: &ExecCommand,
    restore_vars: &BTreeSet<String>,
    names: &BTreeMap<String, Owner>,
    diags: &mut Vec<Diagnostic>,
) {
    let runtime = exec.service.as_ref().and_then(|s| names.get(s)).and_then(|o| o.runtime);
    // (Neither or both of `service` and `runtime` is reported by the command's check.)
    let problem = match (&exec.service, exec.runtime, runtime) {
        (None, Some(_), _) => Some("`restore.exec` runs on the host (`runtime: host`)".to_string()),
        (Some(s), None, Some(Runtime::Systemd)) => Some(format!("`restore.exec` runs as systemd service `{s}`")),
        _ => None,
    };
    // A drill has no `--set`: every placeholder needs its default.
    let missing: Vec<&String> = restore_vars.iter().filter(|v| !restore.vars.contains_key(*v)).collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|v| format!("`{v}`")).collect();
        diags.push(Diagnostic::at(
            drill_loc(d),
            format!(
                "a drill restores with the defaults of `restore.vars`, and {} {} none: add {} to `restore.vars`",
                names.join(", "),
                if missing.len() == 1 { "has" } else { "have" },
                if missing.len() == 1 { "it" } else { "them" }
            ),
        ));
    }
    if let Some(problem) = problem {
        diags.push(Diagnostic::at(
            drill_loc(d),
            format!(
                "a drill of an exec source restores into a scratch container made from the image of the Docker service `restore.exec` runs in; {problem}, which has no scratch place: leave the drill out, or restore into a Docker service"
            ),
        ));
    }
}

/// Checks `quiesce`: a paths source's, naming each service once (that they exist is
/// [`check_references`]'), with a timeout.
fn check_quiesce(
    d: &Decoded<BackupSpec>,
    quiesce: &crate::backup::Quiesce,
    kind: Option<SourceKind>,
    diags: &mut Vec<Diagnostic>,
) {
    let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
    let key_at = |path: &[&str]| key_node(&d.node, path).map(|k| at(&d.file, k));
    let q = |k| here(&[Seg::Key("spec"), Seg::Key("quiesce"), Seg::Key(k)]);
    if kind == Some(SourceKind::Exec) {
        diags.push(Diagnostic::at(
            key_at(&["spec", "quiesce"]).unwrap_or_else(|| q("stop")),
            "`quiesce` applies to `source.paths` only: an exec source's command reads from the running service",
        ));
    }
    if quiesce.stop.is_empty() {
        diags.push(Diagnostic::at(
            q("stop"),
            "`quiesce.stop` is empty; name the services to stop while the paths are read, or leave `quiesce` out",
        ));
    }
    let mut seen: BTreeMap<&str, Location> = BTreeMap::new();
    for (i, name) in quiesce.stop.iter().enumerate() {
        let loc = here(&[Seg::Key("spec"), Seg::Key("quiesce"), Seg::Key("stop"), Seg::Index(i)]);
        if let Some(first) = seen.get(name.as_str()) {
            diags.push(Diagnostic::at(loc, format!("`quiesce.stop` lists `{name}` twice (first at {first})")));
            continue;
        }
        seen.insert(name, loc);
    }
    if quiesce.timeout.get().is_zero() {
        diags.push(Diagnostic::at(
            q("timeout"),
            "`quiesce.timeout` must be more than 0s (how long stopping the services may take; default 60s)",
        ));
    }
}

/// Checks `copies`: each one of `dir` (absolute, not the destination, outside the source
/// paths) and `rsync`, and no target twice.
fn check_copies(d: &Decoded<BackupSpec>, spec: &BackupSpec, sources: &[&str], diags: &mut Vec<Diagnostic>) {
    let (file, node) = (&d.file, &d.node);
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let dest = &spec.destination;
    let mut targets: BTreeMap<String, Location> = BTreeMap::new();
    for (i, copy) in spec.copies.iter().enumerate() {
        let path = |k| [Seg::Key("spec"), Seg::Key("copies"), Seg::Index(i), Seg::Key(k)];
        let copy_loc = here(&[Seg::Key("spec"), Seg::Key("copies"), Seg::Index(i)]);
        match (&copy.dir, &copy.rsync) {
        (Some(_), Some(_)) => {
            let loc = key_node(locate(node, &[Seg::Key("spec"), Seg::Key("copies"), Seg::Index(i)]), &["rsync"])
                .map_or_else(|| copy_loc.clone(), |k| at(file, k));
            diags.push(Diagnostic::at(
                loc,
                "a copy takes one of `dir` and `rsync`, not both; write one copy for each",
            ));
        }
        (None, None) => diags.push(Diagnostic::at(
            copy_loc.clone(),
            "a copy needs `dir` (a directory on this host) or `rsync` (an rsync destination such as `user@nas:/backups`)",
        )),
        (Some(dir), None) => {
            if let Some(msg) = host_path_problem("copies.dir", dir) {
                diags.push(Diagnostic::at(here(&path("dir")), msg));
            } else if Path::new(dir) == Path::new(&dest.dir) {
                diags.push(Diagnostic::at(
                    here(&path("dir")),
                    "this copy's `dir` is `destination.dir` itself; a copy must be somewhere else",
                ));
            } else if let Some(source) = inside(sources, dir) {
                diags.push(Diagnostic::at(
                    here(&path("dir")),
                    format!(
                        "this copy's `dir` is inside the source path `{source}`: each archive would hold the ones before it"
                    ),
                ));
            }
        }
        (None, Some(rsync)) => {
            if let Some(msg) = rsync_problem(rsync) {
                diags.push(Diagnostic::at(here(&path("rsync")), msg));
            }
        }
    }
        let key = match (&copy.dir, &copy.rsync) {
            (Some(dir), None) => Path::new(dir).components().collect::<PathBuf>().display().to_string(),
            (None, Some(rsync)) => format!("rsync {rsync}"),
            _ => continue,
        };
        if let Some(first) = targets.get(&key) {
            diags.push(Diagnostic::at(copy_loc, format!("this copy repeats the one at {first}")));
        } else {
            targets.insert(key, copy_loc);
        }
    }
}

/// Checks `source.paths`: not empty; each absolute, not `/`, listed once, and not inside
/// another.
fn check_source_paths(d: &Decoded<BackupSpec>, paths: &[String], diags: &mut Vec<Diagnostic>) {
    let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
    let loc = |i| here(&[Seg::Key("spec"), Seg::Key("source"), Seg::Key("paths"), Seg::Index(i)]);
    if paths.is_empty() && d.spec.value().is_some_and(|s| s.source.paths.is_some()) {
        diags.push(Diagnostic::at(loc(0), "`source.paths` is empty; list the directories and files to archive"));
    }
    let mut good: Vec<(usize, &Path)> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        if let Some(msg) = host_path_problem("source.paths", p) {
            diags.push(Diagnostic::at(loc(i), msg));
            continue;
        }
        let path = Path::new(p);
        match good.iter().find(|(_, other)| path.starts_with(other) || other.starts_with(path)) {
            Some((j, other)) if other == &path => {
                diags.push(Diagnostic::at(
                    loc(i),
                    format!("`{p}` is listed twice in `source.paths` (first at {})", loc(*j)),
                ));
            }
            Some((j, other)) if path.starts_with(other) => diags.push(Diagnostic::at(
                loc(i),
                format!(
                    "`{p}` is inside `{}` (at {}), which is archived whole; list only `{}`",
                    other.display(),
                    loc(*j),
                    other.display()
                ),
            )),
            Some((j, other)) => diags.push(Diagnostic::at(
                loc(i),
                format!(
                    "`{p}` holds `{}` (at {}), which it archives already; list only `{p}`",
                    other.display(),
                    loc(*j)
                ),
            )),
            None => good.push((i, path)),
        }
    }
}

/// Checks a command a Backup runs (`source.exec`, `restore.exec`): where it runs (exactly
/// one of `service` and `runtime: host`; that the service exists is [`check_references`]')
/// and its argv (on the host, an absolute program). `at_path`: the keys from `spec` down
/// to the command.
fn check_exec_command(
    d: &Decoded<BackupSpec>,
    at_path: &[&str],
    exec: &ExecCommand,
    names: &BTreeMap<String, Owner>,
    diags: &mut Vec<Diagnostic>,
) {
    let (file, node) = (&d.file, &d.node);
    let field = at_path.join(".");
    let segs: Vec<Seg<'_>> = std::iter::once("spec").chain(at_path.iter().copied()).map(Seg::Key).collect();
    let here = |extra: &[Seg<'_>]| {
        let path: Vec<Seg<'_>> = segs.iter().chain(extra).copied().collect();
        at(file, locate(node, &path))
    };
    let usage = match (&exec.service, exec.runtime) {
        (Some(_), Some(_)) => {
            let keys: Vec<&str> = std::iter::once("spec").chain(at_path.iter().copied()).chain(["runtime"]).collect();
            diags.push(Diagnostic::at(
                key_node(node, &keys).map_or_else(|| here(&[]), |k| at(file, k)),
                format!(
                    "`{field}` takes `service` or `runtime: host`, not both: the command runs in (or as) a service, or on the host"
                ),
            ));
            None
        }
        (None, None) => {
            diags.push(Diagnostic::at(
                here(&[]),
                format!(
                    "`{field}` needs `service` (the command runs in that service's container, or as a systemd service's user on the host) or `runtime: host`"
                ),
            ));
            None
        }
        (Some(service), None) => {
            match names.get(service).filter(|owner| owner.kind == "Service").and_then(|owner| owner.runtime) {
                Some(Runtime::Systemd) => Some(ArgvUse::Host),
                Some(Runtime::Docker) => Some(ArgvUse::Container),
                None => None,
            }
        }
        (None, Some(_)) => Some(ArgvUse::Host),
    };
    // Where it runs is unknown when that is wrong: then check only what holds everywhere.
    check_argv(
        &format!("{field}.command"),
        usage.unwrap_or(ArgvUse::Container),
        &exec.command,
        |i| here(&[Seg::Key("command"), Seg::Index(i)]),
        diags,
    );
}

/// Checks a reference to a Service; returns its runtime when it names one (and its spec
/// could be read).
fn service_ref(
    field: &str,
    name: &str,
    names: &BTreeMap<String, Owner>,
    all_named: bool,
    loc: Location,
    diags: &mut Vec<Diagnostic>,
) -> Option<Runtime> {
    match names.get(name) {
        Some(owner) if owner.kind == "Service" => owner.runtime,
        Some(owner) => {
            diags
                .push(Diagnostic::at(loc, format!("`{field}` names {}; it must name a Service", owner.describe(name))));
            None
        }
        None if all_named => {
            let hint = names
                .iter()
                .filter(|(_, o)| o.kind == "Service")
                .map(|(k, _)| (strsim::jaro_winkler(k, name), k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| format!(", did you mean `{k}`?"))
                .unwrap_or_default();
            diags.push(Diagnostic::at(loc, format!("`{field}` names unknown service `{name}`{hint}")));
            None
        }
        None => None,
    }
}

/// Checks `restore`: the field for the kind of source, the move-aside directory, and the
/// restore command with its placeholders and their defaults. Returns the placeholders.
fn check_restore(
    d: &Decoded<BackupSpec>,
    restore: &Restore,
    kind: Option<SourceKind>,
    sources: &[&str],
    names: &BTreeMap<String, Owner>,
    diags: &mut Vec<Diagnostic>,
) -> BTreeSet<String> {
    let (file, node) = (&d.file, &d.node);
    let here = |path: &[Seg<'_>]| at(file, locate(node, path));
    let key_or = |k: &str| {
        key_node(node, &["spec", "restore", k])
            .map_or_else(|| here(&[Seg::Key("spec"), Seg::Key("restore")]), |n| at(file, n))
    };
    if let Some(dir) = &restore.move_aside_to {
        let loc = || here(&[Seg::Key("spec"), Seg::Key("restore"), Seg::Key("moveAsideTo")]);
        if kind == Some(SourceKind::Exec) {
            diags.push(Diagnostic::at(
                key_or("moveAsideTo"),
                "`restore.moveAsideTo` applies to `source.paths` only; an exec source is restored by streaming the archive into `restore.exec`",
            ));
        } else if let Some(msg) = host_path_problem("restore.moveAsideTo", dir) {
            diags.push(Diagnostic::at(loc(), msg));
        } else if let Some(source) = inside(sources, dir) {
            diags.push(Diagnostic::at(
                loc(),
                format!(
                    "`restore.moveAsideTo` is inside the source path `{source}`: the data moved aside would be replaced by the restore; choose a directory outside it"
                ),
            ));
        }
    }
    let mut vars = BTreeSet::new();
    match &restore.exec {
        Some(_) if kind == Some(SourceKind::Paths) => diags.push(Diagnostic::at(
            key_or("exec"),
            "`restore.exec` applies to `source.exec` only; paths are restored by extracting the archive in their place",
        )),
        Some(exec) => {
            check_exec_command(d, &["restore", "exec"], exec, names, diags);
            for (i, arg) in exec.command.iter().enumerate() {
                match placeholders(arg) {
                    Ok(found) => vars.extend(found.into_iter().map(str::to_string)),
                    Err(TemplateError { column, message }) => {
                        let value = locate(
                            node,
                            &[
                                Seg::Key("spec"),
                                Seg::Key("restore"),
                                Seg::Key("exec"),
                                Seg::Key("command"),
                                Seg::Index(i),
                            ],
                        );
                        diags.push(Diagnostic::at(column_in_scalar(file, &d.source, value, arg, column), message));
                    }
                }
            }
        }
        None => {}
    }
    if !restore.vars.is_empty() && (restore.exec.is_none() || kind == Some(SourceKind::Paths)) {
        diags.push(Diagnostic::at(
            key_or("vars"),
            "`restore.vars` gives defaults to the `${…}` placeholders of `restore.exec`, which this Backup does not have",
        ));
    } else {
        for (key, value) in &restore.vars {
            if value.contains('\0') {
                diags.push(Diagnostic::at(
                    here(&[Seg::Key("spec"), Seg::Key("restore"), Seg::Key("vars"), Seg::Key(key)]),
                    format!(
                        "the value of `{}` in `restore.vars` contains a NUL character, which an argument cannot hold",
                        crate::diag::shown(key)
                    ),
                ));
            }
            let loc = key_node(node, &["spec", "restore", "vars", key]).map_or_else(|| key_or("vars"), |k| at(file, k));
            if !is_var_name(key) {
                diags.push(Diagnostic::at(
                    loc,
                    format!(
                        "invalid variable name `{}`: a name is a lowercase letter followed by lowercase letters, digits and `_`",
                        key.escape_default()
                    ),
                ));
            } else if !vars.contains(key) {
                let hint = vars
                    .iter()
                    .map(|v| (strsim::jaro_winkler(v, key), v))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, v)| format!(", did you mean `{v}`?"))
                    .unwrap_or_default();
                diags.push(Diagnostic::at(
                    loc,
                    format!("`restore.vars` sets `{key}`, which no `${{{key}}}` in `restore.exec.command` uses{hint}"),
                ));
            }
        }
    }
    vars
}

/// The first of `sources` that `path` is (or is inside).
fn inside<'s>(sources: &[&'s str], path: &str) -> Option<&'s str> {
    sources.iter().copied().find(|s| Path::new(path).starts_with(s))
}

/// What is wrong with a directory or file path on the host, if anything: it must be
/// absolute, without `.` or `..` components, line breaks or NUL, and not `/`.
fn host_path_problem(field: &str, path: &str) -> Option<String> {
    if !path.starts_with('/') {
        Some(format!("`{field}` must be an absolute path, found `{}`", path.escape_default()))
    } else if path.contains(['\n', '\r', '\0']) {
        Some(format!("`{field}` cannot contain a line break or a NUL character"))
    } else if path.split('/').any(|c| c == "." || c == "..") {
        Some(format!("`{field}` must not contain `.` or `..` components, found `{path}`; write the path it stands for"))
    } else if path.bytes().all(|b| b == b'/') {
        Some(format!("`{field}` cannot be the root directory `/`"))
    } else {
        None
    }
}

/// What is wrong with an rsync destination, if anything.
fn rsync_problem(target: &str) -> Option<String> {
    if target.is_empty() {
        Some("`copies.rsync` is empty; give an rsync destination such as `user@nas:/backups/retro`".into())
    } else if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some(format!("`copies.rsync` cannot contain spaces or control characters, found `{}`", target.escape_default()))
    } else if target.starts_with('-') {
        Some(format!("`copies.rsync` cannot start with `-` (rsync would read `{target}` as an option)"))
    } else {
        None
    }
}

/// The problems of a layout, each at its column in the layout. `kind`: the kind of
/// source, when it is known (it decides the ending).
fn layout_problems(layout: &str, kind: Option<SourceKind>) -> Vec<TemplateError> {
    let err = |column: usize, message: String| TemplateError { column, message };
    if layout.is_empty() {
        return vec![err(1, "`destination.layout` is empty; leave it out for the default".into())];
    }
    if layout.starts_with('/') {
        return vec![err(
            1,
            "`destination.layout` is a path under `destination.dir` and must not start with `/`".into(),
        )];
    }
    if let Some(i) = layout.chars().position(char::is_control) {
        return vec![err(i + 1, "`destination.layout` cannot contain control characters".into())];
    }
    let parts = match layout_parts(layout) {
        Ok(parts) => parts,
        Err(TemplateError { column, message }) => {
            return vec![err(column, format!("in `destination.layout`: {message}"))];
        }
    };
    let mut problems = Vec::new();
    let known: Vec<&str> = LAYOUT_TOKENS.iter().map(|(t, _)| *t).collect();
    let mut column = 1;
    let mut tokens = BTreeSet::new();
    for part in &parts {
        match part {
            LayoutPart::Text(text) => column += text.chars().count(),
            LayoutPart::Token(token) => {
                if known.contains(token) {
                    tokens.insert(*token);
                } else {
                    let list = known.iter().map(|t| format!("`{{{t}}}`")).collect::<Vec<_>>().join(", ");
                    let hint = known
                        .iter()
                        .map(|k| (strsim::jaro_winkler(k, &token.to_lowercase()), k))
                        .filter(|(score, _)| *score > 0.8)
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .map(|(_, k)| format!(", did you mean `{{{k}}}`?"))
                        .unwrap_or_else(|| format!("; the tokens are {list}"));
                    problems.push(err(
                        column,
                        format!("unknown token `{{{}}}` in `destination.layout`{hint}", token.escape_default()),
                    ));
                }
                column += token.chars().count() + 2;
            }
        }
    }
    let mut column = 1;
    for component in layout.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            let what = if component == ".." {
                "`..` in `destination.layout`: archives stay under `destination.dir`".to_string()
            } else {
                format!("empty or `.` path component in `destination.layout` `{layout}`")
            };
            problems.push(err(column, what));
        }
        column += component.chars().count() + 1;
    }
    if !problems.is_empty() {
        return problems;
    }
    let dated = tokens.contains("date") || ["yyyy", "mm", "dd"].iter().all(|t| tokens.contains(t));
    if !dated {
        problems.push(err(
            1,
            "`destination.layout` holds no date, so every run would write the same archive; include `{date}` (or `{yyyy}`, `{mm}` and `{dd}`)".into(),
        ));
    }
    let last = layout.rfind('/').map_or(1, |i| layout[..=i].chars().count() + 1);
    match kind {
        Some(SourceKind::Paths) if !layout.ends_with(".tar.zst") => problems.push(err(
            last,
            "`destination.layout` must end with `.tar.zst`: paths are archived as a tar compressed with zstd".into(),
        )),
        Some(SourceKind::Exec) if !layout.ends_with(".zst") => problems.push(err(
            last,
            "`destination.layout` must end with `.zst`: an exec source's archive is the command's output compressed with zstd".into(),
        )),
        _ => {}
    }
    problems
}

/// Checks that Backups sharing a directory (as destination or copy) tell their archives
/// apart: each layout writing there must hold `{name}`, or archives of one could take the
/// names of the other's, and retention of one would delete the other's.
fn check_shared_dirs(backups: &[(&Decoded<BackupSpec>, &BackupSpec)], diags: &mut Vec<Diagnostic>) {
    let mut by_dir: BTreeMap<PathBuf, Vec<(&str, bool, Location)>> = BTreeMap::new();
    for (d, spec) in backups {
        let named = spec.layout().contains("{name}");
        let here = |path: &[Seg<'_>]| at(&d.file, locate(&d.node, path));
        let dirs = std::iter::once((
            spec.destination.dir.as_str(),
            here(&[Seg::Key("spec"), Seg::Key("destination"), Seg::Key("dir")]),
        ))
        .chain(spec.copies.iter().enumerate().filter_map(|(i, c)| {
            c.dir
                .as_deref()
                .map(|dir| (dir, here(&[Seg::Key("spec"), Seg::Key("copies"), Seg::Index(i), Seg::Key("dir")])))
        }));
        let mut mine = BTreeSet::new();
        for (dir, loc) in dirs {
            if host_path_problem("", dir).is_some() {
                continue;
            }
            let key: PathBuf = Path::new(dir).components().collect();
            if mine.insert(key.clone()) {
                by_dir.entry(key).or_default().push((d.metadata.name.as_str(), named, loc));
            }
        }
    }
    for (dir, users) in by_dir {
        let mut sorted = users;
        sorted.sort_by(|a, b| a.2.cmp(&b.2));
        for (i, (name, named, loc)) in sorted.iter().enumerate() {
            let Some((other, other_named, other_loc)) = sorted[..i].iter().find(|(o, _, _)| o != name) else {
                continue;
            };
            if *named && *other_named {
                continue;
            }
            let unnamed = if *named { other } else { name };
            diags.push(Diagnostic::at(
                loc.clone(),
                format!(
                    "Backups `{other}` (at {other_loc}) and `{name}` both keep archives in `{}`, and the layout of `{unnamed}` has no `{{name}}`: their archives could take the same names, and retention of one would delete the other's; put `{{name}}` in the layout, or use another directory",
                    dir.display()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
