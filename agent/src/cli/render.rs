//! How the commands show what they found: plans, reports and status as tables (coloured only
//! on a terminal), or JSON.

use super::*;

pub(super) fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    outln!("{}", serde_json::to_string_pretty(v).map_err(CliError::Output)?);
    Ok(())
}

/// ANSI colours, only on a terminal and without NO_COLOR.
#[derive(Clone, Copy)]
pub(super) struct Paint(pub(super) bool);

impl Paint {
    pub(super) fn stdout() -> Self {
        Self(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
    pub(super) fn stderr() -> Self {
        Self(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
    pub(super) fn code(self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    pub(super) fn red(self, s: &str) -> String {
        self.code("31", s)
    }
    pub(super) fn green(self, s: &str) -> String {
        self.code("32", s)
    }
    pub(super) fn yellow(self, s: &str) -> String {
        self.code("33", s)
    }
    pub(super) fn bold(self, s: &str) -> String {
        self.code("1", s)
    }
}

/// Prints rows as aligned columns.
pub(super) fn table(rows: &[Vec<String>]) {
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
        outln!("  {}", line.trim_end());
    }
}

pub(super) fn visible_len(s: &str) -> usize {
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

pub(super) fn step_row(step: &plan::Step) -> Vec<String> {
    let mut what = crate::reconcile::execute::target(&step.action);
    if let plan::Action::Await { condition, .. } = &step.action {
        what = format!("{what} ({condition})");
    }
    let mut after = step.after.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    if step.pause_ms > 0 {
        after = format!("{after} +{}", tend_specs::quantity::Duration::from_millis(step.pause_ms));
    }
    vec![
        step.id.to_string(),
        crate::reconcile::execute::action_name(&step.action).to_string(),
        what,
        step.reason.to_string(),
        after,
    ]
}

/// How many notes say the specs cannot be met until an operator acts (a name taken by a
/// container tend does not own, an image that is missing and may not be pulled). Apply
/// fails on them; holds, backoffs and policy-stopped instances are intended states.
pub(super) fn unmet(notes: &[Note]) -> usize {
    notes
        .iter()
        .filter(|n| matches!(n, Note::Conflict { .. } | Note::UnitConflict { .. } | Note::ImageNotPresent { .. }))
        .count()
}

/// The line shown when there are no steps: the host matches only when nothing is left alone.
pub(super) fn no_steps_line(notes: &[Note]) -> &'static str {
    if notes.is_empty() {
        "No changes: the host matches the specs."
    } else if unmet(notes) > 0 {
        "No changes can be made now, but the host does not match the specs (see below)."
    } else {
        "No changes to make now; some instances are left alone (see below)."
    }
}

pub(super) fn print_notes(notes: &[Note]) {
    if notes.is_empty() {
        return;
    }
    let paint = Paint::stdout();
    outln!("{}", paint.bold("Left alone:"));
    for n in notes {
        outln!("  {} {n}", paint.yellow("!"));
    }
}

/// Prints a plan (from the agent or made here) and says by the exit code what it means:
/// 0 nothing to do, 2 changes, 1 part of the specs cannot be planned here.
pub(super) fn show_plan(plan: &Plan, output: Output) -> Result<ExitCode, CliError> {
    match output {
        Output::Json => print_json(plan)?,
        Output::Text => print_plan(plan),
    }
    if let Some(why) = &plan.unchecked {
        eoutln!("{} {why}", Paint::stderr().red("error:"));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::from(if plan.is_empty() { 0 } else { 2 }))
}

pub(super) fn print_plan(plan: &Plan) {
    let paint = Paint::stdout();
    if plan.steps.is_empty() {
        outln!("{}", no_steps_line(&plan.notes));
    } else {
        outln!("{}", paint.bold(&format!("Plan: {} step(s)", plan.steps.len())));
        let mut rows = vec![vec!["#".into(), "ACTION".into(), "TARGET".into(), "REASON".into(), "AFTER".into()]];
        rows.extend(plan.steps.iter().map(step_row));
        table(&rows);
    }
    print_notes(&plan.notes);
}

pub(super) fn print_report(report: &Report) {
    let paint = Paint::stdout();
    let mut rows = Vec::new();
    let mut counts = [0usize; 3];
    for (step, outcome) in report.steps() {
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
            Some(Outcome::Cancelled) => {
                counts[2] += 1;
                paint.yellow("cancelled: tend is stopping")
            }
            None => "not run".into(),
        };
        row.push(result);
        rows.push(row);
    }
    if rows.is_empty() {
        outln!("{}", no_steps_line(&report.plan.notes));
    } else {
        table(&rows);
        outln!("{} done, {} failed, {} skipped", counts[0], counts[1], counts[2]);
    }
    print_notes(&report.plan.notes);
}

pub(super) fn print_status(status: &Status) {
    let paint = Paint::stdout();
    if let Some(a) = &status.agent {
        print_agent(paint, a);
    }
    if let Some(d) = &status.drain {
        outln!("{}\n", paint.yellow(&drained_line(d)));
    }
    if !status.timers.is_empty() {
        print_job_list(&status.timers);
    }
    if !status.backups.is_empty() {
        let mut rows = vec![vec!["BACKUP".into(), "LAST SUCCESS".into(), "FREE".into(), "HEALTH".into()]];
        for b in &status.backups {
            let problems = b.problems();
            let health = if problems.is_empty() { paint.green("ok") } else { paint.red(&problems.join("; ")) };
            rows.push(vec![
                b.name.clone(),
                b.last_success_ms.map(crate::support::time::format_ms).unwrap_or_else(|| "never".into()),
                b.free_bytes.map(|f| format!("{} MiB", f / (1024 * 1024))).unwrap_or_else(|| "-".into()),
                health,
            ]);
        }
        table(&rows);
    }
    if !status.units.is_empty() {
        let mut rows = vec![vec!["UNIT".into(), "STATE".into(), "ENABLED".into()]];
        for u in &status.units {
            let state = match (u.held, u.state.as_str()) {
                _ if u.maintenance.is_some() => paint.yellow(&format!(
                    "maintenance ({})",
                    u.maintenance.as_ref().map(ToString::to_string).unwrap_or_default()
                )),
                (true, st) => paint.yellow(&format!("held ({st})")),
                (false, "active") => paint.green("active"),
                (false, st) => paint.red(st),
            };
            rows.push(vec![u.unit.clone(), state, if u.enabled { "yes".into() } else { "no".into() }]);
        }
        table(&rows);
    }
    let mut rows = vec![vec!["SERVICE".into(), "INSTANCE".into(), "STATE".into(), "HEALTH".into(), "SPEC".into()]];
    for s in &status.services {
        for i in &s.instances {
            let state = match (i.held, i.state.as_str(), i.exit_code) {
                _ if i.maintenance.is_some() => paint.yellow(&format!(
                    "maintenance ({})",
                    i.maintenance.as_ref().map(ToString::to_string).unwrap_or_default()
                )),
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
    if rows.len() > 1 {
        table(&rows);
    }
    if status.pending_steps > 0 {
        outln!("{} step(s) pending: run `tend plan` to see them", status.pending_steps);
    } else if let Some(why) = &status.unchecked {
        outln!("Not all of the specs could be checked here: {why}");
    } else if status.notes.is_empty() {
        outln!("Converged: the host matches the specs.");
    } else {
        outln!("{}", no_steps_line(&status.notes));
    }
    print_notes(&status.notes);
}

pub(super) fn print_agent(paint: Paint, a: &crate::reconcile::status::AgentStatus) {
    let commit = a.commit.as_deref().map(|c| format!(" at commit {}", c.get(..12).unwrap_or(c))).unwrap_or_default();
    outln!(
        "agent: pid {}, running since {}, specs from {}{commit}",
        a.pid,
        crate::support::time::format_ms(a.started_ms),
        a.source
    );
    if let (Some(at), Some(result)) = (a.last_pass_ms, &a.last_result) {
        outln!(
            "last pass: {} at {} ({} ms); {} pass(es) so far",
            result,
            crate::support::time::format_ms(at),
            a.last_pass_duration_ms.unwrap_or(0),
            a.passes
        );
    } else if let Some(result) = &a.last_result {
        outln!("last pass: {result}");
    }
    if !a.spec_errors.is_empty() {
        let commit =
            a.rejected_commit.as_deref().map(|c| format!(" (commit {})", c.get(..12).unwrap_or(c))).unwrap_or_default();
        outln!(
            "{} the newest spec set{commit} was rejected; the last good set stays in use:",
            paint.red("spec errors:")
        );
        for e in &a.spec_errors {
            outln!("  {e}");
        }
    }
    if let Some(why) = &a.mass_removal {
        outln!("{} {why}", paint.red("mass removal blocked:"));
    }
    if let Some(c) = &a.cluster {
        outln!("{}", cluster_line(paint, c));
    }
    for (engine, p) in &a.engines {
        let name = if engine == "docker" { "Docker" } else { engine.as_str() };
        let since = crate::support::time::format_ms(p.since_ms);
        outln!("{} since {since}: {}", paint.red(&format!("{name} is {}", p.state)), p.error);
    }
    for (name, until) in &a.backoff {
        outln!("{} {name}: next attempt at {}", paint.yellow("backing off:"), crate::support::time::format_ms(*until));
    }
    if a.unclean_boot {
        outln!("{} services marked holdAfterUncleanBoot are held (see the notes)", paint.yellow("unclean boot:"));
    }
    outln!();
}

/// The agent's cluster on one line: which, as which node, who leads, whether this node is
/// connected (and why not).
pub(super) fn cluster_line(paint: Paint, c: &crate::reconcile::status::ClusterSummary) -> String {
    let leader = match (&c.leader, c.is_leader, c.connected) {
        (_, true, _) => "this node leads".to_string(),
        (Some(l), false, true) => format!("leader {l}"),
        (Some(l), false, false) => format!("leader {l} as last seen"),
        (None, false, _) => "no leader seen yet".to_string(),
    };
    let state = match (c.connected, &c.error) {
        (true, _) => paint.green("connected"),
        (false, Some(e)) => format!(
            "{} (etcd unreachable or without quorum; services and slots keep running): {e}",
            paint.red("not connected")
        ),
        (false, None) => paint.yellow("connecting"),
    };
    format!("cluster {} as node {}: {leader}; {state}", c.name, c.node)
}

/// What a failed connection says about Docker.
pub(super) fn docker_state(e: &EngineError) -> &'static str {
    if e.kind == EngineErrorKind::Timeout { "Docker is unresponsive" } else { "Docker is not available" }
}

/// `drained since TIME by USER: REASON`.
pub(super) fn drained_line(d: &state::Drain) -> String {
    let reason = d.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    format!("drained since {} by {}{reason}", crate::support::time::format_ms(d.since_ms), d.user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::status::ClusterSummary;

    #[test]
    fn the_cluster_line_names_the_leader_and_says_when_this_node_is_cut_off() {
        let mut c = ClusterSummary {
            name: "judicators".into(),
            node: "vm-a".into(),
            leader: Some("vm-b".into()),
            is_leader: false,
            connected: true,
            error: None,
        };
        assert_eq!(cluster_line(Paint(false), &c), "cluster judicators as node vm-a: leader vm-b; connected");
        c.is_leader = true;
        assert_eq!(cluster_line(Paint(false), &c), "cluster judicators as node vm-a: this node leads; connected");
        (c.is_leader, c.connected, c.error) =
            (false, false, Some("etcd lease grant (ttl 10s): etcd did not answer within 5s".into()));
        assert_eq!(
            cluster_line(Paint(false), &c),
            "cluster judicators as node vm-a: leader vm-b as last seen; not connected (etcd unreachable or \
             without quorum; services and slots keep running): etcd lease grant (ttl 10s): etcd did not answer \
             within 5s"
        );
        (c.leader, c.error) = (None, None);
        assert_eq!(cluster_line(Paint(false), &c), "cluster judicators as node vm-a: no leader seen yet; connecting");
    }
}
