//! Copies on another host, through rsync: the command (over `ssh -o BatchMode=yes`, or
//! `RSYNC_RSH` when set), a listing of what a copy holds, and removing what retention drops
//! there. rsync is the only tool the far side needs; nothing is run there by hand.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tend_specs::calendar::LocalZone;

use super::catalog::{Listed, MANIFEST_SUFFIX, PIN_SUFFIX};

/// The longest listing read (a copy holding tens of thousands of archives fits).
const MAX_LISTING_BYTES: usize = 64 * 1024 * 1024;

/// Errors of talking to a copy through rsync.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// rsync could not be started.
    #[error("running rsync for {target}")]
    Spawn {
        /// The copy.
        target: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rsync failed.
    #[error("`rsync {what} {target}` exited with code {code}: {stderr}")]
    Failed {
        /// What it was asked to do.
        what: &'static str,
        /// The copy.
        target: String,
        /// Its exit code.
        code: i32,
        /// The end of its stderr.
        stderr: String,
    },
    /// The listing was larger than [`MAX_LISTING_BYTES`].
    #[error("the listing of {target} is larger than {MAX_LISTING_BYTES} bytes")]
    TooLarge {
        /// The copy.
        target: String,
    },
    /// A temporary directory could not be made.
    #[error("preparing the removal at {target}")]
    Scratch {
        /// The copy.
        target: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `rsync` with how to reach the other host: `RSYNC_RSH` when it is set (it says port, key and
/// options; `-e` would override it), else ssh that never prompts. Its value is not printed.
pub fn rsync() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("rsync");
    if std::env::var_os("RSYNC_RSH").is_none_or(|v| v.is_empty()) {
        c.args(["-e", "ssh -o BatchMode=yes"]);
    }
    c.stdin(std::process::Stdio::null());
    c
}

/// `DEST/ROOT/`, the directory rsync is pointed at.
fn at(dest: &str, root: &Path) -> String {
    let root = root.to_string_lossy();
    if root.is_empty() {
        format!("{}/", dest.trim_end_matches('/'))
    } else {
        format!("{}/{root}/", dest.trim_end_matches('/'))
    }
}

/// The end of a command's stderr, for a message.
fn tail(err: &[u8]) -> String {
    String::from_utf8_lossy(&err[err.len().saturating_sub(4096)..]).trim().to_string()
}

/// The regular files under `DEST/ROOT/` (paths relative to it); none when it does not exist.
pub async fn list(dest: &str, root: &Path, zone: &LocalZone) -> Result<Vec<Listed>, RemoteError> {
    let target = at(dest, root);
    let out = rsync()
        .args(["--list-only", "-r"])
        .arg(&target)
        .output()
        .await
        .map_err(|source| RemoteError::Spawn { target: target.clone(), source })?;
    if out.stdout.len() > MAX_LISTING_BYTES {
        return Err(RemoteError::TooLarge { target });
    }
    let code = out.status.code().unwrap_or(-1);
    let missing = String::from_utf8_lossy(&out.stderr).contains("No such file or directory");
    // 23: partial transfer, which is what rsync says of a directory that does not exist.
    if code == 23 && missing {
        return Ok(Vec::new());
    }
    if code != 0 {
        return Err(RemoteError::Failed { what: "--list-only", target, code, stderr: tail(&out.stderr) });
    }
    Ok(parse_listing(&String::from_utf8_lossy(&out.stdout), zone))
}

/// The regular files of `rsync --list-only -r` output: `PERMS SIZE YYYY/MM/DD HH:MM:SS PATH`,
/// the time in the local zone. Directories, links and lines that do not parse are skipped.
pub fn parse_listing(text: &str, zone: &LocalZone) -> Vec<Listed> {
    text.lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|line| {
            let mut rest = line;
            let mut field = || {
                let t = rest.trim_start();
                let end = t.find(' ').unwrap_or(t.len());
                let (f, r) = t.split_at(end);
                rest = r;
                f
            };
            let (_perms, _size, date, time) = (field(), field(), field(), field());
            let path = rest.strip_prefix(' ')?;
            let text = format!("{} {time}", date.replace('/', "-"));
            let modified = tend_specs::calendar::parse_time_in(&text, zone).ok()?;
            (!path.is_empty()).then(|| Listed { path: path.to_string(), modified })
        })
        .collect()
}

/// Removes `archives` (paths relative to `DEST/ROOT/`), with their manifests, from the copy.
/// rsync deletes, in the directories it is sent, what the sender lacks and the filter
/// includes: it is sent empty copies of exactly those directories, and a filter that
/// includes exactly those files, so nothing else there can be touched.
pub async fn remove(dest: &str, root: &Path, archives: &[PathBuf]) -> Result<(), RemoteError> {
    if archives.is_empty() {
        return Ok(());
    }
    let target = at(dest, root);
    let scratch = tempfile::tempdir().map_err(|source| RemoteError::Scratch { target: target.clone(), source })?;
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut files: Vec<String> = Vec::new();
    for a in archives {
        for d in a.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
        }
        let a = a.to_string_lossy();
        files.extend([a.to_string(), format!("{a}{MANIFEST_SUFFIX}"), format!("{a}{PIN_SUFFIX}")]);
    }
    for d in &dirs {
        std::fs::create_dir_all(scratch.path().join(d))
            .map_err(|source| RemoteError::Scratch { target: target.clone(), source })?;
    }
    let mut c = rsync();
    c.args(["-r", "--delete"]);
    for d in &dirs {
        c.arg(format!("--include=/{}/", d.display()));
    }
    for f in &files {
        c.arg(format!("--include=/{}", escape_filter(f)));
    }
    c.arg("--exclude=*");
    c.arg(format!("{}/", scratch.path().display())).arg(&target);
    let out = c.output().await.map_err(|source| RemoteError::Spawn { target: target.clone(), source })?;
    if !out.status.success() {
        return Err(RemoteError::Failed {
            what: "--delete",
            target,
            code: out.status.code().unwrap_or(-1),
            stderr: tail(&out.stderr),
        });
    }
    Ok(())
}

/// A path as an rsync filter pattern that matches only itself (`*?[\` escaped).
fn escape_filter(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_gives_its_files_with_their_local_times() {
        let utc = LocalZone::utc();
        let text = "drwxr-xr-x          4,096 2026/12/04 04:13:46 .\n\
                    drwxr-xr-x          4,096 2026/12/04 04:13:46 2026\n\
                    -rw-------         12,345 2026/12/04 04:13:46 2026/12/2026-12-04_db.tar.zst\n\
                    -rw-------            321 2026/12/04 04:13:47 2026/12/2026-12-04_db.tar.zst.manifest.json\n\
                    lrwxrwxrwx             10 2026/12/04 04:13:47 link -> elsewhere\n\
                    -rw-r--r--              2 2026/12/04 04:13:46 a name with spaces.zst\n\
                    garbage\n";
        let files = parse_listing(text, &utc);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["2026/12/2026-12-04_db.tar.zst", "2026/12/2026-12-04_db.tar.zst.manifest.json", "a name with spaces.zst"]
        );
        assert_eq!(files[0].modified.to_string(), "2026-12-04T04:13:46Z");
    }

    #[test]
    fn filter_patterns_match_only_the_path_itself() {
        assert_eq!(escape_filter("a/b[1]*?.zst"), "a/b\\[1]\\*\\?.zst");
        assert_eq!(at("nas:/b", Path::new("")), "nas:/b/");
        assert_eq!(at("nas:/b/", Path::new("db")), "nas:/b/db/");
    }
}
