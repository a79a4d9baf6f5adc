//! Audits per second against a fleet of agents on this machine (a benchmark, not a test).
//!
//! 1. `--agents` daemons in this process, each serving mutual TLS on loopback with its own
//!    swtpm (jobs off), each AK made for its own host id.
//! 2. `fog-agent audit --targets` over all of them once: every AK is enrolled on the way (timed
//!    on its own).
//! 3. `--rounds` rounds, each timing two runs of `fog-agent audit --targets` over the enrolled
//!    fleet, in alternating order: `--concurrency N` (all at once) and `--concurrency 1` (one
//!    after the other). Every run must accept every host.
//!
//! Reports the median seconds per run, audits per second and their ratio.
//!
//! ```sh
//! benches/fleet-audit.sh            # release build, 20 agents, 3 rounds
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use fog_agent::api::tls::DevCerts;
use fog_agent::config::Config;
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_tpm::testing::Swtpm;

/// Audits per second against a fleet of agents with their own software TPMs.
#[derive(Debug, Parser)]
struct Args {
    /// The fog-agent binary that runs `audit` (and makes the AKs).
    #[arg(long)]
    agent: PathBuf,
    /// How many agents.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Timed rounds (each: one concurrent and one sequential run).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

struct FleetAgent {
    swtpm: Swtpm,
    daemon: RunningDaemon,
}

fn config(dir: &Path, certs: &Path, tcti: &str) -> Config {
    let mut config = Config::default();
    config.api.listen = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    config.api.unix_socket = dir.join("agent.sock");
    config.api.tls_cert = certs.join("server.pem");
    config.api.tls_key = certs.join("server.key");
    config.api.client_ca = certs.join("ca.pem");
    config.state.dir = dir.join("state");
    config.metrics.enabled = false;
    config.bench.run_on_start = false;
    config.tpm.tcti = tcti.to_owned();
    config
}

fn run(agent: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agent)
        .args(args)
        .env_remove("FOG_LOG")
        .output()
        .with_context(|| format!("cannot run {}", agent.display()))?;
    if !out.status.success() {
        bail!(
            "fog-agent {}: {}\n{}{}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start_agent(
    agent: &Path,
    dir: &Path,
    certs: &Path,
    host_id: &str,
) -> anyhow::Result<FleetAgent> {
    let swtpm = Swtpm::start()?;
    let tcti = swtpm.tcti().to_string();
    let config = config(dir, certs, &tcti);
    std::fs::create_dir_all(&config.state.dir)?;
    let path = |p: &Path| p.to_str().map(str::to_owned).context("a UTF-8 path");
    run(
        agent,
        &[
            "attest",
            "enroll-request",
            "--tcti",
            &tcti,
            "--state-dir",
            &path(&config.state.dir)?,
            "--host-id",
            host_id,
            "--out",
            &path(&dir.join("enroll-request.json"))?,
        ],
    )?;
    let mut options = DaemonOptions::for_host(&config, agent.to_owned())?;
    options.jobs = None;
    let daemon = daemon::start(&config, options).await?;
    Ok(FleetAgent { swtpm, daemon })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    DevCerts::generate()?.write_to(&certs)?;
    let mut fleet = Vec::new();
    for i in 0..args.agents {
        let agent_dir = dir.path().join(format!("agent-{i}"));
        fleet.push(start_agent(&args.agent, &agent_dir, &certs, &format!("host-{i}")).await?);
    }
    let mut anchors = Vec::new();
    let mut targets = String::new();
    for agent in &fleet {
        anchors.extend(agent.swtpm.trust_anchors_pem()?);
        targets.push_str(&format!("https://{}\n", agent.daemon.tcp_addrs()[0]));
    }
    let anchors_file = dir.path().join("anchors.pem");
    std::fs::write(&anchors_file, anchors)?;
    let targets_file = dir.path().join("targets");
    std::fs::write(&targets_file, targets)?;
    let state = dir.path().join("auditor");
    let path = |p: &Path| p.to_str().map(str::to_owned).context("a UTF-8 path");
    let base: Vec<String> = vec![
        "audit".into(),
        "--targets".into(),
        path(&targets_file)?,
        "--ca".into(),
        path(&certs.join("ca.pem"))?,
        "--cert".into(),
        path(&certs.join("auditor.pem"))?,
        "--key".into(),
        path(&certs.join("auditor.key"))?,
        "--trust-anchors".into(),
        path(&anchors_file)?,
        "--allow-software-tpm".into(),
        "--state-dir".into(),
        path(&state)?,
    ];
    let agent = args.agent.clone();
    let n = args.agents;
    let audit = move |concurrency: usize| -> anyhow::Result<f64> {
        let mut argv = base.clone();
        argv.extend(["--concurrency".into(), concurrency.to_string()]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let started = Instant::now();
        let table = run(&agent, &argv)?;
        let secs = started.elapsed().as_secs_f64();
        if !table.contains(&format!("{n}/{n} hosts accepted")) {
            bail!("not every host was accepted:\n{table}");
        }
        Ok(secs)
    };
    let enroll = tokio::task::block_in_place(|| audit(n))?;
    println!(
        "first run (enrolls {n} AKs, then audits): {enroll:.2} s, {:.1} audits/s",
        n as f64 / enroll
    );
    let (mut concurrent, mut sequential) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [n, 1] } else { [1, n] };
        for concurrency in order {
            let secs = tokio::task::block_in_place(|| audit(concurrency))?;
            if concurrency == 1 {
                sequential.push(secs);
            } else {
                concurrent.push(secs);
            }
        }
    }
    let (c, s) = (median(concurrent.clone()), median(sequential.clone()));
    println!("per-run seconds, concurrent {concurrent:.2?}, sequential {sequential:.2?}");
    println!(
        "{n} agents, median of {} rounds: concurrent {c:.2} s = {:.1} audits/s; one at a time \
         {s:.2} s = {:.1} audits/s; concurrent/sequential throughput {:.2}x",
        args.rounds,
        n as f64 / c,
        n as f64 / s,
        s / c
    );
    for agent in fleet {
        agent.daemon.shutdown().await;
    }
    Ok(())
}
