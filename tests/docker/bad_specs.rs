//! Bad specs: applying any of them changes nothing live.
//!
//! Every case of the corpus in `tests/bad-specs/` (see its README) is applied, in the
//! scope of running services, and must be refused whole: exit status 1, each of its
//! diagnostics printed as `FILE:LINE:COL: error: MESSAGE`, no secret shown, and the
//! scope's containers and tend's state exactly as they were. A bad set is refused before
//! tend talks to Docker, so each call is quick.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::harness::{self, Env, describe};

/// The corpus, at the workspace root.
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/bad-specs");

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

/// One case, copied into `into` (relative paths in it resolve against its own copy).
struct Case {
    name: String,
    /// What `tend apply` is given.
    path: PathBuf,
    /// `(FILE relative to the case, LINE, COL, first part of the message)`.
    expected: Vec<(String, usize, usize, String)>,
    /// Contents of its `*.secret` files.
    secrets: Vec<String>,
}

/// Parses `LINE:COL: MESSAGE` into (line, column, the message up to its first `…`).
fn position(rest: &str) -> (usize, usize, String) {
    let mut it = rest.trim_start().splitn(3, ':');
    let mut num = || it.next().and_then(|s| s.trim().parse::<usize>().ok()).unwrap_or_else(|| panic!("{rest:?}"));
    let (line, column) = (num(), num());
    let message = it.next().unwrap_or_else(|| panic!("no message in {rest:?}")).trim_start();
    (line, column, message.split('…').next().unwrap_or_default().to_string())
}

/// Every case of the corpus, each copied into its own directory under `into`.
fn cases(into: &Path) -> Vec<Case> {
    let corpus = PathBuf::from(CORPUS);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("read the corpus {}: {e}", corpus.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for path in entries {
        let file_name = path.file_name().and_then(|n| n.to_str()).expect("a UTF-8 name").to_string();
        let is_secret = |p: &Path| p.extension().is_some_and(|e| e == "secret");
        if path.is_dir() {
            let dest = into.join(&file_name);
            copy_dir(&path, &dest);
            let expected = std::fs::read_to_string(path.join("expect"))
                .expect("read the expect file")
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let (file, rest) = l.split_once(':').unwrap_or_else(|| panic!("{l:?}"));
                    let (line, column, message) = position(rest);
                    (file.to_string(), line, column, message)
                })
                .collect();
            let secrets = files_under(&dest)
                .into_iter()
                .filter(|(p, _)| is_secret(p))
                .map(|(_, v)| String::from_utf8_lossy(&v).trim().to_string())
                .collect();
            out.push(Case { name: file_name, path: dest.clone(), expected, secrets });
        } else if let Some(stem) = file_name.strip_suffix(".yaml").or_else(|| file_name.strip_suffix(".yml")) {
            // The case and its companions (`NN-name.*`), alone in a directory.
            let dest = into.join(stem);
            std::fs::create_dir_all(&dest).expect("create a case directory");
            let mut secrets = Vec::new();
            for companion in std::fs::read_dir(&corpus).expect("read the corpus") {
                let p = companion.expect("directory entry").path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if p.is_file() && name.starts_with(&format!("{stem}.")) {
                    std::fs::copy(&p, dest.join(name)).expect("copy a case file");
                    if is_secret(&p) {
                        secrets.push(std::fs::read_to_string(&p).expect("read a secret").trim().to_string());
                    }
                }
            }
            let text = std::fs::read_to_string(&path).expect("read a case");
            let expected = text
                .lines()
                .map_while(|l| l.strip_prefix("# expect:"))
                .map(|rest| {
                    let (line, column, message) = position(rest);
                    (file_name.clone(), line, column, message)
                })
                .collect();
            out.push(Case { name: stem.to_string(), path: dest.join(&file_name), expected, secrets });
        }
    }
    out
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
    let cases = cases(work.path());
    assert!(cases.len() >= 45, "the corpus has only {} cases", cases.len());
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        let arg = case.path.to_str().expect("a UTF-8 path");
        let output = env.tend(&["apply", arg]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut problems = Vec::new();
        if output.status.code() != Some(1) {
            problems.push("exit status is not 1".to_string());
        }
        if !stderr.contains("error:") {
            problems.push("no `error:` on stderr".to_string());
        }
        let root =
            if case.path.is_dir() { case.path.clone() } else { case.path.parent().expect("parent").to_path_buf() };
        for (file, line, column, message) in &case.expected {
            let prefix = format!("{}:{line}:{column}: error: ", root.join(file).display());
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
