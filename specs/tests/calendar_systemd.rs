//! tend's calendar expressions against the real `systemd-analyze calendar` (systemd 252): the
//! same expressions must be accepted or refused alike, and accepted ones must print the same
//! normalized form and the same next five elapses, under several local zones and around DST
//! changes. Fails, never skips, when `systemd-analyze` is missing.

use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tend_specs::calendar::{CalendarError, LocalZone, describe, describe_in, parse_time, parse_time_in};

const ITERATIONS: usize = 5;
const BASE: &str = "2026-11-22 00:00:00 UTC";

/// What the expression list says systemd does with an expression.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Accept,
    Reject,
}

#[derive(Clone, Debug)]
struct Case {
    expr: String,
    base: &'static str,
    tz: &'static str,
    expect: Expect,
}

fn case(expr: impl Into<String>, base: &'static str, tz: &'static str, expect: Expect) -> Case {
    Case { expr: expr.into(), base, tz, expect }
}

/// Accepted expressions, checked from the default base time in UTC.
const ACCEPTED: &[&str] = &[
    // shorthands
    "minutely",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "anually",
    "quarterly",
    "semiannually",
    "semi-annually",
    "biannually",
    "bi-annually",
    "DAILY",
    "Hourly",
    "daily UTC",
    "minutely utc",
    "weekly Europe/Berlin",
    "monthly America/New_York",
    "hourly Australia/Lord_Howe",
    "quarterly Asia/Tokyo",
    // weekdays
    "Mon..Fri 09:00",
    "Mon-Fri 09:00",
    "Sat,Sun 10:30",
    "Sat..Sun",
    "Monday",
    "monday..friday",
    "MON,wed,FRI 18:00",
    "Mon..Wed,Fri..Sun 06:00",
    "Sun",
    "Thu,Tue",
    "Mon,Tue,Wed,Thu,Fri,Sat,Sun",
    "Mon..Sun 12:00",
    "Wed..Wed",
    "mon,",
    "Tue, 05:00",
    "Mon,Tue, 05:00",
    "Fri *-*-13",
    "Fri *-*-13 13:13:13",
    "Mon *-*-1..7 08:00",
    "Sun *-*~1..7",
    "Sat *-02-29",
    "Mon 2027-*-* 00:00",
    "Thursday..Saturday 23:59:59",
    "Sun   *-*-* 00:00",
    // dates
    "2027-*-*",
    "2027-*-* 00:00:00",
    "*-02-29",
    "*-02-29 12:00",
    "2028-02-29",
    "*-02-30",
    "*-04-31",
    "*-02-31",
    "*-*-31",
    "*-*-30",
    "*-*-29",
    "*-01,03,05,07,08,10,12-31",
    "*-*-01",
    "*-*-1",
    "*-1-1",
    "27-1-1",
    "99-*-*",
    "69-12-31",
    "70-01-01",
    "2199-12-31 23:59:59",
    "2199-*-*",
    "2026..2030-*-*",
    "2026..2040/4-02-29",
    "2020/4-02-29",
    "*-*-1/2",
    "*-*-1..31/7",
    "*-1..12/3-1",
    "*-*-5..10",
    "*-*-5..10/2",
    "*-2..4-15",
    "2026-11-22",
    "2026-11-22 00:00:00",
    "2026-11-22 00:00:01",
    "2026-12-25 18:30",
    "*-12-25",
    "12-25",
    "2-29",
    "*-*-* *:*:*",
    "*-*-*",
    "*-*-* ",
    "2026-01-01 ",
    "2026,2028,2030-01-01",
    "1970-01-01",
    "2000-01-01",
    // last days of the month
    "*-*~01",
    "*-*~1",
    "*-02~01",
    "*-02~03",
    "*-*~07/2",
    "*-*~03/2",
    "*-*~1..3",
    "*-*~05..07",
    "*-02~28",
    "*-*~28",
    "*-*~1,2",
    "*-*~1,2,3",
    "*-*~02/1",
    "2028-02~01",
    "*-02~1 23:59",
    "Mon *-*~1..7",
    "*-*~*",
    "*-05~*",
    "*~01",
    "2027-*~1..7/3",
    // times
    "12:00",
    "12:00:00",
    "0:0",
    "00:00",
    "9:5",
    "*:30",
    "*:*",
    "*:*:*",
    "*:0/15",
    "*:00/15",
    "*:5/15",
    "*:0..59/15",
    "0/6:00",
    "*-*-* 00,12:00:00",
    "*-*-* 8..18:00",
    "*-*-* 8..18/2:00",
    "*-*-* 8..17/2:30",
    "9..17:0/20",
    "*:*:0/10",
    "*:*:0/0.5",
    "*:*:1.5",
    "*:*:01.000001",
    "*:*:59.999999",
    "*:*:0.9999995",
    "*:*:10..20",
    "*:*:10..20/3",
    "*:*:00..10",
    "*:*:00,00/1",
    "*:*:05,00/1",
    "*:*:58/1",
    "23:59:59",
    "*:*:10/20",
    "*:*:30/20",
    "*:10/25",
    "0..23/5:00",
    "*-*-* 0..24/5:00",
    "*-*-* 05..05:00",
    "*-*-* 20..23/5:00",
    "*-*-* 0..23/24:00",
    "00:00:00.000001",
    "*:*:00.5/0.25",
    "*:*:1.1234567",
    "*:*:1..2/0.3",
    "12:00:00/5",
    "*-*-* 1,2,3,4,5:00",
    "*-1,7-1 0:0",
    "*-*-1,15 12:00",
    "*:0,15,30,45",
    "*:45,15,0,30,15",
    "*:1..3,2..4",
    "*:1..3,1..3",
    "5,5,5:00",
    "*:59",
    "23:*",
    "0:0:0",
    // time zones
    "*-*-* 02:30 Europe/Berlin",
    "Mon..Fri 09:00 Europe/Berlin",
    "*-*-* 12:00 America/New_York",
    "*-*-* 00:00 Australia/Lord_Howe",
    "*-*-* 00:00 Asia/Kolkata",
    "*-*-* 00:00 Etc/GMT+5",
    "*-*-* 00:00 Etc/UTC",
    "*-*-* 00:00 GMT",
    "*-*-* 00:00 CET",
    "*-*-* 00:00 EST5EDT",
    "*-*-* 00:00 Pacific/Kiritimati",
    "*-*-* 00:00 America/St_Johns",
    "2026-12-01 Europe/Berlin",
    "Mon Europe/Berlin",
    "*:0/15 Asia/Kathmandu",
    // @EPOCH
    "@1795000000",
    "@1700000000",
    "@1700000000 UTC",
    "@1700000000 Europe/Berlin",
    "@ 5",
    "@+7258118399",
];

/// Refused expressions: systemd and tend must both refuse them.
const REJECTED: &[&str] = &[
    "",
    " ",
    "foo",
    "daily ",
    " daily",
    "dailyx",
    "Mon..",
    "Mon-",
    "Fri..Mon",
    "Mo",
    "Mond",
    "Mon.Tue",
    "Mon..Wed..Fri",
    "Mon..Wed-Fri",
    "Mon,,Tue",
    "Mon-12-01",
    "Mon Tue",
    "Mon 5",
    "*-*-* 24:00",
    "*-*-* 23:60",
    "*-*-* 00:00:60",
    "*-13-01",
    "*-00-01",
    "*-01-00",
    "*-01-32",
    "1969-01-01",
    "2200-01-01",
    "*-*-* 20/5:00",
    "*:*:59/2",
    "*-*~01/2",
    "*-*~29",
    "*-*~27,28",
    "*-*~1,2,3,4,5,6,7,8,9,10",
    "*:*:1.5..1.9",
    "*:*:1..1.5",
    "*:*:5.",
    "*:*:*/5",
    "5,*:00",
    "*,5:00",
    "*:0/0",
    "12",
    "12:",
    ":00",
    "12:00:",
    "12:00:00:00",
    "12:00 foo",
    "12:00 Europe/Nowhere",
    "12:00 europe/berlin",
    "12:00 Europe//Berlin",
    "12:00 Europe/Berlin/",
    "12:00 ../etc/passwd",
    "*-*-*T12:00",
    "2026-01-01T12:00",
    "@-1",
    "@1 12:00",
    "@",
    "@x",
    "@99999999999999999999",
    "*-*-* 1-2:00",
    "10..5:00",
    "*~02~03",
    "*-02~03-04",
    "2026~05",
    "*-*-* 12:00  UTC",
    "UTC",
    " UTC",
    "*:*:99999999999999999999",
    "*-*-* 2147483648:00",
    "*:*:2148",
    "*:00/60",
    "2027..2026-01-01",
    "*:0/60",
    "+5:00",
    "-5:00",
    "1..2..3:00",
    "1/2/3:00",
    "*-*-* 12:00 Mon",
    "Mon..Fri..Sun",
    "*-*-*-*",
    "*:*:*:*",
    "1.5:00",
    "*:1.5",
];

/// Zone-less expressions, also checked with these local zones.
const LOCAL_ZONES: &[&str] = &["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"];
const ZONELESS: &[&str] = &[
    "daily",
    "hourly",
    "*:30",
    "*:0/20",
    "*-*-* 02:30",
    "*-*-* 02:00",
    "*-*-* 01..03:00",
    "*-*-* 01:30",
    "Sun 02:00",
    "Sun *-*-* 01:59:59",
    "*-*~01 02:30",
    "*-*-* *:*:00/30",
    "Mon..Fri 09:00",
    "*-03,04,10,11-* 02:15",
];

/// Base times around DST changes: Europe/Berlin (2026-10-25, 2027-03-28), America/New_York
/// (2026-11-01, 2027-03-14) and Australia/Lord_Howe (2026-10-04 +30 min, 2027-04-04 −30 min).
const DST_BASES: &[&str] = &[
    "2026-10-24 22:00:00 UTC",
    "2026-10-25 00:30:00 UTC",
    "2026-10-25 01:00:00 UTC",
    "2027-03-27 23:00:00 UTC",
    "2027-03-28 00:59:59 UTC",
    "2026-11-01 04:00:00 UTC",
    "2026-11-01 05:30:00 UTC",
    "2027-03-14 05:00:00 UTC",
    "2027-03-14 06:59:59 UTC",
    "2026-10-03 13:00:00 UTC",
    "2026-10-03 15:29:00 UTC",
    "2027-04-03 13:00:00 UTC",
    "2027-04-03 14:45:00 UTC",
    "@1792890000",
];

/// Zoned expressions whose elapses fall into or next to DST gaps and folds.
const ZONED_DST: &[&str] = &[
    "*-*-* 02:30 Europe/Berlin",
    "*-*-* 02:00 Europe/Berlin",
    "*:30 Europe/Berlin",
    "*:0/15 Europe/Berlin",
    "hourly Europe/Berlin",
    "*-*-* 01..03:00 Europe/Berlin",
    "*-*-* 02:*:00 Europe/Berlin",
    "Sun 02:30 Europe/Berlin",
    "*-*-* 01:30 America/New_York",
    "*-*-* 02:00 America/New_York",
    "*-*-* 02:30 America/New_York",
    "*:0/20 America/New_York",
    "*-*-* 02:15 Australia/Lord_Howe",
    "*-*-* 01:45 Australia/Lord_Howe",
    "*:15 Australia/Lord_Howe",
    "*:0/10 Australia/Lord_Howe",
    "*-*-* 02:00 Australia/Lord_Howe",
];

/// Expressions checked from far-apart base times.
const FAR_EXPRESSIONS: &[&str] = &[
    "*-02-29",
    "*-02~01",
    "Mon *-02-29",
    "daily",
    "yearly",
    "*:*:*",
    "*:*:0/0.3",
    "*:*:00.5",
    "2100-*-*",
    "2199-*-* 12:00",
    "*-12-31 23:59:59",
    "Sun *-*~1..7 12:00",
    "1970-01-01 00:00:01",
    "2096..2104/4-02-29",
];

/// Expressions built from the grammar's pieces, one by one.
fn generated() -> Vec<String> {
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut out = Vec::new();
    // Every set of weekdays, written as a list, checks the normalized ranges.
    for bits in 1..128u32 {
        let list: Vec<&str> = (0..7).filter(|i| bits & (1 << i) != 0).map(|i| days[i]).collect();
        out.push(format!("{} 12:00", list.join(",")));
    }
    for d in 27..=31 {
        out.push(format!("*-02-{d}"));
        out.push(format!("*-*-{d} 06:00"));
    }
    for d in 1..=28 {
        out.push(format!("*-*~{d:02}"));
    }
    for n in [1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13, 20, 29, 30, 31, 45, 59] {
        out.push(format!("*:0/{n}"));
    }
    for (a, b, r) in [(0, 23, 1), (0, 23, 2), (1, 22, 3), (5, 21, 4), (0, 23, 7), (3, 3, 1), (6, 18, 6), (0, 23, 23)] {
        out.push(format!("{a}..{b}/{r}:00"));
    }
    for y in [2026, 2027, 2028, 2032, 2100, 2196] {
        out.push(format!("{y}-02-29"));
        out.push(format!("{y}-02~01 12:00"));
    }
    out
}

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for e in ACCEPTED {
        cases.push(case(*e, BASE, "UTC", Expect::Accept));
    }
    for e in generated() {
        cases.push(case(e, BASE, "UTC", Expect::Accept));
    }
    for e in REJECTED {
        cases.push(case(*e, BASE, "UTC", Expect::Reject));
    }
    // A list of 241 entries is the most systemd takes.
    let entries = |n: usize| vec!["1"; n].join(",");
    cases.push(case(format!("*:{}", entries(241)), BASE, "UTC", Expect::Accept));
    cases.push(case(format!("*:{}", entries(242)), BASE, "UTC", Expect::Reject));
    for base in DST_BASES {
        for e in ZONED_DST {
            cases.push(case(*e, base, "UTC", Expect::Accept));
        }
    }
    for tz in LOCAL_ZONES {
        for base in [BASE, "2026-07-01 12:00:00 UTC"] {
            for e in ZONELESS {
                cases.push(case(*e, base, tz, Expect::Accept));
            }
        }
    }
    for base in DST_BASES {
        for e in ["*-*-* 02:30", "*:30", "*-*-* 01:30", "*:0/20", "*-*-* 02:15"] {
            for tz in LOCAL_ZONES {
                cases.push(case(e, base, tz, Expect::Accept));
            }
        }
    }
    // Far bases: leap years around 2100 (not a leap year), the last year systemd handles, the
    // epoch, and bases with fractions of a second.
    for base in [
        "2096-03-01 00:00:00 UTC",
        "2199-12-30 12:00:00 UTC",
        "@0",
        "@1795305600.5",
        "@1795305599.999999",
        "2027-12-31 23:59:59 UTC",
    ] {
        for e in FAR_EXPRESSIONS {
            cases.push(case(*e, base, "UTC", Expect::Accept));
        }
    }
    // The local zone's own abbreviations are suffixes that pin standard or daylight time.
    for (tz, exprs) in [
        ("Europe/Berlin", &["12:00 CET", "12:00 CEST", "02:30 CET", "02:30 cest", "*:30 CET", "daily CET"][..]),
        ("America/New_York", &["09:00 EST", "09:00 EDT", "01:30 EST", "01:30 EDT"][..]),
        ("Australia/Lord_Howe", &["12:00 +1030", "12:00 +11", "02:15 +1030"][..]),
        ("Asia/Tokyo", &["12:00 JST", "12:00 JDT"][..]),
    ] {
        for base in [BASE, "2026-07-01 12:00:00 UTC", "2026-10-24 22:00:00 UTC", "2026-11-01 04:00:00 UTC"] {
            for e in exprs {
                cases.push(case(*e, base, tz, Expect::Accept));
            }
        }
    }
    // Other zones for the local clock, with and without DST.
    for tz in ["Asia/Kolkata", "Europe/London", "Africa/Abidjan", ":Europe/Berlin", "EST5EDT,M3.2.0,M11.1.0", "Foo/Bar"]
    {
        for e in ["daily", "*-*-* 01:30", "Mon..Fri 09:00"] {
            cases.push(case(e, BASE, tz, Expect::Accept));
            cases.push(case(e, "2027-03-28 00:30:00 UTC", tz, Expect::Accept));
        }
    }
    cases
}

/// What systemd-analyze printed, minus "From now:" lines; `Err` holds stderr when it failed.
fn systemd(case: &Case) -> Result<String, String> {
    let output = Command::new("systemd-analyze")
        .arg("calendar")
        .arg(format!("--iterations={ITERATIONS}"))
        .arg(format!("--base-time={}", case.base))
        .arg("--")
        .arg(&case.expr)
        .env("TZ", case.tz)
        .env("SYSTEMD_COLORS", "0")
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is required for this test and could not be run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    Ok(stdout.lines().filter(|l| !l.trim_start().starts_with("From now:")).map(|l| format!("{l}\n")).collect())
}

fn tend(case: &Case) -> Result<String, CalendarError> {
    let local = LocalZone::from_tz(Some(case.tz));
    let from = parse_time_in(case.base, &local).expect("the base times in this file parse");
    describe_in(&case.expr, from, ITERATIONS, &local)
}

#[test]
fn tend_reads_calendar_expressions_exactly_as_systemd_analyze_does() {
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze is required for this test (apt-get install systemd)");
    assert!(version.status.success(), "systemd-analyze --version failed");

    let cases = all_cases();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let outcome = (i, systemd(case), tend(case));
                    results.lock().expect("no thread panics while holding the lock").push(outcome);
                }
            });
        }
    });
    let mut results = results.into_inner().expect("no thread panicked");
    results.sort_by_key(|r| r.0);

    let mut mismatches = Vec::new();
    let (mut accepted, mut rejected) = (0, 0);
    for (i, sd, ours) in &results {
        let case = &cases[*i];
        let label = format!("{:?} (TZ={}, base {})", case.expr, case.tz, case.base);
        match sd {
            Ok(_) => accepted += 1,
            Err(_) => rejected += 1,
        }
        let expected_by_list = if sd.is_ok() { Expect::Accept } else { Expect::Reject };
        if expected_by_list != case.expect {
            mismatches.push(format!("{label}: the list says {:?} but systemd says {sd:?}", case.expect));
        }
        match (sd, ours) {
            (Ok(a), Ok(b)) if a == b => {}
            (Err(e), Err(ours)) => {
                let gave_up = e.contains("Failed to determine next elapse");
                if gave_up != matches!(ours, CalendarError::NoConvergence { .. }) {
                    mismatches.push(format!(
                        "{label}: both refuse, for different reasons\n  systemd: {e}\n  tend:    {ours}"
                    ));
                }
            }
            _ => mismatches.push(format!(
                "{label}\n--- systemd:\n{}\n--- tend:\n{}",
                sd.as_ref().map_or_else(|e| format!("error: {e}"), |s| s.clone()),
                ours.as_ref().map_or_else(|e| format!("error: {e}"), |s| s.clone()),
            )),
        }
    }
    println!("{} cases: {accepted} accepted and {rejected} refused by systemd", results.len());
    assert!(accepted >= 200, "only {accepted} accepted expressions");
    assert!(rejected >= 40, "only {rejected} refused expressions");
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from systemd-analyze:\n\n{}",
        mismatches.len(),
        results.len(),
        mismatches.join("\n\n")
    );
}

const CHILD_EXPR: &str = "TEND_CALENDAR_CHILD_EXPR";
const CHILD_BASE: &str = "TEND_CALENDAR_CHILD_BASE";

/// The child half of `describe_takes_the_local_zone_from_the_tz_variable`: prints what
/// `describe()` gives under the TZ its parent set. Does nothing when run on its own.
#[test]
fn child_prints_describe_under_the_tz_it_was_given() {
    let (Ok(expr), Ok(base)) = (std::env::var(CHILD_EXPR), std::env::var(CHILD_BASE)) else { return };
    let from = parse_time(&base).expect("the parent passes a valid base time");
    let text = describe(&expr, from, ITERATIONS).unwrap_or_else(|e| format!("error: {e}\n"));
    print!("<<<\n{text}>>>\n");
}

#[test]
fn describe_takes_the_local_zone_from_the_tz_variable() {
    let exe = std::env::current_exe().expect("the test binary knows where it is");
    for (tz, expr, base) in [
        ("America/New_York", "Mon..Fri 09:00", BASE),
        ("America/New_York", "*-*-* 01:30", "2026-11-01 04:00:00 UTC"),
        ("America/New_York", "12:00 EST", "2026-07-01 12:00:00 UTC"),
        ("Australia/Lord_Howe", "*:0/20", "2026-10-03 15:29:00 UTC"),
        ("Europe/Berlin", "02:30 CEST", "2026-10-24 22:00:00 UTC"),
        (":Europe/Berlin", "daily", BASE),
    ] {
        let out = Command::new(&exe)
            .args(["--exact", "child_prints_describe_under_the_tz_it_was_given", "--nocapture", "--test-threads=1"])
            .env("TZ", tz)
            .env(CHILD_EXPR, expr)
            .env(CHILD_BASE, base)
            .output()
            .expect("the test binary runs itself");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ours = stdout
            .split_once("<<<\n")
            .and_then(|(_, rest)| rest.split_once(">>>"))
            .map(|(text, _)| text.to_owned())
            .unwrap_or_else(|| panic!("the child printed no result for TZ={tz} {expr:?}: {stdout}"));
        let theirs = systemd(&case(expr, base, tz, Expect::Accept)).expect("systemd accepts these");
        assert_eq!(ours, theirs, "TZ={tz} {expr:?} from {base}");
    }
}
