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
