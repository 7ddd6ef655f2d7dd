//! Small helpers shared by every capability: an error's chain on one line, the clock,
//! times for people (`time`), and redaction of secrets from text that came from elsewhere
//! (`redact`).

pub mod redact;
pub mod time;

/// Formats an error with its chain of causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// The abbreviation of a commit id that messages and logs show: its first 12 characters.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
