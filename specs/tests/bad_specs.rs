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
//!
//! Reading the corpus is shared with the docker test (`tests/harness/bad_spec_corpus.rs`);
//! the matching here is this test's own.

#[path = "../../tests/harness/bad_spec_corpus.rs"]
// `Case::companions` is for the docker test, which copies them; the loader finds them itself.
#[allow(dead_code)]
mod bad_spec_corpus;

use std::fmt;
use std::path::Path;

use bad_spec_corpus::{Case, Expected, cases};
use tend_specs::{Diagnostic, load_path};

/// The corpus must keep at least this many cases.
const MIN_CASES: usize = 100;

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
    let actual: Vec<Actual> = diags.iter().map(|d| relative(d, case.root())).collect();
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
