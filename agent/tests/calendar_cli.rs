//! `tend calendar` prints what `systemd-analyze calendar` prints (less "From now" lines),
//! and rejects what it rejects, with the column of the problem.

use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.env("TZ", "UTC").output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim_start().starts_with("From now:"))
        .collect::<Vec<_>>()
        .join("\n");
    (out.status.success(), text)
}

#[test]
fn tend_calendar_matches_systemd_analyze() {
    let from = "2026-11-22 00:00:00 UTC";
    for expr in
        ["Mon..Fri 09:00", "daily", "*-*-* 00,12:00:00", "*-02-29 06:00", "*-*~1 23:30", "Sat,Sun *-*-1..7 03:00"]
    {
        let (ok, systemd) = run(Command::new("systemd-analyze").args([
            "calendar",
            "--iterations=4",
            &format!("--base-time={from}"),
            expr,
        ]));
        assert!(ok, "systemd-analyze must be installed and accept {expr}");
        let (ok, tend) =
            run(Command::new(env!("CARGO_BIN_EXE_tend")).args(["calendar", "--iterations", "4", "--from", from, expr]));
        assert!(ok, "tend calendar failed for {expr}");
        assert_eq!(tend, systemd, "{expr}");
    }
}

#[test]
fn tend_calendar_rejects_an_invalid_expression_with_its_column() {
    let out = Command::new(env!("CARGO_BIN_EXE_tend")).args(["calendar", "*-*-* 25:00"]).output().expect("run tend");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid calendar expression `*-*-* 25:00`") && err.contains("column 7"), "{err}");
}
