//! Git spec sources against real git: a repository served as `file://` and by `git daemon`
//! on loopback. Polls check commits out whole, promotions switch `current` atomically and
//! survive a restart, rejected commits are not offered again, and no secret reaches an error.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tend::daemon::source::{GitConfig, GitRef, GitSource, Revision, SourceError, redact_url};

/// Runs git in `dir` as a fixed author; its trimmed standard output.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A working repository and a bare one it pushes to, which the sources fetch from.
struct Repo {
    tmp: tempfile::TempDir,
}

impl Repo {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = Self { tmp };
        git(repo.tmp.path(), &["init", "-q", "work"]);
        git(repo.tmp.path(), &["init", "-q", "--bare", "served/specs.git"]);
        repo
    }

    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    fn served(&self) -> PathBuf {
        self.tmp.path().join("served")
    }

    fn url(&self) -> String {
        format!("file://{}", self.served().join("specs.git").display())
    }

    /// Writes `files` (an empty content deletes the file), commits and pushes; the commit.
    fn commit(&self, files: &[(&str, &str)]) -> String {
        for (name, content) in files {
            let path = self.work().join(name);
            if content.is_empty() {
                std::fs::remove_file(&path).expect("remove file");
            } else {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, content).expect("write file");
            }
        }
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-q", "--allow-empty", "-m", "specs"]);
        git(&self.work(), &["push", "-q", "--force", "../served/specs.git", "main", "--tags"]);
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    /// Moves annotated tag `name` to HEAD and pushes it.
    fn tag(&self, name: &str) {
        git(&self.work(), &["tag", "-f", "-a", "-m", name, name]);
        git(&self.work(), &["push", "-q", "--force", "../served/specs.git", &format!("refs/tags/{name}")]);
    }
}

fn config(url: &str, reference: GitRef) -> GitConfig {
    GitConfig {
        url: url.to_string(),
        reference,
        path: None,
        interval: Duration::from_secs(60),
        ssh_key: None,
        token_file: None,
    }
}

fn main_branch() -> GitRef {
    GitRef::Branch("main".into())
}

/// A new source working in `work_dir`.
fn source(config: GitConfig, work_dir: &Path) -> GitSource {
    GitSource::new(config, work_dir.to_path_buf()).expect("new git source")
}

async fn poll_new(source: &mut GitSource) -> Revision {
    source.poll().await.expect("poll").expect("a new revision")
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("reading {name} in {}: {e}", dir.display()))
}

/// The error, its causes and its Debug form: everything that could be printed.
fn all_text(e: &SourceError) -> String {
    let mut text = format!("{e} | {e:?}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(" | {c}"));
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn the_first_poll_checks_the_commit_out_whole_and_nothing_new_after_promotion() {
    let repo = Repo::new();
    let commit =
        repo.commit(&[("a.yaml", "kind: Service\n"), ("dir/b.yaml", "kind: Timer\n"), ("run.sh", "#!/bin/sh\n")]);
    std::fs::set_permissions(repo.work().join("run.sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::symlink("a.yaml", repo.work().join("link.yaml")).expect("symlink");
    let commit2 = repo.commit(&[]);
    assert_ne!(commit, commit2);
    let work = tempfile::tempdir().expect("tempdir");
    let work_dir = work.path().join("git");
    let mut src = source(config(&repo.url(), main_branch()), &work_dir);
    assert_eq!(src.current(), None);
    assert_eq!(std::fs::metadata(&work_dir).expect("work dir").permissions().mode() & 0o777, 0o700);

    let rev = poll_new(&mut src).await;
    assert_eq!(rev.commit.as_deref(), Some(commit2.as_str()));
    assert_eq!(rev.dir, work_dir.join("checkouts").join(&commit2));
    assert_eq!(read(&rev.dir, "a.yaml"), "kind: Service\n");
    assert_eq!(read(&rev.dir, "dir/b.yaml"), "kind: Timer\n");
    assert_eq!(std::fs::read_link(rev.dir.join("link.yaml")).expect("symlink kept"), Path::new("a.yaml"));
    assert_eq!(std::fs::metadata(rev.dir.join("run.sh")).expect("run.sh").permissions().mode() & 0o111, 0o111);
    assert!(!rev.dir.join(".git").exists(), "a checkout is the tree only");
    let mut names: Vec<_> =
        std::fs::read_dir(&rev.dir).expect("checkout").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    assert_eq!(names, ["a.yaml", "dir", "link.yaml", "run.sh"]);

    // Not promoted yet: offered again (the caller may have failed to validate it).
    assert_eq!(poll_new(&mut src).await, rev);
    src.promote(&rev).expect("promote");
    assert_eq!(src.current(), Some(rev.clone()));
    assert_eq!(src.poll().await.expect("poll"), None);
    assert_eq!(src.interval(), Duration::from_secs(60));
}

#[tokio::test]
async fn a_new_commit_gets_its_own_directory_and_promotion_switches_current_for_good() {
    let repo = Repo::new();
    repo.commit(&[("a.yaml", "v: 1\n")]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut src = source(config(&repo.url(), main_branch()), work.path());
    let first = poll_new(&mut src).await;
    src.promote(&first).expect("promote first");

    repo.commit(&[("a.yaml", "v: 2\n"), ("b.yaml", "new\n")]);
    let second = poll_new(&mut src).await;
    assert_ne!(second.dir, first.dir);
    assert_eq!(read(&second.dir, "a.yaml"), "v: 2\n");
    // The old one is intact and still current until the new one is promoted.
    assert_eq!(read(&first.dir, "a.yaml"), "v: 1\n");
    assert!(!first.dir.join("b.yaml").exists());
    assert_eq!(src.current(), Some(first.clone()));

    src.promote(&second).expect("promote second");
    assert_eq!(src.current(), Some(second.clone()));
    assert_eq!(
        std::fs::read_link(work.path().join("current")).expect("link"),
        Path::new("checkouts").join(second.commit.as_deref().expect("commit"))
    );
    drop(src);

    // A restart sees the promoted revision and nothing new.
    let mut src = source(config(&repo.url(), main_branch()), work.path());
    assert_eq!(src.current(), Some(second.clone()));
    assert_eq!(src.poll().await.expect("poll"), None);

    // A third promotion keeps the current and the previous checkout only.
    repo.commit(&[("a.yaml", "v: 3\n")]);
    let third = poll_new(&mut src).await;
    src.promote(&third).expect("promote third");
    assert!(third.dir.is_dir());
    assert!(second.dir.is_dir(), "the previous checkout is kept");
    assert!(!first.dir.exists(), "older checkouts are removed");
}

#[tokio::test]
async fn a_rejected_commit_is_not_offered_again_but_a_later_one_is() {
    let repo = Repo::new();
    repo.commit(&[("a.yaml", "good\n")]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut src = source(config(&repo.url(), main_branch()), work.path());
    let good = poll_new(&mut src).await;
    src.promote(&good).expect("promote");

    repo.commit(&[("a.yaml", "bad\n")]);
    let bad = poll_new(&mut src).await;
    src.reject(&bad);
    assert!(!bad.dir.exists(), "a rejected checkout is removed");
    assert_eq!(src.poll().await.expect("poll"), None);
    assert_eq!(src.poll().await.expect("poll"), None);
    assert_eq!(src.current(), Some(good.clone()));
    assert!(src.promote(&bad).is_err(), "a removed checkout cannot be promoted");

    let fixed = repo.commit(&[("a.yaml", "fixed\n")]);
    let rev = poll_new(&mut src).await;
    assert_eq!(rev.commit.as_deref(), Some(fixed.as_str()));
    assert_eq!(read(&rev.dir, "a.yaml"), "fixed\n");
}

#[tokio::test]
async fn a_tag_is_followed_when_it_moves() {
    let repo = Repo::new();
    let tagged = repo.commit(&[("a.yaml", "v12\n")]);
    repo.tag("v12");
    repo.commit(&[("a.yaml", "untagged\n")]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut src = source(config(&repo.url(), GitRef::Tag("v12".into())), work.path());
    let rev = poll_new(&mut src).await;
    assert_eq!(rev.commit.as_deref(), Some(tagged.as_str()), "the annotated tag is peeled to its commit");
    assert_eq!(read(&rev.dir, "a.yaml"), "v12\n");
    src.promote(&rev).expect("promote");
    assert_eq!(src.poll().await.expect("poll"), None, "new commits on the branch do not move the tag");

    let moved = repo.commit(&[("a.yaml", "v12 again\n")]);
    repo.tag("v12");
    let rev = poll_new(&mut src).await;
    assert_eq!(rev.commit.as_deref(), Some(moved.as_str()));
    assert_eq!(read(&rev.dir, "a.yaml"), "v12 again\n");
}

#[tokio::test]
async fn the_revision_points_into_the_configured_sub_directory_even_when_it_is_missing() {
    let repo = Repo::new();
    let commit = repo.commit(&[("hosts/vm-a/a.yaml", "a\n"), ("hosts/vm-b/b.yaml", "b\n")]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&repo.url(), main_branch());
    cfg.path = Some(PathBuf::from("./hosts/vm-a"));
    let mut src = source(cfg.clone(), work.path());
    let rev = poll_new(&mut src).await;
    assert_eq!(rev.dir, work.path().join("checkouts").join(&commit).join("hosts/vm-a"));
    assert_eq!(read(&rev.dir, "a.yaml"), "a\n");
    assert_eq!(read(&rev.dir, "../vm-b/b.yaml"), "b\n", "the whole commit is checked out");
    src.promote(&rev).expect("promote");
    assert_eq!(src.current(), Some(rev));

    // A commit without the directory is still a candidate: the caller's validation rejects it.
    repo.commit(&[("hosts/vm-a/a.yaml", "")]);
    let rev = poll_new(&mut src).await;
    assert!(!rev.dir.exists());
    assert!(rev.dir.ends_with("hosts/vm-a"));

    for bad in ["/etc/tend", "hosts/../../etc"] {
        cfg.path = Some(PathBuf::from(bad));
        let e = GitSource::new(cfg.clone(), work.path().to_path_buf()).expect_err(bad);
        assert!(e.to_string().contains(bad), "{e}");
    }
}

/// `git daemon` serving `base` on a free loopback port; killed when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        // `git daemon` would run git-daemon as a child of its own, which killing `git` leaves
        // running: start the daemon itself.
        let exec_path = PathBuf::from(git(Path::new("/"), &["--exec-path"]));
        let child = Command::new(exec_path.join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git-daemon (in Debian's git package)");
        let daemon = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn polls_over_the_git_protocol() {
    let repo = Repo::new();
    let commit = repo.commit(&[("a.yaml", "over git://\n")]);
    let daemon = Daemon::start(&repo.served());
    let url = format!("git://127.0.0.1:{}/specs.git", daemon.port);
    let work = tempfile::tempdir().expect("tempdir");
    let mut src = source(config(&url, main_branch()), work.path());
    let rev = poll_new(&mut src).await;
    assert_eq!(rev.commit.as_deref(), Some(commit.as_str()));
    assert_eq!(read(&rev.dir, "a.yaml"), "over git://\n");
    src.promote(&rev).expect("promote");
    assert_eq!(src.poll().await.expect("poll"), None);
    let next = repo.commit(&[("a.yaml", "next\n")]);
    assert_eq!(poll_new(&mut src).await.commit, Some(next));

    let missing = format!("git://127.0.0.1:{}/nope.git", daemon.port);
    let e = source(config(&missing, main_branch()), work.path()).poll().await.expect_err("no such repository");
    assert!(e.to_string().contains(&missing), "{e}");
}

#[tokio::test]
async fn a_fetch_failure_names_the_url_and_the_ref() {
    let work = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/nowhere.git", work.path().display());
    let mut src = source(config(&url, main_branch()), &work.path().join("git"));
    let e = src.poll().await.expect_err("no repository there");
    let text = e.to_string();
    assert!(text.starts_with(&format!("fetching branch main of {url} failed: ")), "{text}");
    assert!(text.contains("does not appear to be a git repository"), "{text}");
    assert_eq!(e.kind(), "fetch");

    // A missing branch of an existing repository.
    let repo = Repo::new();
    repo.commit(&[("a.yaml", "a\n")]);
    let mut src = source(config(&repo.url(), GitRef::Branch("nope".into())), &work.path().join("git2"));
    let e = src.poll().await.expect_err("no such branch");
    assert!(e.to_string().contains("branch nope"), "{e}");
}

#[tokio::test]
async fn a_password_in_the_url_never_appears_in_errors() {
    let url = "https://user:s3cret@127.0.0.1:1/x.git";
    assert_eq!(redact_url(url), "https://user:***@127.0.0.1:1/x.git");
    let work = tempfile::tempdir().expect("tempdir");
    let mut src = source(config(url, main_branch()), work.path());
    assert!(!format!("{src:?}").contains("s3cret"));
    let e = src.poll().await.expect_err("nothing listens on port 1");
    let text = all_text(&e);
    assert!(text.contains("https://user:***@127.0.0.1:1/x.git"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    // Nor does a password left in the mirror's files.
    let mirror = std::fs::read_to_string(work.path().join("mirror.git/config")).expect("mirror config");
    assert!(!mirror.contains("s3cret"), "{mirror}");
}

#[tokio::test]
async fn the_token_never_appears_in_errors() {
    let work = tempfile::tempdir().expect("tempdir");
    for token in ["tok-SECRET-123", "x-access-token:tok-SECRET-456"] {
        let token_file = work.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("token file");
        let mut cfg = config("https://127.0.0.1:1/x.git", main_branch());
        cfg.token_file = Some(token_file);
        let mut src = source(cfg, &work.path().join("git"));
        let e = src.poll().await.expect_err("nothing listens on port 1");
        let text = all_text(&e);
        assert!(text.contains("https://127.0.0.1:1/x.git"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }

    // A missing or empty token file is an error naming the file, not its content.
    let mut cfg = config("https://127.0.0.1:1/x.git", main_branch());
    cfg.token_file = Some(work.path().join("missing"));
    let e = source(cfg.clone(), &work.path().join("git")).poll().await.expect_err("missing token file");
    assert!(e.to_string().contains("missing"), "{e}");
    std::fs::write(work.path().join("empty"), "\n").expect("empty token file");
    cfg.token_file = Some(work.path().join("empty"));
    let e = source(cfg.clone(), &work.path().join("git")).poll().await.expect_err("empty token file");
    assert_eq!(e.kind(), "config");

    // Never over plain http.
    cfg.url = "http://127.0.0.1:1/x.git".into();
    let e = GitSource::new(cfg, work.path().join("git")).expect_err("token over http");
    assert!(e.to_string().contains("https"), "{e}");
}

#[tokio::test]
async fn an_ssh_source_uses_its_key_file() {
    // No sshd here: ssh's complaint about the (missing) key shows that git ran it with `-i`.
    let work = tempfile::tempdir().expect("tempdir");
    let key = work.path().join("deploy key");
    let mut cfg = config("ssh://git@127.0.0.1:1/specs.git", main_branch());
    cfg.ssh_key = Some(key.clone());
    let e = source(cfg, &work.path().join("git")).poll().await.expect_err("nothing listens on port 1");
    let text = e.to_string();
    assert!(text.contains(&format!("Identity file {} not accessible", key.display())), "{text}");
    assert!(text.contains("ssh://git@127.0.0.1:1/specs.git"), "{text}");
}

#[tokio::test]
async fn a_work_directory_in_use_by_another_process_is_reported_busy() {
    let repo = Repo::new();
    repo.commit(&[("a.yaml", "a\n")]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut src = source(config(&repo.url(), main_branch()), work.path());
    let other = std::fs::File::open(work.path().join("lock")).expect("lock file");
    other.lock().expect("flock");
    let e = src.poll().await.expect_err("busy");
    assert_eq!(e.kind(), "busy");
    drop(other);
    assert!(src.poll().await.expect("poll").is_some());
}

#[tokio::test]
async fn leftovers_of_a_killed_poll_are_removed_and_do_not_block_the_next() {
    let repo = Repo::new();
    let commit = repo.commit(&[("a.yaml", "a\n")]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut src = source(config(&repo.url(), main_branch()), work.path());
    let rev = poll_new(&mut src).await;
    src.promote(&rev).expect("promote");
    drop(src);

    // As a kill mid-checkout, mid-promotion and mid-fetch would leave them.
    let half = work.path().join("checkouts").join(format!(".tmp-{}", "0".repeat(40)));
    std::fs::create_dir_all(half.join("sub")).expect("half checkout");
    std::os::unix::fs::symlink("checkouts/x", work.path().join(".tmp-current")).expect("half link");
    std::fs::write(work.path().join("mirror.git/refs/heads/main.lock"), "").expect("stale ref lock");
    let next = repo.commit(&[("a.yaml", "b\n")]);

    let mut src = source(config(&repo.url(), main_branch()), work.path());
    assert!(!half.exists());
    assert!(std::fs::symlink_metadata(work.path().join(".tmp-current")).is_err());
    assert_eq!(src.current().and_then(|r| r.commit), Some(commit));
    let rev = poll_new(&mut src).await;
    assert_eq!(rev.commit, Some(next));
}

#[tokio::test]
async fn bad_settings_are_refused_before_any_git_runs() {
    let work = tempfile::tempdir().expect("tempdir");
    let cases = [
        (config("--upload-pack=touch /tmp/x", main_branch()), "must not start with `-`"),
        (config("file:///srv/specs.git", GitRef::Branch("main:other".into())), "branch main:other"),
        (config("file:///srv/specs.git", GitRef::Tag("-v1".into())), "tag -v1"),
        (config("ftp://h/specs.git", main_branch()), "ftp"),
        (GitConfig { interval: Duration::ZERO, ..config("file:///srv/specs.git", main_branch()) }, "interval"),
        (GitConfig { ssh_key: Some("/k".into()), ..config("https://h/specs.git", main_branch()) }, "sshKey"),
    ];
    for (cfg, expected) in cases {
        let e = GitSource::new(cfg, work.path().to_path_buf()).expect_err(expected);
        assert!(e.to_string().contains(expected), "{e}");
        assert_eq!(e.kind(), "config");
    }
}
