//! `fog-agent dev-certs --out DIR`: a development CA, server certificate and one client
//! certificate per role, for the quick start and tests (see [`crate::api::tls::DevCerts`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::api::tls::DevCerts;

/// Arguments of `fog-agent dev-certs`.
#[derive(Debug, Args)]
pub struct DevCertsArgs {
    /// Directory to write into (created if missing; existing files are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `fog-agent dev-certs`.
pub fn run(args: &DevCertsArgs) -> anyhow::Result<ExitCode> {
    let files = DevCerts::generate()?.write_to(&args.out)?;
    for file in files {
        println!("{}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}
