//! systemd calendar expressions (`systemd.time(7)`): parsing, normalization and the next
//! elapse. Being written; see the Timer issue.
