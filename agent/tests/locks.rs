//! Pid-lock files with real processes: operators are child processes (this test binary run
//! again as a helper, `helper` below), the test itself plays the agent.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tend::maintain::locks::{Holder, LockDir, LockError, Shared, Wait, current_user};

/// The environment variable that turns this test binary into a helper process.
const ROLE: &str = "TEND_LOCKS_TEST_ROLE";
/// Lines from a helper start with this, so they are told apart from libtest's output.
const MARK: &str = "@@ ";
const SINCE_MS: u64 = 1_795_318_500_000;
const UNTIL_MS: u64 = 1_795_325_700_000;

/// Not a test: the helper's entry point, a no-op unless `ROLE` is set.
#[test]
fn helper() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let dir = LockDir::new(env("TEND_LOCKS_DIR"));
    let keys: Vec<String> = env("TEND_LOCKS_KEYS").split(',').map(str::to_string).collect();
    let (user, uid) = current_user();
    let holder = Holder {
        user,
        uid,
        pid: std::process::id(),
        reason: Some(env("TEND_LOCKS_REASON")).filter(|r| !r.is_empty()),
        since_ms: SINCE_MS,
        until_ms: Some(UNTIL_MS),
    };
    let wait = if env("TEND_LOCKS_WAIT") == "1" { Wait::Forever } else { Wait::No };
    let say = |msg: String| println!("{MARK}{msg}");
    let who = |by: Option<&Holder>| by.map_or("tend".to_string(), |h| h.user.clone());
    match role.as_str() {
        // Take the set, say so, hold it until stdin closes.
        "hold" => {
            match dir.take_exclusive_with(&keys, &holder, wait, |key, by| say(format!("WAITING {key} {}", who(by)))) {
                Ok(held) => {
                    let marker = env("TEND_LOCKS_MARKER");
                    let seen = !marker.is_empty() && Path::new(&marker).exists();
                    say(format!("TAKEN {} marker={seen}", held.keys().join(",")));
                    let _ = std::io::stdin().lock().lines().count();
                }
                Err(LockError::Busy { key, by }) => say(format!("BUSY {key} {}", who(by.as_ref()))),
                Err(e) => say(format!("ERROR {} {e}", e.kind())),
            }
        }
        // Take the set ITER times, logging each hold to LOG.
        "cycle" => {
            let mut log = OpenOptions::new().append(true).open(env("TEND_LOCKS_LOG")).expect("open log");
            let pid = std::process::id();
            for _ in 0..env("TEND_LOCKS_ITER").parse::<u32>().expect("ITER") {
                let held = match dir.take_exclusive(&keys, &holder, true) {
                    Ok(held) => held,
                    Err(e) => {
                        say(format!("ERROR {} {e}", e.kind()));
                        std::process::exit(1);
                    }
                };
                for key in held.keys() {
                    log.write_all(format!("start {key} {pid}\n").as_bytes()).expect("log");
                }
                std::thread::sleep(Duration::from_millis(2));
                for key in held.keys() {
                    log.write_all(format!("end {key} {pid}\n").as_bytes()).expect("log");
                }
            }
            say("DONE".into());
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// A helper process; killed if the test fails before it ends.
struct Helper {
    child: std::process::Child,
    lines: Receiver<String>,
}

impl Helper {
    fn spawn(role: &str, dir: &LockDir, keys: &str, extra: &[(&str, &str)]) -> Helper {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = Command::new(exe);
        cmd.args(["helper", "--exact", "--nocapture", "--test-threads", "1"])
            .env(ROLE, role)
            .env("TEND_LOCKS_DIR", dir.dir())
            .env("TEND_LOCKS_KEYS", keys)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning helper");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(i) = line.find(MARK) {
                    let _ = tx.send(line[i + MARK.len()..].to_string());
                }
            }
        });
        Helper { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The helper's next line, within 10 s.
    fn next_line(&self) -> String {
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(e) => panic!("helper {} said nothing: {e}", self.pid()),
        }
    }

    /// Closes the helper's stdin (a holder releases and exits) and waits for it.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("waiting for helper");
        assert!(status.success(), "helper {status}");
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lock_dir(tmp: &tempfile::TempDir) -> LockDir {
    LockDir::new(tmp.path().join("locks"))
}

#[test]
fn a_killed_operator_releases_its_targets_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = lock_dir(&tmp);
    dir.record_pid("web-1", Some(4242)).expect("record pid");

    let mut op = Helper::spawn("hold", &dir, "web-1,nightly.job", &[("TEND_LOCKS_REASON", "swap disk")]);
    assert_eq!(op.next_line(), "TAKEN nightly.job,web-1 marker=false");

    let (user, uid) = current_user();
    let expected = Holder {
        user,
        uid,
        pid: op.pid(),
        reason: Some("swap disk".into()),
        since_ms: SINCE_MS,
        until_ms: Some(UNTIL_MS),
    };
    match dir.try_shared("web-1").expect("try_shared") {
        Shared::Maintenance(holder) => assert_eq!(holder, expected),
        Shared::Taken(_) => panic!("took a target an operator holds"),
    }
    assert_eq!(dir.holder("web-1").expect("holder"), Some(expected.clone()));
    assert_eq!(
        dir.list().expect("list"),
        vec![("nightly.job".to_string(), expected.clone()), ("web-1".to_string(), expected.clone())]
    );
    // The agent's pid line survives the operator's record, and the agent does not write
    // while an operator holds the target.
    assert_eq!(dir.pid("web-1").expect("pid"), Some(4242));
    dir.record_pid("web-1", Some(1)).expect("record pid");
    assert_eq!(dir.pid("web-1").expect("pid"), Some(4242));

    op.child.kill().expect("SIGKILL");
    op.child.wait().expect("wait");

    // The kernel released the locks; the record is still in the file, and is not reported.
    let content = std::fs::read_to_string(dir.dir().join("web-1.lock")).expect("read");
    assert!(content.contains("swap disk"), "{content:?}");
    let guard = match dir.try_shared("web-1").expect("try_shared") {
        Shared::Taken(guard) => guard,
        Shared::Maintenance(h) => panic!("still in maintenance after SIGKILL: {h:?}"),
    };
    assert_eq!(guard.key(), "web-1");
    // The agent holding it shared is not maintenance.
    assert_eq!(dir.holder("web-1").expect("holder"), None);
    assert_eq!(dir.holder("nightly.job").expect("holder"), None);
    assert_eq!(dir.list().expect("list"), vec![]);
}

#[test]
fn an_operator_waits_for_tend_to_finish_with_a_target() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = lock_dir(&tmp);
    let Shared::Taken(guard) = dir.try_shared("web-1").expect("try_shared") else { panic!("not taken") };

    let op = Helper::spawn("hold", &dir, "web-1", &[]);
    assert_eq!(op.next_line(), "BUSY web-1 tend");
    op.finish();

    let marker = tmp.path().join("released");
    let marker_env = marker.to_str().expect("utf-8 path");
    let op = Helper::spawn("hold", &dir, "web-1", &[("TEND_LOCKS_WAIT", "1"), ("TEND_LOCKS_MARKER", marker_env)]);
    assert_eq!(op.next_line(), "WAITING web-1 tend");
    // The marker is written before the guard drops: the operator must see it once it holds
    // the target.
    std::fs::write(&marker, "").expect("marker");
    drop(guard);
    assert_eq!(op.next_line(), "TAKEN web-1 marker=true");
    assert!(matches!(dir.try_shared("web-1").expect("try_shared"), Shared::Maintenance(_)));
    op.finish();
    assert!(matches!(dir.try_shared("web-1").expect("try_shared"), Shared::Taken(_)));
}

#[test]
fn overlapping_operators_never_deadlock_nor_share_a_target() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = lock_dir(&tmp);
    let log = tmp.path().join("holds.log");
    std::fs::write(&log, "").expect("log");
    let log_env = log.to_str().expect("utf-8 path");
    let (rounds, iter) = (20, 5);
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..rounds {
        let extra = [("TEND_LOCKS_LOG", log_env), ("TEND_LOCKS_ITER", "5")];
        let mut ops = [Helper::spawn("cycle", &dir, "a,b,c", &extra), Helper::spawn("cycle", &dir, "d,c,b", &extra)];
        for op in &mut ops {
            loop {
                match op.child.try_wait().expect("try_wait") {
                    Some(status) => {
                        assert!(status.success(), "round {round}: helper {status}");
                        break;
                    }
                    None if Instant::now() > deadline => panic!("round {round}: operators deadlocked"),
                    None => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            assert_eq!(op.next_line(), "DONE");
        }
    }

    let log = std::fs::read_to_string(&log).expect("log");
    let mut holding: HashMap<&str, &str> = HashMap::new();
    let mut starts = 0;
    for line in log.lines() {
        let [what, key, pid] = line.split(' ').collect::<Vec<_>>()[..] else { panic!("bad line {line:?}") };
        match what {
            "start" => {
                starts += 1;
                if let Some(other) = holding.insert(key, pid) {
                    panic!("{pid} took {key} while {other} held it");
                }
            }
            "end" => assert_eq!(holding.remove(key), Some(pid), "{line}"),
            _ => panic!("bad line {line:?}"),
        }
    }
    assert_eq!(starts, rounds * 2 * iter * 3);
}

#[test]
fn a_busy_target_leaves_the_others_untaken() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = lock_dir(&tmp);
    let op = Helper::spawn("hold", &dir, "b", &[("TEND_LOCKS_REASON", "disk")]);
    assert_eq!(op.next_line(), "TAKEN b marker=false");

    let (user, uid) = current_user();
    let me = Holder { user, uid, pid: std::process::id(), reason: None, since_ms: SINCE_MS, until_ms: None };
    let keys: Vec<String> = ["c", "a", "b", "a"].map(String::from).to_vec();
    match dir.take_exclusive(&keys, &me, false) {
        Err(LockError::Busy { key, by: Some(by) }) => {
            assert_eq!(key, "b");
            assert_eq!((by.pid, by.reason.as_deref()), (op.pid(), Some("disk")));
        }
        other => panic!("expected Busy: {other:?}"),
    }
    // Nothing of the set is held: another operator takes the other two at once, and they
    // carry no record of the failed attempt.
    let other = Helper::spawn("hold", &dir, "a,c", &[]);
    assert_eq!(other.next_line(), "TAKEN a,c marker=false");
    assert_eq!(dir.holder("a").expect("holder").map(|h| h.pid), Some(other.pid()));
    other.finish();

    // With a deadline: waits, tells once whom it waits for, then gives up.
    let start = Instant::now();
    let mut told = Vec::new();
    let waited = dir.take_exclusive_with(&keys, &me, Wait::Until(start + Duration::from_millis(300)), |key, by| {
        told.push((key.to_string(), by.map(|h| h.pid)))
    });
    assert!(matches!(waited, Err(LockError::Busy { ref key, by: Some(_) }) if key == "b"), "{waited:?}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(told, vec![("b".to_string(), Some(op.pid()))]);
    op.finish();

    // Free now: taken, recorded (after the agent's pid line), and cleared on release.
    dir.record_pid("a", Some(7)).expect("record pid");
    let held = dir.take_exclusive(&keys, &me, false).expect("take");
    assert_eq!(held.keys(), ["a", "b", "c"]);
    let content = std::fs::read_to_string(dir.dir().join("a.lock")).expect("read");
    assert_eq!(content, format!("7\n{}\n", serde_json::to_string(&me).expect("json")));
    drop(held);
    assert_eq!(std::fs::read_to_string(dir.dir().join("a.lock")).expect("read"), "7\n");
    assert_eq!(std::fs::read_to_string(dir.dir().join("b.lock")).expect("read"), "");
}

#[test]
fn refuses_lock_paths_that_are_redirected_or_not_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = lock_dir(&tmp);
    std::fs::create_dir(dir.dir()).expect("mkdir");
    let precious = tmp.path().join("precious");
    std::fs::write(&precious, "keep me\n").expect("write");
    let link = dir.dir().join("web-1.lock");
    std::os::unix::fs::symlink(&precious, &link).expect("symlink");
    let me = Holder { user: "op".into(), uid: 0, pid: std::process::id(), reason: None, since_ms: 1, until_ms: None };

    let refused = |e: LockError| {
        assert!(matches!(&e, LockError::Symlink { path } if *path == link), "{e:?}");
        assert!(e.to_string().contains(link.to_str().expect("utf-8")), "{e}");
    };
    refused(dir.try_shared("web-1").expect_err("symlink"));
    refused(dir.take_exclusive(&["web-1".into()], &me, false).expect_err("symlink"));
    refused(dir.record_pid("web-1", Some(9)).expect_err("symlink"));
    refused(dir.holder("web-1").expect_err("symlink"));
    refused(dir.wait_released("web-1").expect_err("symlink"));
    assert_eq!(std::fs::read_to_string(&precious).expect("read"), "keep me\n");
    let target = std::fs::File::open(&precious).expect("open");
    target.try_lock().expect("the symlink's target was left locked");

    std::fs::create_dir(dir.dir().join("web-2.lock")).expect("mkdir");
    let e = dir.try_shared("web-2").expect_err("directory");
    assert_eq!(e.kind(), "not-regular", "{e:?}");
    assert_eq!(dir.holder("web-2").expect_err("directory").kind(), "not-regular");
    // A FIFO neither blocks the open nor passes for a lock file.
    let status = Command::new("mkfifo").arg(dir.dir().join("web-3.lock")).status().expect("mkfifo");
    assert!(status.success());
    assert_eq!(dir.try_shared("web-3").expect_err("fifo").kind(), "not-regular");

    for key in ["../x", "a/b", "UPPER", ""] {
        assert_eq!(dir.try_shared(key).expect_err(key).kind(), "bad-key");
        assert_eq!(dir.take_exclusive(&["ok".into(), key.into()], &me, false).expect_err(key).kind(), "bad-key");
    }
    assert!(!dir.dir().join("ok.lock").exists(), "a bad key in the set must fail before any lock");
}

#[test]
fn says_when_the_lock_directory_cannot_be_used() {
    // Tests run as root, which ignores permission bits: read-only places are a regular file
    // where the directory should be, and sysfs, which refuses new entries even to root.
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("file");
    std::fs::write(&file, "").expect("write");
    for path in [file.clone(), file.join("locks")] {
        let e = LockDir::new(&path).try_shared("web-1").expect_err("a file as directory");
        assert_eq!(e.kind(), "not-a-directory", "{e:?}");
        assert_eq!(e.to_string(), format!("lock directory {} is not a directory", path.display()));
    }
    for path in ["/sys", "/sys/tend-locks-test"] {
        let e = LockDir::new(path).try_shared("web-1").expect_err("sysfs");
        assert_eq!(e.kind(), "not-writable", "{e:?}");
        assert_eq!(e.to_string(), format!("lock directory {path} is not writable"));
        assert!(std::error::Error::source(&e).is_some());
    }

    // Readers create nothing and see nothing in a missing directory.
    let dir = lock_dir(&tmp);
    assert_eq!(dir.holder("web-1").expect("holder"), None);
    assert_eq!(dir.list().expect("list"), vec![]);
    assert_eq!(dir.pid("web-1").expect("pid"), None);
    dir.wait_released("web-1").expect("wait_released");
    assert!(!dir.dir().exists());
}

#[test]
fn wait_released_returns_when_the_holder_exits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = lock_dir(&tmp);
    let op = Helper::spawn("hold", &dir, "web-1", &[]);
    assert_eq!(op.next_line(), "TAKEN web-1 marker=false");

    let (tx, released) = mpsc::channel();
    let waiter = dir.clone();
    std::thread::spawn(move || tx.send(waiter.wait_released("web-1")));
    assert_eq!(released.recv_timeout(Duration::from_millis(300)).err(), Some(RecvTimeoutError::Timeout));
    op.finish();
    released.recv_timeout(Duration::from_secs(5)).expect("wait_released returned").expect("wait_released");

    // Not held (only the agent's shared lock): returns at once.
    let _guard = dir.try_shared("web-1").expect("try_shared");
    dir.wait_released("web-1").expect("wait_released");
}

#[test]
fn the_lock_file_of_a_gone_target_is_removed_only_while_nobody_holds_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = lock_dir(&tmp);
    let file = dir.dir().join("web-3.lock");
    assert!(!dir.remove_if_free("web-3").expect("no file"), "nothing to remove");
    // tend acting on it (shared): kept.
    let Shared::Taken(guard) = dir.try_shared("web-3").expect("shared") else { panic!("free target") };
    assert!(!dir.remove_if_free("web-3").expect("held shared"));
    assert!(file.exists());
    drop(guard);
    // An operator holding it: kept, and still reported.
    let op = Helper::spawn("hold", &dir, "web-3", &[]);
    assert_eq!(op.next_line(), "TAKEN web-3 marker=false");
    assert!(!dir.remove_if_free("web-3").expect("held exclusively"));
    assert!(dir.holder("web-3").expect("holder").is_some());
    op.finish();
    // Free: removed.
    assert!(dir.remove_if_free("web-3").expect("free"));
    assert!(!file.exists());
    assert!(dir.remove_if_free("../x").is_err(), "keys are checked");
}

#[test]
fn removing_free_lock_files_never_lets_tend_and_an_operator_hold_one_target_at_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = Arc::new(lock_dir(&tmp));
    let (user, uid) = current_user();
    let holder = Holder { user, uid, pid: std::process::id(), reason: None, since_ms: SINCE_MS, until_ms: None };
    let operator_holds = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    const ROUNDS: usize = 20_000;
    // The agent removes the file whenever it is free, as after removing the target.
    let remover = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut removed = 0;
            while !stop.load(Ordering::SeqCst) {
                removed += usize::from(dir.remove_if_free("web-1").expect("remove"));
            }
            removed
        })
    };
    // An operator takes and releases it.
    let operator = {
        let (dir, flag, stop) = (dir.clone(), operator_holds.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = 0;
            while !stop.load(Ordering::SeqCst) {
                if let Ok(lock) = dir.take_exclusive(&["web-1".to_string()], &holder, false) {
                    flag.store(true, Ordering::SeqCst);
                    std::thread::yield_now();
                    flag.store(false, Ordering::SeqCst);
                    drop(lock);
                    held += 1;
                }
            }
            held
        })
    };
    // tend acts on it whenever it can: never while the operator holds it.
    let mut taken = 0;
    for _ in 0..ROUNDS {
        if let Shared::Taken(guard) = dir.try_shared("web-1").expect("shared") {
            assert!(!operator_holds.load(Ordering::SeqCst), "tend and the operator both hold web-1");
            taken += 1;
            drop(guard);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (removed, held) = (remover.join().expect("remover"), operator.join().expect("operator"));
    eprintln!(
        "{ROUNDS} rounds: tend took web-1 {taken} times, the operator {held}, its file was removed {removed} times"
    );
    assert!(taken > 0 && held > 0 && removed > 0, "every party had its turn");
}
