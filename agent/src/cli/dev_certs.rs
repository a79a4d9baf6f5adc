//! `fog-agent dev-certs --out DIR`: a development CA, server certificate, one client
//! certificate per role, and the market link's agent client certificate and a market server
//! certificate, for the quick start and tests (see [`crate::api::tls::DevCerts`]).

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
    /// The host id the agent's market-link certificate names (`fog://agent/<host_id>`);
    /// default: this machine's /etc/machine-id.
    #[arg(long, value_name = "ID")]
    pub host_id: Option<String>,
}

/// Runs `fog-agent dev-certs`.
pub fn run(args: &DevCertsArgs) -> anyhow::Result<ExitCode> {
    let host_id = match &args.host_id {
        Some(id) => id.clone(),
        None => crate::attest::tpm::machine_id().unwrap_or_else(|_| "dev-host".to_owned()),
    };
    let files = DevCerts::generate_for(&host_id)?.write_to(&args.out)?;
    for file in files {
        println!("{}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}
