//! Tests of `kind: Backup`: decoding, defaults, hashing, and each check with its place.

use std::path::Path;

use crate::backup::{CopyTo, DEFAULT_EXEC_LAYOUT, DEFAULT_PATHS_LAYOUT, ExecRuntime, RunsIn, SourceKind};
use crate::desired::{BACKUP_FIELDS, Backup, Desired};
use crate::load::load_str;
use crate::quantity::Duration;

/// The services the Backups below name: three docker services of an app, a docker
/// database, and a systemd service.
const SERVICES: &str = r#"apiVersion: tend/v1
kind: Service
metadata: {name: retro-web}
spec: {image: "retro/web:1"}
---
apiVersion: tend/v1
kind: Service
metadata: {name: retro-api}
spec: {image: "retro/api:1"}
---
apiVersion: tend/v1
kind: Service
metadata: {name: retro-mongo}
spec: {image: "mongo:6.0"}
---
apiVersion: tend/v1
kind: Service
metadata: {name: srs-mongo}
spec: {image: "mongo:6.0"}
---
apiVersion: tend/v1
kind: Service
metadata: {name: pg}
spec: {runtime: systemd, exec: [/usr/lib/postgresql/15/bin/postgres], user: postgres}
"#;

/// Lines of [`SERVICES`]; a Backup appended after it starts on the next line.
fn service_lines() -> usize {
    SERVICES.lines().count()
}

/// The two Backups of the issue, with every field written.
const ISSUE_BACKUPS: &str = r#"apiVersion: tend/v1
kind: Backup
metadata: {name: retro-db, labels: {app: retro}}
spec:
  schedule: "*-*-* 03:15:00"
  source:
    paths: [/retro/db]
  quiesce: {stop: [retro-web, retro-api, retro-mongo], timeout: 90s}
  destination: {dir: /var/backups/tend, layout: "{name}/{yyyy}/{mm}/{date}_{time}_{name}.tar.zst"}
  copies: [{dir: /mnt/nas/retro}, {rsync: "remotebkp@nas:/backups/retro"}]
  retention: {keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 12, keepYearly: 2}
  compression: {level: 9, threads: 4}
  restore: {moveAsideTo: /retro/forensics}
  drill: {schedule: "Sun *-*-* 05:00:00", check: ["/usr/local/bin/check-db", "/scratch"]}
---
apiVersion: tend/v1
kind: Backup
metadata: {name: srs-collections}
spec:
  schedule: daily
  source:
    exec: {service: srs-mongo, command: ["mongodump", "--archive", "--db", "pipeline_prod", "--collection", "users"]}
  destination: {dir: /home/deployer/backups}
  retention: {keepDaily: 14, keepMonthly: 6}
  restore:
    exec: {service: srs-mongo, command: ["mongorestore", "--archive", "--nsFrom", "pipeline_prod.*", "--nsTo", "${db}.*", "${drop}"]}
    vars: {db: pipeline_prod}
"#;

fn load(text: &str) -> Desired {
    match load_str(Path::new("/specs/b.yaml"), text) {
        Ok(d) => d,
        Err(diags) => panic!(
            "unexpected problems:\n{}--- in ---\n{text}",
            diags.iter().map(|d| format!("{d}\n")).collect::<String>()
        ),
    }
}

/// The diagnostics of `text`, as `LINE:COL: MESSAGE`.
fn problems(text: &str) -> Vec<String> {
    let diags = load_str(Path::new("/specs/b.yaml"), text).expect_err("problems");
    diags
        .iter()
        .map(|d| {
            let loc = d.location.as_ref().expect("a location");
            format!("{}:{}: {}", loc.line, loc.column, d.message)
        })
        .collect()
}

/// [`SERVICES`] and a Backup named `b` with the spec lines `spec` (each indented by two).
/// The Backup's `spec:` line is line `service_lines() + 5`, so its first spec line is
/// `service_lines() + 6`.
fn with_backup(spec: &str) -> String {
    let mut text = format!("{SERVICES}---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: b}}\nspec:\n");
    for line in spec.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The line of spec line `n` (1-based) of [`with_backup`].
fn line(n: usize) -> usize {
    service_lines() + 5 + n
}

fn backup<'a>(d: &'a Desired, name: &str) -> &'a Backup {
    d.backups.get(name).unwrap_or_else(|| panic!("no backup {name}"))
}

/// A paths Backup, with `extra` spec lines after the source and destination.
fn paths_backup(extra: &str) -> String {
    with_backup(&format!("source: {{paths: [/srv/data]}}\ndestination: {{dir: /var/backups}}\n{extra}"))
}

/// An exec Backup, with `extra` spec lines after the source and destination.
fn exec_backup(extra: &str) -> String {
    with_backup(&format!(
        "source: {{exec: {{service: srs-mongo, command: [mongodump, --archive]}}}}\ndestination: {{dir: /var/backups}}\n{extra}"
    ))
}

/// Asserts that `text` has exactly one problem, at `line:column`, whose message starts
/// with `message`.
fn assert_one(text: &str, at: (usize, usize), message: &str) {
    let got = problems(text);
    let want = format!("{}:{}: {message}", at.0, at.1);
    assert!(got.len() == 1 && got[0].starts_with(&want), "want {want}\n got {got:#?}\n--- in ---\n{text}");
}

#[test]
fn the_issue_backups_load_with_every_field_as_written() {
    let d = load(&format!("{SERVICES}---\n{ISSUE_BACKUPS}"));
    assert_eq!(d.backups.keys().collect::<Vec<_>>(), ["retro-db", "srs-collections"]);
    assert!(!d.is_empty());

    let b = backup(&d, "retro-db");
    assert_eq!(b.metadata_labels["app"], "retro");
    assert_eq!(b.unit_name(), "backup-retro-db");
    assert_eq!(b.drill_unit_name(), "backup-retro-db-drill");
    let spec = &b.spec;
    assert_eq!(spec.schedule.as_deref(), Some("*-*-* 03:15:00"));
    assert_eq!(b.calendar.as_ref().expect("parsed").normalized(), "*-*-* 03:15:00");
    assert_eq!(spec.source_kind(), SourceKind::Paths);
    assert_eq!(spec.paths(), ["/retro/db"]);
    let quiesce = spec.quiesce.as_ref().expect("quiesce");
    assert_eq!(quiesce.stop, ["retro-web", "retro-api", "retro-mongo"]);
    assert_eq!(quiesce.timeout, Duration::from_secs(90));
    assert_eq!(spec.destination.dir, "/var/backups/tend");
    assert_eq!(spec.layout(), "{name}/{yyyy}/{mm}/{date}_{time}_{name}.tar.zst");
    let copies: Vec<CopyTo<'_>> = spec.copies.iter().map(|c| c.to()).collect();
    assert_eq!(copies, [CopyTo::Dir("/mnt/nas/retro"), CopyTo::Rsync("remotebkp@nas:/backups/retro")]);
    assert_eq!(spec.copies[1].to_string(), "rsync remotebkp@nas:/backups/retro");
    let r = spec.retention.expect("retention");
    assert_eq!(
        (r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly),
        (Some(3), Some(7), Some(4), Some(12), Some(2))
    );
    assert_eq!((spec.compression.level, spec.compression.threads), (9, 4));
    let restore = spec.restore.as_ref().expect("restore");
    assert_eq!(restore.move_aside_to.as_deref(), Some("/retro/forensics"));
    assert!(restore.exec.is_none() && restore.vars.is_empty() && b.restore_vars.is_empty());
    let drill = spec.drill.as_ref().expect("drill");
    assert_eq!(drill.check, ["/usr/local/bin/check-db", "/scratch"]);
    assert_eq!(b.drill_calendar.as_ref().expect("parsed").normalized(), "Sun *-*-* 05:00:00");
    assert_eq!(b.location.line, service_lines() + 2);
    assert_eq!(b.field_hashes.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut fields = BACKUP_FIELDS.to_vec();
        fields.sort_unstable();
        fields
    });

    let b = backup(&d, "srs-collections");
    assert_eq!(b.calendar.as_ref().expect("parsed").normalized(), "*-*-* 00:00:00");
    assert_eq!(b.spec.source_kind(), SourceKind::Exec);
    assert!(b.spec.paths().is_empty());
    let exec = b.spec.source.exec.as_ref().expect("exec");
    assert_eq!(exec.runs_in(), RunsIn::Service("srs-mongo"));
    assert_eq!(exec.command[0], "mongodump");
    assert_eq!(b.spec.layout(), DEFAULT_EXEC_LAYOUT, "the default for an exec source");
    assert!(b.drill_calendar.is_none());
    let restore = b.spec.restore.as_ref().expect("restore");
    assert_eq!(restore.exec.as_ref().expect("restore exec").runs_in(), RunsIn::Service("srs-mongo"));
    assert_eq!(b.restore_vars.iter().map(String::as_str).collect::<Vec<_>>(), ["db", "drop"]);
    assert_eq!(b.restore_vars_without_default().into_iter().collect::<Vec<_>>(), ["drop"]);
}

#[test]
fn defaults_fill_in_the_layout_per_kind_of_source_compression_and_the_quiesce_timeout() {
    let d = load(&paths_backup("quiesce: {stop: [retro-web]}"));
    let b = backup(&d, "b");
    assert_eq!(b.spec.layout(), DEFAULT_PATHS_LAYOUT);
    assert_eq!(b.spec.destination.layout, None, "kept as written");
    assert_eq!((b.spec.compression.level, b.spec.compression.threads), (5, 2));
    assert_eq!(b.spec.quiesce.as_ref().expect("quiesce").timeout, Duration::from_secs(60));
    assert!(b.calendar.is_none(), "no schedule: on demand only");
    assert!(b.spec.retention.is_none() && b.spec.copies.is_empty() && b.spec.restore.is_none());
    let d = load(&exec_backup(""));
    assert_eq!(backup(&d, "b").spec.layout(), DEFAULT_EXEC_LAYOUT);
    let d = load(&with_backup(
        "source: {exec: {runtime: host, command: [/usr/bin/pg_dumpall]}}\ndestination: {dir: /var/backups}",
    ));
    let exec = backup(&d, "b").spec.source.exec.clone().expect("exec");
    assert_eq!((exec.runs_in(), exec.runtime), (RunsIn::Host, Some(ExecRuntime::Host)));
}

#[test]
fn writing_a_default_does_not_change_the_hash() {
    let plain = load(&paths_backup(""));
    let written = load(&with_backup(&format!(
        "source: {{paths: [/srv/data]}}\ndestination: {{dir: /var/backups, layout: \"{DEFAULT_PATHS_LAYOUT}\"}}\ncompression: {{level: 5, threads: 2}}"
    )));
    assert_eq!(backup(&plain, "b").hash, backup(&written, "b").hash);
    let plain = load(&exec_backup(""));
    let written = load(&with_backup(&format!(
        "source: {{exec: {{service: srs-mongo, command: [mongodump, --archive]}}}}\ndestination: {{dir: /var/backups, layout: \"{DEFAULT_EXEC_LAYOUT}\"}}"
    )));
    assert_eq!(backup(&plain, "b").hash, backup(&written, "b").hash);
}

#[test]
fn the_hash_changes_with_what_shapes_an_archive_and_names_the_field() {
    let base = load(&paths_backup(""));
    let base = backup(&base, "b");
    for (text, field) in [
        (with_backup("source: {paths: [/srv/other]}\ndestination: {dir: /var/backups}"), "source"),
        (with_backup("source: {paths: [/srv/data]}\ndestination: {dir: /var/other}"), "destination"),
        (
            with_backup(
                "source: {paths: [/srv/data]}\ndestination: {dir: /var/backups, layout: \"{name}/{date}_{time}.tar.zst\"}",
            ),
            "destination",
        ),
        (paths_backup("compression: {level: 19}"), "compression"),
        (paths_backup("compression: {threads: 0}"), "compression"),
    ] {
        let d = load(&text);
        let b = backup(&d, "b");
        assert_ne!(b.hash, base.hash, "{text}");
        let changed: Vec<&str> =
            BACKUP_FIELDS.iter().copied().filter(|f| b.field_hashes[*f] != base.field_hashes[*f]).collect();
        assert_eq!(changed, [field], "{text}");
    }
    // How and when archives are made and kept is not what is in one.
    for extra in [
        "schedule: daily",
        "quiesce: {stop: [retro-web]}",
        "copies: [{dir: /mnt/nas}]",
        "retention: {keepDaily: 7}",
        "restore: {moveAsideTo: /srv/aside}",
        "drill: {schedule: weekly, check: [/bin/true]}",
    ] {
        let d = load(&paths_backup(extra));
        assert_eq!(backup(&d, "b").hash, base.hash, "{extra}");
    }
    let exec = load(&exec_backup(""));
    let other = load(&with_backup(
        "source: {exec: {service: srs-mongo, command: [mongodump, --archive, --gzip]}}\ndestination: {dir: /var/backups}",
    ));
    assert_ne!(backup(&exec, "b").field_hashes["source"], backup(&other, "b").field_hashes["source"]);
}

#[test]
fn a_bad_schedule_is_reported_at_its_column_as_for_timers() {
    assert_one(
        &paths_backup("schedule: \"*-*-* 25:00\""),
        (line(3), 20),
        "invalid schedule: column 7: hour 25 is out of range, expected 0..23",
    );
    assert_one(
        &paths_backup("drill: {schedule: \"Sun 25:00\", check: [/bin/true]}"),
        (line(3), 26),
        "invalid drill schedule: column 5: hour 25 is out of range",
    );
    assert_one(&paths_backup("drill: {schedule: weekly}"), (line(3), 10), "missing field `check`");
    assert_one(&paths_backup("drill: {check: [/bin/true]}"), (line(3), 10), "missing field `schedule`");
}

#[test]
fn the_source_is_exactly_one_of_paths_and_exec() {
    assert_one(
        &with_backup(
            "source: {paths: [/srv/data], exec: {service: srs-mongo, command: [mongodump]}}\ndestination: {dir: /var/backups}",
        ),
        (line(1), 32),
        "`source` takes one of `paths` and `exec`, not both",
    );
    assert_one(
        &with_backup("source: {}\ndestination: {dir: /var/backups}"),
        (line(1), 11),
        "`source` needs `paths` (directories and files to archive) or `exec`",
    );
    assert_one(&with_backup("destination: {dir: /var/backups}"), (line(1), 3), "missing field `source`");
    assert_one(&with_backup("source: {paths: [/srv/data]}"), (line(1), 3), "missing field `destination`");
}

#[test]
fn source_paths_are_absolute_distinct_and_not_nested() {
    let src = |paths: &str| with_backup(&format!("source: {{paths: {paths}}}\ndestination: {{dir: /var/backups}}"));
    for (paths, column, message) in [
        ("[]", 19, "`source.paths` is empty; list the directories and files to archive"),
        ("[srv/data]", 20, "`source.paths` must be an absolute path, found `srv/data`"),
        ("[/]", 20, "`source.paths` cannot be the root directory `/`"),
        ("[/srv/../etc]", 20, "`source.paths` must not contain `.` or `..` components, found `/srv/../etc`"),
        ("[/srv/a, /srv/a/]", 28, "`/srv/a/` is listed twice in `source.paths` (first at /specs/b.yaml:"),
        ("[/srv, /srv/a]", 26, "`/srv/a` is inside `/srv` (at /specs/b.yaml:"),
        ("[/srv/a, /srv]", 28, "`/srv` holds `/srv/a` (at /specs/b.yaml:"),
    ] {
        assert_one(&src(paths), (line(1), column), message);
    }
    // A sibling with a common prefix is not inside.
    load(&src("[/srv/a, /srv/ab]"));
}

#[test]
fn quiesce_names_existing_services_of_a_paths_source() {
    assert_one(
        &paths_backup("quiesce: {stop: [retro-web, retro-apj]}"),
        (line(3), 31),
        "`quiesce.stop` names unknown service `retro-apj`, did you mean `retro-api`?",
    );
    assert_one(
        &paths_backup("quiesce: {stop: [retro-web, retro-web]}"),
        (line(3), 31),
        "`quiesce.stop` lists `retro-web` twice (first at /specs/b.yaml:",
    );
    assert_one(&paths_backup("quiesce: {stop: []}"), (line(3), 19), "`quiesce.stop` is empty");
    assert_one(
        &paths_backup("quiesce: {stop: [pg], timeout: 0s}"),
        (line(3), 34),
        "`quiesce.timeout` must be more than 0s",
    );
    assert_one(
        &paths_backup("quiesce: {stop: [pg], timout: 5s}"),
        (line(3), 25),
        "unknown field `timout`, did you mean `timeout`?",
    );
    assert_one(&exec_backup("quiesce: {stop: [srs-mongo]}"), (line(3), 3), "`quiesce` applies to `source.paths` only");
    let timer = "---\napiVersion: tend/v1\nkind: Timer\nmetadata: {name: nightly}\nspec: {schedule: daily, job: {runtime: host, exec: [/bin/true]}}\n";
    assert_one(
        &format!("{}{timer}", paths_backup("quiesce: {stop: [nightly]}")),
        (line(3), 20),
        "`quiesce.stop` names Timer `nightly`; it must name a Service",
    );
}

#[test]
fn an_unreadable_service_name_makes_no_reference_unknown() {
    let broken = "---\napiVersion: tend/v1\nkind: Service\nmetadata: [oops]\nspec: {image: x}\n";
    let got = problems(&format!("{}{broken}", paths_backup("quiesce: {stop: [ghost]}")));
    assert_eq!(got.len(), 1, "only the broken metadata: {got:?}");
}

#[test]
fn an_exec_command_runs_in_a_service_or_on_the_host() {
    let exec = |e: &str| with_backup(&format!("source: {{exec: {e}}}\ndestination: {{dir: /var/backups}}"));
    // In a docker service's container the image's PATH finds the program.
    load(&exec("{service: srs-mongo, command: [mongodump, --archive]}"));
    // On the host (as a systemd service's user, or as root) the program is absolute.
    load(&exec("{service: pg, command: [/usr/bin/pg_dump, -Fc, ims]}"));
    for (e, column, message) in [
        (
            "{service: srs-mongo, runtime: host, command: [x]}",
            39,
            "`source.exec` takes `service` or `runtime: host`, not both",
        ),
        ("{command: [x]}", 18, "`source.exec` needs `service` (the command runs in that service's container"),
        (
            "{service: srs-mogno, command: [x]}",
            28,
            "`source.exec.service` names unknown service `srs-mogno`, did you mean `srs-mongo`?",
        ),
        ("{service: srs-mongo, command: []}", 48, "`source.exec.command` is empty; give the program and its arguments"),
        ("{service: pg, command: [pg_dump, ims]}", 42, "the program `pg_dump` is not an absolute path"),
        ("{runtime: host, command: [pg_dump]}", 44, "the program `pg_dump` is not an absolute path"),
        ("{runtime: docker, command: [x]}", 28, "unknown value `docker`, expected one of `host`"),
        (
            "{service: srs-mongo, command: [mongodump, \"|\", gzip]}",
            60,
            "`|` in `source.exec.command` needs a shell, and tend runs `source.exec.command` without one",
        ),
        (
            "{service: srs-mongo, command: [\"mongodump --archive\"]}",
            49,
            "`source.exec.command` is a list of arguments, but its only item `mongodump --archive` is a whole command line",
        ),
        ("{service: srs-mongo, command: mongodump}", 48, "expected a sequence"),
    ] {
        assert_one(&exec(e), (line(1), column), message);
    }
    // A shell is asked for explicitly.
    load(&exec("{service: srs-mongo, command: [sh, -c, \"mongodump --archive | cat\"]}"));
}

#[test]
fn the_destination_layout_takes_known_tokens_a_date_and_the_ending_of_its_source() {
    let layout = |source: &str, layout: &str| {
        with_backup(&format!("source: {source}\ndestination: {{dir: /var/backups, layout: \"{layout}\"}}"))
    };
    let paths = "{paths: [/srv/data]}";
    let exec = "{exec: {service: srs-mongo, command: [mongodump]}}";
    load(&layout(paths, "{name}-{yyyy}{mm}{dd}.tar.zst"));
    load(&layout(exec, "{yyyy}/{date}T{time}.archive.zst"));
    load(&layout(exec, "{name}/{date}.tar.zst")); // a dump that is a tar may say so
    // The layout's opening quote is at column 44 of the destination line, so column N of
    // the layout is column 44 + N of the line.
    for (source, text, column, message) in [
        (
            paths,
            "{name}/{hour}/{date}.tar.zst",
            8,
            "unknown token `{hour}` in `destination.layout`; the tokens are `{name}`, `{yyyy}`",
        ),
        (paths, "{name}/{Date}.tar.zst", 8, "unknown token `{Date}` in `destination.layout`, did you mean `{date}`?"),
        (paths, "{name}/{date.tar.zst", 8, "in `destination.layout`: `{` is not closed"),
        (
            paths,
            "/{name}/{date}.tar.zst",
            1,
            "`destination.layout` is a path under `destination.dir` and must not start with `/`",
        ),
        (paths, "{name}/../{date}.tar.zst", 8, "`..` in `destination.layout`: archives stay under `destination.dir`"),
        (paths, "{name}//{date}.tar.zst", 8, "empty or `.` path component in `destination.layout`"),
        (
            paths,
            "{name}/{date}.tar.gz",
            8,
            "`destination.layout` must end with `.tar.zst`: paths are archived as a tar",
        ),
        (
            exec,
            "{name}/{date}.gz",
            8,
            "`destination.layout` must end with `.zst`: an exec source's archive is the command's output",
        ),
        (
            paths,
            "{name}/latest.tar.zst",
            1,
            "`destination.layout` holds no date, so every run would write the same archive",
        ),
        (paths, "", 1, "`destination.layout` is empty; leave it out for the default"),
    ] {
        assert_one(&layout(source, text), (line(2), 44 + column), message);
    }
    // Plain (unquoted) layouts are placed too.
    assert_one(
        &with_backup("source: {paths: [/srv/data]}\ndestination:\n  dir: /var/backups\n  layout: x/{date}.tar"),
        (line(4), 15),
        "`destination.layout` must end with `.tar.zst`",
    );
}

#[test]
fn the_destination_and_copies_are_absolute_and_outside_the_source() {
    let dest = |dir: &str, extra: &str| {
        with_backup(&format!("source: {{paths: [/srv/data]}}\ndestination: {{dir: {dir}}}\n{extra}"))
    };
    assert_one(&dest("backups", ""), (line(2), 22), "`destination.dir` must be an absolute path, found `backups`");
    assert_one(
        &dest("/srv/data/backups", ""),
        (line(2), 22),
        "`destination.dir` is inside the source path `/srv/data`",
    );
    for (copies, column, message) in [
        ("[{dir: nas}]", 18, "`copies.dir` must be an absolute path, found `nas`"),
        ("[{dir: /var/backups/}]", 18, "this copy's `dir` is `destination.dir` itself"),
        ("[{dir: /srv/data/copy}]", 18, "this copy's `dir` is inside the source path `/srv/data`"),
        ("[{dir: /mnt/a, rsync: \"nas:/b\"}]", 26, "a copy takes one of `dir` and `rsync`, not both"),
        ("[{}]", 12, "a copy needs `dir` (a directory on this host) or `rsync`"),
        ("[{rsync: \"\"}]", 20, "`copies.rsync` is empty"),
        ("[{rsync: \"nas:/my backups\"}]", 20, "`copies.rsync` cannot contain spaces or control characters"),
        ("[{rsync: \"--delete\"}]", 20, "`copies.rsync` cannot start with `-`"),
        ("[{rsync: \"nas:/b\"}, {rsync: \"nas:/b\"}]", 31, "this copy repeats the one at /specs/b.yaml:"),
        ("[{dir: /mnt/a}, {dir: /mnt/a/}]", 27, "this copy repeats the one at"),
        ("[{dir: /mnt/a, host: nas}]", 26, "unknown field `host`; expected one of `dir`, `rsync`"),
    ] {
        assert_one(&dest("/var/backups", &format!("copies: {copies}")), (line(3), column), message);
    }
}

#[test]
fn retention_and_compression_are_checked() {
    load(&paths_backup("retention: {keepLast: 0, keepDaily: 7}"));
    assert_one(&paths_backup("retention: {}"), (line(3), 14), "`retention` keeps no archive by any rule");
    assert_one(&paths_backup("retention: {keepLast: 0}"), (line(3), 14), "`retention` keeps no archive by any rule");
    assert_one(
        &paths_backup("retention: {keepDaily: -1}"),
        (line(3), 26),
        "expected a whole number from 0 to 4294967295, found -1",
    );
    assert_one(&paths_backup("retention: {keepHourly: 24}"), (line(3), 15), "unknown field `keepHourly`");
    assert_one(
        &paths_backup("compression: {level: 25}"),
        (line(3), 24),
        "compression `level` must be from 1 to 19 (zstd's levels; default 5), found 25",
    );
    assert_one(&paths_backup("compression: {level: 0}"), (line(3), 24), "compression `level` must be from 1 to 19");
    assert_one(
        &paths_backup("compression: {threads: 65}"),
        (line(3), 26),
        "`compression.threads` is 65; at most 64 (zstd workers beside the one reading the sources",
    );
    assert_one(
        &paths_backup("retention: {keepWeekly: 10001}"),
        (line(3), 27),
        "`retention.keepWeekly` is 10001; at most 10000 (archives kept by one rule)",
    );
    assert_one(&paths_backup("compression: {level: fast}"), (line(3), 24), "expected a whole number");
}

#[test]
fn restore_takes_the_fields_of_its_kind_of_source() {
    load(&paths_backup("restore: {moveAsideTo: /srv/forensics}"));
    load(&exec_backup("restore: {exec: {service: srs-mongo, command: [mongorestore, --archive]}}"));
    assert_one(
        &exec_backup("restore: {moveAsideTo: /srv/forensics}"),
        (line(3), 13),
        "`restore.moveAsideTo` applies to `source.paths` only",
    );
    assert_one(
        &paths_backup("restore: {exec: {runtime: host, command: [/bin/tar, -x]}}"),
        (line(3), 13),
        "`restore.exec` applies to `source.exec` only",
    );
    assert_one(
        &paths_backup("restore: {moveAsideTo: /srv/data/old}"),
        (line(3), 26),
        "`restore.moveAsideTo` is inside the source path `/srv/data`",
    );
    assert_one(
        &paths_backup("restore: {moveAsideTo: /srv/data}"),
        (line(3), 26),
        "`restore.moveAsideTo` is inside the source path",
    );
    assert_one(
        &paths_backup("restore: {moveAsideTo: forensics}"),
        (line(3), 26),
        "`restore.moveAsideTo` must be an absolute path",
    );
    assert_one(
        &exec_backup("restore: {exec: {service: srs-mongo, command: []}}"),
        (line(3), 49),
        "`restore.exec.command` is empty",
    );
    assert_one(
        &exec_backup("restore: {exec: {service: nope, command: [mongorestore]}}"),
        (line(3), 29),
        "`restore.exec.service` names unknown service `nope`",
    );
}

#[test]
fn restore_placeholders_are_collected_and_bad_ones_placed() {
    let restore = |command: &str, vars: &str| {
        exec_backup(&format!("restore:\n  exec: {{service: srs-mongo, command: {command}}}\n  vars: {vars}"))
    };
    let d = load(&restore("[mongorestore, \"--nsTo=${db}.*\", \"${db}\", \"$HOME\"]", "{}"));
    let b = backup(&d, "b");
    assert_eq!(b.restore_vars.iter().collect::<Vec<_>>(), ["db"]);
    assert_eq!(b.restore_vars_without_default().into_iter().collect::<Vec<_>>(), ["db"]);
    let d = load(&restore("[mongorestore, \"${db}\"]", "{db: dev}"));
    assert!(backup(&d, "b").restore_vars_without_default().is_empty());
    // The command list's `[` is at column 41 of its line, so its second item's opening
    // quote is at column 56.
    for (command, vars, at, message) in [
        ("[mongorestore, \"x${}\"]", "{}", (line(4), 58), "empty placeholder `${}`"),
        ("[mongorestore, \"${Db}\"]", "{}", (line(4), 57), "invalid placeholder `${Db}`: a name is a lowercase letter"),
        ("[mongorestore, \"--nsTo=${db\"]", "{}", (line(4), 64), "`${` is not closed"),
        (
            "[mongorestore, \"${db}\"]",
            "{dbname: x}",
            (line(5), 12),
            "`restore.vars` sets `dbname`, which no `${dbname}` in `restore.exec.command` uses, did you mean `db`?",
        ),
        ("[mongorestore, \"${db}\"]", "{Db: x}", (line(5), 12), "invalid variable name `Db`"),
        (
            "[mongorestore, \"${db}\"]",
            "{db: \"a\\0b\"}",
            (line(5), 16),
            "the value of `db` in `restore.vars` contains a NUL character, which an argument cannot hold",
        ),
    ] {
        assert_one(&restore(command, vars), at, message);
    }
    assert_one(
        &exec_backup("restore: {vars: {db: x}}"),
        (line(3), 13),
        "`restore.vars` gives defaults to the `${…}` placeholders of `restore.exec`, which this Backup does not have",
    );
    // Placeholders mean nothing in the source command.
    load(&with_backup(
        "source: {exec: {service: srs-mongo, command: [echo, \"${x\"]}}\ndestination: {dir: /var/backups}",
    ));
}

#[test]
fn a_drill_checks_on_the_host_and_needs_a_restore_command_for_an_exec_source() {
    load(&exec_backup(
        "restore: {exec: {service: srs-mongo, command: [mongorestore, --archive]}}\ndrill: {schedule: weekly, check: [/usr/local/bin/check]}",
    ));
    assert_one(
        &exec_backup("drill: {schedule: weekly, check: [/usr/local/bin/check]}"),
        (line(3), 3),
        "a drill restores the newest archive, and an exec source is restored through `restore.exec`",
    );
    assert_one(
        &paths_backup("drill: {schedule: weekly, check: [check-db]}"),
        (line(3), 37),
        "the program `check-db` is not an absolute path",
    );
    assert_one(&paths_backup("drill: {schedule: weekly, check: []}"), (line(3), 36), "`drill.check` is empty");
}

#[test]
fn backups_have_their_own_namespace_but_not_their_units() {
    // A Backup may share its name with a Service.
    let d = load(&format!(
        "{SERVICES}---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: pg}}\nspec: {{source: {{paths: [/srv/pg]}}, destination: {{dir: /var/backups}}}}\n"
    ));
    assert!(d.services.contains_key("pg") && d.backups.contains_key("pg"));
    let b = |name: &str, extra: &str| {
        format!(
            "---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: {name}}}\nspec: {{source: {{paths: [/srv/{name}]}}, destination: {{dir: /var/backups}}{extra}}}\n"
        )
    };
    let unit = "---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: backup-db}\nspec: {runtime: systemd, exec: [/bin/db]}\n";
    let base = service_lines() + 1;
    assert_eq!(
        problems(&format!("{SERVICES}{unit}{}", b("db", ""))),
        [format!(
            "{}:18: Backup `db` runs as the systemd unit `backup-db.service`, which clashes with systemd service `backup-db` (defined at /specs/b.yaml:{}:18); rename one of them",
            base + 8,
            base + 3
        )]
    );
    let timer = "---\napiVersion: tend/v1\nkind: Timer\nmetadata: {name: backup-db-drill}\nspec: {schedule: daily, job: {runtime: host, exec: [/bin/true]}}\n";
    let drill = ", drill: {schedule: weekly, check: [/bin/true]}";
    let got = problems(&format!("{SERVICES}{timer}{}", b("db", drill)));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("the restore drill of Backup `db` runs as the systemd unit `backup-db-drill.service`, which clashes with Timer `backup-db-drill`"),
        "{got:?}"
    );
    let got = problems(&format!("{SERVICES}{}{}", b("db", drill), b("db-drill", "")));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!("{}:18: Backup `db-drill` runs as the systemd unit `backup-db-drill.service`, which clashes with the drill unit of Backup `db` (defined at /specs/b.yaml:{}:18)", base + 8, base + 3)),
        "{got:?}"
    );
    assert_eq!(
        problems(&format!("{SERVICES}{}{}", b("db", ""), b("db", ""))),
        [format!("{}:18: duplicate Backup name `db` (first defined at /specs/b.yaml:{}:18)", base + 8, base + 3)]
    );
    assert_one(&format!("{SERVICES}{}", b("Db", "")), (base + 3, 18), "invalid name `Db`: `D` is not allowed");
}

#[test]
fn backups_sharing_a_directory_need_their_name_in_the_layout() {
    let b = |name: &str, layout: &str| {
        format!(
            "---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: {name}}}\nspec: {{source: {{paths: [/srv/{name}]}}, destination: {{dir: /var/backups, layout: \"{layout}\"}}}}\n"
        )
    };
    load(&format!("{SERVICES}{}{}", b("a", DEFAULT_PATHS_LAYOUT), b("b", "{name}-{date}.tar.zst")));
    let got = problems(&format!("{SERVICES}{}{}", b("a", DEFAULT_PATHS_LAYOUT), b("b", "{date}.tar.zst")));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!("{}:54: Backups `a` (at /specs/b.yaml:{}:54) and `b` both keep archives in `/var/backups`, and the layout of `b` has no `{{name}}`", service_lines() + 10, service_lines() + 5)),
        "{got:?}"
    );
}

#[test]
fn a_broken_backup_still_claims_its_name_and_reports_only_its_own_problems() {
    let broken = "---\napiVersion: tend/v1\nkind: Backup\nmetadata: {name: b}\nspec: {source: {paths: [/srv/x]}, destination: {dir: /var/backups}, retension: {}}\n";
    let got = problems(&format!("{}{broken}", paths_backup("")));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().any(|p| p.contains("unknown field `retension`, did you mean `retention`?")), "{got:?}");
    assert!(got.iter().any(|p| p.contains("duplicate Backup name `b`")), "{got:?}");
    assert!(
        problems(&with_backup("source: {paths: [/srv/x]}\ndestination: {dir: /var/backups}\nlabels: {}"))[0]
            .contains("unknown field `labels`")
    );
}

#[test]
fn reserved_labels_are_refused() {
    let text = format!(
        "{SERVICES}---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: b, labels: {{tend.scope: x}}}}\nspec: {{source: {{paths: [/srv/x]}}, destination: {{dir: /var/backups}}}}\n"
    );
    assert_one(&text, (service_lines() + 4, 42), "label `tend.scope`: the `tend.` prefix is reserved");
}
