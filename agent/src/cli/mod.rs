//! The `fog-agent` command line: argument parsing, logging setup and exit codes.
//!
//! Every subcommand prints a human view by default and a machine view with `--json`. Errors are
//! printed as one line on stderr (`fog-agent: <what went wrong>`) and mapped to exit codes:
//!
//! | code | meaning |
//! | --- | --- |
//! | `0` | success |
//! | `1` | the operation failed (including a config file that cannot be read) |
//! | `2` | bad usage: clap's argument errors, and argument values only the command can check (an unknown `bench --only` id, a malformed `--nonce` or `--pcrs`) |
//! | `78` | configuration error (`EX_CONFIG` of sysexits.h): a config file that does not parse or fails validation, in `serve`, `check-config` and every command that loads one |
//!
//! The code comes from the error's type, never its text: [`exit_code`] walks the error chain for
//! a [`CliError`], a [`ConfigError`] (parse or validation) or the daemon's config check
//! ([`DaemonError::Config`]). systemd's unit stops instead of restarting on `78`
//! (`RestartPreventExitStatus=78`): a bad config does not fix itself.

pub mod attest;
mod audit;
pub mod bench;
mod check_config;
mod client;
mod dev_certs;
mod image;
mod inventory;
mod job_network;
mod render;
mod serve;
pub mod verify;
mod verify_identity;
mod verify_receipts;

pub use client::connect_unix;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::bench::BenchSuiteError;
use crate::config::ConfigError;
use crate::daemon::DaemonError;

/// Exit code for a failed operation.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage (clap uses the same).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a configuration error (`EX_CONFIG` in sysexits.h).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code of `client market` when an endpoint's tunnel is down (the answer is printed).
pub const EXIT_DEGRADED: u8 = 3;

/// An error whose exit code is not [`EXIT_FAILURE`], for the failures the CLI itself detects
/// (errors of other modules are mapped by their own types in [`exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage clap cannot see: exit [`EXIT_USAGE`].
    #[error("{0}")]
    Usage(String),
}

/// The exit code for `err`: the first error in its chain that has a code of its own decides,
/// [`EXIT_FAILURE`] otherwise. A config file that cannot be read is a failure (`1`), not a
/// configuration error: the file may appear or become readable.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    use fog_tpm::report::ReportError;
    for cause in err.chain() {
        if let Some(CliError::Usage(_)) = cause.downcast_ref::<CliError>() {
            return EXIT_USAGE;
        }
        match cause.downcast_ref::<ConfigError>() {
            Some(
                ConfigError::Syntax { .. } | ConfigError::Keys(_) | ConfigError::Invalid { .. },
            ) => return EXIT_CONFIG,
            Some(ConfigError::Read { .. }) => return EXIT_FAILURE,
            None => {}
        }
        if let Some(DaemonError::Config(_)) = cause.downcast_ref::<DaemonError>() {
            return EXIT_CONFIG;
        }
        // Argument values the commands check themselves (`bench --only`, `--nonce`, `--pcrs`).
        if let Some(BenchSuiteError::UnknownId(_)) = cause.downcast_ref::<BenchSuiteError>() {
            return EXIT_USAGE;
        }
        if let Some(ReportError::Nonce(_) | ReportError::PcrSpec { .. }) =
            cause.downcast_ref::<ReportError>()
        {
            return EXIT_USAGE;
        }
    }
    EXIT_FAILURE
}

/// fog-agent: the host agent of a decentralized compute market.
#[derive(Debug, Parser)]
#[command(name = "fog-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `fog_agent=debug`.
    /// Overrides the `FOG_LOG` environment variable.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect and print the hardware inventory of this machine.
    Inventory(inventory::InventoryArgs),
    /// Run the hardware benchmarks (cached per hardware fingerprint) and print the results.
    Bench(bench::BenchArgs),
    /// Serve the network benchmarks' peer side (throughput both ways, RTT probes).
    BenchPeer(bench::BenchPeerArgs),
    /// Run the agent daemon (gRPC API with mutual TLS).
    Serve(serve::ServeArgs),
    /// Query an agent over mutual TLS (the market-side view).
    Client(client::ClientArgs),
    /// Validate a config file; names each bad key.
    CheckConfig(check_config::CheckConfigArgs),
    /// Write a development CA, server and per-role client certificates.
    DevCerts(dev_certs::DevCertsArgs),
    /// TPM attestation: enrollment request/activation, and signed reports.
    Attest(attest::AttestArgs),
    /// Auditor side: enrollment challenges, and verification of attestation reports.
    Verify(verify::VerifyArgs),
    /// Audit agents over the network: enroll their AK if unknown, request a report over a
    /// fresh nonce, verify it.
    Audit(audit::AuditArgs),
    /// The OCI image store: import image layout directories, list imported images.
    Image(image::ImageArgs),
    /// Internal entry points of child processes the agent starts itself (crash isolation).
    #[command(hide = true, subcommand)]
    Internal(InternalCommand),
}

/// Child-process entry points; not for humans.
#[derive(Debug, Subcommand)]
pub enum InternalCommand {
    /// Enumerate OpenCL platforms and devices in-process and print them as JSON.
    OpenclDevices,
    /// Run benchmarks in this (child) process and print one JSON record per line.
    BenchRun(bench::BenchRunArgs),
    /// Supervise one job's container (started by the agent; see `jobs::shim`).
    JobShim(crate::jobs::shim::ShimArgs),
    /// A job shim exec'd ahead of its job; reads its arguments as JSON on stdin.
    JobShimStandby,
}

/// Parses the command line, runs it and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.log.as_deref(), default_level);
    let result = match cli.command {
        Command::Inventory(args) => inventory::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchPeer(args) => bench::run_peer(&args),
        Command::Internal(InternalCommand::BenchRun(args)) => return bench::run_child(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Client(args) => client::run(&args),
        Command::CheckConfig(args) => check_config::run(&args),
        Command::DevCerts(args) => dev_certs::run(&args),
        Command::Attest(args) => attest::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Audit(args) => audit::run(&args),
        Command::Internal(InternalCommand::JobShim(args)) => return crate::jobs::shim::main(&args),
        Command::Internal(InternalCommand::JobShimStandby) => {
            return crate::jobs::shim::standby_main();
        }
        Command::Image(args) => image::run(&args),
        Command::Internal(InternalCommand::OpenclDevices) => {
            return crate::inventory::gpu::opencl::child_main();
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("fog-agent: {}", format_error(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Formats an error with its causes on one line.
fn format_error(err: &anyhow::Error) -> String {
    err.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Logs go to stderr: plain text on a terminal, JSON otherwise (journald, pipes), filtered by
/// `--log` or `FOG_LOG` (default `info` for `serve`, `warn` for other commands).
fn init_logging(filter: Option<&str>, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;

    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_env("FOG_LOG").ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{default_level},tss_esapi=off")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests calling main twice) is harmless: ignore it.
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().try_init()
    };
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;
    use crate::config::Config;

    #[test]
    fn exit_codes_come_from_the_error_types_in_the_chain() {
        let syntax = Config::parse("[api\n", "t.toml").unwrap_err();
        assert!(matches!(syntax, ConfigError::Syntax { .. }));
        assert_eq!(exit_code(&syntax.into()), EXIT_CONFIG);
        let invalid = Config::parse("[telemetry]\nqueue_depth = 0\n", "t.toml").unwrap_err();
        assert!(matches!(invalid, ConfigError::Invalid { .. }));
        // Under a context, too.
        let wrapped = Err::<(), _>(invalid).context("loading").unwrap_err();
        assert_eq!(exit_code(&wrapped), EXIT_CONFIG);
        let read = Config::load(std::path::Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert_eq!(exit_code(&read.into()), EXIT_FAILURE);
        let daemon = DaemonError::Config(vec!["state.dir: must be absolute".into()]);
        assert_eq!(exit_code(&daemon.into()), EXIT_CONFIG);
        assert_eq!(exit_code(&CliError::Usage("bad".into()).into()), EXIT_USAGE);
        let unknown = BenchSuiteError::UnknownId("cpu.nope".into());
        assert_eq!(exit_code(&unknown.into()), EXIT_USAGE);
        let nonce = fog_tpm::report::parse_nonce_hex("zz").unwrap_err();
        assert_eq!(exit_code(&nonce.into()), EXIT_USAGE);
        // Anything else, and an error only mentioning a config, is a failure.
        assert_eq!(
            exit_code(&anyhow::anyhow!("invalid config: api.listen")),
            EXIT_FAILURE
        );
        let other = DaemonError::Bind {
            what: "127.0.0.1:7443".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(exit_code(&other.into()), EXIT_FAILURE);
    }
}
