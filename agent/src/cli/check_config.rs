//! `fog-agent check-config FILE`: validates a config file and names each bad key; exit 0 when
//! valid, 78 (`EX_CONFIG`) when it does not parse or fails validation, 1 when it cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{Config, ConfigError};

/// Arguments of `fog-agent check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The file to check.
    pub file: PathBuf,
}

/// Runs `fog-agent check-config`.
pub fn run(args: &CheckConfigArgs) -> anyhow::Result<ExitCode> {
    match Config::load(&args.file) {
        Ok(_) => {
            println!("{}: ok", args.file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid { origin, problems }) => {
            for problem in problems {
                eprintln!("{origin}: {problem}");
            }
            Ok(ExitCode::from(super::EXIT_CONFIG))
        }
        // Every unknown key and wrong type, one line each.
        Err(ConfigError::Keys(errors)) => {
            for err in errors {
                eprintln!("{err}");
            }
            Ok(ExitCode::from(super::EXIT_CONFIG))
        }
        // Syntax errors (exit 78) and read errors (exit 1): see `super::exit_code`.
        Err(err) => Err(err.into()),
    }
}
