//! Table tests of the planner: plain values in, a plan out. No engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tend_specs::Desired;
use tend_specs::service::{Condition, RestartPolicy};

use super::*;
use crate::reconcile::model::{Container, Health, Network, Observed, RunState};
use crate::reconcile::state::{Hold, RestartRecord, State};

const NOW: u64 = 1_000_000_000;

/// The zone update windows without a zone are read in (schedules in the tests name theirs).
static UTC: std::sync::LazyLock<tend_specs::calendar::LocalZone> =
    std::sync::LazyLock::new(|| tend_specs::calendar::LocalZone::from_tz(Some("UTC")));
const IMG: &str = "sha256:aaaa";

/// Specs from YAML documents (services only), with `image: img:1` unless given.
fn desired(yaml: &str) -> Desired {
    tend_specs::load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|d| panic!("bad test spec: {d:?}"))
}

fn svc(name: &str, extra: &str) -> String {
    let mut doc = format!("---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n");
    if !extra.contains("image:") {
        doc.push_str("  image: img:1\n");
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        doc.push_str("  ");
        doc.push_str(line.trim_start_matches(' '));
        doc.push('\n');
    }
    doc
}

/// A live container of `service`/`instance` matching the desired hash.
fn live(d: &Desired, service: &str, instance: u32, state: RunState) -> Container {
    let s = &d.services[service];
    Container {
        id: format!("id-{service}-{instance}"),
        name: crate::reconcile::model::instance_name(service, instance),
        service: service.to_string(),
        instance,
        hash: s.hash.clone(),
        fields: s.field_hashes.clone(),
        image_id: IMG.into(),
        state,
        health: Health::None,
        exit_code: if state == RunState::Exited { Some(0) } else { None },
    }
}

fn observed(d: &Desired, containers: Vec<Container>) -> Observed {
    let mut o = Observed { containers, ..Default::default() };
    for s in d.services.values() {
        o.images.insert(normalize_image(s.spec.image.as_deref().unwrap_or("")), IMG.into());
        for n in &s.spec.networks {
            o.networks.push(Network { id: format!("net-{n}"), name: n.clone(), owned: true });
        }
    }
    o.networks.dedup();
    o
}

fn run(d: &Desired, o: &Observed, st: &State) -> Plan {
    plan(Input {
        desired: d,
        observed: o,
        state: st,
        now_ms: NOW,
        pulled: &BTreeSet::new(),
        units: None,
        ignore_windows: false,
        zone: &UTC,
        gated: &BTreeMap::new(),
    })
}

/// Compact step descriptions: "create web-1 (missing) after [1] +2s".
fn show(p: &Plan) -> Vec<String> {
    p.steps
        .iter()
        .map(|s| {
            let mut line = format!(
                "{} {} ({})",
                crate::reconcile::execute::action_name(&s.action),
                crate::reconcile::execute::target(&s.action),
                s.reason
            );
            if !s.after.is_empty() {
                line.push_str(&format!(" after {:?}", s.after));
            }
            if s.pause_ms > 0 {
                line.push_str(&format!(" +{}ms", s.pause_ms));
            }
            line
        })
        .collect()
}

#[test]
fn nothing_desired_and_nothing_live_is_an_empty_plan() {
    let d = Desired::default();
    let p = run(&d, &Observed::default(), &State::default());
    assert!(p.is_empty() && p.notes.is_empty());
}

#[test]
fn a_new_service_gets_its_network_and_then_its_container() {
    let d = desired(&svc("web", "networks: [front]"));
    let o = Observed { images: BTreeMap::from([("img:1".into(), IMG.into())]), ..Default::default() };
    assert_eq!(
        show(&run(&d, &o, &State::default())),
        ["create-network network/front (needed by web)", "create web-1 (missing) after [1]"]
    );
}

#[test]
fn a_missing_image_is_pulled_first_unless_the_policy_is_never() {
    let d = desired(&(svc("a", "") + &svc("b", "image: other:2\npullPolicy: never") + &svc("c", "image: img:1")));
    let p = run(&d, &Observed::default(), &State::default());
    assert_eq!(
        show(&p),
        ["pull img:1 (not on this host)", "create a-1 (missing) after [1]", "create c-1 (missing) after [1]"]
    );
    assert_eq!(p.notes, [Note::ImageNotPresent { service: "b".into(), image: "other:2".into() }]);
}

#[test]
fn pull_always_pulls_each_pass_until_pulled() {
    let d = desired(&svc("a", "pullPolicy: always"));
    let o = observed(&d, vec![live(&d, "a", 1, RunState::Running)]);
    assert_eq!(show(&run(&d, &o, &State::default())), ["pull img:1 (pull policy always)"]);
    let pulled = BTreeSet::from(["img:1".to_string()]);
    let p = plan(Input {
        desired: &d,
        observed: &o,
        state: &State::default(),
        now_ms: NOW,
        pulled: &pulled,
        units: None,
        ignore_windows: false,
        zone: &UTC,
        gated: &BTreeMap::new(),
    });
    assert!(p.is_empty());
}

#[test]
fn a_converged_host_plans_nothing() {
    let d = desired(&(svc("a", "replicas: 3") + &svc("b", "dependsOn: [{name: a, condition: healthy}]")));
    let mut cs: Vec<Container> = (1..=3).map(|i| live(&d, "a", i, RunState::Running)).collect();
    cs.push(live(&d, "b", 1, RunState::Running));
    let p = run(&d, &observed(&d, cs), &State::default());
    assert!(p.is_empty(), "{:?}", show(&p));
    assert!(p.notes.is_empty());
}

#[test]
fn recreates_only_the_container_whose_hash_changed_and_names_the_field() {
    let old = desired(&(svc("a", "command: [sleep, '1']") + &svc("b", "") + &svc("c", "")));
    let new = desired(&(svc("a", "command: [sleep, '2']") + &svc("b", "") + &svc("c", "")));
    let cs = vec![
        live(&old, "a", 1, RunState::Running),
        live(&old, "b", 1, RunState::Running),
        live(&old, "c", 1, RunState::Running),
    ];
    let p = run(&new, &observed(&new, cs), &State::default());
    assert_eq!(show(&p), ["remove a-1 (changed: command)", "create a-1 (changed: command) after [1]"]);
}

#[test]
fn in_place_fields_do_not_recreate() {
    let old = desired(&svc("a", "restart: {policy: always}"));
    let new = desired(&svc("a", "restart: {policy: on-failure}\nrollout: {interval: 5s}\npullPolicy: never"));
    assert_eq!(old.services["a"].hash, new.services["a"].hash);
    let p = run(&new, &observed(&new, vec![live(&old, "a", 1, RunState::Running)]), &State::default());
    assert!(p.is_empty());
}

#[test]
fn a_moved_image_tag_recreates_with_both_ids() {
    let d = desired(&svc("a", ""));
    let mut c = live(&d, "a", 1, RunState::Running);
    c.image_id = "sha256:old".into();
    let p = run(&d, &observed(&d, vec![c]), &State::default());
    assert_eq!(p.steps[0].reason, Reason::ImageChanged { from: "sha256:old".into(), to: IMG.into() });
    assert_eq!(p.steps.len(), 2);
}

#[test]
fn exits_follow_the_restart_policy() {
    // (policy, exit code, expected steps, expected note)
    type Case<'a> = (&'a str, Option<i64>, &'a [&'a str], Option<Note>);
    let cases: [Case; 6] = [
        ("always", Some(0), &["start a-1 (exited with code 0 (restart 1))"], None),
        ("on-failure", Some(1), &["start a-1 (exited with code 1 (restart 1))"], None),
        (
            "on-failure",
            Some(0),
            &[],
            Some(Note::Exited {
                service: "a".into(),
                name: "a-1".into(),
                code: Some(0),
                policy: RestartPolicy::OnFailure,
            }),
        ),
        (
            "never",
            Some(2),
            &[],
            Some(Note::Exited { service: "a".into(), name: "a-1".into(), code: Some(2), policy: RestartPolicy::Never }),
        ),
        ("hold", Some(137), &["hold a-1 (exited with code 137; restart policy is hold)"], None),
        ("hold", None, &["hold a-1 (stopped; restart policy is hold)"], None),
    ];
    for (policy, code, steps, note) in cases {
        let d = desired(&svc("a", &format!("restart: {{policy: {policy}}}")));
        let mut c = live(&d, "a", 1, RunState::Exited);
        c.exit_code = code;
        let p = run(&d, &observed(&d, vec![c]), &State::default());
        assert_eq!(show(&p), steps, "{policy} {code:?}");
        assert_eq!(p.notes.first().cloned(), note, "{policy} {code:?}");
    }
}

#[test]
fn a_held_instance_is_never_touched_even_when_its_spec_changes_or_goes() {
    let old = desired(&svc("a", "restart: {policy: hold}"));
    let new = desired(&svc("a", "restart: {policy: hold}\ncommand: [x]"));
    let mut c = live(&old, "a", 1, RunState::Exited);
    c.exit_code = Some(1);
    let mut st = State::default();
    st.holds.insert(
        "a-1".into(),
        Hold { service: "a".into(), instance: 1, since_ms: 5, exit_code: Some(1), unclean_boot: false },
    );
    let p = run(&new, &observed(&new, vec![c.clone()]), &st);
    assert!(p.steps.is_empty(), "{:?}", show(&p));
    assert!(matches!(&p.notes[..], [Note::Held { name, .. }] if name == "a-1"));
    let p = run(&Desired::default(), &observed(&Desired::default(), vec![c]), &st);
    assert!(p.steps.is_empty(), "{:?}", show(&p));
}

#[test]
fn dependents_of_a_held_or_conflicting_service_wait() {
    let d = desired(&(svc("db", "restart: {policy: hold}") + &svc("web", "dependsOn: [{name: db}]")));
    let mut st = State::default();
    st.holds.insert(
        "db-1".into(),
        Hold { service: "db".into(), instance: 1, since_ms: 5, exit_code: None, unclean_boot: false },
    );
    let p = run(&d, &observed(&d, vec![]), &st);
    assert!(p.steps.is_empty(), "{:?}", show(&p));
    assert!(p.notes.contains(&Note::Blocked { service: "web".into(), by: "db".into() }));

    let mut o = observed(&d, vec![]);
    o.foreign.insert("db-1".into(), "someone-elses".into());
    let p = run(&d, &o, &State::default());
    assert!(p.steps.is_empty(), "{:?}", show(&p));
    assert!(p.notes.contains(&Note::Conflict {
        service: "db".into(),
        name: "db-1".into(),
        id: "someone-elses".into()
    }));
}

#[test]
fn a_created_but_never_started_container_is_started() {
    let d = desired(&svc("a", ""));
    let p = run(&d, &observed(&d, vec![live(&d, "a", 1, RunState::Created)]), &State::default());
    assert_eq!(show(&p), ["start a-1 (created but not started)"]);
}

#[test]
fn crash_loops_back_off_exponentially() {
    let d = desired(&svc("a", "restart: {policy: always, backoff: {initial: 2s, max: 10s}}"));
    let mut c = live(&d, "a", 1, RunState::Exited);
    c.exit_code = Some(3);
    let o = observed(&d, vec![c]);
    // (attempts so far, ms since the last restart) → expected
    let cases: [(u32, u64, Result<u32, u64>); 5] = [
        (0, 0, Ok(1)),                        // first exit: restart now
        (1, 1_000, Err(NOW - 1_000 + 2_000)), // 1s after restart 1: wait until 2s
        (1, 2_500, Ok(2)),                    // past the 2s delay: restart 2
        (3, 5_000, Err(NOW - 5_000 + 8_000)), // after restart 3 the delay is 8s
        (3, 600_000, Ok(1)),                  // up for ten minutes: a new loop
    ];
    for (attempts, ago, expected) in cases {
        let mut st = State::default();
        if attempts > 0 {
            st.restarts.insert("a-1".into(), RestartRecord { attempts, last_ms: NOW - ago });
        }
        let p = run(&d, &o, &st);
        match expected {
            Ok(attempt) => assert_eq!(p.steps[0].reason, Reason::Exited { code: Some(3), attempt }, "{attempts}/{ago}"),
            Err(until_ms) => {
                assert!(p.steps.is_empty(), "{attempts}/{ago}: {:?}", show(&p));
                assert!(
                    matches!(p.notes[0], Note::BackingOff { until_ms: u, .. } if u == until_ms),
                    "{attempts}/{ago}: {:?}",
                    p.notes
                );
            }
        }
    }
}

#[test]
fn removed_specs_remove_their_containers_and_then_unused_networks() {
    let old = desired(&(svc("a", "networks: [n1]") + &svc("b", "")));
    let now = desired(&svc("b", ""));
    let mut o = observed(&now, vec![live(&old, "a", 1, RunState::Running), live(&old, "b", 1, RunState::Running)]);
    o.networks.push(Network { id: "net-n1".into(), name: "n1".into(), owned: true });
    o.networks.push(Network { id: "bridge".into(), name: "bridge".into(), owned: false });
    assert_eq!(
        show(&run(&now, &o, &State::default())),
        ["remove a-1 (spec removed)", "remove-network network/n1 (no spec uses it) after [1]"]
    );
}

#[test]
fn dependencies_are_awaited_before_dependents_start() {
    let d = desired(&(svc("web", "dependsOn: [{name: db, condition: healthy, timeout: 10s}]") + &svc("db", "")));
    let p = run(&d, &observed(&d, vec![]), &State::default());
    assert_eq!(
        show(&p),
        ["create db-1 (missing)", "await db (needed by web) after [1]", "create web-1 (missing) after [2]"]
    );
    assert!(matches!(
        p.steps[1].action,
        Action::Await { condition: Condition::Healthy, timeout_ms: 10_000, name: None, .. }
    ));
}

#[test]
fn a_running_dependency_is_still_checked_before_a_dependent_is_created() {
    let d = desired(&(svc("web", "dependsOn: [{name: db, condition: started}]") + &svc("db", "")));
    let p = run(&d, &observed(&d, vec![live(&d, "db", 1, RunState::Running)]), &State::default());
    assert_eq!(show(&p), ["await db (needed by web)", "create web-1 (missing) after [1]"]);
}

#[test]
fn scaling_up_starts_new_instances_one_at_a_time_with_the_pause() {
    let d = desired(&svc("a", "replicas: 4\nrollout: {interval: 30s}"));
    let p = run(&d, &observed(&d, vec![live(&d, "a", 1, RunState::Running)]), &State::default());
    assert_eq!(
        show(&p),
        ["create a-2 (missing)", "create a-3 (missing) after [1] +30000ms", "create a-4 (missing) after [2] +30000ms"]
    );
}

#[test]
fn scaling_down_removes_the_highest_instances_first_with_the_pause() {
    let d5 = desired(&svc("a", "replicas: 5"));
    let d2 = desired(&svc("a", "replicas: 2\nrollout: {scaleDownInterval: 25s}"));
    let cs = (1..=5).map(|i| live(&d5, "a", i, RunState::Running)).collect();
    let p = run(&d2, &observed(&d2, cs), &State::default());
    assert_eq!(
        show(&p),
        [
            "remove a-5 (scaled down to 2)",
            "remove a-4 (scaled down to 2) after [1] +25000ms",
            "remove a-3 (scaled down to 2) after [2] +25000ms"
        ]
    );
}

#[test]
fn a_rollout_replaces_max_unavailable_at_a_time_and_waits_for_every_new_instance_to_be_healthy() {
    let old = desired(&svc("a", "replicas: 4\ncommand: [old]"));
    let new = desired(&svc(
        "a",
        "replicas: 4\ncommand: [new]\nrollout: {maxUnavailable: 2, interval: 10s}\nhealthcheck: {command: [ok], interval: 1s, timeout: 1s, retries: 1}",
    ));
    let cs = (1..=4).map(|i| live(&old, "a", i, RunState::Running)).collect();
    let p = run(&new, &observed(&new, cs), &State::default());
    let r = "changed: command, healthcheck";
    assert_eq!(
        show(&p),
        [
            format!("remove a-1 ({r})"),
            format!("create a-1 ({r}) after [1]"),
            "await a-1 (rollout waits for it) after [2]".into(),
            format!("remove a-2 ({r})"),
            format!("create a-2 ({r}) after [4]"),
            "await a-2 (rollout waits for it) after [5]".into(),
            format!("remove a-3 ({r}) after [3, 6] +10000ms"),
            format!("create a-3 ({r}) after [7]"),
            "await a-3 (rollout waits for it) after [8]".into(),
            format!("remove a-4 ({r}) after [3, 6] +10000ms"),
            format!("create a-4 ({r}) after [10]"),
            "await a-4 (rollout waits for it) after [11]".into(),
        ]
    );
}

#[test]
fn start_first_starts_the_new_instance_beside_the_old_then_swaps() {
    let old = desired(&svc("a", "command: [old]\nrollout: {order: start-first}"));
    let new = desired(&svc("a", "command: [new]\nrollout: {order: start-first}"));
    let p = run(&new, &observed(&new, vec![live(&old, "a", 1, RunState::Running)]), &State::default());
    assert_eq!(
        show(&p),
        [
            "create a-1-next (changed: command)",
            "await a-1-next (rollout waits for it) after [1]",
            "remove a-1 (changed: command) after [2]",
            "rename a-1-next → a-1 (replacement ready) after [3]",
        ]
    );
}

#[test]
fn a_foreign_container_on_the_next_name_is_a_conflict_and_the_old_instance_keeps_running() {
    let old =
        desired(&(svc("a", "command: [old]\nrollout: {order: start-first}") + &svc("b", "dependsOn: [{name: a}]")));
    let new =
        desired(&(svc("a", "command: [new]\nrollout: {order: start-first}") + &svc("b", "dependsOn: [{name: a}]")));
    let mut o = observed(&new, vec![live(&old, "a", 1, RunState::Running), live(&new, "b", 1, RunState::Running)]);
    o.foreign.insert("a-1-next".into(), "someone-elses".into());
    let p = run(&new, &o, &State::default());
    assert!(p.steps.is_empty(), "nothing of a is replaced: {:?}", show(&p));
    let note = Note::Conflict { service: "a".into(), name: "a-1-next".into(), id: "someone-elses".into() };
    assert!(p.notes.contains(&note), "{:?}", p.notes);
    assert_eq!(p.notes.len(), 1, "b is not blocked: a still runs, {:?}", p.notes);
    assert!(note.to_string().contains("a-1 is not replaced"), "{note}");
}

#[test]
fn an_interrupted_start_first_replacement_is_completed_or_cleaned_up() {
    let old = desired(&svc("a", "command: [old]\nrollout: {order: start-first}"));
    let new = desired(&svc("a", "command: [new]\nrollout: {order: start-first}"));
    let mut next = live(&new, "a", 1, RunState::Running);
    next.name = "a-1-next".into();
    next.id = "id-next".into();
    // Killed after removing the old one: the ready replacement takes the name.
    let p = run(&new, &observed(&new, vec![next.clone()]), &State::default());
    assert_eq!(show(&p), ["rename a-1-next → a-1 (replacement ready)"]);
    // Killed with both present: drop the half-made replacement, then decide afresh.
    let p = run(&new, &observed(&new, vec![live(&old, "a", 1, RunState::Running), next.clone()]), &State::default());
    assert_eq!(show(&p)[0], "remove a-1-next (left over from an interrupted replacement)");
    // A replacement of an older spec is removed and the instance created anew.
    let mut stale = next;
    stale.hash = "old".into();
    let p = run(&new, &observed(&new, vec![stale]), &State::default());
    assert_eq!(
        show(&p),
        ["remove a-1-next (left over from an interrupted replacement)", "create a-1 (missing) after [1]"]
    );
}

#[test]
fn unrecognized_containers_are_noted_and_left_alone() {
    let d = desired(&svc("a", ""));
    let mut odd = live(&d, "a", 1, RunState::Running);
    odd.instance = 0;
    odd.name = "something".into();
    let p = run(&d, &observed(&d, vec![live(&d, "a", 1, RunState::Running), odd]), &State::default());
    assert!(p.steps.is_empty());
    assert!(matches!(&p.notes[..], [Note::Unrecognized { name, .. }] if name == "something"));
}

#[test]
fn a_stray_container_with_an_instance_label_but_another_name_is_removed() {
    let d = desired(&svc("a", ""));
    let mut stray = live(&d, "a", 1, RunState::Running);
    stray.name = "a-1-old".into();
    stray.id = "stray".into();
    let p = run(&d, &observed(&d, vec![live(&d, "a", 1, RunState::Running), stray]), &State::default());
    assert_eq!(show(&p), ["remove a-1-old (left over from an interrupted replacement)"]);
}

#[test]
fn named_volumes_are_created_before_use_and_never_removed() {
    let d = desired(&svc("a", "volumes: ['data:/data']"));
    let p = run(&d, &observed(&d, vec![]), &State::default());
    assert_eq!(show(&p), ["create-volume volume/data (needed by a)", "create a-1 (missing) after [1]"]);
    let mut o = observed(&Desired::default(), vec![]);
    o.volumes.insert("data".into());
    assert!(run(&Desired::default(), &o, &State::default()).is_empty());
}

#[test]
fn a_plan_serializes_with_actions_and_reasons_but_no_environment() {
    let d = desired(&svc("a", "env: {TOKEN: hunter2}"));
    let p = run(&d, &observed(&d, vec![]), &State::default());
    let json = serde_json::to_string(&p).expect("json");
    assert!(json.contains(r#""action":"create""#) && json.contains(r#""reason":"missing""#), "{json}");
    assert!(!json.contains("hunter2"));
}

#[test]
fn a_released_hold_starts_its_stopped_instance_again() {
    let d = desired(&svc("a", "restart: {policy: hold}"));
    let mut c = live(&d, "a", 1, RunState::Exited);
    c.exit_code = Some(137);
    let mut st = State::default();
    st.released.insert("a-1".into(), 5);
    let p = run(&d, &observed(&d, vec![c]), &st);
    assert_eq!(show(&p), ["start a-1 (exited with code 137 (restart 1))"]);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
}

#[test]
fn an_instance_stopped_on_purpose_is_started_again_not_held() {
    use crate::reconcile::state::StopCause;
    let d = desired(&[svc("a", "restart: {policy: hold}"), svc("b", "restart: {policy: never}")].concat());
    let exited = |name: &str| {
        let mut c = live(&d, name, 1, RunState::Exited);
        c.exit_code = Some(143);
        c
    };
    let o = observed(&d, vec![exited("a"), exited("b")]);
    // A crash: held for triage.
    assert_eq!(show(&run(&d, &o, &State::default())), ["hold a-1 (exited with code 143; restart policy is hold)"]);
    for (cause, why) in [
        (StopCause::HostShutdown, "stopped by a clean shutdown of the host"),
        (StopCause::Maintenance, "stopped under a maintenance lock"),
        (StopCause::Backup, "stopped by an interrupted backup"),
    ] {
        let mut st = State::default();
        st.stopped_on_purpose.insert("a-1".into(), cause);
        st.stopped_on_purpose.insert("b-1".into(), cause);
        let p = run(&d, &o, &st);
        // `never` keeps its meaning: left alone.
        assert_eq!(show(&p), [format!("start a-1 ({why}, not a crash)")]);
        assert!(matches!(&p.notes[..], [Note::Exited { name, .. }] if name == "b-1"), "{:?}", p.notes);
    }
    // A hold taken earlier stays.
    let mut st = State::default();
    st.stopped_on_purpose.insert("a-1".into(), StopCause::HostShutdown);
    st.holds.insert(
        "a-1".into(),
        Hold { service: "a".into(), instance: 1, since_ms: 5, exit_code: Some(1), unclean_boot: false },
    );
    assert!(run(&d, &o, &st).steps.is_empty());
    // Under the lock still: left alone.
    let mut st = State::default();
    st.stopped_on_purpose.insert("a-1".into(), StopCause::Maintenance);
    let mut o = o.clone();
    o.maintenance.insert(
        "a-1".into(),
        crate::reconcile::model::Maintenance { user: "op".into(), since_ms: 1, until_ms: None, reason: None },
    );
    assert!(run(&d, &o, &st).steps.is_empty());
}

#[test]
fn replacing_a_single_instance_waits_for_its_health_so_a_broken_version_fails_the_pass() {
    let old = desired(&svc("a", "command: [old]\nhealthcheck: {command: [ok]}"));
    let new = desired(&svc("a", "command: [new]\nhealthcheck: {command: [ok]}"));
    let p = run(&new, &observed(&new, vec![live(&old, "a", 1, RunState::Running)]), &State::default());
    assert_eq!(
        show(&p),
        [
            "remove a-1 (changed: command)",
            "create a-1 (changed: command) after [1]",
            "await a-1 (rollout waits for it) after [2]"
        ]
    );
}

#[test]
fn a_first_start_is_not_awaited_by_itself() {
    let d = desired(&svc("a", "healthcheck: {command: [ok]}"));
    assert_eq!(show(&run(&d, &observed(&d, vec![]), &State::default())), ["create a-1 (missing)"]);
}

/// A systemd service from YAML (no image).
fn unit(name: &str) -> String {
    format!(
        "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{runtime: systemd, exec: [/usr/bin/{name}]}}\n"
    )
}

#[test]
fn systemd_services_get_no_container_steps() {
    let d = desired(&(svc("a", "") + &unit("u")));
    let o = observed(&desired(&svc("a", "")), vec![live(&d, "a", 1, RunState::Running)]);
    let p = run(&d, &o, &State::default());
    assert!(p.is_empty(), "{:?}", show(&p));
    assert!(p.notes.is_empty(), "{:?}", p.notes);
}

#[test]
fn a_docker_service_turned_systemd_has_its_containers_removed() {
    let old = desired(&svc("a", ""));
    let now = desired(&unit("a"));
    let o = observed(&old, vec![live(&old, "a", 1, RunState::Running)]);
    assert_eq!(show(&run(&now, &o, &State::default())), ["remove a-1 (spec removed)"]);
}

// ---- systemd units ---------------------------------------------------------------------

use crate::reconcile::model::{Unit, UnitActive};

fn unit_ctx() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    ("/usr/local/bin/tend".into(), "/var/lib/tend".into(), "/etc/tend/env".into())
}

fn with_units<R>(f: impl FnOnce(&crate::reconcile::unit_files::Context<'_>) -> R) -> R {
    let (bin, state, env) = unit_ctx();
    f(&crate::reconcile::unit_files::Context {
        scope: "default",
        tend_bin: &bin,
        state_dir: &state,
        env_dir: &env,
        specs: std::path::Path::new("/etc/tend/specs"),
        agent_config: None,
    })
}

fn sd(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  runtime: systemd\n  exec: [/bin/sleep, infinity]\n{extra}"
    )
}

fn timer(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: tend/v1\nkind: Timer\nmetadata: {{name: {name}}}\nspec:\n  job: {{runtime: host, exec: [/bin/true]}}\n{extra}\n"
    )
}

/// The units tend would write for `d`, as live, active and enabled where they run.
fn live_units(d: &Desired, active: UnitActive) -> BTreeMap<String, Unit> {
    with_units(|ctx| {
        let mut out = BTreeMap::new();
        let rendered = d
            .systemd_services()
            .map(|s| crate::reconcile::unit_files::render_service(ctx, s))
            .chain(d.timers.values().map(|t| crate::reconcile::unit_files::render_timer(ctx, t)));
        for r in rendered {
            for u in r.units {
                let runs = !u.content.contains("Type=oneshot");
                out.insert(
                    u.name.clone(),
                    Unit {
                        name: u.name,
                        content: u.content,
                        scope: Some("default".into()),
                        active: if runs { active } else { UnitActive::Inactive },
                        enabled: runs,
                        exit_status: None,
                    },
                );
            }
        }
        out
    })
}

fn plan_units(d: &Desired, units: BTreeMap<String, Unit>, st: &State) -> Plan {
    let o = Observed { units: Some(units), ..Default::default() };
    with_units(|ctx| {
        plan(Input {
            desired: d,
            observed: &o,
            state: st,
            now_ms: NOW,
            pulled: &BTreeSet::new(),
            units: Some(ctx),
            ignore_windows: false,
            zone: &UTC,
            gated: &BTreeMap::new(),
        })
    })
}

#[test]
fn a_new_systemd_service_is_written_reloaded_enabled_and_started() {
    let d = desired(&sd("web", ""));
    let p = plan_units(&d, BTreeMap::new(), &State::default());
    assert_eq!(
        show(&p),
        [
            "write-unit web.service (missing)",
            "daemon-reload systemd (unit files changed) after [1]",
            "enable web.service (enabled in the spec) after [2]",
            "start-unit web.service (missing) after [2, 3]",
        ]
    );
}

#[test]
fn units_that_match_and_run_plan_nothing() {
    let d = desired(&(sd("web", "") + &timer("nightly", "  schedule: daily")));
    let p = plan_units(&d, live_units(&d, UnitActive::Active), &State::default());
    assert!(p.is_empty(), "{:?}", show(&p));
    assert!(p.notes.is_empty(), "{:?}", p.notes);
}

#[test]
fn a_changed_unit_is_rewritten_once_reloaded_once_and_restarted() {
    let old = desired(&(sd("web", "") + &sd("api", "")));
    let new = desired(&(sd("web", "  user: nobody\n") + &sd("api", "")));
    let p = plan_units(&new, live_units(&old, UnitActive::Active), &State::default());
    assert_eq!(
        show(&p),
        [
            "write-unit web.service (changed: unit file)",
            "daemon-reload systemd (unit files changed) after [1]",
            "restart-unit web.service (changed: unit file) after [2]",
        ]
    );
}

#[test]
fn a_stopped_unit_follows_its_restart_policy() {
    for (policy, expected) in [
        ("always", vec!["start-unit web.service (exited with code 1 (restart 1))"]),
        ("hold", vec!["hold web.service (exited with code 1; restart policy is hold)"]),
        ("never", vec![]),
    ] {
        let d = desired(&sd("web", &format!("  restart: {{policy: {policy}}}\n")));
        let mut units = live_units(&d, UnitActive::Failed);
        if let Some(u) = units.get_mut("web.service") {
            u.exit_status = Some(1);
        }
        assert_eq!(show(&plan_units(&d, units, &State::default())), expected, "{policy}");
    }
}

#[test]
fn a_held_unit_stays_down_and_is_noted() {
    let d = desired(&sd("web", "  restart: {policy: hold}\n"));
    let mut st = State::default();
    st.holds.insert(
        "web.service".into(),
        Hold { service: "web".into(), instance: 1, since_ms: 7, exit_code: Some(1), unclean_boot: false },
    );
    let p = plan_units(&d, live_units(&d, UnitActive::Failed), &st);
    assert!(p.steps.is_empty(), "{:?}", show(&p));
    assert!(matches!(&p.notes[..], [Note::Held { name, .. }] if name == "web.service"));
}

#[test]
fn a_unit_file_tend_did_not_write_is_a_conflict_and_left_alone() {
    let d = desired(&sd("web", ""));
    let mut units = live_units(&d, UnitActive::Active);
    for u in units.values_mut() {
        u.scope = None;
        u.content = "[Service]\nExecStart=/bin/other\n".into();
    }
    let p = plan_units(&d, units, &State::default());
    assert!(p.steps.is_empty(), "{:?}", show(&p));
    assert_eq!(p.notes, [Note::UnitConflict { unit: "web.service".into(), scope: None }]);
}

#[test]
fn a_removed_spec_stops_disables_and_deletes_its_units_then_reloads() {
    let old = desired(&sd("web", ""));
    let p = plan_units(&Desired::default(), live_units(&old, UnitActive::Active), &State::default());
    assert_eq!(
        show(&p),
        [
            "stop-unit web.service (spec removed)",
            "disable web.service (spec removed) after [1]",
            "remove-unit web.service (spec removed) after [1, 2]",
            "daemon-reload systemd (unit files changed) after [3]",
        ]
    );
}

#[test]
fn a_timer_is_scheduled_and_its_job_unit_only_written() {
    let d = desired(&(timer("nightly", "  schedule: daily") + &timer("restore", "  enabled: false")));
    let p = plan_units(&d, BTreeMap::new(), &State::default());
    assert_eq!(
        show(&p),
        [
            "write-unit nightly.service (missing)",
            "write-unit nightly.timer (missing)",
            "write-unit restore.service (missing)",
            "daemon-reload systemd (unit files changed) after [1, 2, 3]",
            "enable nightly.timer (enabled in the spec) after [4]",
            "start-unit nightly.timer (missing) after [4, 5]",
        ]
    );
}

#[test]
fn without_systemd_no_unit_is_planned() {
    let d = desired(&sd("web", ""));
    let o = Observed::default();
    let p = with_units(|ctx| {
        plan(Input {
            desired: &d,
            observed: &o,
            state: &State::default(),
            now_ms: NOW,
            pulled: &BTreeSet::new(),
            units: Some(ctx),
            ignore_windows: false,
            zone: &UTC,
            gated: &BTreeMap::new(),
        })
    });
    assert!(p.is_empty());
}

// ---- before-start hooks ----------------------------------------------------------------

#[test]
fn a_new_version_runs_its_hook_first_and_nothing_of_it_starts_before() {
    let hook = "hooks: {beforeStart: migrate}";
    let job = timer("migrate", "  enabled: false");
    let old = desired(&(svc("web", &format!("command: [old]\n{hook}")) + &job));
    let new = desired(&(svc("web", &format!("command: [new]\n{hook}")) + &job));
    // A replacement.
    let p = run(&new, &observed(&new, vec![live(&old, "web", 1, RunState::Running)]), &State::default());
    assert_eq!(
        show(&p),
        [
            "run-job job/migrate (before web starts its new version)",
            "remove web-1 (changed: command) after [1]",
            "create web-1 (changed: command) after [2]"
        ]
    );
    // A first start.
    let p = run(&new, &observed(&new, vec![]), &State::default());
    assert_eq!(
        show(&p),
        ["run-job job/migrate (before web starts its new version)", "create web-1 (missing) after [1]"]
    );
}

#[test]
fn crash_restarts_and_scale_ups_of_a_running_version_do_not_run_the_hook() {
    let hook = "hooks: {beforeStart: migrate}";
    let job = timer("migrate", "  enabled: false");
    let d = desired(&(svc("web", &format!("replicas: 2\n{hook}")) + &job));
    let mut exited = live(&d, "web", 1, RunState::Exited);
    exited.exit_code = Some(1);
    let p = run(&d, &observed(&d, vec![exited]), &State::default());
    assert_eq!(show(&p), ["start web-1 (exited with code 1 (restart 1))", "create web-2 (missing)"]);
}

#[test]
fn a_systemd_service_starts_its_new_version_only_after_its_hook() {
    let d = desired(&(sd("web", "  hooks: {beforeStart: migrate}\n") + &timer("migrate", "  enabled: false")));
    let units: BTreeMap<String, Unit> =
        live_units(&d, UnitActive::Inactive).into_iter().filter(|(n, _)| n.starts_with("migrate")).collect();
    let p = plan_units(&d, units, &State::default());
    assert_eq!(
        show(&p),
        [
            "write-unit web.service (missing)",
            "daemon-reload systemd (unit files changed) after [1]",
            "enable web.service (enabled in the spec) after [2]",
            "run-job job/migrate (before web starts its new version) after [2]",
            "start-unit web.service (missing) after [2, 3, 4]",
        ]
    );
}

// ---- maintenance locks -------------------------------------------------------------------

fn window() -> crate::reconcile::model::Maintenance {
    crate::reconcile::model::Maintenance {
        user: "ops".into(),
        since_ms: NOW - 60_000,
        until_ms: None,
        reason: Some("disk".into()),
    }
}

#[test]
fn an_instance_under_maintenance_is_never_started_recreated_or_removed() {
    let d = desired(&svc("web", "replicas: 2"));
    let changed = desired(&svc("web", "replicas: 2\nenv: {A: b}"));
    // web-1 stopped by the operator, web-2 runs the old spec.
    let mut o = observed(&d, vec![live(&d, "web", 1, RunState::Exited), live(&d, "web", 2, RunState::Running)]);
    o.maintenance.insert("web-1".into(), window());
    let p = run(&d, &o, &State::default());
    assert!(p.is_empty(), "{:?}", show(&p));
    assert!(
        matches!(&p.notes[..], [Note::Maintenance { target, window, .. }] if target == "web-1" && window.user == "ops"),
        "{:?}",
        p.notes
    );
    assert!(p.notes[0].to_string().contains("maintenance: web-1 (by ops since"), "{}", p.notes[0]);
    // A spec change does not touch the maintained instance (nor roll out past it).
    let p = run(&changed, &o, &State::default());
    assert!(!show(&p).iter().any(|s| s.contains("web-1")), "{:?}", show(&p));
    // Scaled down or removed from the specs: still left alone.
    let one = desired(&svc("web", ""));
    let mut o = observed(&d, vec![live(&d, "web", 1, RunState::Running), live(&d, "web", 2, RunState::Running)]);
    o.maintenance.insert("web-2".into(), window());
    assert!(run(&one, &o, &State::default()).is_empty());
    assert!(
        run(&Desired::default(), &o, &State::default())
            .steps
            .iter()
            .all(|s| crate::reconcile::execute::target(&s.action) != "web-2")
    );
}

#[test]
fn a_systemd_service_or_timer_under_maintenance_is_left_alone() {
    let d = desired(&(sd("web", "") + &timer("nightly", "  schedule: daily")));
    let mut units = live_units(&d, UnitActive::Active);
    for u in units.values_mut() {
        u.active = UnitActive::Failed;
        u.content.push_str("# changed\n");
    }
    let mut o = Observed { units: Some(units), ..Default::default() };
    o.maintenance.insert("web.service".into(), window());
    o.maintenance.insert("nightly.job".into(), window());
    let p = with_units(|ctx| {
        plan(Input {
            desired: &d,
            observed: &o,
            state: &State::default(),
            now_ms: NOW,
            pulled: &BTreeSet::new(),
            units: Some(ctx),
            ignore_windows: false,
            zone: &UTC,
            gated: &BTreeMap::new(),
        })
    });
    assert!(p.is_empty(), "{:?}", show(&p));
    let targets: Vec<String> = p
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::Maintenance { target, .. } => Some(target.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(targets, ["nightly.job", "web.service"]);
}

// ---- drain -------------------------------------------------------------------------------

fn drained() -> State {
    State {
        drain: Some(crate::reconcile::state::Drain {
            reason: Some("kernel update".into()),
            since_ms: NOW - 5_000,
            user: "ops".into(),
        }),
        ..Default::default()
    }
}

#[test]
fn a_drained_node_stops_running_instances_dependents_first_and_starts_nothing() {
    let old = desired(
        &(svc("web", "dependsOn: [{name: api}]\nreplicas: 2")
            + &svc("api", "dependsOn: [{name: db}]")
            + &svc("db", "")),
    );
    let d = desired(
        &(svc("web", "dependsOn: [{name: api}]\nreplicas: 2\ncommand: [new]")
            + &svc("api", "dependsOn: [{name: db}]")
            + &svc("db", "stopTimeout: 30s")
            + &svc("worker", "restart: {policy: always}")),
    );
    // web-1 runs an outdated spec, web-2 is missing, worker-1 exited: none is touched.
    let mut worker = live(&d, "worker", 1, RunState::Exited);
    worker.exit_code = Some(1);
    let cs = vec![
        live(&old, "web", 1, RunState::Running),
        live(&d, "api", 1, RunState::Running),
        live(&d, "db", 1, RunState::Running),
        worker,
    ];
    let p = run(&d, &observed(&d, cs), &drained());
    assert_eq!(
        show(&p),
        ["stop web-1 (node drained)", "stop api-1 (node drained) after [1]", "stop db-1 (node drained) after [2]"]
    );
    assert!(matches!(p.steps[2].action, Action::Stop { stop_timeout_s: Some(30), .. }), "{:?}", p.steps[2]);
    assert_eq!(
        p.notes,
        [Note::Drained { since_ms: NOW - 5_000, user: "ops".into(), reason: Some("kernel update".into()) }]
    );
    assert!(p.notes[0].to_string().starts_with("drained since "), "{}", p.notes[0]);
    assert!(p.notes[0].to_string().contains(" by ops: kernel update;"), "{}", p.notes[0]);

    // A dependent with nothing left to stop still orders its dependencies' stops.
    let mut api = live(&d, "api", 1, RunState::Exited);
    api.exit_code = Some(0);
    let cs = vec![live(&d, "web", 1, RunState::Running), api, live(&d, "db", 1, RunState::Running)];
    let p = run(&d, &observed(&d, cs), &drained());
    assert_eq!(show(&p), ["stop web-1 (node drained)", "stop db-1 (node drained) after [1]"]);

    // Everything stopped already: nothing to do, and the plan says why.
    let cs = ["web", "api", "db"].map(|s| live(&d, s, 1, RunState::Exited)).to_vec();
    let p = run(&d, &observed(&d, cs), &drained());
    assert!(p.is_empty(), "{:?}", show(&p));
    assert!(matches!(&p.notes[..], [Note::Drained { .. }]), "{:?}", p.notes);
}

#[test]
fn a_drained_node_leaves_held_and_maintained_instances_alone_and_stops_removed_specs() {
    let gone = desired(&svc("old", ""));
    let d = desired(&svc("web", "replicas: 3"));
    let cs = vec![
        live(&d, "web", 1, RunState::Running),
        live(&d, "web", 2, RunState::Running),
        live(&d, "web", 3, RunState::Running),
        live(&gone, "old", 1, RunState::Running),
    ];
    let mut o = observed(&d, cs);
    o.maintenance.insert(
        "web-2".into(),
        crate::reconcile::model::Maintenance { user: "ops".into(), since_ms: NOW, until_ms: None, reason: None },
    );
    let mut st = drained();
    st.holds.insert(
        "web-3".into(),
        Hold { service: "web".into(), instance: 3, since_ms: 5, exit_code: Some(1), unclean_boot: false },
    );
    let p = run(&d, &o, &st);
    assert_eq!(show(&p), ["stop web-1 (node drained)", "stop old-1 (node drained)"]);
    assert!(
        matches!(
            &p.notes[..],
            [Note::Drained { .. }, Note::Maintenance { target, .. }, Note::Held { name, .. }]
                if target == "web-2" && name == "web-3"
        ),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_drained_node_stops_and_disables_its_units_and_timers_but_lets_a_running_job_finish() {
    let d =
        desired(&(sd("api", "") + &sd("web", "  dependsOn: [{name: api}]\n") + &timer("nightly", "  schedule: daily")));
    let mut units = live_units(&d, UnitActive::Active);
    // The nightly job is running.
    if let Some(u) = units.get_mut("nightly.service") {
        u.active = UnitActive::Active;
    }
    let p = plan_units(&d, units, &drained());
    assert_eq!(
        show(&p),
        [
            "stop-unit web.service (node drained)",
            "stop-unit api.service (node drained) after [1]",
            "stop-unit nightly.timer (node drained)",
            "disable api.service nightly.timer web.service (node drained)",
        ]
    );
    // Stopped and disabled already: nothing to do.
    let mut units = live_units(&d, UnitActive::Inactive);
    for u in units.values_mut() {
        u.enabled = false;
    }
    let p = plan_units(&d, units, &drained());
    assert!(p.is_empty(), "{:?}", show(&p));
}

#[test]
fn undraining_starts_what_the_drain_stopped_in_dependency_order_whatever_the_policy() {
    let d = desired(
        &(svc("web", "dependsOn: [{name: api}]\nrestart: {policy: on-failure}")
            + &svc("api", "restart: {policy: never}")
            + &svc("db", "restart: {policy: hold}")),
    );
    let cs: Vec<Container> = [("web", 0), ("api", 143), ("db", 137)]
        .map(|(s, code)| {
            let mut c = live(&d, s, 1, RunState::Exited);
            c.exit_code = Some(code);
            c
        })
        .to_vec();
    let o = observed(&d, cs);
    // Without the drain's marks the policies leave them stopped (or hold db).
    let p = run(&d, &o, &State::default());
    assert!(!show(&p).iter().any(|s| s.starts_with("start ")), "{:?}", show(&p));
    let st = State { stopped_by_drain: ["web-1", "api-1", "db-1"].map(String::from).into(), ..Default::default() };
    let p = run(&d, &o, &st);
    assert_eq!(
        show(&p),
        [
            "start api-1 (stopped by drain; node undrained)",
            "start db-1 (stopped by drain; node undrained)",
            "await api (needed by web) after [1]",
            "start web-1 (stopped by drain; node undrained) after [3]",
        ]
    );
    assert!(p.notes.is_empty(), "{:?}", p.notes);

    // Units: enabled at boot again, and started whatever their policy.
    let d = desired(&(sd("web", "  restart: {policy: never}\n") + &timer("nightly", "  schedule: daily")));
    let mut units = live_units(&d, UnitActive::Inactive);
    for u in units.values_mut() {
        u.enabled = false;
    }
    let st =
        State { stopped_by_drain: ["web.service", "nightly.timer"].map(String::from).into(), ..Default::default() };
    assert_eq!(
        show(&plan_units(&d, units, &st)),
        [
            "enable nightly.timer web.service (enabled in the spec)",
            "start-unit nightly.timer (stopped by drain; node undrained) after [1]",
            "start-unit web.service (stopped by drain; node undrained) after [1]",
        ]
    );
}

#[test]
fn a_drains_stops_are_recorded_and_forgotten_once_started_again() {
    let step = |id, action, reason| Step { id, action, reason, after: vec![], pause_ms: 0 };
    let stop = Action::Stop {
        service: "web".into(),
        instance: 1,
        name: "web-1".into(),
        id: "c1".into(),
        stop_timeout_s: None,
    };
    let plan = Plan {
        steps: vec![
            step(1, stop, Reason::Drained),
            step(2, Action::StopUnit { unit: "api.service".into() }, Reason::Drained),
            step(3, Action::StopUnit { unit: "gone.service".into() }, Reason::SpecRemoved),
        ],
        ..Plan::default()
    };
    let done = |ids: &[usize]| -> BTreeMap<usize, crate::reconcile::execute::Outcome> {
        ids.iter().map(|i| (*i, crate::reconcile::execute::Outcome::Done { ms: 1 })).collect()
    };
    let mut st = drained();
    assert!(crate::reconcile::apply::record(&mut st, &plan, &done(&[1, 2, 3]), NOW));
    assert_eq!(st.stopped_by_drain, ["api.service", "web-1"].map(String::from).into());
    let start = Action::Start { service: "web".into(), instance: 1, name: "web-1".into(), id: "c1".into() };
    let plan = Plan {
        steps: vec![
            step(1, start, Reason::Undrained),
            step(2, Action::StartUnit { unit: "api.service".into() }, Reason::Undrained),
        ],
        ..Plan::default()
    };
    assert!(crate::reconcile::apply::record(&mut st, &plan, &done(&[1, 2]), NOW));
    assert!(st.stopped_by_drain.is_empty());
    assert!(st.restarts.is_empty(), "an undrain start is no crash restart: {:?}", st.restarts);
}

#[test]
fn drain_is_recorded_once_and_undrain_lifts_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let first = crate::reconcile::state::Drain { reason: Some("disk".into()), since_ms: 7, user: "ann".into() };
    let (now, already) = crate::reconcile::state::drain(tmp.path(), first.clone()).expect("drain");
    assert_eq!((now, already), (first.clone(), false));
    // Drained again: the first drain stays (who and since), a new reason replaces the old.
    let again = crate::reconcile::state::Drain { reason: None, since_ms: 9, user: "bob".into() };
    assert_eq!(crate::reconcile::state::drain(tmp.path(), again).expect("drain"), (first.clone(), true));
    let again = crate::reconcile::state::Drain { reason: Some("kernel".into()), since_ms: 9, user: "bob".into() };
    let (now, _) = crate::reconcile::state::drain(tmp.path(), again).expect("drain");
    assert_eq!((now.user.as_str(), now.since_ms, now.reason.as_deref()), ("ann", 7, Some("kernel")));
    let json = std::fs::read_to_string(tmp.path().join("state.json")).expect("state file");
    assert!(json.contains(r#""drain""#) && !json.contains("stopped_by_drain"), "{json}");
    assert_eq!(crate::reconcile::state::undrain(tmp.path()).expect("undrain").map(|d| d.user), Some("ann".into()));
    assert_eq!(crate::reconcile::state::undrain(tmp.path()).expect("undrain"), None);
    assert_eq!(crate::reconcile::state::read_state(tmp.path()).expect("read").drain, None);
}

// ---- update windows ----------------------------------------------------------------------

/// A window that is open at NOW (1970-01-12 13:46:40 UTC), and one that is not: it opens at
/// 14:00, [`OPENS_MS`].
const OPEN_WINDOW: &str = "updateWindow: {schedule: \"*-*-* 13:00 UTC\", duration: 1h}";
const SHUT_WINDOW: &str = "updateWindow: {schedule: \"*-*-* 14:00 UTC\", duration: 1h}";
const OPENS_MS: u64 = 1_000_800_000;

fn plan_at(d: &Desired, o: &Observed, now_ms: u64, ignore_windows: bool) -> Plan {
    let st = State::default();
    let pulled = BTreeSet::new();
    plan(Input {
        desired: d,
        observed: o,
        state: &st,
        now_ms,
        pulled: &pulled,
        units: None,
        ignore_windows,
        zone: &UTC,
        gated: &BTreeMap::new(),
    })
}

fn waiting(service: &str) -> Note {
    Note::UpdateWindow {
        service: service.into(),
        next_open_ms: Some(OPENS_MS),
        window: "*-*-* 14:00 UTC for 1h".into(),
    }
}

#[test]
fn outside_its_update_window_a_running_instance_is_not_replaced_and_the_plan_says_when() {
    let spec = |command: &str, window: &str| {
        desired(
            &(svc("web", &format!("command: [sleep, '{command}']\n{window}"))
                + &svc("api", &format!("command: [sleep, '{command}']\nrollout: {{order: start-first}}\n{window}"))
                + &svc("img", window)
                + &svc("free", &format!("command: [sleep, '{command}']"))),
        )
    };
    let (old, new) = (spec("1", SHUT_WINDOW), spec("2", SHUT_WINDOW));
    let mut moved = live(&new, "img", 1, RunState::Running);
    moved.image_id = "sha256:old".into();
    let cs = vec![
        live(&old, "web", 1, RunState::Running),
        live(&old, "api", 1, RunState::Running),
        moved,
        live(&old, "free", 1, RunState::Running),
    ];
    let p = plan_at(&new, &observed(&new, cs.clone()), NOW, false);
    // A service without a window is replaced as always.
    assert_eq!(show(&p), ["remove free-1 (changed: command)", "create free-1 (changed: command) after [1]"]);
    assert_eq!(p.notes, [waiting("api"), waiting("img"), waiting("web")]);
    assert_eq!(
        p.notes[2].to_string(),
        "waiting for update window: web changes at 1970-01-12 14:00:00 UTC (*-*-* 14:00 UTC for 1h)"
    );
    // At the opening, the same host gets the replacements.
    let p = plan_at(&new, &observed(&new, cs), OPENS_MS, false);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    assert_eq!(
        show(&p),
        [
            "create api-1-next (changed: command)",
            "await api-1-next (rollout waits for it) after [1]",
            "remove api-1 (changed: command) after [2]",
            "rename api-1-next → api-1 (replacement ready) after [3]",
            "remove free-1 (changed: command)",
            "create free-1 (changed: command) after [5]",
            "remove img-1 (image changed: old → aaaa)",
            "create img-1 (image changed: old → aaaa) after [7]",
            "remove web-1 (changed: command)",
            "create web-1 (changed: command) after [9]",
        ]
    );
}

#[test]
fn inside_its_update_window_a_changed_instance_is_replaced() {
    let old = desired(&svc("web", &format!("command: [sleep, '1']\n{OPEN_WINDOW}")));
    let new = desired(&svc("web", &format!("command: [sleep, '2']\n{OPEN_WINDOW}")));
    let p = plan_at(&new, &observed(&new, vec![live(&old, "web", 1, RunState::Running)]), NOW, false);
    assert_eq!(show(&p), ["remove web-1 (changed: command)", "create web-1 (changed: command) after [1]"]);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
}

#[test]
fn apply_now_ignores_the_window() {
    let old = desired(&svc("web", &format!("command: [sleep, '1']\n{SHUT_WINDOW}")));
    let new = desired(&svc("web", &format!("command: [sleep, '2']\n{SHUT_WINDOW}")));
    let p = plan_at(&new, &observed(&new, vec![live(&old, "web", 1, RunState::Running)]), NOW, true);
    assert_eq!(show(&p), ["remove web-1 (changed: command)", "create web-1 (changed: command) after [1]"]);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
}

#[test]
fn a_closed_window_never_delays_crash_restarts_missing_instances_or_stopped_ones() {
    let old = desired(&svc("web", &format!("replicas: 4\ncommand: [sleep, '1']\n{SHUT_WINDOW}")));
    let new = desired(&svc("web", &format!("replicas: 4\ncommand: [sleep, '2']\n{SHUT_WINDOW}")));
    let mut crashed = live(&new, "web", 2, RunState::Exited);
    crashed.exit_code = Some(1);
    let cs = vec![
        // Running the old spec: waits.
        live(&old, "web", 1, RunState::Running),
        // Crashed on the new spec: restarted.
        crashed,
        // Stopped on the old spec: nothing runs, so it is replaced at once.
        live(&old, "web", 3, RunState::Exited),
        // web-4 is missing: created.
    ];
    let p = plan_at(&new, &observed(&new, cs), NOW, false);
    assert_eq!(
        show(&p),
        [
            "start web-2 (exited with code 1 (restart 1))",
            "remove web-3 (changed: command)",
            "create web-3 (changed: command) after [2]",
            "create web-4 (missing) after [3]",
        ]
    );
    assert_eq!(p.notes, [waiting("web")]);
}

#[test]
fn a_closed_window_delays_removing_running_instances_on_scale_down_but_not_scale_up() {
    let three = desired(&svc("web", &format!("replicas: 3\n{SHUT_WINDOW}")));
    let one = desired(&svc("web", &format!("replicas: 1\n{SHUT_WINDOW}")));
    let cs = vec![
        live(&three, "web", 1, RunState::Running),
        live(&three, "web", 2, RunState::Exited),
        live(&three, "web", 3, RunState::Running),
    ];
    // Down to one: the stopped web-2 goes, the running web-3 waits.
    let p = plan_at(&one, &observed(&one, cs.clone()), NOW, false);
    assert_eq!(show(&p), ["remove web-2 (scaled down to 1)"]);
    assert_eq!(p.notes, [waiting("web")]);
    let p = plan_at(&one, &observed(&one, cs), NOW, true);
    assert_eq!(show(&p), ["remove web-3 (scaled down to 1)", "remove web-2 (scaled down to 1) after [1]"]);
    // Up to three from one: new instances start at once.
    let p = plan_at(&three, &observed(&three, vec![live(&one, "web", 1, RunState::Running)]), NOW, false);
    assert_eq!(show(&p), ["create web-2 (missing)", "create web-3 (missing) after [1]"]);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    // A first creation is no update either.
    let p = plan_at(&one, &observed(&one, vec![]), NOW, false);
    assert_eq!(show(&p), ["create web-1 (missing)"]);
}

#[test]
fn a_waiting_replacement_does_not_run_the_before_start_hook() {
    let spec = |command: &str| {
        desired(
            &(svc("web", &format!("command: [sleep, '{command}']\nhooks: {{beforeStart: migrate}}\n{SHUT_WINDOW}"))
                + &timer("migrate", "  enabled: false")),
        )
    };
    let (old, new) = (spec("1"), spec("2"));
    let cs = vec![live(&old, "web", 1, RunState::Running)];
    let p = plan_at(&new, &observed(&new, cs.clone()), NOW, false);
    assert!(p.is_empty(), "{:?}", show(&p));
    assert_eq!(p.notes, [waiting("web")]);
    let p = plan_at(&new, &observed(&new, cs), NOW, true);
    assert_eq!(show(&p)[0], "run-job job/migrate (before web starts its new version)");
}

fn plan_units_at(d: &Desired, units: BTreeMap<String, Unit>, ignore_windows: bool) -> Plan {
    let o = Observed { units: Some(units), ..Default::default() };
    let st = State::default();
    let pulled = BTreeSet::new();
    with_units(|ctx| {
        plan(Input {
            desired: d,
            observed: &o,
            state: &st,
            now_ms: NOW,
            pulled: &pulled,
            units: Some(ctx),
            ignore_windows,
            zone: &UTC,
            gated: &BTreeMap::new(),
        })
    })
}

#[test]
fn a_changed_systemd_unit_waits_for_its_window_with_its_file() {
    let window = format!("  {SHUT_WINDOW}\n");
    let old = desired(&(sd("web", &window) + &sd("api", "")));
    let new = desired(&(sd("web", &format!("  user: nobody\n{window}")) + &sd("api", "  user: nobody\n")));
    // Running: neither the file nor the restart of web, while api (no window) goes ahead.
    let p = plan_units_at(&new, live_units(&old, UnitActive::Active), false);
    assert_eq!(
        show(&p),
        [
            "write-unit api.service (changed: unit file)",
            "daemon-reload systemd (unit files changed) after [1]",
            "restart-unit api.service (changed: unit file) after [2]",
        ]
    );
    assert_eq!(p.notes, [waiting("web")]);
    // `--now`: both.
    let p = plan_units_at(&new, live_units(&old, UnitActive::Active), true);
    assert_eq!(show(&p).len(), 5, "{:?}", show(&p));
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    // Stopped: nothing runs, so the file is written and the unit started (its policy says so).
    let p = plan_units_at(&new, live_units(&old, UnitActive::Failed), false);
    assert!(show(&p).contains(&"write-unit web.service (changed: unit file)".to_string()), "{:?}", show(&p));
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    // Inside the window: rewritten and restarted.
    let window = format!("  {OPEN_WINDOW}\n");
    let (old, new) = (desired(&sd("web", &window)), desired(&sd("web", &format!("  user: nobody\n{window}"))));
    let p = plan_units_at(&new, live_units(&old, UnitActive::Active), false);
    assert_eq!(
        show(&p),
        [
            "write-unit web.service (changed: unit file)",
            "daemon-reload systemd (unit files changed) after [1]",
            "restart-unit web.service (changed: unit file) after [2]",
        ]
    );
}

#[test]
fn a_window_that_never_opens_again_says_so() {
    let spec = |c: &str| {
        desired(&svc(
            "web",
            &format!("command: [sleep, '{c}']\nupdateWindow: {{schedule: \"1970-01-01 00:00 UTC\", duration: 1h}}"),
        ))
    };
    let (old, new) = (spec("1"), spec("2"));
    let p = plan_at(&new, &observed(&new, vec![live(&old, "web", 1, RunState::Running)]), NOW, false);
    assert!(p.is_empty(), "{:?}", show(&p));
    let note =
        Note::UpdateWindow { service: "web".into(), next_open_ms: None, window: "1970-01-01 00:00 UTC for 1h".into() };
    assert_eq!(p.notes, std::slice::from_ref(&note));
    assert!(note.to_string().contains("never opens again; `tend apply --now` makes them"), "{note}");
    assert_eq!(window::next_deferred_open(&p), None);
}

// ---- several phases in one plan ------------------------------------------------------------

#[test]
fn one_plan_creates_pulls_replaces_scales_down_and_removes_in_phase_order() {
    let spec = |command: &str| {
        desired(
            &(svc("db", "image: db:1\nnetworks: [back]\nvolumes: ['data:/data']\nhealthcheck: {command: [ok]}")
                + &svc(
                    "web",
                    &format!(
                        "replicas: 2\ncommand: [{command}]\nnetworks: [back]\nrollout: {{interval: 5s}}\ndependsOn: [{{name: db, condition: healthy}}]"
                    ),
                )
                + &svc("worker", "replicas: 1\nrollout: {scaleDownInterval: 7s}")),
        )
    };
    let (old, new) = (spec("old"), spec("new"));
    let three = desired(&svc("worker", "replicas: 3"));
    let gone = desired(&svc("gone", "networks: [old-net]"));
    let mut odd = live(&three, "worker", 1, RunState::Running);
    odd.instance = 0;
    odd.name = "odd".into();
    let cs = vec![
        odd,
        live(&old, "web", 1, RunState::Running),
        live(&old, "web", 2, RunState::Running),
        live(&three, "worker", 1, RunState::Running),
        live(&three, "worker", 2, RunState::Running),
        live(&three, "worker", 3, RunState::Running),
        live(&gone, "gone", 1, RunState::Running),
        live(&gone, "gone", 2, RunState::Exited),
    ];
    let mut o = Observed { containers: cs, ..Default::default() };
    o.images.insert("img:1".into(), IMG.into());
    o.networks.push(Network { id: "net-old".into(), name: "old-net".into(), owned: true });
    o.networks.push(Network { id: "net-mine".into(), name: "elsewhere".into(), owned: false });
    let mut st = State::default();
    st.holds.insert(
        "gone-2".into(),
        Hold { service: "gone".into(), instance: 2, since_ms: 5, exit_code: Some(1), unclean_boot: false },
    );
    let p = run(&new, &o, &st);
    assert_eq!(
        show(&p),
        [
            "create-network network/back (needed by db)",
            "create-volume volume/data (needed by db)",
            "pull db:1 (not on this host)",
            "create db-1 (missing) after [1, 2, 3]",
            "await db (needed by web) after [4]",
            "remove web-1 (changed: command) after [1, 5]",
            "create web-1 (changed: command) after [6]",
            "remove web-2 (changed: command) after [1, 5, 7] +5000ms",
            "create web-2 (changed: command) after [8]",
            "remove worker-3 (scaled down to 1)",
            "remove worker-2 (scaled down to 1) after [10] +7000ms",
            "remove gone-1 (spec removed)",
            "remove-network network/old-net (no spec uses it) after [6, 8, 10, 11, 12]",
        ]
    );
    assert_eq!(
        p.notes,
        [
            Note::Unrecognized { name: "odd".into(), id: "id-worker-1".into() },
            Note::Held {
                service: "gone".into(),
                name: "gone-2".into(),
                exit_code: Some(1),
                since_ms: 5,
                unclean_boot: false
            },
        ]
    );
}

#[test]
fn a_blocked_dependency_stops_the_hook_and_the_starts_but_not_holds_or_leftovers() {
    let hook = "hooks: {beforeStart: migrate}";
    let job = timer("migrate", "  enabled: false");
    let spec = |command: &str| {
        desired(
            &(svc("db", "restart: {policy: hold}")
                + &svc(
                    "web",
                    &format!(
                        "replicas: 3\ncommand: [{command}]\nrestart: {{policy: hold}}\ndependsOn: [{{name: db}}]\n{hook}"
                    ),
                )
                + &svc("api", "dependsOn: [{name: web}]")
                + &job),
        )
    };
    let (old, new) = (spec("old"), spec("new"));
    let mut crashed = live(&new, "web", 2, RunState::Exited);
    crashed.exit_code = Some(2);
    let mut stray = live(&new, "web", 3, RunState::Running);
    stray.name = "web-3-old".into();
    stray.id = "stray".into();
    let cs = vec![live(&new, "db", 1, RunState::Exited), live(&old, "web", 1, RunState::Running), crashed, stray];
    let mut st = State::default();
    st.holds.insert(
        "db-1".into(),
        Hold { service: "db".into(), instance: 1, since_ms: 5, exit_code: Some(0), unclean_boot: false },
    );
    let p = run(&new, &observed(&new, cs), &st);
    // web-1's replacement, its hook and web-3's creation wait; the hold and the stray do not.
    assert_eq!(
        show(&p),
        [
            "hold web-2 (exited with code 2; restart policy is hold)",
            "remove web-3-old (left over from an interrupted replacement)"
        ]
    );
    assert_eq!(
        p.notes,
        [
            Note::Held {
                service: "db".into(),
                name: "db-1".into(),
                exit_code: Some(0),
                since_ms: 5,
                unclean_boot: false
            },
            Note::Blocked { service: "web".into(), by: "db".into() },
            Note::Blocked { service: "api".into(), by: "web".into() },
        ]
    );
}

#[test]
fn a_dependency_is_awaited_once_per_condition_however_many_services_need_it() {
    let d = desired(
        &(svc("db", "")
            + &svc("web", "dependsOn: [{name: db, condition: healthy}]")
            + &svc("api", "dependsOn: [{name: db, condition: healthy}]")
            + &svc("worker", "dependsOn: [{name: db, condition: started}]")),
    );
    assert_eq!(
        show(&run(&d, &observed(&d, vec![]), &State::default())),
        [
            "create db-1 (missing)",
            "await db (needed by api) after [1]",
            "create api-1 (missing) after [2]",
            "create web-1 (missing) after [2]",
            "await db (needed by worker) after [1]",
            "create worker-1 (missing) after [5]",
        ]
    );
}

#[test]
fn a_hook_waits_for_the_pull_and_guards_a_start_first_replacement() {
    let spec = |command: &str| {
        desired(
            &(svc(
                "web",
                &format!(
                    "image: web:2\ncommand: [{command}]\nrollout: {{order: start-first}}\nhealthcheck: {{command: [ok]}}\nhooks: {{beforeStart: migrate}}"
                ),
            ) + &timer("migrate", "  enabled: false")),
        )
    };
    let (old, new) = (spec("old"), spec("new"));
    let o = Observed { containers: vec![live(&old, "web", 1, RunState::Running)], ..Default::default() };
    let r = "changed: command";
    assert_eq!(
        show(&run(&new, &o, &State::default())),
        [
            "pull web:2 (not on this host)".to_string(),
            "run-job job/migrate (before web starts its new version) after [1]".into(),
            format!("create web-1-next ({r}) after [2]"),
            "await web-1-next (rollout waits for it) after [3]".into(),
            format!("remove web-1 ({r}) after [4]"),
            "rename web-1-next → web-1 (replacement ready) after [5]".into(),
        ]
    );
}

#[test]
fn without_its_image_a_service_starts_its_stopped_containers_but_creates_nothing() {
    let d = desired(
        &(svc("a", "image: gone:1\npullPolicy: never\nreplicas: 2\nnetworks: [n]")
            + &svc("b", "dependsOn: [{name: a}]")),
    );
    let mut o = observed(&d, vec![live(&d, "a", 1, RunState::Created)]);
    o.images.remove("gone:1");
    o.networks.clear();
    assert_eq!(
        show(&run(&d, &o, &State::default())),
        ["create-network network/n (needed by a)", "start a-1 (created but not started) after [1]"]
    );
    assert_eq!(
        run(&d, &o, &State::default()).notes,
        [
            Note::ImageNotPresent { service: "a".into(), image: "gone:1".into() },
            Note::Blocked { service: "b".into(), by: "a".into() },
        ]
    );
}

#[test]
fn replacements_and_new_instances_go_in_their_own_batches_each_awaited_but_the_last_new_one() {
    let old = desired(&svc("a", "command: [old]"));
    let new = desired(&svc(
        "a",
        "replicas: 4\ncommand: [new]\nrollout: {maxUnavailable: 2, interval: 3s}\nhealthcheck: {command: [ok]}",
    ));
    let mut crashed = live(&new, "a", 4, RunState::Exited);
    crashed.exit_code = Some(1);
    let cs = vec![live(&old, "a", 1, RunState::Running), crashed];
    let r = "changed: command, healthcheck";
    assert_eq!(
        show(&run(&new, &observed(&new, cs), &State::default())),
        [
            // Unpaced work goes first, at once.
            "start a-4 (exited with code 1 (restart 1))".into(),
            format!("remove a-1 ({r})"),
            format!("create a-1 ({r}) after [2]"),
            "await a-1 (rollout waits for it) after [3]".into(),
            "create a-2 (missing) after [4] +3000ms".into(),
            "await a-2 (rollout waits for it) after [5]".into(),
            "create a-3 (missing) after [6] +3000ms".into(),
        ]
    );
}

#[test]
fn start_first_batches_await_the_next_container_once_and_pause_between() {
    let old = desired(&svc("a", "replicas: 2\ncommand: [old]\nrollout: {order: start-first}"));
    let new = desired(&svc(
        "a",
        "replicas: 2\ncommand: [new]\nrollout: {order: start-first, interval: 4s}\nhealthcheck: {command: [ok]}",
    ));
    let cs = vec![live(&old, "a", 1, RunState::Running), live(&old, "a", 2, RunState::Running)];
    let p = run(&new, &observed(&new, cs), &State::default());
    // The rollout settings change in place: not a changed field.
    let r = "changed: command, healthcheck";
    assert_eq!(
        show(&p),
        [
            format!("create a-1-next ({r})"),
            "await a-1-next (rollout waits for it) after [1]".into(),
            format!("remove a-1 ({r}) after [2]"),
            "rename a-1-next → a-1 (replacement ready) after [3]".into(),
            format!("create a-2-next ({r}) after [4] +4000ms"),
            "await a-2-next (rollout waits for it) after [5]".into(),
            format!("remove a-2 ({r}) after [6]"),
            "rename a-2-next → a-2 (replacement ready) after [7]".into(),
        ]
    );
    assert!(matches!(p.steps[1].action, Action::Await { condition: Condition::Healthy, .. }));
}

#[test]
fn scaling_down_passes_over_a_held_instance_and_paces_the_rest() {
    let d5 = desired(&svc("a", "replicas: 5"));
    let d2 = desired(&svc("a", "replicas: 2\nrollout: {scaleDownInterval: 25s}"));
    let cs = (1..=5).map(|i| live(&d5, "a", i, RunState::Running)).collect();
    let mut st = State::default();
    st.holds.insert(
        "a-4".into(),
        Hold { service: "a".into(), instance: 4, since_ms: 5, exit_code: None, unclean_boot: true },
    );
    let p = run(&d2, &observed(&d2, cs), &st);
    assert_eq!(show(&p), ["remove a-5 (scaled down to 2)", "remove a-3 (scaled down to 2) after [1] +25000ms"]);
    assert_eq!(
        p.notes,
        [Note::Held { service: "a".into(), name: "a-4".into(), exit_code: None, since_ms: 5, unclean_boot: true }]
    );
}

#[test]
fn a_placed_service_runs_only_its_slots_here_and_removes_the_ones_placed_elsewhere() {
    let mut d = desired(&svc("judicator", "replicas: 3\nplacement: {role: judicator}"));
    d.services.get_mut("judicator").expect("judicator").slots = Some(BTreeSet::from([2]));
    let o =
        observed(&d, vec![live(&d, "judicator", 1, RunState::Running), live(&d, "judicator", 4, RunState::Running)]);
    assert_eq!(
        show(&run(&d, &o, &State::default())),
        [
            "create judicator-2 (missing)",
            "remove judicator-4 (scaled down to 3)",
            "remove judicator-1 (placed on another node) after [2]",
        ]
    );
}

#[test]
fn a_placed_service_with_no_slot_here_runs_nothing_here() {
    let mut d = desired(&svc("judicator", "replicas: 3\nplacement: {role: judicator}"));
    d.services.get_mut("judicator").expect("judicator").slots = Some(BTreeSet::new());
    assert!(run(&d, &observed(&d, vec![]), &State::default()).is_empty());
}

#[test]
fn outside_a_cluster_a_spread_service_runs_slot_one_and_one_not_spread_runs_every_slot() {
    let mut d = desired(
        &(svc("spread", "replicas: 3\nplacement: {role: judicator}")
            + &svc("packed", "replicas: 2\nplacement: {role: judicator, spread: false}")
            + &svc("plain", "replicas: 2")),
    );
    crate::cluster::place_locally(&mut d);
    assert_eq!(d.services["spread"].instances(), [1]);
    assert_eq!(d.services["packed"].instances(), [1, 2]);
    assert_eq!((d.services["plain"].slots.as_ref(), d.services["plain"].instances()), (None, vec![1, 2]));
}

// ---- the cluster's rollout turn ----------------------------------------------------------

#[test]
fn a_gated_service_replaces_no_running_instance_until_its_turn_but_restarts_a_dead_one() {
    let spec = |command: &str| desired(&svc("judi", &format!("replicas: 2\ncommand: [sleep, '{command}']")));
    let (old, new) = (spec("1"), spec("2"));
    let cs = vec![live(&old, "judi", 1, RunState::Running), live(&old, "judi", 2, RunState::Exited)];
    let st = State::default();
    let pulled = BTreeSet::new();
    let note = Note::ClusterTurn { service: "judi".into(), at_once: 1 };
    let gated = BTreeMap::from([("judi".to_string(), note.clone())]);
    let o = observed(&new, cs.clone());
    let at = |gated: &BTreeMap<String, Note>, ignore_windows: bool| {
        plan(Input {
            desired: &new,
            observed: &o,
            state: &st,
            now_ms: NOW,
            pulled: &pulled,
            units: None,
            ignore_windows,
            zone: &UTC,
            gated,
        })
    };
    // Waiting for its turn: the running instance stays; the exited one, down already, is
    // replaced; `--now` does not lift the gate (it is the cluster's, not a window).
    for now in [false, true] {
        let p = at(&gated, now);
        assert_eq!(show(&p), ["remove judi-2 (changed: command)", "create judi-2 (changed: command) after [1]"]);
        assert_eq!(p.notes, std::slice::from_ref(&note));
    }
    assert_eq!(
        note.to_string(),
        "waiting for the cluster: judi is replaced here when this node's turn comes (1 node(s) at a time, each awaited ready)"
    );
    // Its turn: both are replaced, as the rollout says.
    let p = at(&BTreeMap::new(), false);
    assert_eq!(show(&p).len(), 4, "{:?}", show(&p));
    assert!(p.notes.is_empty(), "{:?}", p.notes);
}
