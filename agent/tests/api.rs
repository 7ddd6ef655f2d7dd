//! The local API's HTTP layer over real Unix sockets and TCP: routing, errors, the socket's
//! permissions (checked with an unprivileged process), stale and foreign files at the
//! socket's path, shutdown, and metrics. The `Control` here answers fixed JSON: the
//! agent's own answers are tested with the agent.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tend::daemon::api::{self, ApiError, Client, Control, Failure, Reply};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Records the calls that change something, and answers fixed JSON.
#[derive(Default)]
struct Fixed {
    calls: Mutex<Vec<String>>,
    /// How long `plan` takes, for the shutdown test.
    plan_delay: Duration,
    /// Whether the agent is in a cluster (`/v1/cluster/*` answer, or refuse).
    in_cluster: bool,
}

impl Fixed {
    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }
}

impl Control for Fixed {
    fn status(&self) -> Reply {
        Box::pin(async { Ok(json!({"services": [{"name": "web", "state": "running"}]})) })
    }

    fn plan(&self) -> Reply {
        let delay = self.plan_delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(json!({"actions": [{"action": "create", "object": "web-1"}]}))
        })
    }

    fn trigger(&self) -> Reply {
        self.record("trigger".into());
        Box::pin(async { Ok(json!({"queued": true})) })
    }

    fn release(&self, name: String) -> Reply {
        self.record(format!("release {name}"));
        Box::pin(async move {
            if name == "missing" {
                Err(Failure::new(404, "no held object named missing"))
            } else {
                Ok(json!({"released": name}))
            }
        })
    }

    fn jobs(&self, name: Option<String>, limit: Option<usize>) -> Reply {
        Box::pin(async move { Ok(json!({"name": name, "limit": limit})) })
    }

    fn cluster_members(&self) -> Reply {
        let in_cluster = self.in_cluster;
        Box::pin(async move {
            if in_cluster {
                Ok(json!([{"node": "vm-a", "state": "live"}]))
            } else {
                Err(Failure::new(409, "this agent is not in a cluster: its configuration has no cluster block"))
            }
        })
    }

    fn cluster_status(&self) -> Reply {
        Box::pin(async { Ok(json!({"leader": "vm-a", "isLeader": true})) })
    }

    fn metrics(&self) -> String {
        let m = tend::daemon::metrics::Metrics::new();
        m.pass(Duration::from_millis(120), true);
        m.encode()
    }
}

/// A temporary directory that any user may traverse (a tempdir is 0700), so that a
/// refusal comes from the socket's own mode.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    dir
}

struct Running {
    path: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<()>,
    control: Arc<Fixed>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops")
            .expect("the server task");
    }
}

async fn start(path: &Path, group: Option<&str>, control: Fixed) -> Running {
    let server = api::bind_unix(path, group).await.expect("bind");
    let control = Arc::new(control);
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.serve(control.clone(), stop.clone()));
    Running { path: path.to_path_buf(), stop, task, control }
}

async fn client(path: &Path) -> Client {
    Client::connect(path).await.expect("connect").expect("an agent is listening")
}

fn agent_status(err: ApiError) -> (u16, String) {
    match err {
        ApiError::Agent { status, message } => (status, message),
        other => panic!("expected an error answer of the agent, got {other:?}"),
    }
}

fn gid_of_group(name: &str) -> u32 {
    let groups = std::fs::read_to_string("/etc/group").expect("/etc/group");
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().expect("gid"))
        })
        .unwrap_or_else(|| panic!("group {name} is not in /etc/group"))
}

/// curl on the socket, as `nobody` with `groups` as supplementary groups (none: cleared).
async fn curl_as_nobody(socket: &Path, groups: &[u32]) -> std::process::Output {
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.args(["/usr/bin/curl", "-sS", "--max-time", "10", "--unix-socket"]).arg(socket).arg("http://tend/v1/status");
    cmd.output().await.expect("run setpriv curl")
}

/// curl (quiet, errors shown, 10 s at most) with `args`: its standard output.
async fn curl(args: &[&str]) -> String {
    let out =
        Command::new("/usr/bin/curl").args(["-sS", "--max-time", "10"]).args(args).output().await.expect("run curl");
    String::from_utf8(out.stdout).expect("curl's output is UTF-8")
}

#[tokio::test]
async fn every_endpoint_round_trips_through_the_client() {
    let dir = open_dir();
    let server = start(&dir.path().join("tend.sock"), None, Fixed::default()).await;
    let mut c = client(&server.path).await;

    assert_eq!(c.get("/v1/status").await.expect("status"), json!({"services": [{"name": "web", "state": "running"}]}));
    assert_eq!(c.get("/v1/plan").await.expect("plan")["actions"][0]["object"], "web-1");
    assert_eq!(c.post("/v1/pass").await.expect("pass"), json!({"queued": true}));
    assert_eq!(c.post("/v1/release/ims-postgres-1").await.expect("release"), json!({"released": "ims-postgres-1"}));
    assert_eq!(c.get("/v1/jobs").await.expect("jobs"), json!({"name": null, "limit": null}));
    assert_eq!(
        c.get("/v1/jobs?name=nightly-dump&limit=3").await.expect("jobs of one"),
        json!({"name": "nightly-dump", "limit": 3})
    );
    let metrics = c.get_text("/metrics").await.expect("metrics");
    assert!(metrics.contains(r#"tend_passes_total{result="ok"} 1"#), "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");

    assert_eq!(*server.control.calls.lock().expect("calls"), ["trigger", "release ims-postgres-1"]);
    server.stop().await;
}

#[tokio::test]
async fn the_cluster_endpoints_answer_and_an_agent_outside_a_cluster_refuses_with_409() {
    let dir = open_dir();
    let server = start(&dir.path().join("tend.sock"), None, Fixed { in_cluster: true, ..Fixed::default() }).await;
    let mut c = client(&server.path).await;
    assert_eq!(c.get("/v1/cluster/members").await.expect("members")[0]["node"], "vm-a");
    assert_eq!(c.get("/v1/cluster/status").await.expect("status")["leader"], "vm-a");
    assert_eq!(agent_status(c.post("/v1/cluster/status").await.expect_err("POST")).0, 405);
    server.stop().await;

    let server = start(&dir.path().join("alone.sock"), None, Fixed::default()).await;
    let mut c = client(&server.path).await;
    let (status, message) = agent_status(c.get("/v1/cluster/members").await.expect_err("not in a cluster"));
    assert_eq!(
        (status, message.as_str()),
        (409, "this agent is not in a cluster: its configuration has no cluster block")
    );
    server.stop().await;
}

#[tokio::test]
async fn mistakes_get_404_405_and_400_with_a_json_error() {
    let dir = open_dir();
    let server = start(&dir.path().join("tend.sock"), None, Fixed::default()).await;
    let mut c = client(&server.path).await;

    let (status, message) = agent_status(c.get("/v1/nothing").await.expect_err("unknown path"));
    assert_eq!((status, message.as_str()), (404, "no such endpoint: /v1/nothing"));
    let (status, message) = agent_status(c.post("/v1/status").await.expect_err("POST status"));
    assert_eq!(status, 405);
    assert!(message.contains("takes GET"), "{message}");
    assert_eq!(agent_status(c.get("/v1/pass").await.expect_err("GET pass")).0, 405);
    assert_eq!(agent_status(c.get("/v1/release/web-1").await.expect_err("GET release")).0, 405);
    for bad in ["/v1/release/Web_1", "/v1/release/", "/v1/release/a%2Fb", "/v1/release/a/b"] {
        let (status, message) = agent_status(c.post(bad).await.expect_err(bad));
        assert_eq!(status, 400, "{bad}: {message}");
    }
    for bad in ["/v1/jobs?limit=ten", "/v1/jobs?name=A", "/v1/jobs?since=1"] {
        assert_eq!(agent_status(c.get(bad).await.expect_err(bad)).0, 400, "{bad}");
    }
    // A handler's failure carries its status and message through.
    let (status, message) = agent_status(c.post("/v1/release/missing").await.expect_err("release missing"));
    assert_eq!((status, message.as_str()), (404, "no held object named missing"));
    // The connection is still usable after all of these.
    c.get("/v1/status").await.expect("status after errors");
    server.stop().await;
}

#[tokio::test]
async fn answers_carry_their_content_types_and_405_says_what_is_allowed() {
    let dir = open_dir();
    let server = start(&dir.path().join("tend.sock"), None, Fixed::default()).await;
    let socket = server.path.display().to_string();
    let head = |method: &'static str, path: &'static str| {
        let socket = socket.clone();
        async move {
            let url = format!("http://tend{path}");
            curl(&["-o", "/dev/null", "-D", "-", "-X", method, "--unix-socket", &socket, &url]).await.to_lowercase()
        }
    };
    let status = head("GET", "/v1/status").await;
    assert!(status.starts_with("http/1.1 200"), "{status}");
    assert!(status.contains("content-type: application/json"), "{status}");
    let metrics = head("GET", "/metrics").await;
    assert!(metrics.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"), "{metrics}");
    let wrong = head("DELETE", "/v1/pass").await;
    assert!(wrong.starts_with("http/1.1 405"), "{wrong}");
    assert!(wrong.contains("allow: post"), "{wrong}");
    server.stop().await;
}

#[tokio::test]
async fn a_request_body_over_64_kib_is_refused() {
    let dir = open_dir();
    let server = start(&dir.path().join("tend.sock"), None, Fixed::default()).await;
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 65 * 1024]).expect("write body");
    let data = format!("@{}", body.display());
    let socket = server.path.display().to_string();
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "--data-binary",
        &data,
        "--unix-socket",
        &socket,
        "http://tend/v1/pass",
    ])
    .await;
    assert_eq!(code, "413");
    assert!(server.control.calls.lock().expect("calls").is_empty(), "the pass was not queued");
    server.stop().await;
}

#[tokio::test]
async fn the_socket_is_0660_with_the_group_asked_for_and_its_directory_is_made() {
    let dir = open_dir();
    let path = dir.path().join("run/tend/tend.sock");
    let server = start(&path, Some("root"), Fixed::default()).await;
    let meta = std::fs::metadata(&path).expect("socket");
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let parent = std::fs::metadata(dir.path().join("run/tend")).expect("socket dir");
    assert_eq!(parent.mode() & 0o777, 0o755);
    server.stop().await;

    let adm = gid_of_group("adm");
    for group in ["adm".to_string(), adm.to_string()] {
        let server = start(&path, Some(&group), Fixed::default()).await;
        let meta = std::fs::metadata(&path).expect("socket");
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, adm), "group {group}");
        server.stop().await;
    }

    match api::bind_unix(&path, Some("no-such-group-here")).await {
        Err(ApiError::UnknownGroup(g)) => assert_eq!(g, "no-such-group-here"),
        other => panic!("expected an unknown group, got {other:?}"),
    }
    assert!(!path.exists(), "nothing is bound for an unknown group");
}

#[tokio::test]
async fn only_root_and_the_socket_group_may_connect() {
    let dir = open_dir();
    let server = start(&dir.path().join("tend.sock"), Some("adm"), Fixed::default()).await;

    let refused = curl_as_nobody(&server.path, &[]).await;
    assert!(!refused.status.success(), "nobody connected: {refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("(7)"), "curl could not connect: {stderr}");

    let member = curl_as_nobody(&server.path, &[gid_of_group("adm")]).await;
    assert!(member.status.success(), "a member of adm was refused: {member:?}");
    let body: Value = serde_json::from_slice(&member.stdout).expect("JSON");
    assert_eq!(body["services"][0]["name"], "web");

    let mut c = client(&server.path).await;
    c.get("/v1/status").await.expect("root connects");
    server.stop().await;
}

/// Run by `the_client_explains_a_refused_connection` as uid 65534, in a copy of this
/// test binary; passes trivially when run any other way.
#[tokio::test]
#[ignore = "run as an unprivileged user by the_client_explains_a_refused_connection"]
async fn client_as_nobody() {
    let Ok(socket) = std::env::var("TEND_API_TEST_SOCKET") else { return };
    match Client::connect(Path::new(&socket)).await {
        Err(e @ ApiError::PermissionDenied { .. }) => {
            assert_eq!(e.to_string(), format!("permission denied on {socket}: are you root or in group adm?"));
        }
        Err(other) => panic!("expected permission denied, got {other:?}"),
        Ok(c) => panic!("expected permission denied, got a connection: {}", c.is_some()),
    }
}

#[tokio::test]
async fn the_client_explains_a_refused_connection() {
    let dir = open_dir();
    let server = start(&dir.path().join("tend.sock"), Some("adm"), Fixed::default()).await;
    // A copy of this test binary where uid 65534 can run it, wherever the build is.
    let exe = dir.path().join("api-test");
    std::fs::copy(std::env::current_exe().expect("test binary"), &exe).expect("copy test binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod test binary");
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", "client_as_nobody", "--ignored", "--test-threads=1"])
        .env("TEND_API_TEST_SOCKET", &server.path)
        .output()
        .await
        .expect("run the test binary as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    server.stop().await;
}

#[tokio::test]
async fn no_agent_is_none_for_a_missing_socket_and_for_a_stale_one() {
    let dir = open_dir();
    let missing = dir.path().join("missing.sock");
    assert!(Client::connect(&missing).await.expect("missing socket").is_none());

    // A socket file whose listener is gone (an agent killed with -9).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    assert!(Client::connect(&stale).await.expect("stale socket").is_none());

    // And the agent starting next replaces it.
    let server = start(&stale, None, Fixed::default()).await;
    client(&stale).await.get("/v1/status").await.expect("status");
    server.stop().await;
}

#[tokio::test]
async fn binding_refuses_a_regular_file_and_leaves_it_alone() {
    let dir = open_dir();
    let path = dir.path().join("tend.sock");
    std::fs::write(&path, "precious").expect("write");
    match api::bind_unix(&path, None).await {
        Err(e @ ApiError::NotASocket { .. }) => assert!(e.to_string().contains("is not a socket"), "{e}"),
        other => panic!("expected not a socket, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&path).expect("still there"), "precious");

    std::fs::remove_file(&path).expect("rm");
    std::fs::create_dir(&path).expect("mkdir");
    assert!(matches!(api::bind_unix(&path, None).await, Err(ApiError::NotASocket { .. })));
    assert!(path.is_dir());
}

#[tokio::test]
async fn binding_refuses_while_another_agent_listens() {
    let dir = open_dir();
    let path = dir.path().join("tend.sock");
    let first = start(&path, None, Fixed::default()).await;
    match api::bind_unix(&path, None).await {
        Err(e @ ApiError::AlreadyServing { .. }) => {
            assert!(e.to_string().contains("another agent is already listening"), "{e}");
        }
        other => panic!("expected already serving, got {other:?}"),
    }
    // The first agent is undisturbed.
    client(&path).await.get("/v1/status").await.expect("first agent still answers");
    first.stop().await;
}

#[tokio::test]
async fn stopping_finishes_the_request_in_flight_and_removes_the_socket() {
    let dir = open_dir();
    let path = dir.path().join("tend.sock");
    let server = start(&path, None, Fixed { plan_delay: Duration::from_millis(500), ..Fixed::default() }).await;
    let mut c = client(&path).await;
    let in_flight = tokio::spawn(async move { c.get("/v1/plan").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "stopped in {:?}", started.elapsed());
    let plan = in_flight.await.expect("request task").expect("the request in flight completes");
    assert_eq!(plan["actions"][0]["action"], "create");
    assert!(!path.exists(), "the socket is removed");
    assert!(Client::connect(&path).await.expect("connect").is_none());
}

#[tokio::test]
async fn metrics_are_served_on_tcp_and_nothing_else_is() {
    let server = api::bind_metrics_tcp("127.0.0.1:0".parse().expect("addr")).await.expect("bind tcp");
    let addr = server.local_addr().expect("local addr");
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.serve(Arc::new(Fixed::default()), stop.clone()));

    let get =
        |path: &'static str| async move { curl(&["-w", "\n%{http_code}", &format!("http://{addr}{path}")]).await };
    let metrics = get("/metrics").await;
    assert!(metrics.contains("# TYPE tend_passes counter"), "{metrics}");
    assert!(metrics.contains(r#"tend_passes_total{result="ok"} 1"#), "{metrics}");
    assert!(metrics.ends_with("\n200"), "{metrics}");
    for path in ["/v1/status", "/v1/plan", "/v1/jobs", "/"] {
        let answer = get(path).await;
        assert!(answer.ends_with("\n404"), "{path}: {answer}");
    }
    let pass = curl(&["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", &format!("http://{addr}/v1/pass")]).await;
    assert_eq!(pass, "404");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").expect("task");
    assert!(std::net::TcpStream::connect(addr).is_err(), "the port is closed");
}

#[tokio::test]
async fn serve_metrics_tcp_reports_a_bind_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = api::serve_metrics_tcp(addr, Arc::new(Fixed::default()), CancellationToken::new())
        .await
        .expect_err("the port is taken");
    assert!(matches!(err, ApiError::BindTcp { .. }), "{err:?}");
}
