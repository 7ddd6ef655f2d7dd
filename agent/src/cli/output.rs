//! The commands' output on stdout and stderr. `println!` panics when a write fails, and a
//! reader that stops early (`tend status | head -4`) closes the pipe under it: the command
//! died with "failed printing to stdout: Broken pipe" and exit code 101. Here a closed
//! stdout ends the output quietly instead: what follows is dropped, the command finishes
//! what it was doing (an apply or a backup is never cut short by its reader going away)
//! and exits with its own code. Any other write error (`> /dev/full`) is remembered, and
//! `main` reports it once at the end.
//!
//! Resetting SIGPIPE to its default would end a command at the first write instead, but it
//! needs unsafe code, and it would also kill the agent when a client of its socket hangs up.

use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout could not be written: later output is dropped.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// The first write error on stdout that was not a closed pipe.
static STDOUT_ERROR: Mutex<Option<std::io::Error>> = Mutex::new(None);

/// Writes to stdout; a failed write drops this and all later output (see the module).
pub fn write_stdout(args: fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let mut first = STDOUT_ERROR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert(e);
        }
    }
}

/// Writes to stderr; a failed write is ignored (there is nowhere left to say anything).
pub fn write_stderr(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// The write error that cut stdout short, unless it was a closed pipe (the reader went
/// away, which is not an error of the command).
pub fn stdout_error() -> Option<std::io::Error> {
    STDOUT_ERROR.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

/// `print!` that survives a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that survives a closed stdout.
macro_rules! outln {
    () => { $crate::cli::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprint!` that survives a closed stderr.
macro_rules! eout {
    ($($arg:tt)*) => { $crate::cli::output::write_stderr(format_args!($($arg)*)) };
}

/// `eprintln!` that survives a closed stderr.
macro_rules! eoutln {
    () => { $crate::cli::output::write_stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::output::write_stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {eout, eoutln, out, outln};
