//! The Timers that run scheduled Backups. A Backup with a `schedule` runs as the Timer
//! `backup-NAME` (persistent: a run missed while the host was down is caught up), whose job
//! runs `tend backup run NAME`; one with a `drill` as `backup-NAME-drill`, running `tend
//! backup drill NAME`. Built as typed values, with the hashes any Timer gets, so they have
//! everything Timers have: systemd timer units (or the agent's scheduler), histories, no
//! overlapping runs. Their names were checked free when the specs were loaded.

use std::collections::BTreeMap;

use crate::desired::{Desired, Timer, timer_hashes};
use crate::service::PullPolicy;
use crate::timer::{Concurrency, Job, JobRuntime, RunOn, TimerSpec};

/// Adds the Timers of `desired`'s scheduled Backups and drills, each running the argv
/// `job(COMMAND, BACKUP)` (`COMMAND` is `run` or `drill`): how this host runs tend, which
/// only the caller knows. A Timer of the same name already in the set is left as it is.
pub fn add_backup_timers(desired: &mut Desired, job: impl Fn(&str, &str) -> Vec<String>) {
    let mut added = Vec::new();
    for b in desired.backups.values() {
        let runs = [
            (b.unit_name(), b.spec.schedule.as_ref(), b.calendar.as_ref(), "run", true),
            (
                b.drill_unit_name(),
                b.spec.drill.as_ref().map(|d| &d.schedule),
                b.drill_calendar.as_ref(),
                "drill",
                false,
            ),
        ];
        for (name, schedule, calendar, command, persistent) in runs {
            let (Some(schedule), Some(calendar)) = (schedule, calendar) else { continue };
            if desired.timers.contains_key(&name) {
                continue;
            }
            let spec = timer_spec(schedule.clone(), persistent, job(command, &b.name));
            let (hash, field_hashes) = timer_hashes(&spec, &BTreeMap::new(), &BTreeMap::new(), &[]);
            added.push(Timer {
                name,
                metadata_labels: BTreeMap::new(),
                spec,
                calendar: Some(calendar.clone()),
                env: BTreeMap::new(),
                location: b.location.clone(),
                hash,
                field_hashes,
            });
        }
    }
    desired.timers.extend(added.into_iter().map(|t| (t.name.clone(), t)));
}

/// A Timer on `schedule` whose job runs `exec` on the host; every other field its default.
fn timer_spec(schedule: String, persistent: bool, exec: Vec<String>) -> TimerSpec {
    TimerSpec {
        schedule: Some(schedule),
        persistent,
        randomized_delay: None,
        accuracy: None,
        timezone: None,
        concurrency: Concurrency::default(),
        run_on: RunOn::default(),
        enabled: true,
        timeout: None,
        job: Job {
            runtime: JobRuntime::Host,
            image: None,
            pull_policy: PullPolicy::default(),
            entrypoint: None,
            command: None,
            exec: Some(exec),
            env: BTreeMap::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
            user: None,
            group: None,
            working_dir: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn argv(command: &str, backup: &str) -> Vec<String> {
        ["/usr/local/bin/tend", "backup", command, backup].map(String::from).to_vec()
    }

    #[test]
    fn scheduled_backups_and_drills_become_timers_hashed_as_written_ones() {
        let yaml = "apiVersion: tend/v1\nkind: Backup\nmetadata: {name: db}\nspec:\n  schedule: '*-*-* 03:15:00'\n  source: {paths: [/srv/db]}\n  destination: {dir: /srv/backups}\n  drill: {schedule: weekly, check: [/bin/true]}\n---\napiVersion: tend/v1\nkind: Backup\nmetadata: {name: manual}\nspec:\n  source: {paths: [/srv/other]}\n  destination: {dir: /srv/backups2}\n";
        let mut desired = crate::load_str(Path::new("t.yaml"), yaml).expect("valid");
        add_backup_timers(&mut desired, argv);
        assert_eq!(desired.timers.keys().collect::<Vec<_>>(), ["backup-db", "backup-db-drill"]);
        // The same Timers written by hand hash the same: no unit changes for them.
        let written = "apiVersion: tend/v1\nkind: Timer\nmetadata: {name: backup-db}\nspec:\n  schedule: '*-*-* 03:15:00'\n  persistent: true\n  job: {runtime: host, exec: [/usr/local/bin/tend, backup, run, db]}\n---\napiVersion: tend/v1\nkind: Timer\nmetadata: {name: backup-db-drill}\nspec:\n  schedule: weekly\n  job: {runtime: host, exec: [/usr/local/bin/tend, backup, drill, db]}\n";
        let by_hand = crate::load_str(Path::new("w.yaml"), written).expect("valid");
        for name in ["backup-db", "backup-db-drill"] {
            assert_eq!(desired.timers[name].hash, by_hand.timers[name].hash, "{name}");
            assert_eq!(desired.timers[name].spec, by_hand.timers[name].spec, "{name}");
        }
        assert!(desired.timers["backup-db"].spec.persistent && !desired.timers["backup-db-drill"].spec.persistent);
    }
}
