//! Small helpers shared by every capability: times for people (`time`), and redaction of
//! secrets from text that came from elsewhere (`redact`).

pub mod redact;
pub mod time;
