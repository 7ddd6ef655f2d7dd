use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;
use crate::quantity::Duration;
use crate::service::{Condition, OnLostLease, PullPolicy, RestartPolicy, RolloutOrder};
use crate::timer::RunOn;

/// The service of the issue, with its host paths under `root` (the secret, the media
/// directory and the uwsgi.ini file), as written apart from that.
fn issue_example(root: &Path, replicas: u32) -> String {
    let root = root.display();
    format!(
        r#"apiVersion: tend/v1
kind: Service
metadata: {{name: ims-web, labels: {{app: ims}}}}
spec:
  runtime: docker
  image: registry.example/ims-web:3.2
  command: ["uwsgi", "--ini", "/etc/ims/uwsgi.ini"]
  env: {{DJANGO_ENV: production, DB_PASSWORD: {{fromFile: {root}/secrets/db}}}}
  ports: ["127.0.0.1:8000:8000/tcp"]
  volumes: ["{root}/media:/media", "{root}/uwsgi.ini:/etc/ims/uwsgi.ini:ro"]
  healthcheck: {{command: ["wget", "-qO-", "http://127.0.0.1:8000/health"], interval: 10s, timeout: 3s, retries: 3}}
  dependsOn: [{{name: ims-postgres, condition: healthy}}]
  restart: {{policy: always, backoff: {{initial: 1s, max: 5m}}}}
  replicas: {replicas}
  rollout: {{maxUnavailable: 1, interval: 30s, scaleDownInterval: 25s, order: stop-first}}
---
apiVersion: tend/v1
kind: Service
metadata: {{name: ims-postgres}}
spec:
  image: postgres:16
"#
    )
}

const SECRET: &str = "s3cret-db-password-for-tests";

/// A temporary directory holding the example's host files.
fn example_files() -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("secrets")).expect("mkdir secrets");
    std::fs::create_dir_all(dir.path().join("media")).expect("mkdir media");
    std::fs::write(dir.path().join("secrets/db"), format!("{SECRET}\n")).expect("write secret");
    std::fs::write(dir.path().join("uwsgi.ini"), "[uwsgi]\nmaster = true\n").expect("write uwsgi.ini");
    dir
}

/// A minimal valid service named `web`, with `extra` appended to its spec (indented by
/// two spaces per line).
fn web(extra: &str) -> String {
    let mut text = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: busybox:1\n".to_string();
    for line in extra.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn load(text: &str) -> Desired {
    load_text_at(Path::new("/specs/test.yaml"), text)
}

fn load_text_at(file: &Path, text: &str) -> Desired {
    match load_str(file, text) {
        Ok(d) => d,
        Err(diags) => panic!("unexpected problems:\n{}\n--- in ---\n{text}", lines(&diags)),
    }
}

fn lines(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("{d}\n")).collect()
}

fn service<'a>(desired: &'a Desired, name: &str) -> &'a Service {
    desired.services.get(name).unwrap_or_else(|| panic!("no service {name}"))
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, text).expect("write");
    path
}

fn load_dir(dir: &Path) -> Desired {
    load_path(dir).unwrap_or_else(|diags| panic!("unexpected problems:\n{}", lines(&diags)))
}

#[test]
fn the_issue_example_loads_with_every_field_as_written() {
    let dir = example_files();
    let root = dir.path();
    let desired = load_text_at(&root.join("ims.yaml"), &issue_example(root, 1));
    assert_eq!(desired.services.keys().collect::<Vec<_>>(), ["ims-postgres", "ims-web"]);
    let s = service(&desired, "ims-web");
    assert_eq!(s.name, "ims-web");
    assert_eq!(s.metadata_labels, BTreeMap::from([("app".to_string(), "ims".to_string())]));
    let spec = &s.spec;
    assert_eq!(spec.runtime, Runtime::Docker);
    assert_eq!(spec.image.as_deref(), Some("registry.example/ims-web:3.2"));
    assert_eq!(spec.pull_policy, PullPolicy::IfNotPresent, "the default");
    assert_eq!(spec.command, Some(vec!["uwsgi".into(), "--ini".into(), "/etc/ims/uwsgi.ini".into()]));
    assert_eq!(s.env["DJANGO_ENV"], Env::Literal("production".into()));
    match &s.env["DB_PASSWORD"] {
        Env::Secret { path, value } => {
            assert_eq!(path, &root.join("secrets/db"));
            assert_eq!(value.expose(), SECRET, "read with its trailing newline removed");
        }
        other => panic!("DB_PASSWORD should be a secret, found {other:?}"),
    }
    assert_eq!(spec.ports.len(), 1);
    let port = &spec.ports[0];
    assert_eq!(port.host_ip, Some("127.0.0.1".parse().expect("ip")));
    assert_eq!((port.host_port, port.container_port, port.protocol), (8000, 8000, Protocol::Tcp));
    assert_eq!(spec.volumes.len(), 2);
    assert_eq!(spec.volumes[0].source, MountSource::Bind(root.join("media")));
    assert_eq!((spec.volumes[0].target.as_str(), spec.volumes[0].read_only), ("/media", false));
    assert_eq!(spec.volumes[1].source, MountSource::Bind(root.join("uwsgi.ini")));
    assert_eq!((spec.volumes[1].target.as_str(), spec.volumes[1].read_only), ("/etc/ims/uwsgi.ini", true));
    let hc = spec.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(hc.command, ["wget", "-qO-", "http://127.0.0.1:8000/health"]);
    assert_eq!(hc.interval, Some(Duration::from_secs(10)));
    assert_eq!(hc.timeout, Some(Duration::from_secs(3)));
    assert_eq!(hc.retries, Some(3));
    assert_eq!(hc.start_period, None);
    assert_eq!(spec.depends_on.len(), 1);
    assert_eq!(spec.depends_on[0].name, "ims-postgres");
    assert_eq!(spec.depends_on[0].condition, Condition::Healthy);
    assert_eq!(spec.restart.policy, RestartPolicy::Always);
    assert_eq!(spec.restart.backoff.initial, Duration::from_secs(1));
    assert_eq!(spec.restart.backoff.max, Duration::from_secs(300));
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.rollout.max_unavailable, 1);
    assert_eq!(spec.rollout.interval, Duration::from_secs(30));
    assert_eq!(spec.rollout.scale_down_interval, Duration::from_secs(25));
    assert_eq!(spec.rollout.order, RolloutOrder::StopFirst);
    assert_eq!(s.location.line, 1);
    assert_eq!(s.hash.len(), 64);
    let fields: Vec<&str> = s.field_hashes.keys().map(String::as_str).collect();
    let mut expected = crate::desired::TEMPLATE_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(fields, expected);
}

#[test]
fn the_issue_example_as_written_is_rejected_only_for_two_replicas_publishing_a_port() {
    let dir = example_files();
    let file = dir.path().join("ims.yaml");
    let diags = load_str(&file, &issue_example(dir.path(), 2)).expect_err("replicas 2 with a published port");
    assert_eq!(diags.len(), 1, "{}", lines(&diags));
    let loc = diags[0].location.as_ref().expect("a location");
    assert_eq!((&*loc.file, loc.line, loc.column), (file.as_path(), 14, 13), "at the replicas value");
    assert!(diags[0].message.contains("2 replicas cannot all publish the same host ports"), "{}", diags[0]);
}

#[test]
fn the_hash_does_not_depend_on_key_order_flow_style_comments_or_anchors() {
    let block = "apiVersion: tend/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  image: busybox:1\n  command:\n    - sleep\n    - \"60\"\n  env:\n    A: \"1\"\n    B: two\n  healthcheck:\n    command: [\"true\"]\n    interval: 5s\n";
    let flow = "{kind: Service, spec: {env: {B: two, A: '1'}, healthcheck: {interval: 5s, command: ['true']}, command: [sleep, '60'], image: 'busybox:1'}, metadata: {name: web}, apiVersion: tend/v1}\n";
    let commented = "# web\napiVersion: tend/v1 # version\nkind: Service\nmetadata: {name: web}  # name\nspec:\n  # the image\n  image: busybox:1\n  command: [sleep, \"60\"]\n  env: {B: two, A: \"1\"}\n  healthcheck: {command: [\"true\"], interval: 5s}\n";
    let anchors = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: busybox:1\n  command: &cmd [sleep, \"60\"]\n  env:\n    <<: {A: \"1\", B: one}\n    B: two\n  healthcheck:\n    <<: &hc {command: [\"true\"]}\n    interval: 5s\n";
    let reference = load(block);
    for (what, text) in
        [("flow style and key order", flow), ("comments", commented), ("anchors and merge keys", anchors)]
    {
        let other = load(text);
        assert_eq!(service(&other, "web").hash, service(&reference, "web").hash, "{what}");
        assert_eq!(service(&other, "web").field_hashes, service(&reference, "web").field_hashes, "{what}");
    }
}

#[test]
fn the_hash_changes_with_the_image_the_environment_and_the_command() {
    let base = web("command: [sleep, \"60\"]\nenv: {A: \"1\"}");
    let base_service = load(&base);
    let base_service = service(&base_service, "web");
    for (field, changed) in [
        ("image", web("command: [sleep, \"60\"]\nenv: {A: \"1\"}").replace("busybox:1", "busybox:2")),
        ("env", web("command: [sleep, \"60\"]\nenv: {A: \"2\"}")),
        ("env", web("command: [sleep, \"60\"]\nenv: {A: \"1\", B: \"1\"}")),
        ("command", web("command: [sleep, \"61\"]\nenv: {A: \"1\"}")),
    ] {
        let other = load(&changed);
        let other = service(&other, "web");
        assert_ne!(other.hash, base_service.hash, "changing {field}");
        for (name, h) in &other.field_hashes {
            assert_eq!(
                name == field,
                *h != base_service.field_hashes[name],
                "field hash of {name} when changing {field}"
            );
        }
    }
}

#[test]
fn fields_applied_in_place_do_not_change_the_hash() {
    let db = "\n---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: db}\nspec: {image: busybox:1}\n";
    let base = format!("{}{db}", web(""));
    for (field, extra) in [
        ("replicas", "replicas: 3"),
        ("rollout", "rollout: {maxUnavailable: 2, interval: 5s, scaleDownInterval: 1s, order: start-first}"),
        ("restart", "restart: {policy: on-failure, backoff: {initial: 2s, max: 1m}}"),
        ("dependsOn", "dependsOn: [{name: db, condition: healthy, timeout: 1m}]"),
        ("pullPolicy", "pullPolicy: always"),
    ] {
        let changed = format!("{}{db}", web(extra));
        let (a, b) = (load(&base), load(&changed));
        assert_eq!(service(&a, "web").hash, service(&b, "web").hash, "{field} is applied in place");
        assert_eq!(service(&a, "web").field_hashes, service(&b, "web").field_hashes, "{field}");
    }
}

#[test]
fn editing_a_single_mounted_file_changes_the_hash_and_only_the_volumes_field_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "conf/app.ini", "debug = false\n");
    write(dir.path(), "web.yaml", &web("volumes: [\"./conf/app.ini:/etc/app.ini:ro\", \"data:/data\"]"));
    let before = load_dir(dir.path());
    write(dir.path(), "conf/app.ini", "debug = true\n");
    let after = load_dir(dir.path());
    let (before, after) = (service(&before, "web"), service(&after, "web"));
    assert_ne!(before.hash, after.hash);
    for (name, h) in &after.field_hashes {
        assert_eq!(name == "volumes", *h != before.field_hashes[name], "field hash of {name}");
    }
}

#[test]
fn a_secret_value_never_shows_in_debug_output_or_the_plan_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "db-password", &format!("{SECRET}\n"));
    write(dir.path(), "web.yaml", &web("env: {USER: app, PASSWORD: {fromFile: ./db-password}}"));
    let desired = load_dir(dir.path());
    let debug = format!("{desired:?}");
    assert!(!debug.contains(SECRET), "Debug shows the secret: {debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    let s = service(&desired, "web");
    let shown = s.env_redacted();
    assert_eq!(shown["USER"], "app");
    assert_eq!(shown["PASSWORD"], format!("<secret from {}>", dir.path().join("db-password").display()));
    assert!(!format!("{shown:?}").contains(SECRET));
    assert!(!s.hash.contains(SECRET) && !format!("{:?}", s.field_hashes).contains(SECRET));
}

#[test]
fn changing_a_secret_files_content_changes_the_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "db-password", "first\n");
    write(dir.path(), "web.yaml", &web("env: {PASSWORD: {fromFile: ./db-password}}"));
    let before = load_dir(dir.path());
    write(dir.path(), "db-password", "second\n");
    let after = load_dir(dir.path());
    let (before, after) = (service(&before, "web"), service(&after, "web"));
    assert_ne!(before.hash, after.hash);
    assert_ne!(before.field_hashes["env"], after.field_hashes["env"]);
    assert_eq!(before.field_hashes["volumes"], after.field_hashes["volumes"]);
}

#[test]
fn relative_paths_resolve_against_the_spec_files_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    write(root, "apps/web/conf/app.ini", "x = 1\n");
    write(root, "apps/shared/token", "t0ken\n");
    write(
        root,
        "apps/web/web.yaml",
        &web(
            "volumes: [\"./conf/app.ini:/etc/app.ini\", \"../shared:/shared:ro\"]\nenv: {TOKEN: {fromFile: ../shared/token}}",
        ),
    );
    // Loaded from elsewhere: the directory of the process plays no part.
    let desired = load_dir(root);
    let s = service(&desired, "web");
    assert_eq!(s.spec.volumes[0].source, MountSource::Bind(root.join("apps/web/conf/app.ini")));
    assert_eq!(s.spec.volumes[1].source, MountSource::Bind(root.join("apps/shared")));
    match &s.env["TOKEN"] {
        Env::Secret { path, value } => {
            assert_eq!(path, &root.join("apps/shared/token"));
            assert_eq!(value.expose(), "t0ken");
        }
        other => panic!("TOKEN should be a secret, found {other:?}"),
    }
}

#[test]
fn hidden_files_and_files_that_are_not_yaml_are_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    write(root, "web.yaml", &web(""));
    for junk in
        [".hidden.yaml", ".web.yaml.swp", "web.yaml~", "web.yaml.bak", "README.md", "notes.txt", ".git/config.yaml"]
    {
        write(root, junk, "this: [is not a spec\n");
    }
    let desired = load_dir(root);
    assert_eq!(desired.services.keys().collect::<Vec<_>>(), ["web"]);
}

#[test]
fn directories_are_read_recursively_for_yaml_and_yml_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    write(root, "web.yaml", &web(""));
    write(root, "a/api.yml", &web("").replace("name: web", "name: api"));
    write(root, "a/b/c/db.yaml", &web("").replace("name: web", "name: db"));
    let desired = load_dir(root);
    assert_eq!(desired.services.keys().collect::<Vec<_>>(), ["api", "db", "web"]);
    assert_eq!(&*service(&desired, "db").location.file, root.join("a/b/c/db.yaml").as_path());
}

#[test]
fn an_empty_directory_is_an_empty_desired_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("empty/sub")).expect("mkdir");
    let desired = load_dir(dir.path());
    assert!(desired.services.is_empty());
}

#[test]
fn a_file_with_only_comments_or_empty_documents_declares_nothing() {
    assert!(load("# nothing here yet\n").services.is_empty());
    assert!(load("---\n---\n").services.is_empty());
}

#[test]
fn a_service_with_problems_still_counts_as_a_name_for_dependencies_and_duplicates() {
    let text = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: db}\nspec: {imag: x}\n---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: db}\nspec: {image: x, dependsOn: [{name: db}]}\n";
    let diags = load_str(Path::new("/specs/s.yaml"), text).expect_err("bad");
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{}", lines(&diags));
    assert!(messages[0].contains("unknown field `imag`"), "{}", lines(&diags));
    assert!(messages[1].contains("duplicate Service name `db`"), "{}", lines(&diags));
}

#[test]
fn references_are_checked_in_a_document_with_problems_of_its_own() {
    // Broken labels used to hide the name, and so every unknown reference in the set.
    let text = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: web, labels: [x]}\nspec:\n  image: busybox:1\n  dependsOn: [{name: nope}]\n";
    assert_eq!(
        problems(text),
        ["3:31: expected a mapping, found a sequence", "6:22: `dependsOn` names unknown service `nope`"]
    );
}

#[test]
fn a_service_whose_runtime_is_unknown_is_not_called_the_wrong_runtime() {
    let app = "---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: app}\nspec: {runtime: systemd, exec: [/usr/bin/app], dependsOn: [{name: db}]}\n";
    for (db, problem) in [
        ("spec: [x]", "4:7: expected a mapping, found a sequence"),
        ("spec: {runtime: sytemd}", "4:17: unknown value `sytemd`, did you mean `systemd`?"),
        ("", "1:1: missing field `spec`"),
    ] {
        let text = format!("apiVersion: tend/v1\nkind: Service\nmetadata: {{name: db}}\n{db}\n{app}");
        assert_eq!(problems(&text), [problem], "{text}");
    }
}

#[test]
fn a_dependency_suggestion_never_names_the_service_itself() {
    assert_eq!(
        problems(&web("dependsOn: [{name: webb}]")),
        ["6:22: `dependsOn` names unknown service `webb`"],
        "`web` is the nearest name, but a service cannot depend on itself"
    );
}

/// A docker service with every template field set. Its hash is pinned: containers created by
/// earlier versions carry it, and a change here would recreate every one of them.
const PINNED_DOCKER: &str = r#"apiVersion: tend/v1
kind: Service
metadata: {name: pinned, labels: {app: ims}}
spec:
  image: registry.example/ims-web:3.2
  entrypoint: ["/docker-entrypoint.sh"]
  command: ["uwsgi", "--ini", "/etc/ims/uwsgi.ini"]
  env: {DJANGO_ENV: production, WORKERS: 4}
  ports: ["127.0.0.1:8000:8000/tcp", "53:53/udp"]
  volumes: ["media:/media", "static:/static:ro"]
  networks: [ims]
  labels: {tier: web}
  user: "1000:1000"
  workingDir: /srv/ims
  healthcheck: {command: ["wget", "-qO-", "http://127.0.0.1:8000/health"], interval: 10s, timeout: 3s, retries: 3, startPeriod: 5s}
  resources: {memory: 512Mi, cpus: 0.5}
  stopSignal: SIGINT
  stopTimeout: 30s
  restart: {policy: on-failure}
  replicas: 1
"#;

#[test]
fn a_docker_services_hash_is_pinned() {
    let desired = load(PINNED_DOCKER);
    let s = service(&desired, "pinned");
    assert_eq!(s.hash, "b823ce11f8dc6d767f637ff26d5e14b993af404e872be561fdf212554cb25094");
    let minimal = load(&web(""));
    assert_eq!(service(&minimal, "web").hash, "05f35f4d0f4b8e221c412cba350b0aa7b22ee320d104a6384dfa598ca47444c4");
}

// ---------------------------------------------------------------------------------------------
// systemd services and Timers

/// The three documents of the "systemd services, Timers and jobs" issue, with the secret
/// under `root`.
fn systemd_example(root: &Path) -> String {
    let root = root.display();
    format!(
        r#"apiVersion: tend/v1
kind: Service
metadata: {{name: ims-nginx}}
spec:
  runtime: systemd
  exec: ["/usr/sbin/nginx", "-g", "daemon off;"]
  user: www-data
  group: www-data
  workingDir: /srv/ims
  env: {{A: b, SECRET: {{fromFile: {root}/secrets/x}}}}
  type: simple
  enabled: true
  resources: {{memory: 512Mi, cpus: 0.5}}
  stopSignal: SIGTERM
  stopTimeout: 30s
  dependsOn: [{{name: ims-uwsgi}}]
  restart: {{policy: always}}
  hooks: {{beforeStart: ims-migrate}}
---
apiVersion: tend/v1
kind: Service
metadata: {{name: ims-uwsgi}}
spec:
  runtime: systemd
  exec: ["/usr/bin/uwsgi", "--ini", "/etc/ims/uwsgi.ini"]
  type: forking
  pidFile: /run/uwsgi.pid
  enabled: false
---
apiVersion: tend/v1
kind: Timer
metadata: {{name: ims-updates}}
spec:
  schedule: "*-*-* 01:00:00"
  persistent: true
  randomizedDelay: 5m
  accuracy: 1m
  timezone: Europe/Berlin
  concurrency: forbid
  enabled: true
  timeout: 1h
  job:
    runtime: docker
    image: registry.example/ims-web:3.2
    command: ["python", "manage.py", "import_all"]
---
apiVersion: tend/v1
kind: Timer
metadata: {{name: ims-restore-media}}
spec:
  enabled: false
  job: {{runtime: host, exec: ["/usr/local/bin/restore-media"]}}
---
apiVersion: tend/v1
kind: Timer
metadata: {{name: ims-migrate}}
spec:
  enabled: false
  concurrency: replace
  job:
    runtime: host
    exec: ["/usr/bin/python3", "/srv/ims/manage.py", "migrate"]
    user: ims
    group: ims
    workingDir: /srv/ims
    env: {{DJANGO_SETTINGS_MODULE: ims.settings, TOKEN: {{fromFile: {root}/secrets/x}}}}
"#
    )
}

/// A temporary directory holding the secret of [`systemd_example`].
fn systemd_files() -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "secrets/x", &format!("{SECRET}\n"));
    dir
}

fn timer<'a>(desired: &'a Desired, name: &str) -> &'a Timer {
    desired.timers.get(name).unwrap_or_else(|| panic!("no timer {name}"))
}

/// The diagnostics of `text`, as `LINE:COL: MESSAGE`.
fn problems(text: &str) -> Vec<String> {
    let diags = load_str(Path::new("/specs/t.yaml"), text).expect_err("problems");
    diags
        .iter()
        .map(|d| {
            let loc = d.location.as_ref().expect("a location");
            format!("{}:{}: {}", loc.line, loc.column, d.message)
        })
        .collect()
}

/// A minimal systemd service named `u`, with `extra` appended to its spec.
fn unit(extra: &str) -> String {
    let mut text =
        "apiVersion: tend/v1\nkind: Service\nmetadata: {name: u}\nspec:\n  runtime: systemd\n  exec: [/usr/bin/u]\n"
            .to_string();
    for line in extra.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A minimal Timer named `t` with a host job, with `extra` appended to its spec.
fn timer_doc(extra: &str) -> String {
    let mut text =
        "apiVersion: tend/v1\nkind: Timer\nmetadata: {name: t}\nspec:\n  job: {runtime: host, exec: [/usr/bin/t]}\n"
            .to_string();
    for line in extra.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[test]
fn the_systemd_example_loads_with_every_field_as_written() {
    use crate::quantity::ByteSize;
    use crate::service::{Resources, ServiceType};
    use crate::timer::{Concurrency, JobRuntime};

    let dir = systemd_files();
    let root = dir.path();
    let desired = load_text_at(&root.join("ims.yaml"), &systemd_example(root));
    assert_eq!(desired.services.keys().collect::<Vec<_>>(), ["ims-nginx", "ims-uwsgi"]);
    assert_eq!(desired.timers.keys().collect::<Vec<_>>(), ["ims-migrate", "ims-restore-media", "ims-updates"]);
    assert!(!desired.is_empty());
    assert_eq!(desired.docker_services().count(), 0);
    assert_eq!(desired.systemd_services().count(), 2);

    let s = service(&desired, "ims-nginx");
    let spec = &s.spec;
    assert_eq!(spec.runtime, Runtime::Systemd);
    assert_eq!(spec.exec, Some(vec!["/usr/sbin/nginx".into(), "-g".into(), "daemon off;".into()]));
    assert_eq!((spec.user.as_deref(), spec.group.as_deref()), (Some("www-data"), Some("www-data")));
    assert_eq!(spec.working_dir.as_deref(), Some("/srv/ims"));
    assert_eq!(s.env["A"], Env::Literal("b".into()));
    match &s.env["SECRET"] {
        Env::Secret { path, value } => {
            assert_eq!(path, &root.join("secrets/x"));
            assert_eq!(value.expose(), SECRET);
        }
        other => panic!("SECRET should be a secret, found {other:?}"),
    }
    assert_eq!((spec.service_type, spec.unit_type()), (Some(ServiceType::Simple), ServiceType::Simple));
    assert_eq!((spec.enabled, spec.is_enabled()), (Some(true), true));
    assert_eq!(spec.pid_file, None);
    assert_eq!(spec.resources, Some(Resources { memory: Some(ByteSize(512 << 20)), cpus: Some(0.5) }));
    assert_eq!(spec.stop_signal.as_deref(), Some("SIGTERM"));
    assert_eq!(spec.stop_timeout, Some(Duration::from_secs(30)));
    assert_eq!(spec.depends_on.len(), 1);
    assert_eq!((spec.depends_on[0].name.as_str(), spec.depends_on[0].condition), ("ims-uwsgi", Condition::Started));
    assert_eq!(spec.restart.policy, RestartPolicy::Always);
    assert_eq!(spec.before_start(), Some("ims-migrate"));
    assert_eq!(spec.replicas, 1);
    assert_eq!(s.hash.len(), 64);
    let mut expected = crate::desired::SYSTEMD_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(s.field_hashes.keys().map(String::as_str).collect::<Vec<_>>(), expected);

    let u = service(&desired, "ims-uwsgi");
    assert_eq!(u.spec.unit_type(), ServiceType::Forking);
    assert_eq!(u.spec.pid_file.as_deref(), Some("/run/uwsgi.pid"));
    assert!(!u.spec.is_enabled());

    let t = timer(&desired, "ims-updates");
    assert_eq!(t.spec.schedule.as_deref(), Some("*-*-* 01:00:00"), "kept as written");
    assert!(t.spec.persistent);
    assert_eq!(t.spec.randomized_delay, Some(Duration::from_secs(300)));
    assert_eq!(t.spec.accuracy, Some(Duration::from_secs(60)));
    assert_eq!(t.spec.timezone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(t.spec.concurrency, Concurrency::Forbid);
    assert!(t.spec.enabled);
    assert_eq!(t.spec.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(t.spec.job.runtime, JobRuntime::Docker);
    assert_eq!(t.spec.job.image.as_deref(), Some("registry.example/ims-web:3.2"));
    assert_eq!(t.spec.job.pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(t.spec.job.command, Some(vec!["python".into(), "manage.py".into(), "import_all".into()]));
    let calendar = t.calendar.as_ref().expect("parsed schedule");
    assert_eq!(calendar.normalized(), "*-*-* 01:00:00 Europe/Berlin", "read in its time zone");
    let from: crate::calendar::Timestamp = "2026-07-01T12:00:00Z".parse().expect("timestamp");
    let next = calendar.next_after(from).expect("a next elapse");
    assert_eq!(next.to_string(), "2026-07-02T01:00:00+02:00[Europe/Berlin]");
    assert_eq!(t.location.line, 30);
    let mut expected = crate::desired::TIMER_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(t.field_hashes.keys().map(String::as_str).collect::<Vec<_>>(), expected);

    let r = timer(&desired, "ims-restore-media");
    assert!(!r.spec.enabled);
    assert_eq!((r.spec.schedule.as_ref(), r.calendar.as_ref()), (None, None));
    assert_eq!(r.spec.job.runtime, JobRuntime::Host);
    assert_eq!(r.spec.job.exec, Some(vec!["/usr/local/bin/restore-media".into()]));
    assert_eq!(r.spec.concurrency, Concurrency::Forbid, "the default");

    let m = timer(&desired, "ims-migrate");
    assert_eq!(m.spec.concurrency, Concurrency::Replace);
    assert_eq!((m.spec.job.user.as_deref(), m.spec.job.group.as_deref()), (Some("ims"), Some("ims")));
    assert_eq!(m.spec.job.working_dir.as_deref(), Some("/srv/ims"));
    assert_eq!(m.env["DJANGO_SETTINGS_MODULE"], Env::Literal("ims.settings".into()));
    assert!(matches!(&m.env["TOKEN"], Env::Secret { value, .. } if value.expose() == SECRET));
    let shown = m.env_redacted();
    assert_eq!(shown["TOKEN"], format!("<secret from {}>", root.join("secrets/x").display()));
    let debug = format!("{desired:?}");
    assert!(!debug.contains(SECRET), "Debug shows the secret");
    assert!(!format!("{:?}", m.field_hashes).contains(SECRET) && !m.hash.contains(SECRET));
}

#[test]
fn systemd_and_timer_hashes_do_not_depend_on_key_order_flow_style_or_anchors() {
    let block = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: u}\nspec:\n  runtime: systemd\n  exec:\n    - /usr/bin/u\n    - --x\n  env:\n    A: \"1\"\n    B: two\n---\napiVersion: tend/v1\nkind: Timer\nmetadata: {name: t}\nspec:\n  schedule: daily\n  job:\n    runtime: host\n    exec: [/usr/bin/t]\n    env: {A: \"1\"}\n";
    let flow = "{spec: {env: {B: two, A: '1'}, exec: [/usr/bin/u, --x], runtime: systemd}, kind: Service, apiVersion: tend/v1, metadata: {name: u}}\n---\n{kind: Timer, metadata: {name: t}, spec: {job: {env: {A: '1'}, exec: [/usr/bin/t], runtime: host}, schedule: daily}, apiVersion: tend/v1}\n";
    let anchors = "apiVersion: tend/v1\nkind: Service\nmetadata: {name: u}\nspec:\n  runtime: systemd\n  exec: [/usr/bin/u, --x]\n  env: &env\n    <<: {A: \"1\", B: one}\n    B: two\n---\napiVersion: tend/v1\nkind: Timer\nmetadata: {name: t}\nspec:\n  schedule: daily\n  job:\n    <<: {runtime: host, exec: [/usr/bin/t]}\n    env: {A: \"1\"}\n";
    let reference = load(block);
    for (what, text) in [("flow style and key order", flow), ("anchors and merge keys", anchors)] {
        let other = load(text);
        assert_eq!(service(&other, "u").hash, service(&reference, "u").hash, "{what}");
        assert_eq!(timer(&other, "t").hash, timer(&reference, "t").hash, "{what}");
        assert_eq!(timer(&other, "t").field_hashes, timer(&reference, "t").field_hashes, "{what}");
    }
}

#[test]
fn a_systemd_services_hash_fills_in_defaults_and_ignores_the_order_of_dependencies() {
    let deps = "\n---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: a}\nspec: {runtime: systemd, exec: [/usr/bin/a]}\n---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: b}\nspec: {runtime: systemd, exec: [/usr/bin/b]}\n";
    let hash = |extra: &str| service(&load(&format!("{}{deps}", unit(extra))), "u").hash.clone();
    let base = hash("dependsOn: [{name: a}, {name: b}]");
    assert_eq!(base, hash("dependsOn: [{name: b}, {name: a, condition: started}]"));
    assert_eq!(base, hash("dependsOn: [{name: a}, {name: b}]\ntype: simple\nenabled: true\nreplicas: 1"));
    assert_ne!(base, hash("dependsOn: [{name: a}]"));
    // Neither the hook nor the labels go into the unit file.
    let hooked = format!("{}{deps}{}", unit("dependsOn: [{name: a}, {name: b}]\nhooks: {beforeStart: t}"), "---\n");
    let hooked = format!("{hooked}{}", timer_doc("enabled: false"));
    assert_eq!(base, service(&load(&hooked), "u").hash);
}

#[test]
fn a_systemd_services_hash_changes_with_each_unit_field_and_names_it() {
    let base = load(&unit(""));
    let base = service(&base, "u");
    for (field, extra) in [
        ("exec", "exec: [/usr/bin/u, --verbose]"),
        ("user", "user: www-data"),
        ("group", "group: www-data"),
        ("workingDir", "workingDir: /srv"),
        ("env", "env: {A: b}"),
        ("type", "type: notify"),
        ("resources", "resources: {memory: 1Gi}"),
        ("stopSignal", "stopSignal: SIGINT"),
        ("stopTimeout", "stopTimeout: 1m"),
        ("restart", "restart: {policy: on-failure}"),
        ("enabled", "enabled: false"),
    ] {
        let text =
            unit(extra).replace("  exec: [/usr/bin/u]\n", if field == "exec" { "" } else { "  exec: [/usr/bin/u]\n" });
        let other = load(&text);
        let other = service(&other, "u");
        assert_ne!(other.hash, base.hash, "changing {field}");
        for (name, h) in &other.field_hashes {
            assert_eq!(name == field, *h != base.field_hashes[name], "field hash of {name} when changing {field}");
        }
    }
}

#[test]
fn a_timers_hash_changes_with_its_schedule_and_its_job_and_names_the_field() {
    let base = load(&timer_doc("schedule: daily"));
    let base = timer(&base, "t");
    for (field, text) in [
        ("schedule", timer_doc("schedule: hourly")),
        ("schedule", timer_doc("schedule: \"*-*-* 00:00:00\"")),
        ("job", timer_doc("schedule: daily").replace("/usr/bin/t]", "/usr/bin/t, --all]")),
        ("job", timer_doc("schedule: daily").replace("exec: [/usr/bin/t]", "exec: [/usr/bin/t], user: nobody")),
        ("persistent", timer_doc("schedule: daily\npersistent: true")),
        ("randomizedDelay", timer_doc("schedule: daily\nrandomizedDelay: 5m")),
        ("accuracy", timer_doc("schedule: daily\naccuracy: 1s")),
        ("timezone", timer_doc("schedule: daily\ntimezone: UTC")),
        ("enabled", timer_doc("schedule: daily\nenabled: false")),
        ("concurrency", timer_doc("schedule: daily\nconcurrency: allow")),
        ("timeout", timer_doc("schedule: daily\ntimeout: 1h")),
    ] {
        let other = load(&text);
        let other = timer(&other, "t");
        assert_ne!(other.hash, base.hash, "changing {field}");
        for (name, h) in &other.field_hashes {
            assert_eq!(name == field, *h != base.field_hashes[name], "field hash of {name} when changing {field}");
        }
    }
    // Writing a default changes nothing.
    let same = load(&timer_doc("schedule: daily\npersistent: false\nconcurrency: forbid\nenabled: true"));
    assert_eq!(timer(&same, "t").hash, base.hash);
}

#[test]
fn a_docker_jobs_secret_and_mounted_file_are_in_the_timers_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "token", "first\n");
    write(dir.path(), "job.ini", "a = 1\n");
    let text = "apiVersion: tend/v1\nkind: Timer\nmetadata: {name: t}\nspec:\n  schedule: daily\n  job:\n    runtime: docker\n    image: busybox:1\n    env: {TOKEN: {fromFile: ./token}}\n    volumes: [\"./job.ini:/etc/job.ini:ro\", \"data:/data\"]\n    networks: [backend]\n";
    write(dir.path(), "t.yaml", text);
    let before = load_dir(dir.path());
    let before = timer(&before, "t");
    assert_eq!(before.spec.job.volumes[0].source, MountSource::Bind(dir.path().join("job.ini")), "resolved");
    write(dir.path(), "token", "second\n");
    let after_secret = load_dir(dir.path());
    assert_ne!(timer(&after_secret, "t").field_hashes["job"], before.field_hashes["job"]);
    write(dir.path(), "job.ini", "a = 2\n");
    let after_file = load_dir(dir.path());
    assert_ne!(timer(&after_file, "t").hash, timer(&after_secret, "t").hash);
}

#[test]
fn a_bad_schedule_is_reported_at_the_column_of_the_expression_where_it_goes_wrong() {
    let msg = "invalid schedule: column 7: hour 25 is out of range, expected 0..23";
    for (schedule, column) in [
        ("\"*-*-* 25:00\"", 20), // the value starts at column 13, the expression after the quote
        ("'*-*-* 25:00'", 20),
        ("Mon 25:00", 17), // plain: the expression starts at column 13, the hour is its column 5
        ("{x: 1}", 13),    // not a string: the decoder says so at the value
    ] {
        let got = problems(&timer_doc(&format!("schedule: {schedule}")));
        if schedule.starts_with('{') {
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].starts_with(&format!("6:{column}: ")), "{schedule}: {got:?}");
            continue;
        }
        let expected = if schedule.starts_with('M') {
            format!("6:{column}: invalid schedule: column 5: hour 25 is out of range, expected 0..23")
        } else {
            format!("6:{column}: {msg}")
        };
        assert_eq!(got, [expected], "{schedule}");
    }
    // An escape before the problem: the text in the file no longer matches the value column
    // for column, so the problem is placed at the start of the value.
    let got = problems(&timer_doc("schedule: \"\\x2A-*-* 25:00\""));
    assert_eq!(got, [format!("6:13: {msg}")]);
    // A block scalar starts on its own line.
    let got = problems(&timer_doc("schedule: >-\n  *-*-* 25:00"));
    assert_eq!(got, [format!("7:11: {msg}")]);
}

#[test]
fn an_enabled_timer_needs_a_schedule_and_a_disabled_one_may_have_one() {
    assert_eq!(
        problems(&timer_doc("")),
        [
            "5:3: missing field `schedule` (an enabled Timer needs one, e.g. \"*-*-* 01:00:00\" or `daily`; with `enabled: false` the job runs only with `tend job run`)"
        ]
    );
    let d = load(&timer_doc("enabled: false\nschedule: weekly"));
    assert!(timer(&d, "t").calendar.is_some());
}

#[test]
fn a_timezone_must_be_a_zone_of_the_tz_database_and_not_twice() {
    let d = load(&timer_doc("schedule: \"Mon 09:00\"\ntimezone: America/New_York"));
    assert_eq!(timer(&d, "t").calendar.as_ref().expect("parsed").normalized(), "Mon *-*-* 09:00:00 America/New_York");
    let d = load(&timer_doc("schedule: daily\ntimezone: UTC"));
    assert_eq!(timer(&d, "t").calendar.as_ref().expect("parsed").normalized(), "*-*-* 00:00:00 UTC");
    for (tz, why) in [
        (
            "Europe/Berln",
            "unknown time zone `Europe/Berln`: it is not in /usr/share/zoneinfo, did you mean `Europe/Berlin`?",
        ),
        ("../../etc/passwd", "invalid time zone `../../etc/passwd`: expected an IANA name like `Europe/Berlin`"),
        ("/etc/localtime", "invalid time zone `/etc/localtime`: expected an IANA name"),
        ("Europe//Berlin", "invalid time zone `Europe//Berlin`"),
        ("Europe/", "invalid time zone `Europe/`"),
        ("Europe", "unknown time zone `Europe`"),
    ] {
        let got = problems(&timer_doc(&format!("schedule: daily\ntimezone: \"{tz}\"")));
        assert_eq!(got.len(), 1, "{tz}: {got:?}");
        assert!(got[0].starts_with("7:13: ") && got[0].contains(why), "{tz}: {got:?}");
    }
    assert_eq!(
        problems(&timer_doc("schedule: \"daily UTC\"\ntimezone: Europe/Berlin")),
        [
            "7:13: the schedule already names the time zone `UTC`; give the zone in `schedule` or in `timezone`, not in both"
        ]
    );
}

#[test]
fn exec_is_an_argument_list_with_an_absolute_program_and_no_shell_syntax() {
    for ok in [
        "[/usr/sbin/nginx, -g, \"daemon off;\"]",
        "[/bin/sh, -c, \"a | b && c > /tmp/x 2>&1\"]",
        "[/bin/bash, -euc, \"a | b\", \"|\"]",
        "[/usr/bin/env, FOO=1, /usr/bin/x]",
    ] {
        load(&unit(&format!("exec: {ok}")).replace("  exec: [/usr/bin/u]\n", ""));
    }
    for (exec, at, why) in [
        ("[nginx, -g, x]", "6:10", "the program `nginx` is not an absolute path"),
        ("[./run.sh]", "6:10", "the program `./run.sh` is not an absolute path"),
        ("[\"/usr/bin/prog --flag\"]", "6:10", "`exec` is a list of arguments, but its only item"),
        ("[/usr/bin/a, \"|\", /usr/bin/b]", "6:22", "`|` in `exec` needs a shell"),
        ("[/usr/bin/a, \">>\", /tmp/log]", "6:22", "`>>` in `exec` needs a shell"),
        ("[/usr/bin/a, \"2>&1\"]", "6:22", "`2>&1` in `exec` needs a shell"),
        ("[/bin/sh, /x.sh, \"&&\", /y]", "6:26", "`&&` in `exec` needs a shell"),
        ("[/usr/bin/a, \"line\\nbreak\"]", "6:22", "cannot contain a line break or a NUL character"),
        ("[]", "6:9", "`exec` is empty"),
    ] {
        let text = unit(&format!("exec: {exec}")).replace("  exec: [/usr/bin/u]\n", "");
        let got = problems(&text);
        assert_eq!(got.len(), 1, "{exec}: {got:?}");
        assert!(got[0].starts_with(&format!("{at}: ")) && got[0].contains(why), "{exec}: {got:?}");
    }
}

#[test]
fn fields_of_the_other_runtime_are_reported_at_their_key() {
    assert_eq!(
        problems(&unit(
            "image: nginx:1\nports: [\"80:80\"]\nhealthcheck: {command: [x]}\nrollout: {order: start-first}"
        )),
        [
            "7:3: field `image` applies to runtime docker only",
            "8:3: field `ports` applies to runtime docker only",
            "9:3: field `healthcheck` applies to runtime docker only",
            "10:3: field `rollout` applies to runtime docker only",
        ]
    );
    assert_eq!(
        problems(&web("exec: [/usr/bin/x]\ngroup: g\ntype: notify\nenabled: false")),
        [
            "6:3: field `exec` applies to runtime systemd only; a docker service runs `command` in its image",
            "7:3: field `group` applies to runtime systemd only",
            "8:3: field `type` applies to runtime systemd only",
            "9:3: field `enabled` applies to runtime systemd only",
        ]
    );
}

#[test]
fn systemd_accounts_paths_and_environment_names_are_what_a_unit_file_takes() {
    load(&unit("user: www-data\ngroup: \"33\"\nworkingDir: /srv\nenv: {_A1: x}"));
    for (extra, why) in [
        ("user: \"1000:1000\"", "invalid user `1000:1000`: on the host, a user is a name"),
        ("group: \"a b\"", "invalid group `a b`"),
        ("workingDir: srv/ims", "`workingDir` must be an absolute path on the host, found `srv/ims`"),
        ("env: {MY-VAR: x}", "invalid environment variable name `MY-VAR`: names are letters, digits and `_`"),
        ("env: {1A: x}", "invalid environment variable name `1A`"),
        ("env: {A: \"x\\0y\"}", "the value of `A` contains a NUL character"),
        ("replicas: 2", "a systemd service runs one unit: `replicas` must be 1, found 2"),
        ("type: forking", "`type: forking` needs `pidFile`"),
        ("pidFile: /run/u.pid", "`pidFile` applies to `type: forking` only"),
        ("type: forking\npidFile: run/u.pid", "`pidFile` must be an absolute path on the host"),
    ] {
        let got = problems(&unit(extra));
        assert_eq!(got.len(), 1, "{extra}: {got:?}");
        assert!(got[0].contains(why), "{extra}: {got:?}");
    }
    // A docker service takes `uid:gid`, and the same environment names; its working
    // directory is inside the container, but absolute all the same.
    load(&web("user: \"1000:1000\"\nworkingDir: /srv\nenv: {MY_VAR: x}"));
    assert_eq!(
        problems(&web("user: \"1000:1000\"\nworkingDir: relative\nenv: {MY-VAR: x}")),
        [
            "7:15: `workingDir` must be an absolute path inside the container, found `relative`",
            "8:17: invalid environment variable name `MY-VAR`: names are letters, digits and `_`, not starting with a digit (as shells and systemd take them)",
        ]
    );
}

#[test]
fn services_and_timers_share_one_namespace() {
    let text = format!("{}---\n{}", unit(""), timer_doc("enabled: false").replace("name: t", "name: u"));
    assert_eq!(
        problems(&text),
        [
            "10:18: name `u` is already used by systemd service `u` (first defined at /specs/t.yaml:3:18); Services and Timers share one namespace, as each becomes the systemd unit `u.service`"
        ]
    );
    let text = format!("{}---\n{}", timer_doc("enabled: false"), timer_doc("enabled: false"));
    assert_eq!(problems(&text), ["10:18: duplicate Timer name `t` (first defined at /specs/t.yaml:3:18)"]);
}

#[test]
fn dependencies_stay_within_a_runtime_and_hooks_name_timers() {
    let docker_db = "---\napiVersion: tend/v1\nkind: Service\nmetadata: {name: db}\nspec: {image: postgres:16}\n";
    let hook_timer = format!("---\n{}", timer_doc("enabled: false").replace("name: t", "name: migrate"));
    let got = problems(&format!("{}{docker_db}", unit("dependsOn: [{name: db}]")));
    assert_eq!(
        got,
        [
            "7:22: systemd service `u` cannot depend on docker service `db`: a unit cannot wait for a container in this version; a systemd service may depend on systemd services only"
        ]
    );
    let got = problems(&format!("{}---\n{}", web("dependsOn: [{name: u}]"), unit("")));
    assert_eq!(
        got,
        [
            "6:22: docker service `web` cannot depend on systemd service `u`: a container cannot wait for a unit in this version; a docker service may depend on docker services only"
        ]
    );
    let got = problems(&format!("{}{hook_timer}", unit("dependsOn: [{name: migrate}]")));
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("`dependsOn` names Timer `migrate`, not a service; to run its job before this service starts, use `hooks: {beforeStart: migrate}`"), "{got:?}");
    // Hooks: on both runtimes, naming a Timer.
    load(&format!("{}{hook_timer}", unit("hooks: {beforeStart: migrate}")));
    load(&format!("{}{hook_timer}", web("hooks: {beforeStart: migrate}")));
    assert_eq!(
        problems(&format!("{}{hook_timer}", web("hooks: {beforeStart: migrat}"))),
        ["6:24: `hooks.beforeStart` names unknown Timer `migrat`, did you mean `migrate`?"]
    );
    assert_eq!(
        problems(&format!("{}{docker_db}", web("hooks: {beforeStart: db}"))),
        [
            "6:24: `hooks.beforeStart` names docker service `db`; it must name a Timer, whose job runs before a new version starts"
        ]
    );
}

#[test]
fn a_job_takes_the_fields_of_its_runtime() {
    let job = |job: &str| {
        format!("apiVersion: tend/v1\nkind: Timer\nmetadata: {{name: t}}\nspec:\n  enabled: false\n  job: {job}\n")
    };
    load(&job("{runtime: docker, image: busybox:1, command: [\"true\"], env: {A_B: x}, user: \"1:1\", networks: [n]}"));
    load(&job("{runtime: host, exec: [/bin/true], user: nobody, group: nogroup, workingDir: /tmp, env: {A: b}}"));
    for (spec, expected) in [
        (
            "{runtime: docker, image: x, exec: [/bin/true]}",
            "6:36: field `exec` applies to runtime host only; a docker job runs `command` in its image",
        ),
        ("{runtime: host, image: x, exec: [/bin/true]}", "6:24: field `image` applies to runtime docker only"),
        ("{runtime: docker}", "6:8: missing field `image` (a docker job needs an image)"),
        ("{runtime: host}", "6:8: missing field `exec` (a host job needs the program to run"),
        ("{runtime: host, exec: [cat]}", "6:31: the program `cat` is not an absolute path"),
        ("{exec: [/bin/true]}", "6:8: missing field `runtime`"),
        ("{runtime: vm, exec: [/bin/true]}", "6:18: unknown value `vm`, expected one of `docker`, `host`"),
    ] {
        let got = problems(&job(spec));
        assert_eq!(got.len(), 1, "{spec}: {got:?}");
        assert!(got[0].starts_with(expected), "{spec}: {got:?}");
    }
}

#[test]
fn an_update_window_is_read_and_is_not_part_of_the_hash() {
    let window = "updateWindow: {schedule: \"Sun 02:00\", duration: 2h}";
    let (plain, windowed) = (load(&web("")), load(&web(window)));
    let w = service(&windowed, "web").spec.update_window.as_ref().expect("a window");
    assert_eq!((w.schedule.as_str(), w.duration), ("Sun 02:00", Duration::from_secs(7200)));
    assert_eq!(w.to_string(), "Sun 02:00 for 2h");
    assert_eq!(service(&plain, "web").hash, service(&windowed, "web").hash);
    assert_eq!(service(&plain, "web").field_hashes, service(&windowed, "web").field_hashes);
    let other = load(&web("updateWindow: {schedule: \"Sat 03:00\", duration: 1h}"));
    assert_eq!(service(&windowed, "web").hash, service(&other, "web").hash);
    // A systemd service takes one too, and its unit hash does not see it either.
    let (u, uw) = (load(&unit("")), load(&unit(window)));
    assert!(service(&uw, "u").spec.update_window.is_some());
    assert_eq!(service(&u, "u").hash, service(&uw, "u").hash);
}

#[test]
fn a_bad_update_window_is_reported_where_it_goes_wrong() {
    for (window, expected) in [
        (
            "{schedule: \"Sun 25:00\", duration: 2h}",
            "6:33: invalid update window schedule: column 5: hour 25 is out of range, expected 0..23",
        ),
        (
            "{schedule: Sunday 02:00 2h, duration: 2h}",
            "6:41: invalid update window schedule: column 14: expected `UTC`",
        ),
        ("{schedule: \"Sun 02:00\", duration: 0s}", "6:51: update window `duration` must be more than 0s"),
        ("{schedule: \"Sun 02:00\"}", "6:17: missing field `duration`"),
        ("{duration: 2h}", "6:17: missing field `schedule`"),
        ("{schedule: \"Sun 02:00\", duration: 2h, zone: UTC}", "6:55: unknown field `zone`"),
        ("{schedule: \"Sun 02:00\", duration: two hours}", "6:51: invalid duration `two hours`"),
    ] {
        let got = problems(&web(&format!("updateWindow: {window}")));
        assert_eq!(got.len(), 1, "{window}: {got:?}");
        assert!(got[0].starts_with(expected), "{window}: {got:?}");
    }
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_file_is_read_past() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "web.yaml", &format!("\u{feff}{}", web("")));
    let with_bom = load_dir(dir.path());
    assert_eq!(service(&with_bom, "web").hash, service(&load(&web("")), "web").hash);
    // Columns on the first line are counted as an editor shows them (without the mark).
    let text = format!("\u{feff}{}", web("")).replace("tend/v1", "tend/v2");
    assert_eq!(problems(&text), ["1:13: unsupported apiVersion `tend/v2`: expected `tend/v1`"]);
}

mod files;
mod limits;

/// A Timer and a systemd service with most of their fields set. Their hashes are pinned:
/// unit files written by earlier versions carry them, and a field added to the language
/// must leave them alone for specs that do not use it.
const PINNED_UNITS: &str = r#"apiVersion: tend/v1
kind: Timer
metadata: {name: nightly}
spec:
  schedule: "*-*-* 01:00:00"
  persistent: true
  randomizedDelay: 5m
  timezone: Europe/Berlin
  concurrency: replace
  timeout: 1h
  job: {runtime: host, exec: [/usr/local/bin/dump, --all], user: backup, env: {A: "1"}}
---
apiVersion: tend/v1
kind: Service
metadata: {name: daemon}
spec:
  runtime: systemd
  exec: [/usr/bin/daemon, --foreground]
  user: www-data
  env: {B: two}
  stopTimeout: 30s
"#;

#[test]
fn a_timers_and_a_systemd_services_hashes_are_pinned() {
    let desired = load(PINNED_UNITS);
    assert_eq!(timer(&desired, "nightly").hash, "915f2062bd7399f7c1405571a2c4490cccbd0bc40d597a2279da033c55a5d280");
    assert_eq!(service(&desired, "daemon").hash, "c0e7f9201a6fcf2464a51b5cfa1eaab55aeedbc3c9468688f65e5ef0ba50091b");
    let minimal = load(&timer_doc("schedule: daily"));
    assert_eq!(timer(&minimal, "t").hash, "11ab41bf1e9eeefb5c594ba5d4083c3707ca0f7cf5a0ae788927b071d8636e50");
}

// ---------------------------------------------------------------------------------------------
// The cluster: Timers that run on the leader, placed services

#[test]
fn run_on_defaults_to_node_and_enters_a_timers_hash_only_as_leader() {
    let base = load(&timer_doc("schedule: daily"));
    let base = timer(&base, "t");
    assert_eq!(base.spec.run_on, RunOn::Node);
    let node = load(&timer_doc("schedule: daily\nrunOn: node"));
    assert_eq!(timer(&node, "t").hash, base.hash, "writing the default changes nothing");
    assert_eq!(timer(&node, "t").field_hashes, base.field_hashes);
    let leader = load(&timer_doc("schedule: daily\nrunOn: leader"));
    let leader = timer(&leader, "t");
    assert_eq!(leader.spec.run_on, RunOn::Leader);
    assert_ne!(leader.hash, base.hash, "a leader-only Timer's units change");
    let changed: Vec<&String> = leader.field_hashes.keys().filter(|k| !base.field_hashes.contains_key(*k)).collect();
    assert_eq!(changed, ["runOn"], "the change is named");
    for (name, h) in &base.field_hashes {
        assert_eq!(&leader.field_hashes[name], h, "{name}");
    }
    // The pinned Timer keeps its hash with `runOn: node` written.
    let pinned = PINNED_UNITS.replace("  concurrency: replace\n", "  concurrency: replace\n  runOn: node\n");
    assert_eq!(
        timer(&load(&pinned), "nightly").hash,
        "915f2062bd7399f7c1405571a2c4490cccbd0bc40d597a2279da033c55a5d280"
    );
}

#[test]
fn a_hook_names_a_timer_that_runs_on_the_node() {
    let hook_timer = |run_on: &str| {
        format!("---\n{}", timer_doc(&format!("enabled: false\nrunOn: {run_on}")).replace("name: t", "name: migrate"))
    };
    load(&format!("{}{}", web("hooks: {beforeStart: migrate}"), hook_timer("node")));
    assert_eq!(
        problems(&format!("{}{}", web("hooks: {beforeStart: migrate}"), hook_timer("leader"))),
        [
            "6:24: `hooks.beforeStart` names Timer `migrate`, which runs on the cluster's leader only (`runOn: leader`); a hook runs on the node that starts the service, so its Timer needs `runOn: node`"
        ]
    );
}

#[test]
fn a_placement_reads_with_its_defaults() {
    let desired = load(&web("replicas: 3\nplacement: {role: judicator}"));
    let p = service(&desired, "web").spec.placement.clone().expect("placement");
    assert_eq!(p.role, "judicator");
    assert!(p.spread, "spread by default");
    assert_eq!((p.max_unavailable, p.budget(3)), (None, 1), "a minority of 3");
    assert_eq!(p.on_lost_lease, OnLostLease::Keep);
    assert_eq!(p.lost_lease_grace, Duration::from_secs(30));
    let desired = load(&web(
        "replicas: 5\nplacement: {role: judicator, spread: false, maxUnavailable: 2, onLostLease: stop, lostLeaseGrace: 0s}",
    ));
    let p = service(&desired, "web").spec.placement.clone().expect("placement");
    assert!(!p.spread);
    assert_eq!((p.max_unavailable, p.budget(5)), (Some(2), 2));
    assert_eq!((p.on_lost_lease, p.lost_lease_grace), (OnLostLease::Stop, Duration::from_secs(0)));
    assert_eq!(service(&load(&web("")), "web").spec.placement, None);
}

#[test]
fn a_placement_leaves_the_hash_alone() {
    let base = load(&web("replicas: 3"));
    for extra in [
        "replicas: 3\nplacement: {role: judicator}",
        "replicas: 3\nplacement: {role: mongo, spread: false, maxUnavailable: 2, onLostLease: stop, lostLeaseGrace: 1m}",
    ] {
        let placed = load(&web(extra));
        assert_eq!(service(&placed, "web").hash, service(&base, "web").hash, "{extra}");
        assert_eq!(service(&placed, "web").field_hashes, service(&base, "web").field_hashes, "{extra}");
    }
    let pinned = PINNED_DOCKER.replace("  replicas: 1\n", "  replicas: 1\n  placement: {role: judicator}\n");
    assert_eq!(
        service(&load(&pinned), "pinned").hash,
        "b823ce11f8dc6d767f637ff26d5e14b993af404e872be561fdf212554cb25094"
    );
}

#[test]
fn spread_instances_may_each_publish_the_ports_on_their_own_node() {
    load(&web("replicas: 3\nports: [\"2379:2379\"]\nplacement: {role: judicator}"));
    assert_eq!(
        problems(&web("replicas: 3\nports: [\"2379:2379\"]\nplacement: {role: judicator, spread: false}")),
        ["6:13: 3 replicas cannot all publish the same host ports; remove `ports` or use 1 replica"]
    );
}

#[test]
fn every_problem_of_a_placement_is_reported_at_its_field() {
    assert_eq!(
        problems(&format!(
            "{}---\n{}",
            web("placement: {role: Judicator, maxUnavailable: 0, lostLeaseGrace: 11m}"),
            web("placement: {role: db, maxUnavailable: 1001, onLostLease: stop, lostLeaseGrace: 11m}")
                .replace("name: web", "name: db")
        )),
        [
            "6:21: `placement.role` `Judicator` is not a DNS label (lowercase letters, digits and `-`, not starting or ending with `-`), as the roles in `cluster.roles` of the agents' configuration are",
            "6:48: `placement.maxUnavailable` must be at least 1, or no member could ever be maintained; leave it out for a minority of `replicas`",
            "6:51: `placement.lostLeaseGrace` applies only with `onLostLease: stop`; with `keep` the instances of a member cut off from etcd go on running",
            "6:67: `placement.lostLeaseGrace` is 11m; at most 10m (a slot of a dead node stays down this long (plus its stopTimeout) before it is placed on another node)",
            "13:41: `placement.maxUnavailable` is 1001; at most 1000 (a host runs tens to hundreds of containers; planning a service costs memory per instance)",
            "13:82: `placement.lostLeaseGrace` is 11m; at most 10m (a slot of a dead node stays down this long (plus its stopTimeout) before it is placed on another node)",
        ]
    );
    let long = "r".repeat(64);
    assert_eq!(
        problems(&web(&format!("placement: {{role: {long}}}"))),
        [
            "6:21: `placement.role` is 64 bytes long; at most 63 (a role is a DNS label, as every name tend writes into etcd keys is)"
        ]
    );
    assert_eq!(
        problems(&unit("placement: {role: judicator}")),
        [
            "7:3: field `placement` applies to runtime docker only; a systemd service runs on the node whose specs hold it"
        ]
    );
}
