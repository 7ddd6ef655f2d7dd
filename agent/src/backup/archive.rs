//! Archives on disk: writing them so that a final name is always a whole archive, verifying
//! them with a full read, and extracting them all or nothing.
//!
//! Two formats, told apart by the file name:
//!
//! - `.tar.zst`: a tar (GNU headers, with GNU long-name entries for long paths) of files,
//!   directories and symlinks, compressed with zstd. Each source path is stored under its
//!   absolute path minus the leading `/` (`/retro/db/x` is `retro/db/x`).
//! - `.zst`: a zstd-compressed copy of a stream, such as the stdout of `mongodump --archive`.
//!
//! Writing goes to a temporary sibling `.{name}.partial-{pid}` (mode 0600, created with
//! `O_EXCL`), is fsynced, then renamed to the final name without ever replacing an existing
//! file, and the directory is fsynced. On any error the temporary file is removed, so a final
//! name is never a partial archive. The sha256 recorded for an archive is the sha256 of the
//! compressed bytes, i.e. of the file as it lies on disk, so copies can be checked with
//! `sha256sum`.
//!
//! Extraction refuses, naming the entry, anything that could write or point outside the
//! target: `..` components, absolute paths, symlinks whose target is absolute or resolves
//! outside the target (following the archive's other symlinks the way the kernel would),
//! hard links to anything but a regular file extracted earlier from the same archive,
//! entries written through a symlink, device and FIFO entries, and setuid/setgid bits. It
//! extracts into a temporary sibling of the target and renames it into place at the end: all
//! or nothing.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header, HeaderMode};
use tracing::{debug, info_span, warn};

/// The size of the copy buffers.
const BUFFER: usize = 256 * 1024;
/// What sits between a file's name and the writer's pid in a temporary name.
pub(crate) const PARTIAL_MARK: &str = ".partial-";
/// How many symlinks one resolution may follow before it is called a loop (Linux's limit).
const MAX_LINK_HOPS: usize = 40;

/// The two kinds of archive, told apart by the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Format {
    /// A tar of files, directories and symlinks, compressed with zstd (`*.tar.zst`).
    #[serde(rename = "tar.zst")]
    TarZst,
    /// A zstd-compressed copy of a stream, such as a database dump (`*.zst`).
    #[serde(rename = "zst")]
    Zst,
}

impl Format {
    /// The format of an archive by its file name: `*.tar.zst` or `*.zst`; `None` for others.
    pub fn of_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.as_bytes();
        if name.ends_with(b".tar.zst") {
            Some(Format::TarZst)
        } else if name.ends_with(b".zst") {
            Some(Format::Zst)
        } else {
            None
        }
    }

    /// The name used in manifests and messages: `tar.zst` or `zst`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::TarZst => "tar.zst",
            Format::Zst => "zst",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an archive is written.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// The zstd level (1–19; 3 is zstd's default, fast with a good ratio).
    pub level: i32,
    /// zstd worker threads: 0 compresses on the calling thread, N > 0 on N workers beside it.
    pub threads: u32,
    /// Incremented by the number of uncompressed bytes as they go in, for a progress display
    /// that polls it from another thread.
    pub progress: Option<Arc<AtomicU64>>,
}

impl Default for WriteOptions {
    fn default() -> WriteOptions {
        let d = tend_specs::backup::Compression::default();
        WriteOptions { level: i32::try_from(d.level).unwrap_or(3), threads: d.threads, progress: None }
    }
}

/// What a finished archive is: the facts its manifest records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// sha256 of the archive file (the compressed bytes), lowercase hex.
    pub sha256: String,
    /// Size of the archive file in bytes.
    pub bytes: u64,
    /// Uncompressed bytes that went in (for a tar, the size of the tar stream).
    pub input_bytes: u64,
}

/// What [`write_paths`] archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathsReport {
    /// sha256 of the archive file (the compressed bytes), lowercase hex.
    pub sha256: String,
    /// Size of the archive file in bytes.
    pub bytes: u64,
    /// Entries stored: directories, regular files and symlinks.
    pub files: u64,
    /// Uncompressed bytes that went in: the size of the tar stream.
    pub input_bytes: u64,
    /// Sockets, FIFOs and device files that were left out.
    pub skipped: Vec<PathBuf>,
    /// Files that changed (size or modification time) or vanished while being read. A file
    /// that shrank is padded with zeros and one that grew is cut at its first size, so the
    /// tar stays well formed, but its content in the archive is not a consistent copy.
    pub changed: Vec<PathBuf>,
}

/// What [`verify`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The format, by the file name.
    pub format: Format,
    /// sha256 of the archive file, lowercase hex.
    pub sha256: String,
    /// Size of the archive file in bytes.
    pub bytes: u64,
    /// Tar entries read, headers and bodies (`None` for a `.zst` stream).
    pub entries: Option<u64>,
    /// Size of the decompressed content.
    pub decompressed_bytes: u64,
}

/// What an extraction may write: where, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The paths (relative, as stored: `srv/data` for `/srv/data`) the archive may hold.
    /// Every entry must be one of them or inside one; each of them, when present, is a
    /// directory or a regular file, never a link; and every link must resolve inside the
    /// one that holds it, without passing above it. Empty: the whole target is the one
    /// root (for archives not made by a Backup).
    pub roots: Vec<PathBuf>,
    /// The most bytes of file content written; past it the extraction stops (a
    /// decompression bomb, a sparse file that would fill the disk).
    pub max_bytes: u64,
}

impl Limits {
    /// No roots, no size bound: the whole target is the root.
    pub fn none() -> Limits {
        Limits { roots: Vec::new(), max_bytes: u64::MAX }
    }

    /// The root holding `rel`: `Some(root)`, `Some("")` with no roots; `None` when it is
    /// outside every root.
    fn root_of(&self, rel: &Path) -> Option<PathBuf> {
        if self.roots.is_empty() {
            return Some(PathBuf::new());
        }
        self.roots.iter().find(|r| rel.starts_with(r)).cloned()
    }
}

/// What [`extract`] restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractReport {
    /// sha256 of the archive file, lowercase hex.
    pub sha256: String,
    /// Entries restored: directories, regular files, symlinks and hard links.
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Why [`extract`] refused an archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The entry's path has a `..` component.
    ParentDir,
    /// The entry's path is absolute.
    Absolute,
    /// The entry's path is empty.
    EmptyPath,
    /// A symlink or hard link without a target.
    NoLinkTarget,
    /// A symlink with an absolute target.
    AbsoluteLink {
        /// The link's target.
        target: PathBuf,
    },
    /// A symlink that resolves outside the target directory.
    LinkOutside {
        /// The link's target.
        target: PathBuf,
    },
    /// A symlink whose resolution follows more than 40 symlinks.
    LinkLoop {
        /// The link's target.
        target: PathBuf,
    },
    /// A hard link to something other than a regular file extracted earlier from the archive.
    HardLinkOutside {
        /// The link's target.
        target: PathBuf,
    },
    /// A character device, block device or FIFO.
    Special {
        /// What it is.
        kind: &'static str,
    },
    /// A setuid bit, or a setgid bit on anything but a directory.
    SetId {
        /// The entry's mode bits.
        mode: u32,
    },
    /// The entry would be written through a symlink of the archive.
    ThroughLink {
        /// The symlink.
        link: PathBuf,
    },
    /// The path was already extracted from this archive.
    Duplicate,
    /// An entry type tend does not restore.
    Unsupported {
        /// The tar type byte.
        kind: u8,
    },
    /// An owner id that does not fit a uid or gid.
    BadOwner {
        /// The id.
        id: u64,
    },
    /// The entry is outside every path the Backup covers.
    OutsideSources {
        /// The paths it covers.
        roots: String,
    },
    /// A path the Backup covers is stored as something other than a directory or a file.
    RootKind {
        /// What it is.
        kind: &'static str,
    },
    /// The archive holds more than it may write.
    TooLarge {
        /// The bound, in bytes.
        max_bytes: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ParentDir => f.write_str("its path has a `..` component"),
            Refusal::Absolute => f.write_str("its path is absolute"),
            Refusal::EmptyPath => f.write_str("its path is empty"),
            Refusal::NoLinkTarget => f.write_str("it is a link without a target"),
            Refusal::AbsoluteLink { target } => {
                write!(f, "it is a symlink to an absolute path ({})", shown_entry(target))
            }
            Refusal::LinkOutside { target } => {
                write!(f, "it is a symlink pointing outside the target ({})", shown_entry(target))
            }
            Refusal::LinkLoop { target } => {
                write!(f, "it is a symlink that loops ({})", shown_entry(target))
            }
            Refusal::HardLinkOutside { target } => {
                write!(
                    f,
                    "it is a hard link to {}, which is not a file extracted from this archive",
                    shown_entry(target)
                )
            }
            Refusal::Special { kind } => write!(f, "it is a {kind}"),
            Refusal::SetId { mode } => write!(f, "it has a setuid or setgid bit (mode {mode:04o})"),
            Refusal::ThroughLink { link } => {
                write!(f, "it would be written through the symlink {}", shown_entry(link))
            }
            Refusal::Duplicate => f.write_str("the path appears twice in the archive"),
            Refusal::Unsupported { kind } => write!(f, "its tar type {:?} is not restored", char::from(*kind)),
            Refusal::BadOwner { id } => write!(f, "its owner id {id} is out of range"),
            Refusal::OutsideSources { roots } => write!(f, "it is outside the paths the Backup covers ({roots})"),
            Refusal::RootKind { kind } => {
                write!(f, "it is a path the Backup covers, stored as a {kind}: only a directory or a file restores")
            }
            Refusal::TooLarge { max_bytes } => write!(
                f,
                "the archive writes more than {max_bytes} bytes, more than its manifest recorded or the free space allows: a decompression bomb or the wrong archive"
            ),
        }
    }
}

/// Errors of writing, verifying and extracting archives.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A path given to this module cannot be used.
    #[error("invalid path {path}: {problem}")]
    InvalidPath {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A directory could not be created.
    #[error("creating directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The final name of an archive already exists: archives are never overwritten.
    #[error("archive {path} already exists (archives are never overwritten)")]
    Exists {
        /// The archive.
        path: PathBuf,
    },
    /// The temporary file could not be created.
    #[error("creating temporary archive {path}")]
    CreatePartial {
        /// The temporary file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The zstd compressor could not be set up.
    #[error("setting up zstd for archive {archive}")]
    Compressor {
        /// The archive.
        archive: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A source file or directory could not be read.
    #[error("reading {path}")]
    ReadSource {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The input stream failed.
    #[error("reading the input stream of archive {archive}")]
    Input {
        /// The archive being written.
        archive: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the archive failed (disk full, I/O error).
    #[error("writing archive {archive}")]
    Write {
        /// The archive being written.
        archive: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// fsync failed.
    #[error("syncing {path} to disk")]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The rename into place failed.
    #[error("renaming {from} to {to}")]
    Rename {
        /// The temporary name.
        from: PathBuf,
        /// The final name.
        to: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An archive could not be opened.
    #[error("opening archive {archive}")]
    Open {
        /// The archive.
        archive: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An archive could not be read.
    #[error("reading archive {archive}")]
    ReadArchive {
        /// The archive.
        archive: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file name is neither `*.tar.zst` nor `*.zst`.
    #[error("{archive} is not an archive (its name ends neither in .tar.zst nor in .zst)")]
    UnknownFormat {
        /// The file.
        archive: PathBuf,
    },
    /// Extraction needs a `.tar.zst`.
    #[error("{archive} is a stream archive (.zst), not a tar: it restores through a command")]
    NotTar {
        /// The archive.
        archive: PathBuf,
    },
    /// The archive's sha256 is not the expected one.
    #[error("archive {archive}: checksum mismatch (expected sha256 {expected}, actual {actual})")]
    ChecksumMismatch {
        /// The archive.
        archive: PathBuf,
        /// The sha256 the manifest records.
        expected: String,
        /// The sha256 of the file.
        actual: String,
    },
    /// The zstd stream is corrupt or truncated.
    #[error("archive {archive}: decompressing")]
    Decode {
        /// The archive.
        archive: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The tar inside is corrupt or truncated (or the archive is not a tar at all).
    #[error("archive {archive}: reading the tar entries (after {entries} good ones)")]
    Tar {
        /// The archive.
        archive: PathBuf,
        /// The entries read before the problem.
        entries: u64,
        /// What is wrong, without the archive's content ([`tar_problem`]).
        #[source]
        source: io::Error,
    },
    /// An entry is refused; nothing of the archive is restored.
    #[error("archive {archive}: refusing entry {}: {reason}", shown_entry(entry))]
    Refused {
        /// The archive.
        archive: PathBuf,
        /// The entry's path as stored.
        entry: PathBuf,
        /// Why.
        reason: Refusal,
    },
    /// The restore target exists and is not an empty directory.
    #[error("restore target {path} exists and is not an empty directory")]
    TargetNotEmpty {
        /// The target.
        path: PathBuf,
    },
    /// The restore target could not be examined.
    #[error("examining restore target {path}")]
    Target {
        /// The target.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing an extracted entry failed.
    #[error("archive {archive}: extracting {}", shown_entry(entry))]
    Extract {
        /// The archive.
        archive: PathBuf,
        /// The entry's path as stored.
        entry: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The writer of [`stream_out`] failed (e.g. the restore command exited).
    #[error("archive {archive}: writing the decompressed stream")]
    Output {
        /// The archive.
        archive: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// A fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ArchiveError::InvalidPath { .. } => "invalid-path",
            ArchiveError::CreateDir { .. } => "create-dir",
            ArchiveError::Exists { .. } => "exists",
            ArchiveError::CreatePartial { .. } => "create-partial",
            ArchiveError::Compressor { .. } => "compressor",
            ArchiveError::ReadSource { .. } => "read-source",
            ArchiveError::Input { .. } => "input",
            ArchiveError::Write { .. } => "write",
            ArchiveError::Sync { .. } => "sync",
            ArchiveError::Rename { .. } => "rename",
            ArchiveError::Open { .. } => "open",
            ArchiveError::ReadArchive { .. } => "read-archive",
            ArchiveError::UnknownFormat { .. } => "unknown-format",
            ArchiveError::NotTar { .. } => "not-tar",
            ArchiveError::ChecksumMismatch { .. } => "checksum-mismatch",
            ArchiveError::Decode { .. } => "decode",
            ArchiveError::Tar { .. } => "tar",
            ArchiveError::Refused { .. } => "refused",
            ArchiveError::TargetNotEmpty { .. } => "target-not-empty",
            ArchiveError::Target { .. } => "target",
            ArchiveError::Extract { .. } => "extract",
            ArchiveError::Output { .. } => "output",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// A zstd-compressed archive being written to a temporary sibling of its final name.
///
/// Bytes written to it are compressed; [`ArchiveWriter::finish`] fsyncs the file, renames it
/// to the final name (never replacing an existing file) and fsyncs the directory. Dropped
/// without `finish`, or when `finish` fails, it removes the temporary file.
pub struct ArchiveWriter {
    final_path: PathBuf,
    partial: PathBuf,
    encoder: Option<zstd::stream::write::Encoder<'static, HashingWriter<File>>>,
    input_bytes: u64,
    progress: Option<Arc<AtomicU64>>,
    /// Whether dropping removes the temporary file.
    armed: bool,
}

impl ArchiveWriter {
    /// Starts an archive: creates the missing parent directories (0700), checks that the
    /// final name does not exist, and creates `.{name}.partial-{pid}` beside it (0600,
    /// `O_EXCL`).
    pub fn create(final_path: &Path, options: &WriteOptions) -> Result<ArchiveWriter, ArchiveError> {
        let partial = partial_path(final_path)?;
        let parent = parent_of(final_path);
        create_dirs(parent).map_err(|source| ArchiveError::CreateDir { path: parent.to_path_buf(), source })?;
        if fs::symlink_metadata(final_path).is_ok() {
            return Err(ArchiveError::Exists { path: final_path.to_path_buf() });
        }
        let file =
            create_private(&partial).map_err(|source| ArchiveError::CreatePartial { path: partial.clone(), source })?;
        // From here on, dropping `writer` removes the temporary file.
        let mut writer = ArchiveWriter {
            final_path: final_path.to_path_buf(),
            partial,
            encoder: None,
            input_bytes: 0,
            progress: options.progress.clone(),
            armed: true,
        };
        let compressor = |source| ArchiveError::Compressor { archive: final_path.to_path_buf(), source };
        let mut encoder =
            zstd::stream::write::Encoder::new(HashingWriter::new(file), options.level).map_err(compressor)?;
        // A frame checksum lets verify and restore catch corruption even without a manifest.
        encoder.include_checksum(true).map_err(compressor)?;
        if options.threads > 0 {
            encoder.multithread(options.threads).map_err(compressor)?;
            // Small jobs keep the workers' buffers small (zstd's default job is 4 windows):
            // 2 MiB costs < 0.1 % of ratio and keeps two workers well under 64 MB.
            encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(JOB_SIZE)).map_err(compressor)?;
        }
        writer.encoder = Some(encoder);
        debug!(partial = %writer.partial.display(), "archive started");
        Ok(writer)
    }

    /// The name the archive gets when finished.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The temporary name it is written under.
    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Uncompressed bytes written so far.
    pub fn input_bytes(&self) -> u64 {
        self.input_bytes
    }

    /// Ends the zstd stream, fsyncs, renames to the final name and fsyncs the directory.
    pub fn finish(mut self) -> Result<Written, ArchiveError> {
        let write_error = |source| ArchiveError::Write { archive: self.final_path.clone(), source };
        let encoder = self
            .encoder
            .take()
            .ok_or_else(|| write_error(io::Error::other("the archive writer was already finished")))?;
        let HashingWriter { inner: file, hasher, bytes } = encoder.finish().map_err(write_error)?;
        file.sync_all().map_err(|source| ArchiveError::Sync { path: self.partial.clone(), source })?;
        drop(file);
        rename_noreplace(&self.partial, &self.final_path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                ArchiveError::Exists { path: self.final_path.clone() }
            } else {
                ArchiveError::Rename { from: self.partial.clone(), to: self.final_path.clone(), source }
            }
        })?;
        self.armed = false;
        let parent = parent_of(&self.final_path);
        if let Err(source) = sync_dir(parent) {
            // The rename may not survive a crash: keep the promise that an error leaves no
            // final name behind.
            let _ = fs::remove_file(&self.final_path);
            return Err(ArchiveError::Sync { path: parent.to_path_buf(), source });
        }
        let written = Written { sha256: hex::encode(hasher.finalize()), bytes, input_bytes: self.input_bytes };
        debug!(bytes = written.bytes, input_bytes = written.input_bytes, "archive finished");
        Ok(written)
    }
}

impl Write for ArchiveWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let encoder =
            self.encoder.as_mut().ok_or_else(|| io::Error::other("the archive writer was already finished"))?;
        let n = encoder.write(buf)?;
        self.input_bytes += n as u64;
        if let Some(progress) = &self.progress {
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.encoder.as_mut() {
            Some(encoder) => encoder.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        if self.armed {
            // Unlinked while still open: the space is freed when the encoder closes the file.
            match fs::remove_file(&self.partial) {
                Ok(()) => debug!(partial = %self.partial.display(), "removed temporary archive"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(partial = %self.partial.display(), error = %e, "could not remove temporary archive"),
            }
        }
    }
}

/// Writes a `.tar.zst` of `paths` (absolute; `..` refused; a path inside another given path
/// is stored once) to `final_path`.
///
/// Directories are walked recursively in name order without following symlinks; symlinks are
/// stored as symlinks; modes, uid/gid and mtimes are kept. Sockets, FIFOs and devices are
/// left out and listed in [`PathsReport::skipped`]. Hard-linked files are stored once per
/// name. Parents of the given paths are not stored (extraction creates them 0755).
pub fn write_paths(final_path: &Path, paths: &[PathBuf], options: &WriteOptions) -> Result<PathsReport, ArchiveError> {
    let span = info_span!("archive", path = %final_path.display(), format = "tar.zst");
    let _enter = span.enter();
    let roots = source_roots(paths)?;
    let writer = ArchiveWriter::create(final_path, options)?;
    let mut builder = tar::Builder::new(writer);
    let mut walk = Walk { archive: final_path, files: 0, skipped: Vec::new(), changed: Vec::new() };
    for root in &roots {
        walk.add(&mut builder, root, true)?;
    }
    let writer =
        builder.into_inner().map_err(|source| ArchiveError::Write { archive: final_path.to_path_buf(), source })?;
    let written = writer.finish()?;
    if !walk.changed.is_empty() {
        warn!(count = walk.changed.len(), "files changed while they were archived");
    }
    Ok(PathsReport {
        sha256: written.sha256,
        bytes: written.bytes,
        files: walk.files,
        input_bytes: written.input_bytes,
        skipped: walk.skipped,
        changed: walk.changed,
    })
}

/// Writes a zstd-compressed copy of `reader` (not a tar) to `final_path`, streaming: nothing
/// but the temporary archive itself touches the disk.
///
/// It blocks; from tokio, run it on the blocking pool with a blocking reader, e.g. a
/// `std::process::ChildStdout`, or tokio's `ChildStdout` turned into an `OwnedFd`
/// (`into_owned_fd()`) and then a `std::fs::File`:
///
/// ```no_run
/// # use std::path::PathBuf;
/// # use tend::backup::archive::{write_stream, WriteOptions};
/// # async fn run(path: PathBuf, stdout: std::process::ChildStdout) {
/// let report = tokio::task::spawn_blocking(move || write_stream(&path, stdout, &WriteOptions::default())).await;
/// # }
/// ```
pub fn write_stream(final_path: &Path, mut reader: impl Read, options: &WriteOptions) -> Result<Written, ArchiveError> {
    let span = info_span!("archive", path = %final_path.display(), format = "zst");
    let _enter = span.enter();
    let mut writer = ArchiveWriter::create(final_path, options)?;
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ArchiveError::Input { archive: final_path.to_path_buf(), source }),
        };
        writer
            .write_all(&buf[..n])
            .map_err(|source| ArchiveError::Write { archive: final_path.to_path_buf(), source })?;
    }
    writer.finish()
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir` (statvfs).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What a restore may write on the filesystem holding `dir`: its free bytes less a reserve
/// of 1 % of its size, at least 64 MiB, so a restore never fills the disk the services
/// write to.
pub fn room(dir: &Path) -> io::Result<u64> {
    const MIN_RESERVE: u64 = 64 * 1024 * 1024;
    let stat = rustix::fs::statvfs(dir)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let size = stat.f_blocks.saturating_mul(stat.f_frsize);
    Ok(free.saturating_sub((size / 100).max(MIN_RESERVE)))
}

/// The sum of the sizes of the regular files under `paths` (lstat, symlinks not followed):
/// what a backup of them holds before compression. A tar adds 512 bytes or so per entry;
/// compression usually takes far more off, but not for data that is already compressed, so
/// a caller checking free space should not count on it.
pub fn estimate_size(paths: &[PathBuf]) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack: Vec<(PathBuf, bool)> = paths.iter().map(|p| (p.clone(), true)).collect();
    while let Some((path, root)) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Something vanished under a walked directory: not counted.
            Err(e) if !root && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        } else if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push((entry?.path(), false));
            }
        }
    }
    Ok(total)
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, ArchiveError> {
    sha256_file_counted(path, None)
}

/// [`sha256_file`], adding the bytes read to `progress`.
fn sha256_file_counted(path: &Path, progress: Progress<'_>) -> Result<String, ArchiveError> {
    let file = File::open(path).map_err(|source| ArchiveError::Open { archive: path.to_path_buf(), source })?;
    let mut reader = HashingReader::new(Counted::new(file, progress));
    io::copy(&mut reader, &mut io::sink())
        .map_err(|source| ArchiveError::ReadArchive { archive: path.to_path_buf(), source })?;
    Ok(reader.hex())
}

/// The state of a walk of the sources of a tar.
struct Walk<'a> {
    archive: &'a Path,
    files: u64,
    skipped: Vec<PathBuf>,
    changed: Vec<PathBuf>,
}

impl Walk<'_> {
    fn write_error(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Write { archive: self.archive.to_path_buf(), source }
    }

    /// Adds `path` (and, for a directory, everything under it). `root`: one of the given
    /// paths, which must exist; below them, what vanishes during the walk is only noted.
    fn add(&mut self, builder: &mut tar::Builder<ArchiveWriter>, path: &Path, root: bool) -> Result<(), ArchiveError> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if !root && e.kind() == io::ErrorKind::NotFound => {
                self.changed.push(path.to_path_buf());
                return Ok(());
            }
            Err(source) => return Err(ArchiveError::ReadSource { path: path.to_path_buf(), source }),
        };
        let name = archive_name(path);
        let kind = meta.file_type();
        if root && kind.is_symlink() {
            // Stored as what it is, like tar does; the data it points to is not in the archive.
            warn!(path = %path.display(), "a backup source is a symlink: only the link is archived");
        }
        if kind.is_dir() {
            let mut header = header_for(&meta);
            builder.append_data(&mut header, &name, io::empty()).map_err(|e| self.write_error(e))?;
            self.files += 1;
            let read_error = |source| ArchiveError::ReadSource { path: path.to_path_buf(), source };
            let mut children = fs::read_dir(path)
                .map_err(read_error)?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<Result<Vec<OsString>, io::Error>>()
                .map_err(read_error)?;
            children.sort();
            for child in children {
                self.add(builder, &path.join(child), false)?;
            }
        } else if kind.is_file() {
            self.add_file(builder, path, &name, root)?;
        } else if kind.is_symlink() {
            let target =
                fs::read_link(path).map_err(|source| ArchiveError::ReadSource { path: path.to_path_buf(), source })?;
            if target.is_absolute() {
                warn!(path = %path.display(), target = %target.display(), "an absolute symlink: restores refuse it");
            }
            let mut header = header_for(&meta);
            header.set_size(0);
            builder.append_link(&mut header, &name, &target).map_err(|e| self.write_error(e))?;
            self.files += 1;
        } else {
            debug!(path = %path.display(), "skipping a socket, FIFO or device");
            self.skipped.push(path.to_path_buf());
        }
        Ok(())
    }

    fn add_file(
        &mut self,
        builder: &mut tar::Builder<ArchiveWriter>,
        path: &Path,
        name: &Path,
        root: bool,
    ) -> Result<(), ArchiveError> {
        // O_NOFOLLOW: the file may have been replaced by a symlink since the lstat;
        // O_NONBLOCK: or by a FIFO, whose open would block.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let file = match OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path) {
            Ok(file) => file,
            Err(e) if !root && e.kind() == io::ErrorKind::NotFound => {
                self.changed.push(path.to_path_buf());
                return Ok(());
            }
            Err(source) => return Err(ArchiveError::ReadSource { path: path.to_path_buf(), source }),
        };
        let read_error = |source| ArchiveError::ReadSource { path: path.to_path_buf(), source };
        let before = file.metadata().map_err(read_error)?;
        if !before.is_file() {
            self.changed.push(path.to_path_buf());
            return Ok(());
        }
        if before.mode() & 0o6000 != 0 {
            warn!(path = %path.display(), "a setuid or setgid file: restores refuse it");
        }
        let mut header = header_for(&before);
        let mut source = SourceFile { file: &file, remaining: before.len(), shrunk: false, error: None };
        if let Err(e) = builder.append_data(&mut header, name, &mut source) {
            return Err(match source.error.take() {
                Some(source) => ArchiveError::ReadSource { path: path.to_path_buf(), source },
                None => ArchiveError::Write { archive: self.archive.to_path_buf(), source: e },
            });
        }
        let shrunk = source.shrunk;
        self.files += 1;
        // Exactly the header's size went in; anything still readable means the file grew.
        let grew = (&file).read(&mut [0u8; 1]).map(|n| n > 0).unwrap_or(true);
        let touched = file.metadata().map_or(true, |after| {
            after.len() != before.len() || after.mtime() != before.mtime() || after.mtime_nsec() != before.mtime_nsec()
        });
        if shrunk || grew || touched {
            warn!(path = %path.display(), shrunk, grew, "file changed while it was archived");
            self.changed.push(path.to_path_buf());
        }
        Ok(())
    }
}

/// A source file read as exactly `remaining` bytes: zeros after an early end, nothing past.
struct SourceFile<'a> {
    file: &'a File,
    remaining: u64,
    shrunk: bool,
    /// A read error, kept apart so it is reported as a source error, not a write error.
    error: Option<io::Error>,
}

impl Read for SourceFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if !self.shrunk {
            loop {
                match self.file.read(&mut buf[..max]) {
                    Ok(0) => {
                        self.shrunk = true;
                        break;
                    }
                    Ok(n) => {
                        self.remaining -= n as u64;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let kind = e.kind();
                        self.error = Some(e);
                        return Err(io::Error::new(kind, "reading a source file"));
                    }
                }
            }
        }
        buf[..max].fill(0);
        self.remaining -= max as u64;
        Ok(max)
    }
}

/// The given source paths, checked (absolute, no `..`, not `/`), normalized, deduplicated,
/// and without those inside another.
fn source_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut roots = Vec::with_capacity(paths.len());
    for path in paths {
        let invalid = |problem| ArchiveError::InvalidPath { path: path.clone(), problem };
        if !path.is_absolute() {
            return Err(invalid("a backup source must be an absolute path"));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid("a backup source must not contain `..`"));
        }
        let clean: PathBuf = path.components().collect();
        if clean.parent().is_none() {
            return Err(invalid("the root directory cannot be a backup source"));
        }
        roots.push(clean);
    }
    roots.sort();
    roots.dedup();
    let mut kept: Vec<PathBuf> = Vec::with_capacity(roots.len());
    for root in roots {
        if !kept.iter().any(|k| root.starts_with(k)) {
            kept.push(root);
        }
    }
    Ok(kept)
}

/// The name an absolute path is stored under: the path minus its leading `/`.
fn archive_name(path: &Path) -> PathBuf {
    path.components().filter(|c| matches!(c, Component::Normal(_))).collect()
}

fn header_for(meta: &fs::Metadata) -> Header {
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(meta, HeaderMode::Complete);
    header
}

// ---------------------------------------------------------------------------------------------
// Reading: verify, stream out
// ---------------------------------------------------------------------------------------------

/// Reads an archive completely: the sha256 of the file (compared with `expected_sha256` when
/// given), a full zstd decode (frame checksums included), and for a `.tar.zst` every tar
/// header and body. Any corruption is an error naming the archive and what failed; a checksum
/// mismatch wins over the decode error it causes.
pub fn verify(archive: &Path, expected_sha256: Option<&str>) -> Result<VerifyReport, ArchiveError> {
    let format =
        Format::of_path(archive).ok_or_else(|| ArchiveError::UnknownFormat { archive: archive.to_path_buf() })?;
    verify_counted(archive, format, expected_sha256, None)
}

/// [`verify`] of an archive known to be `format` (as its manifest says: an exec source's
/// dump is a stream whatever its name), adding the archive bytes read to `progress`.
pub fn verify_counted(
    archive: &Path,
    format: Format,
    expected_sha256: Option<&str>,
    progress: Progress<'_>,
) -> Result<VerifyReport, ArchiveError> {
    let span = info_span!("verify", archive = %archive.display(), %format);
    let _enter = span.enter();
    let file = File::open(archive).map_err(|source| ArchiveError::Open { archive: archive.to_path_buf(), source })?;
    let bytes =
        file.metadata().map_err(|source| ArchiveError::ReadArchive { archive: archive.to_path_buf(), source })?.len();
    let mut raw = HashingReader::new(Counted::new(file, progress));
    let decoded = decode_all(archive, format, &mut raw);
    // The rest of the file, if the decoder stopped early, so the checksum covers all of it.
    io::copy(&mut raw, &mut io::sink())
        .map_err(|source| ArchiveError::ReadArchive { archive: archive.to_path_buf(), source })?;
    let sha256 = raw.hex();
    check_sha256(archive, expected_sha256, &sha256)?;
    let (entries, decompressed_bytes) = decoded?;
    debug!(entries, decompressed_bytes, "archive verified");
    Ok(VerifyReport { format, sha256, bytes, entries, decompressed_bytes })
}

/// Decompresses `archive` into `writer`, e.g. the stdin of a restore command. With
/// `expected_sha256`, the whole file is checked first, so a corrupt archive never reaches the
/// command. Returns the decompressed size.
pub fn stream_out(archive: &Path, expected_sha256: Option<&str>, writer: impl Write) -> Result<u64, ArchiveError> {
    stream_out_counted(archive, expected_sha256, writer, None)
}

/// [`stream_out`], adding the archive bytes read (twice with a checksum) to `progress`.
pub fn stream_out_counted(
    archive: &Path,
    expected_sha256: Option<&str>,
    mut writer: impl Write,
    progress: Progress<'_>,
) -> Result<u64, ArchiveError> {
    let span = info_span!("stream_out", archive = %archive.display());
    let _enter = span.enter();
    if Format::of_path(archive).is_none() {
        return Err(ArchiveError::UnknownFormat { archive: archive.to_path_buf() });
    }
    if expected_sha256.is_some() {
        let actual = sha256_file_counted(archive, progress)?;
        check_sha256(archive, expected_sha256, &actual)?;
    }
    let file = File::open(archive).map_err(|source| ArchiveError::Open { archive: archive.to_path_buf(), source })?;
    let decode_error = |source| ArchiveError::Decode { archive: archive.to_path_buf(), source };
    let output_error = |source| ArchiveError::Output { archive: archive.to_path_buf(), source };
    let mut decoder = zstd::stream::read::Decoder::new(Counted::new(file, progress)).map_err(decode_error)?;
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(decode_error(source)),
        };
        writer.write_all(&buf[..n]).map_err(output_error)?;
        total += n as u64;
    }
    writer.flush().map_err(output_error)?;
    Ok(total)
}

fn check_sha256(archive: &Path, expected: Option<&str>, actual: &str) -> Result<(), ArchiveError> {
    match expected {
        Some(expected) if !expected.eq_ignore_ascii_case(actual) => Err(ArchiveError::ChecksumMismatch {
            archive: archive.to_path_buf(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Decodes all of an archive: (tar entries, decompressed bytes).
fn decode_all<R: Read>(archive: &Path, format: Format, raw: R) -> Result<(Option<u64>, u64), ArchiveError> {
    let decode_error = |source| ArchiveError::Decode { archive: archive.to_path_buf(), source };
    let decoder = zstd::stream::read::Decoder::new(raw).map_err(decode_error)?;
    let mut counting = CountingReader::new(decoder);
    match format {
        Format::Zst => {
            io::copy(&mut counting, &mut io::sink()).map_err(decode_error)?;
            Ok((None, counting.bytes))
        }
        Format::TarZst => {
            let mut tar = tar::Archive::new(counting);
            let mut entries = 0u64;
            let tar_error = |entries: u64, e: io::Error| ArchiveError::Tar {
                archive: archive.to_path_buf(),
                entries,
                source: tar_problem(&e),
            };
            let read = (|| -> Result<(), ArchiveError> {
                for entry in tar.entries().map_err(|e| tar_error(entries, e))? {
                    let mut entry = entry.map_err(|e| tar_error(entries, e))?;
                    if entry.header().entry_type().is_pax_global_extensions() {
                        continue;
                    }
                    io::copy(&mut entry, &mut io::sink()).map_err(|e| tar_error(entries, e))?;
                    entries += 1;
                }
                Ok(())
            })();
            let mut counting = tar.into_inner();
            read.map_err(|e| counting.tar_failure(archive, e))?;
            // Past the tar's end blocks: the rest of the zstd stream (and its checksum).
            io::copy(&mut counting, &mut io::sink()).map_err(decode_error)?;
            Ok((Some(entries), counting.bytes))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// Extracts a `.tar.zst` into `target`, which must not exist or be an empty directory, all or
/// nothing.
///
/// Entries go into a temporary sibling `.{target}.extract-{pid}` (0700), which is renamed to
/// `target` at the end (replacing it if it was an empty directory, so `target` ends up 0700
/// and owned by the caller) and removed on any error. Refused entries are listed in
/// [`Refusal`]; the first one fails the whole extraction, naming it. Symlinks are created
/// last, once the whole archive is known, and directory modes and mtimes are applied after
/// their content. Owners (uid/gid) are restored when running as root; otherwise everything
/// belongs to the caller, as with GNU tar. With `expected_sha256`, the archive's checksum is
/// checked as it is read, before anything is renamed into place.
pub fn extract(archive: &Path, target: &Path, expected_sha256: Option<&str>) -> Result<ExtractReport, ArchiveError> {
    extract_counted(archive, target, expected_sha256, None, &Limits::none())
}

/// [`extract`], adding the archive bytes read to `progress`.
pub fn extract_counted(
    archive: &Path,
    target: &Path,
    expected_sha256: Option<&str>,
    progress: Progress<'_>,
    limits: &Limits,
) -> Result<ExtractReport, ArchiveError> {
    let span = info_span!("extract", archive = %archive.display(), target = %target.display());
    let _enter = span.enter();
    match Format::of_path(archive) {
        Some(Format::TarZst) => {}
        Some(Format::Zst) => return Err(ArchiveError::NotTar { archive: archive.to_path_buf() }),
        None => return Err(ArchiveError::UnknownFormat { archive: archive.to_path_buf() }),
    }
    let replace_empty = check_target(target)?;
    let staging = staging_path(target)?;
    let parent = parent_of(target);
    create_dirs(parent).map_err(|source| ArchiveError::CreateDir { path: parent.to_path_buf(), source })?;
    let file = File::open(archive).map_err(|source| ArchiveError::Open { archive: archive.to_path_buf(), source })?;
    DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|source| ArchiveError::CreateDir { path: staging.clone(), source })?;
    let mut guard = RemoveDirOnDrop { path: staging.clone(), armed: true };

    let mut raw = HashingReader::new(Counted::new(file, progress));
    let mut extractor = Extractor {
        archive,
        root: &staging,
        owners: rustix::process::geteuid().is_root(),
        links: BTreeMap::new(),
        dirs: BTreeMap::new(),
        entries: 0,
        bytes: 0,
        buf: vec![0u8; BUFFER],
        limits,
    };
    let extracted = extractor.read_all(&mut raw);
    // A refusal or a decode error may come from corruption: with a known checksum, say so.
    if extracted.is_ok() || expected_sha256.is_some() {
        io::copy(&mut raw, &mut io::sink())
            .map_err(|source| ArchiveError::ReadArchive { archive: archive.to_path_buf(), source })?;
        check_sha256(archive, expected_sha256, &raw.hex())?;
    }
    extracted?;
    let sha256 = raw.hex();
    extractor.finish()?;

    let placed = if replace_empty { fs::rename(&staging, target) } else { rename_noreplace(&staging, target) };
    placed.map_err(|source| ArchiveError::Rename { from: staging.clone(), to: target.to_path_buf(), source })?;
    guard.armed = false;
    sync_dir(parent).map_err(|source| ArchiveError::Sync { path: parent.to_path_buf(), source })?;
    debug!(entries = extractor.entries, bytes = extractor.bytes, "archive extracted");
    Ok(ExtractReport { sha256, entries: extractor.entries, bytes: extractor.bytes })
}

/// Whether `target` is an existing empty directory (true) or missing (false); an error if it
/// is anything else.
fn check_target(target: &Path) -> Result<bool, ArchiveError> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ArchiveError::Target { path: target.to_path_buf(), source }),
        Ok(meta) if meta.is_dir() => {
            let mut entries =
                fs::read_dir(target).map_err(|source| ArchiveError::Target { path: target.to_path_buf(), source })?;
            if entries.next().is_none() {
                Ok(true)
            } else {
                Err(ArchiveError::TargetNotEmpty { path: target.to_path_buf() })
            }
        }
        Ok(_) => Err(ArchiveError::TargetNotEmpty { path: target.to_path_buf() }),
    }
}

fn staging_path(target: &Path) -> Result<PathBuf, ArchiveError> {
    let name = match target.components().next_back() {
        Some(Component::Normal(name)) => name,
        _ => {
            return Err(ArchiveError::InvalidPath {
                path: target.to_path_buf(),
                problem: "a restore target must end in a directory name",
            });
        }
    };
    let mut staging = OsString::from(".");
    staging.push(name);
    staging.push(format!(".extract-{}", std::process::id()));
    Ok(parent_of(target).join(staging))
}

/// Removes a directory tree when dropped, unless disarmed.
struct RemoveDirOnDrop {
    path: PathBuf,
    armed: bool,
}

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // remove_dir_all does not follow symlinks.
            if let Err(e) = fs::remove_dir_all(&self.path) {
                warn!(path = %self.path.display(), error = %e, "could not remove a partial extraction");
            }
        }
    }
}

/// Owner, mode and mtime of an entry, applied after its content.
#[derive(Debug, Clone, Copy)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

/// A symlink, created once the whole archive has been read.
#[derive(Debug)]
struct PendingLink {
    /// The entry's path as stored, for messages.
    entry: PathBuf,
    target: PathBuf,
    attrs: Attrs,
}

struct Extractor<'a> {
    archive: &'a Path,
    /// The staging directory.
    root: &'a Path,
    /// Whether to restore owners (running as root).
    owners: bool,
    links: BTreeMap<PathBuf, PendingLink>,
    dirs: BTreeMap<PathBuf, Attrs>,
    entries: u64,
    bytes: u64,
    buf: Vec<u8>,
    limits: &'a Limits,
}

impl Extractor<'_> {
    fn tar_error(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Tar { archive: self.archive.to_path_buf(), entries: self.entries, source: tar_problem(&source) }
    }

    fn refuse(&self, entry: &Path, reason: Refusal) -> ArchiveError {
        warn!(entry = %entry.display(), %reason, "refusing archive entry");
        ArchiveError::Refused { archive: self.archive.to_path_buf(), entry: entry.to_path_buf(), reason }
    }

    fn extract_error(&self, entry: &Path, source: io::Error) -> ArchiveError {
        ArchiveError::Extract { archive: self.archive.to_path_buf(), entry: entry.to_path_buf(), source }
    }

    /// Reads every entry, extracting files, directories and hard links, and collecting
    /// symlinks; then reads the zstd stream to its end.
    fn read_all<R: Read>(&mut self, raw: R) -> Result<(), ArchiveError> {
        let decoder = zstd::stream::read::Decoder::new(raw)
            .map_err(|source| ArchiveError::Decode { archive: self.archive.to_path_buf(), source })?;
        let mut tar = tar::Archive::new(CountingReader::new(decoder));
        let read = (|| -> Result<(), ArchiveError> {
            for entry in tar.entries().map_err(|e| self.tar_error(e))? {
                let mut entry = entry.map_err(|e| self.tar_error(e))?;
                self.entry(&mut entry)?;
            }
            Ok(())
        })();
        let mut decoder = tar.into_inner();
        read.map_err(|e| decoder.tar_failure(self.archive, e))?;
        io::copy(&mut decoder, &mut io::sink())
            .map_err(|source| ArchiveError::Decode { archive: self.archive.to_path_buf(), source })?;
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let stored = entry.path().map_err(|e| self.tar_error(e))?.into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let rel = match clean_entry_path(&stored) {
            Ok(rel) => rel,
            // `./`, the archive's root, as GNU tar stores it: nothing to create.
            Err(Refusal::EmptyPath) if kind.is_dir() => return Ok(()),
            Err(reason) => return Err(self.refuse(&stored, reason)),
        };
        let special = match kind {
            EntryType::Char => Some("character device"),
            EntryType::Block => Some("block device"),
            EntryType::Fifo => Some("FIFO"),
            _ => None,
        };
        if let Some(kind) = special {
            return Err(self.refuse(&stored, Refusal::Special { kind }));
        }
        let Some(root) = self.limits.root_of(&rel) else {
            let roots = self.limits.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(self.refuse(&stored, Refusal::OutsideSources { roots }));
        };
        if rel == root && !matches!(kind, EntryType::Directory | EntryType::Regular | EntryType::Continuous) {
            let what = if kind.is_symlink() {
                "symlink"
            } else if kind.is_hard_link() {
                "hard link"
            } else {
                "special file"
            };
            return Err(self.refuse(&stored, Refusal::RootKind { kind: what }));
        }
        let mode = header.mode().map_err(|e| self.tar_error(e))? & 0o7777;
        // setgid on a directory only makes new files inherit its group: kept.
        if mode & 0o4000 != 0 || (mode & 0o2000 != 0 && !kind.is_dir()) {
            return Err(self.refuse(&stored, Refusal::SetId { mode }));
        }
        let mut ids = [0u32; 2];
        for (slot, id) in ids.iter_mut().zip([header.uid(), header.gid()]) {
            let id = id.map_err(|e| self.tar_error(e))?;
            *slot = u32::try_from(id).map_err(|_| self.refuse(&stored, Refusal::BadOwner { id }))?;
        }
        let [uid, gid] = ids;
        let mtime = header.mtime().map_err(|e| self.tar_error(e))?;
        let attrs = Attrs { mode, uid, gid, mtime };
        if let Some(link) = rel.ancestors().skip(1).find(|a| self.links.contains_key(*a)) {
            return Err(self.refuse(&stored, Refusal::ThroughLink { link: link.to_path_buf() }));
        }
        if self.links.contains_key(&rel) {
            return Err(self.refuse(&stored, Refusal::Duplicate));
        }
        match kind {
            EntryType::Directory => self.directory(&stored, rel, attrs)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &stored, rel, attrs)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| self.tar_error(e))?.map(|t| t.into_owned());
                self.symlink(&stored, rel, target, attrs)?;
            }
            EntryType::Link => {
                let target = entry.link_name().map_err(|e| self.tar_error(e))?.map(|t| t.into_owned());
                self.hard_link(&stored, rel, &root, target)?;
            }
            other => return Err(self.refuse(&stored, Refusal::Unsupported { kind: other.as_byte() })),
        }
        self.entries += 1;
        Ok(())
    }

    /// Creates the parent directories of an entry (0755 while extracting).
    fn parents(&self, stored: &Path, path: &Path) -> Result<(), ArchiveError> {
        match path.parent() {
            Some(parent) => {
                DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(|e| self.extract_error(stored, e))
            }
            None => Ok(()),
        }
    }

    fn directory(&mut self, stored: &Path, rel: PathBuf, attrs: Attrs) -> Result<(), ArchiveError> {
        let path = self.root.join(&rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(self.refuse(stored, Refusal::Duplicate)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&path)
                    .map_err(|e| self.extract_error(stored, e))?;
            }
            Err(e) => return Err(self.extract_error(stored, e)),
        }
        self.dirs.insert(rel, attrs);
        Ok(())
    }

    fn file<R: Read>(&mut self, entry: &mut R, stored: &Path, rel: PathBuf, attrs: Attrs) -> Result<(), ArchiveError> {
        let path = self.root.join(&rel);
        self.parents(stored, &path)?;
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path);
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(self.refuse(stored, Refusal::Duplicate)),
            Err(e) => return Err(self.extract_error(stored, e)),
        };
        let mut buf = std::mem::take(&mut self.buf);
        let budget = self.limits.max_bytes.saturating_sub(self.bytes);
        let copied = copy_entry(entry, &mut file, &mut buf, budget);
        self.buf = buf;
        let written = match copied {
            Ok(n) => n,
            Err(CopyError::Read(e)) => return Err(self.tar_error(e)),
            Err(CopyError::Write(e)) => return Err(self.extract_error(stored, e)),
            Err(CopyError::Budget) => {
                return Err(self.refuse(stored, Refusal::TooLarge { max_bytes: self.limits.max_bytes }));
            }
        };
        let apply = || -> io::Result<()> {
            if self.owners {
                std::os::unix::fs::fchown(&file, Some(attrs.uid), Some(attrs.gid))?;
            }
            file.set_permissions(Permissions::from_mode(attrs.mode))?;
            file.set_modified(system_time(attrs.mtime))
        };
        apply().map_err(|e| self.extract_error(stored, e))?;
        self.bytes += written;
        Ok(())
    }

    fn symlink(
        &mut self,
        stored: &Path,
        rel: PathBuf,
        target: Option<PathBuf>,
        attrs: Attrs,
    ) -> Result<(), ArchiveError> {
        let Some(target) = target.filter(|t| !t.as_os_str().is_empty()) else {
            return Err(self.refuse(stored, Refusal::NoLinkTarget));
        };
        // Fail fast with what is known so far; `finish` checks again with every link known.
        let floor = self.limits.root_of(&rel).unwrap_or_default();
        if let Err(reason) = resolve_inside(&self.links, &rel, &target, &floor) {
            return Err(self.refuse(stored, reason));
        }
        if fs::symlink_metadata(self.root.join(&rel)).is_ok() {
            return Err(self.refuse(stored, Refusal::Duplicate));
        }
        // A link recorded earlier below this one would be created through it.
        if let Some((below, _)) = self.links.range(rel.clone()..).next().filter(|(k, _)| k.starts_with(&rel)) {
            let entry = self.links[below].entry.clone();
            return Err(self.refuse(&entry, Refusal::ThroughLink { link: rel }));
        }
        self.links.insert(rel, PendingLink { entry: stored.to_path_buf(), target, attrs });
        Ok(())
    }

    fn hard_link(&self, stored: &Path, rel: PathBuf, root: &Path, target: Option<PathBuf>) -> Result<(), ArchiveError> {
        let Some(target) = target.filter(|t| !t.as_os_str().is_empty()) else {
            return Err(self.refuse(stored, Refusal::NoLinkTarget));
        };
        let outside = || Refusal::HardLinkOutside { target: target.clone() };
        let target_rel = clean_entry_path(&target).map_err(|_| self.refuse(stored, outside()))?;
        // Within the same restored path: another one may go elsewhere on the host.
        if !target_rel.starts_with(root) {
            return Err(self.refuse(stored, outside()));
        }
        // Symlinks are only created at the end and the staging directory started empty, so
        // a regular file here is one extracted from this archive, reached through no link.
        let is_extracted_file = fs::symlink_metadata(self.root.join(&target_rel)).is_ok_and(|m| m.is_file());
        if !is_extracted_file || target_rel.ancestors().any(|a| self.links.contains_key(a)) {
            return Err(self.refuse(stored, outside()));
        }
        let path = self.root.join(&rel);
        self.parents(stored, &path)?;
        match fs::hard_link(self.root.join(&target_rel), &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(self.refuse(stored, Refusal::Duplicate)),
            Err(e) => return Err(self.extract_error(stored, e)),
        }
        Ok(())
    }

    /// Checks every symlink against the whole archive and creates them, then applies the
    /// directories' owners, modes and mtimes (deepest first), then syncs the filesystem.
    fn finish(&mut self) -> Result<(), ArchiveError> {
        for (rel, link) in &self.links {
            let floor = self.limits.root_of(rel).unwrap_or_default();
            if let Err(reason) = resolve_inside(&self.links, rel, &link.target, &floor) {
                return Err(self.refuse(&link.entry, reason));
            }
        }
        for (rel, link) in &self.links {
            let path = self.root.join(rel);
            self.parents(&link.entry, &path)?;
            let create = || -> io::Result<()> {
                std::os::unix::fs::symlink(&link.target, &path)?;
                if self.owners {
                    std::os::unix::fs::lchown(&path, Some(link.attrs.uid), Some(link.attrs.gid))?;
                }
                set_mtime_nofollow(&path, link.attrs.mtime)
            };
            create().map_err(|e| self.extract_error(&link.entry, e))?;
        }
        let mut dirs: Vec<(&PathBuf, &Attrs)> = self.dirs.iter().collect();
        dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, attrs) in dirs {
            let path = self.root.join(rel);
            let apply = || -> io::Result<()> {
                if self.owners {
                    std::os::unix::fs::lchown(&path, Some(attrs.uid), Some(attrs.gid))?;
                }
                set_mtime_nofollow(&path, attrs.mtime)?;
                fs::set_permissions(&path, Permissions::from_mode(attrs.mode))
            };
            apply().map_err(|e| self.extract_error(rel, e))?;
        }
        let root =
            File::open(self.root).map_err(|source| ArchiveError::Sync { path: self.root.to_path_buf(), source })?;
        rustix::fs::syncfs(&root)
            .map_err(|e| ArchiveError::Sync { path: self.root.to_path_buf(), source: e.into() })?;
        Ok(())
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    /// More than the budget would be written.
    Budget,
}

/// Copies an entry's body, telling read (archive) errors from write (target) errors, and
/// stopping before more than `budget` bytes are written.
fn copy_entry<R: Read, W: Write>(from: &mut R, to: &mut W, buf: &mut [u8], budget: u64) -> Result<u64, CopyError> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        if total + n as u64 > budget {
            return Err(CopyError::Budget);
        }
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// An entry's stored path as a relative path of plain names (`.` dropped); `..`, absolute
/// and empty paths refused.
fn clean_entry_path(path: &Path) -> Result<PathBuf, Refusal> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::Absolute),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(Refusal::EmptyPath);
    }
    Ok(clean)
}

/// One step of a symlink resolution.
enum Step {
    Up,
    Name(OsString),
}

fn steps(target: &Path) -> Result<Vec<Step>, Refusal> {
    let mut steps = Vec::new();
    for component in target.components() {
        match component {
            Component::Normal(name) => steps.push(Step::Name(name.to_os_string())),
            Component::ParentDir => steps.push(Step::Up),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::AbsoluteLink { target: target.to_path_buf() });
            }
        }
    }
    Ok(steps)
}

/// Resolves the symlink `link` → `target` the way the kernel would, inside a tree whose only
/// symlinks are `links` (paths relative to the target root): an error if it leaves `floor`
/// (the restored path holding the link; empty: the target root) at any step — passing
/// above it, even to come back, would depend on what is there on the host — is absolute,
/// or loops. Components that do not exist are taken as directories, which can only make
/// the answer stricter.
fn resolve_inside(
    links: &BTreeMap<PathBuf, PendingLink>,
    link: &Path,
    target: &Path,
    floor: &Path,
) -> Result<(), Refusal> {
    let depth = floor.components().count();
    // The directories walked so far, none of them a symlink of the archive.
    let mut at: Vec<OsString> = link.parent().map(|p| p.iter().map(OsStr::to_os_string).collect()).unwrap_or_default();
    let mut queue: VecDeque<Step> = steps(target)?.into();
    let mut hops = 0;
    while let Some(step) = queue.pop_front() {
        match step {
            Step::Up => {
                if at.len() <= depth || at.pop().is_none() {
                    return Err(Refusal::LinkOutside { target: target.to_path_buf() });
                }
            }
            Step::Name(name) => {
                at.push(name);
                let here: PathBuf = at.iter().collect();
                if let Some(next) = links.get(&here) {
                    at.pop();
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(Refusal::LinkLoop { target: target.to_path_buf() });
                    }
                    let next_steps =
                        steps(&next.target).map_err(|_| Refusal::LinkOutside { target: target.to_path_buf() })?;
                    for step in next_steps.into_iter().rev() {
                        queue.push_front(step);
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Filesystem helpers, shared with the catalog
// ---------------------------------------------------------------------------------------------

/// The temporary sibling an archive is written under: `.{name}.partial-{pid}`.
fn partial_path(final_path: &Path) -> Result<PathBuf, ArchiveError> {
    partial_sibling(final_path).ok_or_else(|| ArchiveError::InvalidPath {
        path: final_path.to_path_buf(),
        problem: "an archive path must end in a file name",
    })
}

/// `.{name}.partial-{pid}` beside `path`; `None` if `path` does not end in a name.
pub(crate) fn partial_sibling(path: &Path) -> Option<PathBuf> {
    let Some(Component::Normal(name)) = path.components().next_back() else {
        return None;
    };
    let mut partial = OsString::from(".");
    partial.push(name);
    partial.push(format!("{PARTIAL_MARK}{}", std::process::id()));
    Some(parent_of(path).join(partial))
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing parents (0700), fsyncing the parent of each one created.
pub(crate) fn create_dirs(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while let Err(e) = fs::symlink_metadata(at) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(e);
        }
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    for created in missing.iter().rev() {
        sync_dir(parent_of(created))?;
    }
    Ok(())
}

/// Creates a file that did not exist, mode 0600.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to`, failing with `AlreadyExists` rather than replacing `to`.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags};
    use rustix::io::Errno;
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A filesystem without RENAME_NOREPLACE: a hard link also refuses to replace (for a
        // file); a directory falls back to a check, then a rename.
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP => {
            if fs::symlink_metadata(from)?.is_dir() {
                if fs::symlink_metadata(to).is_ok() {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                fs::rename(from, to)
            } else {
                fs::hard_link(from, to)?;
                fs::remove_file(from)
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn system_time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn set_mtime_nofollow(path: &Path, secs: u64) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT};
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: i64::try_from(secs).unwrap_or(i64::MAX), tv_nsec: 0 },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// A writer that hashes (sha256) and counts what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> HashingWriter<W> {
        HashingWriter { inner, hasher: Sha256::new(), bytes: 0 }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes (sha256) what goes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> HashingReader<R> {
        HashingReader { inner, hasher: Sha256::new() }
    }

    fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The size of a zstd worker's job when compressing on several threads.
const JOB_SIZE: u32 = 2 << 20;

/// A counter of archive bytes read, for a progress display (`None`: not counted).
pub type Progress<'a> = Option<&'a Arc<AtomicU64>>;

/// A reader adding what goes through it to a shared progress counter.
struct Counted<'a, R> {
    inner: R,
    progress: Progress<'a>,
}

impl<'a, R> Counted<'a, R> {
    fn new(inner: R, progress: Progress<'a>) -> Self {
        Counted { inner, progress }
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = self.progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// A reader that counts what goes through it, and remembers the first error it passed on
/// (the decoder's): the tar reader above it reports that error as its own.
struct CountingReader<R> {
    inner: R,
    bytes: u64,
    failed: Option<(io::ErrorKind, String)>,
}

impl<R> CountingReader<R> {
    fn new(inner: R) -> Self {
        CountingReader { inner, bytes: 0, failed: None }
    }

    /// The error of the tar layer as tend reports it: a decoding error when the stream below
    /// failed, else the tar problem without the archive's bytes.
    fn tar_failure(&self, archive: &Path, error: ArchiveError) -> ArchiveError {
        match (&self.failed, error) {
            (Some((kind, msg)), ArchiveError::Tar { .. }) => {
                ArchiveError::Decode { archive: archive.to_path_buf(), source: io::Error::new(*kind, msg.clone()) }
            }
            (_, other) => other,
        }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                if self.failed.is_none() && e.kind() != io::ErrorKind::Interrupted {
                    self.failed = Some((e.kind(), e.to_string()));
                }
                Err(e)
            }
        }
    }
}

/// A tar error that says what is wrong without quoting the archive: the tar crate's messages
/// embed header fields and entry names, which for a file that is not a tar (a dump) are
/// arbitrary bytes of its content. Only the fixed head of the message is kept.
fn tar_problem(e: &io::Error) -> io::Error {
    let msg = e.to_string();
    let head = msg.split([':', '`', '"']).next().unwrap_or_default();
    let head = head.split(" when ").next().unwrap_or_default().trim();
    let plain = !head.is_empty()
        && head.len() <= 80
        && head.chars().all(|c| c.is_ascii_alphanumeric() || " -_,.()".contains(c));
    let what = if plain { head } else { "malformed header or data" };
    io::Error::new(e.kind(), format!("{what} (not a valid tar stream)"))
}

/// An entry's stored name for a message: control characters escaped, at most 200 characters
/// (an entry name is archive content; a hostile or misread archive must not write to the
/// operator's terminal).
pub(crate) fn shown_entry(entry: &Path) -> String {
    const MAX: usize = 200;
    let text = entry.to_string_lossy();
    let mut out: String = text.chars().take(MAX).flat_map(char::escape_debug).collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, &str)]) -> BTreeMap<PathBuf, PendingLink> {
        pairs
            .iter()
            .map(|(link, target)| {
                (
                    PathBuf::from(link),
                    PendingLink {
                        entry: PathBuf::from(link),
                        target: PathBuf::from(target),
                        attrs: Attrs { mode: 0o777, uid: 0, gid: 0, mtime: 0 },
                    },
                )
            })
            .collect()
    }

    fn check(pairs: &[(&str, &str)]) -> Vec<Result<(), Refusal>> {
        check_in(pairs, "")
    }

    fn check_in(pairs: &[(&str, &str)], floor: &str) -> Vec<Result<(), Refusal>> {
        let links = links(pairs);
        links.iter().map(|(rel, link)| resolve_inside(&links, rel, &link.target, Path::new(floor))).collect()
    }

    #[test]
    fn links_stay_inside_the_restored_path_that_holds_them() {
        let outside = |t: &str| Err(Refusal::LinkOutside { target: PathBuf::from(t) });
        // Inside the tar's root, but above the restored path `srv/data`: refused.
        assert_eq!(check_in(&[("srv/data/etc", "../../../etc")], "srv/data"), vec![outside("../../../etc")]);
        assert_eq!(check_in(&[("srv/data/up", "..")], "srv/data"), vec![outside("..")]);
        // Leaving it and coming back depends on the host's directories: refused too.
        assert_eq!(check_in(&[("srv/data/x", "../data/y")], "srv/data"), vec![outside("../data/y")]);
        // A chain that climbs out through another link.
        assert_eq!(
            check_in(&[("srv/data/a", "b/.."), ("srv/data/b", "..")], "srv/data"),
            vec![outside("b/.."), outside("..")]
        );
        assert!(check_in(&[("srv/data/a/l", "../b"), ("srv/data/c", "a/l")], "srv/data").iter().all(Result::is_ok));
    }

    #[test]
    fn entry_paths_are_cleaned_or_refused() {
        assert_eq!(clean_entry_path(Path::new("retro/db/x")), Ok(PathBuf::from("retro/db/x")));
        assert_eq!(clean_entry_path(Path::new("./retro//db/")), Ok(PathBuf::from("retro/db")));
        assert_eq!(clean_entry_path(Path::new("../escape")), Err(Refusal::ParentDir));
        assert_eq!(clean_entry_path(Path::new("a/../../x")), Err(Refusal::ParentDir));
        assert_eq!(clean_entry_path(Path::new("a/..")), Err(Refusal::ParentDir));
        assert_eq!(clean_entry_path(Path::new("/etc/x")), Err(Refusal::Absolute));
        assert_eq!(clean_entry_path(Path::new("./")), Err(Refusal::EmptyPath));
    }

    #[test]
    fn links_inside_the_tree_are_accepted() {
        let results = check(&[
            ("a/current", "releases/v2"),
            ("a/lib", "../b/lib"),
            ("top", "a/current/x"),
            ("a/self", "."),
            ("a/dangling", "missing/file"),
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    #[test]
    fn links_leaving_the_tree_are_refused() {
        let outside = |t: &str| Err(Refusal::LinkOutside { target: PathBuf::from(t) });
        assert_eq!(check(&[("l", "../../x")]), vec![outside("../../x")]);
        assert_eq!(check(&[("a/b/l", "../../../x")]), vec![outside("../../../x")]);
        assert_eq!(check(&[("l", "/etc/passwd")]), vec![Err(Refusal::AbsoluteLink { target: "/etc/passwd".into() })]);
        assert_eq!(check(&[("a/l", "x/../../..")]), vec![outside("x/../../..")]);
    }

    #[test]
    fn a_link_through_a_shallower_link_is_followed_like_the_kernel_does() {
        // s -> . ; t -> s/.. : lexically `t` stays at the root, but `s` is the root itself,
        // so `s/..` is the root's parent.
        let results = check(&[("s", "."), ("t", "s/..")]);
        assert_eq!(results[0], Ok(()));
        assert_eq!(results[1], Err(Refusal::LinkOutside { target: PathBuf::from("s/..") }));
        // A link to a link that escapes escapes too.
        let results = check(&[("a/deep", "../.."), ("b", "a/deep")]);
        assert!(results.iter().all(Result::is_err), "{results:?}");
    }

    #[test]
    fn loops_are_refused() {
        let results = check(&[("a", "b"), ("b", "a")]);
        assert!(results.iter().all(|r| matches!(r, Err(Refusal::LinkLoop { .. }))), "{results:?}");
    }

    #[test]
    fn source_roots_are_checked_and_deduplicated() {
        let roots = source_roots(&[
            PathBuf::from("/retro/db/"),
            PathBuf::from("/retro/db/sub"),
            PathBuf::from("/retro/dbx"),
            PathBuf::from("/retro/db"),
        ])
        .expect("valid");
        assert_eq!(roots, vec![PathBuf::from("/retro/db"), PathBuf::from("/retro/dbx")]);
        assert!(source_roots(&[PathBuf::from("relative")]).is_err());
        assert!(source_roots(&[PathBuf::from("/a/../b")]).is_err());
        assert!(source_roots(&[PathBuf::from("/")]).is_err());
        assert_eq!(archive_name(Path::new("/retro/db/x")), PathBuf::from("retro/db/x"));
    }

    #[test]
    fn a_source_file_is_read_as_exactly_its_first_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, vec![7u8; 1000]).expect("write");
        let file = File::open(&path).expect("open");
        // Shrunk since its size was taken: padded with zeros.
        let mut source = SourceFile { file: &file, remaining: 1500, shrunk: false, error: None };
        let mut out = Vec::new();
        source.read_to_end(&mut out).expect("read");
        assert_eq!(out.len(), 1500);
        assert!(out[..1000].iter().all(|b| *b == 7) && out[1000..].iter().all(|b| *b == 0));
        assert!(source.shrunk);
        // Grown since: cut.
        let file = File::open(&path).expect("open");
        let mut source = SourceFile { file: &file, remaining: 600, shrunk: false, error: None };
        let mut out = Vec::new();
        source.read_to_end(&mut out).expect("read");
        assert_eq!(out.len(), 600);
        assert!(!source.shrunk);
    }

    #[test]
    fn formats_follow_the_file_name() {
        assert_eq!(Format::of_path(Path::new("a/2025-01-01_x.tar.zst")), Some(Format::TarZst));
        assert_eq!(Format::of_path(Path::new("dump.zst")), Some(Format::Zst));
        assert_eq!(Format::of_path(Path::new("dump.gz")), None);
        assert_eq!(
            partial_path(Path::new("/b/x.tar.zst")).expect("partial"),
            PathBuf::from(format!("/b/.x.tar.zst.partial-{}", std::process::id()))
        );
    }
}
