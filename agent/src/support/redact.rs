//! Secrets (`env: {NAME: {fromFile: PATH}}`) outside the engines: the host's salt of the
//! digests that stand for them in hashes, and their values kept out of messages.
//!
//! - Hashes sit in world-readable places (container labels, unit files), so the digest of a
//!   secret in them is keyed by a random salt of this host ([`host_salt`]), kept in the state
//!   directory (`secret-salt`, mode 0600): a weak secret cannot be guessed offline from a
//!   hash without it. Losing the salt only recreates, once, every container and unit that
//!   has a secret (their hashes change).
//! - An engine's error may echo the request it refused — a container's whole environment
//!   included. A [`Redactor`] replaces every known secret value, raw or escaped as engines
//!   and serializers print it, by `<secret from PATH>` before such text is shown, logged or
//!   recorded.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tend_specs::{Desired, Env};

use crate::engine::EngineError;

/// The salt's file in the state directory.
pub const SALT_FILE: &str = "secret-salt";
/// Bytes of salt.
const SALT_BYTES: usize = 32;
/// The largest salt file read (it holds 64 hex digits and a newline).
const MAX_SALT_FILE: u64 = 1024;

/// Errors of the host's salt.
#[derive(Debug, thiserror::Error)]
pub enum SaltError {
    /// The salt file could not be read, or made.
    #[error("{op} the secrets' salt {path}")]
    Io {
        /// "reading" or "creating".
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The salt file is not what tend writes.
    #[error(
        "the secrets' salt {path} is not valid ({why}); move it aside to make a new one (every container and unit with a secret is then recreated once)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The host's salt from `state_dir`. When there is none yet, `create` makes it (0600,
/// atomically: two tend processes starting at once agree on one salt); otherwise an
/// ephemeral one stands in, so that a read-only command (`plan`, `status`) shows objects
/// with secrets as changed, as the first apply will change them.
pub fn host_salt(state_dir: &Path, create: bool) -> Result<Vec<u8>, SaltError> {
    let path = state_dir.join(SALT_FILE);
    match read_salt(&path)? {
        Some(salt) => Ok(salt),
        None if create => create_salt(state_dir, &path),
        None => random_salt(&path),
    }
}

/// Reads the salt file: `None` when it does not exist. A link, a file that is not regular
/// or larger than [`MAX_SALT_FILE`], or content that is not 64 hex digits is refused.
fn read_salt(path: &Path) -> Result<Option<Vec<u8>>, SaltError> {
    use rustix::fs::{Mode, OFlags};
    let io = |source: std::io::Error| SaltError::Io { op: "reading", path: path.to_path_buf(), source };
    let invalid = |why: &str| SaltError::Invalid { path: path.to_path_buf(), why: why.to_string() };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let file = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(invalid("it is a symbolic link")),
        Err(e) => return Err(io(e.into())),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() || meta.len() > MAX_SALT_FILE {
        return Err(invalid("not a small regular file"));
    }
    let mut text = String::new();
    file.take(MAX_SALT_FILE).read_to_string(&mut text).map_err(io)?;
    let salt = hex::decode(text.trim()).map_err(|_| invalid("not hex digits"))?;
    if salt.len() != SALT_BYTES {
        return Err(invalid("not 32 bytes"));
    }
    Ok(Some(salt))
}

/// Makes the salt file: random bytes written 0600 to a temporary file, linked into place
/// only if no other process made one meanwhile (then that one is used).
fn create_salt(state_dir: &Path, path: &Path) -> Result<Vec<u8>, SaltError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source: std::io::Error| SaltError::Io { op: "creating", path: path.to_path_buf(), source };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let salt = random_salt(path)?;
    let tmp = state_dir.join(format!(".{SALT_FILE}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    let written = f.write_all(format!("{}\n", hex::encode(&salt)).as_bytes()).and_then(|()| f.sync_all());
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            let _ = File::open(state_dir).and_then(|d| d.sync_all());
            Ok(salt)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_salt(path)?.ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))
        }
        Err(e) => Err(io(e)),
    }
}

/// Random bytes from the kernel.
fn random_salt(path: &Path) -> Result<Vec<u8>, SaltError> {
    let mut salt = vec![0u8; SALT_BYTES];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut salt)).map_err(|source| SaltError::Io {
        op: "creating",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(salt)
}

/// Values shorter than this are replaced only where they stand alone (not inside a word):
/// replacing every `0` of a message would make it unreadable, and say what the secret is.
const SHORT: usize = 4;

/// Replaces known secret values in text (see the module).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Each form a secret may be printed in, with what replaces it; longest first.
    forms: Vec<(String, String)>,
}

impl Redactor {
    /// A redactor of every secret of the services and Timers of `desired`.
    pub fn of_desired(desired: &Desired) -> Self {
        let services = desired.services.values().map(|s| &s.env);
        let timers = desired.timers.values().map(|t| &t.env);
        Self::of_envs(services.chain(timers))
    }

    /// A redactor of the secrets of these environments.
    pub fn of_envs<'a>(envs: impl IntoIterator<Item = &'a BTreeMap<String, Env>>) -> Self {
        let mut forms: Vec<(String, String)> = Vec::new();
        for env in envs {
            for value in env.values() {
                let Env::Secret { path, value } = value else { continue };
                let shown = format!("<secret from {}>", path.display());
                for form in printed_forms(value.expose()) {
                    forms.push((form, shown.clone()));
                }
            }
        }
        forms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        forms.dedup_by(|a, b| a.0 == b.0);
        Self { forms }
    }

    /// `text` with every known secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (form, shown) in &self.forms {
            out =
                if form.chars().count() < SHORT { replace_alone(&out, form, shown) } else { out.replace(form, shown) };
        }
        out
    }

    /// An engine error whose messages (its own and its causes', which may echo a request)
    /// are redacted; its operation, object and kind are kept.
    pub fn engine_error(&self, e: EngineError) -> EngineError {
        if self.forms.is_empty() {
            return e;
        }
        let cause = crate::support::chain(e.source.as_ref());
        let redacted = self.redact(&cause);
        if redacted == cause {
            return e;
        }
        EngineError { source: Box::new(Redacted(redacted)), ..e }
    }
}

/// The text of a cause that held a secret, with the secret replaced.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Redacted(String);

/// The ways a value is printed: as it is, and escaped as JSON, Go (`%q`, Docker's errors)
/// and Rust (`{:?}`, `escape_default`) print it inside quotes.
fn printed_forms(value: &str) -> Vec<String> {
    if value.is_empty() {
        return Vec::new();
    }
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json.get(1..json.len().saturating_sub(1)).unwrap_or_default().to_string();
    let mut forms = vec![
        value.to_string(),
        json,
        go_quoted(value),
        value.escape_debug().to_string(),
        value.escape_default().to_string(),
    ];
    forms.sort();
    forms.dedup();
    forms.retain(|f| !f.is_empty());
    forms
}

/// The inside of Go's `strconv.Quote` of `value`.
fn go_quoted(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `text` with the occurrences of `form` that do not touch a letter or digit on either side
/// replaced.
fn replace_alone(text: &str, form: &str, shown: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    let mut before: Option<char> = None;
    while let Some(at) = rest.find(form) {
        let prev = rest[..at].chars().next_back().or(before);
        let next = rest[at + form.len()..].chars().next();
        let alone = !prev.is_some_and(char::is_alphanumeric) && !next.is_some_and(char::is_alphanumeric);
        out.push_str(&rest[..at]);
        out.push_str(if alone { shown } else { form });
        before = form.chars().next_back();
        rest = &rest[at + form.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend_specs::Secret;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, Env> {
        pairs
            .iter()
            .map(|(k, v)| {
                let secret = Env::Secret { path: PathBuf::from(format!("/s/{k}")), value: Secret::new(v.to_string()) };
                (k.to_string(), secret)
            })
            .collect()
    }

    #[test]
    fn a_secret_is_replaced_raw_and_as_engines_escape_it() {
        let env = env(&[("PW", "hunter2\0\"x\\y\n")]);
        let r = Redactor::of_envs([&env]);
        let docker = r#"can't contain null(\x00): "PW=hunter2\x00\"x\\y\n": unknown"#;
        assert_eq!(r.redact(docker), r#"can't contain null(\x00): "PW=<secret from /s/PW>": unknown"#);
        let json = r#"{"Env":["PW=hunter2\u0000\"x\\y\n"]}"#;
        assert_eq!(r.redact(json), r#"{"Env":["PW=<secret from /s/PW>"]}"#);
        assert_eq!(r.redact("raw hunter2\0\"x\\y\n."), "raw <secret from /s/PW>.");
        assert_eq!(r.redact(&format!("{:?}", "hunter2\0\"x\\y\n")), "\"<secret from /s/PW>\"");
    }

    #[test]
    fn short_secrets_are_replaced_only_where_they_stand_alone() {
        let env = env(&[("PIN", "42")]);
        let r = Redactor::of_envs([&env]);
        assert_eq!(
            r.redact(r#"["PIN=42","X=1423"] exit 42"#),
            r#"["PIN=<secret from /s/PIN>","X=1423"] exit <secret from /s/PIN>"#
        );
    }

    #[test]
    fn the_longest_secret_goes_first_and_nothing_else_changes() {
        let env = env(&[("A", "password"), ("B", "password123")]);
        let r = Redactor::of_envs([&env]);
        assert_eq!(r.redact("password123 and password"), "<secret from /s/B> and <secret from /s/A>");
        assert_eq!(Redactor::default().redact("nothing"), "nothing");
    }

    #[test]
    fn an_engine_error_keeps_its_operation_object_and_kind() {
        let env = env(&[("PW", "hunter2-secret")]);
        let r = Redactor::of_envs([&env]);
        let e = EngineError {
            op: "creating container",
            object: "web-1".into(),
            kind: crate::engine::EngineErrorKind::Refused,
            source: Box::new(std::io::Error::other("bad env PW=hunter2-secret")),
        };
        let e = r.engine_error(e);
        assert_eq!((e.op, e.object.as_str(), e.kind()), ("creating container", "web-1", "refused"));
        assert_eq!(crate::support::chain(&e), "creating container web-1: bad env PW=<secret from /s/PW>");
    }

    #[test]
    fn the_salt_is_made_once_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("state");
        let ephemeral = host_salt(&dir, false).expect("ephemeral");
        assert!(!dir.exists(), "a read-only command makes nothing");
        let made = host_salt(&dir, true).expect("made");
        assert_ne!(made, ephemeral);
        assert_eq!(made.len(), SALT_BYTES);
        let path = dir.join(SALT_FILE);
        assert_eq!(std::fs::metadata(&path).expect("file").permissions().mode() & 0o777, 0o600);
        assert_eq!(host_salt(&dir, true).expect("again"), made);
        assert_eq!(host_salt(&dir, false).expect("read"), made);
        std::fs::write(&path, "not hex\n").expect("spoil");
        let e = host_salt(&dir, true).expect_err("invalid");
        assert!(e.to_string().contains("move it aside"), "{e}");
        std::fs::write(&path, vec![b'a'; 4096]).expect("spoil");
        assert!(matches!(host_salt(&dir, true), Err(SaltError::Invalid { .. })));
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", &path).expect("link");
        assert!(matches!(host_salt(&dir, true), Err(SaltError::Invalid { .. })));
    }
}
