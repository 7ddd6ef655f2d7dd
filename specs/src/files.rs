//! Reading the files that specs and the operator name: secrets (`fromFile`), single files
//! bind-mounted into containers (hashed, so that editing one recreates), zone files,
//! spec files and the agent's configuration file. One rule for all of them, in one place:
//!
//! - the file is a regular file; a symbolic link is followed to one. A FIFO would block the
//!   reader until some writer came (forever, in the agent's loop), a device such as
//!   `/dev/zero` never ends, a directory is not text;
//! - it is looked at before it is opened, so the open of a device (which may do something:
//!   a tape rewinds) is never attempted, and then opened with `O_NONBLOCK | O_NOCTTY`, so
//!   that even a FIFO swapped in between cannot block the open, and checked again on the
//!   open descriptor before a byte is read;
//! - at most its cap is read ([`Cap`]): a file that is larger, or grows while it is read,
//!   is refused rather than read into memory.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The most tend reads of one kind of file, and what that kind is called in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// The largest size read, in bytes.
    pub max: u64,
    /// What the file is, for messages: "a secret", "a spec file".
    pub what: &'static str,
}

/// A secret read with `fromFile`: 64 KiB. Passwords, tokens and keys are far smaller; the
/// value ends up in an environment, where Linux allows one string at most 128 KiB, and
/// each secret is read on every load of the specs.
pub const SECRET: Cap = Cap { max: 64 << 10, what: "a secret" };

/// A single file bind-mounted into a container, read to be hashed: 16 MiB. A larger file
/// is still mounted, only not hashed (editing it does not recreate); see
/// docs/decisions.md, "Mounted files are hashed".
pub const HASHED_MOUNT: Cap = Cap { max: 16 << 20, what: "a hashed mounted file" };

/// A spec file: 4 MiB, a guard against pointing tend at the wrong file (the largest spec
/// set of the examples is a few KiB).
pub const SPEC_FILE: Cap = Cap { max: 4 << 20, what: "a spec file" };

/// The agent's configuration file: 1 MiB (a full one is under 1 KiB).
pub const AGENT_CONFIG: Cap = Cap { max: 1 << 20, what: "the agent configuration" };

/// A zone file of the tz database: 1 MiB (the largest in tzdata is under 4 KiB).
pub const ZONE_FILE: Cap = Cap { max: 1 << 20, what: "a zone file" };

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It could not be looked at, opened or read (missing, no permission, …).
    #[error("cannot read `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is not a regular file (nor a symbolic link to one).
    #[error("`{}` is not a regular file ({kind}); {what} is read only from a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead: "a FIFO", "a character device", …
        kind: &'static str,
        /// [`Cap::what`].
        what: &'static str,
    },
    /// It is larger than its cap.
    #[error("`{}` is {size} bytes; {what} is at most {max}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least this, when it grew while it was read).
        size: u64,
        /// [`Cap::max`].
        max: u64,
        /// [`Cap::what`].
        what: &'static str,
    },
}

impl ReadError {
    /// The whole problem in one line, for a diagnostic: the message, and for a read that
    /// failed, why (`cannot read `/x`: no such file or directory`).
    pub fn message(&self) -> String {
        match self {
            Self::Read { source, .. } => format!("{self}: {}", io_reason(source)),
            _ => self.to_string(),
        }
    }
}

impl ReadError {
    /// What is wrong, without naming the file (for a message that names it already):
    /// `it is 70000 bytes; a secret is at most 65536`, `no such file or directory`.
    pub fn reason(&self) -> String {
        match self {
            Self::Read { source, .. } => io_reason(source),
            Self::NotRegular { kind, what, .. } => {
                format!("it is not a regular file ({kind}); {what} is read only from a regular file")
            }
            Self::TooLarge { size, max, what, .. } => format!("it is {size} bytes; {what} is at most {max}"),
        }
    }
}

/// An I/O error as a diagnostic says it: the common kinds in plain words, without the
/// `(os error N)` suffix.
pub fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// What a file that is not regular is, for messages.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads the regular file at `path` (a symbolic link is followed), at most `cap.max` bytes.
pub fn read(path: &Path, cap: Cap) -> Result<Vec<u8>, ReadError> {
    let read_err = |source| ReadError::Read { path: path.to_path_buf(), source };
    let regular = |meta: &Metadata| {
        if meta.is_file() {
            Ok(())
        } else {
            Err(ReadError::NotRegular { path: path.to_path_buf(), kind: kind_of(meta), what: cap.what })
        }
    };
    let too_large = |size: u64| ReadError::TooLarge { path: path.to_path_buf(), size, max: cap.max, what: cap.what };
    regular(&std::fs::metadata(path).map_err(read_err)?)?;
    let file = open_nonblocking(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    regular(&meta)?;
    if meta.len() > cap.max {
        return Err(too_large(meta.len()));
    }
    // The size may change while the file is read: read one byte past the cap to tell.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.max.saturating_add(1)).read_to_end(&mut bytes).map_err(read_err)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > cap.max {
        return Err(too_large(read));
    }
    Ok(bytes)
}

/// Reads a regular file as UTF-8 text, at most `cap.max` bytes. `Ok(Err(offset))`: the file
/// was read but is not UTF-8 (the offset of the first invalid byte).
pub fn read_text(path: &Path, cap: Cap) -> Result<Result<String, usize>, ReadError> {
    let bytes = read(path, cap)?;
    Ok(String::from_utf8(bytes).map_err(|e| e.utf8_error().valid_up_to()))
}

/// Opens `path` for reading so that the open itself cannot block: `O_NONBLOCK` (a FIFO
/// would wait for a writer) and `O_NOCTTY` (a terminal must not become the controlling one).
fn open_nonblocking(path: &Path) -> io::Result<File> {
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    const SMALL: Cap = Cap { max: 16, what: "a test file" };

    /// Runs `f` on its own thread and fails the test if it does not return within 10 s,
    /// so that a regression that blocks fails instead of hanging the test run.
    fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what} did not return within 10 s: it blocks"))
    }

    /// Makes a FIFO at `path`.
    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
    }

    fn read_in_time(path: &Path, cap: Cap) -> Result<Vec<u8>, String> {
        let path = path.to_path_buf();
        within(&format!("reading {}", path.display()), move || read(&path, cap).map_err(|e| e.message()))
    }

    #[test]
    fn a_regular_file_and_a_symlink_to_one_are_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, "hello").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert_eq!(read_in_time(&file, SMALL).as_deref(), Ok(&b"hello"[..]));
        assert_eq!(read_in_time(&link, SMALL).as_deref(), Ok(&b"hello"[..]));
        // Exactly the cap is fine.
        std::fs::write(&file, [b'x'; 16]).expect("write");
        assert_eq!(read_in_time(&file, SMALL).map(|b| b.len()), Ok(16));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_also_through_a_symlink() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
        for path in [&fifo, &link] {
            let e = read_in_time(path, SECRET).expect_err("a FIFO");
            assert_eq!(
                e,
                format!(
                    "`{}` is not a regular file (a FIFO); a secret is read only from a regular file",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn dev_zero_and_a_directory_are_refused() {
        let e = read_in_time(Path::new("/dev/zero"), SECRET).expect_err("/dev/zero");
        assert_eq!(
            e,
            "`/dev/zero` is not a regular file (a character device); a secret is read only from a regular file"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let e = read_in_time(dir.path(), SECRET).expect_err("a directory");
        assert!(e.contains("is not a regular file (a directory)"), "{e}");
    }

    #[test]
    fn a_file_over_its_cap_is_refused_with_its_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("big");
        std::fs::write(&file, vec![b'x'; 70_000]).expect("write");
        let e = read_in_time(&file, SECRET).expect_err("too large");
        assert_eq!(e, format!("`{}` is 70000 bytes; a secret is at most 65536", file.display()));
    }

    #[test]
    fn a_missing_file_says_so_in_plain_words() {
        let e = read_in_time(Path::new("/no/such/file"), SECRET).expect_err("missing");
        assert_eq!(e, "cannot read `/no/such/file`: no such file or directory");
    }

    #[test]
    fn text_that_is_not_utf8_gives_the_offset_of_the_first_bad_byte() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"ab\xffc").expect("write");
        assert_eq!(read_text(&file, SMALL).expect("read"), Err(2));
        std::fs::write(&file, "abc").expect("write");
        assert_eq!(read_text(&file, SMALL).expect("read"), Ok("abc".to_string()));
    }
}
