//! A real PostgreSQL in a container run by tend: a `pg_dump -Fc` streamed out of the running
//! server's container, restored with `pg_restore` into a database of another name in the same
//! container, and a drill that restores the dump into a scratch container of the same image
//! and asks the restored server how many rows came back.
//!
//! The image is built here from the host's Debian PostgreSQL (scripts/test.sh installs the
//! `postgresql` package) and busybox-static: nothing is pulled. It is a rootfs of busybox,
//! the server's and clients' binaries, their shared libraries (found with `ldd`), the
//! timezone data, a `postgres` user and a start script that runs `initdb` on first start,
//! imported with `docker import` and tagged by a hash of its inputs, once per host.

use std::collections::BTreeSet;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::agent::started_at;
use crate::backup::{archives_in, backup_doc, tend};
use crate::harness::{Env, describe, docker, docker_ok, stdout_of, wait_until};
use crate::services::service;

/// The image's command: `initdb` into an empty data directory (trust for local connections,
/// the C locale, so no locale files are needed), then the server on a Unix socket only.
const START: &str = r#"#!/bin/sh
# Stand-in entrypoint: Debian's PostgreSQL, initialised on first start.
set -e
PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U postgres -A trust --locale=C -E UTF8 --no-instructions
fi
exec postgres -D "$PGDATA" -c listen_addresses='' -k /var/run/postgresql -c jit=off -c fsync=off
"#;

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/sh\n";
const GROUP: &str = "root:x:0:\npostgres:x:999:\n";
const PG_UID: u32 = 999;

/// Bumped when the way the image is put together changes.
const BUILD_REV: u32 = 1;

/// The newest Debian PostgreSQL on the host: (major version, its `/usr/lib/postgresql/V`).
fn host_postgres() -> (String, PathBuf) {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| {
            panic!(
                "\n\n*** Debian's postgresql is not installed (/usr/lib/postgresql: {e}). ***\n\
                 scripts/test.sh installs it; this test builds its PostgreSQL image from it and never skips.\n"
            )
        })
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("bin/postgres").exists() && p.join("bin/initdb").exists())
        .collect();
    dirs.sort();
    let dir = dirs.pop().expect("a PostgreSQL server (bin/postgres, bin/initdb) under /usr/lib/postgresql");
    let version = dir.file_name().and_then(|n| n.to_str()).expect("a version directory").to_string();
    (version, dir)
}

/// Runs a host command, panicking with its output unless it succeeded.
fn host(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("could not run {shown}: {e}"));
    assert!(out.status.success(), "{shown} failed\n{}", describe(&out));
    out
}

/// The shared libraries (and the dynamic loader) that the ELF files `files` load, by `ldd`.
fn shared_libraries(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut libs = BTreeSet::new();
    for f in files {
        let out = Command::new("ldd").arg(f).output().unwrap_or_else(|e| panic!("ldd {}: {e}", f.display()));
        let text = stdout_of(&out);
        if !out.status.success() {
            // A script or a static binary: nothing to load.
            continue;
        }
        for line in text.lines() {
            assert!(!line.contains("not found"), "{} needs a library the host lacks: {line}", f.display());
            for word in line.split_whitespace() {
                if word.starts_with('/') && Path::new(word).exists() {
                    libs.insert(PathBuf::from(word));
                }
            }
        }
    }
    libs
}

/// Copies `src` (a file, or a directory with its symlinks kept) to the same path under `root`.
fn copy_into(root: &Path, src: &Path) {
    let to = root.join(src.strip_prefix("/").expect("an absolute path"));
    std::fs::create_dir_all(to.parent().expect("a parent")).expect("a directory of the image");
    copy_tree(src, &to);
}

fn copy_tree(from: &Path, to: &Path) {
    let meta = std::fs::symlink_metadata(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if meta.is_symlink() {
        let target = std::fs::read_link(from).expect("read a link");
        std::os::unix::fs::symlink(&target, to).unwrap_or_else(|e| panic!("link {}: {e}", to.display()));
    } else if meta.is_dir() {
        std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
        std::fs::set_permissions(to, meta.permissions()).expect("chmod a directory");
        for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())).flatten() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create a directory of the image");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn make_dir(path: &Path, mode: u32, uid: u32) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown (tests run as root)");
}

/// The image `tend-test/postgres:HASH`, built from the host's files unless it is there.
/// Test processes running at once build it under a file lock.
fn pg_image() -> String {
    let (version, pg_dir) = host_postgres();
    let banner = stdout_of(&host(Command::new(pg_dir.join("bin/postgres")).arg("--version"))).trim().to_string();
    let busybox = Path::new("/bin/busybox");
    let busybox_bytes = std::fs::read(busybox)
        .unwrap_or_else(|e| panic!("/bin/busybox (Debian's busybox-static, installed by scripts/test.sh): {e}"));
    // The image's settings (`docker import --change`): the server's clients on PATH, and
    // postgres as its user.
    let changes = [
        format!("ENV PATH=/usr/lib/postgresql/{version}/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "ENV PGDATA=/var/lib/postgresql/data".to_string(),
        "ENV TZ=UTC".to_string(),
        "USER postgres".to_string(),
        "WORKDIR /var/lib/postgresql".to_string(),
        r#"CMD ["pg-standin-start"]"#.to_string(),
    ];
    let mut hasher = DefaultHasher::new();
    (BUILD_REV, &banner, &busybox_bytes, START, PASSWD, GROUP, &changes).hash(&mut hasher);
    let image = format!("tend-test/postgres:{:016x}", hasher.finish());

    let lock = File::create(std::env::temp_dir().join("tend-test-postgres-image.lock")).expect("the image's lock file");
    lock.lock().expect("lock the PostgreSQL image build");
    if docker(&["image", "inspect", image.as_str()]).status.success() {
        return image;
    }
    let t0 = Instant::now();
    let stage = tempfile::tempdir().expect("a staging directory");
    let root = stage.path().join("rootfs");
    std::fs::create_dir_all(&root).expect("rootfs");

    // busybox, with a link for each applet.
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    let applets = stdout_of(&host(Command::new(busybox).arg("--list-full")));
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = root.join(applet);
        if link.exists() || link.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::create_dir_all(link.parent().expect("a parent")).expect("an applet directory");
        std::os::unix::fs::symlink("/bin/busybox", &link).expect("an applet link");
    }

    // The server and its clients, without the LLVM JIT (it would pull in libLLVM).
    copy_into(&root, &pg_dir);
    let lib = root.join(pg_dir.strip_prefix("/").expect("absolute")).join("lib");
    for jit in ["llvmjit.so", "llvmjit_types.bc", "bitcode"] {
        let p = lib.join(jit);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("remove the JIT's bitcode");
        } else if p.exists() {
            std::fs::remove_file(&p).expect("remove the JIT");
        }
    }
    let share = PathBuf::from(format!("/usr/share/postgresql/{version}"));
    assert!(share.join("postgres.bki").exists(), "{} (initdb needs it) is missing", share.display());
    copy_into(&root, &share);
    copy_into(&root, Path::new("/usr/share/zoneinfo"));

    // Every shared library the binaries and the server's modules load.
    let mut elves: Vec<PathBuf> = Vec::new();
    for dir in [pg_dir.join("bin"), pg_dir.join("lib")] {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let wanted = dir.ends_with("bin") || (name.ends_with(".so") && name != "llvmjit.so");
            if wanted && p.is_file() && !p.is_symlink() {
                elves.push(p);
            }
        }
    }
    let libs = shared_libraries(&elves);
    assert!(libs.iter().any(|l| l.to_string_lossy().contains("ld-linux")), "no dynamic loader in {libs:?}");
    for l in &libs {
        let to = root.join(l.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("a library directory");
        std::fs::copy(l, &to).unwrap_or_else(|e| panic!("copy {}: {e}", l.display()));
    }

    // Users, writable places, the start script.
    write_file(&root.join("etc/passwd"), PASSWD, 0o644);
    write_file(&root.join("etc/group"), GROUP, 0o644);
    write_file(&root.join("usr/local/bin/pg-standin-start"), START, 0o755);
    make_dir(&root.join("tmp"), 0o1777, 0);
    make_dir(&root.join("root"), 0o700, 0);
    make_dir(&root.join("var/run/postgresql"), 0o2775, PG_UID);
    make_dir(&root.join("var/lib/postgresql"), 0o755, PG_UID);

    let tar = stage.path().join("rootfs.tar");
    host(Command::new("tar").arg("-C").arg(&root).args(["--numeric-owner", "-cf"]).arg(&tar).arg("."));
    let mut args: Vec<String> = vec!["import".into()];
    for change in &changes {
        args.extend(["--change".into(), change.clone()]);
    }
    args.extend([
        "--message".into(),
        format!("tend test stand-in: {banner}, from the host's Debian packages"),
        tar.to_str().expect("utf-8 path").to_string(),
        image.clone(),
    ]);
    docker_ok(&args);
    eprintln!("built {image} ({banner}) in {:?}", t0.elapsed());
    image
}

/// `psql -tAc SQL` in the container `c`, as postgres over the Unix socket; trimmed output.
fn psql(c: &str, db: &str, sql: &str) -> String {
    docker_ok(&["exec", c, "psql", "-h", "/var/run/postgresql", "-U", "postgres", "-d", db, "-tAc", sql])
}

#[test]
fn a_postgres_container_dump_restores_into_another_database_and_drills_into_a_scratch_container() {
    let env = Env::new("backup_pg_container");
    let image = pg_image();
    let (pg, name) = (env.name("pg"), env.name("pgdump"));
    env.write_spec(
        "pg.yaml",
        &service(
            &pg,
            &format!(
                "image: {image}\ncommand: [pg-standin-start]\nstopSignal: SIGINT\nstopTimeout: 10s\nhealthcheck: {{command: [pg_isready, -q, -h, /var/run/postgresql, -U, postgres], interval: 1s, timeout: 5s, retries: 3, startPeriod: 60s}}"
            ),
        ),
    );
    env.apply();
    let c = format!("{pg}-1");
    let healthy = wait_until(Duration::from_secs(120), || {
        docker(&["inspect", "-f", "{{.State.Health.Status}}", c.as_str()]).stdout.starts_with(b"healthy")
    });
    if !healthy {
        let logs = docker(&["logs", c.as_str()]);
        let state = docker(&["inspect", "-f", "{{json .State}}", c.as_str()]);
        panic!(
            "PostgreSQL in {c} did not become healthy within 120 s\n--- docker logs ---\n{}\n--- state ---\n{}",
            describe(&logs),
            describe(&state)
        );
    }
    // It runs as postgres, the image's user, and is a real server.
    assert_eq!(docker_ok(&["exec", c.as_str(), "id", "-un"]), "postgres");
    assert!(psql(&c, "postgres", "select version()").contains("PostgreSQL"), "not a PostgreSQL server");

    docker_ok(&["exec", c.as_str(), "createdb", "-h", "/var/run/postgresql", "-U", "postgres", "pipeline_prod"]);
    psql(
        &c,
        "pipeline_prod",
        "create table users (id int primary key, name text); insert into users select g, 'user ' || g from generate_series(1, 5000) g",
    );
    assert_eq!(psql(&c, "pipeline_prod", "select count(*) from users"), "5000");

    // The Backup only now: its drill schedule is a Timer, which a stand-alone `tend apply`
    // on a host whose PID 1 is not systemd refuses; backup run/restore/drill only load it.
    let dest = env.state_path().join("pg");
    let check = env.state_path().join("check-users.sh");
    let seen = env.state_path().join("seen");
    std::fs::write(
        &check,
        format!(
            "# The drill's check: $1 the expected count, $2 the scratch container.\n\
             n=$(docker exec \"$2\" psql -h /var/run/postgresql -U postgres -d pipeline_prod -tAc 'select count(*) from users')\n\
             echo \"$2 $TEND_DRILL_CONTAINER $n\" > '{}'\n\
             test \"$n\" = \"$1\"\n",
            seen.display()
        ),
    )
    .expect("the check script");
    let spec = |expected: u32| {
        backup_doc(
            &name,
            &format!(
                "  source:\n    exec: {{service: {pg}, command: [pg_dump, -h, /var/run/postgresql, -U, postgres, -Fc, pipeline_prod]}}\n  destination: {{dir: '{}'}}\n  restore:\n    exec: {{service: {pg}, command: [sh, -c, 'createdb -h /var/run/postgresql -U postgres \"$0\" && pg_restore -h /var/run/postgresql -U postgres -d \"$0\"', '${{db}}']}}\n    vars: {{db: pipeline_prod}}\n  drill: {{schedule: weekly, check: [/bin/sh, '{}', '{expected}']}}\n",
                dest.display(),
                check.display()
            ),
        )
    };
    env.write_spec("backup.yaml", &spec(5000));
    let before = started_at(&c);

    // The dump, streamed out of the running server: one archive, a custom-format dump.
    let out = tend(&env, &["backup", "run", &name]);
    assert!(out.status.success(), "{}", describe(&out));
    let archives = archives_in(&dest);
    assert_eq!(archives.len(), 1, "{archives:?}");
    let mut head = [0u8; 5];
    let archive = File::open(&archives[0]).expect("open the archive");
    std::io::Read::read_exact(&mut zstd::stream::Decoder::new(archive).expect("a zstd stream"), &mut head)
        .expect("the start of the dump");
    assert_eq!(&head, b"PGDMP", "not a pg_dump custom-format archive");

    // Restored with the default database name: createdb refuses, production is untouched.
    let out = tend(&env, &["restore", &name, "--yes"]);
    assert!(!out.status.success(), "a restore over the live database succeeded\n{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"), "{}", describe(&out));
    assert_eq!(psql(&c, "pipeline_prod", "select count(*) from users"), "5000");

    // Into a database of another name, in the same server.
    let out = tend(&env, &["restore", &name, "--set", "db=pipeline_dev", "--yes"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(psql(&c, "pipeline_dev", "select count(*), max(name) from users"), "5000|user 999");
    assert_eq!(psql(&c, "pipeline_prod", "select count(*) from users"), "5000");
    assert_eq!(started_at(&c), before, "the live server was restarted by the backup or the restore");

    // The live database moves on; the drill restores the archive, not the live data.
    psql(&c, "pipeline_prod", "insert into users values (5001, 'user 5001')");
    let drills = || {
        docker_ok(&["ps", "-aq", "--filter", "label=tend.kind=drill", "--filter", &env.scope_filter()])
            .trim()
            .to_string()
    };
    let t0 = Instant::now();
    let out = tend(&env, &["backup", "drill", &name]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout_of(&out).contains("drill passed"), "{}", describe(&out));
    eprintln!("drill passed in {:?}", t0.elapsed());
    let scratch = format!("{name}-drill");
    assert_eq!(
        std::fs::read_to_string(&seen).expect("the check ran").trim(),
        format!("{scratch} {scratch} 5000"),
        "the check gets the scratch container, where 5000 users came back"
    );
    assert_eq!(drills(), "", "the scratch container stayed");
    assert!(!docker(&["inspect", scratch.as_str()]).status.success(), "{scratch} is still there");
    assert_eq!(psql(&c, "pipeline_prod", "select count(*) from users"), "5001", "the live data changed");
    assert_eq!(started_at(&c), before, "the live server was restarted by the drill");

    // A check that expects what did not come back fails the drill; no scratch container stays.
    env.write_spec("backup.yaml", &spec(4999));
    std::fs::remove_file(&seen).expect("remove the first check's note");
    let out = tend(&env, &["backup", "drill", &name]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed its check"), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&seen).expect("the check ran").trim(), format!("{scratch} {scratch} 5000"));
    assert_eq!(drills(), "", "the scratch container stayed after a failed check");
    assert_eq!(env.container_ids().len(), 1, "only the live server is left");
    assert_eq!(started_at(&c), before, "the live server was restarted by the failed drill");
}
