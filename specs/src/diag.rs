//! Diagnostics: a problem found in the specs, with the place it was found.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A place in a spec file. Lines and columns count from 1.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file, as it was named when loading.
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem in the specs. A spec set with any diagnostic is rejected whole.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// Where the problem is; `None` for problems of the whole set (an unreadable directory).
    pub location: Option<Location>,
    /// What is wrong, and what was expected. Never contains a secret's value.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at a location.
    pub fn at(location: Location, message: impl Into<String>) -> Self {
        Self { location: Some(location), message: message.into() }
    }

    /// A diagnostic that belongs to no single place.
    pub fn general(message: impl Into<String>) -> Self {
        Self { location: None, message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// [`shown`], cut after `max` characters (then `…`): for a message about text that may be
/// long, so that the message stays short.
pub fn shown_cut(text: &str, max: usize) -> String {
    let mut out: String = shown(text).chars().take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// Text of the specs for a message: control characters escaped (`\n`, `\0`, `\u{1b}`), so
/// that a diagnostic stays one line and shows what is there; everything else (quotes,
/// non-ASCII letters) as it is.
pub fn shown(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}
