//! `fog-agent serve`: load the config (or the embedded defaults), start the daemon, and run
//! until SIGTERM/SIGINT, then drain within `[api] shutdown_grace_millis`.
//!
//! `--dev` is the quick start: development certificates under `<state dir>/dev-certs` (made on
//! first use), the admin socket at `<state dir>/agent.sock`, and, when the host has no
//! `/dev/tpmrm0`, the TCTI of the software TPM that `packaging/dev-swtpm.sh` starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::api::tls::DevCerts;
use crate::config::Config;
use crate::daemon::{self, DaemonOptions};

/// The TCTI `serve --dev` uses when there is no TPM device (`packaging/dev-swtpm.sh`).
pub const DEV_SWTPM_TCTI: &str = "swtpm:host=127.0.0.1,port=2321";

/// Arguments of `fog-agent serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML); without it the embedded defaults (packaging/agent.toml) apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Development quick start: generate/use dev certificates under the state dir, serve the
    /// admin socket there, use swtpm when there is no TPM device.
    #[arg(long)]
    pub dev: bool,

    /// Overrides `[state] dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Runs `fog-agent serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    // Before any thread or child exists (see sdnotify).
    let notifier = crate::sdnotify::Notifier::take_from_env();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::parse(crate::config::DEFAULT_TOML, "<embedded defaults>")?,
    };
    if let Some(dir) = &args.state_dir {
        config.state.dir =
            std::path::absolute(dir).with_context(|| format!("--state-dir {}", dir.display()))?;
    }
    // Before anything (development certificates, the image store) is written into it.
    daemon::prepare_state_dir(&config.state.dir)?;
    if args.dev {
        apply_dev(&mut config)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fog-agent")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(config, args.dev, notifier));
    // Dropping the runtime would wait for every blocking thread; one stuck in a system call
    // (a runtime or file operation that never returns) must not keep the agent alive after
    // its grace period. Whatever is left is abandoned: each step it can be cut in is
    // crash-safe (an import's temp dir is removed by the next import, SQLite keeps its journal).
    runtime.shutdown_timeout(STRAGGLER_WAIT);
    result
}

/// How long the exit waits for blocking threads after the shutdown's grace period.
const STRAGGLER_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Points the config at development certificates (created when missing), a socket under the
/// state dir, and swtpm when there is no TPM device.
fn apply_dev(config: &mut Config) -> anyhow::Result<()> {
    let dir = config.state.dir.join("dev-certs");
    if !dir.join("server.key").exists() {
        let certs = DevCerts::generate()?;
        certs.write_to(&dir)?;
        tracing::info!(dir = %dir.display(), "wrote development certificates");
    }
    config.api.tls_cert = dir.join("server.pem");
    config.api.tls_key = dir.join("server.key");
    config.api.client_ca = dir.join("ca.pem");
    config.api.unix_socket = config.state.dir.join("agent.sock");
    if config.tpm.tcti == crate::config::TpmConfig::default().tcti
        && !Path::new("/dev/tpmrm0").exists()
    {
        config.tpm.tcti = DEV_SWTPM_TCTI.to_owned();
        tracing::info!(
            tcti = DEV_SWTPM_TCTI,
            "no TPM device; using the software TPM"
        );
    }
    Ok(())
}

async fn serve(
    config: Config,
    dev: bool,
    notifier: crate::sdnotify::Notifier,
) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the agent executable")?;
    let running = daemon::start(&config, DaemonOptions::for_host(&config, exe)?).await?;
    // Every listener (gRPC, admin socket, metrics) is bound: systemd's Type=notify start ends.
    notifier.notify_or_log("READY=1\nSTATUS=serving");
    if dev {
        if let Some(addr) = running.tcp_addrs().first() {
            let certs = config.state.dir.join("dev-certs");
            eprintln!(
                "fog-agent: serving on https://{addr} (mTLS). Try:\n  fog-agent client --addr https://{addr} --ca {c}/ca.pem --cert {c}/market.pem --key {c}/market.key inventory",
                c = certs.display()
            );
        }
    }
    wait_for_signal().await?;
    notifier.notify_or_log("STOPPING=1\nSTATUS=shutting down");
    // Streams that outlive the grace period are cut (and logged); still a clean exit.
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
