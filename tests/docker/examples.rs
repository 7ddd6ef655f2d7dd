//! The examples' backups end to end, with stand-in images: `examples/clinical-recorder`
//! (a quiesced archive of the database directory, a restore that moves the current data
//! aside, the triage hold on the database) and `examples/sensor-pipeline` (a dump streamed
//! from the running database, copied with rsync, restored into a database of another name).
//!
//! Each test copies the example into its spec directory and rewrites only what ties it to
//! a production host: images (stand-ins built here from the test image, never pulled and
//! never tagged with a real image's name), the names of services, networks and volumes
//! (scoped, so tests can run in parallel), host ports (free ones), host paths (under the
//! test's state directory) and the rsync target (a local directory). Health-check and
//! rollout intervals are shortened, and the Backups' schedules dropped: the tests run the
//! backups themselves (scheduled runs are tested in `backup.rs`), and a stand-alone `tend
//! apply` would make a scheduled Backup a systemd timer of the host. The quiesce lists,
//! dependencies, commands, restore settings and variables are the example's own.

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::agent::running;
use crate::backup::{archives_in, tend};
use crate::harness::{self, Env, describe, docker, docker_ok, stdout_of, wait_for};

/// `mongod`: keeps its data directory and stops at once on SIGTERM. A stand-in
/// "collection" is a file `/data/db/DB/COLLECTION`.
const MONGOD: &str = r#"#!/bin/sh
# Stand-in for mongod: keeps its data directory (--dbpath, else /data/db), stops on SIGTERM.
dbpath=/data/db
while [ $# -gt 0 ]; do
    case "$1" in --dbpath) dbpath=$2; shift ;; esac
    shift
done
mkdir -p "$dbpath"
echo "mongod stand-in: serving $dbpath"
trap 'exit 0' TERM INT
while :; do sleep 1 & wait $!; done
"#;

/// `mongosh` as a health check: up when the data directory is there.
const MONGOSH: &str = r#"#!/bin/sh
# Stand-in for mongosh in a health check.
test -d /data/db
"#;

/// `mongodump --archive --db DB [--collection C]... [--excludeCollection C]...`: a tar of
/// the selected `DB/COLLECTION` files on stdout.
const MONGODUMP: &str = r#"#!/bin/sh
# Stand-in for mongodump --archive: a tar of DB/COLLECTION files on stdout.
set -e
db= only= exclude=
while [ $# -gt 0 ]; do
    case "$1" in
        --archive) ;;
        --db) db=$2; shift ;;
        --collection) only="$only $2"; shift ;;
        --excludeCollection) exclude="$exclude $2"; shift ;;
        *) echo "mongodump stand-in: unsupported argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$db" ] || { echo "mongodump stand-in: --db is required" >&2; exit 2; }
cd /data/db
set --
for f in "$db"/*; do
    [ -f "$f" ] || continue
    c=${f#"$db"/}
    if [ -n "$only" ]; then case " $only " in *" $c "*) ;; *) continue ;; esac; fi
    case " $exclude " in *" $c "*) continue ;; esac
    set -- "$@" "$f"
done
[ $# -gt 0 ] || { echo "mongodump stand-in: no collection selected in $db" >&2; exit 1; }
exec tar -c -f - "$@"
"#;

/// `mongorestore --archive [--nsFrom 'A.*' --nsTo 'B.*']`: reads a stand-in archive on
/// stdin, renaming database A to B; like mongorestore without --drop, it only adds (a
/// collection already there is kept).
const MONGORESTORE: &str = r#"#!/bin/sh
# Stand-in for mongorestore --archive: a tar of DB/COLLECTION files on stdin.
set -e
from= to=
while [ $# -gt 0 ]; do
    case "$1" in
        --archive) ;;
        --nsFrom) from=${2%.\*}; shift ;;
        --nsTo) to=${2%.\*}; shift ;;
        *) echo "mongorestore stand-in: unsupported argument $1" >&2; exit 2 ;;
    esac
    shift
done
tmp=$(mktemp -d)
tar -x -f - -C "$tmp"
for dir in "$tmp"/*; do
    db=${dir##*/}
    if [ -n "$from" ] && [ "$db" = "$from" ]; then db=$to; fi
    mkdir -p "/data/db/$db"
    for f in "$dir"/*; do
        c=${f##*/}
        if [ -e "/data/db/$db/$c" ]; then echo "$db.$c exists: kept"; else mv "$f" "/data/db/$db/$c"; fi
    done
done
rm -rf "$tmp"
"#;

/// The web, app, API and monitoring servers: HTTP on the ports the examples use, stopping
/// at once on SIGTERM.
const SERVE: &str = r#"#!/bin/sh
# Stand-in for the examples' web, app, API and monitoring servers.
mkdir -p /tmp/www
echo ok >/tmp/www/health
echo ok >/tmp/www/index.html
for port in 80 3000 8000 8443 9000 9090 9100; do httpd -p "$port" -h /tmp/www; done
trap 'exit 0' TERM INT
while :; do sleep 1 & wait $!; done
"#;

/// `uwsgi --ini FILE` (ims-app's command).
const UWSGI: &str = "#!/bin/sh\n# Stand-in for uwsgi.\nexec /usr/local/bin/serve\n";

/// The stand-ins answer plain HTTP: a health check asking for https:// is sent over http://.
const WGET: &str = r#"#!/bin/sh
# Stand-in servers speak plain HTTP: https:// is asked over http://.
for a; do
    shift
    case "$a" in
        --no-check-certificate) ;;
        https://*) set -- "$@" "http://${a#https://}" ;;
        *) set -- "$@" "$a" ;;
    esac
done
exec /bin/busybox wget "$@"
"#;

const SCRIPTS: [(&str, &str); 7] = [
    ("mongod", MONGOD),
    ("mongosh", MONGOSH),
    ("mongodump", MONGODUMP),
    ("mongorestore", MONGORESTORE),
    ("serve", SERVE),
    ("uwsgi", UWSGI),
    ("wget", WGET),
];

/// The stand-in images: `mongo` for `mongo:*`, `app` for every other image.
struct StandIns {
    mongo: String,
    app: String,
}

/// Removes the build container, even when the build panicked.
struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", self.0.as_str()]);
    }
}

/// Builds the stand-in images once (their tags name a hash of the scripts and the test
/// image): the test image plus the scripts in /usr/local/bin, committed with `mongod` or
/// `serve` as the command. Test processes running at once build them under a file lock.
fn stand_ins() -> StandIns {
    let base = harness::test_image();
    let base_id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", base.as_str()]);
    let mut hasher = DefaultHasher::new();
    (base_id.as_str(), SCRIPTS).hash(&mut hasher);
    let tag = format!("{:016x}", hasher.finish());
    let images =
        StandIns { mongo: format!("tend-test/mongo-standin:{tag}"), app: format!("tend-test/app-standin:{tag}") };
    let lock = File::create(std::env::temp_dir().join("tend-test-standins.lock")).expect("the stand-ins' lock file");
    lock.lock().expect("lock the stand-in build");
    let exists = |image: &str| docker(&["image", "inspect", image]).status.success();
    if exists(&images.mongo) && exists(&images.app) {
        return images;
    }
    let stage = tempfile::tempdir().expect("a staging directory");
    let bin = stage.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).expect("usr/local/bin");
    for (name, text) in SCRIPTS {
        let path = bin.join(name);
        std::fs::write(&path, text).expect("write a stand-in script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod a stand-in script");
    }
    let build = RemoveContainer(format!("tend-test-standin-build-{}", std::process::id()));
    let _ = docker(&["rm", "-f", build.0.as_str()]);
    docker_ok(&["create", "--name", build.0.as_str(), base.as_str(), "true"]);
    let source = format!("{}/.", stage.path().display());
    docker_ok(&["cp", source.as_str(), &format!("{}:/", build.0)]);
    docker_ok(&["commit", "--change", r#"CMD ["mongod"]"#, build.0.as_str(), images.mongo.as_str()]);
    docker_ok(&["commit", "--change", r#"CMD ["serve"]"#, build.0.as_str(), images.app.as_str()]);
    images
}

/// How an example is made to run here.
struct Rewrite<'a> {
    images: &'a StandIns,
    /// Services and named volumes: every occurrence of the name becomes the scoped name.
    names: &'a [&'a str],
    /// Networks: renamed in `networks:` lines.
    networks: &'a [&'a str],
    /// Exact text replacements (host paths, copy targets), applied first.
    text: Vec<(String, String)>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `text` with every whole-word `from` (not part of a longer name) replaced by `to`, and
/// how many there were.
fn replace_word(text: &str, from: &str, to: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let before = if at > 0 { rest[..at].chars().last() } else { out.chars().last() };
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_name_char) || after.is_some_and(is_name_char) {
            out.push_str(from);
        } else {
            out.push_str(to);
            count += 1;
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    (out, count)
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}

/// One spec file of the example, rewritten.
fn rewrite_yaml(env: &Env, yaml: &str, rw: &Rewrite, seen: &mut Vec<String>) -> String {
    let mut text = yaml.to_string();
    for (from, to) in &rw.text {
        if text.contains(from.as_str()) {
            text = text.replace(from.as_str(), to);
            seen.push(from.clone());
        }
    }
    for name in rw.names {
        let (out, n) = replace_word(&text, name, &env.name(name));
        if n > 0 {
            seen.push((*name).to_string());
        }
        text = out;
    }
    let mut lines = Vec::new();
    for line in text.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let trimmed = line.trim_start();
        // A Backup's own schedule (a drill's, indented deeper, is kept).
        if trimmed.starts_with("schedule: ") && indent.len() == 2 {
            seen.push("schedule".into());
            continue;
        }
        let line = if let Some(image) = trimmed.strip_prefix("image: ") {
            let standin = if image.trim().starts_with("mongo:") { &rw.images.mongo } else { &rw.images.app };
            format!("{indent}image: {standin}")
        } else if trimmed.starts_with("networks: [") {
            let mut line = line.to_string();
            for net in rw.networks {
                let (out, n) = replace_word(&line, net, &env.name(net));
                if n > 0 {
                    seen.push((*net).to_string());
                }
                line = out;
            }
            line
        } else if let Some(list) = trimmed.strip_prefix("ports: [").and_then(|l| l.strip_suffix(']')) {
            // [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO] → 127.0.0.1:FREE:CONTAINER_PORT[/PROTO]
            let ports: Vec<String> = list
                .split(',')
                .map(|p| {
                    let p = p.trim().trim_matches('"');
                    let container = p.rsplit(':').next().expect("a container port");
                    format!("\"127.0.0.1:{}:{container}\"", free_port())
                })
                .collect();
            format!("{indent}ports: [{}]", ports.join(", "))
        } else {
            line.to_string()
        };
        lines.push(line);
    }
    lines.join("\n") + "\n"
}

/// Copies `examples/NAME` into the spec directory, its YAML files rewritten by `rw`;
/// panics when something `rw` names is not in the example (so that the example and
/// this test cannot drift apart unnoticed).
fn copy_example(env: &Env, name: &str, rw: &Rewrite) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
    let mut seen = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).expect("read the example").flatten() {
            let rel = rel.join(entry.file_name());
            let (from, to) = (root.join(&rel), env.spec_path().join(&rel));
            if from.is_dir() {
                std::fs::create_dir_all(&to).expect("create a directory of the example");
                stack.push(rel);
            } else if rel.extension().is_some_and(|e| e == "yaml") {
                let yaml = std::fs::read_to_string(&from).expect("read a spec of the example");
                env.write_spec(rel.to_str().expect("UTF-8"), &rewrite_yaml(env, &yaml, rw, &mut seen));
            } else {
                std::fs::copy(&from, &to).expect("copy a file of the example");
            }
        }
    }
    assert!(seen.iter().any(|s| s == "schedule"), "examples/{name} schedules no backup any more: update this test");
    let wanted =
        rw.names.iter().chain(rw.networks).map(|s| s.to_string()).chain(rw.text.iter().map(|(f, _)| f.clone()));
    for w in wanted {
        assert!(seen.contains(&w), "examples/{name} no longer has `{w}`: update this test");
    }
}

fn tend_ok(env: &Env, args: &[&str]) -> Output {
    let out = tend(env, args);
    assert!(out.status.success(), "tend {args:?}\n{}", describe(&out));
    out
}

fn state_time(container: &str, field: &str) -> String {
    docker_ok(&["inspect", "--format", &format!("{{{{.State.{field}}}}}"), container])
}

fn exec(container: &str, script: &str) -> String {
    docker_ok(&["exec", container, "sh", "-c", script])
}

/// The archive a `tend backup run --output json` made, checked to be under `dest` at the
/// default layout `NAME/YYYY/MM/YYYY-MM-DD_NAME.EXT`.
fn archive_of(report: &Output, dest: &Path, name: &str, ext: &str) -> PathBuf {
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("a JSON report");
    let archive = PathBuf::from(report["archive"].as_str().expect("the archive in the report"));
    let rel =
        archive.strip_prefix(dest).unwrap_or_else(|_| panic!("{} is not under {}", archive.display(), dest.display()));
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let dated = parts.len() == 4 && parts[3].starts_with(&format!("{}-{}-", parts[1], parts[2]));
    assert!(dated && parts[0] == name && parts[3].ends_with(&format!("_{name}.{ext}")), "{rel:?}");
    assert!(archive.is_file(), "{} is missing", archive.display());
    archive
}

fn docker_root() -> String {
    docker_ok(&["info", "--format", "{{.DockerRootDir}}"])
}

#[test]
fn clinical_recorder_backs_up_its_database_quiesced_and_restores_it_moving_the_broken_data_aside() {
    let env = Env::new("example_clinical");
    let images = stand_ins();
    let volumes = format!("{}/volumes", docker_root());
    let volume = env.name("ims-mongo-data");
    let (dest, copy) = (env.state_path().join("backups"), env.state_path().join("backup-disk"));
    // The forensics directory must be on the data's file system: beside the volume's data.
    let aside = PathBuf::from(format!("{volumes}/{volume}/forensics"));
    let rw = Rewrite {
        images: &images,
        names: &["ims-mongo", "ims-api", "ims-app", "ims-web", "ims-mongo-data", "ims-media"],
        networks: &["ims"],
        text: vec![
            ("/var/lib/docker/volumes".into(), volumes.clone()),
            ("/var/backups/tend".into(), dest.display().to_string()),
            ("/mnt/backup-disk/ims".into(), copy.display().to_string()),
            ("/var/lib/ims-forensics".into(), aside.display().to_string()),
            ("interval: 10s".into(), "interval: 1s".into()),
            ("interval: 30s".into(), "interval: 1s".into()),
        ],
    };
    copy_example(&env, "clinical-recorder", &rw);
    env.apply();

    let (mongo, api, app, web) = (env.name("ims-mongo"), env.name("ims-api"), env.name("ims-app"), env.name("ims-web"));
    let mongo1 = format!("{mongo}-1");
    let containers = [mongo1.clone(), format!("{api}-1"), format!("{app}-1"), format!("{app}-2"), format!("{web}-1")];
    for c in &containers {
        assert!(running(c), "{c} is not running after apply");
    }
    // The database directory the example archives is the volume's, where Docker keeps it.
    let data = PathBuf::from(format!("{volumes}/{volume}/_data"));
    assert_eq!(
        docker_ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume.as_str()]),
        data.display().to_string()
    );
    exec(
        &mongo1,
        "mkdir -p /data/db/ims && seq 1 2000 | sed 's/^/recording /' >/data/db/ims/recordings && echo v1 >/data/db/ims/meta",
    );
    let recordings = std::fs::read(data.join("ims/recordings")).expect("the records, on the host");

    // The nightly backup, now: everything stopped, archived, started again.
    let before: Vec<String> = containers.iter().map(|c| state_time(c, "StartedAt")).collect();
    let out = tend_ok(&env, &["backup", "run", "ims-db", "--output", "json"]);
    let archive = archive_of(&out, &dest, "ims-db", "tar.zst");
    assert_eq!(archives_in(&copy).len(), 1, "the copy on the second disk");
    for (c, started) in containers.iter().zip(&before) {
        assert!(running(c), "{c} is not running after the backup");
        assert_ne!(&state_time(c, "StartedAt"), started, "{c} was not stopped for the backup");
    }
    // Dependents first: web stopped before the app, the app before the API, the API before mongod.
    let finished: Vec<String> =
        containers.iter().map(|c| harness::comparable_time(&state_time(c, "FinishedAt"))).collect();
    let [mongo_f, api_f, app1_f, app2_f, web_f] = &finished[..] else { unreachable!() };
    assert!(web_f <= app1_f && web_f <= app2_f, "web stops before the app: {finished:?}");
    assert!(app1_f <= api_f && app2_f <= api_f, "the app stops before the API: {finished:?}");
    assert!(api_f <= mongo_f, "the API stops before mongod: {finished:?}");
    tend_ok(&env, &["backup", "verify", "ims-db"]);

    // The database is damaged; the restore puts last night's data back and keeps the damage.
    exec(&mongo1, "echo garbage >/data/db/ims/recordings && echo v2 >/data/db/ims/meta && echo x >/data/db/ims/stray");
    let out = tend_ok(&env, &["restore", "ims-db", "--yes"]);
    assert!(stdout_of(&out).contains(&archive.display().to_string()), "{}", describe(&out));
    assert_eq!(std::fs::read(data.join("ims/recordings")).expect("restored"), recordings);
    assert!(!data.join("ims/stray").exists(), "the restore merged instead of replacing");
    let moved: Vec<PathBuf> =
        std::fs::read_dir(&aside).expect("the forensics directory").flatten().map(|e| e.path()).collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(std::fs::read_to_string(moved[0].join("ims/recordings")).expect("the damaged data"), "garbage\n");
    assert_eq!(std::fs::read_to_string(moved[0].join("ims/stray")).expect("the damaged data"), "x\n");
    for c in &containers {
        assert!(running(c), "{c} is not running after the restore");
    }
    assert_eq!(exec(&mongo1, "cat /data/db/ims/meta"), "v1", "mongod sees the restored data");

    // The triage hold: a crashed mongod stays down until released.
    docker_ok(&["kill", mongo1.as_str()]);
    wait_for(Duration::from_secs(30), "the killed mongod to exit", || !running(&mongo1));
    env.apply();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!running(&mongo1), "a crashed ims-mongo was restarted instead of held");
    let status = env.status_json();
    assert!(status.to_string().contains("\"held\":true"), "{status:#}");
    env.tend_ok(&["release", mongo.as_str()]);
    env.apply();
    wait_for(Duration::from_secs(30), "the released mongod to run", || running(&mongo1));
}

#[test]
fn sensor_pipeline_dumps_selected_collections_copies_them_off_host_and_restores_into_another_database() {
    let env = Env::new("example_sensor");
    let images = stand_ins();
    let (dest, offsite) = (env.state_path().join("backups"), env.state_path().join("offsite"));
    // The drill's check, on the host: the sensors came back in the scratch container.
    let (check, checked) = (env.state_path().join("check-srs-restore"), env.state_path().join("checked"));
    std::fs::write(
        &check,
        format!(
            "#!/bin/sh\necho \"$1\" > '{}'\nn=$(docker exec \"$1\" sh -c 'wc -l < /data/db/pipeline_prod/sensors')\ntest \"$n\" -eq 3000\n",
            checked.display()
        ),
    )
    .expect("write the check");
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let rw = Rewrite {
        images: &images,
        names: &[
            "srs-mongo",
            "srs-backend",
            "srs-frontend",
            "srs-prometheus",
            "srs-grafana",
            "srs-mongo-data",
            "prometheus-data",
            "grafana-data",
        ],
        networks: &["srs", "monitoring"],
        text: vec![
            ("/var/backups/tend".into(), dest.display().to_string()),
            ("remotebkp@offsite.example:/backups/srs".into(), offsite.display().to_string()),
            ("interval: 10s".into(), "interval: 1s".into()),
            ("/usr/local/bin/check-srs-restore".into(), check.display().to_string()),
        ],
    };
    copy_example(&env, "sensor-pipeline", &rw);
    // The drill's schedule would be a systemd timer of this host: apply the services alone.
    let (specs, aside) = (env.spec_path().join("backups.yaml"), env.spec_path().join("backups.yaml.aside"));
    std::fs::rename(&specs, &aside).expect("set the backups aside");
    env.apply();
    std::fs::rename(&aside, &specs).expect("put the backups back");
    let mongo1 = format!("{}-1", env.name("srs-mongo"));
    for s in ["srs-mongo", "srs-backend", "srs-frontend", "srs-prometheus", "srs-grafana"] {
        let c = format!("{}-1", env.name(s));
        assert!(running(&c), "{c} is not running after apply");
    }
    exec(
        &mongo1,
        "cd /data/db && mkdir -p pipeline_prod && cd pipeline_prod \
         && seq 1 3000 | sed 's/^/sensor /' >sensors && seq 1 50 | sed 's/^/calibration /' >calibrations \
         && seq 1 50000 >raw_readings && echo token >sessions",
    );
    let prod = || exec(&mongo1, "cd /data/db/pipeline_prod && md5sum *");
    let prod_before = prod();

    // The nightly dump, now: streamed from the running container, nothing stopped.
    let started = state_time(&mongo1, "StartedAt");
    let out = tend_ok(&env, &["backup", "run", "srs-collections", "--output", "json"]);
    let archive = archive_of(&out, &dest, "srs-collections", "zst");
    assert_eq!(state_time(&mongo1, "StartedAt"), started, "the dump stopped the database");
    // The off-host copy (rsync to a local path here), the same bytes.
    let copies = archives_in(&offsite);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(std::fs::read(&copies[0]).expect("the copy"), std::fs::read(&archive).expect("the archive"));
    tend_ok(&env, &["backup", "verify", "srs-collections"]);

    // Into a development database: the selected collections only, production untouched.
    let out = tend_ok(&env, &["restore", "srs-collections", "--set", "db=pipeline_dev", "--yes"]);
    assert_eq!(prod(), prod_before, "production changed\n{}", describe(&out));
    let dev = exec(&mongo1, "cd /data/db/pipeline_dev && md5sum *");
    let selected: Vec<&str> =
        prod_before.lines().filter(|l| l.ends_with("sensors") || l.ends_with("calibrations")).collect();
    assert_eq!(dev.lines().collect::<Vec<_>>(), selected, "pipeline_dev has the dumped collections, and only them");
    assert!(running(&mongo1));

    // The Sunday drill, now: restored into a scratch container, checked, removed; production
    // untouched.
    let out = tend_ok(&env, &["backup", "drill", "srs-collections"]);
    assert!(stdout_of(&out).contains("drill passed"), "{}", describe(&out));
    let scratch = std::fs::read_to_string(&checked).expect("the check ran");
    assert_eq!(scratch.trim(), "srs-collections-drill", "{}", describe(&out));
    assert!(!docker(&["inspect", scratch.trim()]).status.success(), "the scratch container stayed");
    assert_eq!(prod(), prod_before, "the drill changed production");
    assert_eq!(state_time(&mongo1, "StartedAt"), started, "the drill restarted the database");
}
