//! The bad-spec corpus (`tests/bad-specs/` at the workspace root, described in its README),
//! read in one place for the two tests that use it: `specs/tests/bad_specs.rs` (every case
//! is rejected with exactly the expected diagnostics) and `tests/docker/bad_specs.rs`
//! (applying any case changes nothing live). Each test keeps its own checks; this module
//! only says what the cases are and what they expect.
//!
//! A case is either a file `NN-name.yaml` whose first lines are
//! `# expect: LINE:COL: MESSAGE` (positions in that same file), or a directory `NN-name/`
//! holding spec files and an `expect` file of `FILE:LINE:COL: MESSAGE` lines (FILE relative
//! to the directory; `#` lines are comments). MESSAGE is a substring of the diagnostic; a
//! `…` in it stands for any text, so it is kept as the [`Expected::parts`] between them.
//!
//! Companion files a file case needs (a secret, a mounted file) sit next to it as
//! `NN-name.*`. Files named `*.secret` hold secret values: no diagnostic may ever show
//! their content.
//!
//! Include it from a test crate's root with
//! `#[path = "…/tests/harness/bad_spec_corpus.rs"] mod bad_spec_corpus;`. It uses only std
//! and panics, naming the file, on a malformed corpus. Both crates that include it have
//! their manifest one level below the workspace root (`specs/`, `agent/`), which is how
//! [`CORPUS`] finds the corpus.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where the corpus lives.
pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/bad-specs");

/// One expected diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The file, relative to the case's [root](Case::root) (for a file case, its own name).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Parts that must appear in the message, in this order (MESSAGE split on `…`).
    pub parts: Vec<String>,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.parts.join("…"))
    }
}

/// A case of the corpus, where it lies in the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    /// `NN-name` (without extension).
    pub name: String,
    /// The path to give the loader or `tend apply`: the `.yaml` file or the directory.
    pub path: PathBuf,
    /// The expected diagnostics, in the order they are listed.
    pub expected: Vec<Expected>,
    /// A file case's companion files (`NN-name.*` beside it, the case itself excluded),
    /// sorted; empty for a directory case, whose directory holds all it needs.
    pub companions: Vec<PathBuf>,
    /// Contents (trimmed) of the case's `*.secret` files: its companions, or any under
    /// its directory.
    pub secrets: Vec<String>,
}

impl Case {
    /// What [`Expected::file`] is relative to: the case directory, or the directory
    /// holding the case file (the corpus).
    pub fn root(&self) -> &Path {
        if self.path.is_dir() { &self.path } else { self.path.parent().expect("a case file has a parent") }
    }
}

/// Parses `LINE:COL: MESSAGE` (after the file part has been split off); `origin` names
/// the file it comes from, for panics.
fn parse_position(file: &str, rest: &str, origin: &str) -> Expected {
    let mut it = rest.splitn(3, ':');
    let (Some(line), Some(column), Some(message)) = (it.next(), it.next(), it.next()) else {
        panic!("{origin}: expected `LINE:COL: MESSAGE`, found {rest:?}");
    };
    let num = |s: &str| s.trim().parse::<usize>().unwrap_or_else(|_| panic!("{origin}: bad number {s:?} in {rest:?}"));
    let message = message.strip_prefix(' ').unwrap_or(message);
    assert!(!message.trim().is_empty(), "{origin}: empty message in {rest:?}");
    Expected {
        file: file.to_string(),
        line: num(line),
        column: num(column),
        parts: message.split('…').map(str::to_string).collect(),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn is_secret(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".secret"))
}

/// The trimmed content of a `*.secret` file.
fn read_secret(path: &Path) -> String {
    let value = read(path).trim().to_string();
    assert!(value.len() >= 8, "{}: make secret values long enough to be unmistakable", path.display());
    value
}

/// The entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    entries
}

/// Contents of the `*.secret` files under `dir`, recursively.
fn secrets_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for p in entries(dir) {
        if p.is_dir() {
            out.extend(secrets_under(&p));
        } else if is_secret(&p) {
            out.push(read_secret(&p));
        }
    }
    out
}

/// Every case of the corpus, sorted by name.
pub fn cases() -> Vec<Case> {
    let corpus = PathBuf::from(CORPUS);
    let all = entries(&corpus);
    let mut cases = Vec::new();
    for path in &all {
        let file_name = path.file_name().and_then(|n| n.to_str()).expect("UTF-8 file name").to_string();
        if path.is_dir() {
            let expect = path.join("expect");
            let origin = expect.display().to_string();
            let expected = read(&expect)
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let (file, rest) = l
                        .split_once(':')
                        .unwrap_or_else(|| panic!("{origin}: expected `FILE:LINE:COL: MESSAGE`: {l:?}"));
                    parse_position(file, rest, &origin)
                })
                .collect();
            let secrets = secrets_under(path);
            cases.push(Case { name: file_name, path: path.clone(), expected, companions: Vec::new(), secrets });
        } else if let Some(stem) = file_name.strip_suffix(".yaml").or_else(|| file_name.strip_suffix(".yml")) {
            let origin = path.display().to_string();
            let expected = read(path)
                .lines()
                .map_while(|l| l.strip_prefix("# expect:"))
                .map(|rest| parse_position(&file_name, rest.trim_start(), &origin))
                .collect();
            let prefix = format!("{stem}.");
            let companions: Vec<PathBuf> = all
                .iter()
                .filter(|p| {
                    *p != path
                        && p.is_file()
                        && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix))
                })
                .cloned()
                .collect();
            let secrets = companions.iter().filter(|p| is_secret(p)).map(|p| read_secret(p)).collect();
            cases.push(Case { name: stem.to_string(), path: path.clone(), expected, companions, secrets });
        }
        // Anything else is a companion file or documentation.
    }
    cases
}
