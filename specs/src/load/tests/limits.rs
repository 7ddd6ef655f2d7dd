//! The bounds of `crate::bounds`: a value at its bound loads, one past it is an error at
//! the field, saying the value, the bound and why.

use std::fmt::Write as _;

use super::{load, problems, timer_doc, unit, web};
use crate::bounds;

/// Asserts that `text` has exactly one problem, at `at` (`LINE:COL`), starting with `message`.
fn one(text: &str, at: &str, message: &str) {
    let got = problems(text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with(&format!("{at}: {message}")), "want {at}: {message}\n got {got:?}");
}

#[test]
fn counts_and_durations_at_their_bound_load_and_past_it_are_refused() {
    load(&web(
        "replicas: 1000\nrollout: {maxUnavailable: 1000, interval: 1h, scaleDownInterval: 1h}\nstopTimeout: 1h\n\
         healthcheck: {command: [\"true\"], interval: 1h, timeout: 1h, retries: 1000, startPeriod: 1d}\n\
         restart: {backoff: {initial: 1h, max: 1d}}\nresources: {memory: 6Mi, cpus: 0.01}\n\
         updateWindow: {schedule: daily, duration: 31d}",
    ));
    load(&timer_doc("schedule: daily\nrandomizedDelay: 7d\naccuracy: 1d\ntimeout: 7d"));
    for (extra, at, message) in [
        ("replicas: 1001", "6:13", "`replicas` is 1001; at most 1000"),
        ("rollout: {scaleDownInterval: 61m}", "6:32", "`rollout.scaleDownInterval` is 1h1m; at most 1h"),
        ("healthcheck: {command: [\"true\"], timeout: 3601s}", "6:45", "`healthcheck.timeout` is 1h1s; at most 1h"),
        ("resources: {memory: 17Ti}", "6:23", "`resources.memory` is 18691697672192 bytes; at most 17592186044416"),
        ("resources: {memory: 6291455}", "6:23", "`resources.memory` is 6291455 bytes; at least 6291456"),
        ("resources: {cpus: 1025}", "6:21", "`resources.cpus` must be at least 0.01"),
    ] {
        one(&web(extra), at, message);
    }
    one(&unit("stopTimeout: 2h"), "7:16", "`stopTimeout` is 2h; at most 1h");
}

#[test]
fn lists_and_mappings_past_their_bound_are_refused_at_the_list() {
    let many = |n: usize, item: &dyn Fn(usize) -> String| (0..n).map(item).collect::<Vec<_>>().join(", ");
    let args = many(1025, &|i| format!("a{i}"));
    one(
        &web(&format!("command: [{args}]")),
        "6:12",
        "`command` has 1025 entries; at most 1024 (arguments of one command)",
    );
    let job = format!(
        "apiVersion: tend/v1\nkind: Timer\nmetadata: {{name: t}}\nspec:\n  enabled: false\n  job: {{runtime: host, exec: [/bin/x, {}]}}\n",
        many(1024, &|i| format!("a{i}"))
    );
    one(&job, "6:30", "`exec` has 1025 entries; at most 1024");
    let env = many(1025, &|i| format!("V{i}: x"));
    one(&web(&format!("env: {{{env}}}")), "6:8", "`env` has 1025 entries; at most 1024");
    let labels = many(129, &|i| format!("l{i}: x"));
    one(&web(&format!("labels: {{{labels}}}")), "6:11", "`labels` has 129 entries; at most 128");
    let ports = many(1025, &|i| format!("\"{}:80\"", 10_000 + i));
    one(&web(&format!("ports: [{ports}]")), "6:10", "`ports` has 1025 entries; at most 1024");
    let volumes = many(257, &|i| format!("\"v{i}:/m{i}\""));
    one(&web(&format!("volumes: [{volumes}]")), "6:12", "`volumes` has 257 entries; at most 256");
    let nets = many(33, &|i| format!("n{i}"));
    one(&web(&format!("networks: [{nets}]")), "6:13", "`networks` has 33 entries; at most 32");
    let deps = many(257, &|i| format!("{{name: d{i}}}"));
    let mut text = web(&format!("dependsOn: [{deps}]"));
    for i in 0..257 {
        let _ = write!(text, "---\n{}", web("").replace("name: web", &format!("name: d{i}")));
    }
    one(&text, "6:14", "`dependsOn` has 257 entries; at most 256");
}

#[test]
fn texts_past_their_bound_are_refused_without_being_shown() {
    let long = "x".repeat(bounds::TEXT.max + 1);
    let got = problems(&web(&format!("command: [sh, \"{long}\"]")));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("6:17: an argument of `command` is 65537 bytes long; at most 65536"), "{got:?}");
    assert!(got[0].len() < 300, "the argument is not shown: {}", got[0].len());
    one(&web(&format!("env: {{A: \"{long}\"}}")), "6:12", "the value of `A` is 65537 bytes long; at most 65536");
    let path = format!("/{}", "p".repeat(bounds::PATH.max));
    one(&web(&format!("workingDir: \"{path}\"")), "6:15", "`workingDir` is 4096 bytes long; at most 4095");
    let name = "N".repeat(256);
    one(
        &web(&format!("env: {{{name}: x}}")),
        "6:267",
        "the name of an environment variable is 256 bytes long; at most 255",
    );
    let value = "v".repeat(bounds::LABEL_VALUE.max + 1);
    one(&web(&format!("labels: {{a: {value}}}")), "6:15", "the value of label `a` is 4097 bytes long; at most 4096");
    let schedule = format!("{}Mon 02:00", "Mon,".repeat(254));
    one(&timer_doc(&format!("schedule: \"{schedule}\"")), "6:13", "`schedule` is 1025 bytes long; at most 1024");
}

#[test]
fn a_set_of_more_than_a_thousand_documents_is_refused_and_the_rest_not_read() {
    let mut text = String::new();
    for i in 0..=bounds::OBJECTS.max {
        let _ = write!(text, "---\n{}", web("").replace("name: web", &format!("name: s{i}")));
    }
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("6002:1: this is document 1001 of the spec set; a set holds at most 1000"), "{got:?}");
}

#[test]
fn a_stop_signal_is_one_docker_and_systemd_both_know() {
    for good in ["SIGTERM", "TERM", "SIGINT", "SIGQUIT", "SIGWINCH", "SIGUSR1", "15", "64"] {
        load(&web(&format!("stopSignal: \"{good}\"")));
    }
    for bad in ["SIGFOO", "SIGTERMX", "sigterm", "0", "65", "SIG"] {
        one(&web(&format!("stopSignal: \"{bad}\"")), "6:15", &format!("invalid signal `{bad}`"));
    }
}
