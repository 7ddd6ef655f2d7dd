//! Restores: planned (which archive, which variables, what is moved aside) and checked
//! before anything stops, then carried out — paths extracted beside the data first and
//! swapped in by rename, dumps streamed into their restore command.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tend_specs::Desired;
use tend_specs::backup::SourceKind;
use tend_specs::calendar::Zoned;
use tend_specs::desired::Backup;
use tracing::{info, warn};

use crate::backup::archive::{self, ArchiveError};
use crate::backup::catalog::{self, EntryState, Manifest};
use crate::backup::quiesce;
use crate::engine::ContainerRuns;
use crate::engine::Engines;
use crate::engine::systemd::UnitEngine;
use crate::reconcile::model::instance_name;
use crate::support::now_ms;

use super::error::{io, stderr_tail};
use super::prune::archives;
use super::run::*;

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
pub(crate) fn check_vars(backup: &Backup, vars: &[(String, String)]) -> Result<(), BackupError> {
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
pub(crate) fn check_belongs(
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

pub(crate) fn restore_command(backup: &Backup, vars: &[(String, String)]) -> Result<Vec<String>, BackupError> {
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
        .map_err(|source| BackupError::Task { what: "verify", source })?
        .map_err(|e| unchanged(e.into()))?;
    exec_restore(engines, desired, backup, plan, vars, progress).await
}

/// Removes a scratch directory when dropped.
pub(crate) struct Scratch(PathBuf);

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
pub(crate) async fn paths_restore<E: ContainerRuns, U: UnitEngine>(
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
    let journal = quiesce::journal_path(&ctx.host.state_dir, &backup.name);
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
pub(crate) fn swap_in(plan: &RestorePlan, target: &Path, paths: &[PathBuf]) -> Result<(), BackupError> {
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
pub(crate) fn check_same_fs(scratch: &Path, paths: &[PathBuf]) -> Result<(), BackupError> {
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
pub(crate) async fn extract_checked(
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
        .map_err(|source| BackupError::Task { what: "restore", source })??;
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
pub(crate) fn restore_limits(
    backup: &Backup,
    plan: &RestorePlan,
    target: &Path,
) -> Result<archive::Limits, BackupError> {
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
pub(crate) const RESTORE_MARGIN: u64 = 1024 * 1024;

/// `path`, or its nearest ancestor that exists (where a new directory would be made).
pub(crate) fn nearest_existing(path: &Path) -> PathBuf {
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

pub(crate) fn scratch_dir(first: &Path) -> PathBuf {
    let parent = first.parent().unwrap_or(Path::new("/"));
    parent.join(format!(".tend-restore-{}", std::process::id()))
}

pub(crate) async fn exec_restore<E: ContainerRuns, U: UnitEngine>(
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

/// Decompresses `archive` into the standard input of `command`, run in `container` or on the
/// host. Returns the command's exit code and the end of its stderr.
pub(crate) async fn stream_into<E: ContainerRuns, U: UnitEngine>(
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
        let docker = engines.docker.as_deref().ok_or(BackupError::NoDocker)?;
        docker.exec_in(container, command, None, input).await?
    } else {
        let mut child = tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io("starting the restore command", Path::new(&command[0])))?;
        let mut stdin = child.stdin.take().ok_or(BackupError::Pipe("stdin"))?;
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
    match decompress.await.map_err(|source| BackupError::Task { what: "restore", source })? {
        // The command stopped reading because it failed: its own error says more.
        Err(ArchiveError::Output { .. }) if code != 0 => {}
        // A corrupt archive (checked before a byte is sent) wins over what it caused.
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    Ok((code, stderr))
}
