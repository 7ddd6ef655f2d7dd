//! The backup archive engine on real files: round trips, failures mid-write (a failing reader,
//! a full tmpfs), corruption, malicious archives, and the catalog of a destination.
//!
//! The disk-full test mounts a 1 MiB tmpfs, which needs root (as in CI); it fails, never
//! skips, when the mount does.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use tar::{EntryType, Header};
use tempfile::TempDir;
use tend::backup::archive::{
    self, ArchiveError, Format, Refusal, WriteOptions, estimate_size, extract, free_bytes, stream_out, verify,
    write_paths, write_stream,
};
use tend::backup::catalog::{self, EntryState, Manifest, list, read_manifest, render_layout, write_manifest};

const LAYOUT: &str = "{name}/{yyyy}/{mm}/{date}_{name}.tar.zst";

/// Pseudo-random bytes (xorshift64): incompressible, reproducible.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in fs::read_dir(&at).expect("read_dir") {
            let path = entry.expect("entry").path();
            out.insert(path.strip_prefix(dir).expect("prefix").to_path_buf());
            if fs::symlink_metadata(&path).expect("stat").is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn partials(dir: &Path) -> Vec<PathBuf> {
    tree(dir).into_iter().filter(|p| p.to_string_lossy().contains(".partial-")).collect()
}

/// A source tree: nested directories, a symlink, a 0755 script, an empty file, a 3 MB file,
/// a long name and a long symlink target, a socket and a FIFO (both skipped).
fn source_tree(root: &Path) -> PathBuf {
    let data = root.join("retro/db");
    fs::create_dir_all(data.join("nested/deep")).expect("mkdir");
    fs::write(data.join("nested/deep/file.txt"), b"hello\n").expect("write");
    fs::write(data.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(data.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(data.join("empty"), b"").expect("write");
    fs::write(data.join("big.bin"), noise(3 * 1024 * 1024, 7)).expect("write");
    fs::set_permissions(data.join("nested"), fs::Permissions::from_mode(0o750)).expect("chmod");
    symlink("nested/deep/file.txt", data.join("link")).expect("symlink");
    let long = "n".repeat(150);
    fs::write(data.join("nested").join(&long), b"long name").expect("write");
    symlink(format!("nested/{long}"), data.join("long-link")).expect("symlink");
    let _socket = std::os::unix::net::UnixListener::bind(data.join("sock")).expect("socket");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        data.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    File::options().write(true).open(data.join("empty")).expect("open").set_modified(old).expect("mtime");
    data
}

#[test]
fn paths_round_trip_with_modes_symlinks_and_a_large_file() {
    let tmp = TempDir::new().expect("tempdir");
    let src = source_tree(tmp.path());
    let dest = tmp.path().join("backups/retro-db/2025/03");
    let archive = dest.join("2025-03-07_retro-db.tar.zst");

    let options = WriteOptions { level: 3, threads: 2, progress: Some(Default::default()) };
    let report = write_paths(&archive, std::slice::from_ref(&src), &options).expect("archive");
    // retro/db, nested, nested/deep: 3 directories; file.txt, run.sh, empty, big.bin, the
    // long name: 5 files; link, long-link: 2 symlinks.
    assert_eq!(report.files, 10);
    assert_eq!(report.skipped, vec![src.join("fifo"), src.join("sock")]);
    assert!(report.changed.is_empty());
    assert!(report.input_bytes > 3 * 1024 * 1024);
    let progress = options.progress.as_ref().expect("progress").load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(progress, report.input_bytes);
    assert_eq!(report.bytes, fs::metadata(&archive).expect("stat").len());
    assert_eq!(report.sha256, archive::sha256_file(&archive).expect("sha"));
    assert_eq!(mode(&archive), 0o600);
    assert_eq!(mode(&tmp.path().join("backups")), 0o700);
    assert_eq!(mode(&dest), 0o700);
    assert!(partials(tmp.path()).is_empty());
    // Never overwritten.
    let again = write_paths(&archive, std::slice::from_ref(&src), &WriteOptions::default());
    assert!(matches!(again, Err(ArchiveError::Exists { .. })), "{again:?}");
    assert_eq!(archive::sha256_file(&archive).expect("sha"), report.sha256);
    assert!(partials(tmp.path()).is_empty());

    if let Ok(keep) = std::env::var("TEND_TEST_KEEP_ARCHIVE") {
        fs::copy(&archive, keep).expect("copy");
    }
    let verified = verify(&archive, Some(&report.sha256)).expect("verify");
    assert_eq!(verified.format, Format::TarZst);
    assert_eq!(verified.entries, Some(report.files));
    assert_eq!(verified.decompressed_bytes, report.input_bytes);
    assert_eq!(verified.bytes, report.bytes);

    let target = tmp.path().join("restore/here");
    let extracted = extract(&archive, &target, Some(&report.sha256)).expect("extract");
    assert_eq!(extracted.entries, report.files);
    assert_eq!(mode(&target), 0o700);
    let restored = target.join(src.strip_prefix("/").expect("absolute"));
    let expected: BTreeSet<PathBuf> =
        tree(&src).into_iter().filter(|p| !p.ends_with("sock") && !p.ends_with("fifo")).collect();
    assert_eq!(tree(&restored), expected);
    for rel in &expected {
        let (a, b) = (src.join(rel), restored.join(rel));
        let (ma, mb) = (fs::symlink_metadata(&a).expect("stat"), fs::symlink_metadata(&b).expect("stat"));
        assert_eq!(ma.file_type(), mb.file_type(), "{}", rel.display());
        assert_eq!(ma.mtime(), mb.mtime(), "{}", rel.display());
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&a).expect("link"), fs::read_link(&b).expect("link"));
        } else {
            assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "{}", rel.display());
            assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{}", rel.display());
        }
        if ma.is_file() {
            assert_eq!(fs::read(&a).expect("read"), fs::read(&b).expect("read"), "{}", rel.display());
        }
    }
    assert_eq!(mode(&restored.join("run.sh")), 0o755);
    assert_eq!(mode(&restored.join("nested")), 0o750);
    assert_eq!(fs::read(restored.join("link")).expect("through the link"), b"hello\n");
    assert!(tree(&tmp.path().join("restore")).iter().all(|p| !p.to_string_lossy().contains(".extract-")));

    // Into an existing empty directory: fine. Into a non-empty one: refused.
    let empty = tmp.path().join("empty-target");
    fs::create_dir(&empty).expect("mkdir");
    extract(&archive, &empty, None).expect("extract into an empty directory");
    let refused = extract(&archive, &empty, None);
    assert!(matches!(refused, Err(ArchiveError::TargetNotEmpty { .. })), "{refused:?}");
}

#[test]
fn files_that_change_size_while_read_keep_the_tar_well_formed() {
    // Kernel files say one size and give another, every time: /proc's are 0 bytes long and
    // give more (grew), sysfs's are 4096 and give less (shrank).
    let grew = PathBuf::from("/proc/self/status");
    let shrank = PathBuf::from("/sys/kernel/uevent_seqnum");
    assert_eq!(fs::metadata(&grew).expect("/proc is mounted").len(), 0);
    assert_eq!(fs::metadata(&shrank).expect("/sys is mounted").len(), 4096);
    let tmp = TempDir::new().expect("tempdir");
    let archive = tmp.path().join("changing.tar.zst");
    let report = write_paths(&archive, &[grew.clone(), shrank.clone()], &WriteOptions::default()).expect("archive");
    assert_eq!(report.changed, vec![grew, shrank]);
    assert_eq!(verify(&archive, Some(&report.sha256)).expect("verify").entries, Some(2));
    let target = tmp.path().join("restore");
    extract(&archive, &target, None).expect("extract");
    assert_eq!(fs::metadata(target.join("proc/self/status")).expect("status").len(), 0);
    let seqnum = fs::read(target.join("sys/kernel/uevent_seqnum")).expect("seqnum");
    assert_eq!(seqnum.len(), 4096);
    let digits = seqnum.iter().take_while(|b| **b != 0).count();
    assert!(digits > 0 && seqnum[digits..].iter().all(|b| *b == 0), "{:?}", &seqnum[..digits + 4]);
}

#[test]
fn a_stream_round_trips() {
    let tmp = TempDir::new().expect("tempdir");
    let data = noise(5 * 1024 * 1024, 42);
    let archive = tmp.path().join("dumps/srs.zst");
    let written = write_stream(&archive, &data[..], &WriteOptions::default()).expect("archive");
    assert_eq!(written.input_bytes, data.len() as u64);
    assert_eq!(mode(&archive), 0o600);
    assert!(partials(tmp.path()).is_empty());

    let verified = verify(&archive, Some(&written.sha256)).expect("verify");
    assert_eq!((verified.format, verified.entries), (Format::Zst, None));
    assert_eq!(verified.decompressed_bytes, data.len() as u64);

    let mut out = Vec::new();
    let n = stream_out(&archive, Some(&written.sha256), &mut out).expect("stream out");
    assert_eq!(n, data.len() as u64);
    assert!(out == data, "the stream came back different");

    let refused = extract(&archive, &tmp.path().join("x"), None);
    assert!(matches!(refused, Err(ArchiveError::NotTar { .. })), "{refused:?}");
}

/// Gives `limit` bytes, then fails.
struct FailingReader {
    data: Vec<u8>,
    at: usize,
    limit: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.limit {
            return Err(io::Error::other("the dump command died"));
        }
        let n = buf.len().min(self.limit - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn a_failing_reader_leaves_no_archive() {
    let tmp = TempDir::new().expect("tempdir");
    let archive = tmp.path().join("d/dump.zst");
    let reader = FailingReader { data: noise(2 * 1024 * 1024, 3), at: 0, limit: 1024 * 1024 };
    let err = write_stream(&archive, reader, &WriteOptions::default()).expect_err("must fail");
    assert_eq!(err.kind(), "input", "{err:?}");
    assert!(!archive.exists());
    assert!(partials(tmp.path()).is_empty(), "{:?}", partials(tmp.path()));
    assert_eq!(tree(&tmp.path().join("d")), BTreeSet::new());
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs failed ({status}): this test needs root, as in CI");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

#[test]
fn a_full_disk_leaves_no_archive_and_frees_the_space() {
    let fs_ = Tmpfs::mount("1m");
    let free_before = free_bytes(fs_.path()).expect("statvfs");
    assert!(free_before > 0 && free_before <= 1024 * 1024, "{free_before}");

    // A stream: 3 MB of noise into 1 MiB.
    let archive = fs_.path().join("backups/dump.zst");
    let err = write_stream(&archive, &noise(3 * 1024 * 1024, 11)[..], &WriteOptions::default()).expect_err("full");
    let ArchiveError::Write { source, .. } = &err else { panic!("expected a write error, got {err:?}") };
    assert_eq!(source.kind(), io::ErrorKind::StorageFull, "{source:?}");
    assert!(!archive.exists());
    assert!(partials(fs_.path()).is_empty());

    // A tree: the source is elsewhere, the archive goes to the full disk; the estimate says
    // beforehand that it cannot fit.
    let src_dir = TempDir::new().expect("tempdir");
    let src = src_dir.path().join("data");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join("big.bin"), noise(3 * 1024 * 1024, 12)).expect("write");
    assert!(estimate_size(std::slice::from_ref(&src)).expect("estimate") > free_bytes(fs_.path()).expect("statvfs"));
    let archive = fs_.path().join("backups/tree.tar.zst");
    let err = write_paths(&archive, &[src], &WriteOptions::default()).expect_err("full");
    assert_eq!(err.kind(), "write", "{err:?}");
    assert!(!archive.exists());
    assert!(partials(fs_.path()).is_empty());

    // The space is back (the directory created for the archives stays).
    let free_after = free_bytes(fs_.path()).expect("statvfs");
    assert!(free_before - free_after <= 8192, "before {free_before}, after {free_after}");
}

#[test]
fn corruption_is_detected() {
    let tmp = TempDir::new().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join("a"), noise(512 * 1024, 5)).expect("write");
    fs::write(src.join("b"), b"bbbb").expect("write");
    let archive = tmp.path().join("ok.tar.zst");
    let report = write_paths(&archive, std::slice::from_ref(&src), &WriteOptions::default()).expect("archive");

    // One byte flipped in the middle.
    let flipped = tmp.path().join("flipped.tar.zst");
    let mut bytes = fs::read(&archive).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&flipped, &bytes).expect("write");
    match verify(&flipped, Some(&report.sha256)) {
        Err(ArchiveError::ChecksumMismatch { archive, expected, actual }) => {
            assert_eq!(archive, flipped);
            assert_eq!(expected, report.sha256);
            assert_ne!(actual, report.sha256);
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    let message = verify(&flipped, Some(&report.sha256)).expect_err("corrupt").to_string();
    assert!(message.contains("checksum mismatch") && message.contains("flipped.tar.zst"), "{message}");
    // Without a manifest, the decode (zstd's frame checksum, the tar headers) still fails.
    let err = verify(&flipped, None).expect_err("corrupt");
    assert!(matches!(err.kind(), "decode" | "tar"), "{err:?}");
    // Neither restore path lets it through.
    let target = tmp.path().join("restore");
    let err = extract(&flipped, &target, Some(&report.sha256)).expect_err("corrupt");
    assert_eq!(err.kind(), "checksum-mismatch", "{err:?}");
    assert!(!target.exists());
    let mut out = Vec::new();
    let err = stream_out(&flipped, Some(&report.sha256), &mut out).expect_err("corrupt");
    assert_eq!(err.kind(), "checksum-mismatch", "{err:?}");
    assert!(out.is_empty());

    // Truncated, checked against the right checksum, and without one.
    let truncated = tmp.path().join("truncated.tar.zst");
    let bytes = fs::read(&archive).expect("read");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let err = verify(&truncated, Some(&report.sha256)).expect_err("truncated");
    assert_eq!(err.kind(), "checksum-mismatch", "{err:?}");
    let err = verify(&truncated, None).expect_err("truncated");
    assert!(matches!(err.kind(), "decode" | "tar"), "{err:?}");
    let err = extract(&truncated, &target, None).expect_err("truncated");
    assert!(matches!(err.kind(), "decode" | "tar"), "{err:?}");
    assert!(!target.exists());

    // The intact one still verifies.
    verify(&archive, Some(&report.sha256)).expect("intact");
}

/// One raw tar entry, its name and link name written into the header bytes as given.
struct Raw<'a> {
    path: &'a str,
    kind: EntryType,
    mode: u32,
    link: Option<&'a str>,
    data: &'a [u8],
}

fn raw(path: &str, kind: EntryType, mode: u32) -> Raw<'_> {
    Raw { path, kind, mode, link: None, data: b"" }
}

fn file(path: &str) -> Raw<'_> {
    Raw { path, kind: EntryType::Regular, mode: 0o644, link: None, data: b"data" }
}

fn link<'a>(path: &'a str, kind: EntryType, target: &'a str) -> Raw<'a> {
    Raw { path, kind, mode: 0o777, link: Some(target), data: b"" }
}

/// A `.tar.zst` of raw entries, bypassing the tar crate's path checks.
fn tar_zst(dir: &Path, name: &str, entries: &[Raw<'_>]) -> PathBuf {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = Header::new_gnu();
        let old = header.as_old_mut();
        old.name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        if let Some(target) = entry.link {
            old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_size(entry.data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(u64::from(rustix::process::geteuid().as_raw()));
        header.set_gid(u64::from(rustix::process::getegid().as_raw()));
        header.set_cksum();
        builder.append(&header, entry.data).expect("append");
    }
    let tar = builder.into_inner().expect("tar");
    let path = dir.join(format!("{name}.tar.zst"));
    fs::write(&path, zstd::encode_all(&tar[..], 3).expect("zstd")).expect("write");
    path
}

/// A malicious archive: its name, its entries, the entry refused, and a check of the reason.
type Case<'a> = (&'a str, Vec<Raw<'a>>, &'a str, fn(&Refusal) -> bool);

#[test]
fn malicious_archives_are_refused_whole() {
    let tmp = TempDir::new().expect("tempdir");
    let work = tmp.path().join("work");
    fs::create_dir(&work).expect("mkdir");
    let archives = tmp.path().join("archives");
    fs::create_dir(&archives).expect("mkdir");
    let abs = format!("/tend-archive-test-{}", std::process::id());
    assert!(!Path::new(&abs).exists());

    let cases: Vec<Case<'_>> = vec![
        ("parent", vec![file("good/file"), file("../escape")], "../escape", |r| *r == Refusal::ParentDir),
        ("absolute", vec![file("good/file"), file(&abs)], &abs, |r| *r == Refusal::Absolute),
        ("inner-parent", vec![file("good/file"), file("a/../../x")], "a/../../x", |r| *r == Refusal::ParentDir),
        ("symlink-absolute", vec![file("good/file"), link("l", EntryType::Symlink, "/etc/passwd")], "l", |r| {
            matches!(r, Refusal::AbsoluteLink { .. })
        }),
        ("symlink-outside", vec![file("good/file"), link("l", EntryType::Symlink, "../../x")], "l", |r| {
            matches!(r, Refusal::LinkOutside { .. })
        }),
        ("hardlink-outside", vec![file("good/file"), link("h", EntryType::Link, "../x")], "h", |r| {
            matches!(r, Refusal::HardLinkOutside { .. })
        }),
        ("hardlink-absolute", vec![file("good/file"), link("h", EntryType::Link, "/etc/passwd")], "h", |r| {
            matches!(r, Refusal::HardLinkOutside { .. })
        }),
        ("char-device", vec![file("good/file"), raw("dev", EntryType::Char, 0o644)], "dev", |r| {
            *r == Refusal::Special { kind: "character device" }
        }),
        ("block-device", vec![file("good/file"), raw("blk", EntryType::Block, 0o644)], "blk", |r| {
            *r == Refusal::Special { kind: "block device" }
        }),
        ("fifo", vec![file("good/file"), raw("fifo", EntryType::Fifo, 0o644)], "fifo", |r| {
            *r == Refusal::Special { kind: "FIFO" }
        }),
        ("setuid", vec![file("good/file"), Raw { mode: 0o4755, ..file("suid") }], "suid", |r| {
            *r == Refusal::SetId { mode: 0o4755 }
        }),
        ("setgid-file", vec![file("good/file"), Raw { mode: 0o2755, ..file("sgid") }], "sgid", |r| {
            *r == Refusal::SetId { mode: 0o2755 }
        }),
        // `s` is the root itself, so `s/..` is its parent, though it reads as the root.
        (
            "symlink-through-symlink",
            vec![file("good/file"), link("s", EntryType::Symlink, "."), link("t", EntryType::Symlink, "s/..")],
            "t",
            |r| matches!(r, Refusal::LinkOutside { .. }),
        ),
        // A link inside the target, then a file written through it.
        (
            "write-through-symlink",
            vec![file("good/file"), link("d", EntryType::Symlink, "good"), file("d/x")],
            "d/x",
            |r| matches!(r, Refusal::ThroughLink { .. }),
        ),
        // The same through a directory entry, where the link comes after.
        (
            "symlink-over-directory",
            vec![file("good/file"), file("e/x"), link("e", EntryType::Symlink, "good")],
            "e",
            |r| *r == Refusal::Duplicate,
        ),
    ];
    for (name, entries, entry, reason) in cases {
        let archive = tar_zst(&archives, name, &entries);
        let target = work.join("restore");
        match extract(&archive, &target, None) {
            Err(ArchiveError::Refused { entry: refused, reason: why, archive: named }) => {
                assert_eq!(refused, PathBuf::from(entry), "{name}");
                assert!(reason(&why), "{name}: {why:?}");
                assert_eq!(named, archive, "{name}");
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
        // All or nothing, and nothing outside.
        assert!(!target.exists(), "{name}: the target exists");
        assert_eq!(tree(&work), BTreeSet::new(), "{name}: left behind in the work directory");
        assert!(!tmp.path().join("escape").exists() && !tmp.path().join("x").exists(), "{name}");
        assert!(!Path::new(&abs).exists(), "{name}");
        // verify is about integrity only: these are well-formed archives.
        verify(&archive, None).expect(name);
    }
}

#[test]
fn a_hand_built_archive_with_links_inside_extracts() {
    let tmp = TempDir::new().expect("tempdir");
    let archive = tar_zst(
        tmp.path(),
        "links",
        &[
            raw("./", EntryType::Directory, 0o755),
            raw("d", EntryType::Directory, 0o2775),
            Raw { data: b"content", ..file("d/f") },
            link("d/h", EntryType::Link, "d/f"),
            link("d/l", EntryType::Symlink, "f"),
            link("top", EntryType::Symlink, "d/l"),
            link("up", EntryType::Symlink, "d/../d/f"),
        ],
    );
    let target = tmp.path().join("restore");
    let report = extract(&archive, &target, None).expect("extract");
    assert_eq!(report.entries, 6);
    assert_eq!(report.bytes, 7);
    assert_eq!(mode(&target.join("d")), 0o2775);
    let (f, h) = (fs::metadata(target.join("d/f")).expect("f"), fs::metadata(target.join("d/h")).expect("h"));
    assert_eq!(f.ino(), h.ino());
    assert_eq!(fs::read(target.join("top")).expect("through two links"), b"content");
    assert_eq!(fs::read(target.join("up")).expect("through up"), b"content");
    assert_eq!(fs::read_link(target.join("d/l")).expect("link"), PathBuf::from("f"));
}

#[test]
fn extracts_what_gnu_tar_makes() {
    let tmp = TempDir::new().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d/e")).expect("mkdir");
    let long = "l".repeat(180);
    fs::write(src.join("d/e").join(&long), b"long").expect("write");
    fs::write(src.join("d/f"), b"f").expect("write");
    symlink(format!("e/{long}"), src.join("d/link")).expect("symlink");
    for format in ["gnu", "pax"] {
        let tar = tmp.path().join(format!("{format}.tar"));
        let status = Command::new("tar")
            .args([&format!("--format={format}"), "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .expect("running GNU tar");
        assert!(status.success(), "tar: {status}");
        let archive = tmp.path().join(format!("{format}.tar.zst"));
        let data = fs::read(&tar).expect("read");
        fs::write(&archive, zstd::encode_all(&data[..], 3).expect("zstd")).expect("write");
        let target = tmp.path().join(format!("restore-{format}"));
        extract(&archive, &target, None).unwrap_or_else(|e| panic!("{format}: {e:?}"));
        assert_eq!(tree(&target), tree(&src), "{format}");
        assert_eq!(fs::read(target.join("d/link")).expect("through the link"), b"long", "{format}");
    }
}

#[test]
fn estimates_count_regular_files_without_following_links() {
    let tmp = TempDir::new().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a/b")).expect("mkdir");
    fs::write(src.join("a/one"), vec![0u8; 1000]).expect("write");
    fs::write(src.join("a/b/two"), vec![0u8; 234]).expect("write");
    let outside = tmp.path().join("outside");
    fs::write(&outside, vec![0u8; 100_000]).expect("write");
    symlink(&outside, src.join("a/link")).expect("symlink");
    symlink(tmp.path(), src.join("loop")).expect("symlink");
    assert_eq!(estimate_size(&[src]).expect("estimate"), 1234);
    assert!(estimate_size(&[tmp.path().join("missing")]).is_err());
    assert!(free_bytes(tmp.path()).expect("statvfs") > 0);
}

fn manifest(archive: &Path, backup: &str, started_ms: u64, sha256: &str, bytes: u64) -> Manifest {
    Manifest {
        archive: archive.file_name().expect("name").to_string_lossy().into_owned(),
        sha256: sha256.to_string(),
        bytes,
        files: None,
        input_bytes: 4,
        source: "exec srs-mongo: mongodump --archive".to_string(),
        started_ms,
        duration_ms: 1500,
        tend_version: catalog::TEND_VERSION.to_string(),
        spec_hash: "abc123".to_string(),
        backup: backup.to_string(),
        format: Format::of_path(archive).expect("format"),
    }
}

/// Writes a small archive of `backup` for the day `date` (YYYY-MM-DD at 03:15 UTC), with or
/// without its manifest.
fn archive_for(dest: &Path, backup: &str, date: &str, with_manifest: bool) -> PathBuf {
    let ts: tend_specs::calendar::Timestamp = format!("{date}T03:15:00Z").parse().expect("timestamp");
    let zoned = ts.to_zoned(tend_specs::calendar::LocalZone::utc().time_zone().clone());
    let path = dest.join(render_layout(LAYOUT, backup, &zoned).expect("layout"));
    let written = write_stream(&path, &b"data"[..], &WriteOptions::default()).expect("archive");
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_millis(ts.as_millisecond() as u64);
    File::options().write(true).open(&path).expect("open").set_modified(mtime).expect("mtime");
    if with_manifest {
        let m = manifest(&path, backup, ts.as_millisecond() as u64, &written.sha256, written.bytes);
        write_manifest(&path, &m).expect("manifest");
    }
    path
}

#[test]
fn manifests_round_trip_and_are_never_replaced() {
    let tmp = TempDir::new().expect("tempdir");
    let archive = tmp.path().join("x.tar.zst");
    fs::write(&archive, b"not really").expect("write");
    let m = Manifest { files: Some(12), ..manifest(&archive, "retro-db", 1_741_317_300_000, "00ff", 10) };
    let path = write_manifest(&archive, &m).expect("write");
    assert_eq!(path, tmp.path().join("x.tar.zst.manifest.json"));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(read_manifest(&archive).expect("read"), Some(m.clone()));
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
    assert_eq!(json["format"], "tar.zst");
    assert_eq!(json["files"], 12);
    assert_eq!(json["tend_version"], env!("CARGO_PKG_VERSION"));
    let again = write_manifest(&archive, &m);
    assert!(matches!(again, Err(catalog::CatalogError::ManifestExists { .. })), "{again:?}");
    assert!(partials(tmp.path()).is_empty());
    assert_eq!(read_manifest(&tmp.path().join("none.zst")).expect("read"), None);
}

#[test]
fn list_reports_complete_incomplete_and_leftover_archives() {
    let tmp = TempDir::new().expect("tempdir");
    let dest = tmp.path().join("backups");
    assert_eq!(list(&dest, "retro-db", LAYOUT).expect("nothing yet"), vec![]);

    let first = archive_for(&dest, "retro-db", "2025-02-27", true);
    let second = archive_for(&dest, "retro-db", "2025-03-01", true);
    let no_manifest = archive_for(&dest, "retro-db", "2025-03-02", false);
    archive_for(&dest, "other", "2025-03-02", true);
    let march = second.parent().expect("dir").to_path_buf();
    let partial = march.join(".2025-03-03_retro-db.tar.zst.partial-4242");
    fs::write(&partial, b"half").expect("write");
    let manifest_partial = march.join(".2025-03-01_retro-db.tar.zst.manifest.json.partial-4242");
    fs::write(&manifest_partial, b"{").expect("write");
    fs::write(march.join("notes.txt"), b"not an archive").expect("write");
    fs::write(march.join(".2025-03-03_other.tar.zst.partial-1"), b"another backup's").expect("write");
    // A file named by the layout whose manifest belongs to another backup: not ours.
    let foreign = march.join("2025-03-04_retro-db.tar.zst");
    fs::write(&foreign, b"x").expect("write");
    write_manifest(&foreign, &manifest(&foreign, "other", 1_741_000_000_000, "00", 1)).expect("manifest");
    // A corrupt manifest.
    let corrupt = march.join("2025-03-05_retro-db.tar.zst");
    fs::write(&corrupt, b"x").expect("write");
    fs::write(catalog::manifest_path(&corrupt), b"{not json").expect("write");
    // Directories that do not fit the layout are not walked.
    fs::create_dir_all(dest.join("retro-db/misc")).expect("mkdir");
    fs::write(dest.join("retro-db/misc/2025-03-06_retro-db.tar.zst"), b"x").expect("write");

    let entries = list(&dest, "retro-db", LAYOUT).expect("list");
    let summary: Vec<(PathBuf, EntryState)> = entries.iter().map(|e| (e.path.clone(), e.state.clone())).collect();
    let by_path = |p: &Path| entries.iter().find(|e| e.path == p).unwrap_or_else(|| panic!("{} listed", p.display()));
    assert_eq!(entries.len(), 6, "{summary:#?}");
    // Oldest first, by manifest time or mtime: the leftovers were written just now.
    assert_eq!(entries[0].path, first, "{summary:#?}");
    assert_eq!(entries[1].path, second, "{summary:#?}");
    assert_eq!(entries[2].path, no_manifest, "{summary:#?}");
    assert_eq!(by_path(&first).state, EntryState::Complete);
    assert_eq!(by_path(&first).manifest.as_ref().expect("manifest").backup, "retro-db");
    assert_eq!(by_path(&first).time().to_string(), "2025-02-27T03:15:00Z");
    assert_eq!(by_path(&no_manifest).state, EntryState::MissingManifest);
    assert_eq!(by_path(&no_manifest).time().to_string(), "2025-03-02T03:15:00Z");
    assert_eq!(by_path(&partial).state, EntryState::Partial);
    assert_eq!(by_path(&partial).size, 4);
    assert_eq!(by_path(&manifest_partial).state, EntryState::Partial);
    assert!(
        matches!(&by_path(&corrupt).state, EntryState::BadManifest { problem } if problem.contains("corrupt")),
        "{summary:#?}"
    );

    let other = list(&dest, "other", LAYOUT).expect("list");
    assert_eq!(other.len(), 1, "{other:#?}");
    assert_eq!(other[0].state, EntryState::Complete);
}
