//! The destination is the catalog: no database beside it. Archive names come from a layout
//! template, a manifest (`ARCHIVE.manifest.json`) beside each archive records what it is, and
//! listing a destination walks it.
//!
//! A manifest is written after its archive is renamed into place, so an archive without a
//! manifest is the mark of a run that did not finish ([`EntryState::MissingManifest`]), and a
//! `.{name}.partial-{pid}` file is the leftover of one interrupted while writing
//! ([`EntryState::Partial`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tend_specs::calendar::{Timestamp, Zoned};
use tracing::debug;

use super::archive::{self, Format, PARTIAL_MARK};

/// tend's version, as manifests record it.
pub const TEND_VERSION: &str = env!("CARGO_PKG_VERSION");
/// What follows an archive's file name in its manifest's.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// The tokens a layout may use.
const TOKENS: &str = "{name} {yyyy} {mm} {dd} {date} {time}";

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A backup name that cannot be part of a path.
    #[error("invalid backup name {name:?}: it must be a non-empty file name without `/`")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// A layout template that cannot be used.
    #[error("invalid layout {layout:?}: {problem}")]
    Layout {
        /// The template.
        layout: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A manifest already exists for this archive.
    #[error("manifest {path} already exists")]
    ManifestExists {
        /// The manifest.
        path: PathBuf,
    },
    /// Writing a manifest failed.
    #[error("writing manifest {path}")]
    WriteManifest {
        /// The manifest.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading a manifest failed.
    #[error("reading manifest {path}")]
    ReadManifest {
        /// The manifest.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A manifest is not valid JSON of the expected shape.
    #[error("manifest {path} is corrupt")]
    ParseManifest {
        /// The manifest.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Writing or removing a pin failed.
    #[error("writing pin {path}")]
    WritePin {
        /// The pin file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Walking the destination failed.
    #[error("listing {path}")]
    Walk {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl CatalogError {
    /// A fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CatalogError::InvalidName { .. } => "invalid-name",
            CatalogError::Layout { .. } => "layout",
            CatalogError::ManifestExists { .. } => "manifest-exists",
            CatalogError::WriteManifest { .. } => "write-manifest",
            CatalogError::ReadManifest { .. } => "read-manifest",
            CatalogError::ParseManifest { .. } => "parse-manifest",
            CatalogError::WritePin { .. } => "write-pin",
            CatalogError::Walk { .. } => "walk",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Name,
    Yyyy,
    Mm,
    Dd,
    Date,
    Time,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Token(Token),
}

/// A parsed layout: one list of pieces per path component.
#[derive(Debug)]
struct Layout {
    components: Vec<Vec<Piece>>,
}

impl Layout {
    fn parse(layout: &str) -> Result<Layout, CatalogError> {
        let problem = |problem: String| CatalogError::Layout { layout: layout.to_string(), problem };
        if layout.starts_with('/') {
            return Err(problem("it must be relative to the destination".into()));
        }
        let mut components = Vec::new();
        for text in layout.split('/') {
            if text.is_empty() {
                return Err(problem("it has an empty path component".into()));
            }
            if text == "." || text == ".." {
                return Err(problem(format!("it has a `{text}` component")));
            }
            let mut pieces = Vec::new();
            let mut rest = text;
            while let Some(open) = rest.find(['{', '}']) {
                if rest[open..].starts_with('}') {
                    return Err(problem("it has a `}` without `{`".into()));
                }
                if open > 0 {
                    pieces.push(Piece::Text(rest[..open].to_string()));
                }
                let Some(close) = rest[open..].find('}') else {
                    return Err(problem("it has a `{` without `}`".into()));
                };
                let token = match &rest[open + 1..open + close] {
                    "name" => Token::Name,
                    "yyyy" => Token::Yyyy,
                    "mm" => Token::Mm,
                    "dd" => Token::Dd,
                    "date" => Token::Date,
                    "time" => Token::Time,
                    other => return Err(problem(format!("unknown token {{{other}}} (known: {TOKENS})"))),
                };
                pieces.push(Piece::Token(token));
                rest = &rest[open + close + 1..];
            }
            if !rest.is_empty() {
                pieces.push(Piece::Text(rest.to_string()));
            }
            components.push(pieces);
        }
        let file = components.last().map(|pieces| render_pieces(pieces, "", None)).unwrap_or_default();
        if Format::of_path(Path::new(&file)).is_none() {
            return Err(problem("the archive name must end in .tar.zst or .zst".into()));
        }
        Ok(Layout { components })
    }

    /// How many leading directories hold no date token: the part shared by every archive.
    fn fixed_dirs(&self) -> usize {
        let dirs = &self.components[..self.components.len() - 1];
        dirs.iter()
            .take_while(|pieces| pieces.iter().all(|p| matches!(p, Piece::Text(_) | Piece::Token(Token::Name))))
            .count()
    }
}

fn check_name(name: &str) -> Result<(), CatalogError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(CatalogError::InvalidName { name: name.to_string() });
    }
    Ok(())
}

fn render_pieces(pieces: &[Piece], name: &str, at: Option<&Zoned>) -> String {
    let mut out = String::new();
    for piece in pieces {
        match (piece, at) {
            (Piece::Text(text), _) => out.push_str(text),
            (Piece::Token(Token::Name), _) => out.push_str(name),
            (Piece::Token(_), None) => {}
            (Piece::Token(Token::Yyyy), Some(at)) => out.push_str(&format!("{:04}", at.year())),
            (Piece::Token(Token::Mm), Some(at)) => out.push_str(&format!("{:02}", at.month())),
            (Piece::Token(Token::Dd), Some(at)) => out.push_str(&format!("{:02}", at.day())),
            (Piece::Token(Token::Date), Some(at)) => {
                out.push_str(&format!("{:04}-{:02}-{:02}", at.year(), at.month(), at.day()));
            }
            (Piece::Token(Token::Time), Some(at)) => {
                out.push_str(&format!("{:02}{:02}{:02}", at.hour(), at.minute(), at.second()));
            }
        }
    }
    out
}

/// The archive path (relative to the destination) of backup `name` for a run at `at`:
/// `layout` with `{name}`, `{yyyy}`, `{mm}`, `{dd}`, `{date}` (YYYY-MM-DD) and `{time}`
/// (HHMMSS) replaced, in `at`'s time zone. Unknown tokens, unbalanced braces, absolute
/// layouts, `.`/`..` or empty components, and names not ending in `.tar.zst` or `.zst` are
/// refused.
pub fn render_layout(layout: &str, name: &str, at: &Zoned) -> Result<PathBuf, CatalogError> {
    check_name(name)?;
    let parsed = Layout::parse(layout)?;
    Ok(parsed.components.iter().map(|pieces| render_pieces(pieces, name, Some(at))).collect())
}

/// Whether `text` is what `pieces` renders to for some time.
fn matches(pieces: &[Piece], name: &str, text: &str) -> bool {
    fn digits(text: &str, n: usize) -> Option<&str> {
        let head = text.get(..n)?;
        head.bytes().all(|b| b.is_ascii_digit()).then(|| &text[n..])
    }
    let mut rest = text;
    for piece in pieces {
        let next = match piece {
            Piece::Text(t) => rest.strip_prefix(t.as_str()),
            Piece::Token(Token::Name) => rest.strip_prefix(name),
            Piece::Token(Token::Yyyy) => digits(rest, 4),
            Piece::Token(Token::Mm | Token::Dd) => digits(rest, 2),
            Piece::Token(Token::Time) => digits(rest, 6),
            Piece::Token(Token::Date) => digits(rest, 4)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| digits(r, 2))
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| digits(r, 2)),
        };
        match next {
            Some(next) => rest = next,
            None => return false,
        }
    }
    rest.is_empty()
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// What an archive is, recorded beside it as `ARCHIVE.manifest.json` (mode 0600).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The archive's file name.
    pub archive: String,
    /// sha256 of the archive file, lowercase hex.
    pub sha256: String,
    /// Size of the archive file in bytes.
    pub bytes: u64,
    /// Entries in a `.tar.zst`; absent for a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Uncompressed bytes that went in.
    pub input_bytes: u64,
    /// What was backed up, for people: paths, or the command and where it ran.
    pub source: String,
    /// When the run started, in milliseconds since the epoch.
    pub started_ms: u64,
    /// How long the run took, quiescing included.
    pub duration_ms: u64,
    /// The version of tend that wrote it ([`TEND_VERSION`]).
    pub tend_version: String,
    /// The hash of the Backup spec that produced it.
    pub spec_hash: String,
    /// The Backup's name.
    pub backup: String,
    /// The archive's format.
    pub format: Format,
}

impl Manifest {
    /// What kind of source wrote the archive, from `source` (`paths …` or `exec …`).
    pub fn source_kind(&self) -> Option<tend_specs::backup::SourceKind> {
        use tend_specs::backup::SourceKind;
        match self.source.split_once(' ').map_or(self.source.as_str(), |(kind, _)| kind) {
            "paths" => Some(SourceKind::Paths),
            "exec" => Some(SourceKind::Exec),
            _ => None,
        }
    }

    /// What the archive holds: a tar for a paths source, a compressed stream for an exec
    /// source whatever its file is named (a dump's layout may end in `.tar.zst`; manifests
    /// written before this was fixed record the name's format for it).
    pub fn content_format(&self) -> Format {
        match self.source_kind() {
            Some(tend_specs::backup::SourceKind::Exec) => Format::Zst,
            _ => self.format,
        }
    }
}

/// The largest manifest read (they are a few hundred bytes).
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// The manifest's path for an archive: `ARCHIVE.manifest.json` beside it.
pub fn manifest_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_os_string();
    name.push(MANIFEST_SUFFIX);
    PathBuf::from(name)
}

/// Writes the manifest of `archive` beside it (temporary file, fsync, rename, fsync of the
/// directory; mode 0600); never replaces an existing one. Call it once the archive is in
/// place. Returns the manifest's path.
pub fn write_manifest(archive: &Path, manifest: &Manifest) -> Result<PathBuf, CatalogError> {
    let path = manifest_path(archive);
    let write_error = |source| CatalogError::WriteManifest { path: path.clone(), source };
    let partial = archive::partial_sibling(&path)
        .ok_or_else(|| write_error(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let mut json = serde_json::to_vec_pretty(manifest).map_err(|e| write_error(io::Error::other(e)))?;
    json.push(b'\n');
    let written = (|| -> io::Result<()> {
        let mut file = archive::create_private(&partial)?;
        file.write_all(&json)?;
        file.sync_all()?;
        drop(file);
        archive::rename_noreplace(&partial, &path)?;
        archive::sync_dir(archive::parent_of(&path))
    })();
    if let Err(source) = written {
        if let Err(e) = fs::remove_file(&partial)
            && e.kind() != io::ErrorKind::NotFound
        {
            debug!(partial = %partial.display(), error = %e, "could not remove a temporary manifest");
        }
        return Err(if source.kind() == io::ErrorKind::AlreadyExists {
            CatalogError::ManifestExists { path }
        } else {
            write_error(source)
        });
    }
    Ok(path)
}

/// Reads the manifest of `archive`; `None` if it has none.
pub fn read_manifest(archive: &Path) -> Result<Option<Manifest>, CatalogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = manifest_path(archive);
    let read_error = |source| CatalogError::ReadManifest { path: path.clone(), source };
    // A regular file (not a FIFO that would block, not a link), read with a cap.
    let file = match fs::OpenOptions::new().read(true).custom_flags(libc_o_nofollow_nonblock()).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(source)),
    };
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(read_error(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes, more than a manifest's {MAX_MANIFEST_BYTES}", meta.len()),
        )));
    }
    let mut data = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_MANIFEST_BYTES), &mut data).map_err(read_error)?;
    serde_json::from_slice(&data).map(Some).map_err(|source| CatalogError::ParseManifest { path, source })
}

/// `O_NOFOLLOW | O_NONBLOCK`: a manifest is never read through a symlink, and opening a FIFO
/// planted in its place does not block.
fn libc_o_nofollow_nonblock() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

// ---------------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------------

/// The state of an archive found in a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// The archive and its manifest are there (its checksum is not checked here).
    Complete,
    /// An archive without a manifest: its run did not finish.
    MissingManifest,
    /// The manifest cannot be read or does not describe this archive.
    BadManifest {
        /// What is wrong with it.
        problem: String,
    },
    /// A temporary file (`.{name}.partial-{pid}`) left by an interrupted run.
    Partial,
}

/// An archive, or the leftover of one, found in a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file.
    pub path: PathBuf,
    /// Its manifest, for a complete archive.
    pub manifest: Option<Manifest>,
    /// The file's size.
    pub size: u64,
    /// The file's modification time.
    pub modified: Timestamp,
    /// What it is.
    pub state: EntryState,
}

impl Entry {
    /// When the archive was made: its manifest's start time, else the file's mtime.
    pub fn time(&self) -> Timestamp {
        self.manifest
            .as_ref()
            .and_then(|m| i64::try_from(m.started_ms).ok())
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .unwrap_or(self.modified)
    }
}

/// The archives of backup `name` in `dest`, oldest first, with leftovers of interrupted runs.
///
/// The walk starts at the layout's fixed directories (those without a date token: for
/// `{name}/{yyyy}/{mm}/{date}_{name}.tar.zst`, `dest/{name}`) and follows the layout's depth.
/// It reports: files matching the layout (with their manifest, if any: those whose manifest
/// names another backup are left out), other `*.zst` files at that depth whose manifest names
/// this backup (archives made under an earlier layout of the same shape), and temporary
/// `.{archive}.partial-{pid}` / `.{archive}.manifest.json.partial-{pid}` files of matching
/// names. A destination that does not exist yet holds nothing.
pub fn list(dest: &Path, name: &str, layout: &str) -> Result<Vec<Entry>, CatalogError> {
    check_name(name)?;
    let parsed = Layout::parse(layout)?;
    let fixed = parsed.fixed_dirs();
    let mut root = dest.to_path_buf();
    for pieces in &parsed.components[..fixed] {
        root.push(render_pieces(pieces, name, None));
    }
    let mut entries = Vec::new();
    match fs::metadata(&root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(entries),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(entries),
        Err(source) => return Err(CatalogError::Walk { path: root, source }),
    }
    walk(&root, &parsed.components[fixed..], name, &mut entries)?;
    entries.sort_by(|a, b| a.time().cmp(&b.time()).then_with(|| a.path.cmp(&b.path)));
    Ok(entries)
}

fn walk(dir: &Path, rest: &[Vec<Piece>], name: &str, out: &mut Vec<Entry>) -> Result<(), CatalogError> {
    let walk_error = |source| CatalogError::Walk { path: dir.to_path_buf(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(walk_error)? {
        // Names that are not UTF-8 cannot come from a layout.
        if let Ok(file_name) = entry.map_err(walk_error)?.file_name().into_string() {
            names.push(file_name);
        }
    }
    names.sort();
    let [pattern] = rest else {
        for child in names {
            let path = dir.join(&child);
            if matches(&rest[0], name, &child) && fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                walk(&path, &rest[1..], name, out)?;
            }
        }
        return Ok(());
    };
    for file_name in names {
        let path = dir.join(&file_name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => continue,
            // Removed since the directory was read (retention running beside us).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CatalogError::Walk { path, source }),
        };
        let modified =
            meta.modified().ok().and_then(|t: SystemTime| Timestamp::try_from(t).ok()).unwrap_or(Timestamp::UNIX_EPOCH);
        let entry = |manifest, state| Entry { path: path.clone(), manifest, size: meta.len(), modified, state };
        if let Some(of) = partial_of(&file_name) {
            let archive_name = of.strip_suffix(MANIFEST_SUFFIX).unwrap_or(of);
            if matches(pattern, name, archive_name) {
                out.push(entry(None, EntryState::Partial));
            }
            continue;
        }
        if file_name.ends_with(MANIFEST_SUFFIX) || Format::of_path(Path::new(&file_name)).is_none() {
            continue;
        }
        let by_layout = matches(pattern, name, &file_name);
        match read_manifest(&path) {
            Ok(Some(manifest)) if manifest.backup != name => {}
            Ok(Some(manifest)) if manifest.archive != file_name => {
                let problem = format!("it describes the archive {:?}", manifest.archive);
                out.push(entry(Some(manifest), EntryState::BadManifest { problem }));
            }
            Ok(Some(manifest)) => out.push(entry(Some(manifest), EntryState::Complete)),
            Ok(None) if by_layout => out.push(entry(None, EntryState::MissingManifest)),
            Ok(None) => {}
            Err(CatalogError::ParseManifest { source, .. }) if by_layout => {
                let problem = format!("its manifest is corrupt: {source}");
                out.push(entry(None, EntryState::BadManifest { problem }));
            }
            Err(CatalogError::ParseManifest { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The part of a layout shared by every archive of backup `name` (its leading directories
/// without a date token), relative to the destination: where a listing starts.
pub fn fixed_root(layout: &str, name: &str) -> Result<PathBuf, CatalogError> {
    check_name(name)?;
    let parsed = Layout::parse(layout)?;
    Ok(parsed.components[..parsed.fixed_dirs()].iter().map(|pieces| render_pieces(pieces, name, None)).collect())
}

/// A file in a listing of a destination made elsewhere (another host's, through rsync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its path relative to the layout's [`fixed_root`], `/`-separated.
    pub path: String,
    /// Its modification time.
    pub modified: Timestamp,
}

/// The archives of backup `name` in a listing taken at the layout's [`fixed_root`]: paths
/// that match the rest of the layout, with their time and whether their manifest is
/// listed beside them (complete), oldest first. Temporary files and manifests are not
/// archives.
pub fn archives_in_listing(
    files: &[Listed],
    name: &str,
    layout: &str,
) -> Result<Vec<(PathBuf, Timestamp, bool)>, CatalogError> {
    check_name(name)?;
    let parsed = Layout::parse(layout)?;
    let rest = &parsed.components[parsed.fixed_dirs()..];
    let all: std::collections::BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut out: Vec<(PathBuf, Timestamp, bool)> = files
        .iter()
        .filter(|f| !f.path.ends_with(MANIFEST_SUFFIX) && partial_of(f.path.rsplit('/').next().unwrap_or("")).is_none())
        .filter(|f| {
            let parts: Vec<&str> = f.path.split('/').collect();
            let last = parts.len().saturating_sub(1);
            parts.len() == rest.len()
                && parts.iter().zip(rest).enumerate().all(|(i, (part, pieces))| {
                    matches(pieces, name, part)
                        || (i == last && untagged(part).is_some_and(|u| matches(pieces, name, &u)))
                })
        })
        .map(|f| (PathBuf::from(&f.path), f.modified, all.contains(format!("{}{MANIFEST_SUFFIX}", f.path).as_str())))
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// A file name without the `-HHMMSS` (and `-N`) a second run the same day gets before its
/// extension (`2026-11-22_db-061530-2.tar.zst` → `2026-11-22_db.tar.zst`); `None` when it
/// has none.
fn untagged(file_name: &str) -> Option<String> {
    let ext = [".tar.zst", ".zst"].into_iter().find(|e| file_name.ends_with(e))?;
    let stem = &file_name[..file_name.len() - ext.len()];
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (head, last) = stem.rsplit_once('-')?;
    let head = match head.rsplit_once('-') {
        Some((h, time)) if time.len() == 6 && digits(time) && digits(last) => h,
        _ if last.len() == 6 && digits(last) => head,
        _ => return None,
    };
    Some(format!("{head}{ext}"))
}

// ---------------------------------------------------------------------------------------------
// Pins
// ---------------------------------------------------------------------------------------------

/// What follows an archive's file name in its pin's.
pub const PIN_SUFFIX: &str = ".pin";

/// An archive kept whatever retention says (`tend backup pin`, `tend backup run --keep`),
/// recorded beside it as `ARCHIVE.pin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    /// When (ms since the epoch).
    pub since_ms: u64,
    /// Who pinned it.
    pub user: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The pin's path for an archive.
pub fn pin_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_os_string();
    name.push(PIN_SUFFIX);
    PathBuf::from(name)
}

/// Pins `archive`: retention never removes it (here or in a copy) until it is unpinned.
pub fn pin(archive: &Path, pin: &Pin) -> Result<PathBuf, CatalogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = pin_path(archive);
    let write_error = |source| CatalogError::WritePin { path: path.clone(), source };
    let partial = archive::partial_sibling(&path)
        .ok_or_else(|| write_error(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let json = serde_json::to_vec_pretty(pin).map_err(|e| write_error(io::Error::other(e)))?;
    let written = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&partial, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(write_error(e));
    }
    Ok(path)
}

/// Unpins `archive`; whether it was pinned.
pub fn unpin(archive: &Path) -> Result<bool, CatalogError> {
    let path = pin_path(archive);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CatalogError::WritePin { path, source }),
    }
}

/// Whether `archive` is pinned: its pin file exists, whatever it holds (an unreadable pin
/// still keeps the archive).
pub fn is_pinned(archive: &Path) -> bool {
    fs::symlink_metadata(pin_path(archive)).is_ok()
}

/// The pin of `archive`, when it has one that can be read.
pub fn read_pin(archive: &Path) -> Option<Pin> {
    let file = fs::File::open(pin_path(archive)).ok()?;
    let mut data = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_MANIFEST_BYTES), &mut data).ok()?;
    serde_json::from_slice(&data).ok()
}

/// For `.{name}.partial-{digits}`, the `name`.
fn partial_of(file_name: &str) -> Option<&str> {
    let inner = file_name.strip_prefix('.')?;
    let (of, pid) = inner.rsplit_once(PARTIAL_MARK)?;
    (!of.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(of)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tend_specs::calendar::LocalZone;

    /// An instant (RFC 3339) seen in a zone (`None`: UTC).
    fn at(text: &str, zone: Option<&str>) -> Zoned {
        let zone = zone.map_or_else(LocalZone::utc, |z| LocalZone::from_tz(Some(z)));
        text.parse::<Timestamp>().expect("timestamp").to_zoned(zone.time_zone().clone())
    }

    const DEFAULT: &str = "{name}/{yyyy}/{mm}/{date}_{name}.tar.zst";

    #[test]
    fn a_listing_of_a_copy_yields_its_archives_tagged_ones_included() {
        let t = |s: &str| s.parse::<Timestamp>().expect("timestamp");
        let f = |path: &str, time: &str| Listed { path: path.into(), modified: t(time) };
        let files = [
            f("2026/11/2026-11-22_db.tar.zst", "2026-11-22T03:00:00Z"),
            f("2026/11/2026-11-22_db.tar.zst.manifest.json", "2026-11-22T03:00:00Z"),
            f("2026/11/2026-11-22_db-061530.tar.zst", "2026-11-22T06:15:30Z"),
            f("2026/11/2026-11-22_db-061530-2.tar.zst", "2026-11-22T06:15:31Z"),
            f("2026/11/2026-11-22_other.tar.zst", "2026-11-22T03:00:00Z"),
            f("2026/11/.2026-11-23_db.tar.zst.partial-77", "2026-11-23T03:00:00Z"),
            f("2026/2026-11-24_db.tar.zst", "2026-11-24T03:00:00Z"),
        ];
        let found = archives_in_listing(&files, "db", DEFAULT).expect("listing");
        let shown: Vec<(String, bool)> = found.iter().map(|(p, _, c)| (p.display().to_string(), *c)).collect();
        assert_eq!(
            shown,
            [
                ("2026/11/2026-11-22_db.tar.zst".to_string(), true),
                ("2026/11/2026-11-22_db-061530.tar.zst".to_string(), false),
                ("2026/11/2026-11-22_db-061530-2.tar.zst".to_string(), false),
            ]
        );
        assert_eq!(fixed_root(DEFAULT, "db").expect("root"), PathBuf::from("db"));
        assert_eq!(untagged("x-123.zst"), None);
    }

    #[test]
    fn renders_every_token() {
        let when = at("2025-03-07T03:15:09Z", None);
        assert_eq!(
            render_layout(DEFAULT, "retro-db", &when).expect("renders"),
            PathBuf::from("retro-db/2025/03/2025-03-07_retro-db.tar.zst")
        );
        assert_eq!(
            render_layout("{name}-{yyyy}{mm}{dd}T{time}.zst", "srs", &when).expect("renders"),
            PathBuf::from("srs-20250307T031509.zst")
        );
    }

    #[test]
    fn renders_in_the_time_zone_of_the_instant() {
        let when = at("2025-03-07T22:30:00Z", Some("Europe/Berlin"));
        assert_eq!(
            render_layout("{date}_{time}.zst", "x", &when).expect("renders"),
            PathBuf::from("2025-03-07_233000.zst")
        );
    }

    #[test]
    fn refuses_bad_layouts() {
        let when = at("2025-03-07T03:15:00Z", None);
        let problem = |layout: &str| match render_layout(layout, "x", &when) {
            Err(CatalogError::Layout { problem, .. }) => problem,
            other => panic!("{layout}: {other:?}"),
        };
        assert!(problem("{name}/{hour}.tar.zst").contains("unknown token {hour}"));
        assert!(problem("/abs/{name}.tar.zst").contains("relative"));
        assert!(problem("../{name}.tar.zst").contains("`..`"));
        assert!(problem("a/../{name}.tar.zst").contains("`..`"));
        assert!(problem("a//{name}.tar.zst").contains("empty"));
        assert!(problem("{name.tar.zst").contains("without `}`"));
        assert!(problem("name}.tar.zst").contains("without `{`"));
        assert!(problem("{name}.tar.gz").contains(".tar.zst or .zst"));
        assert!(matches!(render_layout(DEFAULT, "../x", &when), Err(CatalogError::InvalidName { .. })));
        assert!(matches!(render_layout(DEFAULT, "..", &when), Err(CatalogError::InvalidName { .. })));
        assert!(matches!(render_layout(DEFAULT, "", &when), Err(CatalogError::InvalidName { .. })));
    }

    #[test]
    fn matches_what_it_renders_and_nothing_else() {
        let layout = Layout::parse(DEFAULT).expect("layout");
        assert_eq!(layout.fixed_dirs(), 1);
        let file = &layout.components[3];
        assert!(matches(file, "retro-db", "2025-03-07_retro-db.tar.zst"));
        assert!(!matches(file, "retro-db", "2025-03-07_retro-db.tar.zst.manifest.json"));
        assert!(!matches(file, "retro-db", "2025-03-07_other.tar.zst"));
        assert!(!matches(file, "retro-db", "2025-3-07_retro-db.tar.zst"));
        assert!(matches(&layout.components[1], "retro-db", "2025"));
        assert!(!matches(&layout.components[1], "retro-db", "20250"));
        assert_eq!(Layout::parse("{date}_{name}.zst").expect("layout").fixed_dirs(), 0);
        assert_eq!(Layout::parse("backups/{name}/{yyyy}/{date}.zst").expect("layout").fixed_dirs(), 2);
    }

    #[test]
    fn partial_names_are_recognised() {
        assert_eq!(partial_of(".2025-03-07_x.tar.zst.partial-1234"), Some("2025-03-07_x.tar.zst"));
        assert_eq!(partial_of(".a.tar.zst.manifest.json.partial-9"), Some("a.tar.zst.manifest.json"));
        assert_eq!(partial_of(".a.tar.zst.partial-"), None);
        assert_eq!(partial_of("a.tar.zst.partial-12"), None);
        assert_eq!(partial_of(".a.tar.zst.partial-12x"), None);
    }
}
