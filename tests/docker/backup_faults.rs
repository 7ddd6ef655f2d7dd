//! Backups meeting the faults of real hosts, through `tend backup run`: an rsync copy over
//! a real SSH server on loopback (and the same copy when the server is gone), and a disk
//! filling up while the services are stopped for the archive.
//!
//! Both need root (sshd, mount), as in CI, and fail loudly — never skip — when sshd or the
//! tmpfs cannot be set up.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::agent::running;
use crate::backup::{archives_in, backup_doc, files_in};
use crate::harness::{self, Env, describe, docker_ok, run_with_timeout, stdout_of, wait_for};
use crate::services::service;

/// `tend … backup run NAME --specs SPECS` with the environment of [`Env::tend`] plus `vars`.
fn backup_run(env: &Env, name: &str, extra: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(harness::tend_bin());
    cmd.arg("--state-dir")
        .arg(env.state_path())
        .args(["--scope", &env.scope, "backup", "run", name, "--specs", env.spec_arg()])
        .args(extra)
        .current_dir(env.spec_path())
        .env("TEND_LOG", "warn")
        .env("TEND_SOCKET", env.socket_path())
        .env("TEND_LOCK_DIR", env.lock_path())
        .env_remove("TEND_STATE_DIR")
        .env_remove("TEND_SCOPE")
        .env_remove("RSYNC_RSH");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, Duration::from_secs(300)).unwrap_or_else(|e| panic!("tend did not finish: {e}"))
}

/// All of a run's output, for messages that may go to either stream.
fn all_output(out: &Output) -> String {
    format!("{}{}", stdout_of(out), String::from_utf8_lossy(&out.stderr))
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(out.status.success(), "{}", describe(&out));
    stdout_of(&out).split_whitespace().next().expect("a checksum").to_string()
}

/// A service `db` with `data` mounted, and a Backup `nightly` of `data` quiescing it;
/// `extra` adds spec lines (indented under `spec:`). Applied. Returns db's container.
fn db_and_backup(env: &Env, data: &Path, dest: &Path, extra: &str) -> String {
    let db = env.name("db");
    env.write_spec("db.yaml", &service(&db, &format!("volumes: ['{}:/data']", data.display())));
    env.write_spec(
        "backup.yaml",
        &backup_doc(
            "nightly",
            &format!(
                "  source: {{paths: ['{}']}}\n  quiesce: {{stop: [{db}], timeout: 20s}}\n  destination: {{dir: '{}'}}\n{extra}",
                data.display(),
                dest.display()
            ),
        ),
    );
    env.apply();
    let c = format!("{db}-1");
    assert!(running(&c), "db is not running after apply");
    c
}

fn started_at(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", name]).trim().to_string()
}

// ---- rsync over SSH ----------------------------------------------------------------------

/// An sshd on 127.0.0.1 accepting root with one key, killed when dropped.
struct Sshd {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, authorized_keys: &Path) -> Sshd {
        // The privilege-separation directory sshd insists on.
        if !Path::new("/run/sshd").is_dir() {
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
            std::fs::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755)).expect("chmod /run/sshd");
        }
        let host_key = dir.join("host_key");
        keygen(&host_key);
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let log = dir.join("sshd.log");
        let log_file = std::fs::File::create(&log).expect("sshd log");
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f", "/dev/null", "-p", &port.to_string()])
            .args(["-o", "ListenAddress=127.0.0.1"])
            .arg("-o")
            .arg(format!("HostKey={}", host_key.display()))
            .arg("-o")
            .arg(format!("AuthorizedKeysFile={}", authorized_keys.display()))
            .args(["-o", "PidFile=none", "-o", "StrictModes=no", "-o", "PermitRootLogin=prohibit-password"])
            .args(["-o", "UsePAM=no", "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting /usr/sbin/sshd (openssh-server, installed by scripts/test.sh): {e}"));
        let mut sshd = Sshd { child: Some(child), port, log };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return sshd;
            }
            let exited = sshd.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || t0.elapsed() > Duration::from_secs(20) {
                panic!(
                    "sshd did not start on 127.0.0.1:{port} ({}):\n{}",
                    exited.map_or("no answer after 20s".to_string(), |s| s.to_string()),
                    sshd.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tend-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {}", describe(&out));
}

/// What an operator puts in tend's environment to reach a host on another port with a key.
fn rsync_rsh(port: u16, key: &Path) -> String {
    format!(
        "ssh -o BatchMode=yes -p {port} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR",
        key.display()
    )
}

#[test]
fn an_rsync_copy_goes_over_ssh_and_a_failed_copy_keeps_the_archive() {
    let env = Env::new("backup_rsync_ssh");
    let keys = tempfile::Builder::new().prefix("tend-ssh-").tempdir().expect("key dir");
    std::fs::set_permissions(keys.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    let client_key = keys.path().join("client_key");
    keygen(&client_key);
    let authorized = keys.path().join("authorized_keys");
    std::fs::copy(keys.path().join("client_key.pub"), &authorized).expect("authorized_keys");
    let mut sshd = Sshd::start(keys.path(), &authorized);

    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("db.txt"), "the records\n").expect("write");
    std::fs::write(data.join("blob"), vec![3u8; 200_000]).expect("write");
    let dest = env.state_path().join("backups");
    let remote = env.state_path().join("remote");
    let target = format!("root@127.0.0.1:{}", remote.display());
    let db = db_and_backup(&env, &data, &dest, &format!("  copies: [{{rsync: '{target}'}}]\n"));
    let rsh = rsync_rsh(sshd.port, &client_key);

    let out = run(&mut backup_run(&env, "nightly", &["--output", "json"], &[("RSYNC_RSH", &rsh)]));
    assert!(out.status.success(), "{}\n--- sshd ---\n{}", describe(&out), sshd.log_text());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let archive = PathBuf::from(report["archive"].as_str().expect("archive"));
    let rel = archive.strip_prefix(&dest).expect("the archive is under the destination");
    assert_eq!(report["copies"][0], format!("rsync {target}/{}/", rel.parent().expect("layout dirs").display()));
    // The copy keeps the layout's sub-path, is the same bytes, and has its manifest beside it.
    let copy = remote.join(rel);
    assert!(copy.is_file(), "no copy at {}: {:?}", copy.display(), files_in(&remote));
    assert_eq!(sha256sum(&copy), sha256sum(&archive));
    assert_eq!(sha256sum(&copy), report["sha256"].as_str().expect("sha256"));
    let manifest = |a: &Path| PathBuf::from(format!("{}.manifest.json", a.display()));
    assert_eq!(
        std::fs::read(manifest(&copy)).expect("the copy's manifest"),
        std::fs::read(manifest(&archive)).expect("manifest")
    );
    assert!(sshd.log_text().contains("Accepted publickey for root"), "{}", sshd.log_text());
    assert!(running(&db));

    // A key the server does not know: refused at once (BatchMode: no prompt), not hung.
    let stranger = keys.path().join("stranger_key");
    keygen(&stranger);
    let out = run(&mut backup_run(&env, "nightly", &[], &[("RSYNC_RSH", &rsync_rsh(sshd.port, &stranger))]));
    assert!(!out.status.success(), "a copy with an unknown key succeeded\n{}", describe(&out));
    let text = all_output(&out);
    assert!(text.contains(&format!("copy to rsync {target} failed")), "{}", describe(&out));
    assert!(text.contains("Permission denied"), "{}", describe(&out));

    // The server gone: the run fails, naming the target; the local archive is kept, whole.
    sshd.stop();
    let before = archives_in(&dest);
    let out = run(&mut backup_run(&env, "nightly", &[], &[("RSYNC_RSH", &rsh)]));
    assert!(!out.status.success(), "a copy to a stopped sshd succeeded\n{}", describe(&out));
    let text = all_output(&out);
    assert!(text.contains(&format!("copy to rsync {target} failed")), "{}", describe(&out));
    assert!(text.contains("the copy was not made"), "{}", describe(&out));
    assert!(!text.contains("PRIVATE KEY"), "key material in the output: {}", describe(&out));
    let after = archives_in(&dest);
    assert_eq!(after.len(), before.len() + 1, "the local archive of the failed copy was not kept: {after:?}");
    let newest = after.iter().find(|a| !before.contains(a)).expect("the new archive");
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest(newest)).expect("its manifest")).expect("manifest JSON");
    assert_eq!(recorded["sha256"].as_str(), Some(sha256sum(newest).as_str()));
    assert!(!remote.join(newest.strip_prefix(&dest).expect("under dest")).exists());
    // Nothing left stopped, nothing left journaled.
    assert!(running(&db), "db was left stopped");
    assert!(!env.state_path().join("quiesce/nightly.json").exists(), "the quiesce journal stayed");
    // The failed copy is a problem in status, though the archive was written.
    let status = env.status_json();
    let health = status["backups"].as_array().into_iter().flatten().find(|b| b["name"] == "nightly").cloned();
    let health = health.unwrap_or_else(|| panic!("no health of nightly: {status}"));
    let failed = health["copiesFailed"].as_array().cloned().unwrap_or_default();
    assert!(
        failed.iter().any(|c| c.as_str().is_some_and(|c| c.contains(&format!("copy to rsync {target} failed")))),
        "{status}"
    );
}

// ---- a disk filling up mid-run -----------------------------------------------------------

/// A tmpfs of `size` mounted on `dir` (created), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mounting a tmpfs (tests run as root): {}", describe(&out));
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().expect("df");
    assert!(out.status.success(), "{}", describe(&out));
    stdout_of(&out).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df's avail")
}

#[test]
fn a_disk_filling_up_mid_run_fails_the_run_and_starts_the_services_again() {
    let env = Env::new("backup_disk_full");
    // 3 MiB of noise (zstd cannot shrink it) into an 8 MiB tmpfs: the free-space check passes.
    let data = env.state_path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let noise = Command::new("head").args(["-c", "3145728", "/dev/urandom"]).output().expect("head");
    assert!(noise.status.success() && noise.stdout.len() == 3 << 20);
    std::fs::write(data.join("noise.bin"), &noise.stdout).expect("write");
    let dest = env.state_path().join("small");
    let db = db_and_backup(&env, &data, &dest, "");
    let _tmpfs = Tmpfs::mount(dest.clone(), "8m");
    let db_started = started_at(&db);

    // The run pauses with db stopped (after the free-space check, before the archive is
    // opened); meanwhile the disk fills up, leaving 1 MiB.
    let mut cmd = backup_run(&env, "nightly", &[], &[("TEND_FAULT_BACKUP_PAUSE", "6")]);
    let runner = std::thread::spawn(move || run(&mut cmd));
    wait_for(Duration::from_secs(30), "db to be stopped for the backup", || !running(&db));
    let journal = env.state_path().join("quiesce/nightly.json");
    assert!(journal.exists(), "no quiesce journal while db is stopped");
    let fill = free_bytes(&dest).saturating_sub(1 << 20);
    std::fs::write(dest.join("filler"), vec![0u8; usize::try_from(fill).expect("size")]).expect("fill the disk");
    assert!(free_bytes(&dest) < 2 << 20, "the disk did not fill: {} bytes free", free_bytes(&dest));
    let out = runner.join().expect("the backup thread");

    // The run failed, saying where and why.
    assert!(!out.status.success(), "a backup into a full disk succeeded\n{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains(&dest.display().to_string()), "the error should name the destination: {}", describe(&out));
    assert!(err.contains("No space left on device"), "the error should say the disk is full: {}", describe(&out));
    // db runs again (it was stopped and started: a new start time).
    assert!(running(&db), "db was left stopped");
    assert_ne!(started_at(&db), db_started, "db was not stopped for the backup");
    // No archive under a final name, no temporary file: only the filler is left.
    let left = files_in(&dest);
    assert_eq!(left, vec![dest.join("filler")], "leftovers after a full disk");
    assert!(!journal.exists(), "the quiesce journal stayed");
    assert!(
        std::fs::read_dir(env.state_path().join("quiesce")).map_or(true, |mut d| d.next().is_none()),
        "the quiesce journal directory is not empty"
    );
    // The failure shows in status, with no leftovers reported.
    let status = env.status_json();
    let health = status["backups"].as_array().into_iter().flatten().find(|b| b["name"] == "nightly").cloned();
    let health = health.unwrap_or_else(|| panic!("no health of nightly: {status}"));
    assert!(health["lastError"].as_str().is_some_and(|e| e.contains("No space left")), "{status}");
    assert_eq!(health["leftovers"], 0, "{status}");
    assert_eq!(health["interrupted"], false, "{status}");
}
