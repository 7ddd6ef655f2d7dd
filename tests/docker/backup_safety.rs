//! What a new user found unsafe in backups and restores (issue 11), each against a real
//! Docker daemon: a misspelt `--set` variable, an archive of another Backup or without a
//! manifest, and a dump named `.tar.zst` that `verify` read as a tar.

use std::path::PathBuf;

use crate::backup::{archives_in, backup_doc, tend};
use crate::harness::{Env, describe, docker, docker_ok, stdout_of};
use crate::services::service;

/// A service `store` and a Backup `name` dumping `/tmp/pipeline_prod.db` out of it, whose
/// restore writes `/tmp/${db}.db` (default `pipeline_prod`) and leaves a mark
/// `/tmp/restored-${db}` that says the restore command ran. `extra` adds spec lines.
fn dump_backup(env: &Env, store: &str, name: &str, extra: &str) -> PathBuf {
    let dest = env.state_path().join("dumps");
    env.write_spec(
        &format!("{name}.yaml"),
        &backup_doc(
            name,
            &format!(
                "  source: {{exec: {{service: {store}, command: [cat, /tmp/pipeline_prod.db]}}}}\n  destination: {{dir: '{}'{extra}}}\n  restore:\n    exec: {{service: {store}, command: [sh, -c, 'cat > /tmp/${{db}}.db && touch /tmp/restored-${{db}}']}}\n    vars: {{db: pipeline_prod}}\n",
                dest.display()
            ),
        ),
    );
    dest
}

/// Starts the store service with a database file of `content` repeated.
fn store_with_data(env: &Env, content: &str) -> String {
    let store = env.name("store");
    env.write_spec("store.yaml", &service(&store, ""));
    env.apply();
    docker_ok(&[
        "exec",
        &format!("{store}-1"),
        "sh",
        "-c",
        &format!("for i in $(seq 1 2000); do echo {content}; done > /tmp/pipeline_prod.db"),
    ]);
    store
}

fn exists_in(container: &str, path: &str) -> bool {
    docker(&["exec", container, "test", "-e", path]).status.success()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_misspelt_set_variable_is_refused_before_anything_runs() {
    let env = Env::new("safety_set_typo");
    let store = store_with_data(&env, "row");
    let c = format!("{store}-1");
    dump_backup(&env, &store, "dump", "");
    let out = tend(&env, &["backup", "run", "dump"]);
    assert!(out.status.success(), "{}", describe(&out));
    // `dbname` is not a variable of restore.exec (`db` is): refused, the default not used.
    let out = tend(&env, &["restore", "dump", "--set", "dbname=pipeline_dev", "--yes"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr_of(&out);
    assert!(err.contains("--set dbname: no such variable") && err.contains("`db`"), "{}", describe(&out));
    assert!(err.contains("nothing was changed"), "{}", describe(&out));
    assert!(!stdout_of(&out).contains("restore into"), "a refused restore printed its plan: {}", describe(&out));
    assert!(!exists_in(&c, "/tmp/restored-pipeline_prod"), "the restore ran into the live database");
    // A near miss gets a suggestion.
    let out = tend(&env, &["restore", "dump", "--set", "dv=pipeline_dev", "--yes"]);
    assert!(stderr_of(&out).contains("did you mean `db`?"), "{}", describe(&out));
    // The right name restores where it says.
    let out = tend(&env, &["restore", "dump", "--set", "db=pipeline_dev", "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(exists_in(&c, "/tmp/restored-pipeline_dev") && !exists_in(&c, "/tmp/restored-pipeline_prod"));
}

#[test]
fn an_archive_of_another_backup_or_without_a_manifest_is_refused() {
    let env = Env::new("safety_archive_owner");
    let store = store_with_data(&env, "row");
    let c = format!("{store}-1");
    let dest = dump_backup(&env, &store, "dump", "");
    dump_backup(&env, &store, "other", "");
    let out = tend(&env, &["backup", "run", "other"]);
    assert!(out.status.success(), "{}", describe(&out));
    let of_other = archives_in(&dest).pop().expect("an archive of `other`");
    // Another Backup's archive: refused, whatever the operator typed.
    let from = of_other.to_str().expect("utf-8");
    let out = tend(&env, &["restore", "dump", "--from", from, "--set", "db=x", "--yes"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr_of(&out);
    assert!(err.contains("is an archive of Backup `other`") && err.contains("nothing was changed"), "{err}");
    assert!(!exists_in(&c, "/tmp/restored-x"), "another Backup's archive was restored");
    // Without a manifest: refused unless asked for, then shown without an age.
    let loose = env.state_path().join("loose.zst");
    std::fs::copy(&of_other, &loose).expect("copy the archive without its manifest");
    let from = loose.to_str().expect("utf-8");
    let out = tend(&env, &["restore", "dump", "--from", from, "--set", "db=y", "--yes"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("has no manifest") && stderr_of(&out).contains("--without-manifest"),
        "{}",
        describe(&out)
    );
    assert!(!exists_in(&c, "/tmp/restored-y"));
    let out = tend(&env, &["restore", "dump", "--from", from, "--without-manifest", "--set", "db=y", "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout_of(&out);
    assert!(text.contains("no manifest") && !text.contains("d ago"), "{text}");
    assert!(exists_in(&c, "/tmp/restored-y"));
    // The same name, but the Backup now archives paths: the dump is another kind of source.
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    env.write_spec(
        "other.yaml",
        &backup_doc(
            "other",
            &format!("  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n", data.display(), dest.display()),
        ),
    );
    let from = of_other.to_str().expect("utf-8");
    let out = tend(&env, &["restore", "other", "--from", from, "--yes"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr_of(&out).contains("another kind of source"), "{}", describe(&out));
}

#[test]
fn verify_reads_a_dump_named_tar_zst_as_the_stream_it_is_and_never_prints_it() {
    let env = Env::new("safety_verify_dump");
    let marker = "SECRET-DUMP-CONTENT";
    let store = store_with_data(&env, marker);
    let dest = dump_backup(&env, &store, "dump", ", layout: '{name}/{date}_{name}.tar.zst'");
    let out = tend(&env, &["backup", "run", "dump"]);
    assert!(out.status.success(), "{}", describe(&out));
    let archive = archives_in(&dest).pop().expect("an archive");
    assert!(archive.to_string_lossy().ends_with(".tar.zst"), "{archive:?}");
    let manifest_path = PathBuf::from(format!("{}.manifest.json", archive.display()));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("JSON");
    assert_eq!(manifest["format"], "zst", "the manifest must say what the file holds: {manifest}");
    let out = tend(&env, &["backup", "verify", "dump"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout_of(&out).contains("ok "), "{}", describe(&out));
    // A manifest written before the fix (format tar.zst for a dump) verifies too.
    let mut old = manifest.clone();
    old["format"] = "tar.zst".into();
    std::fs::write(&manifest_path, serde_json::to_vec(&old).expect("JSON")).expect("write");
    let out = tend(&env, &["backup", "verify", "dump"]);
    assert!(out.status.success(), "{}", describe(&out));
    // Without a manifest it is taken by its name, as a tar, and found not to be one; the
    // error says so without a byte of the dump.
    let loose = env.state_path().join("loose.tar.zst");
    std::fs::copy(&archive, &loose).expect("copy");
    let out = env.tend(&["backup", "verify", loose.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "{}", describe(&out));
    let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(text.contains("not a valid tar stream"), "{text}");
    assert!(!text.contains("SECRET") && !text.contains("DUMP"), "archive content in an error: {text}");
    assert!(text.chars().all(|c| !c.is_control() || c == '\n'), "control characters in the output: {text:?}");
}

/// A command that writes `/data/term-NAME` when it gets SIGTERM, takes `flush_s` seconds to
/// "flush" (then writes `/data/stopped-NAME`) and exits 0; at start it writes
/// `/data/started-NAME`, and `/tmp/ready` after `ready_s` seconds (removed first: a container
/// started again keeps its files).
fn slow_stopper(name: &str, flush_s: u32, ready_s: u32) -> String {
    format!(
        "command: [sh, -c, \"rm -f /tmp/ready; touch /data/started-{name}; (sleep {ready_s}; touch /tmp/ready /data/ready-{name}) & trap 'touch /data/term-{name}; sleep {flush_s}; touch /data/stopped-{name}; exit 0' TERM; sleep 3600 & wait\"]"
    )
}

fn mtime(path: &std::path::Path) -> std::time::SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_quiesced_backup_stops_each_service_its_own_way_in_waves_and_starts_them_healthy_in_order() {
    let env = Env::new("safety_quiesce_waves");
    let (db, api, other) = (env.name("db"), env.name("api"), env.name("other"));
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let mount = format!("volumes: ['{}:/data']", data.display());
    // db needs 4 s to flush on SIGTERM and says so (stopTimeout 20s); quiesce.timeout is 1s.
    env.write_spec(
        "db.yaml",
        &service(
            &db,
            &format!(
                "{mount}\n{}\nstopTimeout: 20s\nhealthcheck: {{command: [test, -f, /tmp/ready], interval: 1s, timeout: 1s, retries: 30}}",
                slow_stopper(&db, 4, 2)
            ),
        ),
    );
    env.write_spec(
        "api.yaml",
        &service(
            &api,
            &format!("{mount}\n{}\ndependsOn: [{{name: {db}, condition: healthy}}]", slow_stopper(&api, 2, 0)),
        ),
    );
    env.write_spec("other.yaml", &service(&other, &format!("{mount}\n{}", slow_stopper(&other, 2, 0))));
    let dest = env.state_path().join("backups");
    env.write_spec(
        "backup.yaml",
        &backup_doc(
            "nightly",
            &format!(
                "  source: {{paths: ['{}']}}\n  quiesce: {{stop: [{db}, {api}, {other}], timeout: 1s}}\n  destination: {{dir: '{}'}}\n",
                data.display(),
                dest.display()
            ),
        ),
    );
    env.apply();
    let out = tend(&env, &["backup", "run", "nightly"]);
    assert!(out.status.success(), "{}", describe(&out));
    // db was not killed at the quiesce timeout: it flushed, and the flush is in the archive.
    let f = |what: &str, name: &str| data.join(format!("{what}-{name}"));
    assert!(f("stopped", &db).exists(), "db did not finish its flush");
    let scratch = env.state_path().join("scratch");
    let out = tend(&env, &["restore", "nightly", "--to", scratch.to_str().expect("utf-8"), "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    let inside = scratch.join(data.strip_prefix("/").expect("absolute"));
    assert!(inside.join(format!("stopped-{db}")).exists(), "the archive was made before db had flushed");
    // api and other stopped together (each got SIGTERM before the other had stopped), and db
    // only after api, which depends on it, had stopped.
    assert!(mtime(&f("term", &api)) <= mtime(&f("stopped", &other)), "api was stopped after other, not beside it");
    assert!(mtime(&f("term", &other)) <= mtime(&f("stopped", &api)), "other was stopped after api, not beside it");
    assert!(mtime(&f("stopped", &api)) <= mtime(&f("term", &db)), "db was stopped before its dependent api");
    // Started again dependencies first: api only once db was ready again.
    assert!(mtime(&f("ready", &db)) <= mtime(&f("started", &api)), "api was started before db was healthy again");
    for c in [&db, &api, &other] {
        assert!(crate::agent::running(&format!("{c}-1")), "{c} is not running again");
    }
}

#[test]
fn a_writer_killed_at_its_stop_timeout_fails_the_backup_and_keeps_no_archive() {
    let env = Env::new("safety_quiesce_killed");
    let db = env.name("db");
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    // Ignores SIGTERM: Docker kills it when its stop timeout (2 s) runs out.
    env.write_spec(
        "db.yaml",
        &service(
            &db,
            &format!(
                "volumes: ['{}:/data']\ncommand: [sh, -c, \"trap '' TERM; while true; do sleep 1; done\"]\nstopTimeout: 2s",
                data.display()
            ),
        ),
    );
    let dest = env.state_path().join("archives");
    env.write_spec(
        "backup.yaml",
        &backup_doc(
            "nightly",
            &format!(
                "  source: {{paths: ['{}']}}\n  quiesce: {{stop: [{db}]}}\n  destination: {{dir: '{}'}}\n",
                data.display(),
                dest.display()
            ),
        ),
    );
    env.apply();
    let out = tend(&env, &["backup", "run", "nightly"]);
    assert!(!out.status.success(), "a killed writer was archived: {}", describe(&out));
    let err = stderr_of(&out);
    assert!(err.contains(&format!("{db}-1 (stop timeout 2s)")) && err.contains("was killed"), "{err}");
    assert!(err.contains("nothing was archived"), "{err}");
    assert!(crate::backup::files_in(&dest).is_empty(), "{:?}", crate::backup::files_in(&dest));
    assert!(crate::agent::running(&format!("{db}-1")), "not started again after the failed run");
    let status = env.status_json();
    assert!(status["backups"][0]["lastError"].as_str().is_some_and(|e| e.contains("was killed")), "{status}");
}

#[test]
fn a_backup_killed_after_stopping_the_database_leaves_the_host_as_it_was() {
    let env = Env::new("safety_killed_run");
    let (db, web, held) = (env.name("db"), env.name("web"), env.name("held"));
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    env.write_spec(
        "db.yaml",
        &service(&db, &format!("volumes: ['{}:/data']\nrestart: {{policy: hold}}", data.display())),
    );
    env.write_spec("web.yaml", &service(&web, &format!("dependsOn: [{{name: {db}}}]\nrestart: {{policy: hold}}")));
    env.write_spec("held.yaml", &service(&held, "restart: {policy: hold}"));
    env.write_spec(
        "backup.yaml",
        &backup_doc(
            "nightly",
            &format!(
                "  source: {{paths: ['{}']}}\n  quiesce: {{stop: [{web}, {db}, {held}]}}\n  destination: {{dir: '{}'}}\n",
                data.display(),
                env.state_path().join("backups").display()
            ),
        ),
    );
    let agent = crate::agent::Agent::start(&env, &["--specs", env.spec_arg()]);
    let (db1, web1, held1) = (format!("{db}-1"), format!("{web}-1"), format!("{held}-1"));
    crate::harness::wait_for(std::time::Duration::from_secs(30), "the services to run", || {
        [&db1, &web1, &held1].iter().all(|c| crate::agent::running(c))
    });
    // `held` crashes and is held for triage before the backup.
    docker_ok(&["kill", &held1]);
    let holds = |agent: &crate::agent::Agent| {
        let status = agent.status(&env);
        status["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["note"] == "held")
            .filter_map(|n| n["name"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    crate::harness::wait_for(std::time::Duration::from_secs(30), "held to be held", || {
        holds(&agent) == [held1.clone()]
    });
    // The run is SIGKILLed with its services stopped.
    let mut child = crate::backup::paused_backup(&env, "nightly", 60);
    crate::harness::wait_for(std::time::Duration::from_secs(30), "the backup to stop db", || {
        !crate::agent::running(&db1) && !crate::agent::running(&web1)
    });
    child.kill().expect("SIGKILL tend backup run");
    let _ = child.wait();
    // The agent puts back exactly what was: db and web run (not held as crashes), held stays
    // held, and nothing says the run is still interrupted.
    crate::harness::wait_for(std::time::Duration::from_secs(60), "db and web to run again", || {
        crate::agent::running(&db1) && crate::agent::running(&web1)
    });
    assert!(!crate::agent::running(&held1), "a held service was started by the recovery");
    let status = agent.status(&env);
    assert_eq!(holds(&agent), std::slice::from_ref(&held1), "{status}");
    let backup = &status["backups"][0];
    assert!(!backup["interrupted"].as_bool().unwrap_or(false), "{status}");
    assert!(!env.state_path().join("quiesce/nightly.json").exists(), "the journal stayed");
    let text = stdout_of(&env.tend(&["status"]));
    assert!(!text.contains("interrupted"), "{text}");
}

#[test]
fn runs_and_drills_made_by_hand_are_their_timers_last_run() {
    let env = Env::new("safety_manual_runs");
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(data.join("f"), "x").expect("write");
    env.write_spec(
        "backup.yaml",
        &backup_doc(
            "nightly",
            &format!(
                "  schedule: '*-*-* 03:15:00'\n  source: {{paths: ['{}']}}\n  destination: {{dir: '{}'}}\n  drill: {{schedule: weekly, check: [/bin/true]}}\n",
                data.display(),
                env.state_path().join("archives").display()
            ),
        ),
    );
    let last = |timer: &str| {
        let status = env.status_json();
        let t = status["timers"].as_array().into_iter().flatten().find(|t| t["name"] == timer).cloned();
        t.map(|t| t["last"].clone()).unwrap_or_default()
    };
    assert!(last("backup-nightly").is_null());
    let out = tend(&env, &["backup", "run", "nightly"]);
    assert!(out.status.success(), "{}", describe(&out));
    let run = last("backup-nightly");
    assert_eq!((run["trigger"].as_str(), run["result"].as_str()), (Some("manual"), Some("ok")), "{run}");
    let out = tend(&env, &["backup", "drill", "nightly"]);
    assert!(out.status.success(), "{}", describe(&out));
    let drill = last("backup-nightly-drill");
    assert_eq!((drill["trigger"].as_str(), drill["result"].as_str()), (Some("manual"), Some("ok")), "{drill}");
    // A failing run is the last run too, with why.
    std::fs::remove_dir_all(&data).expect("remove the source");
    let out = tend(&env, &["backup", "run", "nightly"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let run = last("backup-nightly");
    assert_eq!(run["result"], "failed", "{run}");
    assert!(run["detail"].as_str().is_some_and(|d| d.contains("by hand")), "{run}");
    // A run through the Timer's job is recorded once, by the job.
    std::fs::create_dir_all(&data).expect("data");
    let out = env.tend(&["job", "run", "backup-nightly", env.spec_arg()]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = env.tend(&["job", "history", "backup-nightly", "--output", "json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON history");
    let runs = history.as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 3, "{history}");
}

/// The archive file names (without directories) under `dir`, sorted.
fn archive_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = crate::backup::archives_in(dir)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .collect();
    names.sort();
    names
}

#[test]
fn retention_reaches_the_copies_and_a_pinned_archive_outlives_it() {
    let env = Env::new("safety_retention_copies");
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let dir = |n: &str| env.state_path().join(n);
    env.write_spec(
        "backup.yaml",
        &backup_doc(
            "nightly",
            &format!(
                "  source: {{paths: ['{}']}}\n  destination: {{dir: '{}', layout: '{{name}}/{{date}}-{{time}}.tar.zst'}}\n  retention: {{keepLast: 1}}\n  copies:\n    - {{dir: '{}'}}\n    - {{dir: '{}', retention: {{keepLast: 3}}}}\n    - {{rsync: '{}', retention: {{keepLast: 2}}}}\n",
                data.display(),
                dir("local").display(),
                dir("same").display(),
                dir("three").display(),
                dir("far").display()
            ),
        ),
    );
    let run = |args: &[&str]| {
        std::fs::write(data.join("f"), format!("{args:?} {:?}", std::time::SystemTime::now())).expect("write");
        let out = tend(&env, &[&["backup", "run", "nightly"][..], args].concat());
        assert!(out.status.success(), "{}", describe(&out));
        // Archives a second apart: distinct names and times.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
    };
    run(&["--keep", "--reason", "before the upgrade"]);
    let pinned = archive_names(&dir("local")).pop().expect("the pinned archive");
    for _ in 0..3 {
        run(&[]);
    }
    let all: Vec<String> = archive_names(&dir("three"));
    assert_eq!(all.len(), 4, "{all:?}");
    let newest = |n: usize| all[all.len() - n..].to_vec();
    let with_pin = |mut v: Vec<String>| {
        v.push(pinned.clone());
        v.sort();
        v
    };
    // Local keepLast 1, and the copy without its own rules the same; the pin everywhere.
    assert_eq!(archive_names(&dir("local")), with_pin(newest(1)));
    assert_eq!(archive_names(&dir("same")), with_pin(newest(1)));
    // Copies with their own rules, over rsync too.
    assert_eq!(archive_names(&dir("three")), with_pin(newest(3)));
    assert_eq!(archive_names(&dir("far")), with_pin(newest(2)));
    // No manifest is left without its archive.
    for d in ["local", "same", "three", "far"] {
        let manifests =
            crate::backup::files_in(&dir(d)).iter().filter(|p| p.to_string_lossy().ends_with(".manifest.json")).count();
        assert_eq!(manifests, archive_names(&dir(d)).len(), "{d}");
    }
    let list = stdout_of(&tend(&env, &["backup", "list", "nightly"]));
    assert!(list.contains("pinned (before the upgrade)"), "{list}");
    // Unpinned, the next run's retention takes it, here and in the copies.
    let out = tend(&env, &["backup", "unpin", "nightly", &pinned]);
    assert!(out.status.success(), "{}", describe(&out));
    run(&[]);
    for d in ["local", "same", "three", "far"] {
        assert!(!archive_names(&dir(d)).contains(&pinned), "{d} kept the unpinned archive");
    }
    assert_eq!(archive_names(&dir("local")).len(), 1);
    assert_eq!(archive_names(&dir("far")).len(), 2);
    // Pinning by name works on an existing archive; an unknown one is refused.
    let last = archive_names(&dir("local")).pop().expect("an archive");
    let out = tend(&env, &["backup", "pin", "nightly", &last, "--reason", "audit"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = tend(&env, &["backup", "pin", "nightly", "nope.tar.zst"]);
    assert!(
        !out.status.success() && stderr_of(&out).contains("not a complete archive of nightly"),
        "{}",
        describe(&out)
    );
}
