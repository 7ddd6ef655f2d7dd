//! Backups and restores against real Docker and real files: a quiesced archive of a data
//! directory with the services back afterwards, a run that cannot fit stopping nothing, a
//! tend killed mid-backup whose stopped services are started again, a restore that moves
//! the current data aside, a dump streamed from a container and restored into a database of
//! another name, and a corrupted archive detected.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{container_id, running, started_at};
use crate::harness::{self, Env, describe, docker, docker_ok, stdout_of, wait_for};
use crate::services::service;

/// A `kind: Backup` document named `name`; `body` holds its `spec` lines, indented.
pub(crate) fn backup_doc(name: &str, body: &str) -> String {
    format!("---\napiVersion: tend/v1\nkind: Backup\nmetadata: {{name: {name}}}\nspec:\n{body}")
}

/// `tend ARGS --specs SPEC_DIR` in the test's scope.
pub(crate) fn tend(env: &Env, args: &[&str]) -> Output {
    let mut full = args.to_vec();
    full.extend(["--specs", env.spec_arg()]);
    env.tend(&full)
}

/// A data directory with a few files, readable by the container's bind mount.
fn data_dir(env: &Env) -> PathBuf {
    let data = env.state_path().join("data");
    std::fs::create_dir_all(data.join("sub")).expect("data dir");
    std::fs::write(data.join("db.txt"), "the original records\n").expect("write");
    std::fs::write(data.join("sub/index"), vec![7u8; 100_000]).expect("write");
    data
}

/// Two services on the data (web depends on db), and a Backup of the data quiescing both.
fn setup(env: &Env) -> (String, String, PathBuf, PathBuf) {
    let (db, web) = (env.name("db"), env.name("web"));
    let data = data_dir(env);
    let dest = env.state_path().join("backups");
    let aside = env.state_path().join("forensics");
    env.write_spec("db.yaml", &service(&db, &format!("volumes: ['{}:/data']", data.display())));
    env.write_spec("web.yaml", &service(&web, &format!("dependsOn: [{{name: {db}}}]")));
    env.write_spec(
        "backup.yaml",
        &backup_doc(
            "nightly",
            &format!(
                "  source: {{paths: ['{}']}}\n  quiesce: {{stop: [{web}, {db}], timeout: 20s}}\n  destination: {{dir: '{}'}}\n  copies: [{{dir: '{}'}}, {{rsync: '{}'}}]\n  restore: {{moveAsideTo: '{}'}}\n",
                data.display(),
                dest.display(),
                env.state_path().join("copy").display(),
                env.state_path().join("rsynced").display(),
                aside.display()
            ),
        ),
    );
    env.apply();
    (db, web, data, dest)
}

/// `tend backup run NAME` in the background, pausing `pause_s` seconds with its services
/// quiesced (`TEND_FAULT_BACKUP_PAUSE`): a window in which to kill it or disturb it.
pub(crate) fn paused_backup(env: &Env, name: &str, pause_s: u32) -> std::process::Child {
    Command::new(harness::tend_bin())
        .arg("--state-dir")
        .arg(env.state_path())
        .args(["--scope", &env.scope, "--lock-dir"])
        .arg(env.lock_path())
        .args(["backup", "run", name, "--specs", env.spec_arg()])
        .env("TEND_FAULT_BACKUP_PAUSE", pause_s.to_string())
        .env("TEND_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the backup")
}

/// Every file under `dir`, at any depth, sorted.
pub(crate) fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The archives (`*.zst`: final names) under `dir`, at any depth, sorted.
pub(crate) fn archives_in(dir: &Path) -> Vec<PathBuf> {
    files_in(dir).into_iter().filter(|p| p.to_string_lossy().ends_with(".zst")).collect()
}

#[test]
fn a_quiesced_backup_archives_the_data_and_starts_the_services_again() {
    let env = Env::new("backup_quiesced");
    let (db, web, _data, dest) = setup(&env);
    let (db1, web1) = (format!("{db}-1"), format!("{web}-1"));
    let (db_id, web_id) = (container_id(&db1), container_id(&web1));
    let (db_started, web_started) = (started_at(&db1), started_at(&web1));
    let out = tend(&env, &["backup", "run", "nightly", "--output", "json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    // The archive and its manifest, 0600, whole; the copy verified.
    let archive = PathBuf::from(report["archive"].as_str().expect("archive"));
    assert!(archive.starts_with(&dest) && archive.exists(), "{report}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&archive).expect("meta").permissions().mode() & 0o777, 0o600);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{}.manifest.json", archive.display())).expect("the manifest beside the archive"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["backup"], "nightly");
    assert_eq!(manifest["sha256"], report["sha256"]);
    assert!(report["copies"].to_string().contains("copy"), "{report}");
    assert_eq!(archives_in(&env.state_path().join("copy")).len(), 1);
    // The rsync copy (here to a local path: the same code path as user@host:/path, without
    // ssh), verified by a checksum dry run.
    assert!(report["copies"].to_string().contains("rsync"), "{report}");
    assert_eq!(archives_in(&env.state_path().join("rsynced")).len(), 1);
    // Both services were stopped for it, and run again (same containers).
    assert!(running(&db1) && running(&web1));
    assert_eq!((container_id(&db1), container_id(&web1)), (db_id, web_id));
    assert_ne!(started_at(&db1), db_started, "db was not stopped for the backup");
    assert_ne!(started_at(&web1), web_started, "web was not stopped for the backup");
    // web (the dependent) stopped before db and started after it.
    let finished = |c: &str| harness::comparable_time(&docker_ok(&["inspect", "-f", "{{.State.FinishedAt}}", c]));
    assert!(finished(&web1) <= finished(&db1), "web should stop first");
    let started = |c: &str| harness::comparable_time(&started_at(c));
    assert!(started(&db1) <= started(&web1), "db should start first");
    // list and verify.
    let list = stdout_of(&tend(&env, &["backup", "list", "nightly"]));
    assert!(list.contains("complete"), "{list}");
    let verify = tend(&env, &["backup", "verify", "nightly"]);
    assert!(verify.status.success(), "{}", describe(&verify));
    // Health in status: a success, nothing wrong.
    let status = env.status_json();
    let health = &status["backups"][0];
    assert_eq!(health["name"], "nightly", "{status}");
    assert!(health["lastSuccessMs"].as_u64().is_some() && health["lastError"].is_null(), "{status}");
    // A second run the same day gets its own name.
    let out = tend(&env, &["backup", "run", "nightly"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(archives_in(&dest).len(), 2);
}

#[test]
fn a_corrupted_archive_is_detected() {
    let env = Env::new("backup_corrupt");
    let (_db, _web, _data, dest) = setup(&env);
    assert!(tend(&env, &["backup", "run", "nightly"]).status.success());
    let archive = archives_in(&dest).pop().expect("an archive");
    let mut bytes = std::fs::read(&archive).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).expect("write");
    let out = tend(&env, &["backup", "verify", "nightly"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stdout_of(&out).contains("BAD"), "{}", describe(&out));
    assert!(
        stdout_of(&out).to_lowercase().contains("sha256") || stdout_of(&out).contains("checksum"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_backup_that_cannot_fit_fails_before_stopping_anything() {
    let env = Env::new("backup_no_space");
    let (db, _web, data, _dest) = setup(&env);
    // 64 KiB of room for 100 KB of data.
    let small = env.state_path().join("small");
    std::fs::create_dir_all(&small).expect("dir");
    let mount =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&small).output().expect("mount");
    assert!(mount.status.success(), "mounting a small tmpfs (tests run as root): {}", describe(&mount));
    let spec = backup_doc(
        "tight",
        &format!(
            "  source: {{paths: ['{}']}}\n  quiesce: {{stop: [{db}]}}\n  destination: {{dir: '{}'}}\n",
            data.display(),
            small.display()
        ),
    );
    env.write_spec("tight.yaml", &spec);
    let before = started_at(&format!("{db}-1"));
    let out = tend(&env, &["backup", "run", "tight"]);
    let _ = Command::new("umount").arg(&small).status();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was stopped"), "{}", describe(&out));
    assert_eq!(started_at(&format!("{db}-1")), before, "db was stopped although the backup could not fit");
    // The failure shows in status.
    let status = env.status_json();
    let tight = status["backups"].as_array().into_iter().flatten().find(|b| b["name"] == "tight").cloned();
    assert!(tight.is_some_and(|b| b["lastError"].as_str().is_some_and(|e| e.contains("free"))), "{status}");
}

#[test]
fn a_tend_killed_mid_backup_leaves_no_archive_and_its_services_are_started_again() {
    let env = Env::new("backup_killed");
    let (db, web, _data, dest) = setup(&env);
    let db1 = format!("{db}-1");
    let mut child = paused_backup(&env, "nightly", 60);
    wait_for(Duration::from_secs(30), "the services to be stopped for the backup", || !running(&db1));
    let journal = env.state_path().join("quiesce/nightly.json");
    assert!(journal.exists(), "no quiesce journal");
    child.kill().expect("SIGKILL tend");
    let _ = child.wait();
    assert!(!running(&db1), "still stopped right after the kill");
    assert!(archives_in(&dest).is_empty(), "an archive under a final name after a kill");
    // The next tend (here the next run; the agent does the same at start) starts them again.
    let t0 = Instant::now();
    let out = tend(&env, &["backup", "run", "nightly"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(running(&db1) && running(&format!("{web}-1")));
    assert!(!journal.exists(), "the journal stayed");
    eprintln!("recovered and backed up in {:?}", t0.elapsed());
}

#[test]
fn a_restore_moves_the_current_data_aside_and_puts_the_archive_back() {
    let env = Env::new("backup_restore");
    let (db, _web, data, _dest) = setup(&env);
    assert!(tend(&env, &["backup", "run", "nightly"]).status.success());
    std::fs::write(data.join("db.txt"), "corrupted\n").expect("corrupt");
    // Without --yes and without a terminal: refused, nothing changed.
    let out = tend(&env, &["restore", "nightly"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stdout_of(&out).contains("move aside"), "the plan is shown first: {}", describe(&out));
    assert_eq!(std::fs::read_to_string(data.join("db.txt")).expect("read"), "corrupted\n");
    let out = tend(&env, &["restore", "nightly", "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(data.join("db.txt")).expect("read"), "the original records\n");
    // The broken data is kept for forensics.
    let aside: Vec<PathBuf> =
        std::fs::read_dir(env.state_path().join("forensics")).expect("forensics").flatten().map(|e| e.path()).collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(aside[0].join("db.txt")).expect("read"), "corrupted\n");
    assert!(running(&format!("{db}-1")));
    // Into a scratch directory: nothing stopped or moved.
    let scratch = env.state_path().join("scratch");
    let out = tend(&env, &["restore", "nightly", "--to", scratch.to_str().expect("utf-8"), "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    let inner = scratch.join(data.strip_prefix("/").expect("absolute")).join("db.txt");
    assert_eq!(std::fs::read_to_string(inner).expect("read"), "the original records\n");
}

#[test]
fn a_dump_streamed_from_a_container_restores_into_a_database_of_another_name() {
    let env = Env::new("backup_exec");
    let store = env.name("store");
    env.write_spec("store.yaml", &service(&store, ""));
    let dest = env.state_path().join("dumps");
    env.write_spec(
        "dump.yaml",
        &backup_doc(
            "dump",
            &format!(
                "  source: {{exec: {{service: {store}, command: [cat, /tmp/pipeline_prod.db]}}}}\n  destination: {{dir: '{}'}}\n  restore:\n    exec: {{service: {store}, command: [sh, -c, 'cat > /tmp/${{db}}.db']}}\n",
                dest.display()
            ),
        ),
    );
    env.apply();
    let c = format!("{store}-1");
    docker_ok(&["exec", &c, "sh", "-c", "seq 1 20000 > /tmp/pipeline_prod.db"]);
    let out = tend(&env, &["backup", "run", "dump"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(archives_in(&dest).len(), 1);
    // Restoring needs the database name.
    let out = tend(&env, &["restore", "dump", "--yes"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--set db="), "{}", describe(&out));
    let out = tend(&env, &["restore", "dump", "--set", "db=pipeline_dev", "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    let original = docker_ok(&["exec", &c, "md5sum", "/tmp/pipeline_prod.db"]);
    let restored = docker_ok(&["exec", &c, "md5sum", "/tmp/pipeline_dev.db"]);
    assert_eq!(original.split_whitespace().next(), restored.split_whitespace().next());
    // A failing dump keeps no archive.
    env.write_spec(
        "dump.yaml",
        &backup_doc(
            "dump",
            &format!(
                "  source: {{exec: {{service: {store}, command: [cat, /tmp/missing.db]}}}}\n  destination: {{dir: '{}'}}\n",
                dest.display()
            ),
        ),
    );
    let out = tend(&env, &["backup", "run", "dump"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no archive was kept"), "{}", describe(&out));
    assert_eq!(archives_in(&dest).len(), 1, "a failed dump left an archive");
}

#[test]
fn a_scheduled_backup_runs_by_itself_as_a_timer_of_the_agent() {
    let env = Env::new("backup_scheduled");
    let data = data_dir(&env);
    let dest = env.state_path().join("scheduled");
    env.write_spec(
        "b.yaml",
        &backup_doc(
            "often",
            &format!(
                "  schedule: '*:*:0/2'\n  source: {{paths: ['{}']}}\n  destination: {{dir: '{}', layout: '{{name}}/{{date}}-{{time}}.tar.zst'}}\n  retention: {{keepLast: 2}}\n",
                data.display(),
                dest.display()
            ),
        ),
    );
    // The Backup is a Timer: listed, with its job.
    let list = stdout_of(&env.tend(&["job", "list", env.spec_arg()]));
    assert!(list.contains("backup-often"), "{list}");
    let agent = crate::agent::Agent::start(&env, &["--specs", env.spec_arg()]);
    wait_for(Duration::from_secs(40), "three scheduled runs", || {
        std::fs::read_to_string(env.state_path().join("backups/often/history.jsonl"))
            .is_ok_and(|h| h.lines().count() >= 3)
    });
    // Its health is a metric (updated after each pass: ask for one).
    let _ = Command::new("curl")
        .args(["-sf", "-X", "POST", "--unix-socket"])
        .arg(env.socket_path())
        .arg("http://tend/v1/pass")
        .output();
    wait_for(Duration::from_secs(10), "the backup's metrics", || {
        agent.metrics().lines().any(|l| {
            l.starts_with("tend_backup_last_success_timestamp_seconds{backup=\"often\"}") && !l.ends_with(" 0")
        })
    });
    // Retention keeps two.
    assert!(archives_in(&dest).len() <= 3, "{:?}", archives_in(&dest));
    let history = stdout_of(&env.tend(&["job", "history", "backup-often"]));
    assert!(history.contains("ok"), "{history}");
}

#[test]
fn a_drill_restores_into_scratch_and_runs_its_check() {
    let env = Env::new("backup_drill");
    let data = data_dir(&env);
    let dest = env.state_path().join("drilled");
    let check = env.state_path().join("check.sh");
    let rel = data.strip_prefix("/").expect("absolute").join("db.txt");
    std::fs::write(&check, format!("test \"$(cat \"$1/{}\")\" = 'the original records'\n", rel.display()))
        .expect("script");
    let spec = |check: &Path| {
        backup_doc(
            "drilled",
            &format!(
                "  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n  drill: {{schedule: weekly, check: [/bin/sh, '{}']}}\n",
                data.display(),
                dest.display(),
                check.display()
            ),
        )
    };
    env.write_spec("b.yaml", &spec(&check));
    assert!(tend(&env, &["backup", "run", "drilled"]).status.success());
    let out = tend(&env, &["backup", "drill", "drilled"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout_of(&out).contains("drill passed"), "{}", describe(&out));
    assert!(!env.state_path().join("drills/drilled").exists(), "the scratch stayed");
    // A check that fails fails the drill; the live data is untouched either way.
    let failing = env.state_path().join("fail.sh");
    std::fs::write(&failing, "exit 3\n").expect("script");
    env.write_spec("b.yaml", &spec(&failing));
    let out = tend(&env, &["backup", "drill", "drilled"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(data.join("db.txt")).expect("read"), "the original records\n");
    // It is scheduled as a Timer.
    assert!(stdout_of(&env.tend(&["job", "list", env.spec_arg()])).contains("backup-drilled-drill"));
}

#[test]
fn a_drill_of_a_dump_restores_into_a_scratch_container_and_removes_it() {
    let env = Env::new("backup_exec_drill");
    let (store, name) = (env.name("store"), env.name("dump"));
    env.write_spec(
        "store.yaml",
        &service(&store, "healthcheck: {command: [test, -e, /tmp], interval: 1s, retries: 3}"),
    );
    let dest = env.state_path().join("dumps");
    let (check, seen) = (env.state_path().join("check.sh"), env.state_path().join("seen"));
    let expected = env.state_path().join("expected.md5");
    // The check runs on the host and looks into the scratch container it is given.
    std::fs::write(
        &check,
        format!(
            "echo \"$1 $TEND_DRILL_CONTAINER\" > '{}'\ndocker exec \"$1\" md5sum /tmp/pipeline_prod.db | cut -d' ' -f1 | cmp -s - '{}'\n",
            seen.display(),
            expected.display()
        ),
    )
    .expect("script");
    // A scratch container left by a killed drill: a pass leaves it alone, the next drill
    // removes it.
    let leftover = format!("{name}-drill");
    let scope_label = env.scope_filter().trim_start_matches("label=").to_string();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &leftover,
        "--label",
        &scope_label,
        "--label",
        "tend.kind=drill",
        "--label",
        &format!("tend.name={name}"),
        &harness::test_image(),
        "sleep",
        "600",
    ]);
    env.apply();
    assert!(docker(&["inspect", &leftover]).status.success(), "a pass removed a drill's container");
    env.write_spec(
        "dump.yaml",
        &backup_doc(
            &name,
            &format!(
                "  source: {{exec: {{service: {store}, command: [cat, /tmp/pipeline_prod.db]}}}}\n  destination: {{dir: '{}'}}\n  restore:\n    exec: {{service: {store}, command: [sh, -c, 'cat > /tmp/${{db}}.db']}}\n    vars: {{db: pipeline_prod}}\n  drill: {{schedule: weekly, check: [/bin/sh, '{}']}}\n",
                dest.display(),
                check.display()
            ),
        ),
    );
    let c = format!("{store}-1");
    docker_ok(&["exec", &c, "sh", "-c", "seq 1 20000 > /tmp/pipeline_prod.db"]);
    let md5 = docker_ok(&["exec", &c, "md5sum", "/tmp/pipeline_prod.db"]);
    std::fs::write(&expected, format!("{}\n", md5.split_whitespace().next().expect("md5"))).expect("write");
    assert!(tend(&env, &["backup", "run", &name]).status.success());
    // The live database moves on; the drill must not touch it.
    docker_ok(&["exec", &c, "sh", "-c", "echo newer >> /tmp/pipeline_prod.db"]);
    let live = docker_ok(&["exec", &c, "md5sum", "/tmp/pipeline_prod.db"]);
    let before = started_at(&c);
    let out = tend(&env, &["backup", "drill", &name]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout_of(&out).contains("drill passed"), "{}", describe(&out));
    let scratch = std::fs::read_to_string(&seen).expect("the check ran");
    assert_eq!(scratch.trim(), format!("{name}-drill {name}-drill"), "the check gets the container");
    assert_eq!(docker_ok(&["exec", &c, "md5sum", "/tmp/pipeline_prod.db"]), live, "the live data changed");
    assert_eq!(started_at(&c), before, "the live service was restarted");
    let drills = || {
        docker_ok(&["ps", "-aq", "--filter", "label=tend.kind=drill", "--filter", &env.scope_filter()])
            .trim()
            .to_string()
    };
    assert_eq!(drills(), "", "the scratch container stayed");
    // A failing check fails the drill and still removes the scratch container.
    std::fs::write(&expected, "not the md5\n").expect("write");
    let out = tend(&env, &["backup", "drill", &name]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed its check"), "{}", describe(&out));
    assert_eq!(drills(), "", "the scratch container stayed after a failed check");
    assert_eq!(env.container_ids().len(), 1, "only the live service is left");
}

/// Runs `tend ARGS --specs DIR` on a pseudo-terminal (`script`), for what only a terminal
/// gets; its whole output.
fn on_a_terminal(env: &Env, args: &[&str]) -> String {
    let scope = env.scope_filter().rsplit('=').next().expect("scope").to_string();
    let state = env.state_path().display().to_string();
    let mut line =
        vec![harness::tend_bin().display().to_string(), "--state-dir".into(), state, "--scope".into(), scope];
    line.extend(args.iter().map(|a| a.to_string()));
    line.extend(["--specs".to_string(), env.spec_arg().to_string()]);
    let quoted: Vec<String> = line.iter().map(|a| format!("'{a}'")).collect();
    let out = Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("TEND_SOCKET", env.socket_path())
        .env("TEND_LOCK_DIR", env.lock_path())
        .env("TEND_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn backups_and_restores_show_their_progress_on_a_terminal() {
    let env = Env::new("backup_progress");
    let data = data_dir(&env);
    std::fs::write(data.join("big"), vec![1u8; 8 << 20]).expect("write");
    let dest = env.state_path().join("progress");
    env.write_spec(
        "b.yaml",
        &backup_doc(
            "shown",
            &format!("  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n", data.display(), dest.display()),
        ),
    );
    let run = on_a_terminal(&env, &["backup", "run", "shown"]);
    assert!(run.contains(" MiB of ") && run.contains("MiB/s"), "{run}");
    let to = env.state_path().join("restored");
    let restore = on_a_terminal(&env, &["restore", "shown", "--yes", "--to", to.to_str().expect("utf-8")]);
    assert!(restore.contains(" MiB of ") && restore.contains("MiB/s") && restore.contains("restored"), "{restore}");
    // Not on a terminal: no progress line in the output.
    let out =
        tend(&env, &["restore", "shown", "--yes", "--to", env.state_path().join("again").to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("MiB/s"), "{}", describe(&out));
}

#[test]
fn runs_in_quick_succession_each_keep_their_own_archive() {
    let env = Env::new("backup_quick_runs");
    let data = data_dir(&env);
    let dest = env.state_path().join("quick");
    env.write_spec(
        "b.yaml",
        &backup_doc(
            "quick",
            &format!("  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n", data.display(), dest.display()),
        ),
    );
    // The day's name, then the time in it, then a number for runs within the same second.
    for _ in 0..4 {
        let out = tend(&env, &["backup", "run", "quick"]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    assert_eq!(archives_in(&dest).len(), 4, "{:?}", archives_in(&dest));
    let out = tend(&env, &["backup", "verify", "quick"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout_of(&out).lines().filter(|l| l.starts_with("ok ")).count(), 4, "{}", describe(&out));
}

#[test]
fn status_reports_a_shrinking_archive_a_missed_schedule_and_leftovers_of_a_killed_run() {
    let env = Env::new("backup_health");
    let data = data_dir(&env);
    std::fs::write(
        data.join("big"),
        (0..2_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>(),
    )
    .expect("write");
    let dest = env.state_path().join("health");
    env.write_spec(
        "b.yaml",
        &format!(
            "{}{}",
            backup_doc(
                "shrinks",
                &format!(
                    "  schedule: '*-*-* 03:15:00'\n  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n",
                    data.display(),
                    dest.display()
                ),
            ),
            backup_doc(
                "killed",
                &format!(
                    "  source: {{exec: {{runtime: host, command: [/bin/sh, -c, 'head -c 300000 /dev/urandom; exec sleep 30']}}}}\n  destination: {{dir: '{}'}}\n",
                    dest.display()
                ),
            )
        ),
    );
    // (Stand-alone `status` exits 1 here, systemd not being PID 1 for the schedule's timer;
    // its JSON is whole.)
    let health = |name: &str| {
        let out = env.tend(&["status", "--output", "json", env.spec_arg()]);
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
        let h = status["backups"].as_array().into_iter().flatten().find(|b| b["name"] == name).cloned();
        h.unwrap_or_else(|| panic!("no health of {name}: {status}"))
    };
    // Two runs, the data losing most of its bytes in between: the newest archive shrank.
    assert!(tend(&env, &["backup", "run", "shrinks"]).status.success());
    assert!(health("shrinks")["shrunk"].is_null(), "{}", health("shrinks"));
    std::fs::remove_file(data.join("big")).expect("remove");
    assert!(tend(&env, &["backup", "run", "shrinks"]).status.success());
    let h = health("shrinks");
    let shrunk = h["shrunk"].as_array().cloned().unwrap_or_default();
    assert!(shrunk.len() == 2 && shrunk[1].as_u64() < shrunk[0].as_u64(), "{h}");
    assert_eq!(h["missed"], false, "{h}");
    // The last success three days ago: the nightly schedule was missed since.
    let history = env.state_path().join("backups/shrinks/history.jsonl");
    let three_days_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis()
        as u64
        - 3 * 86_400_000;
    let aged: Vec<String> = std::fs::read_to_string(&history)
        .expect("history")
        .lines()
        .map(|l| {
            let mut run: serde_json::Value = serde_json::from_str(l).expect("a run");
            run["endMs"] = three_days_ago.into();
            run.to_string()
        })
        .collect();
    std::fs::write(&history, aged.join("\n") + "\n").expect("write history");
    assert_eq!(health("shrinks")["missed"], true, "{}", health("shrinks"));
    // A run killed while writing its archive leaves its temporary file: a leftover.
    let mut child = paused_backup(&env, "killed", 0);
    let partial = || {
        crate::backup::files_in(&dest).iter().any(|f| {
            let f = f.to_string_lossy();
            f.contains("killed") && f.contains(".partial-")
        })
    };
    wait_for(Duration::from_secs(30), "the killed run's temporary file", partial);
    child.kill().expect("SIGKILL tend");
    let _ = child.wait();
    let h = health("killed");
    assert_eq!(h["leftovers"], 1, "{h}");
    assert!(h["lastSuccessMs"].is_null(), "{h}");
}

#[test]
fn a_restore_refuses_a_move_aside_target_it_cannot_rename_into() {
    let env = Env::new("backup_aside_refused");
    let (db, _web, data, _dest) = setup(&env);
    assert!(tend(&env, &["backup", "run", "nightly"]).status.success());
    // The move-aside directory on another filesystem: moving aside would be a copy.
    let other = env.state_path().join("forensics");
    std::fs::create_dir_all(&other).expect("dir");
    let mount =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&other).output().expect("mount");
    assert!(mount.status.success(), "mounting a tmpfs (tests run as root): {}", describe(&mount));
    std::fs::write(data.join("db.txt"), "current\n").expect("write");
    let before = started_at(&format!("{db}-1"));
    let out = tend(&env, &["restore", "nightly", "--yes"]);
    let _ = Command::new("umount").arg(&other).status();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different filesystems"), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(data.join("db.txt")).expect("read"), "current\n", "data changed");
    assert_eq!(started_at(&format!("{db}-1")), before, "a service was stopped");
}

/// Debian's PostgreSQL server binaries (`/usr/lib/postgresql/VERSION/bin`).
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql is installed (scripts/test.sh installs it)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL server with pg_ctl")
}

fn as_postgres(args: &[&str]) -> Output {
    let out = Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().expect("runuser");
    assert!(out.status.success(), "{args:?}: {}", describe(&out));
    out
}

#[test]
fn a_postgres_dump_restores_into_a_database_of_another_name() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("backup_postgres");
    let bin = pg_bin();
    let bin_s = |b: &str| bin.join(b).display().to_string();
    // A cluster of its own, on its own port and socket directory.
    let root = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (data, sock) = (root.path().join("data"), root.path().display().to_string());
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port().to_string();
    as_postgres(&[&bin_s("initdb"), "-D", data.to_str().expect("utf-8"), "-A", "trust"]);
    let opts = format!("-p {port} -k {sock} -c listen_addresses=''");
    // The server inherits pg_ctl's output: let it not hold a pipe of ours.
    let started = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &bin_s("pg_ctl"),
            "-D",
            data.to_str().expect("utf-8"),
            "-o",
            &opts,
            "-w",
            "start",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("pg_ctl");
    assert!(started.success(), "pg_ctl start failed");
    struct Stop(String, PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", &self.0, "-D"])
                .arg(&self.1)
                .args(["-m", "fast", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _stop = Stop(bin_s("pg_ctl"), data.clone());
    let psql = |db: &str, sql: &str| {
        stdout_of(&as_postgres(&["psql", "-h", &sock, "-p", &port, "-d", db, "-tAc", sql])).trim().to_string()
    };
    as_postgres(&["createdb", "-h", &sock, "-p", &port, "pipeline_prod"]);
    psql(
        "pipeline_prod",
        "create table users (id int primary key, name text); insert into users select g, 'user ' || g from generate_series(1, 5000) g",
    );
    let dest = env.state_path().join("pg");
    let spec = format!(
        "  source:\n    exec: {{runtime: host, command: [/usr/sbin/runuser, -u, postgres, --, /usr/bin/pg_dump, -h, '{sock}', -p, '{port}', -Fc, pipeline_prod]}}\n  destination: {{dir: '{}'}}\n  restore:\n    exec: {{runtime: host, command: [/usr/sbin/runuser, -u, postgres, --, /bin/sh, -c, 'createdb -h {sock} -p {port} ${{db}} && pg_restore -h {sock} -p {port} -d ${{db}}']}}\n",
        dest.display()
    );
    env.write_spec("pg.yaml", &backup_doc("pg", &spec));
    let out = tend(&env, &["backup", "run", "pg"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(archives_in(&dest).len(), 1);
    let out = tend(&env, &["restore", "pg", "--set", "db=pipeline_dev", "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(psql("pipeline_dev", "select count(*), max(name) from users"), "5000|user 999");
    // Production untouched.
    assert_eq!(psql("pipeline_prod", "select count(*) from users"), "5000");
}

#[test]
fn an_operator_is_told_a_target_is_mid_backup() {
    let env = Env::new("backup_mid_maint");
    let (db, _web, _data, _dest) = setup(&env);
    let mut child = paused_backup(&env, "nightly", 5);
    wait_for(Duration::from_secs(30), "the backup to quiesce db", || !running(&format!("{db}-1")));
    let out = env.tend(&["maintain", "--specs", env.spec_arg(), &db, "--", "true"]);
    assert!(!out.status.success(), "an operator took a target mid-backup\n{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("backup nightly"), "the refusal should name the backup: {err}");
    let status = child.wait().expect("the backup");
    assert!(status.success());
    assert!(running(&format!("{db}-1")));
}
