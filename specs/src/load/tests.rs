use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;
use crate::quantity::Duration;
use crate::service::{Condition, PullPolicy, RestartPolicy, RolloutOrder};

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
