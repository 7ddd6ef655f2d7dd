//! The `tend` binary: parse arguments, run the command, print the error chain once.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = tend::cli::parse();
    match tend::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(1)
        }
    }
}
