//! The systemd adapter: unit files in a unit directory, and systemd's manager over the
//! system D-Bus (zbus). systemd's types and D-Bus values stop here; the rest of tend sees
//! [`UnitFile`], [`UnitState`] and [`JobResult`] only.
//!
//! Unit files are written atomically (temporary file in the same directory, fsync, rename,
//! fsync of the directory) and never through a symlink. Jobs (start, stop, restart) are
//! waited for: the call returns when systemd removes the job, with its result. Signals only
//! wake the caller ([`UnitEngine::watch`]); state always comes from [`UnitEngine::states`].
//!
//! Unit file contents are never logged: tend writes secrets to `EnvironmentFile=` files, but
//! a unit may still name them.
//!
//! Every D-Bus call goes through [`SystemdEngine::call`], bounded by the call timeout
//! ([`Timeouts`]; `Reload` by [`Timeouts::reload`]), and a job's wait, once the call that
//! queues it returned, by the job timeout: a hung bus or manager is an error naming the
//! call ([`SystemdError::Timeout`]), never a hang.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedObjectPath, OwnedVariant};

pub use crate::engine::unit::{
    ActiveState, BusErrorKind, Interest, JobResult, SystemdError, UnitEngine, UnitFile, UnitState, Wakeups,
};
use crate::engine::{self, Timeouts};

/// Where tend keeps the unit files it owns.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// The system bus, as systemd's own tools find it.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// Keys in a unit's `[Unit]` section that start with this are tend's marks (`X-Tend-Hash`).
pub const MARK_PREFIX: &str = "X-Tend-";

/// How long a start, stop or restart job may take, once queued (queueing is a call, bounded
/// by the call timeout), before [`SystemdError::JobTimeout`], unless set with
/// [`SystemdEngine::with_job_timeout`]. Longer than systemd's own default start and stop timeouts (90 s), so that systemd
/// normally gives the verdict.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// The engine's name in messages.
const SYSTEMD_NAME: &str = "systemd";

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const TIMER_IFACE: &str = "org.freedesktop.systemd1.Timer";
const UNIT_PATH_NAMESPACE: &str = "/org/freedesktop/systemd1/unit";

/// Awaits one D-Bus call, bounded by `bound`; its error, or its silence, named `op object`.
async fn bounded<T>(
    op: &'static str,
    object: &str,
    bound: Duration,
    call: impl Future<Output = zbus::Result<T>>,
) -> Result<T, SystemdError> {
    match engine::bounded(SYSTEMD_NAME, bound, call).await {
        Ok(answer) => answer.map_err(bus(op, object)),
        Err(source) => Err(SystemdError::Timeout { op, object: object.to_string(), source }),
    }
}

fn bus(op: &'static str, object: impl Into<String>) -> impl FnOnce(zbus::Error) -> SystemdError {
    let object = object.into();
    move |source| SystemdError::Bus { op, object, kind: bus_error_kind(&source), source: Box::new(source) }
}

/// What kind of refusal a D-Bus error is.
fn bus_error_kind(e: &zbus::Error) -> BusErrorKind {
    match e {
        zbus::Error::MethodError(name, ..)
            if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
                || name.as_str() == "org.freedesktop.systemd1.LoadFailed" =>
        {
            BusErrorKind::NotFound
        }
        zbus::Error::MethodError(..) | zbus::Error::FDO(..) => BusErrorKind::Refused,
        _ => BusErrorKind::Unavailable,
    }
}

fn file(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> SystemdError {
    let path = path.into();
    move |source| SystemdError::File { op, path, source }
}

/// `sd_booted()`: whether systemd is PID 1 here (`/run/systemd/system` is a directory). The
/// error names what PID 1 is instead.
pub fn booted() -> Result<(), SystemdError> {
    if std::fs::symlink_metadata("/run/systemd/system").map(|m| m.is_dir()).unwrap_or(false) {
        return Ok(());
    }
    let pid1 = match std::fs::read_to_string("/proc/1/comm") {
        Ok(comm) => comm.trim().to_string(),
        Err(e) => format!("unknown: cannot read /proc/1/comm: {e}"),
    };
    Err(SystemdError::NotBooted { pid1 })
}

/// Checks that `name` is a unit file name tend may write: `<dns-label>.service` or
/// `<dns-label>.timer`.
pub fn check_unit_name(name: &str) -> Result<(), SystemdError> {
    let bad = |why: &str| Err(SystemdError::BadName { name: name.to_string(), why: why.to_string() });
    let Some((stem, suffix)) = name.rsplit_once('.') else {
        return bad("it has no .service or .timer suffix");
    };
    if suffix != "service" && suffix != "timer" {
        return bad("only .service and .timer units are written");
    }
    if !tend_specs::load::is_dns_label(stem) {
        return bad("the part before the suffix must be a DNS label (a-z, 0-9 and -, at most 63)");
    }
    Ok(())
}

/// The `X-Tend-*` keys of the `[Unit]` section of a unit file, with continuation lines joined.
pub fn parse_marks(content: &str) -> BTreeMap<String, String> {
    let mut marks = BTreeMap::new();
    let mut in_unit = false;
    let mut lines = content.lines();
    while let Some(line) = lines.next() {
        let mut line = line.trim().to_string();
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some(next) => {
                    line.push(' ');
                    line.push_str(next.trim());
                }
                None => break,
            }
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_unit = line == "[Unit]";
            continue;
        }
        if !in_unit {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim();
            if key.starts_with(MARK_PREFIX) {
                marks.insert(key.to_string(), value.trim().to_string());
            }
        }
    }
    marks
}

fn is_unit_file_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".service") || name.ends_with(".timer"))
}

/// Refuses a path that exists but is not a regular file. `Ok(false)` when it does not exist.
fn regular_or_missing(op: &'static str, path: &Path) -> Result<bool, SystemdError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
            Err(SystemdError::NotRegular { op, path: path.to_path_buf(), why: format!("it is a symlink to {target}") })
        }
        Ok(meta) if !meta.is_file() => {
            Err(SystemdError::NotRegular { op, path: path.to_path_buf(), why: "it is not a regular file".into() })
        }
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(file("inspecting unit file", path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SystemdError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(file("syncing unit directory", dir))
}

/// The blocking part of [`UnitEngine::list_unit_files`].
pub fn list_unit_files_in(dir: &Path) -> Result<Vec<UnitFile>, SystemdError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file("listing unit directory", dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(file("listing unit directory", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if !is_unit_file_name(&name) {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(file("inspecting unit file", &path))?;
        if kind.is_symlink() {
            let link = std::fs::read_link(&path).map_err(file("reading symlink", &path))?;
            files.push(UnitFile { name, content: String::new(), marks: BTreeMap::new(), link: Some(link) });
        } else if kind.is_file() {
            let bytes = std::fs::read(&path).map_err(file("reading unit file", &path))?;
            let content = String::from_utf8_lossy(&bytes).into_owned();
            files.push(UnitFile { name, marks: parse_marks(&content), content, link: None });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The blocking part of [`UnitEngine::write_unit_file`].
pub fn write_unit_file_in(dir: &Path, name: &str, content: &str) -> Result<(), SystemdError> {
    check_unit_name(name)?;
    let target = dir.join(name);
    regular_or_missing("write", &target)?;
    // One fixed temporary name per unit: a crash between create and rename leaves it behind,
    // and the next write of the same unit removes it. The leading dot and the suffix keep
    // systemd (and list_unit_files) from taking it for a unit.
    let tmp = dir.join(format!(".{name}.tend-tmp"));
    if regular_or_missing("write", &tmp)? {
        std::fs::remove_file(&tmp).map_err(file("removing stale temporary file", &tmp))?;
    }
    let written = (|| {
        // create_new: O_EXCL, so this never opens through a symlink put there meanwhile.
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        f.write_all(content.as_bytes())?;
        // The mode given to open is reduced by the umask; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(file("writing unit file", &target)(e));
    }
    // rename replaces a directory entry and never follows a symlink at the target.
    if let Err(e) = std::fs::rename(&tmp, &target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(file("writing unit file", &target)(e));
    }
    sync_dir(dir)
}

/// The blocking part of [`UnitEngine::remove_unit_file`].
pub fn remove_unit_file_in(dir: &Path, name: &str) -> Result<(), SystemdError> {
    check_unit_name(name)?;
    let target = dir.join(name);
    if !regular_or_missing("remove", &target)? {
        return Ok(());
    }
    match std::fs::remove_file(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(file("removing unit file", &target)(e)),
    }
    sync_dir(dir)
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    path: PathBuf,
    f: impl FnOnce() -> Result<T, SystemdError> + Send + 'static,
) -> Result<T, SystemdError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(SystemdError::File { op: what, path, source: io::Error::other(e) }),
    }
}

/// One row of `ListUnitsByNames`: name, description, load state, active state, sub state,
/// followed unit, unit object path, job id, job type, job object path.
type ListedUnit = (String, String, String, String, String, String, OwnedObjectPath, u32, String, OwnedObjectPath);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(&self, files: &[&str], runtime: bool) -> zbus::Result<Vec<(String, String, String)>>;
    fn list_units_by_names(&self, names: &[&str]) -> zbus::Result<Vec<ListedUnit>>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

/// Which job method to call.
#[derive(Debug, Clone, Copy)]
enum JobKind {
    Start,
    Stop,
    Restart,
}

impl JobKind {
    fn op(self) -> &'static str {
        match self {
            Self::Start => "starting unit",
            Self::Stop => "stopping unit",
            Self::Restart => "restarting unit",
        }
    }
}

/// A connection to systemd's manager on the system bus.
#[derive(Debug, Clone)]
pub struct SystemdEngine {
    conn: Connection,
    manager: ManagerProxy<'static>,
    job_timeout: Duration,
    timeouts: Timeouts,
}

impl SystemdEngine {
    /// Connects to the system bus, after checking that systemd is PID 1
    /// ([`SystemdError::NotBooted`] says what PID 1 is otherwise), and subscribes to the
    /// manager's signals (systemd sends most of them only to subscribers). Every later call
    /// is bounded by `timeouts`. Needs a Tokio runtime.
    pub async fn connect(timeouts: Timeouts) -> Result<Self, SystemdError> {
        booted()?;
        let object = format!("the system bus ({SYSTEM_BUS_SOCKET})");
        // zbus's builders keep a bad argument's error until build(). Its own method timeout
        // only backs up tend's bounds (the longest is Reload's).
        let conn = zbus::connection::Builder::address(format!("unix:path={SYSTEM_BUS_SOCKET}").as_str())
            .method_timeout(timeouts.reload().saturating_add(Duration::from_secs(1)))
            .build();
        let conn = bounded("connecting to", &object, timeouts.call, conn).await?;
        // No property cache: it would subscribe to the manager's PropertiesChanged for a
        // property read once.
        let manager = ManagerProxy::builder(&conn).cache_properties(CacheProperties::No).build();
        let manager = bounded("connecting to", "the systemd manager", timeouts.call, manager).await?;
        let subscribe = manager.subscribe();
        bounded("subscribing to", "the systemd manager's signals", timeouts.call, subscribe).await?;
        Ok(Self { conn, manager, job_timeout: DEFAULT_JOB_TIMEOUT, timeouts })
    }

    /// One D-Bus call bounded by the call timeout; its error, or its silence, named
    /// `op object`.
    async fn call<T>(
        &self,
        op: &'static str,
        object: &str,
        call: impl Future<Output = zbus::Result<T>>,
    ) -> Result<T, SystemdError> {
        bounded(op, object, self.timeouts.call, call).await
    }

    /// Sets how long [`UnitEngine::start`], `stop` and `restart` wait for their job once
    /// it is queued.
    pub fn with_job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// systemd's version (`252.39-1~deb12u2`).
    pub async fn version(&self) -> Result<String, SystemdError> {
        self.call("reading the version of", "the systemd manager", self.manager.version()).await
    }

    async fn job_removed_stream(&self) -> zbus::Result<MessageStream> {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD)
            .interface(MANAGER_IFACE)
            .member("JobRemoved")
            .build()?;
        MessageStream::for_match_rule(rule, &self.conn, None).await
    }

    /// Queues a job and waits until systemd removes it. The signal stream is set up before
    /// the job is queued, so even a job that finishes at once is seen. Queueing is a call
    /// (bounded by the call timeout); the wait from then on is bounded by the job timeout.
    async fn run_job(&self, kind: JobKind, unit: &str) -> Result<JobResult, SystemdError> {
        let op = kind.op();
        let mut removed = self.call(op, unit, self.job_removed_stream()).await?;
        let result = match self.queue_job(kind, unit, &mut removed).await? {
            (_, Some(result)) => result,
            (job, None) => {
                let wait = async {
                    loop {
                        let (path, result) = job_removed(op, unit, removed.next().await)?;
                        if path == job {
                            return Ok(result);
                        }
                    }
                };
                let timeout = self.job_timeout;
                tokio::time::timeout(timeout, wait).await.map_err(|_| SystemdError::JobTimeout {
                    op,
                    unit: unit.to_string(),
                    timeout,
                })??
            }
        };
        if result.is_success() { Ok(result) } else { Err(SystemdError::Job { op, unit: unit.to_string(), result }) }
    }

    /// Queues `kind` for `unit`: the job's path, and its result when systemd removed it
    /// already. `removed` is read while the call is under way, because zbus stops reading
    /// the socket (the call's reply included) when a signal stream's queue is full.
    async fn queue_job(
        &self,
        kind: JobKind,
        unit: &str,
        removed: &mut MessageStream,
    ) -> Result<(OwnedObjectPath, Option<JobResult>), SystemdError> {
        let op = kind.op();
        let queued = self.call(op, unit, async {
            match kind {
                JobKind::Start => self.manager.start_unit(unit, "replace").await,
                JobKind::Stop => self.manager.stop_unit(unit, "replace").await,
                JobKind::Restart => self.manager.restart_unit(unit, "replace").await,
            }
        });
        let mut queued = std::pin::pin!(queued);
        // Jobs removed while the call was under way: ours may be among them.
        let mut early = Vec::new();
        let job = loop {
            tokio::select! {
                job = &mut queued => break job?,
                msg = removed.next() => early.push(job_removed(op, unit, msg)?),
            }
        };
        let done = early.into_iter().find(|(path, _)| *path == job).map(|(_, result)| result);
        Ok((job, done))
    }

    async fn get_all(&self, path: &OwnedObjectPath, iface: &str) -> zbus::Result<HashMap<String, OwnedVariant>> {
        let reply: Message =
            self.conn.call_method(Some(SYSTEMD), path.as_str(), Some(PROPERTIES_IFACE), "GetAll", &(iface,)).await?;
        reply.body().deserialize()
    }

    async fn get(&self, path: &OwnedObjectPath, iface: &str, property: &str) -> zbus::Result<OwnedVariant> {
        let reply: Message = self
            .conn
            .call_method(Some(SYSTEMD), path.as_str(), Some(PROPERTIES_IFACE), "Get", &(iface, property))
            .await?;
        reply.body().deserialize()
    }

    /// One unit's state from its `ListUnitsByNames` row plus two property reads.
    async fn state_of(&self, row: ListedUnit) -> Result<UnitState, SystemdError> {
        let (name, _description, load_state, active_state, sub_state, _following, path, ..) = row;
        let mut state = UnitState {
            active_state: ActiveState::parse(&active_state),
            load_state,
            sub_state,
            result: String::new(),
            exec_main_status: None,
            main_pid: None,
            unit_file_state: String::new(),
            n_restarts: None,
            name,
        };
        // A unit without a file has no properties worth a round trip (and reading them
        // would only load it again).
        if state.load_state == "not-found" {
            return Ok(state);
        }
        let op = "reading the state of unit";
        let type_iface = if state.name.ends_with(".service") {
            Some(SERVICE_IFACE)
        } else if state.name.ends_with(".timer") {
            Some(TIMER_IFACE)
        } else {
            None
        };
        let file_state = self.call(op, &state.name, self.get(&path, UNIT_IFACE, "UnitFileState"));
        let typed = self.call(op, &state.name, async {
            match type_iface {
                Some(iface) => self.get_all(&path, iface).await.map(Some),
                None => Ok(None),
            }
        });
        let (file_state, typed) = futures::join!(file_state, typed);
        state.unit_file_state = String::try_from(file_state?).unwrap_or_default();
        if let Some(props) = typed? {
            let string = |key: &str| props.get(key).and_then(|v| <&str>::try_from(v).ok()).map(str::to_string);
            let int = |key: &str| props.get(key).and_then(|v| i32::try_from(v).ok());
            let uint = |key: &str| props.get(key).and_then(|v| u32::try_from(v).ok());
            state.result = string("Result").unwrap_or_default();
            // ExecMainCode is a CLD_* code: 0 until the main process has exited once.
            if int("ExecMainCode").unwrap_or(0) != 0 {
                state.exec_main_status = int("ExecMainStatus");
            }
            state.main_pid = uint("MainPID").filter(|pid| *pid != 0);
            if type_iface == Some(SERVICE_IFACE) {
                state.n_restarts = uint("NRestarts");
            }
        }
        Ok(state)
    }
}

/// The job path and result of one `JobRemoved` signal from the stream.
fn job_removed(
    op: &'static str,
    unit: &str,
    msg: Option<zbus::Result<Message>>,
) -> Result<(OwnedObjectPath, JobResult), SystemdError> {
    let closed = || {
        let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the bus connection closed while waiting for the job");
        zbus::Error::InputOutput(e.into())
    };
    let msg = msg.ok_or_else(closed).and_then(|m| m).map_err(bus(op, unit))?;
    let (_id, path, _unit, result): (u32, OwnedObjectPath, String, String) =
        msg.body().deserialize().map_err(bus(op, unit))?;
    Ok((path, JobResult::parse(&result)))
}

fn signal_rule(interface: &'static str, path_namespace: Option<&'static str>) -> zbus::Result<MatchRule<'static>> {
    let builder = MatchRule::builder().msg_type(MessageType::Signal).sender(SYSTEMD).interface(interface);
    let builder = match path_namespace {
        Some(ns) => builder.path_namespace(ns),
        None => builder,
    };
    builder.build()
}

impl UnitEngine for SystemdEngine {
    async fn available(&self) -> Result<(), SystemdError> {
        booted()?;
        self.version().await.map(|_| ())
    }

    async fn list_unit_files(&self, dir: &Path) -> Result<Vec<UnitFile>, SystemdError> {
        let dir = dir.to_path_buf();
        blocking("listing unit directory", dir.clone(), move || list_unit_files_in(&dir)).await
    }

    async fn write_unit_file(&self, dir: &Path, name: &str, content: &str) -> Result<(), SystemdError> {
        let (dir, name, content) = (dir.to_path_buf(), name.to_string(), content.to_string());
        let path = dir.join(&name);
        blocking("writing unit file", path, move || write_unit_file_in(&dir, &name, &content)).await
    }

    async fn remove_unit_file(&self, dir: &Path, name: &str) -> Result<(), SystemdError> {
        let (dir, name) = (dir.to_path_buf(), name.to_string());
        let path = dir.join(&name);
        blocking("removing unit file", path, move || remove_unit_file_in(&dir, &name)).await
    }

    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        bounded("reloading", "the systemd manager", self.timeouts.reload(), self.manager.reload()).await
    }

    async fn enable(&self, names: &[String]) -> Result<(), SystemdError> {
        let files: Vec<&str> = names.iter().map(String::as_str).collect();
        let enable = self.manager.enable_unit_files(&files, false, false);
        self.call("enabling units", &names.join(" "), enable).await?;
        Ok(())
    }

    async fn disable(&self, names: &[String]) -> Result<(), SystemdError> {
        let files: Vec<&str> = names.iter().map(String::as_str).collect();
        self.call("disabling units", &names.join(" "), self.manager.disable_unit_files(&files, false)).await?;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<JobResult, SystemdError> {
        self.run_job(JobKind::Start, name).await
    }

    async fn stop(&self, name: &str) -> Result<JobResult, SystemdError> {
        self.run_job(JobKind::Stop, name).await
    }

    async fn restart(&self, name: &str) -> Result<JobResult, SystemdError> {
        self.run_job(JobKind::Restart, name).await
    }

    async fn states(&self, names: &[String]) -> Result<Vec<UnitState>, SystemdError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let query: Vec<&str> = names.iter().map(String::as_str).collect();
        let rows = self.call("listing units", &names.join(" "), self.manager.list_units_by_names(&query)).await?;
        // The property reads go out together on the one connection: one round trip's wait.
        futures::future::try_join_all(rows.into_iter().map(|row| self.state_of(row))).await
    }

    async fn watch(&self, interest: Interest) -> Result<Wakeups, SystemdError> {
        let op = "watching";
        let object = "the systemd manager's signals";
        let rules = [
            signal_rule(MANAGER_IFACE, None).map_err(bus(op, object))?,
            signal_rule(PROPERTIES_IFACE, Some(UNIT_PATH_NAMESPACE)).map_err(bus(op, object))?,
        ];
        let mut streams = Vec::new();
        for rule in rules {
            streams.push(self.call(op, object, MessageStream::for_match_rule(rule, &self.conn, None)).await?);
        }
        let mut signals = futures::stream::select_all(streams);
        // zbus blocks the whole connection (method replies included) when a signal stream's
        // queue is full, so the signals are drained here as they come and folded into at
        // most one pending wake-up, whether or not the caller is reading.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    msg = signals.next() => match msg {
                        Some(Ok(msg)) if is_wake(&msg, &interest) => {
                            let _ = tx.try_send(());
                        }
                        Some(_) => {}
                        None => break,
                    },
                }
            }
        });
        Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }
}

/// Whether a signal means "observe again": a unit of interest changed its active or sub
/// state or finished a job, unit files changed, or systemd reloaded. `UnitNew`,
/// `UnitRemoved` and other units' changes do not.
fn is_wake(msg: &Message, interest: &Interest) -> bool {
    let header = msg.header();
    match header.member().map(|m| m.as_str()) {
        Some("PropertiesChanged") => {
            let Some(unit) = header.path().and_then(|p| unit_name_of_path(p.as_str())) else { return false };
            if !interest(&unit) {
                return false;
            }
            type Changed = (String, HashMap<String, OwnedVariant>, Vec<String>);
            let Ok((iface, changed, invalidated)) = msg.body().deserialize::<Changed>() else { return false };
            let state = |k: &str| k == "ActiveState" || k == "SubState";
            iface == UNIT_IFACE && (changed.keys().any(|k| state(k)) || invalidated.iter().any(|k| state(k)))
        }
        Some("JobRemoved") => msg
            .body()
            .deserialize::<(u32, OwnedObjectPath, String, String)>()
            .is_ok_and(|(_, _, unit, _)| interest(&unit)),
        Some("UnitFilesChanged" | "Reloading") => true,
        _ => false,
    }
}

/// The unit name of a unit object path: `/org/freedesktop/systemd1/unit/web_2eservice` is
/// `web.service` (systemd escapes every byte other than `[A-Za-z0-9]` as `_XX`).
pub fn unit_name_of_path(path: &str) -> Option<String> {
    let label = path.strip_prefix("/org/freedesktop/systemd1/unit/")?;
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("a temporary directory")
    }

    #[test]
    fn unit_object_paths_unescape_to_unit_names() {
        assert_eq!(unit_name_of_path("/org/freedesktop/systemd1/unit/web_2eservice").as_deref(), Some("web.service"));
        assert_eq!(
            unit_name_of_path("/org/freedesktop/systemd1/unit/ims_2dnginx_2etimer").as_deref(),
            Some("ims-nginx.timer")
        );
        assert_eq!(unit_name_of_path("/org/freedesktop/systemd1/unit/_30x_2eservice").as_deref(), Some("0x.service"));
        assert_eq!(unit_name_of_path("/org/freedesktop/systemd1/job/12"), None);
        assert_eq!(unit_name_of_path("/org/freedesktop/systemd1/unit/bad_zz"), None);
    }

    #[test]
    fn unit_names_must_be_a_dns_label_with_a_service_or_timer_suffix() {
        for good in ["ims-nginx.service", "nightly-dump.timer", "a.service", "0x.timer"] {
            assert!(check_unit_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "x",
            ".service",
            "x.socket",
            "X.service",
            "a_b.service",
            "-a.service",
            "a-.service",
            "../x.service",
            "a/b.service",
            "x@.service",
            "x@1.service",
            "x.service.d",
            "x.service ",
            &format!("{}.service", "a".repeat(64)),
        ] {
            let e = check_unit_name(bad).expect_err(bad);
            assert_eq!(e.kind(), "bad_name", "{bad}");
        }
    }

    #[test]
    fn marks_come_from_the_unit_section_only() {
        let content = "# X-Tend-Hash=comment\n[Unit]\nDescription=web\nX-Tend-Hash = abc\nX-Tend-Name=web\n\
                       X-Other=1\n[Service]\nX-Tend-Hash=not-this\nExecStart=/bin/true\n[Unit]\nX-Tend-Kind=service\n";
        let marks = parse_marks(content);
        assert_eq!(
            marks,
            BTreeMap::from([
                ("X-Tend-Hash".to_string(), "abc".to_string()),
                ("X-Tend-Kind".to_string(), "service".to_string()),
                ("X-Tend-Name".to_string(), "web".to_string()),
            ])
        );
        assert!(parse_marks("[Service]\nExecStart=/bin/true\n").is_empty());
    }

    #[test]
    fn a_continued_line_is_one_value() {
        let marks = parse_marks("[Unit]\nX-Tend-Fields=a:1 \\\n  b:2\nX-Tend-Hash=h\n");
        assert_eq!(marks.get("X-Tend-Fields").map(String::as_str), Some("a:1  b:2"));
        assert_eq!(marks.get("X-Tend-Hash").map(String::as_str), Some("h"));
    }

    #[test]
    fn writes_with_mode_0644_and_leaves_no_temporary_file() {
        let d = dir();
        std::fs::write(d.path().join(".web.service.tend-tmp"), "stale from a crash").expect("stale file");
        write_unit_file_in(d.path(), "web.service", "[Unit]\nX-Tend-Hash=1\n").expect("write");
        write_unit_file_in(d.path(), "web.service", "[Unit]\nX-Tend-Hash=2\n").expect("overwrite");
        let path = d.path().join("web.service");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "[Unit]\nX-Tend-Hash=2\n");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<String> = std::fs::read_dir(d.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["web.service"]);
    }

    #[test]
    fn readers_see_the_old_or_the_new_file_never_a_mix() {
        let d = dir();
        let old = format!("[Unit]\nX-Tend-Hash=old\n{}", "# padding\n".repeat(20_000));
        let new = format!("[Unit]\nX-Tend-Hash=new\n{}", "# other padding\n".repeat(30_000));
        write_unit_file_in(d.path(), "big.service", &old).expect("write");
        let path = d.path().join("big.service");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop, old, new) = (path.clone(), stop.clone(), old.clone(), new.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let seen = std::fs::read_to_string(&path).expect("the file is always there");
                    assert!(seen == old || seen == new, "a reader saw a partial file ({} bytes)", seen.len());
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..50 {
            write_unit_file_in(d.path(), "big.service", if i % 2 == 0 { &new } else { &old }).expect("write");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0);
    }

    #[test]
    fn never_writes_or_removes_through_a_symlink() {
        let d = dir();
        let elsewhere = d.path().join("vendor.service");
        std::fs::write(&elsewhere, "vendor").expect("vendor file");
        std::os::unix::fs::symlink(&elsewhere, d.path().join("linked.service")).expect("symlink");
        std::os::unix::fs::symlink("/dev/null", d.path().join("masked.service")).expect("symlink");
        for name in ["linked.service", "masked.service"] {
            let e = write_unit_file_in(d.path(), name, "[Unit]\n").expect_err(name);
            assert_eq!(e.kind(), "not_regular");
            assert!(e.to_string().contains("symlink"), "{e}");
            assert_eq!(remove_unit_file_in(d.path(), name).expect_err(name).kind(), "not_regular");
        }
        assert_eq!(std::fs::read_to_string(&elsewhere).expect("vendor"), "vendor");
        std::fs::create_dir(d.path().join("dir.service")).expect("dir");
        assert_eq!(write_unit_file_in(d.path(), "dir.service", "").expect_err("dir").kind(), "not_regular");
    }

    #[test]
    fn lists_units_with_marks_foreign_files_and_symlinks() {
        let d = dir();
        write_unit_file_in(d.path(), "web.service", "[Unit]\nX-Tend-Hash=h1\n[Service]\nExecStart=/bin/true\n")
            .expect("write");
        std::fs::write(d.path().join("hand.timer"), "[Timer]\nOnCalendar=daily\n").expect("hand-written");
        std::fs::write(d.path().join("notes.txt"), "not a unit").expect("other file");
        std::fs::create_dir(d.path().join("multi-user.target.wants")).expect("wants dir");
        std::os::unix::fs::symlink("/dev/null", d.path().join("masked.service")).expect("symlink");
        let files = list_unit_files_in(d.path()).expect("list");
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["hand.timer", "masked.service", "web.service"]);
        assert!(files[0].marks.is_empty() && files[0].link.is_none());
        assert_eq!(files[1].link.as_deref(), Some(Path::new("/dev/null")));
        assert_eq!(files[2].marks.get("X-Tend-Hash").map(String::as_str), Some("h1"));
        assert!(list_unit_files_in(&d.path().join("missing")).expect("missing dir").is_empty());
    }

    #[test]
    fn removing_a_missing_file_is_done_already() {
        let d = dir();
        remove_unit_file_in(d.path(), "gone.service").expect("nothing to remove");
        write_unit_file_in(d.path(), "gone.service", "[Unit]\n").expect("write");
        remove_unit_file_in(d.path(), "gone.service").expect("remove");
        assert!(!d.path().join("gone.service").exists());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_the_bus_never_answers_is_a_timeout_naming_call_unit_and_wait() {
        let never = std::future::pending::<zbus::Result<()>>();
        let e = bounded("listing units", "web.service", Duration::from_secs(30), never).await.expect_err("no answer");
        assert_eq!(e.kind(), "timeout");
        assert_eq!(crate::support::chain(&e), "listing units web.service: systemd did not answer within 30s");
        // An answer, even a refusal, is not a timeout.
        let refused = async { Err::<(), _>(zbus::Error::Failure("refused".into())) };
        let e = bounded("listing units", "web.service", Duration::from_secs(30), refused).await.expect_err("refused");
        assert_ne!(e.kind(), "timeout");
    }

    #[test]
    fn errors_name_the_operation_and_the_unit() {
        let e = SystemdError::Job { op: "starting unit", unit: "ims-nginx.service".into(), result: JobResult::Failed };
        assert_eq!(e.to_string(), "starting unit ims-nginx.service: the job finished with result 'failed'");
        assert_eq!(e.kind(), "job_failed");
        let e = SystemdError::NotBooted { pid1: "bash".into() };
        assert_eq!(e.to_string(), "systemd is not running as PID 1 on this host (PID 1 is bash)");
    }
}
