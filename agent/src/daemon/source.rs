//! Spec sources: a local directory (used in place) or a git repository (polled; each new
//! commit checked out whole into its own directory, validated by the caller, then switched to
//! atomically).
//!
//! A [`GitSource`] keeps everything under its work directory (the agent passes
//! `STATE_DIR/git`, mode 0700):
//! - `mirror.git`: a bare repository into which the followed ref is fetched;
//! - `checkouts/COMMIT`: one complete tree per commit, written as `checkouts/.tmp-COMMIT`
//!   and renamed, so a directory under its final name is always whole;
//! - `current`, `previous`: symlinks to the promoted checkout and the one before it, replaced
//!   by rename, so a kill at any point leaves the old link or the new one;
//! - `lock`: an flock held while a poll or a promotion changes the directory, so two tend
//!   processes never interleave (leftovers of a killed one are removed under it).
//!
//! Secrets never reach argv, logs or errors: a token is read from its file on every poll and
//! handed to git through `GIT_CONFIG_*` environment variables, and every message shows the
//! URL with its password replaced by `***` and git's own output scrubbed of both.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tracing::Instrument;

use crate::support::{chain, short};

/// How long one git command may run before it is killed.
const GIT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The bare repository the ref is fetched into.
const MIRROR: &str = "mirror.git";
/// The directory holding one checkout per commit.
const CHECKOUTS: &str = "checkouts";
/// The symlink to the promoted checkout.
const CURRENT: &str = "current";
/// The symlink to the checkout promoted before the current one.
const PREVIOUS: &str = "previous";
/// The flock guarding changes to the work directory.
const LOCK: &str = "lock";
/// How often, and how long apart, taking the work directory's lock is tried.
const LOCK_TRIES: u32 = 100;
const LOCK_RETRY: Duration = Duration::from_millis(10);
/// Prefix of anything written under a temporary name (removed when found stale).
const TMP: &str = ".tmp-";
/// How much of git's error output an error message carries.
const MAX_STDERR: usize = 2000;
/// Transports git may use: no `ext::` commands, no other helpers.
const ALLOWED_PROTOCOLS: &str = "file:git:ssh:https:http";

/// Errors of spec sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The git source's settings cannot work.
    #[error("git source {url}: {problem}")]
    Config {
        /// The repository (redacted).
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// A file or directory of the work directory could not be created, read or changed.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("creating", "renaming a checkout to", …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another tend process is polling or promoting in the same work directory.
    #[error("git source work directory {path} is in use by another tend process")]
    Busy {
        /// The work directory.
        path: PathBuf,
    },
    /// The token file could not be read, or is empty.
    #[error("reading token file {path} for {url}")]
    TokenFile {
        /// The token file (its content is never shown).
        path: PathBuf,
        /// The repository (redacted).
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// git could not be started.
    #[error("starting git for {op} {reference} of {url}")]
    Spawn {
        /// What git was to do.
        op: &'static str,
        /// The ref followed.
        reference: GitRef,
        /// The repository (redacted).
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// git ran past its time limit (5 minutes) and was killed.
    #[error("{op} {reference} of {url}: git ran longer than {}s and was killed", limit.as_secs())]
    Timeout {
        /// What git was doing.
        op: &'static str,
        /// The ref followed.
        reference: GitRef,
        /// The repository (redacted).
        url: String,
        /// The limit.
        limit: Duration,
    },
    /// git failed; its error output (scrubbed of secrets) says why.
    #[error("{op} {reference} of {url} failed: {stderr}")]
    Git {
        /// What git was doing.
        op: &'static str,
        /// The ref followed.
        reference: GitRef,
        /// The repository (redacted).
        url: String,
        /// git's error output, secrets replaced by `***`, on one line.
        stderr: String,
    },
    /// A revision handed to [`GitSource::promote`] is not a checkout of this source.
    #[error("{dir} is not a checkout of git source {url}")]
    NotACheckout {
        /// The revision's directory.
        dir: PathBuf,
        /// The repository (redacted).
        url: String,
    },
}

impl SourceError {
    /// A fixed name of the kind of error, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config { .. } | Self::TokenFile { .. } => "config",
            Self::Io { .. } => "io",
            Self::Busy { .. } => "busy",
            Self::Spawn { .. } => "spawn",
            Self::Timeout { .. } => "timeout",
            Self::Git { op, .. } if *op == OP_FETCH => "fetch",
            Self::Git { .. } => "git",
            Self::NotACheckout { .. } => "not_a_checkout",
        }
    }
}

const OP_INIT: &str = "initializing the mirror for";
const OP_FETCH: &str = "fetching";
const OP_RESOLVE: &str = "resolving";
const OP_CHECKOUT: &str = "checking out";

/// A git source's settings (the agent maps its config file into this).
#[derive(Clone)]
pub struct GitConfig {
    /// The repository: `file:///srv/specs.git`, `git://host/specs.git`, `ssh://…`,
    /// `git@host:path`, `https://…`. A password in it works but shows in `ps`: prefer
    /// `token_file`.
    pub url: String,
    /// What to follow.
    pub reference: GitRef,
    /// The sub-directory of the repository holding the specs (relative, without `..`).
    pub path: Option<PathBuf>,
    /// How often the agent polls.
    pub interval: Duration,
    /// A private key file for ssh URLs.
    pub ssh_key: Option<PathBuf>,
    /// A file holding an HTTPS token, read on every poll: a bare token is sent as
    /// `Authorization: Bearer TOKEN`, a `user:token` line as HTTP Basic.
    pub token_file: Option<PathBuf>,
}

/// Shows the URL redacted: a `Debug` dump must not leak a password.
impl fmt::Debug for GitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitConfig")
            .field("url", &redact_url(&self.url))
            .field("reference", &self.reference)
            .field("path", &self.path)
            .field("interval", &self.interval)
            .field("ssh_key", &self.ssh_key)
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// The ref a git source follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    /// A branch: its newest commit.
    Branch(String),
    /// A tag (lightweight or annotated): the commit it points at, followed when it moves.
    Tag(String),
}

impl GitRef {
    /// The ref's name without its kind.
    fn name(&self) -> &str {
        match self {
            Self::Branch(n) | Self::Tag(n) => n,
        }
    }

    /// The full ref name, as fetched into the mirror.
    fn full(&self) -> String {
        match self {
            Self::Branch(n) => format!("refs/heads/{n}"),
            Self::Tag(n) => format!("refs/tags/{n}"),
        }
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Branch(n) => write!(f, "branch {n}"),
            Self::Tag(n) => write!(f, "tag {n}"),
        }
    }
}

/// One checked-out revision of the specs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// The directory to load specs from (for git: the checkout joined with `path`).
    pub dir: PathBuf,
    /// The full commit id (`None` for directory sources).
    pub commit: Option<String>,
}

/// A git repository polled for new commits of one ref; see the module docs.
#[derive(Debug)]
pub struct GitSource {
    config: GitConfig,
    /// `config.path`, normalized (no `.` components); empty for the repository's root.
    subdir: PathBuf,
    work_dir: PathBuf,
    /// The URL for messages.
    shown_url: String,
    /// The last commit rejected: not offered again while the ref points at it.
    rejected: Option<String>,
}

/// What a git command needs beyond its arguments: configuration passed through the
/// environment, and the strings to scrub from its output.
struct GitEnv {
    config: Vec<(String, String)>,
    secrets: Vec<String>,
}

impl GitSource {
    /// `work_dir` is where the source keeps its mirror and checkouts (the agent passes
    /// `STATE_DIR/git`). Creates it (0700) as needed and removes leftovers of a killed
    /// process. Does no network I/O.
    pub fn new(config: GitConfig, work_dir: PathBuf) -> Result<Self, SourceError> {
        let shown_url = redact_url(&config.url);
        let problem = |problem: String| SourceError::Config { url: shown_url.clone(), problem };
        check_url(&config).map_err(problem)?;
        check_ref_name(config.reference.name())
            .map_err(|p| problem(format!("{} is not a valid ref name: {p}", config.reference)))?;
        let subdir = match &config.path {
            Some(p) => check_subdir(p).map_err(problem)?,
            None => PathBuf::new(),
        };
        if config.interval.is_zero() {
            return Err(problem("the poll interval must be longer than zero".into()));
        }
        for dir in [work_dir.clone(), work_dir.join(CHECKOUTS)] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|source| SourceError::Io {
                action: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        let source = Self { config, subdir, work_dir, shown_url, rejected: None };
        // Another process may be using the directory right now: its temporary files are not
        // leftovers then, and it cleans up after itself.
        if let Ok(_lock) = source.lock() {
            source.remove_leftovers();
        }
        Ok(source)
    }

    /// The revision that was last promoted (survives restarts: read from the `current`
    /// symlink in the work directory), if any.
    pub fn current(&self) -> Option<Revision> {
        let commit = self.link_target(CURRENT)?;
        let checkout = self.checkout_dir(&commit);
        checkout.is_dir().then(|| self.revision(&commit))
    }

    /// Fetches the ref. When it points at a commit other than the current one (and other
    /// than the last commit [`reject`](Self::reject)ed), checks that commit out whole into
    /// `checkouts/COMMIT` and returns it as a candidate; `None` when there is nothing new.
    /// A fetch failure is an error: the caller keeps its last good set and retries.
    pub async fn poll(&mut self) -> Result<Option<Revision>, SourceError> {
        let span = tracing::info_span!("git_poll", url = %self.shown_url, reference = %self.config.reference);
        let result = self.poll_locked().instrument(span.clone()).await;
        if let Err(e) = &result {
            span.in_scope(|| tracing::warn!(error = %chain(e), "polling the git source failed"));
        }
        result
    }

    /// The candidate was validated: switches `current` to it atomically and removes old
    /// checkouts, keeping the current one and the previous one.
    pub fn promote(&mut self, rev: &Revision) -> Result<(), SourceError> {
        let commit = self.commit_of(rev)?;
        let _lock = self.lock()?;
        let old = self.link_target(CURRENT);
        if old.as_deref() == Some(commit.as_str()) {
            return Ok(());
        }
        if let Some(old) = &old {
            self.replace_link(PREVIOUS, old)?;
        }
        self.replace_link(CURRENT, &commit)?;
        if self.rejected.as_deref() == Some(commit.as_str()) {
            self.rejected = None;
        }
        tracing::info!(
            url = %self.shown_url,
            reference = %self.config.reference,
            commit = short(&commit),
            previous = old.as_deref().map(short),
            "switched to a new commit of the specs"
        );
        self.remove_old_checkouts();
        Ok(())
    }

    /// The candidate was rejected (invalid specs): polls do not return its commit again
    /// until the ref moves. Its checkout is removed unless it is the current or the previous
    /// one (a revert to the previous commit).
    pub fn reject(&mut self, rev: &Revision) {
        let Ok(commit) = self.commit_of(rev) else {
            tracing::warn!(dir = %rev.dir.display(), "rejecting a revision that is not a checkout of this git source");
            return;
        };
        tracing::warn!(
            url = %self.shown_url,
            reference = %self.config.reference,
            commit = short(&commit),
            "the commit's specs were rejected; keeping the last good ones until the ref moves"
        );
        let kept = [self.link_target(CURRENT), self.link_target(PREVIOUS)];
        if !kept.iter().any(|k| k.as_deref() == Some(commit.as_str()))
            && let Ok(_lock) = self.lock()
        {
            remove_dir_logged(&self.checkout_dir(&commit));
        }
        self.rejected = Some(commit);
    }

    /// The polling interval.
    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    async fn poll_locked(&mut self) -> Result<Option<Revision>, SourceError> {
        let _lock = self.lock_async().await?;
        self.remove_leftovers();
        let env = self.git_env()?;
        self.ensure_mirror(&env).await?;
        let mirror = self.work_dir.join(MIRROR);
        let full = self.config.reference.full();
        let refspec = format!("+{full}:{full}");
        self.git(
            OP_FETCH,
            &[
                OsStr::new("--git-dir"),
                mirror.as_os_str(),
                OsStr::new("fetch"),
                OsStr::new("--quiet"),
                OsStr::new("--no-tags"),
                OsStr::new("--no-write-fetch-head"),
                OsStr::new("--end-of-options"),
                OsStr::new(&self.config.url),
                OsStr::new(&refspec),
            ],
            &env,
            None,
        )
        .await?;
        let peeled = format!("{full}^{{commit}}");
        let out = self
            .git(
                OP_RESOLVE,
                &[
                    OsStr::new("--git-dir"),
                    mirror.as_os_str(),
                    OsStr::new("rev-parse"),
                    OsStr::new("--verify"),
                    OsStr::new("--end-of-options"),
                    OsStr::new(&peeled),
                ],
                &env,
                None,
            )
            .await?;
        let commit = String::from_utf8_lossy(&out).trim().to_string();
        if !is_commit_id(&commit) {
            return Err(self.git_error(OP_RESOLVE, format!("unexpected output {commit:?}")));
        }
        if self.current().and_then(|c| c.commit).as_deref() == Some(commit.as_str()) {
            tracing::debug!(commit = short(&commit), "no new commit");
            return Ok(None);
        }
        if self.rejected.as_deref() == Some(commit.as_str()) {
            tracing::debug!(commit = short(&commit), "the ref still points at the rejected commit");
            return Ok(None);
        }
        let checkout = self.checkout_dir(&commit);
        if !checkout.is_dir() {
            self.check_out(&commit, &env).await?;
        }
        tracing::info!(commit = short(&commit), "fetched a new commit");
        Ok(Some(self.revision(&commit)))
    }

    /// Creates the bare mirror once, under a temporary name, so it exists whole or not at all.
    async fn ensure_mirror(&self, env: &GitEnv) -> Result<(), SourceError> {
        let mirror = self.work_dir.join(MIRROR);
        if mirror.join("HEAD").is_file() {
            return Ok(());
        }
        let tmp = self.work_dir.join(format!("{TMP}{MIRROR}"));
        self.git(
            OP_INIT,
            &[
                OsStr::new("init"),
                OsStr::new("--quiet"),
                OsStr::new("--bare"),
                // No sample hooks: nothing in the mirror should ever run.
                OsStr::new("--template="),
                tmp.as_os_str(),
            ],
            env,
            None,
        )
        .await?;
        fs::rename(&tmp, &mirror).map_err(|source| SourceError::Io { action: "creating", path: mirror, source })?;
        sync_dir(&self.work_dir)
    }

    /// Checks `commit` out whole into `checkouts/.tmp-COMMIT`, syncs it to disk, and renames
    /// it to `checkouts/COMMIT`.
    async fn check_out(&self, commit: &str, env: &GitEnv) -> Result<(), SourceError> {
        let checkouts = self.work_dir.join(CHECKOUTS);
        let tmp = checkouts.join(format!("{TMP}{commit}"));
        let index = self.work_dir.join(format!("{TMP}index"));
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| SourceError::Io { action, path, source }
        };
        fs::create_dir(&tmp).map_err(io_err("creating", &tmp))?;
        let mirror = self.work_dir.join(MIRROR);
        // A fresh index of our own: `read-tree -u` writes exactly the commit's tree (modes and
        // symlinks included, no `.git`), which `git archive` would not (export-ignore).
        self.git(
            OP_CHECKOUT,
            &[
                OsStr::new("--git-dir"),
                mirror.as_os_str(),
                OsStr::new("--work-tree"),
                tmp.as_os_str(),
                OsStr::new("read-tree"),
                OsStr::new("-u"),
                OsStr::new("--reset"),
                OsStr::new("--end-of-options"),
                OsStr::new(commit),
            ],
            env,
            Some(&index),
        )
        .await?;
        let _ = fs::remove_file(&index);
        let synced = tmp.clone();
        tokio::task::spawn_blocking(move || sync_tree(&synced))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(io_err("syncing", &tmp))?;
        let dir = self.checkout_dir(commit);
        fs::rename(&tmp, &dir).map_err(io_err("renaming a checkout to", &dir))?;
        sync_dir(&checkouts)
    }

    /// Runs git with the source's environment; its standard output, or an error naming the
    /// operation with git's scrubbed error output.
    async fn git(
        &self,
        op: &'static str,
        args: &[&OsStr],
        env: &GitEnv,
        index: Option<&Path>,
    ) -> Result<Vec<u8>, SourceError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(args)
            .current_dir(&self.work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so a timeout also kills git's helpers (ssh,
            // git-remote-https, index-pack).
            .process_group(0);
        for var in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_OBJECT_DIRECTORY",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            "GIT_NAMESPACE",
            "GIT_CONFIG_PARAMETERS",
            "GIT_TRACE",
            "GIT_TRACE_CURL",
            "GIT_TRACE_PACKET",
            "GIT_CURL_VERBOSE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("GCM_INTERACTIVE", "never")
            .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
            .env("GIT_CONFIG_COUNT", env.config.len().to_string());
        for (i, (key, value)) in env.config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), key).env(format!("GIT_CONFIG_VALUE_{i}"), value);
        }
        match &self.config.ssh_key {
            Some(key) => {
                cmd.env("GIT_SSH_COMMAND", ssh_command(key));
            }
            // Never a passphrase or host-key prompt on a terminal tend happens to run on.
            None if is_ssh(&self.config.url) && std::env::var_os("GIT_SSH_COMMAND").is_none() => {
                cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
            }
            None => {}
        }
        if let Some(index) = index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        let child = cmd.spawn().map_err(|source| SourceError::Spawn {
            op,
            reference: self.config.reference.clone(),
            url: self.shown_url.clone(),
            source,
        })?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        let output = match tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output()).await {
            Ok(output) => output.map_err(|source| SourceError::Spawn {
                op,
                reference: self.config.reference.clone(),
                url: self.shown_url.clone(),
                source,
            })?,
            Err(_) => {
                // Dropping the child killed git itself; its helpers are in its group.
                if let Some(pid) =
                    pgid.and_then(rustix::process::Pid::from_raw).filter(|p| p.as_raw_nonzero().get() > 1)
                {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                return Err(SourceError::Timeout {
                    op,
                    reference: self.config.reference.clone(),
                    url: self.shown_url.clone(),
                    limit: GIT_TIMEOUT,
                });
            }
        };
        if output.status.success() {
            return Ok(output.stdout);
        }
        let stderr = one_line(&scrub(&String::from_utf8_lossy(&output.stderr), &self.config.url, &env.secrets));
        let stderr = if stderr.is_empty() { format!("git exited with {}", output.status) } else { stderr };
        Err(self.git_error(op, stderr))
    }

    fn git_error(&self, op: &'static str, stderr: String) -> SourceError {
        SourceError::Git { op, reference: self.config.reference.clone(), url: self.shown_url.clone(), stderr }
    }

    /// The configuration and secrets of this poll's git commands. The token file is read
    /// every time, so a rotated token is used without a restart.
    fn git_env(&self) -> Result<GitEnv, SourceError> {
        let mut env = GitEnv {
            config: vec![
                // Garbage collection in the foreground, within the timeout and under our lock.
                ("gc.autoDetach".into(), "false".into()),
                ("maintenance.autoDetach".into(), "false".into()),
            ],
            secrets: url_secrets(&self.config.url),
        };
        if let Some(path) = &self.config.token_file {
            let token_err = |source| SourceError::TokenFile { path: path.clone(), url: self.shown_url.clone(), source };
            // A regular file with a cap, like every secret tend reads.
            let content = tend_specs::files::read(path, tend_specs::files::SECRET)
                .map_err(|e| token_err(io::Error::new(io::ErrorKind::InvalidInput, e.reason())))?;
            let content = String::from_utf8(content)
                .map_err(|_| token_err(io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8")))?;
            let token = content.trim();
            if token.is_empty() {
                return Err(token_err(io::Error::new(io::ErrorKind::InvalidData, "the file is empty")));
            }
            if token.contains(['\n', '\r']) {
                return Err(token_err(io::Error::new(io::ErrorKind::InvalidData, "the file holds more than one line")));
            }
            let credentials = if token.contains(':') {
                let encoded = base64(token.as_bytes());
                env.secrets.push(encoded.clone());
                if let Some((_, secret)) = token.split_once(':') {
                    env.secrets.push(secret.to_string());
                }
                format!("Basic {encoded}")
            } else {
                format!("Bearer {token}")
            };
            env.secrets.push(token.to_string());
            // Scoped to the repository's host: a redirect elsewhere does not get the token.
            env.config.push((
                format!("http.{}.extraHeader", url_origin(&self.config.url)),
                format!("Authorization: {credentials}"),
            ));
        }
        // Longest first, so a secret containing another is replaced whole.
        env.secrets.retain(|s| !s.is_empty());
        env.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(env)
    }

    /// The flock on the work directory; `Busy` when another process holds it.
    ///
    /// A process forked by another thread (any spawn, between fork and exec) briefly shares
    /// the lock's file description and so holds the flock for a moment: retry a little
    /// before calling the directory busy.
    fn lock(&self) -> Result<File, SourceError> {
        for _ in 0..LOCK_TRIES {
            if let Some(file) = self.try_lock()? {
                return Ok(file);
            }
            std::thread::sleep(LOCK_RETRY);
        }
        Err(SourceError::Busy { path: self.work_dir.clone() })
    }

    /// [`lock`](Self::lock) without blocking the runtime's thread.
    async fn lock_async(&self) -> Result<File, SourceError> {
        for _ in 0..LOCK_TRIES {
            if let Some(file) = self.try_lock()? {
                return Ok(file);
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
        Err(SourceError::Busy { path: self.work_dir.clone() })
    }

    /// The flock on the work directory, or `None` when another process holds it.
    fn try_lock(&self) -> Result<Option<File>, SourceError> {
        let path = self.work_dir.join(LOCK);
        let io_err = |source| SourceError::Io { action: "locking", path: path.clone(), source };
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(io_err(e)),
        }
    }

    /// Removes what a killed process left under temporary names, and git's lock files in the
    /// mirror (git leaves them when killed, and would then refuse to fetch). Holds the lock.
    fn remove_leftovers(&self) {
        for dir in [self.work_dir.clone(), self.work_dir.join(CHECKOUTS)] {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(TMP) {
                    remove_any_logged(&entry.path());
                }
            }
        }
        let mirror = self.work_dir.join(MIRROR);
        for name in ["HEAD.lock", "config.lock", "packed-refs.lock", "shallow.lock", "index.lock", "gc.pid"] {
            let path = mirror.join(name);
            if path.exists() {
                remove_any_logged(&path);
            }
        }
        remove_ref_locks(&mirror.join("refs"));
    }

    /// Removes checkouts other than the current and the previous one. Holds the lock.
    fn remove_old_checkouts(&self) {
        let kept = [self.link_target(CURRENT), self.link_target(PREVIOUS)];
        let Ok(entries) = fs::read_dir(self.work_dir.join(CHECKOUTS)) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !kept.iter().flatten().any(|k| OsStr::new(k) == name) {
                remove_any_logged(&entry.path());
            }
        }
    }

    /// Points symlink `name` at `checkouts/COMMIT`: a new link under a temporary name,
    /// renamed over the old one, and the directory synced.
    fn replace_link(&self, name: &str, commit: &str) -> Result<(), SourceError> {
        let link = self.work_dir.join(name);
        let tmp = self.work_dir.join(format!("{TMP}{name}"));
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| SourceError::Io { action, path, source }
        };
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("removing", &tmp)(e)),
            _ => {}
        }
        std::os::unix::fs::symlink(Path::new(CHECKOUTS).join(commit), &tmp).map_err(io_err("creating", &tmp))?;
        fs::rename(&tmp, &link).map_err(io_err("replacing", &link))?;
        sync_dir(&self.work_dir)
    }

    /// The commit a symlink of the work directory points at, if it is one of ours.
    fn link_target(&self, name: &str) -> Option<String> {
        let target = fs::read_link(self.work_dir.join(name)).ok()?;
        let mut parts = target.components();
        let ok = parts.next() == Some(Component::Normal(OsStr::new(CHECKOUTS)));
        let commit = parts.next()?.as_os_str().to_str()?.to_string();
        (ok && parts.next().is_none() && is_commit_id(&commit)).then_some(commit)
    }

    /// The commit of a revision of this source, whose checkout exists.
    fn commit_of(&self, rev: &Revision) -> Result<String, SourceError> {
        match &rev.commit {
            Some(c) if is_commit_id(c) && rev.dir == self.revision(c).dir && self.checkout_dir(c).is_dir() => {
                Ok(c.clone())
            }
            _ => Err(SourceError::NotACheckout { dir: rev.dir.clone(), url: self.shown_url.clone() }),
        }
    }

    fn checkout_dir(&self, commit: &str) -> PathBuf {
        self.work_dir.join(CHECKOUTS).join(commit)
    }

    fn revision(&self, commit: &str) -> Revision {
        let checkout = self.checkout_dir(commit);
        let dir = if self.subdir.as_os_str().is_empty() { checkout } else { checkout.join(&self.subdir) };
        Revision { dir, commit: Some(commit.to_string()) }
    }
}

/// A URL with any password/token in its userinfo replaced by `***`, for messages. A user
/// name alone is kept, except in http(s) URLs, where it is often a token
/// (`https://TOKEN@host/…`).
pub fn redact_url(url: &str) -> String {
    match split_userinfo(url) {
        Some((before, userinfo, after)) => {
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None if is_http(url) => "***".to_string(),
                None => return url.to_string(),
            };
            format!("{before}{shown}{after}")
        }
        None => url.to_string(),
    }
}

/// `(scheme://, userinfo, @rest)` of a URL with userinfo (RFC 3986: the authority ends at the
/// first `/`, `?` or `#`; userinfo is what precedes its last `@`).
fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    Some((&url[..start], &rest[..at], &rest[at..]))
}

fn is_http(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn is_ssh(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if ["ssh://", "git+ssh://", "ssh+git://"].iter().any(|s| lower.starts_with(s)) {
        return true;
    }
    // scp-like `[user@]host:path`: a colon before any slash, and no scheme.
    !url.contains("://") && url.find(':').is_some_and(|c| url.find('/').is_none_or(|s| c < s))
}

/// The secrets of a URL, raw and percent-decoded: its password, or in http(s) a lone user
/// name.
fn url_secrets(url: &str) -> Vec<String> {
    let Some((_, userinfo, _)) = split_userinfo(url) else { return Vec::new() };
    let secret = match userinfo.split_once(':') {
        Some((_, password)) => password,
        None if is_http(url) => userinfo,
        None => return Vec::new(),
    };
    vec![secret.to_string(), percent_decode(secret)]
}

/// `scheme://host[:port]/` of a URL, without userinfo: the scope of the token's header.
fn url_origin(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = rest[..end].rsplit_once('@').map_or(&rest[..end], |(_, h)| h);
    format!("{}{host}/", &url[..start])
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding (for an HTTP Basic header).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `text` with the raw URL shown redacted and every secret replaced by `***`.
fn scrub(text: &str, url: &str, secrets: &[String]) -> String {
    let mut text = text.replace(url, &redact_url(url));
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

/// git's error output on one line, without its boilerplate, cut to [`MAX_STDERR`] characters.
fn one_line(text: &str) -> String {
    const BOILERPLATE: [&str; 2] =
        ["Please make sure you have the correct access rights", "and the repository exists."];
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !BOILERPLATE.contains(l))
        .collect::<Vec<_>>()
        .join("; ");
    match line.char_indices().nth(MAX_STDERR) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// `GIT_SSH_COMMAND` for a key file: run by a shell, so the path is single-quoted.
fn ssh_command(key: &Path) -> OsString {
    let quoted = key.to_string_lossy().replace('\'', r"'\''");
    OsString::from(format!("ssh -i '{quoted}' -o IdentitiesOnly=yes -o BatchMode=yes"))
}

/// Checks a URL before git sees it.
fn check_url(config: &GitConfig) -> Result<(), String> {
    let url = &config.url;
    if url.is_empty() {
        return Err("the URL is empty".into());
    }
    if url.starts_with('-') {
        return Err("the URL must not start with `-`".into());
    }
    if url.chars().any(char::is_control) {
        return Err("the URL holds a control character".into());
    }
    if let Some(scheme) = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase())
        && !["file", "git", "ssh", "git+ssh", "ssh+git", "http", "https"].contains(&scheme.as_str())
    {
        return Err(format!("URL scheme `{scheme}` is not supported (file, git, ssh, http, https)"));
    }
    if config.token_file.is_some() && !url.to_ascii_lowercase().starts_with("https://") {
        return Err("tokenFile is sent only over https:// URLs".into());
    }
    if config.ssh_key.is_some() && !is_ssh(url) {
        return Err("sshKey applies only to ssh URLs (ssh://… or user@host:path)".into());
    }
    Ok(())
}

/// Checks a branch or tag name by git's rules (check-ref-format), so that it can only name
/// that one ref in a refspec.
fn check_ref_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.starts_with('-') {
        return Err("it starts with `-`");
    }
    if name == "@" || name.contains("@{") {
        return Err("it is `@` or contains `@{`");
    }
    if name.contains("..") {
        return Err("it contains `..`");
    }
    if name.chars().any(|c| c.is_ascii_control() || c.is_whitespace() || "~^:?*[\\".contains(c)) {
        return Err("it contains a space, a control character or one of ~ ^ : ? * [ \\");
    }
    if name.split('/').any(|part| part.is_empty() || part.starts_with('.') || part.ends_with(".lock")) {
        return Err("a `/`-separated part is empty, starts with `.` or ends with `.lock`");
    }
    if name.ends_with('.') {
        return Err("it ends with `.`");
    }
    Ok(())
}

/// The repository sub-directory, normalized: relative, without `..`.
fn check_subdir(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("path {} must not contain `..`", path.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("path {} must be relative to the repository's root", path.display()));
            }
        }
    }
    Ok(out)
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sync_dir(dir: &Path) -> Result<(), SourceError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| SourceError::Io {
        action: "syncing",
        path: dir.to_path_buf(),
        source,
    })
}

/// fsyncs every file and directory under `dir`, so a renamed checkout survives a power loss
/// whole.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

/// Removes `*.lock` files under the mirror's refs.
fn remove_ref_locks(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_ref_locks(&path);
        } else if path.extension() == Some(OsStr::new("lock")) {
            remove_any_logged(&path);
        }
    }
}

fn remove_any_logged(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    if let Err(e) = result
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove an old file of the git source");
    }
}

fn remove_dir_logged(path: &Path) {
    if path.is_dir() {
        remove_any_logged(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_and_http_tokens_only() {
        for (url, shown) in [
            ("https://user:s3cret@git.example.org/x.git", "https://user:***@git.example.org/x.git"),
            ("https://ghp_abc@github.com/o/r.git", "https://***@github.com/o/r.git"),
            ("HTTP://u:p@h:8080/r", "HTTP://u:***@h:8080/r"),
            ("ssh://git@host/r.git", "ssh://git@host/r.git"),
            ("ssh://git:pw@host:22/r.git", "ssh://git:***@host:22/r.git"),
            ("git@host:r.git", "git@host:r.git"),
            ("file:///srv/specs.git", "file:///srv/specs.git"),
            ("https://host/path/@scope/r.git", "https://host/path/@scope/r.git"),
            ("https://u:p%40ss@host/r", "https://u:***@host/r"),
            ("https://a@b:c@host/r", "https://a@b:***@host/r"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn scrub_removes_the_raw_url_and_every_secret() {
        let url = "https://user:p%40ss@h/r.git";
        let secrets = url_secrets(url);
        assert_eq!(secrets, ["p%40ss", "p@ss"]);
        let text = scrub("fatal: https://user:p%40ss@h/r.git: auth for user p@ss", url, &secrets);
        assert_eq!(text, "fatal: https://user:***@h/r.git: auth for user ***");
    }

    #[test]
    fn subdir_must_be_relative_without_parent_components() {
        assert_eq!(check_subdir(Path::new("hosts/vm-a")), Ok(PathBuf::from("hosts/vm-a")));
        assert_eq!(check_subdir(Path::new("./hosts/./vm-a/")), Ok(PathBuf::from("hosts/vm-a")));
        assert_eq!(check_subdir(Path::new(".")), Ok(PathBuf::new()));
        assert!(check_subdir(Path::new("/etc/tend")).is_err());
        assert!(check_subdir(Path::new("hosts/../../etc")).is_err());
        assert!(check_subdir(Path::new("..")).is_err());
    }

    #[test]
    fn ref_names_follow_gits_rules() {
        for ok in ["main", "release/1.2", "v12", "feature/x-y_z"] {
            assert_eq!(check_ref_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a:b", "a^", "a~1", "a*", "a[", "a\\b", "/a", "a/", "a//b", ".a", "a/.b",
            "a.lock", "a.", "@", "a@{1}", "a\nb",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        for (input, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("x-access-token:abc", "eC1hY2Nlc3MtdG9rZW46YWJj"),
        ] {
            assert_eq!(base64(input.as_bytes()), encoded, "{input}");
        }
    }

    #[test]
    fn the_token_header_is_scoped_to_the_repositorys_origin() {
        assert_eq!(url_origin("https://git.example.org/ops/specs.git"), "https://git.example.org/");
        assert_eq!(url_origin("https://u:p@h:8443/x"), "https://h:8443/");
    }

    #[test]
    fn ssh_urls_are_recognized_in_both_syntaxes() {
        for url in ["ssh://git@h/r", "git+ssh://h/r", "git@h:r.git", "h:path/r"] {
            assert!(is_ssh(url), "{url}");
        }
        for url in ["https://h/r", "file:///srv/r", "/srv/r:x", "git://h/r"] {
            assert!(!is_ssh(url), "{url}");
        }
    }

    #[test]
    fn a_token_goes_into_a_header_scoped_to_the_host_and_into_the_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        let source = |token: &str| {
            std::fs::write(&token_file, token).expect("token file");
            let config = GitConfig {
                url: "https://git.example.org/ops/specs.git".into(),
                reference: GitRef::Branch("main".into()),
                path: None,
                interval: Duration::from_secs(60),
                ssh_key: None,
                token_file: Some(token_file.clone()),
            };
            GitSource::new(config, dir.path().join("git")).expect("source").git_env().expect("env")
        };
        let key = "http.https://git.example.org/.extraHeader".to_string();
        let env = source("tok123\n");
        assert!(env.config.contains(&(key.clone(), "Authorization: Bearer tok123".into())), "{:?}", env.config);
        assert_eq!(env.secrets, ["tok123"]);
        let env = source("x-access-token:abc\n");
        let header = "Authorization: Basic eC1hY2Nlc3MtdG9rZW46YWJj".to_string();
        assert!(env.config.contains(&(key, header)), "{:?}", env.config);
        assert_eq!(env.secrets, ["eC1hY2Nlc3MtdG9rZW46YWJj", "x-access-token:abc", "abc"]);
    }

    #[test]
    fn a_token_file_that_is_not_a_small_regular_file_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 70_000]).expect("write");
        for path in [PathBuf::from("/dev/zero"), big] {
            let config = GitConfig {
                url: "https://git.example.org/ops/specs.git".into(),
                reference: GitRef::Branch("main".into()),
                path: None,
                interval: Duration::from_secs(60),
                ssh_key: None,
                token_file: Some(path.clone()),
            };
            let source = GitSource::new(config, dir.path().join("git")).expect("source");
            // (GitEnv holds the token: it has no Debug, on purpose.)
            match source.git_env() {
                Err(e) => assert!(matches!(e, SourceError::TokenFile { .. }), "{path:?}: {e:?}"),
                Ok(_) => panic!("{path:?} was read as a token"),
            }
        }
    }

    #[test]
    fn ssh_command_quotes_the_key_path() {
        assert_eq!(
            ssh_command(Path::new("/etc/tend/it's key")),
            OsString::from("ssh -i '/etc/tend/it'\\''s key' -o IdentitiesOnly=yes -o BatchMode=yes")
        );
    }

    #[test]
    fn one_line_joins_and_cuts_gits_output() {
        assert_eq!(one_line("fatal: a\n\n  fatal: b  \n"), "fatal: a; fatal: b");
        assert_eq!(
            one_line(
                "fatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.\n"
            ),
            "fatal: Could not read from remote repository."
        );
        assert_eq!(one_line(&"x".repeat(MAX_STDERR + 10)).chars().count(), MAX_STDERR + 1);
    }

    #[test]
    fn config_checks_refuse_tokens_over_plain_http_and_unknown_schemes() {
        let config = |url: &str, token: bool, key: bool| GitConfig {
            url: url.into(),
            reference: GitRef::Branch("main".into()),
            path: None,
            interval: Duration::from_secs(60),
            ssh_key: key.then(|| PathBuf::from("/k")),
            token_file: token.then(|| PathBuf::from("/t")),
        };
        assert!(check_url(&config("https://h/r", true, false)).is_ok());
        assert!(check_url(&config("http://h/r", true, false)).is_err());
        assert!(check_url(&config("ssh://h/r", false, true)).is_ok());
        assert!(check_url(&config("https://h/r", false, true)).is_err());
        assert!(check_url(&config("ext::sh -c id", false, false)).is_ok(), "no scheme: left to GIT_ALLOW_PROTOCOL");
        assert!(check_url(&config("ftp://h/r", false, false)).is_err());
        assert!(check_url(&config("--upload-pack=x", false, false)).is_err());
        let debug = format!("{:?}", config("https://u:s3cret@h/r", false, false));
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
