//! The bad-spec corpus (`tests/bad-specs/` at the workspace root): every case must be
//! rejected with exactly the diagnostics it lists, at the places it lists.
//!
//! A case is either a file `NN-name.yaml` whose first lines are
//! `# expect: LINE:COL: MESSAGE` (positions in that same file), or a directory `NN-name/`
//! holding spec files and an `expect` file of `FILE:LINE:COL: MESSAGE` lines (FILE relative
//! to the directory; `#` lines are comments). MESSAGE is a substring of the diagnostic; a
//! `…` in it stands for any text (so `first defined at …a.yaml:3:18` does not depend on
//! where the corpus lives). Each expected line must match its own diagnostic, and no
//! diagnostic may be left over.
//!
//! Companion files a case needs (a secret, say) sit next to it with another extension.
//! Files named `*.secret` hold secret values: no diagnostic may ever show their content.

use std::fmt;
use std::path::{Path, PathBuf};

use tend_specs::{Diagnostic, load_path};

/// Where the corpus lives.
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/bad-specs");

/// The corpus must keep at least this many cases.
const MIN_CASES: usize = 100;

/// One expected diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    /// The file, relative to the case directory (or the case file's name).
    file: String,
    line: usize,
    column: usize,
    /// Parts that must appear in the message, in this order.
    parts: Vec<String>,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.parts.join("…"))
    }
}

/// One diagnostic as loaded, with its file made relative to the case.
#[derive(Debug, Clone)]
struct Actual {
    file: String,
    line: usize,
    column: usize,
    message: String,
}

impl fmt::Display for Actual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// A case of the corpus.
struct Case {
    /// `NN-name` (without extension).
    name: String,
    /// The path given to the loader: the `.yaml` file or the directory.
    path: PathBuf,
    /// What paths in diagnostics are made relative to.
    root: PathBuf,
    expected: Vec<Expected>,
    /// Contents of the case's `*.secret` files.
    secrets: Vec<String>,
}

/// Parses `LINE:COL: MESSAGE` (after the file part has been split off).
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

/// `*.secret` files under `dir` (recursively) whose name starts with `prefix`.
fn secrets_in(dir: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = entry.expect("directory entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if p.is_dir() && d == dir && !prefix.is_empty() {
                continue;
            } else if p.is_dir() {
                stack.push(p);
            } else if name.starts_with(prefix) && name.ends_with(".secret") {
                let value = read(&p).trim().to_string();
                assert!(value.len() >= 8, "{}: make secret values long enough to be unmistakable", p.display());
                out.push(value);
            }
        }
    }
    out
}

/// Every case of the corpus, sorted by name.
fn cases() -> Vec<Case> {
    let corpus = PathBuf::from(CORPUS);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("read the corpus {}: {e}", corpus.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    let mut cases = Vec::new();
    for path in entries {
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
            let secrets = secrets_in(&path, "");
            cases.push(Case { name: file_name, root: path.clone(), path, expected, secrets });
        } else if let Some(stem) = file_name.strip_suffix(".yaml").or_else(|| file_name.strip_suffix(".yml")) {
            let origin = path.display().to_string();
            let expected = read(&path)
                .lines()
                .map_while(|l| l.strip_prefix("# expect:"))
                .map(|rest| parse_position(&file_name, rest.trim_start(), &origin))
                .collect();
            let secrets = secrets_in(&corpus, &format!("{stem}."));
            cases.push(Case { name: stem.to_string(), root: corpus.clone(), path, expected, secrets });
        }
        // Anything else is a companion file or documentation.
    }
    cases
}

fn relative(d: &Diagnostic, root: &Path) -> Actual {
    match &d.location {
        Some(loc) => Actual {
            file: loc.file.strip_prefix(root).unwrap_or(&loc.file).to_string_lossy().into_owned(),
            line: loc.line,
            column: loc.column,
            message: d.message.clone(),
        },
        None => Actual { file: "<no location>".into(), line: 0, column: 0, message: d.message.clone() },
    }
}

fn matches(e: &Expected, a: &Actual) -> bool {
    if (e.file.as_str(), e.line, e.column) != (a.file.as_str(), a.line, a.column) {
        return false;
    }
    let mut rest = a.message.as_str();
    e.parts.iter().all(|part| match rest.find(part.as_str()) {
        Some(i) => {
            rest = &rest[i + part.len()..];
            true
        }
        None => false,
    })
}

/// Pairs each expected line with its own diagnostic (a maximum bipartite matching, so the
/// order of the lines does not matter); returns whether all of both sides are paired.
fn all_paired(expected: &[Expected], actual: &[Actual]) -> bool {
    fn augment(
        e: usize,
        expected: &[Expected],
        actual: &[Actual],
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for (a, act) in actual.iter().enumerate() {
            if seen[a] || !matches(&expected[e], act) {
                continue;
            }
            seen[a] = true;
            if owner[a].is_none_or(|other| augment(other, expected, actual, seen, owner)) {
                owner[a] = Some(e);
                return true;
            }
        }
        false
    }
    if expected.len() != actual.len() {
        return false;
    }
    let mut owner = vec![None; actual.len()];
    (0..expected.len()).all(|e| augment(e, expected, actual, &mut vec![false; actual.len()], &mut owner))
}

/// What is wrong with one case, if anything.
fn check(case: &Case) -> Option<String> {
    if case.expected.is_empty() {
        return Some(format!("{}: no expectations (`# expect:` lines or an `expect` file)", case.name));
    }
    let diags = match load_path(&case.path) {
        Ok(desired) => {
            return Some(format!(
                "{}: loaded without problems ({} service(s)), but it is a bad spec",
                case.name,
                desired.services.len()
            ));
        }
        Err(diags) => diags,
    };
    let actual: Vec<Actual> = diags.iter().map(|d| relative(d, &case.root)).collect();
    let mut problems = Vec::new();
    if !all_paired(&case.expected, &actual) {
        let list = |items: Vec<String>| items.iter().map(|s| format!("    {s}\n")).collect::<String>();
        problems.push(format!(
            "  expected:\n{}  actual:\n{}",
            list(case.expected.iter().map(ToString::to_string).collect()),
            list(actual.iter().map(ToString::to_string).collect())
        ));
    }
    for secret in &case.secrets {
        if diags.iter().any(|d| d.to_string().contains(secret.as_str())) {
            problems.push("  a diagnostic shows the content of a secret file".to_string());
        }
    }
    (!problems.is_empty()).then(|| format!("{}:\n{}", case.name, problems.join("\n")))
}

#[test]
fn every_bad_spec_is_rejected_with_exactly_the_expected_diagnostics() {
    let cases = cases();
    assert!(cases.len() >= MIN_CASES, "the corpus has {} cases; keep at least {MIN_CASES}", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad-spec cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn case_names_are_numbered_and_unique() {
    let cases = cases();
    let mut numbers: Vec<&str> = cases.iter().map(|c| c.name.split('-').next().unwrap_or_default()).collect();
    for (case, n) in cases.iter().zip(&numbers) {
        assert!(n.len() >= 2 && n.bytes().all(|b| b.is_ascii_digit()), "{}: name it NN-short-name", case.name);
    }
    numbers.sort_unstable();
    let before = numbers.len();
    numbers.dedup();
    assert_eq!(before, numbers.len(), "two cases share a number");
}

#[test]
fn the_matcher_needs_every_expected_line_and_every_diagnostic() {
    let e = |line, msg: &str| Expected { file: "f.yaml".into(), line, column: 1, parts: vec![msg.into()] };
    let a = |line, msg: &str| Actual { file: "f.yaml".into(), line, column: 1, message: msg.into() };
    assert!(all_paired(&[e(1, "bad"), e(1, "bad thing")], &[a(1, "a bad thing"), a(1, "bad")]));
    assert!(!all_paired(&[e(1, "bad")], &[a(1, "bad"), a(2, "extra")]), "an extra diagnostic fails");
    assert!(!all_paired(&[e(1, "bad"), e(1, "bad")], &[a(1, "bad")]), "one diagnostic cannot serve two lines");
    assert!(!all_paired(&[e(2, "bad")], &[a(1, "bad")]), "the place must match");
    let parts = Expected { file: "f.yaml".into(), line: 1, column: 1, parts: vec!["at ".into(), "a.yaml:3".into()] };
    assert!(matches(&parts, &a(1, "first at /x/y/a.yaml:3:1")));
    assert!(!matches(&parts, &a(1, "a.yaml:3 first at")));
}
