//! Files the specs name (secrets, mounted files): read only when they are regular files,
//! never blocking, within their caps; every problem is a spec error at the field. Each
//! load runs under a timeout, so that a regression that blocks fails instead of hanging.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::{SECRET, lines, web, write};
use crate::diag::Diagnostic;
use crate::load::load_path;
use crate::{Desired, Env};

/// Loads `dir` on its own thread; fails the test if that takes more than 10 s.
fn load_in_time(dir: &Path) -> Result<Desired, Vec<Diagnostic>> {
    let (tx, rx) = mpsc::channel();
    let path = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(load_path(&path));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("loading {} did not return within 10 s: it blocks", dir.display()))
}

/// The problems of loading `dir`, as `LINE:COL: MESSAGE`.
fn problems_in(dir: &Path) -> Vec<String> {
    let diags = load_in_time(dir).expect_err("problems");
    diags
        .iter()
        .map(|d| {
            let loc = d.location.as_ref().unwrap_or_else(|| panic!("a location: {d}"));
            format!("{}:{}: {}", loc.line, loc.column, d.message)
        })
        .collect()
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
        .expect("mkfifo");
}

/// A spec directory holding the service `web` with `env: {X: {fromFile: PATH}}` (line 5,
/// the path at column 23), a docker service or a systemd one.
fn secret_spec(dir: &Path, path: &Path, systemd: bool) -> PathBuf {
    let runtime = if systemd { "  runtime: systemd\n  exec: [/bin/true]\n" } else { "  image: busybox:1\n" };
    let text = format!(
        "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  env: {{X: {{fromFile: {}}}}}\n{runtime}",
        path.display()
    );
    write(dir, "web.yaml", &text)
}

#[test]
fn a_secret_from_a_fifo_is_refused_at_the_field_without_blocking() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let link = dir.path().join("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
    for path in [&fifo, &link] {
        secret_spec(dir.path(), path, false);
        assert_eq!(
            problems_in(dir.path()),
            [format!(
                "5:23: secret file for `X`: `{}` is not a regular file (a FIFO); a secret is read only from a regular file",
                path.display()
            )]
        );
    }
}

#[test]
fn a_secret_from_dev_zero_or_a_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    secret_spec(dir.path(), Path::new("/dev/zero"), false);
    assert_eq!(
        problems_in(dir.path()),
        [
            "5:23: secret file for `X`: `/dev/zero` is not a regular file (a character device); a secret is read only from a regular file"
        ]
    );
    secret_spec(dir.path(), Path::new("/tmp"), true);
    let got = problems_in(dir.path());
    assert!(got.len() == 1 && got[0].contains("is not a regular file (a directory)"), "{got:?}");
}

#[test]
fn a_secret_over_64_kib_is_refused_with_its_size_and_the_cap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 70_000]).expect("write");
    secret_spec(dir.path(), &big, false);
    assert_eq!(
        problems_in(dir.path()),
        [format!("5:23: secret file for `X`: `{}` is 70000 bytes; a secret is at most 65536", big.display())]
    );
    // Exactly 64 KiB is read.
    std::fs::write(&big, vec![b'x'; 65_536]).expect("write");
    load_in_time(dir.path()).unwrap_or_else(|d| panic!("{}", lines(&d)));
}

#[test]
fn a_secret_through_a_symlink_to_a_regular_file_is_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(dir.path(), "secret", &format!("{SECRET}\n"));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    secret_spec(dir.path(), &link, false);
    let desired = load_in_time(dir.path()).unwrap_or_else(|d| panic!("{}", lines(&d)));
    let Some(Env::Secret { value, .. }) = desired.services["web"].env.get("X") else { panic!("a secret") };
    assert_eq!(value.expose(), SECRET);
}

#[test]
fn a_secret_holding_a_nul_is_refused_for_every_runtime_without_showing_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SECRET}\0tail\n")).expect("write");
    for systemd in [false, true] {
        secret_spec(dir.path(), &file, systemd);
        let got = problems_in(dir.path());
        assert_eq!(
            got,
            [format!(
                "5:23: secret file `{}` for `X` contains a NUL character, which an environment cannot hold",
                file.display()
            )],
            "systemd: {systemd}"
        );
        assert!(!got[0].contains(SECRET), "{got:?}");
    }
}

#[test]
fn a_mounted_fifo_or_device_is_mounted_and_never_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let link = dir.path().join("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
    let volumes =
        format!("volumes: [\"{}:/a\", \"{}:/b\", \"/dev/zero:/c\", \"/dev/null:/d\"]", fifo.display(), link.display());
    write(dir.path(), "web.yaml", &web(&volumes));
    let desired = load_in_time(dir.path()).unwrap_or_else(|d| panic!("{}", lines(&d)));
    assert_eq!(desired.services["web"].spec.volumes.len(), 4);
}

#[test]
fn a_mounted_file_over_16_mib_is_mounted_and_not_hashed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let big = dir.path().join("big");
    std::fs::File::create(&big).and_then(|f| f.set_len((16 << 20) + 1)).expect("a sparse file");
    write(dir.path(), "web.yaml", &web(&format!("volumes: [\"{}:/big\"]", big.display())));
    let before = load_in_time(dir.path()).unwrap_or_else(|d| panic!("{}", lines(&d)));
    std::fs::write(&big, b"small now").expect("write");
    let after = load_in_time(dir.path()).unwrap_or_else(|d| panic!("{}", lines(&d)));
    assert_ne!(before.services["web"].hash, after.services["web"].hash, "the small file is hashed");
}

#[test]
fn a_spec_file_that_is_a_fifo_is_reported_without_blocking() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "web.yaml", &web(""));
    let fifo = dir.path().join("more.yaml");
    mkfifo(&fifo);
    let diags = load_in_time(dir.path()).expect_err("a FIFO");
    assert_eq!(
        lines(&diags),
        format!(
            "{}: it is not a regular file (a FIFO); a spec file is read only from a regular file\n",
            fifo.display()
        )
    );
    let diags = load_in_time(&fifo).expect_err("a FIFO named");
    assert_eq!(diags.len(), 1, "{}", lines(&diags));
}

#[test]
fn the_secrets_of_a_set_take_at_most_16_mib_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, vec![b'x'; 64 << 10]).expect("write");
    // 256 secrets of 64 KiB are 16 MiB: the bound itself.
    let env =
        |n: usize| (0..n).map(|i| format!("S{i}: {{fromFile: {}}}", secret.display())).collect::<Vec<_>>().join(", ");
    write(dir.path(), "web.yaml", &web(&format!("env: {{{}}}", env(256))));
    load_in_time(dir.path()).unwrap_or_else(|d| panic!("{}", lines(&d)));
    write(dir.path(), "web.yaml", &web(&format!("env: {{{}}}", env(257))));
    let got = problems_in(dir.path());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("the secrets of this spec set would take 16842752 bytes together; at most 16777216"),
        "{got:?}"
    );
}
