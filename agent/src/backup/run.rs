//! Running backups and restores: the orchestration around the archive engine
//! ([`crate::backup`]). A run takes the maintenance locks of the backup and of the services it
//! quiesces (so the agent and operators leave them alone), checks free space before stopping
//! anything, quiesces (journaled), archives, starts the services again whatever happened,
//! writes the manifest, makes the copies and applies retention. A restore shows what it will
//! do, then stops, moves the current data aside (never deletes it), extracts and starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tend_specs::Desired;
use tend_specs::backup::{CopyTo, RunsIn, SourceKind};
use tend_specs::calendar::Zoned;
use tend_specs::desired::Backup;
use tracing::{info, warn};

use crate::backup::archive::{self, ArchiveError, ArchiveWriter, WriteOptions};
use crate::backup::catalog::{self, CatalogError, EntryState, Manifest};
use crate::backup::quiesce::{self, QuiesceError};
use crate::backup::retention;
use crate::engine::ContainerRuns;
use crate::engine::Engines;
use crate::engine::systemd::UnitEngine;
use crate::maintain::locks::{Exclusive, Holder, LockDir, LockError};
use crate::reconcile::model::instance_name;
use crate::support::{chain, now_ms};

/// Errors of backups and restores.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No Backup of that name.
    #[error("no Backup `{0}` in the specs")]
    Unknown(String),
    /// Another run, an operator or the agent holds a target.
    #[error("backup {backup} did not run")]
    Locked {
        /// The backup.
        backup: String,
        /// Who holds what.
        #[source]
        source: Box<LockError>,
    },
    /// The destination has no room: nothing was stopped.
    #[error("{dir} has {free} bytes free, the sources hold {needed}: the backup did not run (nothing was stopped)")]
    NoSpace {
        /// The destination.
        dir: PathBuf,
        /// Free bytes.
        free: u64,
        /// Bytes of the sources.
        needed: u64,
    },
    /// Quiescing failed (services were started again).
    #[error(transparent)]
    Quiesce(#[from] QuiesceError),
    /// Writing or reading an archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A copy on another host could not be listed or pruned.
    #[error(transparent)]
    Remote(#[from] crate::backup::remote::RemoteError),
    /// The destination catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The dump or restore command failed.
    #[error("`{command}` exited with code {code}{}: {what}", if stderr.is_empty() { String::new() } else { format!(" ({stderr})") })]
    Command {
        /// The command.
        command: String,
        /// Its exit code.
        code: i64,
        /// The end of its stderr.
        stderr: String,
        /// What that means.
        what: &'static str,
    },
    /// The engine a step needs is missing, or refused.
    #[error("{0}")]
    Engine(String),
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The archive was made (or the data restored) but starting the services again failed.
    #[error("done, but starting the services again failed")]
    Resume(#[source] QuiesceError),
    /// Nothing to restore from.
    #[error("no complete archive of {0} to restore from")]
    NoArchive(String),
    /// A run or restore cannot go ahead as asked.
    #[error("{0}")]
    Refused(String),
    /// A restore stopped before it stopped, moved or wrote anything.
    #[error("restore of {backup} refused; nothing was changed")]
    Unchanged {
        /// The Backup.
        backup: String,
        /// Why.
        #[source]
        source: Box<BackupError>,
    },
}

/// The last 4 KiB of a command's stderr, for an error message.
fn stderr_tail(err: &[u8]) -> String {
    String::from_utf8_lossy(&err[err.len().saturating_sub(4096)..]).trim().to_string()
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { op, path, source }
}

/// Where a run keeps its journal and locks.
#[derive(Debug, Clone)]
pub struct Context {
    /// The state directory (quiesce journals, run history).
    pub state_dir: PathBuf,
    /// The maintenance lock directory.
    pub locks: LockDir,
    /// The scope (labels of drill containers).
    pub scope: String,
    /// Counts the bytes that went into the archive, for a progress display.
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Pin the new archive, for this reason (`tend backup run --keep`): pinned before
    /// retention runs, so this run's retention cannot take it.
    pub keep: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// The archive written.
    pub archive: PathBuf,
    /// Its manifest.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Entries (paths sources).
    pub files: Option<u64>,
    /// How long the run took (ms).
    pub duration_ms: u64,
    /// The copies made and verified.
    pub copies: Vec<String>,
    /// Archives removed by retention.
    pub pruned: Vec<PathBuf>,
    /// Things worth knowing (files changed while read, special files skipped).
    pub warnings: Vec<String>,
}

/// The lock keys a run holds: the backup's own and those of the services it quiesces.
pub fn lock_keys(desired: &Desired, backup: &Backup) -> Vec<String> {
    let mut keys = vec![format!("{}.backup", backup.name)];
    for s in backup.spec.quiesce.iter().flat_map(|q| q.stop.iter()) {
        keys.extend(crate::maintain::service_keys(desired, s).unwrap_or_default());
    }
    keys
}

fn take_locks(ctx: &Context, desired: &Desired, backup: &Backup, what: &str) -> Result<Exclusive, BackupError> {
    let (user, uid) = crate::maintain::locks::current_user();
    let holder = Holder {
        user: format!("{user} (tend {what} {})", backup.name),
        uid,
        pid: std::process::id(),
        reason: Some(format!("{what} {}", backup.name)),
        since_ms: now_ms(),
        until_ms: None,
    };
    ctx.locks
        .take_exclusive(&lock_keys(desired, backup), &holder, false)
        .map_err(|source| BackupError::Locked { backup: backup.name.clone(), source: Box::new(source) })
}

fn write_options(backup: &Backup, ctx: &Context) -> WriteOptions {
    let c = &backup.spec.compression;
    WriteOptions { level: i32::try_from(c.level).unwrap_or(3), threads: c.threads, progress: ctx.progress.clone() }
}

/// Runs backup `name` once.
pub async fn run<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    name: &str,
    ctx: &Context,
) -> Result<RunReport, BackupError> {
    let backup = desired.backups.get(name).ok_or_else(|| BackupError::Unknown(name.to_string()))?;
    let started = Instant::now();
    let started_ms = now_ms();
    // A run killed while its services were stopped: start them first.
    let (docker, systemd) = (engines.docker.as_deref(), engines.systemd.as_deref());
    for (b, r) in quiesce::recover(docker, systemd, Some(desired), &ctx.state_dir).await {
        if let Err(e) = r {
            warn!(backup = %b, error = %chain(&e), "services of an interrupted backup could not all be started again");
        }
    }
    let locks = take_locks(ctx, desired, backup, "backup")?;
    let dest = PathBuf::from(&backup.spec.destination.dir);
    std::fs::create_dir_all(&dest).map_err(io("creating the destination", &dest))?;
    let now = Zoned::now();
    let mut rel = catalog::render_layout(backup.spec.layout(), name, &now)?;
    if dest.join(&rel).exists() {
        // A second run the same day under a layout without {time}: the time goes in the name
        // (the manifest still names the backup, so the catalog finds it), and a number after
        // it for a third run within the same second.
        let (base, time) = (rel.clone(), now.strftime("%H%M%S").to_string());
        rel = tagged(&base, &time);
        let mut n = 2;
        while dest.join(&rel).exists() {
            rel = tagged(&base, &format!("{time}-{n}"));
            n += 1;
        }
    }
    let final_path = dest.join(&rel);
    let options = write_options(backup, ctx);
    let mut warnings = Vec::new();
    let (sha256, bytes, files, input_bytes) = match backup.spec.source_kind() {
        SourceKind::Paths => {
            let paths: Vec<PathBuf> = backup.spec.paths().iter().map(PathBuf::from).collect();
            // Room first: a run that cannot fit fails before anything is stopped.
            let needed = archive::estimate_size(&paths).map_err(io("measuring", &paths[0]))?;
            let free = archive::free_bytes(&dest).map_err(io("measuring free space of", &dest))?;
            if free < needed {
                return Err(BackupError::NoSpace { dir: dest, free, needed });
            }
            let report = quiesced_archive(engines, desired, backup, ctx, &paths, &final_path, &options).await?;
            if !report.skipped.is_empty() {
                warnings.push(format!("special files left out: {}", join_paths(&report.skipped)));
            }
            if !report.changed.is_empty() {
                warnings.push(format!("files changed while read: {}", join_paths(&report.changed)));
            }
            (report.sha256, report.bytes, Some(report.files), report.input_bytes)
        }
        SourceKind::Exec => {
            let w = exec_archive(engines, desired, backup, &final_path, &options).await?;
            (w.sha256, w.bytes, None, w.input_bytes)
        }
    };
    let source = match backup.spec.source_kind() {
        SourceKind::Paths => format!("paths {}", backup.spec.paths().join(" ")),
        SourceKind::Exec => {
            format!("exec {}", backup.spec.source.exec.as_ref().map(|e| e.command.join(" ")).unwrap_or_default())
        }
    };
    let manifest = Manifest {
        archive: final_path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        sha256: sha256.clone(),
        bytes,
        files,
        input_bytes,
        source,
        started_ms,
        duration_ms: started.elapsed().as_millis() as u64,
        tend_version: env!("CARGO_PKG_VERSION").to_string(),
        spec_hash: backup.hash.clone(),
        backup: name.to_string(),
        // What the file holds, whatever its name: a dump is a stream even under `.tar.zst`.
        format: match backup.spec.source_kind() {
            SourceKind::Paths => archive::Format::TarZst,
            SourceKind::Exec => archive::Format::Zst,
        },
    };
    catalog::write_manifest(&final_path, &manifest)?;
    info!(backup = name, archive = %final_path.display(), bytes, "archive written");
    if let Some(reason) = &ctx.keep {
        let (user, _) = crate::maintain::locks::current_user();
        catalog::pin(&final_path, &catalog::Pin { since_ms: now_ms(), user, reason: Some(reason.clone()) })?;
    }
    drop(locks);
    // Copies, each verified by its checksum.
    let mut copies = Vec::new();
    for c in &backup.spec.copies {
        match copy_to(&final_path, &rel, &sha256, c.to()).await {
            Ok(done) => copies.push(done),
            Err(e) => warnings.push(format!("copy to {c} failed: {}", chain(&e))),
        }
    }
    // Retention, per destination: the local one, and each copy by its own rules or these.
    let (pruned, problems) = apply_retention(backup, &dest).await;
    warnings.extend(problems);
    for w in &warnings {
        warn!(backup = name, "{w}");
    }
    let report = RunReport {
        archive: final_path,
        sha256,
        bytes,
        files,
        duration_ms: started.elapsed().as_millis() as u64,
        copies,
        pruned,
        warnings,
    };
    record(&ctx.state_dir, name, Ok(&report));
    Ok(report)
}

/// `a/2026-11-22_db.tar.zst` with tag `061530` → `a/2026-11-22_db-061530.tar.zst`.
fn tagged(rel: &Path, tag: &str) -> PathBuf {
    let name = rel.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let (stem, ext) = match name.find(".tar.zst").or_else(|| name.rfind(".zst")) {
        Some(i) => name.split_at(i),
        None => (name.as_str(), ""),
    };
    rel.with_file_name(format!("{stem}-{tag}{ext}"))
}

fn join_paths(p: &[PathBuf]) -> String {
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Quiesce, archive, resume — resume whatever happened.
async fn quiesced_archive<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    ctx: &Context,
    paths: &[PathBuf],
    final_path: &Path,
    options: &WriteOptions,
) -> Result<archive::PathsReport, BackupError> {
    let journal = quiesce::journal_path(&ctx.state_dir, &backup.name);
    let (docker, systemd) = (engines.docker.as_deref(), engines.systemd.as_deref());
    let result = async {
        if let Some(q) = &backup.spec.quiesce {
            let done =
                quiesce::quiesce(docker, systemd, desired, &backup.name, &q.stop, paths, q.timeout.get(), &journal)
                    .await?;
            // What a killed writer left may be half flushed: never archived.
            if !done.killed.is_empty() {
                return Err(QuiesceError::Killed { killed: done.killed.join(", ") }.into());
            }
        }
        if let Some(pause) = fault_pause() {
            warn!(?pause, "TEND_FAULT_BACKUP_PAUSE: pausing with the services stopped");
            tokio::time::sleep(pause).await;
        }
        let (paths, final_path, options) = (paths.to_vec(), final_path.to_path_buf(), options.clone());
        let written = tokio::task::spawn_blocking(move || archive::write_paths(&final_path, &paths, &options))
            .await
            .map_err(|e| BackupError::Engine(format!("the archive task failed: {e}")))??;
        Ok::<_, BackupError>(written)
    }
    .await;
    let resumed = quiesce::resume(docker, systemd, Some(desired), &journal).await;
    match (result, resumed) {
        (Ok(r), Ok(())) => Ok(r),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(r)) => {
            warn!(error = %chain(&r), "starting the services again failed too");
            Err(e)
        }
        (Ok(_), Err(r)) => Err(BackupError::Resume(r)),
    }
}

/// A reader over chunks sent from async code (a dump's stdout), for the blocking writer.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    buf: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.buf = b,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

/// Streams the dump command's stdout straight into the archive; the archive gets its final
/// name only when the command succeeded.
async fn exec_archive<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    final_path: &Path,
    options: &WriteOptions,
) -> Result<archive::Written, BackupError> {
    let exec = backup.spec.source.exec.clone().ok_or_else(|| BackupError::Engine("no exec source".into()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let (path, opts) = (final_path.to_path_buf(), options.clone());
    // The writer: a blocking thread reading the channel into a .partial file.
    let writer = tokio::task::spawn_blocking(move || -> Result<ArchiveWriter, ArchiveError> {
        let mut w = ArchiveWriter::create(&path, &opts)?;
        let mut reader = ChannelReader { rx, buf: bytes::Bytes::new() };
        std::io::copy(&mut reader, &mut w).map_err(|source| ArchiveError::Write { archive: path.clone(), source })?;
        Ok(w)
    });
    let command = exec.command.join(" ");
    let (code, stderr) = run_exec(engines, desired, exec.runs_in(), &exec.command, tx).await?;
    let w = writer.await.map_err(|e| BackupError::Engine(format!("the archive task failed: {e}")))??;
    if code != 0 {
        // Dropping the writer removes the partial file: no archive under a final name.
        drop(w);
        return Err(BackupError::Command { command, code, stderr, what: "no archive was kept" });
    }
    Ok(tokio::task::spawn_blocking(move || w.finish())
        .await
        .map_err(|e| BackupError::Engine(format!("the archive task failed: {e}")))??)
}

/// Runs a dump command in a service's container, or on the host, its stdout into `tx`.
async fn run_exec<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    runs_in: RunsIn<'_>,
    command: &[String],
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<(i64, String), BackupError> {
    if let Some(s) = docker_service(desired, runs_in) {
        let docker = engines.docker.as_deref().ok_or_else(|| BackupError::Engine("Docker is not available".into()))?;
        let container = instance_name(&s.name, 1);
        return docker.exec_out(&container, command, None, tx).await.map_err(|e| BackupError::Engine(chain(&e)));
    }
    // On the host (runtime: host, or a systemd service: as its user).
    let user = match runs_in {
        RunsIn::Service(s) => desired.services.get(s).and_then(|s| s.spec.user.clone()),
        RunsIn::Host => None,
    };
    let mut cmd = match &user {
        Some(u) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", u, "--"]).args(command);
            c
        }
        None => {
            let mut c = tokio::process::Command::new(&command[0]);
            c.args(&command[1..]);
            c
        }
    };
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("starting the dump command", Path::new(&command[0])))?;
    let mut stdout = child.stdout.take().ok_or_else(|| BackupError::Engine("no stdout".into()))?;
    let mut stderr_pipe = child.stderr.take().ok_or_else(|| BackupError::Engine("no stderr".into()))?;
    let pump = async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 || tx.send(bytes::Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let errs = async {
        use tokio::io::AsyncReadExt;
        let mut v = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut v).await;
        v
    };
    let (pumped, err) = tokio::join!(pump, errs);
    drop(tx);
    pumped.map_err(io("reading the dump command's output", Path::new(&command[0])))?;
    let status = child.wait().await.map_err(io("waiting for the dump command", Path::new(&command[0])))?;
    let tail = stderr_tail(&err);
    Ok((i64::from(status.code().unwrap_or(-1)), tail))
}

/// Copies the archive and its manifest to another destination and checks the copy.
async fn copy_to(archive: &Path, rel: &Path, sha256: &str, to: CopyTo<'_>) -> Result<String, BackupError> {
    match to {
        CopyTo::Dir(dir) => {
            let (archive, target) = (archive.to_path_buf(), PathBuf::from(dir).join(rel));
            let sha = sha256.to_string();
            tokio::task::spawn_blocking(move || copy_file_verified(&archive, &target, &sha))
                .await
                .map_err(|e| BackupError::Engine(format!("the copy task failed: {e}")))?
        }
        CopyTo::Rsync(dest) => {
            // `dest` names a directory (user@host:/path); the layout's sub-path is kept.
            let parent = rel.parent().map(|p| p.display().to_string()).unwrap_or_default();
            let target = if parent.is_empty() { format!("{dest}/") } else { format!("{dest}/{parent}/") };
            let manifest = catalog::manifest_path(archive);
            let run = |extra: &[&str]| {
                let mut c = crate::backup::remote::rsync();
                c.args(["-a", "--checksum", "--mkpath"]);
                c.args(extra);
                c.arg(archive).arg(&manifest).arg(&target);
                c
            };
            let out = run(&[]).output().await.map_err(io("running rsync for", archive))?;
            if !out.status.success() {
                return Err(BackupError::Command {
                    command: format!("rsync … {target}"),
                    code: i64::from(out.status.code().unwrap_or(-1)),
                    stderr: stderr_tail(&out.stderr),
                    what: "the copy was not made",
                });
            }
            // Verified: a checksum comparison finds nothing left to transfer.
            let check =
                run(&["--dry-run", "--itemize-changes"]).output().await.map_err(io("running rsync for", archive))?;
            if !check.status.success() || !String::from_utf8_lossy(&check.stdout).trim().is_empty() {
                return Err(BackupError::Refused(format!(
                    "the copy at {target} does not match the archive's checksum"
                )));
            }
            Ok(format!("rsync {target}"))
        }
    }
}

fn copy_file_verified(archive: &Path, target: &Path, sha256: &str) -> Result<String, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = target.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    for (from, to) in [
        (archive.to_path_buf(), target.to_path_buf()),
        (catalog::manifest_path(archive), catalog::manifest_path(target)),
    ] {
        let tmp = dir.join(format!(
            ".{}.partial-{}",
            to.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            std::process::id()
        ));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        let mut input = std::fs::File::open(&from).map_err(io("reading", &from))?;
        let copied = std::io::copy(&mut input, &mut out).and_then(|_| out.sync_all());
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("copying to", &tmp)(e));
        }
        std::fs::rename(&tmp, &to).map_err(io("renaming into", &to))?;
    }
    let got = archive::sha256_file(target)?;
    if got != sha256 {
        return Err(BackupError::Refused(format!(
            "the copy {} has sha256 {got}, the archive {sha256}",
            target.display()
        )));
    }
    Ok(format!("dir {}", target.display()))
}

fn rules_of(r: &tend_specs::backup::Retention) -> retention::Rules {
    retention::Rules {
        keep_last: r.keep_last,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
    }
}

/// Applies retention in the destination and in every copy (a copy's own `retention`, else
/// the Backup's; none: everything is kept). Pinned archives are kept everywhere. Returns
/// what was removed and the problems (each a warning: the archive of this run is whole).
async fn apply_retention(backup: &Backup, dest: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let (mut pruned, mut problems) = (Vec::new(), Vec::new());
    // Pins are kept with the local archives; they hold in every copy.
    let pinned: BTreeSet<PathBuf> = archives(backup)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| catalog::is_pinned(&e.path))
        .filter_map(|e| e.path.strip_prefix(dest).ok().map(Path::to_path_buf))
        .collect();
    if let Some(r) = &backup.spec.retention {
        match prune(dest, backup, &rules_of(r), &pinned) {
            Ok(p) => pruned.extend(p),
            Err(e) => problems.push(format!("retention in {}: {}", dest.display(), chain(&e))),
        }
    }
    for c in &backup.spec.copies {
        let Some(r) = c.retention.as_ref().or(backup.spec.retention.as_ref()) else { continue };
        let done = match c.to() {
            CopyTo::Dir(dir) => prune(Path::new(dir), backup, &rules_of(r), &pinned),
            CopyTo::Rsync(target) => prune_remote(target, backup, &rules_of(r), &pinned).await,
        };
        match done {
            Ok(p) => pruned.extend(p),
            Err(e) => problems.push(format!("retention in copy {c}: {}", chain(&e))),
        }
    }
    (pruned, problems)
}

/// Applies retention to the complete archives of `backup` in `dir`, keeping those whose path
/// relative to `dir` is `pinned` or that are pinned here; returns what was removed.
fn prune(
    dir: &Path,
    backup: &Backup,
    rules: &retention::Rules,
    pinned: &BTreeSet<PathBuf>,
) -> Result<Vec<PathBuf>, BackupError> {
    let entries = catalog::list(dir, &backup.name, backup.spec.layout())?;
    let kept_by_pin = |p: &Path| catalog::is_pinned(p) || p.strip_prefix(dir).is_ok_and(|r| pinned.contains(r));
    let good: Vec<(PathBuf, tend_specs::calendar::Timestamp)> = entries
        .iter()
        .filter(|e| e.state == EntryState::Complete && !kept_by_pin(&e.path))
        .map(|e| (e.path.clone(), e.time()))
        .collect();
    let keep = retention::select(&good, rules, &tend_specs::calendar::LocalZone::from_env());
    let mut removed = Vec::new();
    for (path, _) in good.iter().filter(|(p, _)| !keep.contains(p)) {
        std::fs::remove_file(path).map_err(io("removing", path))?;
        let _ = std::fs::remove_file(catalog::manifest_path(path));
        info!(archive = %path.display(), "removed by retention");
        removed.push(path.clone());
    }
    Ok(removed)
}

/// [`prune`] of a copy on another host, through rsync: its archives are listed, the rules
/// applied to the complete ones, and the rest removed with their manifests.
async fn prune_remote(
    target: &str,
    backup: &Backup,
    rules: &retention::Rules,
    pinned: &BTreeSet<PathBuf>,
) -> Result<Vec<PathBuf>, BackupError> {
    let zone = tend_specs::calendar::LocalZone::from_env();
    let root = catalog::fixed_root(backup.spec.layout(), &backup.name)?;
    let listed = crate::backup::remote::list(target, &root, &zone).await?;
    let good: Vec<(PathBuf, tend_specs::calendar::Timestamp)> =
        catalog::archives_in_listing(&listed, &backup.name, backup.spec.layout())?
            .into_iter()
            .filter(|(path, _, complete)| *complete && !pinned.contains(&root.join(path)))
            .map(|(path, time, _)| (path, time))
            .collect();
    let keep = retention::select(&good, rules, &zone);
    let drop: Vec<PathBuf> = good.iter().filter(|(p, _)| !keep.contains(p)).map(|(p, _)| p.clone()).collect();
    crate::backup::remote::remove(target, &root, &drop).await?;
    for p in &drop {
        info!(copy = target, archive = %root.join(p).display(), "removed by retention");
    }
    Ok(drop.into_iter().map(|p| PathBuf::from(format!("{target}/{}", root.join(p).display()))).collect())
}

/// One line per run in `STATE/backups/NAME/history.jsonl`: for health in `tend status`.
fn record(state_dir: &Path, name: &str, result: Result<&RunReport, &str>) {
    use std::io::Write;
    let dir = state_dir.join("backups").join(name);
    let line = match result {
        Ok(r) => {
            let copies_failed: Vec<&String> = r.warnings.iter().filter(|w| w.starts_with("copy ")).collect();
            serde_json::json!({"endMs": now_ms(), "ok": true, "archive": r.archive, "bytes": r.bytes, "durationMs": r.duration_ms, "copiesFailed": copies_failed})
        }
        Err(e) => serde_json::json!({"endMs": now_ms(), "ok": false, "error": e}),
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("history.jsonl"))?;
        writeln!(f, "{line}")
    };
    if let Err(e) = write() {
        warn!(backup = name, error = %e, "recording the run");
    }
}

/// Records a failed run (the CLI calls it with the error).
pub fn record_failure(state_dir: &Path, name: &str, error: &str) {
    record(state_dir, name, Err(error));
}

/// The complete archives of a backup, newest last (for `list`, `verify`, `restore`).
pub fn archives(backup: &Backup) -> Result<Vec<catalog::Entry>, BackupError> {
    Ok(catalog::list(Path::new(&backup.spec.destination.dir), &backup.name, backup.spec.layout())?)
}

/// The complete archive of `backup` named `given`: its path, or its file name.
pub fn find_archive(backup: &Backup, given: &str) -> Result<catalog::Entry, BackupError> {
    let as_path = std::path::absolute(given).unwrap_or_else(|_| PathBuf::from(given));
    let entries = archives(backup)?;
    let found = entries
        .into_iter()
        .filter(|e| e.state == EntryState::Complete)
        .find(|e| e.path == as_path || e.path.file_name().is_some_and(|n| n == std::ffi::OsStr::new(given)));
    found.ok_or_else(|| {
        BackupError::Refused(format!(
            "{given} is not a complete archive of {} (see `tend backup list {}`)",
            backup.name, backup.name
        ))
    })
}

/// Pins an archive of `backup`: retention keeps it, here and in every copy, until unpinned.
pub fn pin_archive(backup: &Backup, given: &str, reason: Option<String>) -> Result<PathBuf, BackupError> {
    let entry = find_archive(backup, given)?;
    if catalog::is_pinned(&entry.path) {
        return Ok(entry.path);
    }
    let (user, _) = crate::maintain::locks::current_user();
    catalog::pin(&entry.path, &catalog::Pin { since_ms: now_ms(), user, reason })?;
    info!(archive = %entry.path.display(), "pinned");
    Ok(entry.path)
}

/// Unpins an archive of `backup`; the next run's retention may remove it. Returns its path
/// and whether it was pinned.
pub fn unpin_archive(backup: &Backup, given: &str) -> Result<(PathBuf, bool), BackupError> {
    let entry = find_archive(backup, given)?;
    let was = catalog::unpin(&entry.path)?;
    Ok((entry.path, was))
}

/// What a restore will do, shown before it does it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePlan {
    /// The archive.
    pub archive: PathBuf,
    /// Its age (ms), from its manifest; `None` for an archive without one.
    pub age_ms: Option<u64>,
    /// Its manifest (`None` only when the operator restores one without, on purpose).
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    /// Services stopped first (and started after).
    pub stop: Vec<String>,
    /// Current data moved aside: (from, to).
    pub move_aside: Vec<(PathBuf, PathBuf)>,
    /// Where the archive is extracted, or the command it is streamed into.
    pub into: String,
}

/// Plans a restore of `backup` from `from` (default: the newest complete archive), into the
/// source paths (moving the current data aside) or into `to` (nothing stopped or moved).
/// Refused, before anything is touched: a `--set` of a variable `restore.exec` does not
/// have, an archive whose manifest names another Backup or another kind of source, and an
/// archive without a manifest unless `without_manifest` says the operator means it.
pub fn plan_restore(
    backup: &Backup,
    from: Option<&Path>,
    to: Option<&Path>,
    vars: &[(String, String)],
    without_manifest: bool,
) -> Result<RestorePlan, BackupError> {
    check_vars(backup, vars)?;
    let archive = match from {
        Some(p) => p.to_path_buf(),
        None => archives(backup)?
            .into_iter()
            .filter(|e| e.state == EntryState::Complete)
            .max_by_key(|e| e.time())
            .map(|e| e.path)
            .ok_or_else(|| BackupError::NoArchive(backup.name.clone()))?,
    };
    let manifest = catalog::read_manifest(&archive)?;
    check_belongs(backup, &archive, manifest.as_ref(), without_manifest)?;
    let age_ms = manifest.as_ref().map(|m| now_ms().saturating_sub(m.started_ms));
    let stamp = Zoned::now().strftime("%Y-%m-%d_%H%M%S").to_string();
    match backup.spec.source_kind() {
        SourceKind::Paths => {
            if let Some(t) = to {
                return Ok(RestorePlan {
                    archive,
                    age_ms,
                    manifest,
                    stop: vec![],
                    move_aside: vec![],
                    into: format!("{} (a new directory; nothing is stopped or moved)", t.display()),
                });
            }
            let stop = backup.spec.quiesce.as_ref().map(|q| q.stop.clone()).unwrap_or_default();
            let aside_dir = backup.spec.restore.as_ref().and_then(|r| r.move_aside_to.clone());
            let mut move_aside = Vec::new();
            for p in backup.spec.paths() {
                let p = PathBuf::from(p);
                if !p.exists() {
                    continue;
                }
                let base = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let target = match &aside_dir {
                    Some(d) => PathBuf::from(d).join(format!("{base}.{stamp}")),
                    None => p.with_file_name(format!("{base}.before-restore-{stamp}")),
                };
                move_aside.push((p, target));
            }
            Ok(RestorePlan { archive, age_ms, manifest, stop, move_aside, into: backup.spec.paths().join(" ") })
        }
        SourceKind::Exec => {
            let cmd = restore_command(backup, vars)?;
            Ok(RestorePlan {
                archive,
                age_ms,
                manifest,
                stop: vec![],
                move_aside: vec![],
                into: format!("`{}`", cmd.join(" ")),
            })
        }
    }
}

/// Every `--set` must name a placeholder of `restore.exec`: a misspelt one would otherwise be
/// ignored and the restore run with the default, into the live database.
fn check_vars(backup: &Backup, vars: &[(String, String)]) -> Result<(), BackupError> {
    let known = &backup.restore_vars;
    for (name, _) in vars {
        if known.contains(name) {
            continue;
        }
        let why = if known.is_empty() {
            format!("the restore of {} has no variables (its restore.exec has no ${{…}} placeholder)", backup.name)
        } else {
            let near = known
                .iter()
                .map(|k| (strsim::damerau_levenshtein(name, k), k))
                .filter(|(d, k)| *d <= 2.max(k.len() / 3))
                .min()
                .map(|(_, k)| format!(", did you mean `{k}`?"))
                .unwrap_or_default();
            let list = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            format!("restore.exec of {} has {list}{near}", backup.name)
        };
        return Err(BackupError::Refused(format!("--set {name}: no such variable: {why}")));
    }
    Ok(())
}

/// The archive must be one of `backup`'s: its manifest names this Backup and the same kind of
/// source. One without a manifest (a run that did not finish, or a file from elsewhere) is
/// restored only when the operator says so.
fn check_belongs(
    backup: &Backup,
    archive: &Path,
    manifest: Option<&Manifest>,
    without_manifest: bool,
) -> Result<(), BackupError> {
    let Some(m) = manifest else {
        if without_manifest {
            return Ok(());
        }
        return Err(BackupError::Refused(format!(
            "{} has no manifest ({}): nothing says which Backup made it, when, or its checksum; restore it only if you know it is one of {}'s, with --without-manifest",
            archive.display(),
            catalog::manifest_path(archive).display(),
            backup.name
        )));
    };
    if m.backup != backup.name {
        return Err(BackupError::Refused(format!(
            "{} is an archive of Backup `{}` (its manifest says so), not of `{}`",
            archive.display(),
            m.backup,
            backup.name
        )));
    }
    let kind = backup.spec.source_kind();
    if m.source_kind() != Some(kind) {
        let name = |k: SourceKind| match k {
            SourceKind::Paths => "paths",
            SourceKind::Exec => "exec",
        };
        return Err(BackupError::Refused(format!(
            "{} was made from another kind of source ({}); {} now backs up {}",
            archive.display(),
            m.source,
            backup.name,
            name(kind)
        )));
    }
    Ok(())
}

fn restore_command(backup: &Backup, vars: &[(String, String)]) -> Result<Vec<String>, BackupError> {
    let r = backup.spec.restore.as_ref().and_then(|r| r.exec.as_ref()).ok_or_else(|| {
        BackupError::Refused(format!("{} has no restore.exec: say how to restore its dumps in the spec", backup.name))
    })?;
    let mut all = backup.spec.restore.as_ref().map(|r| r.vars.clone()).unwrap_or_default();
    for (k, v) in vars {
        all.insert(k.clone(), v.clone());
    }
    r.command
        .iter()
        .map(|arg| {
            tend_specs::backup::fill_placeholders(arg, &all).map_err(|missing| {
                BackupError::Refused(format!("set `{missing}`: tend restore … --set {missing}=VALUE"))
            })
        })
        .collect()
}

/// Checks that a planned restore can go ahead, without stopping anything: each move-aside
/// directory exists or can be made, is writable, and is on the filesystem of the data it
/// receives (a rename, never a copy).
pub fn check_restore(plan: &RestorePlan) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt;
    for (from, aside) in &plan.move_aside {
        let dir = aside.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| {
            BackupError::Refused(format!("the move-aside directory {} cannot be created: {e}", dir.display()))
        })?;
        let probe = dir.join(format!(".tend-probe-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| {
            BackupError::Refused(format!("the move-aside directory {} cannot be written: {e}", dir.display()))
        })?;
        let _ = std::fs::remove_file(&probe);
        let same_fs = matches!((std::fs::metadata(from), std::fs::metadata(dir)), (Ok(x), Ok(y)) if x.dev() == y.dev());
        if !same_fs {
            return Err(BackupError::Refused(format!(
                "{} and the move-aside directory {} are on different filesystems: moving the data aside would copy it",
                from.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Carries out a planned restore. Before anything is stopped, moved or fed to a restore
/// command, the archive is read whole (checksum, every frame and tar entry) and the
/// move-aside directories are checked; a failure until then is
/// [`BackupError::Unchanged`].
pub async fn restore<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    plan: &RestorePlan,
    to: Option<&Path>,
    vars: &[(String, String)],
    ctx: &Context,
) -> Result<(), BackupError> {
    let progress = ctx.progress.clone();
    let unchanged = |e: BackupError| BackupError::Unchanged { backup: backup.name.clone(), source: Box::new(e) };
    if backup.spec.source_kind() == SourceKind::Paths {
        return paths_restore(engines, desired, backup, plan, to, ctx).await;
    }
    let sha = plan.manifest.as_ref().map(|m| m.sha256.clone());
    let (a, p) = (plan.archive.clone(), progress.clone());
    tokio::task::spawn_blocking(move || archive::verify_counted(&a, archive::Format::Zst, sha.as_deref(), p.as_ref()))
        .await
        .map_err(|e| BackupError::Engine(format!("the verify task failed: {e}")))?
        .map_err(|e| unchanged(e.into()))?;
    exec_restore(engines, desired, backup, plan, vars, progress).await
}

/// Removes a scratch directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.0.display(), error = %e, "could not remove a restore's scratch directory");
        }
    }
}

/// A paths restore. The archive is extracted whole into a scratch directory next to the
/// data (or into `to`) while everything still runs — every entry confined to the path the
/// Backup covers that holds it, the bytes bounded by the manifest and the free space, the
/// checksum checked — and each restored path must be there and of the kind the live one
/// is. Only then are the services stopped, the live data moved aside, the restored data
/// renamed into place, and the services started again.
async fn paths_restore<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    plan: &RestorePlan,
    to: Option<&Path>,
    ctx: &Context,
) -> Result<(), BackupError> {
    let unchanged = |e: BackupError| BackupError::Unchanged { backup: backup.name.clone(), source: Box::new(e) };
    let paths: Vec<PathBuf> = backup.spec.paths().iter().map(PathBuf::from).collect();
    let target = match to {
        Some(t) => t.to_path_buf(),
        None => scratch_dir(&paths[0]),
    };
    let scratch = to.is_none().then(|| Scratch(target.clone()));
    extract_checked(backup, plan, &target, to.is_none(), ctx).await.map_err(unchanged)?;
    if to.is_some() {
        return Ok(());
    }
    check_restore(plan).map_err(unchanged)?;
    check_same_fs(&target, &paths).map_err(unchanged)?;
    let locks = take_locks(ctx, desired, backup, "restore").map_err(unchanged)?;
    let journal = quiesce::journal_path(&ctx.state_dir, &backup.name);
    let (docker, systemd) = (engines.docker.as_deref(), engines.systemd.as_deref());
    let result = async {
        if let Some(q) = &backup.spec.quiesce {
            let done =
                quiesce::quiesce(docker, systemd, desired, &backup.name, &q.stop, &paths, q.timeout.get(), &journal)
                    .await?;
            // The data a killed writer left is what is moved aside: kept, and said.
            if !done.killed.is_empty() {
                warn!(killed = %done.killed.join(", "), "services were killed when stopped for the restore; the data moved aside may be half written");
            }
        }
        swap_in(plan, &target, &paths)
    }
    .await;
    drop(scratch);
    let resumed = quiesce::resume(docker, systemd, Some(desired), &journal).await;
    drop(locks);
    result?;
    resumed.map_err(BackupError::Resume)
}

/// Moves the current data aside and renames the restored data into place. Should a rename
/// fail half way, what was moved aside is moved back, so a path is never left empty.
fn swap_in(plan: &RestorePlan, target: &Path, paths: &[PathBuf]) -> Result<(), BackupError> {
    let mut moved: Vec<(&PathBuf, &PathBuf)> = Vec::new();
    let mut placed: Vec<&PathBuf> = Vec::new();
    let done = (|| {
        for (from, aside) in &plan.move_aside {
            std::fs::rename(from, aside).map_err(io("moving aside", from))?;
            info!(from = %from.display(), to = %aside.display(), "current data moved aside");
            moved.push((from, aside));
        }
        for p in paths {
            let inside = target.join(p.strip_prefix("/").unwrap_or(p));
            std::fs::rename(&inside, p).map_err(io("putting the restored data in place at", p))?;
            placed.push(p);
        }
        Ok(())
    })();
    if done.is_err() {
        for p in placed {
            let _ = std::fs::rename(p, target.join(p.strip_prefix("/").unwrap_or(p)));
        }
        for (from, aside) in moved.into_iter().rev() {
            if let Err(e) = std::fs::rename(aside, from) {
                warn!(from = %aside.display(), to = %from.display(), error = %e, "could not move the current data back");
            }
        }
    }
    done
}

/// The restored data is put in place by rename: `scratch` must be on the filesystem of
/// each path's directory.
fn check_same_fs(scratch: &Path, paths: &[PathBuf]) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    for p in paths {
        let dir = nearest_existing(p.parent().unwrap_or(Path::new("/")));
        if dev(scratch) != dev(&dir) {
            return Err(BackupError::Refused(format!(
                "{} and {} are on different filesystems: the restored data is put in place by rename",
                scratch.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Extracts the planned archive into `target` (which must not exist, or be empty) within
/// [`restore_limits`]; for a restore in place (`live`), then checks that every path the
/// Backup covers came out, as the kind of entry its live path is (a directory for a
/// directory).
async fn extract_checked(
    backup: &Backup,
    plan: &RestorePlan,
    target: &Path,
    live: bool,
    ctx: &Context,
) -> Result<(), BackupError> {
    let limits = restore_limits(backup, plan, target)?;
    let sha = plan.manifest.as_ref().map(|m| m.sha256.clone());
    let (a, t, p) = (plan.archive.clone(), target.to_path_buf(), ctx.progress.clone());
    tokio::task::spawn_blocking(move || archive::extract_counted(&a, &t, sha.as_deref(), p.as_ref(), &limits))
        .await
        .map_err(|e| BackupError::Engine(format!("the restore task failed: {e}")))??;
    if !live {
        return Ok(());
    }
    for p in backup.spec.paths() {
        let live = Path::new(p);
        let restored = target.join(live.strip_prefix("/").unwrap_or(live));
        let kind = |m: &std::fs::Metadata| if m.is_dir() { "a directory" } else { "a file" };
        let Ok(got) = std::fs::symlink_metadata(&restored) else {
            return Err(BackupError::Refused(format!(
                "{} holds nothing for {p}, a path {} covers: restoring it would leave {p} empty",
                plan.archive.display(),
                backup.name
            )));
        };
        if let Ok(now) = std::fs::symlink_metadata(live)
            && now.is_dir() != got.is_dir()
        {
            return Err(BackupError::Refused(format!(
                "{} holds {} for {p}, which is {} here",
                plan.archive.display(),
                kind(&got),
                kind(&now)
            )));
        }
    }
    Ok(())
}

/// What a paths restore into `target` may write: only the paths the Backup covers, and no
/// more bytes than the manifest recorded (the tar stream holds every file's bytes) nor than
/// the free space beside `target` less a reserve. Refused at once when the recorded size
/// does not fit.
fn restore_limits(backup: &Backup, plan: &RestorePlan, target: &Path) -> Result<archive::Limits, BackupError> {
    let roots = backup.spec.paths().iter().map(|p| PathBuf::from(p.trim_start_matches('/'))).collect();
    let dir = nearest_existing(target);
    let room = archive::room(&dir).map_err(io("measuring free space of", &dir))?;
    let recorded = plan.manifest.as_ref().map(|m| m.input_bytes.saturating_add(RESTORE_MARGIN));
    if let Some(needed) = recorded
        && needed > room
    {
        return Err(BackupError::NoSpace { dir, free: room, needed });
    }
    Ok(archive::Limits { roots, max_bytes: recorded.unwrap_or(u64::MAX).min(room) })
}

/// Slack on a manifest's recorded size (a tar stream already holds more than its files).
const RESTORE_MARGIN: u64 = 1024 * 1024;

/// `path`, or its nearest ancestor that exists (where a new directory would be made).
fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/")).to_path_buf()
}

/// How many bytes of the archive a restore reads, for a progress display: its size for
/// paths (extracted once, checked as it is read), twice for an exec source (checked whole
/// before a byte reaches the restore command).
pub fn restore_read_bytes(backup: &Backup, plan: &RestorePlan) -> u64 {
    let size = std::fs::metadata(&plan.archive).map(|m| m.len()).unwrap_or(0);
    match backup.spec.source_kind() {
        // Extracted once, checked as it is read.
        SourceKind::Paths => size,
        // Checked whole before a byte reaches the command, then streamed.
        SourceKind::Exec => size * 2,
    }
}

fn scratch_dir(first: &Path) -> PathBuf {
    let parent = first.parent().unwrap_or(Path::new("/"));
    parent.join(format!(".tend-restore-{}", std::process::id()))
}

async fn exec_restore<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    plan: &RestorePlan,
    vars: &[(String, String)],
    progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
) -> Result<(), BackupError> {
    let command = restore_command(backup, vars)?;
    let r = backup
        .spec
        .restore
        .as_ref()
        .and_then(|r| r.exec.as_ref())
        .ok_or_else(|| BackupError::Refused("no restore.exec".into()))?;
    let container = docker_service(desired, r.runs_in()).map(|s| instance_name(&s.name, 1));
    // Verified whole just before: streamed without a second checksum pass.
    let (code, stderr) = stream_into(engines, container.as_deref(), &command, &plan.archive, None, progress).await?;
    if code != 0 {
        return Err(BackupError::Command {
            command: command.join(" "),
            code,
            stderr,
            what: "the restore did not finish",
        });
    }
    Ok(())
}

/// The Docker service a backup's command runs in, if it runs in one (not on the host, not as
/// a systemd service).
fn docker_service<'a>(desired: &'a Desired, runs_in: RunsIn<'_>) -> Option<&'a tend_specs::Service> {
    match runs_in {
        RunsIn::Service(s) => {
            desired.services.get(s).filter(|s| s.spec.runtime == tend_specs::service::Runtime::Docker)
        }
        RunsIn::Host => None,
    }
}

/// Decompresses `archive` into the standard input of `command`, run in `container` or on the
/// host. Returns the command's exit code and the end of its stderr.
async fn stream_into<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    container: Option<&str>,
    command: &[String],
    archive: &Path,
    sha: Option<String>,
    progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
) -> Result<(i64, String), BackupError> {
    // Decompress into a pipe, read asynchronously into the command's stdin.
    let (reader, writer) = std::io::pipe().map_err(io("making a pipe for", archive))?;
    let a = archive.to_path_buf();
    let decompress =
        tokio::task::spawn_blocking(move || archive::stream_out_counted(&a, sha.as_deref(), writer, progress.as_ref()));
    let input = tokio::fs::File::from_std(std::fs::File::from(std::os::fd::OwnedFd::from(reader)));
    let (code, stderr) = if let Some(container) = container {
        let docker = engines.docker.as_deref().ok_or_else(|| BackupError::Engine("Docker is not available".into()))?;
        docker.exec_in(container, command, None, input).await.map_err(|e| BackupError::Engine(chain(&e)))?
    } else {
        let mut child = tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io("starting the restore command", Path::new(&command[0])))?;
        let mut stdin = child.stdin.take().ok_or_else(|| BackupError::Engine("no stdin".into()))?;
        let mut input = input;
        let feed = async move {
            let r = tokio::io::copy(&mut input, &mut stdin).await;
            drop(stdin);
            r
        };
        let (_, out) = tokio::join!(feed, child.wait_with_output());
        let out = out.map_err(io("waiting for the restore command", Path::new(&command[0])))?;
        (i64::from(out.status.code().unwrap_or(-1)), stderr_tail(&out.stderr))
    };
    match decompress.await.map_err(|e| BackupError::Engine(format!("the restore task failed: {e}")))? {
        // The command stopped reading because it failed: its own error says more.
        Err(ArchiveError::Output { .. }) if code != 0 => {}
        // A corrupt archive (checked before a byte is sent) wins over what it caused.
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    Ok((code, stderr))
}

/// Verifies every archive of `backup` (or the one file given).
pub fn verify_all(backup: Option<&Backup>, archive: Option<&Path>) -> Vec<(PathBuf, Result<u64, BackupError>)> {
    let targets: Vec<PathBuf> = match (archive, backup) {
        (Some(a), _) => vec![a.to_path_buf()],
        (None, Some(b)) => archives(b).map(|v| v.into_iter().map(|e| e.path).collect()).unwrap_or_default(),
        (None, None) => vec![],
    };
    targets
        .into_iter()
        .map(|p| {
            let r = catalog::read_manifest(&p).map_err(BackupError::from).and_then(|m| {
                // What the manifest says the archive is; by its name only without one.
                let report = match &m {
                    Some(m) => archive::verify_counted(&p, m.content_format(), Some(&m.sha256), None)?,
                    None => archive::verify(&p, None)?,
                };
                Ok(report.entries.unwrap_or(0))
            });
            (p, r)
        })
        .collect()
}

/// The names of backups whose quiesce journal says a run was interrupted (its tend is gone
/// and its services are not all started again yet).
pub fn interrupted(state_dir: &Path) -> BTreeSet<String> {
    quiesce::interrupted(state_dir).into_iter().map(|(_, j)| j.backup).collect()
}

/// A pause for tests of interrupted runs: `TEND_FAULT_BACKUP_PAUSE=SECONDS` makes a run wait
/// after quiescing, before reading a byte (a window in which to kill it).
pub fn fault_pause() -> Option<Duration> {
    std::env::var("TEND_FAULT_BACKUP_PAUSE").ok().and_then(|s| s.parse().ok()).map(Duration::from_secs)
}

/// The health of a backup, for `tend status` and metrics.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// The Backup.
    pub name: String,
    /// When the last successful run ended (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_ms: Option<u64>,
    /// The last run's error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The copies the last run could not make (the archive itself was written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies_failed: Vec<String>,
    /// The schedule elapsed since the last success without a run succeeding.
    #[serde(default)]
    pub missed: bool,
    /// The newest archive is much smaller than the one before: (previous, newest) bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrunk: Option<(u64, u64)>,
    /// Temporary files and archives without a manifest left by interrupted runs.
    #[serde(default)]
    pub leftovers: usize,
    /// A run was killed while its services were stopped (they are started by the next run
    /// or the agent).
    #[serde(default)]
    pub interrupted: bool,
    /// Free bytes in the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
}

impl Health {
    /// Problems worth a line in `tend status`.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.last_success_ms.is_none() {
            p.push("never succeeded".to_string());
        }
        if let Some(e) = &self.last_error {
            p.push(format!("last run failed: {e}"));
        }
        for c in &self.copies_failed {
            p.push(format!("last run: {c}"));
        }
        if self.missed {
            p.push("missed its schedule".to_string());
        }
        if let Some((prev, now)) = self.shrunk {
            p.push(format!("the newest archive is {now} bytes, the one before {prev}"));
        }
        if self.leftovers > 0 {
            p.push(format!("{} leftover(s) of interrupted runs in the destination", self.leftovers));
        }
        if self.interrupted {
            p.push("a run was interrupted with its services stopped".to_string());
        }
        p
    }
}

/// A newest archive smaller than this share of the one before is reported.
const SHRINK_RATIO: f64 = 0.5;

/// The health of `backup` now.
pub fn health(state_dir: &Path, backup: &Backup, now_ms: u64) -> Health {
    let mut h = Health { name: backup.name.clone(), ..Default::default() };
    let history =
        std::fs::read_to_string(state_dir.join("backups").join(&backup.name).join("history.jsonl")).unwrap_or_default();
    let runs: Vec<serde_json::Value> = history.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    h.last_success_ms = runs.iter().filter(|r| r["ok"] == true).filter_map(|r| r["endMs"].as_u64()).max();
    if let Some(last) = runs.last()
        && last["ok"] == false
    {
        h.last_error = last["error"].as_str().map(str::to_string);
    }
    if let Some(last) = runs.last() {
        h.copies_failed = last["copiesFailed"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
    }
    if let (Some(cal), Some(last)) = (&backup.calendar, h.last_success_ms) {
        // Missed: an elapse after the last success that is more than an hour past.
        let after = tend_specs::calendar::Timestamp::from_millisecond(i64::try_from(last).unwrap_or(0)).ok();
        let due = after.and_then(|t| cal.next_after(t)).map(|z| z.timestamp().as_millisecond());
        h.missed = due.is_some_and(|d| i64::try_from(now_ms).unwrap_or(i64::MAX) > d + 3_600_000);
    }
    if let Ok(entries) = archives(backup) {
        h.leftovers = entries.iter().filter(|e| e.state != EntryState::Complete).count();
        let sizes: Vec<u64> = entries.iter().filter(|e| e.state == EntryState::Complete).map(|e| e.size).collect();
        if let [.., prev, newest] = sizes[..]
            && (newest as f64) < (prev as f64) * SHRINK_RATIO
        {
            h.shrunk = Some((prev, newest));
        }
    }
    h.interrupted = interrupted(state_dir).contains(&backup.name);
    h.free_bytes = archive::free_bytes(Path::new(&backup.spec.destination.dir)).ok();
    h
}

/// Where the job of a scheduled Backup's Timer runs tend.
#[derive(Debug, Clone, Copy)]
pub struct TimerContext<'a> {
    /// The tend binary.
    pub tend_bin: &'a Path,
    /// The scope.
    pub scope: &'a str,
    /// The state directory.
    pub state_dir: &'a Path,
    /// The lock directory.
    pub lock_dir: &'a Path,
    /// The spec set.
    pub specs: &'a Path,
}

/// Adds the Timers of scheduled Backups and drills (`tend_specs::scheduled`), their jobs
/// running this tend with this host's scope and directories.
pub fn add_schedule_timers(desired: &mut Desired, ctx: &TimerContext<'_>) {
    tend_specs::scheduled::add_backup_timers(desired, |command, name| job_argv(ctx, command, name));
}

/// `tend … backup COMMAND NAME --specs SPECS` with this agent's scope and directories.
fn job_argv(ctx: &TimerContext<'_>, command: &str, name: &str) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        path(ctx.tend_bin),
        "--scope".into(),
        ctx.scope.to_string(),
        "--state-dir".into(),
        path(ctx.state_dir),
        "--lock-dir".into(),
        path(ctx.lock_dir),
        "backup".into(),
        command.into(),
        name.into(),
        "--specs".into(),
        path(ctx.specs),
    ]
}

/// What a drill did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    /// The archive restored.
    pub archive: PathBuf,
    /// Where it was restored: the scratch directory or the scratch container (both removed).
    pub restored_into: String,
    /// Entries restored (paths sources).
    pub entries: Option<u64>,
    /// The check's exit code.
    pub check_code: i32,
    /// How long (ms).
    pub duration_ms: u64,
}

/// A restore drill: the newest complete archive restored somewhere scratch, a check run on
/// the host, the scratch removed. Nothing live is stopped or touched.
///
/// - paths sources: restored into the directory `STATE/drills/NAME`; the check gets it as its
///   last argument and in `TEND_DRILL_DIR`.
/// - exec sources: a scratch container `NAME-drill` is made from the image of the service
///   `restore.exec` runs in (its command, environment and health check; no ports, no mounts,
///   no network), waited for until healthy (or running, without a health check), and the
///   archive is streamed into `restore.exec` there with the default `restore.vars`; the check
///   gets the container's name as its last argument and in `TEND_DRILL_CONTAINER` (so it can
///   `docker exec` a query), then the container is removed with its anonymous volumes.
pub async fn drill<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    ctx: &Context,
) -> Result<DrillReport, BackupError> {
    let started = Instant::now();
    let d = backup.spec.drill.as_ref().ok_or_else(|| BackupError::Refused(format!("{} has no drill", backup.name)))?;
    let mut report = match backup.spec.source_kind() {
        SourceKind::Paths => paths_drill(backup, d, ctx).await?,
        SourceKind::Exec => exec_drill(engines, desired, backup, d, ctx).await?,
    };
    report.duration_ms = started.elapsed().as_millis() as u64;
    if report.check_code != 0 {
        return Err(BackupError::Command {
            command: d.check.join(" "),
            code: i64::from(report.check_code),
            stderr: String::new(),
            what: "the restored archive failed its check",
        });
    }
    Ok(report)
}

/// Runs a drill's check on the host with `target` as its last argument and `env` set.
async fn run_check(d: &tend_specs::backup::Drill, target: &str, env: (&str, &str)) -> Result<i32, BackupError> {
    let status = tokio::process::Command::new(&d.check[0])
        .args(&d.check[1..])
        .arg(target)
        .env(env.0, env.1)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .map_err(io("running the drill check", Path::new(&d.check[0])))?;
    Ok(status.code().unwrap_or(-1))
}

async fn paths_drill(
    backup: &Backup,
    d: &tend_specs::backup::Drill,
    ctx: &Context,
) -> Result<DrillReport, BackupError> {
    let plan = plan_restore(backup, None, Some(Path::new("/")), &[], false)?;
    let scratch = ctx.state_dir.join("drills").join(&backup.name);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(io("clearing the drill directory", &scratch))?;
    }
    std::fs::create_dir_all(scratch.parent().unwrap_or(Path::new("/"))).map_err(io("creating", &scratch))?;
    let sha = plan.manifest.as_ref().map(|m| m.sha256.clone());
    let limits = restore_limits(backup, &plan, &scratch)?;
    let (a, t) = (plan.archive.clone(), scratch.clone());
    let extracted =
        tokio::task::spawn_blocking(move || archive::extract_counted(&a, &t, sha.as_deref(), None, &limits))
            .await
            .map_err(|e| BackupError::Engine(format!("the drill task failed: {e}")))??;
    let dir = scratch.display().to_string();
    let code = run_check(d, &dir, ("TEND_DRILL_DIR", &dir)).await;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(DrillReport {
        archive: plan.archive,
        restored_into: dir,
        entries: Some(extracted.entries),
        check_code: code?,
        duration_ms: 0,
    })
}

async fn exec_drill<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    d: &tend_specs::backup::Drill,
    ctx: &Context,
) -> Result<DrillReport, BackupError> {
    let exec = backup.spec.restore.as_ref().and_then(|r| r.exec.as_ref()).ok_or_else(|| {
        BackupError::Refused(format!("{} has no restore.exec: a drill restores through it", backup.name))
    })?;
    let service = docker_service(desired, exec.runs_in()).ok_or_else(|| {
        BackupError::Refused(format!(
            "a drill of {} needs a scratch container made from the image of the Docker service restore.exec runs in; a restore on the host or into a systemd service has no scratch place (run the drill's restore by hand)",
            backup.name
        ))
    })?;
    let docker = engines.docker.as_deref().ok_or_else(|| BackupError::Engine("Docker is not available".into()))?;
    let plan = plan_restore(backup, None, None, &[], false)?;
    let command = restore_command(backup, &[])?;
    let sha = plan.manifest.as_ref().map(|m| m.sha256.clone());
    let engine_err = |e: crate::engine::EngineError| BackupError::Engine(chain(&e));
    // A drill that was killed leaves its container: remove it first.
    for (id, name) in docker.drill_containers(&ctx.scope, &backup.name).await.map_err(engine_err)? {
        docker.remove_drill(&id, &name).await.map_err(engine_err)?;
    }
    let name = format!("{}-drill", backup.name);
    let id = docker.start_drill(&ctx.scope, &backup.name, service, &name).await.map_err(engine_err)?;
    info!(backup = %backup.name, container = %name, "scratch container started for the drill");
    let result = async {
        crate::reconcile::execute::await_ready(docker, &name, service)
            .await
            .map_err(|e| BackupError::Engine(chain(&e)))?;
        let (code, stderr) = stream_into(engines, Some(&name), &command, &plan.archive, sha, None).await?;
        if code != 0 {
            return Err(BackupError::Command {
                command: command.join(" "),
                code,
                stderr,
                what: "the archive could not be restored into the scratch container",
            });
        }
        run_check(d, &name, ("TEND_DRILL_CONTAINER", &name)).await
    }
    .await;
    let removed = docker.remove_drill(&id, &name).await;
    let code = result?;
    removed.map_err(engine_err)?;
    Ok(DrillReport { archive: plan.archive, restored_into: name, entries: None, check_code: code, duration_ms: 0 })
}
