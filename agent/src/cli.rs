//! The command line: argument definitions and the commands, each a thin layer over load,
//! observe, plan and apply. Human output is a table, coloured only on a terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tend_specs::{Desired, Diagnostic};

use crate::apply::{self, ApplyError, Options, Outcome, Report};
use crate::docker::DockerEngine;
use crate::engine::EngineError;
use crate::model::{Health, Observed, instance_name};
use crate::plan::{self, Input, Note, Plan};
use crate::state::{self, StateDir, StateError};

/// Where specs are read from when no PATH is given.
pub const DEFAULT_SPECS: &str = "/etc/tend/specs";

/// tend: keeps this host's containers matching the specs.
#[derive(Debug, Parser)]
#[command(name = "tend", version, about, propagate_version = true)]
pub struct Cli {
    /// State directory (holds, restart history).
    #[arg(long, global = true, env = "TEND_STATE_DIR", default_value = "/var/lib/tend")]
    pub state_dir: PathBuf,
    /// The scope this tend owns: objects labelled tend.scope=SCOPE. One per agent.
    #[arg(long, global = true, env = "TEND_SCOPE", default_value = "default")]
    pub scope: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// A table for people.
    #[default]
    Text,
    /// JSON for programs.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check specs and report every problem with its file:line:column.
    Validate {
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
    },
    /// Show what apply would do, and why. Exit 0: nothing to do; 2: changes; 1: error.
    Plan {
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Make the host match the specs.
    Apply {
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
        /// Steps run at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
    /// Show services, instances, health, holds and conflicts.
    Status {
        /// A spec file or directory.
        #[arg(default_value = DEFAULT_SPECS)]
        path: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Release a hold: SERVICE (all its instances) or an instance's container name.
    Release {
        /// The service or instance.
        name: String,
    },
    /// Print the JSON Schema of spec documents.
    Schema,
    /// Show how systemd reads a calendar expression and when it next elapses, in the layout
    /// of `systemd-analyze calendar` (without its "From now" lines).
    Calendar {
        /// The expression, e.g. `Mon..Fri 09:00` or `daily`.
        expr: String,
        /// How many elapses to show.
        #[arg(long, default_value_t = 1)]
        iterations: usize,
        /// Count from this time (`2026-11-22 00:00:00 UTC`, `@EPOCH`) instead of now.
        #[arg(long)]
        from: Option<String>,
    },
}

/// Errors of the commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The specs have problems (already printed).
    #[error("{count} problem(s) in the specs; nothing was changed")]
    Invalid {
        /// How many.
        count: usize,
    },
    /// The specs declare objects this version cannot apply yet (systemd services, Timers).
    #[error("{0}")]
    Unsupported(String),
    /// The scope name is not usable.
    #[error("invalid scope `{0}`: use a DNS label (lowercase letters, digits, `-`)")]
    Scope(String),
    /// Connecting to the engine failed.
    #[error("the container engine is not available (nothing was changed)")]
    Engine(#[source] EngineError),
    /// A pass failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// No hold matched.
    #[error("nothing is held under `{0}` (see `tend status`)")]
    NotHeld(String),
    /// A calendar expression or time is not valid.
    #[error("invalid {what} `{text}`")]
    Calendar {
        /// "calendar expression" or "time".
        what: &'static str,
        /// The text given.
        text: String,
        /// What is wrong, with its column.
        #[source]
        source: tend_specs::calendar::CalendarError,
    },
    /// The async runtime could not start.
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    /// Printing failed.
    #[error("writing output")]
    Output(#[source] serde_json::Error),
}

/// Runs a command; returns the exit code.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    init_logging();
    if !tend_specs::load::is_dns_label(&cli.scope) {
        return Err(CliError::Scope(cli.scope));
    }
    match &cli.command {
        Command::Schema => {
            print!("{}", tend_specs::schema::json_schema_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { path } => {
            let desired = load(path)?;
            let timers = match desired.timers.len() {
                0 => String::new(),
                n => format!(" and {n} timer(s)"),
            };
            println!("ok: {} service(s){timers} in {}", desired.services.len(), path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Release { name } => release(&cli.state_dir, name),
        Command::Calendar { expr, iterations, from } => calendar(expr, *iterations, from.as_deref()),
        Command::Plan { path, output } => {
            let desired = load_applicable(path)?;
            runtime()?.block_on(async {
                let engine = DockerEngine::connect().await.map_err(CliError::Engine)?;
                let observed = apply::observe(&engine, &cli.scope, &desired).await?;
                let st = state::read_state(&cli.state_dir)?;
                let pulled = Default::default();
                let plan = plan::plan(Input {
                    desired: &desired,
                    observed: &observed,
                    state: &st,
                    now_ms: apply::now_ms(),
                    pulled: &pulled,
                });
                match output {
                    Output::Json => print_json(&plan)?,
                    Output::Text => print_plan(&plan),
                }
                Ok(ExitCode::from(if plan.is_empty() { 0 } else { 2 }))
            })
        }
        Command::Apply { path, output, parallel } => {
            let desired = Arc::new(load_applicable(path)?);
            runtime()?.block_on(async {
                let engine = Arc::new(DockerEngine::connect().await.map_err(CliError::Engine)?);
                let state_dir = StateDir::open(&cli.state_dir)?;
                let options = Options { scope: cli.scope.clone(), parallel: *parallel };
                let report = apply::apply(engine, desired, &state_dir, &options).await?;
                match output {
                    Output::Json => print_json(&report)?,
                    Output::Text => print_report(&report),
                }
                let unmet = unmet(&report.plan.notes);
                if unmet > 0 {
                    eprintln!(
                        "{} the specs are not met: {unmet} name conflict(s) or missing image(s) need an operator (see the notes)",
                        Paint::stderr().red("error:")
                    );
                }
                Ok(if report.ok() && unmet == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
            })
        }
        Command::Status { path, output } => {
            let desired = load_applicable(path)?;
            runtime()?.block_on(async {
                let engine = DockerEngine::connect().await.map_err(CliError::Engine)?;
                let observed = apply::observe(&engine, &cli.scope, &desired).await?;
                let st = state::read_state(&cli.state_dir)?;
                let pulled = Default::default();
                let plan = plan::plan(Input {
                    desired: &desired,
                    observed: &observed,
                    state: &st,
                    now_ms: apply::now_ms(),
                    pulled: &pulled,
                });
                let status = status(&desired, &observed, &st, &plan);
                match output {
                    Output::Json => print_json(&status)?,
                    Output::Text => print_status(&status),
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(CliError::Runtime)
}

/// Loads specs, printing every problem.
fn load(path: &Path) -> Result<Desired, CliError> {
    tend_specs::load_path(path).map_err(|diags: Vec<Diagnostic>| {
        let paint = Paint::stderr();
        for d in &diags {
            match &d.location {
                Some(loc) => eprintln!("{loc}: {} {}", paint.red("error:"), d.message),
                None => eprintln!("{} {}", paint.red("error:"), d.message),
            }
        }
        CliError::Invalid { count: diags.len() }
    })
}

/// Loads specs for `plan`, `apply` and `status`, which act on Docker only: a set that also
/// declares systemd services or Timers is refused whole, before any engine is touched, rather
/// than applied in part with those silently left out.
fn load_applicable(path: &Path) -> Result<Desired, CliError> {
    let desired = load(path)?;
    match unsupported(&desired) {
        Some(msg) => Err(CliError::Unsupported(msg)),
        None => Ok(desired),
    }
}

/// What of `desired` this version cannot apply yet, as one sentence; `None` when it can
/// apply everything.
pub fn unsupported(desired: &Desired) -> Option<String> {
    let list = |one: &str, many: &str, names: Vec<&str>| match names.len() {
        0 => None,
        1 => Some(format!("{one} `{}`", names[0])),
        _ => Some(format!("{many} {}", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))),
    };
    let parts: Vec<String> = [
        list("Timer", "Timers", desired.timers.keys().map(String::as_str).collect()),
        list("systemd service", "systemd services", desired.systemd_services().map(|s| s.name.as_str()).collect()),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| {
        let them = if parts.len() == 1 && !parts[0].contains(',') { "it" } else { "them" };
        format!(
            "{} cannot be applied by this version yet (the systemd backend is being built); `tend validate` checks {them}",
            parts.join(" and ")
        )
    })
}

fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(v).map_err(CliError::Output)?);
    Ok(())
}

/// ANSI colours, only on a terminal and without NO_COLOR.
#[derive(Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn stdout() -> Self {
        Self(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
    fn stderr() -> Self {
        Self(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
    fn code(self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    fn red(self, s: &str) -> String {
        self.code("31", s)
    }
    fn green(self, s: &str) -> String {
        self.code("32", s)
    }
    fn yellow(self, s: &str) -> String {
        self.code("33", s)
    }
    fn bold(self, s: &str) -> String {
        self.code("1", s)
    }
}

/// Prints rows as aligned columns.
fn table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| visible_len(c)).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - visible_len(cell) + 2));
            }
        }
        println!("  {}", line.trim_end());
    }
}

fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

fn step_row(step: &plan::Step) -> Vec<String> {
    let mut what = apply::target(&step.action);
    if let plan::Action::Await { condition, .. } = &step.action {
        what = format!("{what} ({condition})");
    }
    let mut after = step.after.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    if step.pause_ms > 0 {
        after = format!("{after} +{}", tend_specs::quantity::Duration::from_millis(step.pause_ms));
    }
    vec![step.id.to_string(), apply::action_name(&step.action).to_string(), what, step.reason.to_string(), after]
}

/// How many notes say the specs cannot be met until an operator acts (a name taken by a
/// container tend does not own, an image that is missing and may not be pulled). Apply
/// fails on them; holds, backoffs and policy-stopped instances are intended states.
fn unmet(notes: &[Note]) -> usize {
    notes.iter().filter(|n| matches!(n, Note::Conflict { .. } | Note::ImageNotPresent { .. })).count()
}

/// The line shown when there are no steps: the host matches only when nothing is left alone.
fn no_steps_line(notes: &[Note]) -> &'static str {
    if notes.is_empty() {
        "No changes: the host matches the specs."
    } else if unmet(notes) > 0 {
        "No changes can be made now, but the host does not match the specs (see below)."
    } else {
        "No changes to make now; some instances are left alone (see below)."
    }
}

fn print_notes(notes: &[Note]) {
    if notes.is_empty() {
        return;
    }
    let paint = Paint::stdout();
    println!("{}", paint.bold("Left alone:"));
    for n in notes {
        println!("  {} {n}", paint.yellow("!"));
    }
}

fn print_plan(plan: &Plan) {
    let paint = Paint::stdout();
    if plan.steps.is_empty() {
        println!("{}", no_steps_line(&plan.notes));
    } else {
        println!("{}", paint.bold(&format!("Plan: {} step(s)", plan.steps.len())));
        let mut rows = vec![vec!["#".into(), "ACTION".into(), "TARGET".into(), "REASON".into(), "AFTER".into()]];
        rows.extend(plan.steps.iter().map(step_row));
        table(&rows);
    }
    print_notes(&plan.notes);
}

fn print_report(report: &Report) {
    let paint = Paint::stdout();
    let mut rows = Vec::new();
    let mut counts = [0usize; 3];
    let steps = report
        .pulls
        .iter()
        .map(|(s, o)| (s, Some(o)))
        .chain(report.plan.steps.iter().map(|s| (s, report.outcomes.get(&s.id))));
    for (step, outcome) in steps {
        let mut row = step_row(step);
        row.pop();
        let result = match outcome {
            Some(Outcome::Done { ms }) => {
                counts[0] += 1;
                paint.green(&format!("done {:.1}s", *ms as f64 / 1000.0))
            }
            Some(Outcome::Failed { error }) => {
                counts[1] += 1;
                paint.red(&format!("FAILED: {error}"))
            }
            Some(Outcome::Skipped { because_of }) => {
                counts[2] += 1;
                paint.yellow(&format!("skipped: step {because_of} did not succeed"))
            }
            None => "not run".into(),
        };
        row.push(result);
        rows.push(row);
    }
    if rows.is_empty() {
        println!("{}", no_steps_line(&report.plan.notes));
    } else {
        table(&rows);
        println!("{} done, {} failed, {} skipped", counts[0], counts[1], counts[2]);
    }
    print_notes(&report.plan.notes);
}

/// One instance in `tend status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Container name.
    pub name: String,
    /// Run state, or `missing`.
    pub state: String,
    /// Health.
    pub health: Option<Health>,
    /// Exit code when exited.
    pub exit_code: Option<i64>,
    /// Whether it runs the current spec.
    pub up_to_date: bool,
    /// Held for triage.
    pub held: bool,
}

/// One service in `tend status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// Desired replicas (0 for a service whose spec is gone).
    pub replicas: u32,
    /// Instances seen or expected.
    pub instances: Vec<InstanceStatus>,
}

/// The whole `tend status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// Steps an apply would run now.
    pub pending_steps: usize,
    /// Conflicts, holds, backoffs and other notes.
    pub notes: Vec<Note>,
}

fn status(desired: &Desired, observed: &Observed, st: &state::State, plan: &Plan) -> Status {
    let mut by_service: BTreeMap<&str, Vec<&crate::model::Container>> = BTreeMap::new();
    for c in &observed.containers {
        by_service.entry(c.service.as_str()).or_default().push(c);
    }
    let mut services = Vec::new();
    let mut names: Vec<&str> = desired.services.keys().map(String::as_str).collect();
    names.extend(by_service.keys().filter(|k| !desired.services.contains_key(**k)));
    names.sort_unstable();
    names.dedup();
    for name in names {
        let spec = desired.services.get(name);
        let replicas = spec.map_or(0, |s| s.spec.replicas);
        let mut instances = Vec::new();
        let live = by_service.get(name).cloned().unwrap_or_default();
        for c in &live {
            instances.push(InstanceStatus {
                name: c.name.clone(),
                state: format!("{:?}", c.state).to_lowercase(),
                health: (c.health != Health::None).then_some(c.health),
                exit_code: c.exit_code,
                up_to_date: spec.is_some_and(|s| s.hash == c.hash),
                held: st.holds.contains_key(&c.name),
            });
        }
        for i in 1..=replicas {
            let n = instance_name(name, i);
            if !live.iter().any(|c| c.name == n) {
                instances.push(InstanceStatus {
                    name: n.clone(),
                    state: "missing".into(),
                    health: None,
                    exit_code: None,
                    up_to_date: false,
                    held: st.holds.contains_key(&n),
                });
            }
        }
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        services.push(ServiceStatus { name: name.to_string(), replicas, instances });
    }
    Status { services, pending_steps: plan.steps.len(), notes: plan.notes.clone() }
}

fn print_status(status: &Status) {
    let paint = Paint::stdout();
    let mut rows = vec![vec!["SERVICE".into(), "INSTANCE".into(), "STATE".into(), "HEALTH".into(), "SPEC".into()]];
    for s in &status.services {
        for i in &s.instances {
            let state = match (i.held, i.state.as_str(), i.exit_code) {
                (true, st, _) => paint.yellow(&format!("held ({st})")),
                (false, "running", _) => paint.green("running"),
                (false, st, Some(code)) => paint.red(&format!("{st} ({code})")),
                (false, st, None) => paint.red(st),
            };
            let health = i.health.map(|h| format!("{h:?}").to_lowercase()).unwrap_or_else(|| "-".into());
            let spec = if s.replicas == 0 {
                "removed".to_string()
            } else if i.up_to_date {
                "current".to_string()
            } else if i.state == "missing" {
                "-".to_string()
            } else {
                paint.yellow("outdated")
            };
            rows.push(vec![s.name.clone(), i.name.clone(), state, health, spec]);
        }
        if s.instances.is_empty() {
            rows.push(vec![s.name.clone(), "-".into(), "scaled to 0".into(), "-".into(), "-".into()]);
        }
    }
    table(&rows);
    if status.pending_steps > 0 {
        println!("{} step(s) pending: run `tend plan` to see them", status.pending_steps);
    } else if status.notes.is_empty() {
        println!("Converged: the host matches the specs.");
    } else {
        println!("{}", no_steps_line(&status.notes));
    }
    print_notes(&status.notes);
}

fn calendar(expr: &str, iterations: usize, from: Option<&str>) -> Result<ExitCode, CliError> {
    use tend_specs::calendar;
    let from = match from {
        Some(text) => calendar::parse_time(text).map_err(|source| CliError::Calendar {
            what: "time",
            text: text.to_string(),
            source,
        })?,
        None => calendar::Timestamp::now(),
    };
    let text = calendar::describe(expr, from, iterations.max(1)).map_err(|source| CliError::Calendar {
        what: "calendar expression",
        text: expr.to_string(),
        source,
    })?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn release(state_dir: &Path, name: &str) -> Result<ExitCode, CliError> {
    let dir = StateDir::open(state_dir)?;
    let mut st = dir.load()?;
    let released: Vec<String> =
        st.holds.iter().filter(|(k, h)| *k == name || h.service == name).map(|(k, _)| k.clone()).collect();
    if released.is_empty() {
        return Err(CliError::NotHeld(name.to_string()));
    }
    let now = apply::now_ms();
    for k in &released {
        st.holds.remove(k);
        st.restarts.remove(k);
        st.released.insert(k.clone(), now);
    }
    dir.save(&st)?;
    for k in &released {
        println!("released {k}: the next apply starts it again");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn desired(yaml: &str) -> Desired {
        tend_specs::load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|d| panic!("bad test spec: {d:?}"))
    }

    fn doc(kind: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: tend/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n")
    }

    const UNIT: &str = "{runtime: systemd, exec: [/usr/bin/x]}";
    const TIMER: &str = "{enabled: false, job: {runtime: host, exec: [/usr/bin/x]}}";

    #[test]
    fn docker_services_alone_can_be_applied() {
        assert_eq!(unsupported(&desired(&doc("Service", "web", "{image: busybox:1}"))), None);
        assert_eq!(unsupported(&Desired::default()), None);
    }

    #[test]
    fn systemd_services_and_timers_are_named_in_one_sentence() {
        let one = desired(&(doc("Service", "web", "{image: busybox:1}") + &doc("Service", "u", UNIT)));
        assert_eq!(
            unsupported(&one).as_deref(),
            Some(
                "systemd service `u` cannot be applied by this version yet (the systemd backend is being built); `tend validate` checks it"
            )
        );
        let many = desired(
            &(doc("Timer", "t2", TIMER)
                + &doc("Timer", "t1", TIMER)
                + &doc("Service", "u", UNIT)
                + &doc("Service", "v", UNIT)),
        );
        assert_eq!(
            unsupported(&many).as_deref(),
            Some(
                "Timers `t1`, `t2` and systemd services `u`, `v` cannot be applied by this version yet (the systemd backend is being built); `tend validate` checks them"
            )
        );
    }
}
