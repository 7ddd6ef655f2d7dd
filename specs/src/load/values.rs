//! Checks of the text that reaches Docker, unit files and processes: what the engine or
//! the kernel would refuse only at apply (or take and run wrongly) is refused here, at the
//! field. Image references (`NAME[:TAG][@sha256:DIGEST]`), environment names and values,
//! argument lists (no NUL), docker users and working directories, labels.

use super::*;
use crate::diag::shown;

/// What an image reference looks like, for messages.
const IMAGE_FORM: &str = "expected NAME[:TAG][@sha256:DIGEST], e.g. `postgres:16`, `registry.example.org:5000/team/app:1.2` or `busybox@sha256:` and 64 hexadecimal digits";

/// The longest repository name, registry included (Docker's limit).
const MAX_IMAGE_NAME: usize = 255;

/// The longest tag (Docker's limit).
const MAX_IMAGE_TAG: usize = 128;

/// Checks an image reference (a docker service's or a job's).
pub(super) fn check_image(img: &str, loc: Location, diags: &mut Vec<Diagnostic>) {
    if img.is_empty() {
        diags.push(Diagnostic::at(loc, "`image` is empty"));
    } else if let Some(why) = image_problem(img) {
        diags.push(Diagnostic::at(loc, format!("invalid image reference `{}`: {why}; {IMAGE_FORM}", shown(img))));
    }
}

/// What is wrong with a non-empty image reference, if anything. The grammar is Docker's
/// (distribution's `reference`): `[REGISTRY[:PORT]/]PATH[:TAG][@sha256:DIGEST]`, the path
/// made of lowercase components.
fn image_problem(img: &str) -> Option<String> {
    if img.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("it must not contain spaces or control characters".into());
    }
    let (rest, digest) = match img.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (img, None),
    };
    if let Some(digest) = digest {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Some("the digest must be `sha256:` followed by 64 hexadecimal digits (lowercase)".into());
        }
    }
    // A tag follows the last `:` that comes after the last `/` (a `:` before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Some(format!(
            "the tag `{tag}` must start with a letter, a digit or `_` and hold only those, `.` and `-` (at most {MAX_IMAGE_TAG})"
        ));
    }
    name_problem(name)
}

/// Whether `tag` is a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= MAX_IMAGE_TAG
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// What is wrong with the name of an image reference (without tag and digest), if anything.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the repository name is empty".into());
    }
    if name.len() > MAX_IMAGE_NAME {
        return Some(format!("the name is {} characters long; at most {MAX_IMAGE_NAME}", name.len()));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // The first component is a registry when it looks like a host: it has a `.` or a `:`
    // (a port), or it is `localhost`; otherwise it is part of the path (`library/…`).
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost") {
        let registry = components.remove(0);
        if !is_registry(registry) {
            return Some(format!("`{registry}` is not a registry host (a host name or address, optionally `:PORT`)"));
        }
    }
    components.into_iter().find(|c| !is_path_component(c)).map(|c| {
        format!("`{c}` is not a repository name (lowercase letters and digits, separated by `.`, `_`, `__` or `-`)")
    })
}

/// Whether `host` is a registry: a host name (components of letters, digits and `-`, not at
/// either end, separated by `.`), an IPv4 address or a bracketed IPv6 one, optionally with
/// `:PORT`.
fn is_registry(host: &str) -> bool {
    let (host, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') == h.ends_with(']')) => (h, Some(p)),
        _ => (host, None),
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        })
}

/// Whether `c` is a path component of a repository: lowercase letters and digits, with
/// single separators `.`, `_`, `__` or runs of `-` between them.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-')) {
            return false;
        }
    }
    true
}

/// Whether `name` is an environment variable name: letters, digits and `_`, not starting
/// with a digit. One rule for every runtime: it is what shells and systemd take (systemd
/// drops other names), and a name with `=` or a line break would corrupt the environment
/// block or an environment file.
pub(super) fn is_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && !b[0].is_ascii_digit() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The problem of an environment variable's name, if any.
pub(super) fn env_name_problem(name: &str) -> Option<String> {
    (!is_env_name(name)).then(|| {
        format!(
            "invalid environment variable name `{}`: names are letters, digits and `_`, not starting with a digit (as shells and systemd take them)",
            shown(name)
        )
    })
}

/// Checks an argument list run in a container (`command`, `entrypoint`, a health check's
/// `command`): no argument can hold a NUL, which no program's arguments can (Docker would
/// start the container and cut the argument there).
pub(super) fn check_container_argv(
    field: &str,
    argv: &[String],
    loc: impl Fn(usize) -> Location,
    diags: &mut Vec<Diagnostic>,
) {
    for (i, arg) in argv.iter().enumerate() {
        if arg.contains('\0') {
            diags.push(Diagnostic::at(
                loc(i),
                format!(
                    "an argument of `{field}` cannot contain a NUL character (a program's arguments cannot hold it)"
                ),
            ));
        }
    }
}

/// What is wrong with a docker `user`, if anything: `NAME` or `UID`, optionally followed by
/// `:GROUP` or `:GID`, each part a name as on the host or a number.
pub(super) fn docker_user_problem(user: &str) -> Option<String> {
    let mut parts = user.splitn(2, ':');
    let ok = parts.all(systemd::is_account);
    (!ok).then(|| {
        format!(
            "invalid user `{}`: a docker user is NAME or UID, optionally with `:GROUP` or `:GID` (names of letters, digits, `_`, `.` and `-`, starting with a letter or `_`, at most 32 characters)",
            shown(user)
        )
    })
}

/// What is wrong with a docker `workingDir`, if anything: an absolute path inside the
/// container, without control characters (Docker refuses a relative one at create).
pub(super) fn container_dir_problem(dir: &str) -> Option<String> {
    if !dir.starts_with('/') {
        Some(format!("`workingDir` must be an absolute path inside the container, found `{}`", shown(dir)))
    } else if dir.contains(char::is_control) {
        Some(format!("`workingDir` cannot contain control characters, found `{}`", shown(dir)))
    } else {
        None
    }
}

/// Checks the keys and values of a `labels` mapping: keys are printable without spaces or
/// `=` (which `label=KEY=VALUE` filters could not name), values hold no NUL, and the
/// `tend.` prefix is tend's own. `loc`: the place of a label (its value).
pub(super) fn check_labels(
    labels: &BTreeMap<String, String>,
    loc: impl Fn(&str) -> Location,
    diags: &mut Vec<Diagnostic>,
) {
    for (key, value) in labels {
        if key.is_empty() || key.len() > 255 || key.contains(|c: char| c.is_control() || c.is_whitespace() || c == '=')
        {
            diags.push(Diagnostic::at(
                loc(key),
                format!(
                    "invalid label `{}`: a label key is printable text without spaces or `=`, at most 255 bytes",
                    shown(key)
                ),
            ));
        } else if key.starts_with("tend.") {
            diags.push(Diagnostic::at(
                loc(key),
                format!("label `{key}`: the `tend.` prefix is reserved for tend's own labels"),
            ));
        }
        if value.contains('\0') {
            diags.push(Diagnostic::at(
                loc(key),
                format!("the value of label `{}` contains a NUL character", shown(key)),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_follow_dockers_grammar() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        for good in [
            "busybox".to_string(),
            "busybox:1".into(),
            "tend-demo/busybox:1".into(),
            "library/postgres:16.2-alpine".into(),
            "registry.example.org:5000/team/app:1.2".into(),
            "localhost/app".into(),
            "localhost:5000/a__b/c.d/e---f:V_1".into(),
            "[::1]:5000/app:1".into(),
            "127.0.0.1:5000/app".into(),
            format!("busybox@{digest}"),
            format!("busybox:1@{digest}"),
        ] {
            assert_eq!(image_problem(&good), None, "{good}");
        }
        for (bad, why) in [
            ("busybox@sha256:../..", "the digest must be"),
            ("busybox@sha256:ABC", "the digest must be"),
            ("busybox@md5:0", "the digest must be"),
            ("Busybox", "`Busybox` is not a repository name"),
            ("a/../b", "`..` is not a repository name"),
            ("a//b", "`` is not a repository name"),
            ("a_/b", "`a_` is not a repository name"),
            ("a.-b", "`a.-b` is not a repository name"),
            ("busybox:", "the tag ``"),
            ("busybox:.x", "the tag `.x`"),
            ("reg-.example/x", "`reg-.example` is not a registry host"),
            ("reg.example:99999/x", "is not a registry host"),
            (":1", "the repository name is empty"),
            ("a b", "spaces or control characters"),
        ] {
            let got = image_problem(bad).unwrap_or_else(|| panic!("{bad} should be refused"));
            assert!(got.contains(why), "{bad}: {got}");
        }
        assert!(image_problem(&format!("busybox:{}", "x".repeat(129))).is_some());
        assert!(image_problem(&"a".repeat(256)).is_some());
    }

    #[test]
    fn docker_users_are_names_or_ids_with_an_optional_group() {
        for good in ["postgres", "1000", "1000:1000", "app:staff", "_svc.x-1"] {
            assert_eq!(docker_user_problem(good), None, "{good}");
        }
        for bad in ["", "app\nroot", "a:b:c", ":1", "1:", "a b", "-x"] {
            assert!(docker_user_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn environment_names_take_one_rule() {
        for good in ["A", "_", "a_1", "DB_PASSWORD"] {
            assert!(is_env_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "a.b", "A\nB", "A=B", "Ä"] {
            assert!(!is_env_name(bad), "{bad:?}");
        }
    }
}
