//! The `fog-agent` binary: parse the command line, run, map errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    fog_agent::cli::main()
}
