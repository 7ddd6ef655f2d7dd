//! Copies of a new archive: to another directory (copied under a temporary name, synced,
//! renamed) or over rsync, each verified by its checksum.

use std::path::{Path, PathBuf};

use tend_specs::backup::CopyTo;

use crate::backup::archive;
use crate::backup::catalog;

use super::error::{BackupError, io, stderr_tail};

/// Copies the archive and its manifest to another destination and checks the copy.
pub(crate) async fn copy_to(archive: &Path, rel: &Path, sha256: &str, to: CopyTo<'_>) -> Result<String, BackupError> {
    match to {
        CopyTo::Dir(dir) => {
            let (archive, target) = (archive.to_path_buf(), PathBuf::from(dir).join(rel));
            let sha = sha256.to_string();
            tokio::task::spawn_blocking(move || copy_file_verified(&archive, &target, &sha))
                .await
                .map_err(|source| BackupError::Task { what: "copy", source })?
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

pub(crate) fn copy_file_verified(archive: &Path, target: &Path, sha256: &str) -> Result<String, BackupError> {
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
