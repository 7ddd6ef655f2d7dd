//! systemd calendar expressions (`systemd.time(7)`), read exactly as systemd 252 reads them:
//! parsing with column-precise errors, the normalized form, the next elapse, and the text that
//! `systemd-analyze calendar` prints.
//!
//! systemd computes elapses with glibc's `mktime()`, whose answers inside DST gaps and folds
//! depend on a guess carried over from its previous call. To give the same elapses, this module
//! replays systemd's search (`calendarspec.c`) over a faithful model of `mktime()`, guess
//! included, on top of the system tz database (`/usr/share/zoneinfo`), read through `jiff`.

use std::fmt::{self, Write as _};
use std::path::Path;
use std::str::FromStr;

use jiff::tz::TimeZone;
pub use jiff::{Timestamp, Zoned};

const USEC_PER_SEC: i64 = 1_000_000;
const MIN_YEAR: i64 = 1970;
const MAX_YEAR: i64 = 2199;
/// systemd's `CALENDARSPEC_COMPONENTS_MAX`: a list may nest this deep, so it holds one more.
const MAX_NESTING: usize = 240;
/// systemd's `MAX_CALENDAR_ITERATIONS`, its guard against searches that never settle.
const MAX_ITERATIONS: usize = 1000;
const ALL_WEEKDAYS: i32 = 127;
/// systemd's `USEC_TIMESTAMP_FORMATTABLE_MAX`: 9999-12-30 23:59:59 UTC.
const USEC_FORMATTABLE_MAX: i64 = 253_402_214_399_000_000;
const ZONEINFO: &str = "/usr/share/zoneinfo";
const DAY_NAMES: [(&str, i32); 14] = [
    ("Monday", 0),
    ("Mon", 0),
    ("Tuesday", 1),
    ("Tue", 1),
    ("Wednesday", 2),
    ("Wed", 2),
    ("Thursday", 3),
    ("Thu", 3),
    ("Friday", 4),
    ("Fri", 4),
    ("Saturday", 5),
    ("Sat", 5),
    ("Sunday", 6),
    ("Sun", 6),
];
const SHORT_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Why a calendar expression (or a time for `--from`) was refused. Every variant names the
/// 1-based column (in characters) of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// Something other than what the grammar allows at this point.
    #[error("column {column}: expected {expected}, found {found}")]
    Unexpected {
        /// 1-based character column of the offending text.
        column: usize,
        /// What the grammar allows here.
        expected: &'static str,
        /// What was there instead (quoted), or "the end".
        found: String,
    },
    /// A number too large for systemd to hold.
    #[error("column {column}: number too large, expected at most {max}")]
    TooLarge {
        /// 1-based character column of the number.
        column: usize,
        /// The largest value systemd accepts here.
        max: &'static str,
    },
    /// A list with more entries than systemd accepts.
    #[error("column {column}: too many entries in one list, expected at most {max}", max = MAX_NESTING + 1)]
    TooManyEntries {
        /// 1-based character column of the first entry past the limit.
        column: usize,
    },
    /// A well-formed entry whose values cannot be scheduled.
    #[error("column {column}: {field} {problem}, expected {expected}")]
    OutOfRange {
        /// 1-based character column of the entry.
        column: usize,
        /// Which part of the expression: year, month, day, hour, minute, second.
        field: &'static str,
        /// What is wrong, with the values as systemd normalized them.
        problem: String,
        /// What would be accepted.
        expected: String,
    },
    /// systemd gives up searching after 1000 steps ("Failed to determine next elapse").
    #[error("column {column}: the next elapse could not be determined (systemd stops after 1000 steps)")]
    NoConvergence {
        /// Always 1: the whole expression is at fault.
        column: usize,
    },
}

impl CalendarError {
    /// The 1-based character column of the problem.
    pub fn column(&self) -> usize {
        match self {
            CalendarError::Unexpected { column, .. }
            | CalendarError::TooLarge { column, .. }
            | CalendarError::TooManyEntries { column }
            | CalendarError::OutOfRange { column, .. }
            | CalendarError::NoConvergence { column } => *column,
        }
    }

    /// A fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CalendarError::Unexpected { .. } => "unexpected",
            CalendarError::TooLarge { .. } => "too_large",
            CalendarError::TooManyEntries { .. } => "too_many_entries",
            CalendarError::OutOfRange { .. } => "out_of_range",
            CalendarError::NoConvergence { .. } => "no_convergence",
        }
    }
}

/// One list entry of a field: `start`, `start..stop`, `start/repeat` or `start..stop/repeat`.
/// `stop` is -1 when absent and `repeat` 0 when absent, as in systemd; seconds are in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Component {
    start: i64,
    stop: i64,
    repeat: i64,
}

impl Component {
    fn value(v: i64) -> Component {
        Component { start: v, stop: -1, repeat: 0 }
    }
}

/// Which clock an expression runs on.
#[derive(Debug, Clone, PartialEq)]
enum Zone {
    /// No suffix: the local zone at the time of the computation.
    Local,
    /// The local zone's standard (`dst == false`) or daylight name, e.g. `CET` under
    /// `TZ=Europe/Berlin`: the local zone, with `mktime()` told which of the two is meant.
    LocalAbbreviation { dst: bool, name: String },
    /// ` UTC`, or `@EPOCH`.
    Utc,
    /// An IANA zone from `/usr/share/zoneinfo`.
    Named { name: String, tz: TimeZone },
}

/// A parsed, normalized and validated systemd calendar expression.
#[derive(Debug, Clone, PartialEq)]
pub struct CalendarSpec {
    /// Bit 0 is Monday; `None` when every day matches.
    weekdays: Option<i32>,
    /// Each field's entries, sorted and deduplicated; empty means `*`.
    year: Vec<Component>,
    month: Vec<Component>,
    day: Vec<Component>,
    hour: Vec<Component>,
    minute: Vec<Component>,
    /// In microseconds.
    second: Vec<Component>,
    /// `~`: days count back from the end of the month.
    end_of_month: bool,
    zone: Zone,
}

impl FromStr for CalendarSpec {
    type Err = CalendarError;

    /// Parses as systemd does in a process whose local zone comes from `TZ` or `/etc/localtime`
    /// (the local zone's abbreviations, like `CET`, are accepted as suffixes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CalendarSpec::parse_in(s, &LocalZone::from_env())
    }
}

impl fmt::Display for CalendarSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized())
    }
}

impl CalendarSpec {
    /// Parses as systemd does in a process whose local zone is `local`.
    pub fn parse_in(s: &str, local: &LocalZone) -> Result<CalendarSpec, CalendarError> {
        parse(s, local)
    }

    /// The expression as `systemd-analyze calendar` prints it under "Normalized form".
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        if let Some(bits) = self.weekdays {
            format_weekdays(&mut out, bits);
            out.push(' ');
        }
        format_chain(&mut out, 4, &self.year, false);
        out.push('-');
        format_chain(&mut out, 2, &self.month, false);
        out.push(if self.end_of_month { '~' } else { '-' });
        format_chain(&mut out, 2, &self.day, false);
        out.push(' ');
        format_chain(&mut out, 2, &self.hour, false);
        out.push(':');
        format_chain(&mut out, 2, &self.minute, false);
        out.push(':');
        format_chain(&mut out, 2, &self.second, true);
        match &self.zone {
            Zone::Local => {}
            Zone::Utc => out.push_str(" UTC"),
            Zone::Named { name, .. } | Zone::LocalAbbreviation { name, .. } => {
                if !name.is_empty() {
                    out.push(' ');
                    out.push_str(name);
                }
            }
        }
        out
    }

    /// The next elapse strictly after `after`, in the expression's zone, or in the local zone
    /// (`TZ`, else `/etc/localtime`) when it names none. `None` when it never elapses again,
    /// and when systemd would give up searching.
    pub fn next_after(&self, after: Timestamp) -> Option<Zoned> {
        self.next_after_in(after, &LocalZone::from_env())
    }

    /// [`CalendarSpec::next_after`] with an explicit local zone.
    pub fn next_after_in(&self, after: Timestamp, local: &LocalZone) -> Option<Zoned> {
        let usec = after.as_nanosecond().div_euclid(1000);
        let usec = i64::try_from(usec).ok()?;
        let mut clock = Clock::new(self.clock_zone(local));
        let next = next_usec(self, usec, &mut clock).ok()??;
        let ts = Timestamp::from_microsecond(next).ok()?;
        let tz = match &self.zone {
            Zone::Local | Zone::LocalAbbreviation { .. } => local.tz.clone(),
            Zone::Utc => TimeZone::UTC,
            Zone::Named { tz, .. } => tz.clone(),
        };
        Some(Zoned::new(ts, tz))
    }

    fn clock_zone<'a>(&'a self, local: &'a LocalZone) -> Conv<'a> {
        match &self.zone {
            Zone::Local | Zone::LocalAbbreviation { .. } => Conv::Zone(&local.tz),
            Zone::Utc => Conv::Utc,
            Zone::Named { tz, .. } => Conv::Zone(tz),
        }
    }

    /// The `tm_isdst` hint systemd hands to `mktime()`.
    fn dst_hint(&self) -> i64 {
        match self.zone {
            Zone::LocalAbbreviation { dst, .. } => i64::from(dst),
            _ => -1,
        }
    }
}

/// The process's local time zone as glibc sees it: the zone itself, glibc's `tzname[0..1]`
/// (which systemd accepts as expression suffixes) and whether glibc counts it as UTC.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalZone {
    tz: TimeZone,
    names: [String; 2],
    utc: bool,
}

impl LocalZone {
    /// The zone glibc would use for this process: `TZ`, else `/etc/localtime`.
    pub fn from_env() -> LocalZone {
        LocalZone::from_tz(std::env::var("TZ").ok().as_deref())
    }

    /// The zone glibc would use if `TZ` were set to `value` (`None`: unset), e.g.
    /// `Some("Europe/Berlin")`, `Some(":America/New_York")`, `Some("/etc/localtime")`.
    pub fn from_tz(value: Option<&str>) -> LocalZone {
        let (path, name) = match value {
            None => {
                let name = std::fs::read_link("/etc/localtime")
                    .ok()
                    .and_then(|p| p.to_str().and_then(|p| p.split_once("zoneinfo/").map(|(_, n)| n.to_owned())));
                ("/etc/localtime".to_owned(), name)
            }
            Some("") => (format!("{ZONEINFO}/Universal"), Some("UTC".to_owned())),
            Some(v) => {
                let v = v.strip_prefix(':').unwrap_or(v);
                if v.starts_with('/') { (v.to_owned(), None) } else { (format!("{ZONEINFO}/{v}"), Some(v.to_owned())) }
            }
        };
        if let Ok(data) = crate::files::read(Path::new(&path), crate::files::ZONE_FILE)
            && let Some(zone) = LocalZone::from_tzif(name.as_deref().unwrap_or("localtime"), &data)
        {
            return zone;
        }
        let Some(v) = value.map(|v| v.strip_prefix(':').unwrap_or(v)) else { return LocalZone::utc() };
        if let Ok(tz) = TimeZone::posix(v) {
            return LocalZone::from_posix(tz);
        }
        // Neither a file nor a POSIX rule: glibc keeps a leading zone name it could read, at
        // UTC, and shows it as the abbreviation (`TZ=Foo/Bar` prints times as `… Foo`).
        let name: String = v.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        match TimeZone::posix(&format!("{name}0")) {
            Ok(tz) if name.len() >= 3 => LocalZone { tz, names: [name, String::new()], utc: true },
            _ => LocalZone::utc(),
        }
    }

    /// UTC, as glibc uses when nothing else can be read.
    pub fn utc() -> LocalZone {
        LocalZone { tz: TimeZone::UTC, names: ["UTC".to_owned(), "UTC".to_owned()], utc: true }
    }

    /// The zone itself.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    fn from_tzif(name: &str, data: &[u8]) -> Option<LocalZone> {
        let tz = TimeZone::tzif(name, data).ok()?;
        let glibc = tzif_glibc_names(data)?;
        Some(LocalZone { tz, names: glibc.names, utc: glibc.stdoff == 0 && glibc.dstoff == 0 })
    }

    fn from_posix(tz: TimeZone) -> LocalZone {
        let mut names: [Option<String>; 2] = [None, None];
        let mut offsets = [None, None];
        for month in [1, 7] {
            let Ok(ts) = jiff::civil::date(2026, month, 15).to_zoned(TimeZone::UTC).map(|z| z.timestamp()) else {
                continue;
            };
            let info = tz.to_offset_info(ts);
            let i = usize::from(info.dst().is_dst());
            names[i].get_or_insert_with(|| info.abbreviation().to_owned());
            offsets[i].get_or_insert(info.offset().seconds());
        }
        let std_name = names[0].clone().or_else(|| names[1].clone()).unwrap_or_default();
        let dst_name = names[1].clone().unwrap_or_else(|| std_name.clone());
        let stdoff = offsets[0].unwrap_or(0);
        let dstoff = offsets[1].unwrap_or(stdoff);
        LocalZone { tz, names: [std_name, dst_name], utc: stdoff == 0 && dstoff == 0 }
    }
}

/// glibc's `tzname[]`, `timezone` and `daylight` for a TZif file, from `__tzfile_read`.
struct GlibcNames {
    names: [String; 2],
    stdoff: i32,
    dstoff: i32,
}

/// Reads just enough of a TZif file to compute what glibc's `tzset()` sets: the names of the
/// types most recently transitioned to, one standard and one daylight.
fn tzif_glibc_names(data: &[u8]) -> Option<GlibcNames> {
    let be32 = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let counts = |header: usize| -> Option<[usize; 6]> {
        if data.get(header..header + 4)? != b"TZif" {
            return None;
        }
        let mut c = [0; 6];
        for (i, slot) in c.iter_mut().enumerate() {
            *slot = be32(header + 20 + 4 * i)?;
        }
        Some(c)
    };
    // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
    let mut c = counts(0)?;
    let mut body = 44;
    let mut time_size = 4;
    if *data.get(4)? >= b'2' {
        let v1 = c[3] * 4 + c[3] + c[4] * 6 + c[5] + c[2] * 8 + c[1] + c[0];
        let header = 44 + v1;
        c = counts(header)?;
        body = header + 44;
        time_size = 8;
    }
    let (timecnt, typecnt, charcnt) = (c[3], c[4], c[5]);
    let idx_at = body + timecnt * time_size;
    let types_at = idx_at + timecnt;
    let chars_at = types_at + typecnt * 6;
    let type_idxs = data.get(idx_at..idx_at + timecnt)?;
    let chars = data.get(chars_at..chars_at + charcnt)?;
    let mut types = Vec::with_capacity(typecnt);
    for i in 0..typecnt {
        let b = data.get(types_at + 6 * i..types_at + 6 * i + 6)?;
        types.push((i32::from_be_bytes([b[0], b[1], b[2], b[3]]), b[4] != 0, usize::from(b[5])));
    }
    let name_at = |idx: usize| -> String {
        let rest = chars.get(idx..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end]).into_owned()
    };
    let mut names: [Option<String>; 2] = [None, None];
    for &t in type_idxs.iter().rev() {
        let (_, dst, idx) = *types.get(usize::from(t))?;
        let dst = usize::from(dst);
        if names[dst].is_none() {
            names[dst] = Some(name_at(idx));
            if names[1 - dst].is_some() {
                break;
            }
        }
    }
    let std_name = match names[0].take() {
        Some(n) => n,
        None => name_at(types.first()?.2),
    };
    let dst_name = names[1].take().unwrap_or_else(|| std_name.clone());
    let (stdoff, dstoff) = if timecnt == 0 {
        (types.first()?.0, types.first()?.0)
    } else {
        let (mut stdoff, mut dstoff) = (None, None);
        for &t in type_idxs.iter().rev() {
            let (off, dst, _) = *types.get(usize::from(t))?;
            if !dst && stdoff.is_none() {
                stdoff = Some(off);
            } else if dst && dstoff.is_none() {
                dstoff = Some(off);
            }
            if stdoff.is_some() && dstoff.is_some() {
                break;
            }
        }
        let stdoff = stdoff.unwrap_or(0);
        (stdoff, dstoff.unwrap_or(stdoff))
    };
    Some(GlibcNames { names: [std_name, dst_name], stdoff, dstoff })
}

/// Loads `/usr/share/zoneinfo/NAME` if systemd's `timezone_is_valid()` accepts the name.
fn load_named_zone(name: &str) -> Option<TimeZone> {
    if name == "UTC" {
        return Some(TimeZone::UTC);
    }
    if name.is_empty() || name.starts_with('/') {
        return None;
    }
    let mut slash = false;
    for b in name.bytes() {
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/')) {
            return None;
        }
        if b == b'/' {
            if slash {
                return None;
            }
            slash = true;
        } else {
            slash = false;
        }
    }
    if slash {
        return None;
    }
    let path = format!("{ZONEINFO}/{name}");
    let data = crate::files::read(Path::new(&path), crate::files::ZONE_FILE).ok()?;
    if !data.starts_with(b"TZif") {
        return None;
    }
    TimeZone::tzif(name, &data).ok()
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// An entry as parsed, with the column it started at (for errors found after normalizing).
#[derive(Debug, Clone, Copy)]
struct Raw {
    c: Component,
    column: usize,
}

#[derive(Default)]
struct RawSpec {
    weekdays: i32,
    year: Vec<Raw>,
    month: Vec<Raw>,
    day: Vec<Raw>,
    hour: Vec<Raw>,
    minute: Vec<Raw>,
    second: Vec<Raw>,
    end_of_month: bool,
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.at(0)
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.s.as_bytes().get(self.pos + i).copied()
    }

    fn column_at(&self, pos: usize) -> usize {
        column_of(self.s, pos)
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn unexpected_at(&self, pos: usize, expected: &'static str) -> CalendarError {
        CalendarError::Unexpected { column: self.column_at(pos), expected, found: found_at(self.s, pos) }
    }

    fn unexpected(&self, expected: &'static str) -> CalendarError {
        self.unexpected_at(self.pos, expected)
    }

    /// Weekdays, date and time, up to the end; true for `@EPOCH`.
    fn expression(&mut self) -> Result<(RawSpec, bool), CalendarError> {
        let mut raw = RawSpec { weekdays: self.weekdays()?, ..RawSpec::default() };
        let epoch = self.date(&mut raw)?;
        if !epoch {
            self.time(&mut raw)?;
        }
        if self.peek().is_some() {
            return Err(self.unexpected("the end of the expression"));
        }
        Ok((raw, epoch))
    }

    /// `parse_weekdays()`: an optional list of weekday names and ranges before the date.
    fn weekdays(&mut self) -> Result<i32, CalendarError> {
        let mut bits = 0;
        let mut open: i32 = -1;
        let mut first = true;
        loop {
            let rest = &self.s.as_bytes()[self.pos..];
            let Some(&(name, nr)) = DAY_NAMES
                .iter()
                .find(|(name, _)| rest.len() >= name.len() && rest[..name.len()].eq_ignore_ascii_case(name.as_bytes()))
            else {
                return if first { Ok(bits) } else { Err(self.unexpected("a weekday name")) };
            };
            let after = self.pos + name.len();
            if !matches!(self.s.as_bytes().get(after), None | Some(b'-' | b'.' | b',' | b' ')) {
                return Err(self.unexpected_at(after, "`,`, `..` or a space after a weekday"));
            }
            bits |= 1 << nr;
            if open >= 0 {
                if open > nr {
                    return Err(self.unexpected("a weekday after the start of the range (ranges run Mon..Sun)"));
                }
                for j in open + 1..nr {
                    bits |= 1 << j;
                }
            }
            self.pos = after;
            match self.peek() {
                None => return Ok(bits),
                Some(b' ') => {
                    self.skip_spaces();
                    return Ok(bits);
                }
                Some(b'.') => {
                    if open >= 0 {
                        return Err(self.unexpected("`,` or a space after a weekday range"));
                    }
                    if self.at(1) != Some(b'.') {
                        return Err(self.unexpected_at(self.pos + 1, "`..` between two weekdays"));
                    }
                    open = nr;
                    self.pos += 2;
                }
                Some(b'-') => {
                    if open >= 0 {
                        return Err(self.unexpected("`,` or a space after a weekday range"));
                    }
                    open = nr;
                    self.pos += 1;
                }
                _ => {
                    open = -1;
                    self.pos += 1;
                }
            }
            if matches!(self.peek(), None | Some(b' ')) {
                if open >= 0 {
                    return Err(self.unexpected("a weekday to end the range"));
                }
                self.skip_spaces();
                return Ok(bits);
            }
            first = false;
        }
    }

    /// `strtoul()` on a run of digits; the caller has checked that one is there.
    fn digits(&mut self) -> Result<u64, CalendarError> {
        let start = self.pos;
        let mut value: Option<u64> = Some(0);
        while let Some(d @ b'0'..=b'9') = self.peek() {
            value = value.and_then(|v| v.checked_mul(10)).and_then(|v| v.checked_add(u64::from(d - b'0')));
            self.pos += 1;
        }
        value.ok_or(CalendarError::TooLarge { column: self.column_at(start), max: "2147483647" })
    }

    /// `parse_component_decimal()`: a number; for seconds, with an optional fraction, in µs.
    fn decimal(&mut self, usec: bool) -> Result<i64, CalendarError> {
        let start = self.pos;
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.unexpected("a number or `*`"));
        }
        let too_large = CalendarError::TooLarge {
            column: self.column_at(start),
            max: if usec { "2147 seconds" } else { "2147483647" },
        };
        let mut value = self.digits()?;
        if usec {
            value = value.checked_mul(USEC_PER_SEC as u64).ok_or(too_large.clone())?;
            if self.peek() == Some(b'.') && self.at(1) != Some(b'.') {
                self.pos += 1;
                let add = self.fraction()?;
                value = value.checked_add(add).ok_or(too_large.clone())?;
            }
        }
        if value > i32::MAX as u64 {
            return Err(too_large);
        }
        Ok(value as i64)
    }

    /// `parse_fractional_part_u(…, 6, …)`: six digits, rounded on the seventh, rest ignored.
    fn fraction(&mut self) -> Result<u64, CalendarError> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.unexpected("digits after the decimal point"));
        }
        let mut value = 0;
        for _ in 0..6 {
            value *= 10;
            if let Some(d @ b'0'..=b'9') = self.peek() {
                value += u64::from(d - b'0');
                self.pos += 1;
            }
        }
        if matches!(self.peek(), Some(b'5'..=b'9')) {
            value += 1;
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        Ok(value)
    }

    /// `parse_chain()`: `*` or a comma-separated list of entries. `None` stands for `*`.
    fn chain(&mut self, usec: bool) -> Result<Option<Vec<Raw>>, CalendarError> {
        if self.peek() == Some(b'*') {
            let column = self.column_at(self.pos);
            self.pos += 1;
            return Ok(usec.then(|| vec![Raw { c: Component { start: 0, stop: -1, repeat: USEC_PER_SEC }, column }]));
        }
        let mut out = Vec::new();
        loop {
            if out.len() > MAX_NESTING {
                return Err(CalendarError::TooManyEntries { column: self.column_at(self.pos) });
            }
            let begin = self.pos;
            let column = self.column_at(begin);
            let start = self.decimal(usec)?;
            let mut stop = -1;
            let mut repeat = 0;
            if self.peek() == Some(b'.') && self.at(1) == Some(b'.') {
                self.pos += 2;
                stop = self.decimal(usec)?;
                repeat = if usec { USEC_PER_SEC } else { 1 };
            }
            if self.peek() == Some(b'/') {
                self.pos += 1;
                let at = self.pos;
                repeat = self.decimal(usec)?;
                if repeat == 0 {
                    return Err(CalendarError::Unexpected {
                        column: self.column_at(at),
                        expected: "a repetition greater than 0",
                        found: found_at(self.s, at),
                    });
                }
            } else {
                if start > i64::from(i32::MAX) - repeat {
                    return Err(CalendarError::TooLarge { column, max: "2147483646" });
                }
                if usec && stop >= 0 && start + repeat > stop {
                    return Err(CalendarError::OutOfRange {
                        column,
                        field: "second",
                        problem: "range spans less than a second".to_owned(),
                        expected: "a range of at least one second, or a repetition like `/0.5`".to_owned(),
                    });
                }
            }
            if !matches!(self.peek(), None | Some(b' ' | b',' | b'-' | b'~' | b':')) {
                return Err(self.unexpected("`,`, `..`, `/`, `-`, `~`, `:` or a space"));
            }
            out.push(Raw { c: Component { start, stop, repeat }, column });
            if self.peek() == Some(b',') {
                self.pos += 1;
            } else {
                return Ok(Some(out));
            }
        }
    }

    /// `parse_date()`. Returns true after `@EPOCH`, which carries its own time of day.
    fn date(&mut self, raw: &mut RawSpec) -> Result<bool, CalendarError> {
        if self.peek().is_none() {
            return Ok(false);
        }
        if self.peek() == Some(b'@') {
            let column = self.column_at(self.pos);
            self.pos += 1;
            let seconds = self.strtoul()?;
            // A C cast: values past i64::MAX wrap to negative times, which fail validation.
            let t = seconds as i64;
            let tm = tm_from_local(t);
            let value = |v: i64| vec![Raw { c: Component::value(v), column }];
            raw.year = value(tm.year + 1900);
            raw.month = value(tm.mon + 1);
            raw.day = value(tm.mday);
            raw.hour = value(tm.hour);
            raw.minute = value(tm.min);
            raw.second = value(tm.sec * USEC_PER_SEC);
            return Ok(true);
        }
        let begin = self.pos;
        let first = self.chain(false)?;
        if matches!(self.peek(), None | Some(b':')) {
            // It was the hour of a time, not a date.
            self.pos = begin;
            return Ok(false);
        }
        match self.peek() {
            Some(b'~') => raw.end_of_month = true,
            Some(b'-') => {}
            _ => return Err(self.unexpected("`-` or `~` in a date, or `:` in a time")),
        }
        self.pos += 1;
        let second = self.chain(false)?;
        if matches!(self.peek(), None | Some(b' ')) {
            self.skip_spaces();
            raw.month = first.unwrap_or_default();
            raw.day = second.unwrap_or_default();
            return Ok(false);
        }
        if raw.end_of_month {
            return Err(self.unexpected("a space after the day"));
        }
        match self.peek() {
            Some(b'~') => raw.end_of_month = true,
            Some(b'-') => {}
            _ => return Err(self.unexpected("`-`, `~` or a space after the month")),
        }
        self.pos += 1;
        let third = self.chain(false)?;
        if !matches!(self.peek(), None | Some(b' ')) {
            return Err(self.unexpected("a space or the end after the date"));
        }
        self.skip_spaces();
        raw.year = first.unwrap_or_default();
        raw.month = second.unwrap_or_default();
        raw.day = third.unwrap_or_default();
        Ok(false)
    }

    /// `strtoul()` as systemd calls it after `@`: leading white space and a sign allowed.
    fn strtoul(&mut self) -> Result<u64, CalendarError> {
        let begin = self.pos;
        let mut p = self.pos;
        let bytes = self.s.as_bytes();
        while bytes.get(p).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')) {
            p += 1;
        }
        let negative = bytes.get(p) == Some(&b'-');
        if matches!(bytes.get(p), Some(b'+' | b'-')) {
            p += 1;
        }
        if !bytes.get(p).is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.unexpected_at(begin, "seconds since the epoch after `@`"));
        }
        self.pos = p;
        let value = self.digits()?;
        Ok(if negative { value.wrapping_neg() } else { value })
    }

    /// `parse_calendar_time()`: `H:M[:S]`, or nothing for midnight.
    fn time(&mut self, raw: &mut RawSpec) -> Result<(), CalendarError> {
        let column = self.column_at(self.pos);
        let zero = || vec![Raw { c: Component::value(0), column }];
        if self.peek().is_none() {
            raw.hour = zero();
            raw.minute = zero();
            raw.second = zero();
            return Ok(());
        }
        let hour = self.chain(false)?;
        if self.peek() != Some(b':') {
            return Err(self.unexpected("`:` after the hour"));
        }
        self.pos += 1;
        let minute = self.chain(false)?;
        raw.hour = hour.unwrap_or_default();
        raw.minute = minute.unwrap_or_default();
        if self.peek().is_none() {
            raw.second = zero();
            return Ok(());
        }
        if self.peek() != Some(b':') {
            return Err(self.unexpected("`:` or the end after the minute"));
        }
        self.pos += 1;
        raw.second = self.chain(true)?.unwrap_or_default();
        if self.peek().is_some() {
            return Err(self.unexpected("the end after the seconds"));
        }
        Ok(())
    }
}

fn column_of(s: &str, pos: usize) -> usize {
    s.get(..pos).map_or(pos, |p| p.chars().count()) + 1
}

fn found_at(s: &str, pos: usize) -> String {
    match s.get(pos..).and_then(|r| r.chars().next()) {
        Some(c) => format!("`{c}`"),
        None => "the end".to_owned(),
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len() && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn shorthand(s: &str) -> Option<RawSpec> {
    let v = |x: i64| Raw { c: Component::value(x), column: 1 };
    let mut raw = RawSpec { second: vec![v(0)], ..RawSpec::default() };
    let midnight = |raw: &mut RawSpec| {
        raw.hour = vec![v(0)];
        raw.minute = vec![v(0)];
    };
    match s.to_ascii_lowercase().as_str() {
        "minutely" => {}
        "hourly" => raw.minute = vec![v(0)],
        "daily" => midnight(&mut raw),
        "monthly" => {
            midnight(&mut raw);
            raw.day = vec![v(1)];
        }
        "annually" | "yearly" | "anually" => {
            midnight(&mut raw);
            raw.day = vec![v(1)];
            raw.month = vec![v(1)];
        }
        "weekly" => {
            midnight(&mut raw);
            raw.weekdays = 1;
        }
        "quarterly" => {
            midnight(&mut raw);
            raw.day = vec![v(1)];
            raw.month = vec![v(1), v(4), v(7), v(10)];
        }
        "biannually" | "bi-annually" | "semiannually" | "semi-annually" => {
            midnight(&mut raw);
            raw.day = vec![v(1)];
            raw.month = vec![v(1), v(7)];
        }
        _ => return None,
    }
    Some(raw)
}

/// `calendar_spec_from_string()`, `calendar_spec_normalize()` and `calendar_spec_valid()`.
fn parse(input: &str, local: &LocalZone) -> Result<CalendarSpec, CalendarError> {
    let mut s = input;
    let mut zone = Zone::Local;
    if ends_with_ignore_case(s, " UTC") {
        zone = Zone::Utc;
        s = &s[..s.len() - 4];
    } else {
        let mut found = false;
        for (j, name) in local.names.iter().enumerate() {
            if name.is_empty() || !ends_with_ignore_case(s, name) {
                continue;
            }
            let e = s.len() - name.len();
            if e == 0 || s.as_bytes()[e - 1] != b' ' {
                continue;
            }
            zone = Zone::LocalAbbreviation { dst: j == 1, name: name.clone() };
            s = &s[..e - 1];
            found = true;
            break;
        }
        if !found
            && let Some(space) = s.rfind(' ')
            && let Some(tz) = load_named_zone(&s[space + 1..])
        {
            zone = Zone::Named { name: s[space + 1..].to_owned(), tz };
            s = &s[..space];
        }
    }
    if s.is_empty() {
        return Err(CalendarError::Unexpected {
            column: 1,
            expected: "a calendar expression",
            found: found_at(input, 0),
        });
    }
    let raw = match shorthand(s) {
        Some(raw) => raw,
        None => {
            let (raw, epoch) = Parser { s, pos: 0 }.expression().map_err(|e| unknown_zone(s, e))?;
            if epoch {
                // `@EPOCH` is UTC whatever zone follows it.
                zone = Zone::Utc;
            }
            raw
        }
    };
    normalize_and_validate(raw, zone)
}

/// A word after the last space that stops the parse is most likely a misspelt time zone.
fn unknown_zone(s: &str, e: CalendarError) -> CalendarError {
    let Some(space) = s.rfind(' ') else { return e };
    let word = &s[space + 1..];
    let column = column_of(s, space + 1);
    let at_or_after_space = e.column() + 1 >= column;
    if (at_or_after_space || shorthand(&s[..space]).is_some()) && word.bytes().any(|b| b.is_ascii_alphabetic()) {
        return CalendarError::Unexpected {
            column,
            expected: "`UTC`, the local zone's abbreviation or a time zone from /usr/share/zoneinfo",
            found: format!("`{word}`"),
        };
    }
    e
}

fn normalize_and_validate(mut raw: RawSpec, zone: Zone) -> Result<CalendarSpec, CalendarError> {
    let weekdays = (raw.weekdays > 0 && raw.weekdays < ALL_WEEKDAYS).then_some(raw.weekdays);
    let end_of_month = raw.end_of_month && !raw.day.is_empty();
    for r in &mut raw.year {
        for v in [&mut r.c.start, &mut r.c.stop] {
            if (0..70).contains(v) {
                *v += 2000;
            } else if (70..100).contains(v) {
                *v += 1900;
            }
        }
    }
    let year = validate("year", normalize_chain(raw.year), MIN_YEAR, MAX_YEAR, false)?;
    let month = validate("month", normalize_chain(raw.month), 1, 12, false)?;
    let day = validate("day", normalize_chain(raw.day), 1, 31, end_of_month)?;
    let hour = validate("hour", normalize_chain(raw.hour), 0, 23, false)?;
    let minute = validate("minute", normalize_chain(raw.minute), 0, 59, false)?;
    let second = validate("second", normalize_chain(raw.second), 0, 60 * USEC_PER_SEC - 1, false)?;
    Ok(CalendarSpec { weekdays, year, month, day, hour, minute, second, end_of_month, zone })
}

/// `normalize_chain()`: trims ranges to a whole number of repetitions, drops repetitions that
/// never fire, sorts and deduplicates.
fn normalize_chain(mut chain: Vec<Raw>) -> Vec<Raw> {
    for r in &mut chain {
        let c = &mut r.c;
        if c.stop > c.start && c.repeat > 0 {
            c.stop -= (c.stop - c.start) % c.repeat;
        }
        if (c.stop > c.start && c.repeat > 0 && c.start + c.repeat > c.stop) || c.start == c.stop {
            c.repeat = 0;
            c.stop = -1;
        }
    }
    chain.sort_by_key(|r| r.c);
    chain.dedup_by_key(|r| r.c);
    chain
}

/// `chain_valid()`, including its quirk: with `~`, each further entry of the list loses three
/// more days from the allowed range.
fn validate(
    field: &'static str,
    chain: Vec<Raw>,
    from: i64,
    to: i64,
    end_of_month: bool,
) -> Result<Vec<Component>, CalendarError> {
    let unit = |v: i64| if field == "second" { format_seconds(v) } else { v.to_string() };
    let mut to = to;
    for r in &chain {
        let c = r.c;
        if end_of_month {
            to -= 3;
        }
        let range = if end_of_month {
            format!("~{}..~{}", unit(from), unit(to))
        } else {
            format!("{}..{}", unit(from), unit(to))
        };
        let bad = |problem: String, expected: String| CalendarError::OutOfRange {
            column: r.column,
            field,
            problem,
            expected,
        };
        if c.start < from || c.start > to {
            return Err(bad(format!("{} is out of range", unit(c.start)), range));
        }
        if c.repeat > to - from {
            return Err(bad(
                format!("repetition /{} is too large", unit(c.repeat)),
                format!("at most /{}", unit(to - from)),
            ));
        }
        if c.stop >= 0 {
            if c.stop < from || c.stop > to {
                return Err(bad(format!("range end {} is out of range", unit(c.stop)), range));
            }
            if c.start + c.repeat > c.stop {
                return Err(bad(
                    format!("range {}..{} never repeats", unit(c.start), unit(c.stop)),
                    "a range end after its start".to_owned(),
                ));
            }
        } else if end_of_month && c.start - c.repeat < from {
            let expected = match c.start - from {
                0 => "no repetition from the last day".to_owned(),
                room => format!("a repetition of at most /{room} from ~{}", c.start),
            };
            return Err(bad(format!("~{}/{} repeats past the first day", unit(c.start), unit(c.repeat)), expected));
        } else if !end_of_month && c.start + c.repeat > to {
            let expected = match to - c.start {
                0 => format!("no repetition from {}", unit(c.start)),
                room => format!("a repetition of at most /{} from {}", unit(room), unit(c.start)),
            };
            return Err(bad(format!("{}/{} never repeats", unit(c.start), unit(c.repeat)), expected));
        }
    }
    Ok(chain.into_iter().map(|r| r.c).collect())
}

fn format_seconds(usec: i64) -> String {
    if usec % USEC_PER_SEC == 0 {
        (usec / USEC_PER_SEC).to_string()
    } else {
        format!("{}.{:06}", usec / USEC_PER_SEC, usec % USEC_PER_SEC)
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting

fn format_weekdays(out: &mut String, bits: i32) {
    let mut open: i32 = -1;
    let mut need_comma = false;
    let mut x = 0;
    while x < 7 {
        if bits & (1 << x) != 0 {
            if open < 0 {
                if need_comma {
                    out.push(',');
                } else {
                    need_comma = true;
                }
                out.push_str(SHORT_DAYS[x as usize]);
                open = x;
            }
        } else if open >= 0 {
            if x > open + 1 {
                out.push_str(if x > open + 2 { ".." } else { "," });
                out.push_str(SHORT_DAYS[(x - 1) as usize]);
            }
            open = -1;
        }
        x += 1;
    }
    if open >= 0 && x > open + 1 {
        out.push_str(if x > open + 2 { ".." } else { "," });
        out.push_str(SHORT_DAYS[(x - 1) as usize]);
    }
}

/// `format_chain()`. Quirk kept: a seconds list holding an entry that fires every second from
/// 0 (`00/1`) prints as `*`, whatever else it holds.
fn format_chain(out: &mut String, width: usize, chain: &[Component], usec: bool) {
    let star = usec && chain.iter().any(|c| c.start == 0 && c.stop < 0 && c.repeat == USEC_PER_SEC);
    if chain.is_empty() || star {
        out.push('*');
        return;
    }
    let d = if usec { USEC_PER_SEC } else { 1 };
    for (i, c) in chain.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{:0width$}", c.start / d);
        if c.start % d > 0 {
            let _ = write!(out, ".{:06}", c.start % d);
        }
        if c.stop > 0 {
            let _ = write!(out, "..{:0width$}", c.stop / d);
        }
        if c.stop % d > 0 {
            let _ = write!(out, ".{:06}", c.stop % d);
        }
        if c.repeat > 0 && !(c.stop > 0 && c.repeat == d) {
            let _ = write!(out, "/{}", c.repeat / d);
        }
        if c.repeat % d > 0 {
            let _ = write!(out, ".{:06}", c.repeat % d);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A model of glibc's broken-down time and mktime()

/// `struct tm`, with C's field conventions (years since 1900, months from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tm {
    year: i64,
    mon: i64,
    mday: i64,
    hour: i64,
    min: i64,
    sec: i64,
    isdst: i64,
    wday: i64,
    yday: i64,
}

/// Days from 1970-01-01 to the given proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Broken-down fields of local seconds since the epoch (isdst 0).
fn tm_from_local(local: i64) -> Tm {
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    Tm {
        year: y - 1900,
        mon: m - 1,
        mday: d,
        hour: secs / 3600,
        min: secs / 60 % 60,
        sec: secs % 60,
        isdst: 0,
        wday: (days + 4).rem_euclid(7),
        yday: days - days_from_civil(y, 1, 1),
    }
}

/// glibc's `ydhms_diff()` against the epoch: linear in every field, out-of-range values included.
fn linear_seconds(year: i64, yday: i64, hour: i64, min: i64, sec: i64) -> i64 {
    ((days_from_civil(year + 1900, 1, 1) + yday) * 24 + hour) * 3600 + min * 60 + sec
}

fn is_leap(year: i64) -> bool {
    let y = year + 1900;
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

const MON_YDAY: [[i64; 13]; 2] = [
    [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365],
    [0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335, 366],
];

#[derive(Clone, Copy)]
enum Conv<'a> {
    Utc,
    Zone(&'a TimeZone),
}

/// `localtime_r()`/`gmtime_r()` and `mktime()`/`timegm()` for one zone, with the offset guess
/// glibc keeps in a static between calls (its answers in DST gaps and folds depend on it).
struct Clock<'a> {
    conv: Conv<'a>,
    guess: i64,
}

impl<'a> Clock<'a> {
    fn new(conv: Conv<'a>) -> Clock<'a> {
        Clock { conv, guess: 0 }
    }

    /// UTC offset, DST flag and abbreviation at `t`.
    fn info(&self, t: i64) -> Option<(i64, bool, String)> {
        let ts = Timestamp::from_second(t).ok()?;
        Some(match self.conv {
            Conv::Utc => (0, false, "UTC".to_owned()),
            Conv::Zone(tz) => {
                let info = tz.to_offset_info(ts);
                (i64::from(info.offset().seconds()), info.dst().is_dst(), info.abbreviation().to_owned())
            }
        })
    }

    fn convert(&self, t: i64) -> Option<Tm> {
        let ts = Timestamp::from_second(t).ok()?;
        let (offset, dst) = match self.conv {
            Conv::Utc => (0, false),
            Conv::Zone(tz) => {
                let info = tz.to_offset_info(ts);
                (i64::from(info.offset().seconds()), info.dst().is_dst())
            }
        };
        let mut tm = tm_from_local(t + offset);
        tm.isdst = i64::from(dst);
        Some(tm)
    }

    /// glibc 2.36's `__mktime_internal()`: normalizes `tp` and returns its time, or `None` as
    /// `mktime()` returns -1 (leaving `tp` alone).
    fn mktime(&mut self, tp: &mut Tm) -> Option<i64> {
        let mut remaining_probes = 6;
        let Tm { mut sec, min, hour, mday, mon, year: year_requested, isdst, .. } = *tp;
        let mut dst2 = 0;
        let mon_remainder = mon % 12;
        let negative_mon_remainder = i64::from(mon_remainder < 0);
        let mon_years = mon / 12 - negative_mon_remainder;
        let year = year_requested + mon_years;
        let mon_yday = MON_YDAY[usize::from(is_leap(year))][(mon_remainder + 12 * negative_mon_remainder) as usize] - 1;
        let yday = mon_yday + mday;
        let off = self.guess;
        let sec_requested = sec;
        sec = sec.clamp(0, 59);
        let wanted = linear_seconds(year, yday, hour, min, sec);
        let t0 = wanted + off;
        let (mut t, mut t1, mut t2) = (t0, t0, t0);
        let mut tm;
        let oscillating = loop {
            tm = self.convert(t)?;
            let dt = wanted - linear_seconds(tm.year, tm.yday, tm.hour, tm.min, tm.sec);
            if dt == 0 {
                break false;
            }
            let tm_dst = i64::from(tm.isdst != 0);
            if t == t1
                && t != t2
                && (tm.isdst < 0 || if isdst < 0 { dst2 <= tm_dst } else { i64::from(isdst != 0) != tm_dst })
            {
                // Oscillating around a spring-forward gap: glibc takes this side.
                break true;
            }
            remaining_probes -= 1;
            if remaining_probes == 0 {
                return None;
            }
            t1 = t2;
            t2 = t;
            t += dt;
            dst2 = tm_dst;
        };
        let isdst_differ = |a: i64, b: i64| (a == 0) != (b == 0) && a >= 0 && b >= 0;
        if !oscillating && isdst_differ(isdst, tm.isdst) {
            // Right time, wrong DST flag: borrow the offset of a nearby time with the flag asked for.
            let stride = 601_200;
            let delta_bound = 536_454_000 / 2 + stride;
            let mut delta = stride;
            let mut found = None;
            'search: while delta < delta_bound {
                for direction in [-1, 1] {
                    let ot = t + delta * direction;
                    let otm = self.convert(ot)?;
                    if !isdst_differ(isdst, otm.isdst) {
                        let gt = ot + wanted - linear_seconds(otm.year, otm.yday, otm.hour, otm.min, otm.sec);
                        if let Some(gtm) = self.convert(gt) {
                            found = Some((gt, gtm));
                            break 'search;
                        }
                    }
                }
                delta += stride;
            }
            let (gt, gtm) = found?;
            t = gt;
            tm = gtm;
        }
        self.guess = t - t0 + off;
        if sec_requested != tm.sec {
            let adjustment = i64::from(sec == 0 && tm.sec == 60) - sec + sec_requested;
            t += adjustment;
            tm = self.convert(t)?;
        }
        *tp = tm;
        Some(t)
    }

    /// `mktime_or_timegm()` as systemd checks it: negative results count as failures.
    fn mktime_ok(&mut self, tp: &mut Tm) -> Option<i64> {
        self.mktime(tp).filter(|&t| t >= 0)
    }
}

// ---------------------------------------------------------------------------------------------
// The search (calendarspec.c's find_next)

enum Search {
    Never,
    GaveUp,
}

/// `tm_within_bounds()`: 1 if `tm` is a real time, 0 if it was normalized forward (and `tm`
/// moved there, with the finer fields reset), negative if out of range or moved backwards.
fn within_bounds(clock: &mut Clock<'_>, tm: &mut Tm) -> i32 {
    if tm.year + 1900 > MAX_YEAR {
        return -1;
    }
    let mut t = *tm;
    if clock.mktime_ok(&mut t).is_none() {
        return -1;
    }
    let cmp;
    if t.year != tm.year {
        cmp = t.year.cmp(&tm.year);
        t.mon = 0;
    } else if t.mon != tm.mon {
        cmp = t.mon.cmp(&tm.mon);
        t.mday = 1;
    } else if t.mday != tm.mday {
        cmp = t.mday.cmp(&tm.mday);
        t.hour = 0;
    } else if t.hour != tm.hour {
        cmp = t.hour.cmp(&tm.hour);
        t.min = 0;
    } else if t.min != tm.min {
        cmp = t.min.cmp(&tm.min);
        t.sec = 0;
    } else {
        cmp = t.sec.cmp(&tm.sec);
    }
    match cmp {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Greater => {
            *tm = t;
            0
        }
        std::cmp::Ordering::Equal => 1,
    }
}

fn matches_weekday(clock: &mut Clock<'_>, weekdays: Option<i32>, tm: &Tm) -> bool {
    let Some(bits) = weekdays else { return true };
    let mut t = *tm;
    if clock.mktime_ok(&mut t).is_none() {
        return false;
    }
    let k = if t.wday == 0 { 6 } else { t.wday - 1 };
    bits & (1 << k) != 0
}

/// `find_end_of_month()`: the day of `tm`'s month that is `day` days before the next month.
fn end_of_month(clock: &mut Clock<'_>, tm: &Tm, day: i64) -> i64 {
    let mut t = *tm;
    t.mon += 1;
    t.mday = 1 - day;
    if clock.mktime_ok(&mut t).is_none() || t.mon != tm.mon {
        return -1;
    }
    t.mday
}

/// `find_matching_component()`: the earliest entry value at or after `*val`; 1 if that moved
/// `*val`, 0 if not, -1 if no entry can match.
fn find_matching(clock: &mut Clock<'_>, chain: &[Component], eom: bool, tm: &Tm, val: &mut i64) -> i32 {
    if chain.is_empty() {
        return 0;
    }
    let mut best: Option<i64> = None;
    for c in chain {
        let (mut start, mut stop) = (c.start, c.stop);
        if eom {
            start = end_of_month(clock, tm, c.start);
            stop = end_of_month(clock, tm, c.stop);
            if stop > 0 {
                std::mem::swap(&mut start, &mut stop);
            }
        }
        if start >= *val {
            if best.is_none_or(|d| start < d) {
                best = Some(start);
            }
        } else if c.repeat > 0 {
            let k = start + c.repeat * ((*val - start + c.repeat - 1) / c.repeat);
            if best.is_none_or(|d| k < d) && (stop < 0 || k <= stop) {
                best = Some(k);
            }
        }
    }
    match best {
        None => -1,
        Some(d) => {
            let moved = i32::from(*val != d);
            *val = d;
            moved
        }
    }
}

/// The fields of a broken-down time find_next() matches against the spec, coarsest first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

impl Field {
    /// The field's chain in `spec`.
    fn chain(self, spec: &CalendarSpec) -> &[Component] {
        match self {
            Field::Year => &spec.year,
            Field::Month => &spec.month,
            Field::Day => &spec.day,
            Field::Hour => &spec.hour,
            Field::Minute => &spec.minute,
            Field::Second => &spec.second,
        }
    }

    /// The field's value in `c` as its chain counts it: the year in full, the month from 1,
    /// the second in µs (with `usec`).
    fn get(self, c: &Tm, usec: i64) -> i64 {
        match self {
            Field::Year => c.year + 1900,
            Field::Month => c.mon + 1,
            Field::Day => c.mday,
            Field::Hour => c.hour,
            Field::Minute => c.min,
            Field::Second => c.sec * USEC_PER_SEC + usec,
        }
    }

    /// Sets the field in `c` (and `usec`) from a value counted as [`Field::get`] counts it.
    fn set(self, c: &mut Tm, usec: &mut i64, v: i64) {
        match self {
            Field::Year => c.year = v - 1900,
            Field::Month => c.mon = v - 1,
            Field::Day => c.mday = v,
            Field::Hour => c.hour = v,
            Field::Minute => c.min = v,
            Field::Second => {
                *usec = v % USEC_PER_SEC;
                c.sec = v / USEC_PER_SEC;
            }
        }
    }

    /// Sets the fields finer than this one, and the µs, to their first values.
    fn reset_finer(self, c: &mut Tm, usec: &mut i64) {
        match self {
            Field::Year => (c.mon, c.mday, c.hour, c.min, c.sec, *usec) = (0, 1, 0, 0, 0, 0),
            Field::Month => (c.mday, c.hour, c.min, c.sec, *usec) = (1, 0, 0, 0, 0),
            Field::Day => (c.hour, c.min, c.sec, *usec) = (0, 0, 0, 0),
            Field::Hour => (c.min, c.sec, *usec) = (0, 0, 0),
            Field::Minute => (c.sec, *usec) = (0, 0),
            Field::Second => *usec = 0,
        }
    }

    /// The next coarser field, which a field with no match left carries into.
    fn coarser(self) -> Option<Field> {
        match self {
            Field::Year => None,
            Field::Month => Some(Field::Year),
            Field::Day => Some(Field::Month),
            Field::Hour => Some(Field::Day),
            Field::Minute => Some(Field::Hour),
            Field::Second => Some(Field::Minute),
        }
    }

    /// Moves `c` to the start of this field's next value (the next year, month, …).
    fn advance(self, c: &mut Tm, usec: &mut i64) {
        match self {
            Field::Year => c.year += 1,
            Field::Month => c.mon += 1,
            Field::Day => c.mday += 1,
            Field::Hour => c.hour += 1,
            Field::Minute => c.min += 1,
            Field::Second => c.sec += 1,
        }
        self.reset_finer(c, usec);
    }
}

/// One field's step of find_next(): moves `field` of `c` to the earliest value its chain
/// allows at or after it (resetting the finer fields if that moved it) and checks the
/// result with [`within_bounds`]: 1 if it is a real time, 0 if `c` was normalized forward,
/// negative if the chain has no match left or the time is out of range.
fn next_match(clock: &mut Clock<'_>, spec: &CalendarSpec, field: Field, c: &mut Tm, usec: &mut i64) -> i32 {
    let mut v = field.get(c, *usec);
    let eom = field == Field::Day && spec.end_of_month;
    let r = find_matching(clock, field.chain(spec), eom, c, &mut v);
    field.set(c, usec, v);
    // (The µs are part of the second's value: a match sets them.)
    if r > 0 && field != Field::Second {
        field.reset_finer(c, usec);
    }
    if r < 0 { -1 } else { within_bounds(clock, c) }
}

/// [`next_match`] for a field below the year, carrying into the coarser field when it
/// has no match left: `true` to go on to the finer fields, `false` to start over from
/// where `c` moved.
fn step(clock: &mut Clock<'_>, spec: &CalendarSpec, field: Field, c: &mut Tm, usec: &mut i64) -> bool {
    let r = next_match(clock, spec, field, c, usec);
    if r < 0
        && let Some(coarser) = field.coarser()
    {
        coarser.advance(c, usec);
    }
    r > 0
}

/// `find_next()` of systemd 252.38, from the broken-down start time `tm` and its µs.
fn find_next(spec: &CalendarSpec, clock: &mut Clock<'_>, tm: Tm, usec: i64) -> Result<(Tm, i64), Search> {
    let dst = spec.dst_hint();
    let mut c = tm;
    let mut tm_usec = usec;
    // Set once the search lands on or before its start (possible around DST changes): from
    // then on mktime() picks the DST side itself.
    let mut invalidate_dst = false;
    for _ in 0..MAX_ITERATIONS {
        let _ = clock.mktime(&mut c);
        if !invalidate_dst {
            c.isdst = dst;
        }

        if next_match(clock, spec, Field::Year, &mut c, &mut tm_usec) <= 0 {
            return Err(Search::Never);
        }
        if !step(clock, spec, Field::Month, &mut c, &mut tm_usec)
            || !step(clock, spec, Field::Day, &mut c, &mut tm_usec)
        {
            continue;
        }
        if !matches_weekday(clock, spec.weekdays, &c) {
            Field::Day.advance(&mut c, &mut tm_usec);
            continue;
        }
        // The hour may not exist on this day (DST); `step` then has the search retry from
        // the normalized time.
        if !step(clock, spec, Field::Hour, &mut c, &mut tm_usec)
            || !step(clock, spec, Field::Minute, &mut c, &mut tm_usec)
            || !step(clock, spec, Field::Second, &mut c, &mut tm_usec)
        {
            continue;
        }

        let fields = |t: &Tm| (t.year, t.mon, t.mday, t.hour, t.min, t.sec);
        let stuck = match fields(&tm).cmp(&fields(&c)) {
            std::cmp::Ordering::Equal => usec > tm_usec,
            order => order == std::cmp::Ordering::Greater,
        };
        if stuck {
            invalidate_dst = true;
            c.hour += 1;
            continue;
        }
        return Ok((c, tm_usec));
    }
    Err(Search::GaveUp)
}

/// `calendar_spec_next_usec_impl()`: `Ok(None)` for "never", `Err` where systemd fails.
fn next_usec(spec: &CalendarSpec, after: i64, clock: &mut Clock<'_>) -> Result<Option<i64>, Search> {
    if after > USEC_FORMATTABLE_MAX {
        return Err(Search::GaveUp);
    }
    let usec = after + 1;
    let t = usec.div_euclid(USEC_PER_SEC);
    let Some(tm) = clock.convert(t) else { return Err(Search::GaveUp) };
    let (mut tm, tm_usec) = match find_next(spec, clock, tm, usec.rem_euclid(USEC_PER_SEC)) {
        Ok(found) => found,
        Err(Search::Never) => return Ok(None),
        Err(e) => return Err(e),
    };
    let t = clock.mktime_ok(&mut tm).ok_or(Search::GaveUp)?;
    Ok(Some(t * USEC_PER_SEC + tm_usec))
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze calendar

/// The text `systemd-analyze calendar --iterations=N --base-time=FROM EXPR` prints, minus its
/// "From now:" lines (which depend on the wall clock), for `tend calendar`. The local zone is
/// taken from `TZ`, else `/etc/localtime`.
pub fn describe(expr: &str, from: Timestamp, iterations: usize) -> Result<String, CalendarError> {
    describe_in(expr, from, iterations, &LocalZone::from_env())
}

/// [`describe`] with an explicit local zone.
pub fn describe_in(expr: &str, from: Timestamp, iterations: usize, local: &LocalZone) -> Result<String, CalendarError> {
    let spec = CalendarSpec::parse_in(expr, local)?;
    let normalized = spec.normalized();
    let mut out = String::new();
    let mut line = |field: &str, value: &str| {
        // systemd's table drops trailing white space, e.g. of an expression ending in a space.
        let _ = writeln!(out, "{}", format!("{field:>15}: {value}").trim_end());
    };
    if normalized != expr {
        line("Original form", expr);
    }
    line("Normalized form", &normalized);
    let mut n = i64::try_from(from.as_nanosecond().div_euclid(1000)).unwrap_or(i64::MAX);
    // systemd computes zoned expressions in a forked child, so glibc's guess starts afresh
    // each time; otherwise it carries over from one iteration to the next.
    let fresh_each_time = matches!(spec.zone, Zone::Named { .. });
    let mut clock = Clock::new(spec.clock_zone(local));
    let display = Clock::new(Conv::Zone(&local.tz));
    let utc = Clock::new(Conv::Utc);
    for i in 0..iterations {
        if fresh_each_time {
            clock = Clock::new(spec.clock_zone(local));
        }
        let next = match next_usec(&spec, n, &mut clock) {
            Ok(Some(next)) => next,
            Ok(None) => {
                if i == 0 {
                    line("Next elapse", "never");
                }
                break;
            }
            Err(_) => return Err(CalendarError::NoConvergence { column: 1 }),
        };
        let field = if i == 0 { "Next elapse".to_owned() } else { format!("Iter. #{}", i + 1) };
        line(&field, &format_timestamp(&display, next, false));
        if !local.utc {
            line("(in UTC)", &format_timestamp(&utc, next, true));
        }
        n = next;
    }
    Ok(out)
}

/// systemd's `format_timestamp()`: `Sun 2026-11-22 00:00:00 UTC`.
fn format_timestamp(clock: &Clock<'_>, usec: i64, utc: bool) -> String {
    let t = usec.div_euclid(USEC_PER_SEC);
    let (offset, _, abbreviation) = clock.info(t).unwrap_or((0, false, String::new()));
    let tm = tm_from_local(t + offset);
    let wday = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][tm.wday as usize];
    let mut s = format!(
        "{wday} {:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.year + 1900,
        tm.mon + 1,
        tm.mday,
        tm.hour,
        tm.min,
        tm.sec
    );
    let zone = if utc { "UTC" } else { abbreviation.as_str() };
    if !zone.is_empty() {
        s.push(' ');
        s.push_str(zone);
    }
    s
}

/// Parses a time as systemd prints it (`2026-11-22 00:00:00 UTC`, also `@EPOCH`), for
/// `--from`. Also accepted: a leading weekday (checked), no seconds or no time, fractions of
/// a second, a `T` between date and time, and an IANA zone instead of `UTC`. Without a zone
/// the time is local (`TZ`, else `/etc/localtime`).
pub fn parse_time(s: &str) -> Result<Timestamp, CalendarError> {
    parse_time_in(s, &LocalZone::from_env())
}

/// [`parse_time`] with an explicit local zone.
pub fn parse_time_in(s: &str, local: &LocalZone) -> Result<Timestamp, CalendarError> {
    let mut p = Parser { s, pos: 0 };
    if p.peek() == Some(b'@') {
        p.pos += 1;
        return p.epoch();
    }
    // An optional weekday, which must agree with the date.
    let weekday = p.leading_weekday();
    let (year, month, day) = p.calendar_date()?;
    let (hour, minute, second, usec) = p.time_of_day()?;
    let zone = p.time_zone_in()?;
    let conv = match &zone {
        ZoneIn::Local => Conv::Zone(&local.tz),
        ZoneIn::Utc => Conv::Utc,
        ZoneIn::Named(tz) => Conv::Zone(tz),
    };
    let mut tm = Tm {
        year: year - 1900,
        mon: month - 1,
        mday: day,
        hour,
        min: minute,
        sec: second,
        isdst: -1,
        wday: 0,
        yday: 0,
    };
    let mut clock = Clock::new(conv);
    let t = clock.mktime(&mut tm).ok_or_else(unrepresentable)?;
    if let Some((nr, column)) = weekday {
        let actual = if tm.wday == 0 { 6 } else { tm.wday - 1 };
        if i64::from(nr) != actual {
            return Err(CalendarError::Unexpected {
                column,
                expected: "the weekday of the date",
                found: format!("`{}`", SHORT_DAYS[nr as usize]),
            });
        }
    }
    Timestamp::from_microsecond(t * USEC_PER_SEC + usec).map_err(|_| unrepresentable())
}

/// The zone a time read by [`parse_time_in`] is in.
enum ZoneIn {
    /// None written: the local zone.
    Local,
    /// `UTC`.
    Utc,
    /// A zone from the time zone database.
    Named(TimeZone),
}

/// The error of a field of a time read by [`parse_time_in`] outside its range.
fn out_of_range(column: usize, field: &'static str, value: i64, expected: &str) -> CalendarError {
    CalendarError::OutOfRange {
        column,
        field,
        problem: format!("{value} is out of range"),
        expected: expected.to_owned(),
    }
}

/// The error of a time read by [`parse_time_in`] that cannot be represented.
fn unrepresentable() -> CalendarError {
    CalendarError::OutOfRange {
        column: 1,
        field: "time",
        problem: "cannot be represented".to_owned(),
        expected: "a time up to the year 9999".to_owned(),
    }
}

// The parts of a time read by `parse_time_in`.
impl Parser<'_> {
    /// `@EPOCH` after its `@`: seconds since the epoch, with an optional fraction, to the end.
    fn epoch(&mut self) -> Result<Timestamp, CalendarError> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.unexpected("seconds since the epoch after `@`"));
        }
        let column = self.column_at(self.pos);
        let seconds = self.digits()?;
        let mut usec = 0;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            usec = self.fraction()?;
        }
        if self.peek().is_some() {
            return Err(self.unexpected("the end after `@EPOCH`"));
        }
        let too_large = CalendarError::TooLarge { column, max: "253402300799 (year 9999)" };
        let seconds = i64::try_from(seconds).map_err(|_| too_large.clone())?;
        Timestamp::new(seconds, 0)
            .ok()
            .and_then(|ts| ts.checked_add(jiff::SignedDuration::from_micros(usec as i64)).ok())
            .ok_or(too_large)
    }

    /// A weekday followed by a space at the start, skipped with the spaces after it: its
    /// number (0 for Monday) and column.
    fn leading_weekday(&mut self) -> Option<(i32, usize)> {
        let rest = self.s.as_bytes();
        let &(name, nr) = DAY_NAMES
            .iter()
            .find(|(name, _)| rest.len() > name.len() && rest[..name.len()].eq_ignore_ascii_case(name.as_bytes()))?;
        if rest[name.len()] != b' ' {
            return None;
        }
        let weekday = Some((nr, self.column_at(0)));
        self.pos = name.len();
        self.skip_spaces();
        weekday
    }

    /// A number of 1 to `digits` digits: its value and column, or an error expecting `what`.
    fn fixed_number(&mut self, what: &'static str, digits: usize) -> Result<(i64, usize), CalendarError> {
        let column = self.column_at(self.pos);
        let begin = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) && self.pos - begin < digits {
            self.pos += 1;
        }
        if self.pos == begin {
            return Err(self.unexpected(what));
        }
        Ok((self.s[begin..self.pos].parse().unwrap_or(0), column))
    }

    /// Steps over the byte `b`, or is an error expecting `what`.
    fn expect_byte(&mut self, b: u8, what: &'static str) -> Result<(), CalendarError> {
        if self.peek() != Some(b) {
            return Err(self.unexpected(what));
        }
        self.pos += 1;
        Ok(())
    }

    /// A date `YYYY-MM-DD` that exists: its year, month (from 1) and day.
    fn calendar_date(&mut self) -> Result<(i64, i64, i64), CalendarError> {
        let (year, _) = self.fixed_number("a date like 2026-11-22, or @EPOCH", 4)?;
        self.expect_byte(b'-', "`-` after the year")?;
        let (month, month_col) = self.fixed_number("a two-digit month", 2)?;
        self.expect_byte(b'-', "`-` after the month")?;
        let (day, day_col) = self.fixed_number("a two-digit day", 2)?;
        if !(1..=12).contains(&month) {
            return Err(out_of_range(month_col, "month", month, "1..12"));
        }
        let month_len = days_from_civil(year + (month / 12), month % 12 + 1, 1) - days_from_civil(year, month, 1);
        if !(1..=month_len).contains(&day) {
            return Err(out_of_range(day_col, "day", day, "a day of that month"));
        }
        Ok((year, month, day))
    }

    /// An optional time of day after a space or `T`, `HH:MM[:SS[.fraction]]`: its hour,
    /// minute, second and µs (all 0 without one).
    fn time_of_day(&mut self) -> Result<(i64, i64, i64, i64), CalendarError> {
        let (mut hour, mut minute, mut second, mut usec) = (0, 0, 0, 0);
        if matches!(self.peek(), Some(b' ' | b'T')) && self.at(1).is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
            let (h, h_col) = self.fixed_number("an hour", 2)?;
            self.expect_byte(b':', "`:` after the hour")?;
            let (m, m_col) = self.fixed_number("a minute", 2)?;
            if h > 23 {
                return Err(out_of_range(h_col, "hour", h, "0..23"));
            }
            if m > 59 {
                return Err(out_of_range(m_col, "minute", m, "0..59"));
            }
            (hour, minute) = (h, m);
            if self.peek() == Some(b':') {
                self.pos += 1;
                let (sec, s_col) = self.fixed_number("seconds", 2)?;
                if sec > 59 {
                    return Err(out_of_range(s_col, "second", sec, "0..59"));
                }
                second = sec;
                if self.peek() == Some(b'.') {
                    self.pos += 1;
                    usec = self.fraction()? as i64;
                }
            }
        }
        Ok((hour, minute, second, usec))
    }

    /// The end, or a space and a time zone (`UTC` or one from the database) to the end.
    fn time_zone_in(&mut self) -> Result<ZoneIn, CalendarError> {
        let zone_col = self.column_at(self.pos);
        let zone = match self.peek() {
            None => return Ok(ZoneIn::Local),
            Some(b' ') => &self.s[self.pos + 1..],
            Some(_) => return Err(self.unexpected("a space before a time zone, or the end")),
        };
        if zone.eq_ignore_ascii_case("UTC") {
            return Ok(ZoneIn::Utc);
        }
        load_named_zone(zone).map(ZoneIn::Named).ok_or_else(|| CalendarError::Unexpected {
            column: zone_col + 1,
            expected: "`UTC` or a time zone from /usr/share/zoneinfo",
            found: format!("`{zone}`"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> LocalZone {
        LocalZone::utc()
    }

    fn ts(s: &str) -> Timestamp {
        parse_time_in(s, &utc()).expect("test times parse")
    }

    #[test]
    fn normalizes_expressions_as_systemd_252_does() {
        let cases = [
            ("minutely", "*-*-* *:*:00"),
            ("hourly", "*-*-* *:00:00"),
            ("DAILY", "*-*-* 00:00:00"),
            ("weekly", "Mon *-*-* 00:00:00"),
            ("monthly", "*-*-01 00:00:00"),
            ("anually", "*-01-01 00:00:00"),
            ("quarterly", "*-01,04,07,10-01 00:00:00"),
            ("semi-annually", "*-01,07-01 00:00:00"),
            ("Mon..Fri 09:00", "Mon..Fri *-*-* 09:00:00"),
            ("Mon-Wed,Fri", "Mon..Wed,Fri *-*-* 00:00:00"),
            ("sat,SUN", "Sat,Sun *-*-* 00:00:00"),
            ("Mon..Sun 12:00", "*-*-* 12:00:00"),
            ("mon,", "Mon *-*-* 00:00:00"),
            ("27-1-1", "2027-01-01 00:00:00"),
            ("99-*-*", "1999-*-* 00:00:00"),
            ("*-*-* 0..24/5:00", "*-*-* 00..20/5:00:00"),
            ("*-*-* 20..23/5:00", "*-*-* 20:00:00"),
            ("*-*-* 05..05:00", "*-*-* 05:00:00"),
            ("*:45,15,0,30,15", "*-*-* *:00,15,30,45:00"),
            ("*:*:*", "*-*-* *:*:*"),
            ("*:*:05,00/1", "*-*-* *:*:*"),
            ("*:*:00..10", "*-*-* *:*:00..10"),
            ("*:*:0.9999995", "*-*-* *:*:01"),
            ("*:*:1.5", "*-*-* *:*:01.500000"),
            ("*:*:00/0.25", "*-*-* *:*:00/0.250000"),
            ("*-*~03/2", "*-*~03/2 00:00:00"),
            ("*-02~*", "*-02-* 00:00:00"),
            ("2026-11-22 ", "2026-11-22 00:00:00"),
            ("daily utc", "*-*-* 00:00:00 UTC"),
            ("Mon Europe/Berlin", "Mon *-*-* 00:00:00 Europe/Berlin"),
            ("@1700000000 Europe/Berlin", "2023-11-14 22:13:20 UTC"),
            ("@ 5", "1970-01-01 00:00:05 UTC"),
        ];
        for (input, normalized) in cases {
            let spec = CalendarSpec::parse_in(input, &utc()).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(spec.normalized(), normalized, "{input:?}");
        }
    }

    #[test]
    fn refuses_what_systemd_refuses_at_the_column_of_the_problem() {
        let cases = [
            ("", 1, "unexpected"),
            ("daily ", 1, "unexpected"),
            ("Mon..", 6, "unexpected"),
            ("Fri..Mon", 6, "unexpected"),
            ("Mond", 4, "unexpected"),
            ("Mon.Tue", 5, "unexpected"),
            ("Mon..Wed..Fri", 9, "unexpected"),
            ("Mon,,Tue", 5, "unexpected"),
            ("*-*-* 24:00", 7, "out_of_range"),
            ("*-13-01", 3, "out_of_range"),
            ("1969-01-01", 1, "out_of_range"),
            ("*-*~29", 5, "out_of_range"),
            ("*-*~27,28", 8, "out_of_range"),
            ("*-*-* 20/5:00", 7, "out_of_range"),
            ("10..5:00", 1, "out_of_range"),
            ("*:*:1.5..1.9", 5, "out_of_range"),
            ("*:*:5.", 7, "unexpected"),
            ("*:0/0", 5, "unexpected"),
            ("12", 3, "unexpected"),
            ("12:00:", 7, "unexpected"),
            ("2026-01-01T12:00", 11, "unexpected"),
            ("*~02~03", 5, "unexpected"),
            ("@x", 2, "unexpected"),
            ("@-1", 1, "out_of_range"),
            ("*-*-* 2147483648:00", 7, "too_large"),
            ("*:*:2148", 5, "too_large"),
            ("12:00 Europe/Nowhere", 7, "unexpected"),
            ("12:00 europe/berlin", 7, "unexpected"),
            ("daily foo", 7, "unexpected"),
            ("Mön..Fri", 1, "unexpected"),
        ];
        for (input, column, kind) in cases {
            let err = CalendarSpec::parse_in(input, &utc()).expect_err(input);
            assert_eq!((err.column(), err.kind()), (column, kind), "{input:?}: {err}");
        }
        let many = format!("*:{}", vec!["1"; 242].join(","));
        let err = CalendarSpec::parse_in(&many, &utc()).expect_err("242 entries");
        assert_eq!((err.column(), err.kind()), (3 + 2 * 241, "too_many_entries"));
        assert!(CalendarSpec::parse_in(&format!("*:{}", vec!["1"; 241].join(",")), &utc()).is_ok());
    }

    #[test]
    fn error_messages_say_what_was_expected() {
        let cases = [
            ("Mon..", "column 6: expected a weekday to end the range, found the end"),
            ("*-*-* 24:00", "column 7: hour 24 is out of range, expected 0..23"),
            ("*-*~01/2", "column 5: day ~1/2 repeats past the first day, expected no repetition from the last day"),
            ("23/2:00", "column 1: hour 23/2 never repeats, expected no repetition from 23"),
            (
                "12:00 Mars/Base",
                "column 7: expected `UTC`, the local zone's abbreviation or a time zone from /usr/share/zoneinfo, \
                 found `Mars/Base`",
            ),
        ];
        for (input, message) in cases {
            let err = CalendarSpec::parse_in(input, &utc()).expect_err(input);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn finds_the_next_elapse_strictly_after_the_given_time() {
        let cases = [
            ("Mon..Fri 09:00", "2026-11-22 00:00:00 UTC", "2026-11-23T09:00:00+00:00[UTC]"),
            ("daily", "2026-11-22 00:00:00 UTC", "2026-11-23T00:00:00+00:00[UTC]"),
            ("daily", "2026-11-21 23:59:59.999999 UTC", "2026-11-22T00:00:00+00:00[UTC]"),
            ("*-02-29", "2026-11-22 00:00:00 UTC", "2028-02-29T00:00:00+00:00[UTC]"),
            ("*-*~1", "2026-02-01 00:00:00 UTC", "2026-02-28T00:00:00+00:00[UTC]"),
            ("*:0/13", "2026-11-22 00:52:00 UTC", "2026-11-22T01:00:00+00:00[UTC]"),
            ("*:*:0/0.5", "2026-11-22 00:00:00 UTC", "2026-11-22T00:00:00.5+00:00[UTC]"),
            // A local time that does not exist that day is skipped; a repeated one fires once.
            ("*-*-* 02:30 Europe/Berlin", "2027-03-27 12:00:00 UTC", "2027-03-29T02:30:00+02:00[Europe/Berlin]"),
            ("*-*-* 02:30 Europe/Berlin", "2026-10-24 12:00:00 UTC", "2026-10-25T02:30:00+02:00[Europe/Berlin]"),
            ("*-*-* 02:30 Europe/Berlin", "2026-10-25 00:30:00 UTC", "2026-10-26T02:30:00+01:00[Europe/Berlin]"),
        ];
        for (expr, from, next) in cases {
            let spec = CalendarSpec::parse_in(expr, &utc()).expect(expr);
            let found = spec.next_after_in(ts(from), &utc()).expect(expr);
            assert_eq!(found.to_string(), next, "{expr:?} after {from}");
        }
    }

    #[test]
    fn never_elapses_on_impossible_or_past_dates() {
        for expr in ["*-02-30", "*-04-31", "2020-01-01", "2026-11-22 00:00:00"] {
            let spec = CalendarSpec::parse_in(expr, &utc()).expect(expr);
            assert_eq!(spec.next_after_in(ts("2026-11-22 00:00:00 UTC"), &utc()), None, "{expr:?}");
        }
    }

    #[test]
    fn mktime_model_answers_as_glibc_does_in_gaps_and_folds() {
        // (zone, local time, tm_isdst asked, seconds glibc 2.36 returns, tm_isdst it returns),
        // each case in a fresh process, as recorded from glibc itself.
        let cases = [
            ("Australia/Lord_Howe", (2026, 10, 4, 1, 60), -1, 1_791_041_400, 1),
            ("Australia/Lord_Howe", (2026, 10, 4, 2, 0), 1, 1_791_039_600, 0),
            ("Europe/Berlin", (2026, 10, 25, 3, 0), 1, 1_792_890_000, 0),
            ("Europe/Berlin", (2026, 10, 25, 2, 30), 1, 1_792_888_200, 1),
            ("Europe/Berlin", (2027, 3, 28, 2, 30), -1, 1_806_197_400, 1),
        ];
        for (zone, (y, mo, d, h, mi), isdst, t, dst) in cases {
            let tz = load_named_zone(zone).expect(zone);
            let mut clock = Clock::new(Conv::Zone(&tz));
            let mut tm = Tm { year: y - 1900, mon: mo - 1, mday: d, hour: h, min: mi, sec: 0, isdst, wday: 0, yday: 0 };
            assert_eq!((clock.mktime(&mut tm), tm.isdst), (Some(t), dst), "{zone} {y}-{mo}-{d} {h}:{mi} isdst={isdst}");
        }
    }

    #[test]
    fn parses_times_as_systemd_prints_them() {
        let cases = [
            ("2026-11-22 00:00:00 UTC", 1_795_305_600_000_000),
            ("Sun 2026-11-22 00:00:00 UTC", 1_795_305_600_000_000),
            ("2026-11-22 01:00 Europe/Berlin", 1_795_305_600_000_000),
            ("2026-11-22", 1_795_305_600_000_000),
            ("2026-11-22T00:00:01.25", 1_795_305_601_250_000),
            ("@1795305600", 1_795_305_600_000_000),
            ("@1795305600.000001", 1_795_305_600_000_001),
        ];
        for (input, usec) in cases {
            assert_eq!(parse_time_in(input, &utc()).map(|t| t.as_microsecond()), Ok(usec), "{input:?}");
        }
    }

    #[test]
    fn refuses_times_it_cannot_read_at_the_column_of_the_problem() {
        let cases = [
            ("Mon 2026-11-22 00:00:00 UTC", 1),
            ("2026-13-01", 6),
            ("2026-02-29", 9),
            ("2026-11-22 25:00", 12),
            ("2026-11-22 00:00 Mars/Base", 18),
            ("@", 2),
            ("@12x", 4),
            ("tomorrow", 1),
        ];
        for (input, column) in cases {
            let err = parse_time_in(input, &utc()).expect_err(input);
            assert_eq!(err.column(), column, "{input:?}: {err}");
        }
    }

    #[test]
    fn local_zone_names_are_glibcs_tzname() {
        let cases = [
            (Some("Europe/Berlin"), ["CET", "CEST"], false),
            (Some(":America/New_York"), ["EST", "EDT"], false),
            (Some("Asia/Tokyo"), ["JST", "JDT"], false),
            (Some("Australia/Lord_Howe"), ["+1030", "+11"], false),
            (Some("Africa/Abidjan"), ["GMT", "GMT"], true),
            (Some("UTC"), ["UTC", "UTC"], true),
            (Some(""), ["UTC", "UTC"], true),
        ];
        for (tz, names, is_utc) in cases {
            let local = LocalZone::from_tz(tz);
            assert_eq!((local.names.clone(), local.utc), (names.map(String::from), is_utc), "TZ={tz:?}");
        }
    }

    #[test]
    fn local_abbreviations_pin_standard_or_daylight_time() {
        let berlin = LocalZone::from_tz(Some("Europe/Berlin"));
        let spec = CalendarSpec::parse_in("12:00 cet", &berlin).expect("CET is Berlin's standard time");
        assert_eq!(spec.normalized(), "*-*-* 12:00:00 CET");
        let next = spec.next_after_in(ts("2026-01-10 00:00:00 UTC"), &berlin).expect("elapses in winter");
        assert_eq!(next.timestamp(), ts("2026-01-10 11:00:00 UTC"));
        // Under UTC, CET is the zone file of that name instead.
        let named = CalendarSpec::parse_in("12:00 CET", &utc()).expect("CET zone file");
        assert!(matches!(named.zone, Zone::Named { .. }));
    }

    #[test]
    fn describes_like_systemd_analyze_calendar() {
        let text = describe_in("Mon..Fri 09:00", ts("2026-11-22 00:00:00 UTC"), 3, &utc()).expect("valid");
        assert_eq!(
            text,
            "  Original form: Mon..Fri 09:00\n\
             Normalized form: Mon..Fri *-*-* 09:00:00\n    \
             Next elapse: Mon 2026-11-23 09:00:00 UTC\n       \
             Iter. #2: Tue 2026-11-24 09:00:00 UTC\n       \
             Iter. #3: Wed 2026-11-25 09:00:00 UTC\n"
        );
        let berlin = LocalZone::from_tz(Some("Europe/Berlin"));
        let text = describe_in("*-02-30", ts("2026-11-22 00:00:00 UTC"), 5, &berlin).expect("valid");
        assert_eq!(text, "  Original form: *-02-30\nNormalized form: *-02-30 00:00:00\n    Next elapse: never\n");
        let text = describe_in("daily", ts("2026-07-22 00:00:00 UTC"), 1, &berlin).expect("valid");
        assert_eq!(
            text,
            "  Original form: daily\n\
             Normalized form: *-*-* 00:00:00\n    \
             Next elapse: Thu 2026-07-23 00:00:00 CEST\n       \
             (in UTC): Wed 2026-07-22 22:00:00 UTC\n"
        );
    }
}
