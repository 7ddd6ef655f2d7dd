//! The `tend` binary: parse arguments, run the command, print the error chain once.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = tend::cli::parse();
    let code = match tend::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // A closed stderr leaves nowhere to say it: the exit code still does.
            let _ = writeln!(std::io::stderr(), "error: {:#}", anyhow::Error::from(e));
            ExitCode::from(1)
        }
    };
    // Output cut short by a full disk is an error; by a reader that went away, it is not.
    if let Some(e) = tend::cli::output::stdout_error() {
        let _ = writeln!(std::io::stderr(), "error: writing output: {e}");
        return ExitCode::from(1);
    }
    code
}
