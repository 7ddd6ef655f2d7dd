//! Hostile and mismatched archives against `tend restore`, in place (with a service that
//! bind-mounts the restored path) and with `--to` (issue 12): every way a link or an entry
//! could reach outside the restored path is refused before anything stops, as are archives
//! that lack the path, hold it as the wrong kind, or expand past what they recorded.

use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::agent::{running, started_at};
use crate::backup::{backup_doc, tend};
use crate::harness::{Env, describe, stdout_of};
use crate::services::service;

/// One raw entry of a hand-made archive.
struct Raw {
    path: String,
    kind: EntryType,
    link: Option<String>,
    data: Vec<u8>,
    /// PAX records written before the entry (`path`, `linkpath` overrides).
    pax: Vec<(&'static str, String)>,
}

fn dir(path: &str) -> Raw {
    Raw { path: path.into(), kind: EntryType::Directory, link: None, data: vec![], pax: vec![] }
}

fn file(path: &str, data: &[u8]) -> Raw {
    Raw { path: path.into(), kind: EntryType::Regular, link: None, data: data.to_vec(), pax: vec![] }
}

fn symlink(path: &str, target: &str) -> Raw {
    Raw { path: path.into(), kind: EntryType::Symlink, link: Some(target.into()), data: vec![], pax: vec![] }
}

fn hardlink(path: &str, target: &str) -> Raw {
    Raw { path: path.into(), kind: EntryType::Link, link: Some(target.into()), data: vec![], pax: vec![] }
}

/// A `.tar.zst` of raw entries at `path`, bypassing the tar crate's own path checks.
fn tar_zst(path: &Path, entries: &[Raw]) {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        if !entry.pax.is_empty() {
            builder.append_pax_extensions(entry.pax.iter().map(|(k, v)| (*k, v.as_bytes()))).expect("pax records");
        }
        let mut header = Header::new_gnu();
        let old = header.as_old_mut();
        assert!(entry.path.len() <= old.name.len(), "entry name too long for the test: {}", entry.path);
        old.name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        if let Some(target) = &entry.link {
            old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_mode(if entry.kind == EntryType::Directory { 0o755 } else { 0o644 });
        header.set_size(entry.data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder.append(&header, &entry.data[..]).expect("append");
    }
    let tar = builder.into_inner().expect("tar");
    std::fs::write(path, zstd::encode_all(&tar[..], 3).expect("zstd")).expect("write the archive");
}

/// A Backup `nightly` of `data`, with a service `db` bind-mounting it; data holds `records`.
fn setup(env: &Env) -> (String, PathBuf) {
    let db = env.name("db");
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(data.join("records"), "the live records\n").expect("write");
    env.write_spec("db.yaml", &service(&db, &format!("volumes: ['{}:/data']", data.display())));
    env.write_spec(
        "backup.yaml",
        &backup_doc(
            "nightly",
            &format!(
                "  source: {{paths: ['{}']}}\n  quiesce: {{stop: [{db}]}}\n  destination: {{dir: '{}'}}\n  restore: {{moveAsideTo: '{}'}}\n",
                data.display(),
                env.state_path().join("archives").display(),
                env.state_path().join("aside").display()
            ),
        ),
    );
    env.apply();
    (db, data)
}

/// The archive-relative name of `path` (absolute, without its leading `/`).
fn rel(path: &Path) -> String {
    path.strip_prefix("/").expect("absolute").display().to_string()
}

#[test]
fn hostile_archives_are_refused_in_place_and_with_to_before_anything_stops() {
    let env = Env::new("restore_escapes");
    let (db, data) = setup(&env);
    let db1 = format!("{db}-1");
    let d = rel(&data);
    let up = "../".repeat(data.components().count() + 2);
    let cases: Vec<(&str, Vec<Raw>, &str)> = vec![
        ("the root as a relative link to /", vec![symlink(&d, &up)], "stored as a symlink"),
        ("the root as an absolute link", vec![symlink(&d, "/")], "stored as a symlink"),
        (
            "a link inside to the host's /etc",
            vec![dir(&d), symlink(&format!("{d}/etc"), &format!("{up}etc"))],
            "pointing outside",
        ),
        ("an absolute link inside", vec![dir(&d), symlink(&format!("{d}/etc"), "/etc")], "absolute path"),
        (
            "a link that climbs above the root and comes back",
            vec![dir(&d), symlink(&format!("{d}/x"), "../data/records")],
            "pointing outside",
        ),
        (
            "a chain of links",
            vec![dir(&d), symlink(&format!("{d}/a"), "b/.."), symlink(&format!("{d}/b"), "..")],
            "pointing outside",
        ),
        (
            "a link then a directory of the same name",
            vec![dir(&d), symlink(&format!("{d}/l"), "."), dir(&format!("{d}/l")), file(&format!("{d}/l/x"), b"x")],
            "appears twice",
        ),
        (
            "a file written through a link",
            vec![dir(&d), symlink(&format!("{d}/l"), "."), file(&format!("{d}/l/x"), b"x")],
            "through the symlink",
        ),
        ("a hard link to a host file", vec![dir(&d), hardlink(&format!("{d}/h"), "etc/passwd")], "hard link"),
        (
            "a hard link leaving the root by name",
            vec![dir(&d), hardlink(&format!("{d}/h"), &format!("{d}/../x"))],
            "hard link",
        ),
        (
            "a PAX path override",
            vec![dir(&d), Raw { pax: vec![("path", format!("{d}/../../escape"))], ..file(&format!("{d}/ok"), b"x") }],
            "`..`",
        ),
        (
            "a PAX linkpath override",
            vec![dir(&d), Raw { pax: vec![("linkpath", "/etc".into())], ..symlink(&format!("{d}/ok"), "inside") }],
            "absolute path",
        ),
        ("an entry outside the Backup's paths", vec![dir(&d), file("etc/cron.d/x", b"x")], "outside the paths"),
    ];
    let archives = env.state_path().join("hostile");
    std::fs::create_dir_all(&archives).expect("dir");
    let before = started_at(&db1);
    for (i, (what, entries, why)) in cases.iter().enumerate() {
        let archive = archives.join(format!("{i}.tar.zst"));
        tar_zst(&archive, entries);
        let from = archive.to_str().expect("utf-8");
        // In place: refused before anything stops or moves.
        let out = tend(&env, &["restore", "nightly", "--from", from, "--without-manifest", "--yes"]);
        assert!(!out.status.success(), "{what}: restored in place\n{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("nothing was changed") && err.contains(why), "{what}: {}", describe(&out));
        assert_eq!(std::fs::read_to_string(data.join("records")).expect("read"), "the live records\n", "{what}");
        assert!(running(&db1) && started_at(&db1) == before, "{what}: the service was stopped");
        let aside = std::fs::read_dir(env.state_path().join("aside")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(aside, 0, "{what}: data was moved aside");
        // With --to: refused, nothing left behind.
        let to = env.state_path().join(format!("to-{i}"));
        let out = tend(
            &env,
            &["restore", "nightly", "--from", from, "--without-manifest", "--to", to.to_str().expect("utf-8"), "--yes"],
        );
        assert!(!out.status.success(), "{what}: restored with --to\n{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{what}: {}", describe(&out));
        assert!(!to.exists(), "{what}: --to left {}", to.display());
    }
    // Nothing left beside the data either.
    let leftovers: Vec<String> = std::fs::read_dir(env.state_path())
        .expect("state dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".tend-restore") || n.contains(".extract-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A good archive of the same shape still restores, in place.
    let good = archives.join("good.tar.zst");
    tar_zst(&good, &[dir(&d), file(&format!("{d}/records"), b"restored\n"), symlink(&format!("{d}/link"), "records")]);
    let out =
        tend(&env, &["restore", "nightly", "--from", good.to_str().expect("utf-8"), "--without-manifest", "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(data.join("link")).expect("read"), "restored\n");
    assert!(running(&db1));
}

#[test]
fn an_archive_that_does_not_match_its_backup_is_refused_before_anything_stops() {
    let env = Env::new("restore_mismatch");
    let (db, data) = setup(&env);
    let db1 = format!("{db}-1");
    let d = rel(&data);
    let before = started_at(&db1);
    let archives = env.state_path().join("wrong");
    std::fs::create_dir_all(&archives).expect("dir");
    let cases: Vec<(&str, Vec<Raw>, &str)> = vec![
        ("no entry at all", vec![], "holds nothing for"),
        ("the path as a regular file", vec![file(&d, b"not a directory\n")], "holds a file for"),
    ];
    for (i, (what, entries, why)) in cases.iter().enumerate() {
        let archive = archives.join(format!("{i}.tar.zst"));
        tar_zst(&archive, entries);
        let out = tend(
            &env,
            &["restore", "nightly", "--from", archive.to_str().expect("utf-8"), "--without-manifest", "--yes"],
        );
        assert!(!out.status.success(), "{what}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why) && err.contains("nothing was changed"), "{what}: {err}");
        assert!(data.is_dir(), "{what}: the data is not a directory any more");
        assert_eq!(std::fs::read_to_string(data.join("records")).expect("read"), "the live records\n", "{what}");
        assert!(started_at(&db1) == before, "{what}: the service was stopped");
    }
}

#[test]
fn an_archive_that_expands_past_its_manifest_or_the_free_space_stops_before_filling_the_disk() {
    let env = Env::new("restore_bomb");
    let (db, data) = setup(&env);
    let before = started_at(&format!("{db}-1"));
    let d = rel(&data);
    // 64 MiB of zeros compresses to almost nothing; the manifest says 4 KiB went in.
    let zeros = vec![0u8; 64 * 1024 * 1024];
    let archive = env.state_path().join("archives/nightly/bomb.tar.zst");
    std::fs::create_dir_all(archive.parent().expect("parent")).expect("dir");
    tar_zst(&archive, &[dir(&d), file(&format!("{d}/big"), &zeros)]);
    let sha = stdout_of(&std::process::Command::new("sha256sum").arg(&archive).output().expect("sha256sum"));
    let sha = sha.split_whitespace().next().expect("a sum").to_string();
    let bytes = std::fs::metadata(&archive).expect("meta").len();
    let manifest = serde_json::json!({
        "archive": "bomb.tar.zst", "sha256": sha, "bytes": bytes, "files": 2, "input_bytes": 4096,
        "source": format!("paths {}", data.display()), "started_ms": 1_700_000_000_000u64, "duration_ms": 1,
        "tend_version": "test", "spec_hash": "x", "backup": "nightly", "format": "tar.zst"
    });
    std::fs::write(format!("{}.manifest.json", archive.display()), manifest.to_string()).expect("manifest");
    let out = tend(&env, &["restore", "nightly", "--from", archive.to_str().expect("utf-8"), "--yes"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writes more than") && err.contains("nothing was changed"), "{err}");
    assert_eq!(std::fs::read_to_string(data.join("records")).expect("read"), "the live records\n");
    assert!(started_at(&format!("{db}-1")) == before, "the service was stopped");
    // Without a manifest, the free space bounds it: a 96 MiB tmpfs keeps 64 MiB in reserve.
    let small = env.state_path().join("small");
    std::fs::create_dir_all(&small).expect("dir");
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"])
        .arg(&small)
        .output()
        .expect("mount");
    assert!(mount.status.success(), "mounting a tmpfs (tests run as root): {}", describe(&mount));
    let to = small.join("restored");
    let out = tend(
        &env,
        &[
            "restore",
            "nightly",
            "--from",
            archive.to_str().expect("utf-8"),
            "--without-manifest",
            "--to",
            to.to_str().expect("utf-8"),
            "--yes",
        ],
    );
    let free_after = std::fs::read_dir(&small).map(|d| d.count()).unwrap_or(0);
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writes more than"), "{}", describe(&out));
    assert_eq!(free_after, 0, "the partial extraction was left on the small filesystem");
}
