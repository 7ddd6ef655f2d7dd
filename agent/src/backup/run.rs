//! Backup runs: the orchestration around the archive engine ([`crate::backup`]). A run takes
//! the maintenance locks of the backup and of the services it quiesces (so the agent and
//! operators leave them alone), checks free space before stopping anything, quiesces
//! (journaled), archives, starts the services again whatever happened, writes the manifest,
//! makes the copies ([`super::copies`]) and applies retention ([`super::prune`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tend_specs::Desired;
use tend_specs::backup::{RunsIn, SourceKind};
use tend_specs::calendar::Zoned;
use tend_specs::desired::Backup;
use tracing::{info, warn};

use crate::backup::archive::{self, ArchiveError, ArchiveWriter, WriteOptions};
use crate::backup::catalog::{self, Manifest};
use crate::backup::quiesce::{self, QuiesceError};
use crate::engine::ContainerRuns;
use crate::engine::Engines;
use crate::engine::systemd::UnitEngine;
use crate::host::Host;
use crate::maintain::locks::{Exclusive, Holder};
use crate::reconcile::model::instance_name;
use crate::support::{chain, now_ms};

use super::copies::copy_to;
pub use super::error::BackupError;
use super::error::{io, stderr_tail};
use super::prune::apply_retention;

/// What a run works with: the host (scope, state directory with quiesce journals and run
/// history, maintenance locks) and the options of this run.
#[derive(Debug, Clone)]
pub struct Context {
    /// The host.
    pub host: Host,
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

pub(crate) fn take_locks(
    ctx: &Context,
    desired: &Desired,
    backup: &Backup,
    what: &str,
) -> Result<Exclusive, BackupError> {
    let (user, uid) = crate::maintain::locks::current_user();
    let holder = Holder {
        user: format!("{user} (tend {what} {})", backup.name),
        uid,
        pid: std::process::id(),
        reason: Some(format!("{what} {}", backup.name)),
        since_ms: now_ms(),
        until_ms: None,
    };
    ctx.host
        .locks
        .take_exclusive(&lock_keys(desired, backup), &holder, false)
        .map_err(|source| BackupError::Locked { backup: backup.name.clone(), source: Box::new(source) })
}

pub(crate) fn write_options(backup: &Backup, ctx: &Context) -> WriteOptions {
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
    for (b, r) in quiesce::recover(docker, systemd, Some(desired), &ctx.host.state_dir).await {
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
    record(&ctx.host.state_dir, name, Ok(&report));
    Ok(report)
}

/// `a/2026-11-22_db.tar.zst` with tag `061530` → `a/2026-11-22_db-061530.tar.zst`.
pub(crate) fn tagged(rel: &Path, tag: &str) -> PathBuf {
    let name = rel.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let (stem, ext) = match name.find(".tar.zst").or_else(|| name.rfind(".zst")) {
        Some(i) => name.split_at(i),
        None => (name.as_str(), ""),
    };
    rel.with_file_name(format!("{stem}-{tag}{ext}"))
}

pub(crate) fn join_paths(p: &[PathBuf]) -> String {
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Quiesce, archive, resume — resume whatever happened.
pub(crate) async fn quiesced_archive<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    ctx: &Context,
    paths: &[PathBuf],
    final_path: &Path,
    options: &WriteOptions,
) -> Result<archive::PathsReport, BackupError> {
    let journal = quiesce::journal_path(&ctx.host.state_dir, &backup.name);
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
            .map_err(|source| BackupError::Task { what: "archive", source })??;
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
pub(crate) struct ChannelReader {
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
pub(crate) async fn exec_archive<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    backup: &Backup,
    final_path: &Path,
    options: &WriteOptions,
) -> Result<archive::Written, BackupError> {
    let exec =
        backup.spec.source.exec.clone().ok_or_else(|| BackupError::Refused("the Backup has no exec source".into()))?;
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
    let w = writer.await.map_err(|source| BackupError::Task { what: "archive", source })??;
    if code != 0 {
        // Dropping the writer removes the partial file: no archive under a final name.
        drop(w);
        return Err(BackupError::Command { command, code, stderr, what: "no archive was kept" });
    }
    Ok(tokio::task::spawn_blocking(move || w.finish())
        .await
        .map_err(|source| BackupError::Task { what: "archive", source })??)
}

/// Runs a dump command in a service's container, or on the host, its stdout into `tx`.
pub(crate) async fn run_exec<E: ContainerRuns, U: UnitEngine>(
    engines: &Engines<E, U>,
    desired: &Desired,
    runs_in: RunsIn<'_>,
    command: &[String],
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<(i64, String), BackupError> {
    if let Some(s) = docker_service(desired, runs_in) {
        let docker = engines.docker.as_deref().ok_or(BackupError::NoDocker)?;
        let container = instance_name(&s.name, 1);
        return Ok(docker.exec_out(&container, command, None, tx).await?);
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
    let mut stdout = child.stdout.take().ok_or(BackupError::Pipe("stdout"))?;
    let mut stderr_pipe = child.stderr.take().ok_or(BackupError::Pipe("stderr"))?;
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

/// One line per run in `STATE/backups/NAME/history.jsonl`: for health in `tend status`.
pub(crate) fn record(state_dir: &Path, name: &str, result: Result<&RunReport, &str>) {
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

/// The Docker service a backup's command runs in, if it runs in one (not on the host, not as
/// a systemd service).
pub(crate) fn docker_service<'a>(desired: &'a Desired, runs_in: RunsIn<'_>) -> Option<&'a tend_specs::Service> {
    match runs_in {
        RunsIn::Service(s) => {
            desired.services.get(s).filter(|s| s.spec.runtime == tend_specs::service::Runtime::Docker)
        }
        RunsIn::Host => None,
    }
}

/// A pause for tests of interrupted runs: `TEND_FAULT_BACKUP_PAUSE=SECONDS` makes a run wait
/// after quiescing, before reading a byte (a window in which to kill it).
pub fn fault_pause() -> Option<Duration> {
    std::env::var("TEND_FAULT_BACKUP_PAUSE").ok().and_then(|s| s.parse().ok()).map(Duration::from_secs)
}
