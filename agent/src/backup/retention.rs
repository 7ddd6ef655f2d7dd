//! Which archives to keep: `keepLast`, `keepDaily`, `keepWeekly`, `keepMonthly`,
//! `keepYearly`. Pure: archives in, the set to keep out; the caller deletes the others.
//!
//! The semantics are borg's `--keep-*` (`borg prune`):
//!
//! 1. Archives are taken newest first (ties by time: the greater id first).
//! 2. `keepLast: N` keeps the N newest archives.
//! 3. Then, in this order, `keepDaily` (periods: local calendar days), `keepWeekly` (ISO 8601
//!    weeks, Monday to Sunday, numbered by ISO week-year), `keepMonthly` (calendar months) and
//!    `keepYearly` (calendar years): walking newest first, the first archive of each period —
//!    the newest one in it — represents the period. If an earlier rule already keeps that
//!    archive, the period is used up without counting; otherwise the rule keeps it and counts
//!    one. A rule stops after keeping N archives or when the archives run out.
//!
//!    So an archive never counts twice: `{keepDaily: 7, keepWeekly: 4}` keeps 7 days and 4
//!    further weeks beyond them, i.e. 11 archives given enough history. (restic differs: its
//!    rules overlap, and the same settings would keep fewer.)
//! 4. The newest archive is always kept, even when every rule is 0.
//! 5. No rule set at all (every field `None`) keeps everything.
//!
//! Periods are computed in the given time zone (the host's, as for schedules). Only complete
//! archives are passed in; leftovers of interrupted runs are never the planner's to delete.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use tend_specs::calendar::{LocalZone, Timestamp};

/// The retention rules of a backup; `None` is a rule not given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Keep the N newest archives.
    pub keep_last: Option<u32>,
    /// Keep the newest archive of each of the N most recent days (that have one left).
    pub keep_daily: Option<u32>,
    /// Keep the newest archive of each of the N most recent ISO weeks.
    pub keep_weekly: Option<u32>,
    /// Keep the newest archive of each of the N most recent months.
    pub keep_monthly: Option<u32>,
    /// Keep the newest archive of each of the N most recent years.
    pub keep_yearly: Option<u32>,
}

impl Rules {
    /// Whether no rule is given: then every archive is kept.
    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }
}

/// The rule that keeps an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `keepLast`.
    Last,
    /// `keepDaily`.
    Daily,
    /// `keepWeekly`.
    Weekly,
    /// `keepMonthly`.
    Monthly,
    /// `keepYearly`.
    Yearly,
    /// The newest archive, kept whatever the rules say.
    Newest,
    /// No rule is given: everything is kept.
    NoRules,
}

/// Why an archive is kept: the rule, and its rank under that rule (1 for the first it keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason {
    /// The rule.
    pub rule: Rule,
    /// 1 for the newest archive the rule keeps, 2 for the next, and so on.
    pub rank: u32,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = match self.rule {
            Rule::Last => "last",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
            Rule::Newest => return f.write_str("newest"),
            Rule::NoRules => return f.write_str("no retention rules"),
        };
        write!(f, "{rule} #{}", self.rank)
    }
}

/// The archives to keep, by id (see the module's documentation for the semantics).
pub fn select<Id: Ord + Clone>(archives: &[(Id, Timestamp)], rules: &Rules, zone: &LocalZone) -> BTreeSet<Id> {
    explain(archives, rules, zone).into_keys().collect()
}

/// The archives to keep, each with the rule that keeps it.
pub fn explain<Id: Ord + Clone>(archives: &[(Id, Timestamp)], rules: &Rules, zone: &LocalZone) -> BTreeMap<Id, Reason> {
    let mut newest_first: Vec<&(Id, Timestamp)> = archives.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut kept = BTreeMap::new();
    let Some((newest, _)) = newest_first.first() else {
        return kept;
    };
    if rules.is_empty() {
        return archives.iter().map(|(id, _)| (id.clone(), Reason { rule: Rule::NoRules, rank: 1 })).collect();
    }
    let n = rules.keep_last.unwrap_or(0);
    for (rank, (id, _)) in (1..=n).zip(&newest_first) {
        kept.insert(id.clone(), Reason { rule: Rule::Last, rank });
    }
    let tz = zone.time_zone();
    let periodic = [
        (Rule::Daily, rules.keep_daily),
        (Rule::Weekly, rules.keep_weekly),
        (Rule::Monthly, rules.keep_monthly),
        (Rule::Yearly, rules.keep_yearly),
    ];
    for (rule, n) in periodic {
        let n = n.unwrap_or(0);
        if n == 0 {
            continue;
        }
        let mut last_period = None;
        let mut rank = 0;
        for (id, at) in &newest_first {
            let civil = tz.to_datetime(*at);
            let period = match rule {
                Rule::Daily => (i32::from(civil.year()), i32::from(civil.month()), i32::from(civil.day())),
                Rule::Weekly => {
                    let week = civil.date().iso_week_date();
                    (i32::from(week.year()), i32::from(week.week()), 0)
                }
                Rule::Monthly => (i32::from(civil.year()), i32::from(civil.month()), 0),
                _ => (i32::from(civil.year()), 0, 0),
            };
            if last_period == Some(period) {
                continue;
            }
            last_period = Some(period);
            if kept.contains_key(id) {
                continue;
            }
            rank += 1;
            kept.insert(id.clone(), Reason { rule, rank });
            if rank == n {
                break;
            }
        }
    }
    kept.entry(newest.clone()).or_insert(Reason { rule: Rule::Newest, rank: 1 });
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> LocalZone {
        LocalZone::utc()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    /// Days since 1970-01-01 of a date, computed independently of jiff.
    fn days(y: i64, m: i64, d: i64) -> i64 {
        let mut total = 0;
        for year in 1970..y {
            total += if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) { 366 } else { 365 };
        }
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let lengths = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        total + lengths[..(m - 1) as usize].iter().sum::<i64>() + d - 1
    }

    /// One archive a day of 2025 at 03:15 UTC, identified by its date `(month, day)`.
    fn year_2025() -> Vec<((i64, i64), Timestamp)> {
        let lengths = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let mut archives = Vec::new();
        for (m, len) in (1..=12).zip(lengths) {
            for d in 1..=len {
                let secs = days(2025, m, d) * 86_400 + 3 * 3600 + 15 * 60;
                archives.push(((m, d), Timestamp::from_second(secs).expect("in range")));
            }
        }
        archives
    }

    fn rules(last: u32, daily: u32, weekly: u32, monthly: u32, yearly: u32) -> Rules {
        let some = |n: u32| Some(n);
        Rules {
            keep_last: some(last),
            keep_daily: some(daily),
            keep_weekly: some(weekly),
            keep_monthly: some(monthly),
            keep_yearly: some(yearly),
        }
    }

    #[test]
    fn a_year_of_dailies_keeps_seven_days_four_weeks_and_the_months_before() {
        let archives = year_2025();
        assert_eq!(archives.len(), 365);
        let rules = Rules { keep_daily: Some(7), keep_weekly: Some(4), keep_monthly: Some(12), ..Rules::default() };
        let kept = select(&archives, &rules, &utc());
        // Listed by hand from a 2025 calendar. 2025-12-31 is a Wednesday.
        // Daily: the 7 newest days.
        let daily = [(12, 25), (12, 26), (12, 27), (12, 28), (12, 29), (12, 30), (12, 31)];
        // Weekly (ISO weeks, Monday..Sunday): 2026-W01 (Dec 29..31) and 2025-W52 (Dec 22..28)
        // are represented by Dec 31 and Dec 28, both kept daily, so they do not count; the 4
        // weeks beyond are W51..W48, each represented by its Sunday.
        let weekly = [(12, 21), (12, 14), (12, 7), (11, 30)];
        // Monthly: December (Dec 31) and November (Nov 30, kept weekly) are used up; then the
        // last day of each month from October back to January: 10 months, the year runs out.
        let monthly = [(10, 31), (9, 30), (8, 31), (7, 31), (6, 30), (5, 31), (4, 30), (3, 31), (2, 28), (1, 31)];
        let expected: BTreeSet<(i64, i64)> = daily.iter().chain(&weekly).chain(&monthly).copied().collect();
        assert_eq!(expected.len(), 21);
        assert_eq!(kept, expected);

        let reasons = explain(&archives, &rules, &utc());
        assert_eq!(reasons[&(12, 31)], Reason { rule: Rule::Daily, rank: 1 });
        assert_eq!(reasons[&(12, 21)], Reason { rule: Rule::Weekly, rank: 1 });
        assert_eq!(reasons[&(11, 30)], Reason { rule: Rule::Weekly, rank: 4 });
        assert_eq!(reasons[&(10, 31)], Reason { rule: Rule::Monthly, rank: 1 });
        assert_eq!(reasons[&(1, 31)].to_string(), "monthly #10");
    }

    #[test]
    fn a_year_of_dailies_with_a_yearly_rule_keeps_the_newest_of_the_year_once() {
        let archives = year_2025();
        let rules = Rules { keep_daily: Some(3), keep_yearly: Some(5), ..Rules::default() };
        let kept = select(&archives, &rules, &utc());
        // 2025's representative (Dec 31) is kept daily: the yearly rule finds no other year.
        assert_eq!(kept, BTreeSet::from([(12, 29), (12, 30), (12, 31)]));
    }

    #[test]
    fn two_archives_the_same_day_keep_the_newer() {
        let archives = [
            ("a", at("2025-03-01T03:15:00Z")),
            ("b", at("2025-03-02T03:15:00Z")),
            ("c", at("2025-03-02T21:00:00Z")),
            ("d", at("2025-03-03T03:15:00Z")),
        ];
        let rules = Rules { keep_daily: Some(2), ..Rules::default() };
        assert_eq!(select(&archives, &rules, &utc()), BTreeSet::from(["c", "d"]));
    }

    #[test]
    fn days_without_archives_are_not_counted() {
        let archives = [
            ("jan1", at("2025-01-01T03:15:00Z")),
            ("jan5", at("2025-01-05T03:15:00Z")),
            ("jan6", at("2025-01-06T03:15:00Z")),
            ("jan20", at("2025-01-20T03:15:00Z")),
        ];
        let rules = Rules { keep_daily: Some(3), ..Rules::default() };
        assert_eq!(select(&archives, &rules, &utc()), BTreeSet::from(["jan20", "jan6", "jan5"]));
    }

    #[test]
    fn keep_last_alone_keeps_the_newest_n() {
        let archives: Vec<(u32, Timestamp)> =
            (0..10).map(|i| (i, Timestamp::from_second(1_700_000_000 + i64::from(i) * 60).expect("ts"))).collect();
        let rules = Rules { keep_last: Some(3), ..Rules::default() };
        assert_eq!(select(&archives, &rules, &utc()), BTreeSet::from([7, 8, 9]));
    }

    #[test]
    fn keep_last_then_daily_counts_days_beyond_the_last_ones() {
        let archives = [
            ("d1", at("2025-03-01T03:00:00Z")),
            ("d2", at("2025-03-02T03:00:00Z")),
            ("d3a", at("2025-03-03T03:00:00Z")),
            ("d3b", at("2025-03-03T04:00:00Z")),
        ];
        let rules = Rules { keep_last: Some(1), keep_daily: Some(2), ..Rules::default() };
        // d3b is kept as last; March 3rd is used up; the 2 days beyond are March 2nd and 1st.
        assert_eq!(select(&archives, &rules, &utc()), BTreeSet::from(["d1", "d2", "d3b"]));
    }

    #[test]
    fn all_rules_zero_keep_only_the_newest() {
        let archives = year_2025();
        assert_eq!(select(&archives, &rules(0, 0, 0, 0, 0), &utc()), BTreeSet::from([(12, 31)]));
        let reasons = explain(&archives, &rules(0, 0, 0, 0, 0), &utc());
        assert_eq!(reasons[&(12, 31)].to_string(), "newest");
    }

    #[test]
    fn no_rules_keep_everything() {
        let archives = year_2025();
        assert_eq!(select(&archives, &Rules::default(), &utc()).len(), 365);
        assert!(select::<u32>(&[], &Rules::default(), &utc()).is_empty());
        assert!(select::<u32>(&[], &rules(1, 1, 1, 1, 1), &utc()).is_empty());
    }

    #[test]
    fn days_are_local_days_of_the_zone() {
        // 23:30 UTC on March 1st is March 2nd in Berlin: both archives fall on one Berlin day.
        let archives = [("a", at("2025-03-01T23:30:00Z")), ("b", at("2025-03-02T20:00:00Z"))];
        let rules = Rules { keep_daily: Some(2), ..Rules::default() };
        assert_eq!(select(&archives, &rules, &utc()), BTreeSet::from(["a", "b"]));
        let berlin = LocalZone::from_tz(Some("Europe/Berlin"));
        assert_eq!(select(&archives, &rules, &berlin), BTreeSet::from(["b"]));
    }
}
