//! The agent's local API: HTTP/1.1 over a Unix socket (default /run/tend/tend.sock, mode
//! 0660, owner root, group configurable), and optionally Prometheus metrics on a TCP
//! address.
//!
//! The socket is how `tend status`, `tend plan`, `tend release` and friends reach a running
//! agent; when there is none, [`Client::connect`] says so and the CLI works stand-alone.
//! Access control is the socket file's mode: root and the members of its group. The TCP
//! address serves `GET /metrics` and nothing else, so that a scraper never reaches the
//! commands. Endpoints and shapes: docs/commands/agent-api.md.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tend/tend.sock";

/// The largest request body the server reads; no endpoint takes one.
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// The largest response body the client reads (a plan of a big host is well under this).
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// How long in-flight requests may take to finish once the server is told to stop.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// An error of the local API, on the server or the client side.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket's directory could not be created.
    #[error("creating the socket directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// What is at the socket's path could not be inspected.
    #[error("inspecting {path}")]
    Inspect {
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something other than a socket is at the socket's path; it is never deleted.
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotASocket {
        /// The socket's path.
        path: PathBuf,
    },
    /// Another process (another agent) answers on the socket.
    #[error("another agent is already listening on {path}")]
    AlreadyServing {
        /// The socket's path.
        path: PathBuf,
    },
    /// A stale socket file (nothing listening) could not be removed.
    #[error("removing the stale socket {path}")]
    RemoveStale {
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding the Unix socket failed.
    #[error("binding {path}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding the metrics TCP address failed.
    #[error("binding the metrics address {addr}")]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting the socket's mode failed.
    #[error("setting the mode of {path} to 0660")]
    Chmod {
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting the socket's group failed.
    #[error("setting the group of {path} to {group}")]
    Chown {
        /// The socket's path.
        path: PathBuf,
        /// The group, as given.
        group: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// /etc/group could not be read.
    #[error("reading /etc/group")]
    ReadGroups(#[source] io::Error),
    /// The socket's group is neither in /etc/group nor a number.
    #[error("unknown group `{0}`: it is not in /etc/group")]
    UnknownGroup(String),
    /// The client may not connect to the socket.
    #[error("permission denied on {path}: are you root or in group {group}?")]
    PermissionDenied {
        /// The socket's path.
        path: PathBuf,
        /// The socket's group (a name when /etc/group has it).
        group: String,
    },
    /// Connecting to the socket failed for another reason than "no agent".
    #[error("connecting to {path}")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange with the agent failed.
    #[error("{method} {target} on the agent's socket")]
    Http {
        /// The request's method.
        method: &'static str,
        /// The request's path (and query).
        target: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent's answer is not the JSON (or text) expected.
    #[error("the agent's answer to {target} is not valid {expected}")]
    BadResponse {
        /// The request's path (and query).
        target: String,
        /// "JSON" or "UTF-8 text".
        expected: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent answered with an error status.
    #[error("the agent answered {status}: {message}")]
    Agent {
        /// The HTTP status.
        status: u16,
        /// The agent's message (its `{"error": ...}`, or the body as text).
        message: String,
    },
}

impl ApiError {
    /// A fixed name of the error's kind, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::CreateDir { .. } => "create-dir",
            ApiError::Inspect { .. } => "inspect",
            ApiError::NotASocket { .. } => "not-a-socket",
            ApiError::AlreadyServing { .. } => "already-serving",
            ApiError::RemoveStale { .. } => "remove-stale",
            ApiError::Bind { .. } => "bind",
            ApiError::BindTcp { .. } => "bind-tcp",
            ApiError::Chmod { .. } => "chmod",
            ApiError::Chown { .. } => "chown",
            ApiError::ReadGroups(_) => "read-groups",
            ApiError::UnknownGroup(_) => "unknown-group",
            ApiError::PermissionDenied { .. } => "permission-denied",
            ApiError::Connect { .. } => "connect",
            ApiError::Http { .. } => "http",
            ApiError::BadResponse { .. } => "bad-response",
            ApiError::Agent { .. } => "agent",
        }
    }
}

/// A handler's error: HTTP status + message (returned to the client as `{"error": msg}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The HTTP status (4xx for the caller's mistakes, 5xx for the agent's).
    pub status: u16,
    /// What went wrong, one line for an operator.
    pub message: String,
}

impl Failure {
    /// A failure with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

/// What a handler of [`Control`] answers: a JSON body, or a [`Failure`].
pub type Reply = futures::future::BoxFuture<'static, Result<Value, Failure>>;

/// What the API serves; the agent implements it.
pub trait Control: Send + Sync + 'static {
    /// `GET /v1/status`: the body of `tend status -o json`.
    fn status(&self) -> Reply;
    /// `GET /v1/plan`: the body of `tend plan -o json`.
    fn plan(&self) -> Reply;
    /// `POST /v1/pass`: queue a pass now.
    fn trigger(&self) -> Reply;
    /// `POST /v1/release/{name}`: release a held service or container.
    fn release(&self, name: String) -> Reply;
    /// `GET /v1/jobs?name=X&limit=N`: job history, of one job or all, newest first.
    fn jobs(&self, name: Option<String>, limit: Option<usize>) -> Reply;
    /// `GET /v1/cluster/members`: the body of `tend cluster members -o json`; a 409 when the
    /// agent is not in a cluster, a 503 when etcd does not answer.
    fn cluster_members(&self) -> Reply;
    /// `GET /v1/cluster/status`: the body of `tend cluster status -o json`; a 409 when the
    /// agent is not in a cluster.
    fn cluster_status(&self) -> Reply;
    /// `GET /metrics`: the metrics in the format of [`crate::daemon::metrics::Metrics::encode`].
    fn metrics(&self) -> String;
}

/// The Unix socket, bound and with its permissions set, ready to serve.
#[derive(Debug)]
pub struct UnixServer {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file this server created, so that it removes only
    /// its own file when it stops.
    file: (u64, u64),
}

/// Binds the Unix socket: creates the parent dir (0755) if missing, removes a stale socket
/// file at `path` only if it is a socket and nothing answers on it (refuses when another
/// agent is listening, and when the path exists and is not a socket: a regular file is
/// never deleted), binds, then sets mode 0660 and the group `group` (a name from
/// /etc/group, or a number; `None` keeps the process's gid). The owner is the process's
/// user: root, for the agent.
pub async fn bind_unix(path: &Path, group: Option<&str>) -> Result<UnixServer, ApiError> {
    // Resolve the group first, so that a typo fails before anything is touched.
    let gid = match group {
        Some(g) => Some(resolve_group(g)?),
        None => None,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| ApiError::CreateDir { path: dir.to_path_buf(), source })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path).await {
            Ok(_) => return Err(ApiError::AlreadyServing { path: path.to_path_buf() }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale socket");
                std::fs::remove_file(path)
                    .map_err(|source| ApiError::RemoveStale { path: path.to_path_buf(), source })?;
            }
            Err(source) => return Err(ApiError::Inspect { path: path.to_path_buf(), source }),
        },
        Ok(_) => return Err(ApiError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(ApiError::Inspect { path: path.to_path_buf(), source }),
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind { path: path.to_path_buf(), source })?;
    let secured = secure(path, gid, group);
    let file = match secured {
        Ok(file) => file,
        Err(e) => {
            // Leave no socket with the wrong permissions behind.
            drop(listener);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };
    tracing::info!(path = %path.display(), group = group.unwrap_or("-"), "API socket bound");
    Ok(UnixServer { listener, path: path.to_path_buf(), file })
}

/// Sets the socket's mode and group; returns its (device, inode).
fn secure(path: &Path, gid: Option<u32>, group: Option<&str>) -> Result<(u64, u64), ApiError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|source| ApiError::Chmod { path: path.to_path_buf(), source })?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| ApiError::Chown {
            path: path.to_path_buf(),
            group: group.unwrap_or_default().to_string(),
            source,
        })?;
    }
    let meta =
        std::fs::symlink_metadata(path).map_err(|source| ApiError::Inspect { path: path.to_path_buf(), source })?;
    Ok((meta.dev(), meta.ino()))
}

impl UnixServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `stop` is cancelled; then stops accepting, lets in-flight requests
    /// finish (at most 5 s), and removes the socket file.
    pub async fn serve(self, control: Arc<dyn Control>, stop: CancellationToken) {
        let span = tracing::info_span!("api", socket = %self.path.display());
        serve_connections(&self.listener, control, Endpoints::All, stop).instrument(span).await;
        drop(self.listener);
        // Remove the file only if it is still the one bound here.
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.file => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "removing the API socket");
                }
            }
            _ => {}
        }
    }
}

/// The metrics TCP address, bound, ready to serve.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

/// Binds the metrics TCP address (port 0 picks a free port: see
/// [`MetricsServer::local_addr`]).
pub async fn bind_metrics_tcp(addr: SocketAddr) -> Result<MetricsServer, ApiError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ApiError::BindTcp { addr, source })?;
    Ok(MetricsServer { listener })
}

impl MetricsServer {
    /// The address bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` only, until `stop` is cancelled (then as [`UnixServer::serve`]).
    pub async fn serve(self, control: Arc<dyn Control>, stop: CancellationToken) {
        let addr = self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let span = tracing::info_span!("metrics", %addr);
        serve_connections(&self.listener, control, Endpoints::MetricsOnly, stop).instrument(span).await;
    }
}

/// Serves `GET /metrics` only, on a TCP address (for Telegraf/Prometheus scrapers), until
/// `stop`. [`bind_metrics_tcp`] then [`MetricsServer::serve`], for when the caller does
/// not need the address bound.
pub async fn serve_metrics_tcp(
    addr: SocketAddr,
    control: Arc<dyn Control>,
    stop: CancellationToken,
) -> Result<(), ApiError> {
    let server = bind_metrics_tcp(addr).await?;
    tracing::info!(%addr, "metrics address bound");
    server.serve(control, stop).await;
    Ok(())
}

/// A listener of either kind, for the one accept loop.
trait Listener: Sync {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for UnixListener {
    type Io = UnixStream;
    async fn accept_io(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> io::Result<tokio::net::TcpStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoints {
    /// Everything: the Unix socket, guarded by its mode.
    All,
    /// `GET /metrics`: the TCP address, open to whoever reaches it.
    MetricsOnly,
}

/// Accepts and serves connections until `stop`, then drains them.
async fn serve_connections<L: Listener>(
    listener: &L,
    control: Arc<dyn Control>,
    endpoints: Endpoints,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let io = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept_io() => match accepted {
                Ok(io) => io,
                Err(e) => {
                    // Out of descriptors, most likely: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(io, control.clone(), endpoints, stop.clone()).in_current_span());
    }
    let drained = tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = connections.len(), "requests still running after {DRAIN:?}: dropping them");
        connections.abort_all();
    }
}

/// Serves one connection; on `stop`, finishes the request in progress and closes.
async fn serve_connection<I>(io: I, control: Arc<dyn Control>, endpoints: Endpoints, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(req, control.clone(), endpoints));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended");
    }
}

/// The endpoints, once the path is known.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Status,
    Plan,
    Pass,
    Release(String),
    Jobs,
    ClusterMembers,
    ClusterStatus,
    Metrics,
}

impl Route {
    /// The route of `path`, if any, on these endpoints.
    fn of(path: &str, endpoints: Endpoints) -> Option<Route> {
        let route = match path {
            "/metrics" => Route::Metrics,
            "/v1/status" => Route::Status,
            "/v1/plan" => Route::Plan,
            "/v1/pass" => Route::Pass,
            "/v1/jobs" => Route::Jobs,
            "/v1/cluster/members" => Route::ClusterMembers,
            "/v1/cluster/status" => Route::ClusterStatus,
            _ => Route::Release(path.strip_prefix("/v1/release/")?.to_string()),
        };
        (endpoints == Endpoints::All || route == Route::Metrics).then_some(route)
    }

    fn method(&self) -> Method {
        match self {
            Route::Pass | Route::Release(_) => Method::POST,
            Route::Status
            | Route::Plan
            | Route::Jobs
            | Route::ClusterMembers
            | Route::ClusterStatus
            | Route::Metrics => Method::GET,
        }
    }

    /// The `Allow` header of a 405 answer.
    fn allow(&self) -> &'static str {
        if self.method() == Method::POST { "POST" } else { "GET, HEAD" }
    }
}

type Body = Full<Bytes>;

/// One request: a span with its method and path, the route, the handler, the answer.
async fn handle(
    req: Request<Incoming>,
    control: Arc<dyn Control>,
    endpoints: Endpoints,
) -> Result<Response<Body>, Infallible> {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    Ok(async move {
        let response = respond(req, control, endpoints).await;
        let status = response.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), "request served");
        }
        response
    }
    .instrument(span)
    .await)
}

async fn respond(req: Request<Incoming>, control: Arc<dyn Control>, endpoints: Endpoints) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Some(route) = Route::of(parts.uri.path(), endpoints) else {
        return error(StatusCode::NOT_FOUND, format!("no such endpoint: {}", parts.uri.path()));
    };
    let method = route.method();
    if parts.method != method && !(method == Method::GET && parts.method == Method::HEAD) {
        let mut response =
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{} takes {method}, not {}", parts.uri.path(), parts.method));
        response.headers_mut().insert(ALLOW, hyper::header::HeaderValue::from_static(route.allow()));
        return response;
    }
    // No endpoint takes a body; read (and drop) a small one so the connection stays usable.
    if Limited::new(body, MAX_REQUEST_BODY).collect().await.is_err() {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request bodies are limited to {MAX_REQUEST_BODY} bytes"));
    }
    let reply = match route {
        Route::Metrics => {
            return Response::builder()
                .header(CONTENT_TYPE, crate::daemon::metrics::CONTENT_TYPE)
                .body(Body::from(control.metrics()))
                .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "building the response".into()));
        }
        Route::Status => control.status(),
        Route::Plan => control.plan(),
        Route::Pass => control.trigger(),
        Route::Release(name) => {
            if let Err(e) = check_name(&name) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            control.release(name)
        }
        Route::ClusterMembers => control.cluster_members(),
        Route::ClusterStatus => control.cluster_status(),
        Route::Jobs => match jobs_query(parts.uri.query().unwrap_or("")) {
            Ok((name, limit)) => control.jobs(name, limit),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
    };
    match reply.await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(f) => error(StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), f.message),
    }
}

/// Checks a service, container or job name in a path or query: DNS-label characters only
/// (`[a-z0-9-]`, not starting or ending with `-`), so nothing needs decoding.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else if name.is_empty() {
        Err("a name is required".to_string())
    } else {
        Err(format!("invalid name `{name}`: names are lower-case letters, digits and `-`"))
    }
}

/// The `name` and `limit` of `/v1/jobs?name=X&limit=N`.
fn jobs_query(query: &str) -> Result<(Option<String>, Option<usize>), String> {
    let (mut name, mut limit) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "name" => {
                check_name(value)?;
                name = Some(value.to_string());
            }
            "limit" => {
                limit = Some(value.parse().map_err(|_| format!("invalid limit `{value}`: expected a whole number"))?);
            }
            _ => return Err(format!("unknown query parameter `{key}` (expected name, limit)")),
        }
    }
    Ok((name, limit))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

/// A client of a running agent's socket: one connection, requests one at a time.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl Client {
    /// Connects; `Ok(None)` when there is no agent (no socket file, or nothing listening
    /// on it), so that the CLI falls back to stand-alone; `Err` for anything else, notably
    /// permission denied.
    pub async fn connect(path: &Path) -> Result<Option<Client>, ApiError> {
        let stream = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(ApiError::PermissionDenied { path: path.to_path_buf(), group: group_of(path) });
            }
            Err(source) => return Err(ApiError::Connect { path: path.to_path_buf(), source }),
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
            ApiError::Http { method: "CONNECT", target: path.display().to_string(), source: Box::new(e) }
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API connection ended");
            }
        });
        Ok(Some(Client { path: path.to_path_buf(), sender }))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET path_and_query`, its JSON answer; a non-2xx answer is [`ApiError::Agent`].
    pub async fn get(&mut self, path_and_query: &str) -> Result<Value, ApiError> {
        let body = self.request(Method::GET, path_and_query).await?;
        parse_json(path_and_query, &body)
    }

    /// `POST path` (no body), its JSON answer; a non-2xx answer is [`ApiError::Agent`].
    pub async fn post(&mut self, path: &str) -> Result<Value, ApiError> {
        let body = self.request(Method::POST, path).await?;
        parse_json(path, &body)
    }

    /// `GET path`, its answer as text (for `/metrics`).
    pub async fn get_text(&mut self, path: &str) -> Result<String, ApiError> {
        let body = self.request(Method::GET, path).await?;
        String::from_utf8(body.to_vec()).map_err(|e| ApiError::BadResponse {
            target: path.to_string(),
            expected: "UTF-8 text",
            source: Box::new(e),
        })
    }

    /// Sends one request; the body of a 2xx answer, else [`ApiError::Agent`].
    async fn request(&mut self, method: Method, target: &str) -> Result<Bytes, ApiError> {
        let method_name = if method == Method::POST { "POST" } else { "GET" };
        let http_error = |source: Box<dyn std::error::Error + Send + Sync>| ApiError::Http {
            method: method_name,
            target: target.to_string(),
            source,
        };
        let request = Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, "tend")
            .body(Body::default())
            .map_err(|e| http_error(Box::new(e)))?;
        self.sender.ready().await.map_err(|e| http_error(Box::new(e)))?;
        let response = self.sender.send_request(request).await.map_err(|e| http_error(Box::new(e)))?;
        let status = response.status();
        let body =
            Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await.map_err(http_error)?.to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(ApiError::Agent { status: status.as_u16(), message })
    }
}

fn parse_json(target: &str, body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadResponse {
        target: target.to_string(),
        expected: "JSON",
        source: Box::new(e),
    })
}

/// The gid of `group`: its entry in /etc/group, else the number it is.
fn resolve_group(group: &str) -> Result<u32, ApiError> {
    let groups = match std::fs::read_to_string("/etc/group") {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ApiError::ReadGroups(e)),
    };
    crate::jobs::find_group(&groups, group).ok_or_else(|| ApiError::UnknownGroup(group.to_string()))
}

/// The name of `gid` in group(5) text.
fn group_name_in(groups: &str, gid: u32) -> Option<String> {
    groups.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(gid)).then(|| f[0].to_string())
    })
}

/// The group of the socket at `path`, by name when /etc/group has it, for the message of
/// a refused connection.
fn group_of(path: &Path) -> String {
    let Ok(meta) = std::fs::metadata(path) else {
        return "of the socket".to_string();
    };
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    group_name_in(&groups, meta.gid()).unwrap_or_else(|| meta.gid().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUPS: &str = "root:x:0:\nadm:x:4:syslog\ntend:x:998:alice,bob\nbroken:x:\n";

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(crate::jobs::find_group(GROUPS, "tend"), Some(998));
        assert_eq!(crate::jobs::find_group(GROUPS, "root"), Some(0));
        assert_eq!(crate::jobs::find_group(GROUPS, "1234"), Some(1234), "a number need not be listed");
        assert_eq!(crate::jobs::find_group(GROUPS, "nope"), None);
        assert_eq!(crate::jobs::find_group(GROUPS, "broken"), None);
        assert_eq!(group_name_in(GROUPS, 4).as_deref(), Some("adm"));
        assert_eq!(group_name_in(GROUPS, 5), None);
    }

    #[test]
    fn routes_are_found_by_path_and_the_tcp_address_serves_only_metrics() {
        assert_eq!(Route::of("/v1/status", Endpoints::All), Some(Route::Status));
        assert_eq!(Route::of("/v1/release/web-1", Endpoints::All), Some(Route::Release("web-1".into())));
        assert_eq!(Route::of("/v1/release/", Endpoints::All), Some(Route::Release(String::new())));
        assert_eq!(Route::of("/v1/nope", Endpoints::All), None);
        assert_eq!(Route::of("/metrics", Endpoints::MetricsOnly), Some(Route::Metrics));
        assert_eq!(Route::of("/v1/status", Endpoints::MetricsOnly), None);
        assert_eq!(Route::of("/v1/pass", Endpoints::MetricsOnly), None);
        assert_eq!(Route::of("/v1/cluster/members", Endpoints::All), Some(Route::ClusterMembers));
        assert_eq!(Route::of("/v1/cluster/status", Endpoints::All), Some(Route::ClusterStatus));
        assert_eq!(Route::of("/v1/cluster/status", Endpoints::MetricsOnly), None);
        assert_eq!(Route::ClusterStatus.method(), Method::GET);
    }

    #[test]
    fn names_are_dns_label_characters_only() {
        assert!(check_name("ims-postgres-2").is_ok());
        for bad in ["", "Web", "a_b", "a/b", "-a", "a-", "a%2Fb", "a.b", "ü"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_jobs_query_takes_a_name_and_a_limit() {
        assert_eq!(jobs_query(""), Ok((None, None)));
        assert_eq!(jobs_query("name=nightly-dump&limit=5"), Ok((Some("nightly-dump".into()), Some(5))));
        assert_eq!(jobs_query("limit=0"), Ok((None, Some(0))));
        assert!(jobs_query("limit=ten").is_err());
        assert!(jobs_query("limit=-1").is_err());
        assert!(jobs_query("name=Bad").is_err());
        assert!(jobs_query("names=x").is_err());
    }
}
