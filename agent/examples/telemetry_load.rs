//! Load benchmark of the telemetry fan-out (not a test): starts `fog-agent serve` with fresh
//! development certificates on a free loopback port, opens N concurrent `WatchHostTelemetry`
//! streams over mutual TLS from this one process, and reports the agent's CPU use (from
//! `/proc/<pid>/stat`), its RSS, and the delivery lag (receive time minus the sample's
//! `taken_at`) percentiles over the measured window.
//!
//! ```sh
//! cargo build --release -p fog-agent --bin fog-agent --example telemetry_load
//! target/release/examples/telemetry_load --agent target/release/fog-agent \
//!     --subscribers 1000 --seconds 60
//! ```
//! (`benches/telemetry-load.sh` runs exactly this.)

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use fog_agent::api::auth::Role;
use fog_agent::api::tls::DevCerts;
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Telemetry fan-out load benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// The fog-agent binary to start.
    #[arg(long)]
    agent: std::path::PathBuf,
    /// Concurrent WatchHostTelemetry subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Measured window, after the warm-up.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Interval each subscriber asks for.
    #[arg(long, default_value_t = 1000)]
    interval_millis: u64,
    /// HTTP/2 connections the subscribers are spread over.
    #[arg(long, default_value_t = 10)]
    connections: usize,
}

/// CPU ticks (user + system) and RSS of a process.
fn proc_usage(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("bad /proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((utime + stime, kb("VmRSS:"), kb("VmHWM:")))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let certs = DevCerts::generate()?;
    certs.write_to(&dir.path().join("certs"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = [\"127.0.0.1:{port}\"]\nunix_socket = \"\"\n\
             tls_cert = \"{c}/server.pem\"\ntls_key = \"{c}/server.key\"\nclient_ca = \"{c}/ca.pem\"\n\
             [state]\ndir = \"{d}/state\"\n[metrics]\nenabled = false\n",
            c = dir.path().join("certs").display(),
            d = dir.path().display()
        ),
    )?;
    let agent = Agent(
        Command::new(&args.agent)
            .args(["--log", "warn", "serve", "--config"])
            .arg(&config)
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the agent")?,
    );
    let pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("agent did not listen");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let market = certs.client(Role::Market);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&certs.ca.cert_pem))
        .identity(Identity::from_pem(&market.cert_pem, &market.key_pem));
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
                .tls_config(tls.clone())?
                .connect()
                .await?,
        );
    }

    let recording = Arc::new(AtomicBool::new(false));
    let lags = Arc::new(Mutex::new(Vec::<u64>::with_capacity(
        args.subscribers * args.seconds as usize + 1024,
    )));
    let messages = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    for i in 0..args.subscribers {
        let mut client = AgentClient::new(channels[i % channels.len()].clone());
        let (recording, lags, messages, gaps, started) = (
            recording.clone(),
            lags.clone(),
            messages.clone(),
            gaps.clone(),
            started.clone(),
        );
        let interval_millis = args.interval_millis;
        tokio::spawn(async move {
            let mut stream = match client
                .watch_host_telemetry(pb::WatchHostTelemetryRequest { interval_millis })
                .await
            {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    eprintln!("subscriber {i}: {status}");
                    return;
                }
            };
            started.fetch_add(1, Ordering::Relaxed);
            while let Ok(Some(msg)) = stream.message().await {
                let received = SystemTime::now();
                if !recording.load(Ordering::Relaxed) {
                    continue;
                }
                let Some(taken) = msg.sample.and_then(|s| s.taken_at) else {
                    continue;
                };
                let taken = SystemTime::UNIX_EPOCH
                    + Duration::new(taken.seconds as u64, taken.nanos as u32);
                let lag = received.duration_since(taken).unwrap_or_default();
                messages.fetch_add(1, Ordering::Relaxed);
                gaps.fetch_add(msg.gap_count, Ordering::Relaxed);
                if let Ok(mut lags) = lags.lock() {
                    lags.push(lag.as_micros() as u64);
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (started.load(Ordering::Relaxed) as usize) < args.subscribers {
        if Instant::now() > deadline {
            bail!(
                "only {} subscribers started",
                started.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm-up: every subscriber has had its first samples.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (ticks0, _, _) = proc_usage(pid)?;
    let t0 = Instant::now();
    recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    recording.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let (ticks1, rss_kb, hwm_kb) = proc_usage(pid)?;

    let mut lags = lags.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    lags.sort_unstable();
    // USER_HZ is 100 on Linux.
    let cpu_percent = (ticks1 - ticks0) as f64 / 100.0 / elapsed * 100.0;
    let expected = args.subscribers as f64 * elapsed * 1000.0 / args.interval_millis as f64;
    println!("subscribers        {}", args.subscribers);
    println!("connections        {}", args.connections);
    println!("interval           {} ms", args.interval_millis);
    println!("window             {elapsed:.1} s");
    println!(
        "messages           {} ({:.1}% of {:.0} expected)",
        lags.len(),
        lags.len() as f64 * 100.0 / expected,
        expected
    );
    println!("gap_count total    {}", gaps.load(Ordering::Relaxed));
    println!("lag p50            {:.2} ms", percentile(&lags, 50.0));
    println!("lag p99            {:.2} ms", percentile(&lags, 99.0));
    println!("lag max            {:.2} ms", percentile(&lags, 100.0));
    println!("agent cpu          {cpu_percent:.1}% of one core");
    println!(
        "agent rss          {:.1} MiB (peak {:.1} MiB)",
        rss_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0
    );
    drop(agent);
    Ok(())
}
