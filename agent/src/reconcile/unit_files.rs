//! Unit files for systemd services and Timers, rendered from validated specs. Pure: text in,
//! text out, the same bytes for the same spec (the planner compares them with the files on
//! disk), so that a unit is rewritten exactly when its spec changed.
//!
//! Every value that goes into a unit is escaped for the setting that reads it, so that what
//! the process gets is exactly what the spec says:
//!
//! - `ExecStart=` (systemd.service(5), "Command lines"): each argument in double quotes,
//!   with `\` and `"` escaped (C-style escapes are decoded inside quotes), `%` as `%%`
//!   (specifiers, systemd.unit(5)) and `$` as `$$` (environment variable substitution),
//!   ASCII control characters as `\xNN`. systemd does not substitute variables in the
//!   program path, only in `argv`: a program whose path holds a `$` is written with the `@`
//!   prefix, as the path (`$` as is) and then `argv[0]` (`$` as `$$`).
//! - `Environment=` (systemd.exec(5)): one `"NAME=value"` per line, quoted and escaped as
//!   above except `$`, which `Environment=` never expands.
//! - `EnvironmentFile=` (systemd.exec(5)): `NAME="value"` lines, in double quotes as in a
//!   POSIX shell: `\`, `"`, `` ` `` and `$` are escaped with `\`; every other character,
//!   line breaks included, stands for itself.
//! - Paths and other plain values (`User=`, `WorkingDirectory=`, `PIDFile=`,
//!   `OnCalendar=`, ...): `%` as `%%`; they are not unquoted by systemd.
//!
//! Secrets never enter a unit file (world-readable, shown by `systemctl cat`): when any
//! variable of a service is a secret, its whole environment goes into an environment file
//! that the caller writes with mode 0600.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use tend_specs::calendar::{CalendarSpec, LocalZone};
use tend_specs::quantity::Duration;
use tend_specs::service::{RestartPolicy, Runtime, ServiceType};
use tend_specs::timer::RunOn;
use tend_specs::{Env, Service, Timer};

/// The units (and environment file) of one spec object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendered {
    /// The unit files, sorted by name.
    pub units: Vec<UnitText>,
    /// The environment file the service unit names, when its environment holds a secret.
    pub env_file: Option<EnvFile>,
}

/// One unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitText {
    /// The unit's name, e.g. `ims-nginx.service`.
    pub name: String,
    /// The whole file.
    pub content: String,
}

/// An environment file (`EnvironmentFile=`). It holds secrets: the caller writes it with
/// mode 0600, and its `Debug` never shows the content.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// Where it goes: `<env_dir>/<name>.env`.
    pub path: PathBuf,
    /// The whole file.
    pub content: String,
}

impl fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvFile").field("path", &self.path).field("content", &"<redacted>").finish()
    }
}

/// What rendering needs besides the spec.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The scope of this tend (`X-Tend-Scope`).
    pub scope: &'a str,
    /// The absolute path of the tend binary, which a Timer's service unit runs.
    pub tend_bin: &'a Path,
    /// The state directory, passed to `tend job run`.
    pub state_dir: &'a Path,
    /// Where environment files go, e.g. `/etc/tend/env`.
    pub env_dir: &'a Path,
    /// The spec set being applied, passed to `tend job run` so a scheduled run reads the
    /// same specs.
    pub specs: &'a Path,
    /// The agent's configuration file when it is not the default one, passed to the `tend
    /// job run` of a `runOn: leader` Timer so that its run finds the cluster.
    pub agent_config: Option<&'a Path>,
}

/// The value of `X-Tend-Kind` of a systemd service's unit.
pub const KIND_SERVICE: &str = "service";
/// The value of `X-Tend-Kind` of a Timer's `.timer` unit.
pub const KIND_TIMER: &str = "timer";
/// The value of `X-Tend-Kind` of a Timer's `.service` unit (its job).
pub const KIND_TIMER_JOB: &str = "timer-job";

/// Renders the unit `NAME.service` of a `runtime: systemd` service, and its environment
/// file when its environment holds a secret. A docker service has no unit: empty.
pub fn render_service(ctx: &Context<'_>, s: &Service) -> Rendered {
    if s.spec.runtime != Runtime::Systemd {
        return Rendered::default();
    }
    let spec = &s.spec;
    let mut u = header(ctx, KIND_SERVICE, &s.name, &s.hash);
    let mut deps: Vec<&str> = spec.depends_on.iter().map(|d| d.name.as_str()).collect();
    deps.sort_unstable();
    deps.dedup();
    for dep in &deps {
        line(&mut u, "Requires", &format!("{}.service", plain(dep)));
    }
    for dep in &deps {
        line(&mut u, "After", &format!("{}.service", plain(dep)));
    }
    // tend supervises restarts itself; systemd's start limit would lock a crash loop out.
    line(&mut u, "StartLimitIntervalSec", "0");

    u.push_str("\n[Service]\n");
    let unit_type = spec.unit_type();
    line(&mut u, "Type", &unit_type.to_string());
    if unit_type == ServiceType::Forking
        && let Some(pid_file) = &spec.pid_file
    {
        line(&mut u, "PIDFile", &plain(pid_file));
    }
    line(&mut u, "ExecStart", &command_line(spec.exec.as_deref().unwrap_or_default()));
    if let Some(user) = &spec.user {
        line(&mut u, "User", &plain(user));
    }
    if let Some(group) = &spec.group {
        line(&mut u, "Group", &plain(group));
    }
    if let Some(dir) = &spec.working_dir {
        line(&mut u, "WorkingDirectory", &plain(dir));
    }
    let env_file = if s.env.values().any(|v| matches!(v, Env::Secret { .. })) {
        let path = ctx.env_dir.join(format!("{}.env", s.name));
        line(&mut u, "EnvironmentFile", &plain(&path.to_string_lossy()));
        Some(EnvFile { content: env_file_content(ctx, &s.name, &s.env), path })
    } else {
        for (name, value) in &s.env {
            if let Env::Literal(value) = value {
                line(&mut u, "Environment", &quoted(&format!("{name}={value}"), false));
            }
        }
        None
    };
    if let Some(resources) = &spec.resources {
        if let Some(memory) = resources.memory {
            line(&mut u, "MemoryMax", &memory.0.to_string());
        }
        if let Some(cpus) = resources.cpus {
            line(&mut u, "CPUQuota", &cpu_quota(cpus));
        }
    }
    if let Some(signal) = &spec.stop_signal {
        line(&mut u, "KillSignal", &plain(signal));
    }
    if let Some(timeout) = spec.stop_timeout {
        line(&mut u, "TimeoutStopSec", &stop_timeout(timeout));
    }
    let restart = spec.restart;
    match restart.policy {
        RestartPolicy::Always | RestartPolicy::OnFailure => {
            let policy = if restart.policy == RestartPolicy::Always { "always" } else { "on-failure" };
            line(&mut u, "Restart", policy);
            let _ = writeln!(
                u,
                "# backoff.max ({}) is not set: systemd 252 has no RestartMaxDelaySec=, so every restart waits RestartSec=.",
                restart.backoff.max
            );
            line(&mut u, "RestartSec", &duration(restart.backoff.initial));
        }
        RestartPolicy::Never => line(&mut u, "Restart", "no"),
        RestartPolicy::Hold => {
            u.push_str("# restart: hold. systemd does not restart it; tend holds it for triage after an exit.\n");
            line(&mut u, "Restart", "no");
        }
    }

    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Rendered { units: vec![UnitText { name: format!("{}.service", s.name), content: u }], env_file }
}

/// Renders a Timer's units: `NAME.timer` (its schedule; none without a schedule) and
/// `NAME.service`, a oneshot running `tend job run NAME`, which runs the job with tend's
/// semantics (concurrency, environment, history). The job's environment is tend's to hand
/// to the job, so a Timer has no environment file.
pub fn render_timer(ctx: &Context<'_>, t: &Timer) -> Rendered {
    let spec = &t.spec;
    let mut units = Vec::new();

    let mut job = header(ctx, KIND_TIMER_JOB, &t.name, &t.hash);
    // Runs started by hand in quick succession must not be refused by the start limit.
    line(&mut job, "StartLimitIntervalSec", "0");
    job.push_str("\n[Service]\n");
    line(&mut job, "Type", "oneshot");
    let tend_bin = ctx.tend_bin.to_string_lossy();
    let state_dir = ctx.state_dir.to_string_lossy();
    let specs = ctx.specs.to_string_lossy();
    let mut argv = vec![
        &*tend_bin,
        "--scope",
        ctx.scope,
        "--state-dir",
        &*state_dir,
        "job",
        "run",
        &t.name,
        &*specs,
        "--trigger",
        "timer",
    ];
    let config = ctx.agent_config.map(|c| c.to_string_lossy());
    if let Some(config) = config.as_deref().filter(|_| spec.run_on == RunOn::Leader) {
        argv.extend(["--config", config]);
    }
    line(&mut job, "ExecStart", &command_line(&argv));
    // tend enforces the job's timeout itself and records it; systemd's limit is a backstop
    // 30s later. KillMode=mixed signals tend first, so it stops the job and records the run.
    let backstop =
        spec.timeout.map(|t| tend_specs::quantity::Duration::from_millis(t.get().as_millis() as u64 + 30_000));
    line(&mut job, "TimeoutStartSec", &backstop.map_or_else(|| "infinity".to_string(), duration));
    line(&mut job, "KillMode", "mixed");
    units.push(UnitText { name: format!("{}.service", t.name), content: job });

    if let Some(schedule) = &spec.schedule {
        let mut timer = header(ctx, KIND_TIMER, &t.name, &t.hash);
        timer.push_str("\n[Timer]\n");
        let calendar = match &spec.timezone {
            Some(zone) if !names_zone(schedule) => format!("{schedule} {zone}"),
            _ => schedule.clone(),
        };
        line(&mut timer, "OnCalendar", &plain(&calendar));
        line(&mut timer, "Persistent", if spec.persistent { "true" } else { "false" });
        if let Some(delay) = spec.randomized_delay {
            line(&mut timer, "RandomizedDelaySec", &duration(delay));
        }
        if let Some(accuracy) = spec.accuracy {
            line(&mut timer, "AccuracySec", &duration(accuracy));
        }
        line(&mut timer, "Unit", &format!("{}.service", t.name));
        timer.push_str("\n[Install]\nWantedBy=timers.target\n");
        units.push(UnitText { name: format!("{}.timer", t.name), content: timer });
    }
    units.sort_by(|a, b| a.name.cmp(&b.name));
    Rendered { units, env_file: None }
}

/// The comment line, `[Unit]` with the description and tend's marks (read back by
/// `systemd::parse_marks`).
fn header(ctx: &Context<'_>, kind: &str, name: &str, hash: &str) -> String {
    let mut u = format!(
        "# Managed by tend (scope {}). Changes here are overwritten; edit the spec instead.\n[Unit]\n",
        ctx.scope
    );
    line(&mut u, "Description", &plain(&format!("tend: {kind} {name}")));
    line(&mut u, "X-Tend-Scope", ctx.scope);
    line(&mut u, "X-Tend-Kind", kind);
    line(&mut u, "X-Tend-Name", name);
    line(&mut u, "X-Tend-Hash", hash);
    u
}

fn line(u: &mut String, key: &str, value: &str) {
    let _ = writeln!(u, "{key}={value}");
}

/// A plain value (a path, a name, a calendar expression): only specifiers are escaped,
/// since systemd reads these settings without unquoting them.
fn plain(value: &str) -> String {
    value.replace('%', "%%")
}

/// One word in double quotes, escaped as systemd unquotes it: `\` and `"` with a
/// backslash, ASCII control characters as `\xNN`, `%` as `%%`, and (for `ExecStart=`
/// arguments) `$` as `$$`.
fn quoted(word: &str, dollar: bool) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if dollar => out.push_str("$$"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An `ExecStart=` value that runs exactly `argv`, without a shell.
fn command_line<S: AsRef<str>>(argv: &[S]) -> String {
    let mut words = Vec::with_capacity(argv.len() + 1);
    if let Some(program) = argv.first().map(AsRef::as_ref)
        && program.contains('$')
    {
        // The path is not substituted, argv[0] is: give both, with `@`.
        words.push(format!("@{}", quoted(program, false)));
    }
    words.extend(argv.iter().map(|a| quoted(a.as_ref(), true)));
    words.join(" ")
}

/// The environment file of a service: every variable, literal or secret, one per line.
fn env_file_content(ctx: &Context<'_>, name: &str, env: &std::collections::BTreeMap<String, Env>) -> String {
    let mut out = format!("# Managed by tend (scope {}) for {name}.service. Holds secrets.\n", ctx.scope);
    for (key, value) in env {
        let value = match value {
            Env::Literal(v) => v.as_str(),
            Env::Secret { value, .. } => value.expose(),
        };
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '`' | '$') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\"\n");
    }
    out
}

/// A duration as systemd reads it (systemd.time(7)): whole seconds as `90s`, else
/// milliseconds as `1500ms`.
fn duration(d: Duration) -> String {
    let ms = d.get().as_millis();
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}

/// `TimeoutStopSec=`: systemd reads `0` as "no timeout", where a spec's `0s` means "kill
/// at once": the shortest timeout systemd keeps is written instead.
fn stop_timeout(d: Duration) -> String {
    if d.get().is_zero() { "1ms".to_string() } else { duration(d) }
}

/// `CPUQuota=` for a number of CPUs: a percentage with at most two decimals (systemd reads
/// ten-thousandths), and never 0%, which systemd refuses.
fn cpu_quota(cpus: f64) -> String {
    let permyriad = ((cpus * 10_000.0).round() as u64).max(1);
    let (whole, frac) = (permyriad / 100, permyriad % 100);
    match frac {
        0 => format!("{whole}%"),
        f if f.is_multiple_of(10) => format!("{whole}.{}%", f / 10),
        f => format!("{whole}.{f:02}%"),
    }
}

/// Whether a calendar expression already ends with a time zone (then `timezone` is not
/// appended; validation refuses both anyway). Read as in the specs' checks: the normalized
/// form ends with the time unless a zone follows. An expression that only parses in the
/// host's zone ends with one of its abbreviations (`CET`), so it names a zone too.
fn names_zone(expr: &str) -> bool {
    match CalendarSpec::parse_in(expr, &LocalZone::utc()) {
        Ok(spec) => spec.normalized().rsplit(' ').next().is_some_and(|last| !last.contains(':')),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tend_specs::Desired;

    use super::*;
    use crate::engine::systemd::parse_marks;

    fn ctx() -> Context<'static> {
        Context {
            specs: Path::new("/etc/tend/specs"),
            scope: "prod",
            tend_bin: Path::new("/usr/local/bin/tend"),
            state_dir: Path::new("/var/lib/tend"),
            env_dir: Path::new("/etc/tend/env"),
            agent_config: None,
        }
    }

    fn load(yaml: &str) -> Desired {
        tend_specs::load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|d| panic!("bad test spec: {d:?}"))
    }

    /// A systemd service `web` with the given spec fields (flow-style YAML, after `runtime`).
    fn service(fields: &str) -> Service {
        let yaml = format!(
            "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{runtime: systemd, {fields}}}\n\
             ---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: db}}\nspec: {{runtime: systemd, exec: [/bin/true]}}\n\
             ---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: cache}}\nspec: {{runtime: systemd, exec: [/bin/true]}}\n"
        );
        load(&yaml).services.remove("web").expect("web")
    }

    /// A Timer `nightly` with the given spec fields.
    fn timer(fields: &str) -> Timer {
        let yaml = format!("apiVersion: tend/v1\nkind: Timer\nmetadata: {{name: nightly}}\nspec: {{{fields}}}\n");
        load(&yaml).timers.remove("nightly").expect("nightly")
    }

    fn unit<'a>(r: &'a Rendered, name: &str) -> &'a str {
        &r.units.iter().find(|u| u.name == name).unwrap_or_else(|| panic!("no unit {name} in {r:?}")).content
    }

    /// The values of every line that sets `key`.
    fn values(content: &str, key: &str) -> Vec<String> {
        let prefix = format!("{key}=");
        content.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()
    }

    #[test]
    fn exec_arguments_are_quoted_so_systemd_reads_the_literal_argv() {
        for (arg, written) in [
            ("plain", r#""plain""#),
            ("a b", r#""a b""#),
            (r#""q""#, r#""\"q\"""#),
            ("it's", r#""it's""#),
            ("$HOME", r#""$$HOME""#),
            ("${HOME}", r#""$${HOME}""#),
            ("%h", r#""%%h""#),
            (r"back\slash", r#""back\\slash""#),
            (r"\", r#""\\""#),
            ("", r#""""#),
            ("ünïcödé ✓", r#""ünïcödé ✓""#),
            ("a\tb\x01\x7f", r#""a\x09b\x01\x7f""#),
            (";", r#"";""#),
            ("--flag=x y", r#""--flag=x y""#),
        ] {
            assert_eq!(command_line(&["/bin/prog", arg]), format!(r#""/bin/prog" {written}"#), "argument {arg:?}");
        }
    }

    #[test]
    fn a_program_whose_path_holds_a_dollar_is_given_twice_with_the_at_prefix() {
        // systemd substitutes variables in argv[0] but not in the path it executes.
        assert_eq!(command_line(&["/opt/a$b/run", "$x"]), r#"@"/opt/a$b/run" "/opt/a$$b/run" "$$x""#);
        assert_eq!(command_line(&["/opt/100%/run"]), r#""/opt/100%%/run""#);
        assert_eq!(command_line::<&str>(&[]), "");
    }

    #[test]
    fn the_service_exec_is_the_quoted_argv() {
        let s = service(r#"exec: [/bin/sh, -c, "echo \"$1\" 100%", sh, "a b", "$HOME", "%h", "back\\slash", ""]"#);
        let r = render_service(&ctx(), &s);
        assert_eq!(
            values(unit(&r, "web.service"), "ExecStart"),
            [r#""/bin/sh" "-c" "echo \"$$1\" 100%%" "sh" "a b" "$$HOME" "%%h" "back\\slash" """#]
        );
    }

    #[test]
    fn literal_environment_is_quoted_with_dollar_kept_and_percent_doubled() {
        let s = service(
            r#"exec: [/bin/true], env: {B: "$HOME and ${X}", A: "x y \"q\" 'q' back\\slash 50% #no = yes", C: "", D: "tab\there"}"#,
        );
        let r = render_service(&ctx(), &s);
        assert_eq!(r.env_file, None);
        assert_eq!(
            values(unit(&r, "web.service"), "Environment"),
            [
                r#""A=x y \"q\" 'q' back\\slash 50%% #no = yes""#,
                r#""B=$HOME and ${X}""#,
                r#""C=""#,
                r#""D=tab\x09here""#,
            ]
        );
        assert!(values(unit(&r, "web.service"), "EnvironmentFile").is_empty());
    }

    #[test]
    fn secrets_go_only_to_the_environment_file_with_all_other_variables() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let secret = dir.path().join("db-password");
        std::fs::write(&secret, "s3cr\"et $PW `x` \\ end\n").expect("secret file");
        let s = service(&format!(
            "exec: [/bin/true], env: {{LITERAL: \"a b\", PASSWORD: {{fromFile: {}}}}}",
            secret.display()
        ));
        let r = render_service(&ctx(), &s);
        let content = unit(&r, "web.service");
        assert!(!content.contains("s3cr"), "the secret is in the unit:\n{content}");
        assert!(values(content, "Environment").is_empty(), "literals stay with the secret:\n{content}");
        assert_eq!(values(content, "EnvironmentFile"), ["/etc/tend/env/web.env"]);
        let env = r.env_file.as_ref().expect("an environment file");
        assert_eq!(env.path, Path::new("/etc/tend/env/web.env"));
        assert_eq!(
            env.content,
            "# Managed by tend (scope prod) for web.service. Holds secrets.\n\
             LITERAL=\"a b\"\n\
             PASSWORD=\"s3cr\\\"et \\$PW \\`x\\` \\\\ end\"\n"
        );
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cr") && shown.contains("<redacted>"), "Debug shows the secret: {shown}");
        assert!(shown.contains("/etc/tend/env/web.env"), "Debug hides the path: {shown}");
    }

    #[test]
    fn env_file_values_keep_spaces_quotes_dollars_hashes_backslashes_equals_and_line_breaks() {
        let env = [
            ("A".to_string(), Env::Literal("  lead and trail  ".into())),
            ("B".to_string(), Env::Literal("'single' \"double\" $HOME ${X} # = x=y \\n \\".into())),
            ("C".to_string(), Env::Literal("two\nlines\r\tand ü".into())),
        ]
        .into();
        assert_eq!(
            env_file_content(&ctx(), "web", &env),
            "# Managed by tend (scope prod) for web.service. Holds secrets.\n\
             A=\"  lead and trail  \"\n\
             B=\"'single' \\\"double\\\" \\$HOME \\${X} # = x=y \\\\n \\\\\"\n\
             C=\"two\nlines\r\tand ü\"\n"
        );
    }

    #[test]
    fn every_field_of_a_systemd_service_maps_to_its_setting() {
        let s = service(
            "exec: [/usr/sbin/nginx, -g, \"daemon off;\"], user: www-data, group: www-data, workingDir: /srv/ims, \
             env: {A: b}, type: notify, enabled: false, resources: {memory: 512Mi, cpus: 0.5}, stopSignal: SIGINT, \
             stopTimeout: 90s, dependsOn: [{name: db}, {name: cache}], \
             restart: {policy: on-failure, backoff: {initial: 1500ms, max: 1m}}",
        );
        let r = render_service(&ctx(), &s);
        assert_eq!(r.units.len(), 1);
        assert_eq!(r.units[0].name, "web.service");
        assert_eq!(
            r.units[0].content,
            format!(
                "# Managed by tend (scope prod). Changes here are overwritten; edit the spec instead.\n\
                 [Unit]\n\
                 Description=tend: service web\n\
                 X-Tend-Scope=prod\n\
                 X-Tend-Kind=service\n\
                 X-Tend-Name=web\n\
                 X-Tend-Hash={}\n\
                 Requires=cache.service\n\
                 Requires=db.service\n\
                 After=cache.service\n\
                 After=db.service\n\
                 StartLimitIntervalSec=0\n\
                 \n\
                 [Service]\n\
                 Type=notify\n\
                 ExecStart=\"/usr/sbin/nginx\" \"-g\" \"daemon off;\"\n\
                 User=www-data\n\
                 Group=www-data\n\
                 WorkingDirectory=/srv/ims\n\
                 Environment=\"A=b\"\n\
                 MemoryMax=536870912\n\
                 CPUQuota=50%\n\
                 KillSignal=SIGINT\n\
                 TimeoutStopSec=90s\n\
                 Restart=on-failure\n\
                 # backoff.max (1m) is not set: systemd 252 has no RestartMaxDelaySec=, so every restart waits RestartSec=.\n\
                 RestartSec=1500ms\n\
                 \n\
                 [Install]\n\
                 WantedBy=multi-user.target\n",
                s.hash
            )
        );
    }

    #[test]
    fn a_minimal_service_gets_only_what_it_says_and_the_defaults_of_restart() {
        let s = service("exec: [/bin/sleep, infinity]");
        let content = unit(&render_service(&ctx(), &s), "web.service").to_string();
        for absent in
            ["Requires=", "After=", "PIDFile=", "User=", "Group=", "WorkingDirectory=", "Environment", "MemoryMax="]
        {
            assert!(!content.contains(absent), "{absent} in\n{content}");
        }
        for absent in ["CPUQuota=", "KillSignal=", "TimeoutStopSec="] {
            assert!(!content.contains(absent), "{absent} in\n{content}");
        }
        assert_eq!(values(&content, "Type"), ["simple"]);
        assert_eq!(values(&content, "Restart"), ["always"]);
        assert_eq!(values(&content, "RestartSec"), ["1s"]);
        assert_eq!(values(&content, "StartLimitIntervalSec"), ["0"]);
        assert!(content.ends_with("\n[Install]\nWantedBy=multi-user.target\n"), "{content}");
    }

    #[test]
    fn restart_policies_map_to_systemd_restart_settings() {
        for (policy, restart, restart_sec) in [
            ("always", "always", Some("2s")),
            ("on-failure", "on-failure", Some("2s")),
            ("never", "no", None),
            ("hold", "no", None),
        ] {
            let s = service(&format!("exec: [/bin/true], restart: {{policy: {policy}, backoff: {{initial: 2s}}}}"));
            let content = unit(&render_service(&ctx(), &s), "web.service").to_string();
            assert_eq!(values(&content, "Restart"), [restart], "{policy}");
            assert_eq!(values(&content, "RestartSec"), restart_sec.into_iter().collect::<Vec<_>>(), "{policy}");
            assert_eq!(content.contains("RestartMaxDelaySec"), restart_sec.is_some(), "{policy}");
        }
    }

    #[test]
    fn service_types_and_the_pid_file_of_a_forking_daemon() {
        for ty in ["simple", "notify", "exec"] {
            let s = service(&format!("exec: [/bin/true], type: {ty}"));
            let content = unit(&render_service(&ctx(), &s), "web.service").to_string();
            assert_eq!(values(&content, "Type"), [ty]);
            assert!(values(&content, "PIDFile").is_empty());
        }
        let s = service("exec: [/usr/sbin/daemon], type: forking, pidFile: /run/100%/d.pid");
        let content = unit(&render_service(&ctx(), &s), "web.service").to_string();
        assert_eq!(values(&content, "Type"), ["forking"]);
        assert_eq!(values(&content, "PIDFile"), ["/run/100%%/d.pid"]);
    }

    #[test]
    fn paths_and_accounts_double_their_percent_signs() {
        let s = service("exec: [/bin/true], user: \"33\", workingDir: \"/srv/100% sure\"");
        let content = unit(&render_service(&ctx(), &s), "web.service").to_string();
        assert_eq!(values(&content, "User"), ["33"]);
        assert_eq!(values(&content, "WorkingDirectory"), ["/srv/100%% sure"]);
    }

    #[test]
    fn durations_and_cpu_quotas_are_written_as_systemd_reads_them() {
        for (ms, text) in [(0, "0s"), (500, "500ms"), (1500, "1500ms"), (90_000, "90s"), (86_400_000, "86400s")] {
            assert_eq!(duration(Duration::from_millis(ms)), text);
        }
        assert_eq!(stop_timeout(Duration::from_millis(0)), "1ms", "0 would mean no timeout to systemd");
        assert_eq!(stop_timeout(Duration::from_secs(30)), "30s");
        for (cpus, quota) in
            [(0.5, "50%"), (1.0, "100%"), (2.0, "200%"), (1.5, "150%"), (0.333, "33.3%"), (0.0125, "1.25%")]
        {
            assert_eq!(cpu_quota(cpus), quota, "{cpus}");
        }
        assert_eq!(cpu_quota(0.000_001), "0.01%", "never 0%");
        assert_eq!(cpu_quota(1024.0), "102400%");
    }

    #[test]
    fn a_docker_service_has_no_unit() {
        let d = load("apiVersion: tend/v1\nkind: Service\nmetadata: {name: web}\nspec: {image: x:1}\n");
        assert_eq!(render_service(&ctx(), &d.services["web"]), Rendered::default());
    }

    #[test]
    fn a_timer_renders_its_schedule_and_a_oneshot_job_running_tend() {
        let t = timer(
            "schedule: \"Mon..Fri *-*-* 06:30:00\", timezone: Europe/Berlin, persistent: true, randomizedDelay: 5m, \
             accuracy: 1s, timeout: 10m, job: {runtime: host, exec: [/bin/true]}",
        );
        let r = render_timer(&ctx(), &t);
        assert_eq!(r.env_file, None);
        let names: Vec<&str> = r.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["nightly.service", "nightly.timer"]);
        let header = |kind: &str| {
            format!(
                "# Managed by tend (scope prod). Changes here are overwritten; edit the spec instead.\n\
                 [Unit]\n\
                 Description=tend: {kind} nightly\n\
                 X-Tend-Scope=prod\n\
                 X-Tend-Kind={kind}\n\
                 X-Tend-Name=nightly\n\
                 X-Tend-Hash={}\n",
                t.hash
            )
        };
        assert_eq!(
            unit(&r, "nightly.timer"),
            header("timer")
                + "\n[Timer]\n\
                   OnCalendar=Mon..Fri *-*-* 06:30:00 Europe/Berlin\n\
                   Persistent=true\n\
                   RandomizedDelaySec=300s\n\
                   AccuracySec=1s\n\
                   Unit=nightly.service\n\
                   \n\
                   [Install]\n\
                   WantedBy=timers.target\n"
        );
        assert_eq!(
            unit(&r, "nightly.service"),
            header("timer-job")
                + "StartLimitIntervalSec=0\n\
                   \n\
                   [Service]\n\
                   Type=oneshot\n\
                   ExecStart=\"/usr/local/bin/tend\" \"--scope\" \"prod\" \"--state-dir\" \"/var/lib/tend\" \"job\" \"run\" \"nightly\" \"/etc/tend/specs\" \"--trigger\" \"timer\"\n\
                   TimeoutStartSec=630s\n\
                   KillMode=mixed\n"
        );
    }

    #[test]
    fn a_leader_only_timers_run_reads_the_agents_configuration_when_it_is_not_the_default() {
        let config = Path::new("/srv/tend/agent.yaml");
        let with_config = Context { agent_config: Some(config), ..ctx() };
        let exec = |ctx: &Context<'_>, t: &Timer| values(unit(&render_timer(ctx, t), "nightly.service"), "ExecStart");
        let leader = timer("enabled: false, runOn: leader, job: {runtime: host, exec: [/bin/true]}");
        let line = exec(&with_config, &leader);
        assert!(line[0].ends_with(r#""--trigger" "timer" "--config" "/srv/tend/agent.yaml""#), "{line:?}");
        // The default file needs no option; a Timer of every node needs no cluster.
        assert!(!exec(&ctx(), &leader)[0].contains("--config"));
        let node = timer("enabled: false, job: {runtime: host, exec: [/bin/true]}");
        assert_eq!(exec(&with_config, &node), exec(&ctx(), &node));
    }

    #[test]
    fn a_timer_without_schedule_has_only_its_service_with_no_time_limit() {
        let t = timer("enabled: false, job: {runtime: host, exec: [/bin/true]}");
        let r = render_timer(&ctx(), &t);
        let names: Vec<&str> = r.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["nightly.service"]);
        let content = unit(&r, "nightly.service");
        assert_eq!(values(content, "TimeoutStartSec"), ["infinity"]);
        assert!(!content.contains("[Install]"), "started by its timer or by hand only:\n{content}");
    }

    #[test]
    fn a_timer_without_options_writes_persistent_and_nothing_else() {
        let t = timer("schedule: daily, job: {runtime: docker, image: x:1}");
        let content = unit(&render_timer(&ctx(), &t), "nightly.timer").to_string();
        assert_eq!(values(&content, "OnCalendar"), ["daily"]);
        assert_eq!(values(&content, "Persistent"), ["false"]);
        assert!(!content.contains("RandomizedDelaySec=") && !content.contains("AccuracySec="), "{content}");
    }

    #[test]
    fn the_timezone_is_appended_unless_the_schedule_names_a_zone() {
        let t = timer("schedule: \"*-*-* 01:00\", timezone: America/New_York, job: {runtime: docker, image: x:1}");
        assert_eq!(
            values(unit(&render_timer(&ctx(), &t), "nightly.timer"), "OnCalendar"),
            ["*-*-* 01:00 America/New_York"]
        );
        let t = timer("schedule: \"*-*-* 01:00 UTC\", job: {runtime: docker, image: x:1}");
        assert_eq!(values(unit(&render_timer(&ctx(), &t), "nightly.timer"), "OnCalendar"), ["*-*-* 01:00 UTC"]);
        for (expr, named) in [
            ("daily", false),
            ("Mon..Fri 09:00", false),
            ("*-*-1 03:00", false),
            ("daily UTC", true),
            ("*-*-* 01:00 Europe/Berlin", true),
            ("@1700000000", true),
        ] {
            assert_eq!(names_zone(expr), named, "{expr}");
        }
    }

    #[test]
    fn the_marks_are_read_back_by_the_adapter() {
        let s = service("exec: [/bin/true]");
        let marks = parse_marks(unit(&render_service(&ctx(), &s), "web.service"));
        let want = |kind: &str, name: &str, hash: &str| {
            [("X-Tend-Hash", hash), ("X-Tend-Kind", kind), ("X-Tend-Name", name), ("X-Tend-Scope", "prod")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert_eq!(marks, want("service", "web", &s.hash));
        let t = timer("schedule: daily, job: {runtime: host, exec: [/bin/true]}");
        let r = render_timer(&ctx(), &t);
        assert_eq!(parse_marks(unit(&r, "nightly.timer")), want("timer", "nightly", &t.hash));
        assert_eq!(parse_marks(unit(&r, "nightly.service")), want("timer-job", "nightly", &t.hash));
    }

    #[test]
    fn output_is_stable_whatever_the_order_in_the_spec() {
        let a = service("exec: [/bin/true], env: {A: \"1\", B: \"2\"}, dependsOn: [{name: db}, {name: cache}]");
        let b = service("dependsOn: [{name: cache}, {name: db}], env: {B: \"2\", A: \"1\"}, exec: [/bin/true]");
        assert_eq!(a.hash, b.hash);
        assert_eq!(render_service(&ctx(), &a), render_service(&ctx(), &b));
        assert_eq!(render_service(&ctx(), &a), render_service(&ctx(), &a));
        let t = timer("schedule: daily, job: {runtime: host, exec: [/bin/true]}");
        assert_eq!(render_timer(&ctx(), &t), render_timer(&ctx(), &t));
        for u in render_service(&ctx(), &a).units.iter().chain(&render_timer(&ctx(), &t).units) {
            assert!(u.content.ends_with('\n') && !u.content.ends_with("\n\n"), "{}", u.content);
        }
    }

    #[test]
    fn a_changed_secret_changes_the_unit_through_its_hash() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let secret = dir.path().join("pw");
        let render = |value: &str| {
            std::fs::write(&secret, value).expect("secret file");
            let s = service(&format!("exec: [/bin/true], env: {{PW: {{fromFile: {}}}}}", secret.display()));
            render_service(&ctx(), &s)
        };
        let (one, two) = (render("one"), render("two"));
        assert_ne!(one.units[0].content, two.units[0].content);
        assert!(!one.units[0].content.contains("one") && !two.units[0].content.contains("two"));
    }
}
