//! Bad specs: applying any of them changes nothing live.
//!
//! Every case of the corpus in `tests/bad-specs/` (see its README) is applied, in the
//! scope of running services, and must be refused whole: exit status 1, each of its
//! diagnostics printed as `FILE:LINE:COL: error: MESSAGE`, no secret shown, and the
//! scope's containers and tend's state exactly as they were. A bad set is refused before
//! tend talks to Docker, so each call is quick.
//!
//! The corpus is read by `tests/harness/bad_spec_corpus.rs` (shared with the loader's test).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::bad_spec_corpus::{self, Case};
use crate::harness::{self, Env, describe};

/// What must not change: each container's ID, name, state and start time.
type Snapshot = Vec<(String, String, String, String)>;

fn snapshot(env: &Env) -> Snapshot {
    env.containers()
        .into_iter()
        .map(|c| {
            let started =
                c.inspect.pointer("/State/StartedAt").and_then(|v| v.as_str()).unwrap_or_default().to_string();
            (c.id, c.name, c.state, started)
        })
        .collect()
}

/// Every file under `dir` with its content, by path relative to `dir`.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let p = entry.expect("directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let content = std::fs::read(&p).unwrap_or_default();
                out.insert(p.strip_prefix(dir).expect("under dir").to_path_buf(), content);
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a case directory");
    for entry in std::fs::read_dir(from).expect("read a case directory") {
        let p = entry.expect("directory entry").path();
        let target = to.join(p.file_name().expect("a file name"));
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).expect("copy a case file");
        }
    }
}

/// Copies a case (with its companions) into its own directory under `into`, so relative
/// paths in it resolve against its own copy; returns what `tend apply` is given.
fn copy_case(case: &Case, into: &Path) -> PathBuf {
    let dest = into.join(&case.name);
    if case.path.is_dir() {
        copy_dir(&case.path, &dest);
        return dest;
    }
    std::fs::create_dir_all(&dest).expect("create a case directory");
    for file in std::iter::once(&case.path).chain(&case.companions) {
        std::fs::copy(file, dest.join(file.file_name().expect("a file name"))).expect("copy a case file");
    }
    dest.join(case.path.file_name().expect("a file name"))
}

#[test]
fn bad_specs_change_nothing_live() {
    harness::require_docker();
    let env = Env::new("bad_specs_change_nothing_live");
    let (web, worker) = (env.name("web"), env.name("worker"));
    let image = harness::test_image();
    let service = |name: &str, replicas: u32| {
        format!(
            "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n  pullPolicy: never\n  command: [\"sleep\", \"3600\"]\n  replicas: {replicas}\n"
        )
    };
    env.write_spec("good.yaml", &format!("{}{}", service(&web, 1), service(&worker, 2)));
    env.apply();
    let before = snapshot(&env);
    assert_eq!(before.len(), 3, "one web and two worker containers: {before:#?}");
    assert!(before.iter().all(|(_, _, state, _)| state == "running"), "{before:#?}");
    let state_before = files_under(env.state_path());

    let work = tempfile::tempdir().expect("a directory for the cases");
    let cases = bad_spec_corpus::cases();
    assert!(cases.len() >= 45, "the corpus has only {} cases", cases.len());
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        let path = copy_case(case, work.path());
        let arg = path.to_str().expect("a UTF-8 path");
        let output = env.tend(&["apply", arg]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut problems = Vec::new();
        if output.status.code() != Some(1) {
            problems.push("exit status is not 1".to_string());
        }
        if !stderr.contains("error:") {
            problems.push("no `error:` on stderr".to_string());
        }
        let root = if path.is_dir() { path.clone() } else { path.parent().expect("parent").to_path_buf() };
        for expected in &case.expected {
            let prefix =
                format!("{}:{}:{}: error: ", root.join(&expected.file).display(), expected.line, expected.column);
            // The message up to its first `…`.
            let message = &expected.parts[0];
            if !stderr.lines().any(|l| l.strip_prefix(&prefix).is_some_and(|m| m.contains(message.as_str()))) {
                problems.push(format!("stderr lacks `{prefix}…{message}`"));
            }
        }
        if case
            .secrets
            .iter()
            .any(|s| stderr.contains(s.as_str()) || String::from_utf8_lossy(&output.stdout).contains(s.as_str()))
        {
            problems.push("the output shows a secret".to_string());
        }
        let now = snapshot(&env);
        if now != before {
            problems.push(format!("containers changed:\nbefore: {before:#?}\nafter: {now:#?}"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}\n{}", case.name, problems.join("\n  "), describe(&output)));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
    assert_eq!(files_under(env.state_path()), state_before, "tend's state changed");
    eprintln!("{} bad specs applied in {:?}", cases.len(), started.elapsed());
}
