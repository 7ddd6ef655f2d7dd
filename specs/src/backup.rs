//! `kind: Backup`: what to capture (paths, with the services to stop first, or a dump
//! command's output streamed out of a service), where the archives go (a directory layout,
//! copies elsewhere), how long they are kept, and how to restore them. This module holds
//! the types as operators write them; `load` checks them.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::Duration;

/// The default layout of a paths source: a tar archive, compressed with zstd.
pub const DEFAULT_PATHS_LAYOUT: &str = "{name}/{yyyy}/{mm}/{date}_{name}.tar.zst";

/// The default layout of an exec source: the command's output, compressed with zstd.
pub const DEFAULT_EXEC_LAYOUT: &str = "{name}/{yyyy}/{mm}/{date}_{name}.zst";

/// The tokens a layout may use, with what each stands for (in the run's local time).
pub const LAYOUT_TOKENS: &[(&str, &str)] = &[
    ("name", "the Backup's name"),
    ("yyyy", "the year, 4 digits"),
    ("mm", "the month, 2 digits"),
    ("dd", "the day of the month, 2 digits"),
    ("date", "the date, YYYY-MM-DD"),
    ("time", "the time of day, HHMMSS"),
];

/// The default `quiesce.timeout`.
pub const DEFAULT_QUIESCE_TIMEOUT: Duration = Duration::from_secs(60);

/// The default zstd level: the lowest whose archives are no bigger than `tar czf`'s on a
/// mixed data set (docs/BENCHMARKS.md, "Backups").
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 5;

/// The default number of zstd workers: compression beside reading, on two cores.
pub const DEFAULT_COMPRESSION_THREADS: u32 = 2;

/// The spec of a `kind: Backup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When a backup runs by itself: a systemd calendar expression (`systemd.time(7)`), e.g.
    /// `*-*-* 03:15:00`, `daily`. Without it the Backup runs only on demand
    /// (`tend backup run NAME`). Quote it in YAML when it starts with `*`. At most 1024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::SCHEDULE.max))]
    pub schedule: Option<String>,
    /// What is captured: `paths`, or the output of an `exec` command (exactly one).
    pub source: Source,
    /// The services stopped before `source.paths` are read, and started again afterwards
    /// (paths sources only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<Quiesce>,
    /// Where archives are written.
    pub destination: Destination,
    /// Further places each new archive is copied to, each verified by checksum (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::COPIES.max))]
    pub copies: Vec<CopyTarget>,
    /// Which archives are kept, per destination. Without it every archive is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// zstd settings (default level 5 on two workers).
    #[serde(default)]
    pub compression: Compression,
    /// How an archive is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Restore>,
    /// A scheduled restore drill: the newest archive restored into a scratch place and checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
}

/// What a Backup captures: exactly one of `paths` and `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Directories and files on the host, archived as one tar: absolute paths, none inside
    /// another, not `/`. At most 256 paths of 4095 bytes each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::SOURCE_PATHS.max), inner(length(max = crate::bounds::PATH.max)))]
    pub paths: Option<Vec<String>>,
    /// A dump command whose standard output is streamed into the archive (no temporary copy
    /// on disk), e.g. `mongodump --archive` or `pg_dump -Fc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCommand>,
}

/// A command run for a Backup: in a service's container, as a systemd service's user on
/// the host, or on the host (`runtime: host`). Exactly one of `service` and `runtime`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecCommand {
    /// A Service of the spec set: a docker service's command runs in its container
    /// (`docker exec`), a systemd service's on the host as the service's user and group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `host`: the command runs on the host, as root (instead of naming a `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<ExecRuntime>,
    /// The program and its arguments: argv, no shell. On the host the program is an
    /// absolute path. At most 1024 arguments of 64 KiB each, without NUL.
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub command: Vec<String>,
}

/// Where a command runs when it names no service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExecRuntime {
    /// On the host.
    Host,
}

/// Where a validated command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsIn<'a> {
    /// In (or as) the named Service.
    Service(&'a str),
    /// On the host, as root.
    Host,
}

impl ExecCommand {
    /// Where the command runs. Validation guarantees exactly one of `service` and
    /// `runtime`; should neither be set, this says `Host`.
    pub fn runs_in(&self) -> RunsIn<'_> {
        match &self.service {
            Some(service) => RunsIn::Service(service),
            None => RunsIn::Host,
        }
    }
}

/// Services stopped while paths are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quiesce {
    /// Services of the spec set, stopped in dependency order (dependents first) before a
    /// byte is read, and started again in reverse order afterwards, whatever happens. At most
    /// 256.
    #[schemars(length(max = crate::bounds::QUIESCE_STOP.max))]
    pub stop: Vec<String>,
    /// How long stopping them may take before the backup fails (default 60s; more than 0s,
    /// at most 1h).
    #[serde(default = "default_quiesce_timeout")]
    pub timeout: Duration,
}

fn default_quiesce_timeout() -> Duration {
    DEFAULT_QUIESCE_TIMEOUT
}

/// Where archives are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// An absolute directory; it and the layout's directories are created as needed (at most
    /// 4095 bytes).
    #[schemars(length(max = crate::bounds::PATH.max))]
    pub dir: String,
    /// The archive's path under `dir`, with tokens `{name}`, `{yyyy}`, `{mm}`, `{dd}`,
    /// `{date}` (YYYY-MM-DD) and `{time}` (HHMMSS). Default
    /// `{name}/{yyyy}/{mm}/{date}_{name}.tar.zst` for paths, `….zst` for exec sources. At
    /// most 4095 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::PATH.max))]
    pub layout: Option<String>,
}

/// A further place an archive is copied to: exactly one of `dir` and `rsync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyTarget {
    /// An absolute directory (another disk, a mounted NAS); the archive keeps its layout path
    /// (at most 4095 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::PATH.max))]
    pub dir: Option<String>,
    /// An rsync destination, e.g. `user@nas:/backups/retro` (over SSH; at most 4095 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::PATH.max))]
    pub rsync: Option<String>,
    /// Which archives this copy keeps; without it, the Backup's `retention` (and without
    /// that, every archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// A validated copy target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyTo<'a> {
    /// A directory on this host.
    Dir(&'a str),
    /// An rsync destination.
    Rsync(&'a str),
}

impl CopyTarget {
    /// The target. Validation guarantees exactly one of `dir` and `rsync`.
    pub fn to(&self) -> CopyTo<'_> {
        match (&self.dir, &self.rsync) {
            (Some(dir), _) => CopyTo::Dir(dir),
            (None, Some(rsync)) => CopyTo::Rsync(rsync),
            (None, None) => CopyTo::Dir(""),
        }
    }
}

impl fmt::Display for CopyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to() {
            CopyTo::Dir(dir) => write!(f, "dir {dir}"),
            CopyTo::Rsync(target) => write!(f, "rsync {target}"),
        }
    }
}

/// Which archives are kept in each destination. Each rule keeps the newest archive of each
/// of its last N periods (`keepLast`: the N newest); an archive kept by any rule stays.
/// The newest good archive is never deleted. Each N is at most 10000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the N newest archives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::bounds::RETENTION_KEEP.max))]
    pub keep_last: Option<u32>,
    /// Keep the newest archive of each of the last N days that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::bounds::RETENTION_KEEP.max))]
    pub keep_daily: Option<u32>,
    /// Keep the newest archive of each of the last N ISO weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::bounds::RETENTION_KEEP.max))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest archive of each of the last N months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::bounds::RETENTION_KEEP.max))]
    pub keep_monthly: Option<u32>,
    /// Keep the newest archive of each of the last N years that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::bounds::RETENTION_KEEP.max))]
    pub keep_yearly: Option<u32>,
}

/// zstd settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    /// The zstd level, 1 (fastest) to 19 (smallest); default 5.
    #[serde(default = "default_level")]
    #[schemars(range(min = 1, max = 19))]
    pub level: u32,
    /// Worker threads: 0 compresses on the calling thread, 1 to 64 (default 2) use that many
    /// workers beside the one reading the sources.
    #[serde(default = "default_threads")]
    #[schemars(range(max = crate::bounds::COMPRESSION_THREADS.max))]
    pub threads: u32,
}

fn default_level() -> u32 {
    DEFAULT_COMPRESSION_LEVEL
}

fn default_threads() -> u32 {
    DEFAULT_COMPRESSION_THREADS
}

impl Default for Compression {
    fn default() -> Self {
        Self { level: DEFAULT_COMPRESSION_LEVEL, threads: DEFAULT_COMPRESSION_THREADS }
    }
}

/// How an archive is restored. For paths: where the current data is moved aside. For exec
/// sources: the command the archive is streamed into, with `${var}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Restore {
    /// paths sources: an absolute directory, outside the source paths, the current data is
    /// moved into (in a timestamped directory) before the archive is extracted (at most 4095
    /// bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::bounds::PATH.max))]
    pub move_aside_to: Option<String>,
    /// exec sources: the command the archive is streamed into (its standard input). Its
    /// arguments may hold `${var}` placeholders, filled by `tend restore --set var=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCommand>,
    /// Default values of the placeholders of `exec` (`--set` overrides them): at most 64, each
    /// at most 64 KiB, without NUL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = crate::bounds::RESTORE_VARS.max))]
    pub vars: BTreeMap<String, String>,
}

/// A restore drill: on a schedule, the newest archive is restored into a scratch place and
/// a check command judges the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drill {
    /// When the drill runs: a systemd calendar expression (at most 1024 bytes).
    #[schemars(length(max = crate::bounds::SCHEDULE.max))]
    pub schedule: String,
    /// The check, run on the host after the restore: argv (no shell), the program an
    /// absolute path; exit status 0 means the drill passed. At most 1024 arguments.
    #[schemars(length(max = crate::bounds::ARGS.max), inner(length(max = crate::bounds::TEXT.max)))]
    pub check: Vec<String>,
}

/// Which kind of source a Backup has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `source.paths`: a tar archive.
    Paths,
    /// `source.exec`: a command's output.
    Exec,
}

impl BackupSpec {
    /// The kind of source. Validation guarantees exactly one; should both be set, `Paths`.
    pub fn source_kind(&self) -> SourceKind {
        if self.source.paths.is_some() || self.source.exec.is_none() { SourceKind::Paths } else { SourceKind::Exec }
    }

    /// The paths of a paths source (empty for an exec source).
    pub fn paths(&self) -> &[String] {
        self.source.paths.as_deref().unwrap_or_default()
    }

    /// The layout as written, or the default for the kind of source.
    pub fn layout(&self) -> &str {
        match (&self.destination.layout, self.source_kind()) {
            (Some(layout), _) => layout,
            (None, SourceKind::Paths) => DEFAULT_PATHS_LAYOUT,
            (None, SourceKind::Exec) => DEFAULT_EXEC_LAYOUT,
        }
    }
}

/// One piece of a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutPart<'a> {
    /// Text taken as it is.
    Text(&'a str),
    /// A token, by name (without braces).
    Token(&'a str),
}

/// A problem in a layout or in a placeholder: the 1-based character column in the text
/// where it is, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// 1-based column (in characters) of the problem within the text.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Splits a layout into text and `{token}`s. The token names are not checked here: an
/// unclosed `{` or a `}` without its `{` is an error.
pub fn layout_parts(layout: &str) -> Result<Vec<LayoutPart<'_>>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = layout;
    let mut offset = 0;
    let column = |byte: usize| layout[..byte].chars().count() + 1;
    while !rest.is_empty() {
        let open = rest.find('{');
        let close = rest.find('}');
        match (open, close) {
            (_, Some(c)) if open.is_none_or(|o| c < o) => {
                return Err(TemplateError {
                    column: column(offset + c),
                    message: "`}` without a `{` before it".into(),
                });
            }
            (Some(o), _) => {
                if o > 0 {
                    parts.push(LayoutPart::Text(&rest[..o]));
                }
                let Some(len) = rest[o + 1..].find(['}', '{']).filter(|&l| rest.as_bytes()[o + 1 + l] == b'}') else {
                    return Err(TemplateError {
                        column: column(offset + o),
                        message: "`{` is not closed: tokens are written `{name}`".into(),
                    });
                };
                parts.push(LayoutPart::Token(&rest[o + 1..o + 1 + len]));
                offset += o + len + 2;
                rest = &rest[o + len + 2..];
            }
            _ => {
                parts.push(LayoutPart::Text(rest));
                break;
            }
        }
    }
    Ok(parts)
}

/// Whether `name` is a placeholder variable name: a lowercase letter, then lowercase
/// letters, digits and `_`.
pub fn is_var_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// The `${var}` placeholders of one argument, in order (repeats included). `$` not followed
/// by `{` is text.
pub fn placeholders(arg: &str) -> Result<Vec<&str>, TemplateError> {
    let mut found = Vec::new();
    let mut from = 0;
    let column = |byte: usize| arg[..byte].chars().count() + 1;
    while let Some(i) = arg[from..].find("${").map(|i| from + i) {
        let Some(len) = arg[i + 2..].find('}') else {
            return Err(TemplateError {
                column: column(i),
                message: "`${` is not closed: placeholders are written `${name}`".into(),
            });
        };
        let name = &arg[i + 2..i + 2 + len];
        if name.is_empty() {
            return Err(TemplateError {
                column: column(i),
                message: "empty placeholder `${}`: placeholders are written `${name}`".into(),
            });
        }
        if !is_var_name(name) {
            return Err(TemplateError {
                column: column(i),
                message: format!(
                    "invalid placeholder `${{{}}}`: a name is a lowercase letter followed by lowercase letters, digits and `_`",
                    name.escape_default()
                ),
            });
        }
        found.push(name);
        from = i + 2 + len + 1;
    }
    Ok(found)
}

/// Fills the `${var}` placeholders of `arg` from `vars`; an `Err` names the first variable
/// that has no value. The argument must have passed [`placeholders`].
pub fn fill_placeholders(arg: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find("${") {
        let Some(len) = rest[i + 2..].find('}') else { break };
        let name = &rest[i + 2..i + 2 + len];
        let value = vars.get(name).ok_or_else(|| name.to_string())?;
        out.push_str(&rest[..i]);
        out.push_str(value);
        rest = &rest[i + 2 + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_splits_into_text_and_tokens() {
        use LayoutPart::{Text, Token};
        assert_eq!(
            layout_parts(DEFAULT_PATHS_LAYOUT).expect("parts"),
            [
                Token("name"),
                Text("/"),
                Token("yyyy"),
                Text("/"),
                Token("mm"),
                Text("/"),
                Token("date"),
                Text("_"),
                Token("name"),
                Text(".tar.zst")
            ]
        );
        assert_eq!(layout_parts("{}x").expect("parts"), [Token(""), Text("x")]);
        let e = |s: &str| layout_parts(s).expect_err(s);
        assert_eq!(e("a/{date").column, 3);
        assert_eq!(e("a/{da{te}").column, 3);
        assert_eq!(e("ä}").column, 2);
        assert!(e("x}{").message.contains("without a `{`"));
    }

    #[test]
    fn placeholders_are_found_and_bad_ones_placed() {
        assert_eq!(placeholders("${db}.*").expect("ok"), ["db"]);
        assert_eq!(placeholders("$HOME ${a_1}-${b} $x").expect("ok"), ["a_1", "b"]);
        assert!(placeholders("no placeholders, $ or {}").expect("ok").is_empty());
        for (arg, column, why) in [
            ("x${}", 2, "empty placeholder"),
            ("${Db}", 1, "invalid placeholder `${Db}`"),
            ("a ${1x}", 3, "invalid placeholder"),
            ("é${db", 2, "`${` is not closed"),
        ] {
            let e = placeholders(arg).expect_err(arg);
            assert_eq!(e.column, column, "{arg}");
            assert!(e.message.contains(why), "{arg}: {}", e.message);
        }
    }

    #[test]
    fn placeholders_are_filled_and_a_missing_value_is_named() {
        let vars = BTreeMap::from([("db".to_string(), "pipeline_dev".to_string())]);
        assert_eq!(fill_placeholders("${db}.*", &vars).as_deref(), Ok("pipeline_dev.*"));
        assert_eq!(fill_placeholders("$x ${db}${db}", &vars).as_deref(), Ok("$x pipeline_devpipeline_dev"));
        assert_eq!(fill_placeholders("${other}", &vars), Err("other".to_string()));
    }
}
