//! The `fog-agent` command line: argument parsing, logging setup and exit codes.
//!
//! Every subcommand prints a human view by default and a machine view with `--json`. Errors are
//! printed as one line on stderr (`fog-agent: <what went wrong>`) and mapped to exit codes:
//! `0` success, `1` the operation failed, `2` bad usage (clap's own convention).

pub mod attest;
pub mod bench;
mod check_config;
mod client;
mod dev_certs;
mod image;
mod inventory;
mod render;
mod serve;
pub mod verify;

pub use client::connect_unix;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for a failed operation.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage (clap uses the same).
pub const EXIT_USAGE: u8 = 2;

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
            ExitCode::from(EXIT_FAILURE)
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
