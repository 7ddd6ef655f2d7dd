//! Wall-clock formatting in UTC, in the layout systemd prints (`2026-11-22 03:15:00 UTC`),
//! through `jiff` (re-exported by `tend_specs::calendar`), and durations for people.

use tend_specs::calendar::Timestamp;

/// Formats milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_ms(ms: u64) -> String {
    utc(ms, "%Y-%m-%d %H:%M:%S UTC")
}

/// Formats milliseconds since the epoch in UTC with a `strftime` pattern (`jiff`'s); an
/// instant past the year 9999 is shown as its count of milliseconds.
pub fn utc(ms: u64, pattern: &str) -> String {
    match i64::try_from(ms).ok().and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
        Some(t) => t.strftime(pattern).to_string(),
        None => format!("{ms} ms after the epoch"),
    }
}

/// A duration for people: `2h`, `1h30m`, `45s`, `250ms`.
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_ms(1_795_318_500_000), "2026-11-22 03:35:00 UTC");
    }
}
