//! Job start latency and telemetry cost (a benchmark, not a test).
//!
//! 1. Starts the daemon in this process (jobs enabled, runc, shims = `--agent`), admin socket
//!    only, and imports the busybox image (`image::testing::busybox_layout`) with ImportImage.
//! 2. Latency: `--starts` times, in pairs whose order alternates, (a) `StartJob` over the unix
//!    socket until it answers RUNNING, and (b) `runc run -d` of a copy of a job's own bundle
//!    (same config.json, its own id and cgroup) directly; each pair is stopped before the next.
//!    Reports p50/p95 of each side, their ratio, and the paired ratio and extra milliseconds.
//!    The timed jobs get `--start-millicores` (1 core): runc's container setup runs inside the
//!    container's cgroup, and at a 10-millicore quota it is throttled to ~200 ms on both sides,
//!    in steps of the 100 ms CFS period, which buries the agent's part in noise.
//! 3. Telemetry cost: with `--jobs` agent jobs running (10 millicores each), this process's CPU
//!    time (the daemon; the client is idle) over `--seconds` at the given telemetry interval, as
//!    % of one core; plus the shims' CPU.
//!
//! ```sh
//! cargo build --release -p fog-agent --bin fog-agent --example jobs_latency
//! target/release/examples/jobs_latency --agent target/release/fog-agent --starts 50 --jobs 50 --seconds 30
//! ```
//! (`benches/jobs-latency.sh` runs exactly this.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use fog_agent::config::Config;
use fog_agent::daemon::{self, DaemonOptions};
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use futures_util::FutureExt;
use tonic::transport::Channel;

/// Job start latency vs runc, and telemetry cost with many jobs.
#[derive(Debug, Parser)]
struct Args {
    /// The fog-agent binary (the job shim).
    #[arg(long)]
    agent: PathBuf,
    /// The OCI runtime.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// Timed starts (and reference runs), one job at a time.
    #[arg(long, default_value_t = 50)]
    starts: usize,
    /// CPU of each timed job. runc's own setup (`runc init`) runs inside the container's
    /// cgroup, so a tiny quota throttles the start itself, for both sides.
    #[arg(long, default_value_t = 1000)]
    start_millicores: i64,
    /// Pause before each timed start, so each side starts on a settled machine: a stopped
    /// container's teardown (its network namespace, cgroups) goes on in kernel workers after
    /// runc returns, and the agent execs its next standby shim right after a start. 0 = none
    /// (back to back, as earlier runs measured).
    #[arg(long, default_value_t = 200)]
    settle_millis: u64,
    /// Jobs running at once for the telemetry cost (10 millicores each).
    #[arg(long, default_value_t = 50)]
    jobs: usize,
    /// Telemetry measurement window.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Job telemetry interval.
    #[arg(long, default_value_t = 1000)]
    interval_millis: u64,
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len().saturating_sub(1)) as f64).round() as usize;
    sorted
        .get(rank.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn runc(args: &Args, root: &Path) -> Command {
    let mut cmd = Command::new(&args.runtime);
    cmd.arg("--root").arg(root);
    cmd
}

/// A copy of a job's bundle for the reference run: same config, own id, cgroup and scratch.
fn reference_bundle(job_dir: &Path, dir: &Path, id: &str) -> anyhow::Result<PathBuf> {
    let config = std::fs::read_to_string(job_dir.join("bundle/config.json"))?;
    let mut spec: serde_json::Value = serde_json::from_str(&config)?;
    spec["linux"]["cgroupsPath"] = format!("/fog-agent-bench-ref/{id}").into();
    let scratch = dir.join(id).join("scratch");
    std::fs::create_dir_all(&scratch)?;
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for m in mounts {
            if m["type"] == "bind" {
                m["source"] = scratch.display().to_string().into();
            }
        }
    }
    let bundle = dir.join(id).join("bundle");
    std::fs::create_dir_all(&bundle)?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    Ok(bundle)
}

async fn connect(socket: &Path) -> anyhow::Result<AgentClient<Channel>> {
    Ok(AgentClient::new(
        fog_agent::cli::connect_unix(socket.to_owned()).await?,
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.api.listen = Vec::new();
    config.api.unix_socket = dir.path().join("agent.sock");
    config.state.dir = dir.path().join("state");
    config.bench.run_on_start = false;
    config.jobs.runtime = args.runtime.clone();
    config.jobs.cgroup_parent = "fog-agent-bench".into();
    config.jobs.telemetry_interval_millis = args.interval_millis;
    // Loopback-only jobs, as this benchmark has always measured; job networks have their own
    // benchmark (job_network_bench, run in a namespace lab).
    config.jobs.network = fog_agent::config::JobNetwork::None;
    config.metrics.enabled = false;
    let options = DaemonOptions::for_host(&config, args.agent.clone())?;
    let running = daemon::start(&config, options).await?;
    let mut client = connect(&config.api.unix_socket).await?;
    let layout = dir.path().join("layout");
    fog_agent::image::testing::busybox_layout(&layout, "busybox:latest")?;
    client
        .import_image(pb::ImportImageRequest {
            layout_dir: layout.display().to_string(),
            reference: String::new(),
        })
        .await
        .context("ImportImage")?;
    let ref_root = dir.path().join("ref-runc");
    let ref_dir = dir.path().join("ref");
    // A panic in the measurement (say, stdout closed under `| head`) must not skip the cleanup
    // below: the jobs' shims outlive this process by design.
    let result =
        std::panic::AssertUnwindSafe(measure(&args, &mut client, &config, &ref_root, &ref_dir))
            .catch_unwind()
            .await;

    // Clean up whatever a failed measurement left: agent jobs, reference containers.
    let ids: Vec<String> = std::iter::once("warm-up".to_owned())
        .chain((0..args.starts).map(|i| format!("start-{i}")))
        .chain((0..args.jobs).map(|i| format!("bench-{i}")))
        .collect();
    let stops = ids.iter().map(|id| {
        let mut c = client.clone();
        async move { stop_job(&mut c, id).await }
    });
    futures_util::future::join_all(stops).await;
    for i in 0..args.starts {
        let _ = runc(&args, &ref_root)
            .args(["delete", "--force", &format!("ref-{i}")])
            .output();
    }
    for c in [
        "cpu", "cpuacct", "memory", "pids", "devices", "freezer", "blkio", "cpuset", "systemd",
        "unified",
    ] {
        for parent in ["fog-agent-bench", "fog-agent-bench-ref"] {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}/{parent}"));
        }
    }
    running.shutdown().await;
    match result {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// One StartJob over the socket until it answers RUNNING; its latency in ms.
async fn start_job(client: &mut AgentClient<Channel>, spec: pb::JobSpec) -> anyhow::Result<f64> {
    let id = spec.job_id.clone();
    let t = Instant::now();
    let response = client
        .start_job(pb::StartJobRequest { spec: Some(spec) })
        .await
        .with_context(|| format!("StartJob {id}"))?
        .into_inner();
    let elapsed = t.elapsed();
    let state = response.job.map(|j| j.state());
    if state != Some(pb::JobState::Running) {
        bail!("{id} is {state:?}, not running");
    }
    Ok(elapsed.as_secs_f64() * 1000.0)
}

/// Stops a job (the benchmark's jobs ignore SIGTERM as pid 1: the grace is short).
async fn stop_job(client: &mut AgentClient<Channel>, id: &str) {
    // Ignored: a job that is already gone is fine here.
    let _ = client
        .stop_job(pb::StopJobRequest {
            job_id: id.to_owned(),
            grace_millis: 100,
        })
        .await;
}

/// `runc run -d` of a copy of agent job `job_id`'s bundle as container `ref_id`; its latency
/// in ms.
fn run_reference(
    args: &Args,
    ref_root: &Path,
    ref_dir: &Path,
    jobs_dir: &Path,
    job_id: &str,
    ref_id: &str,
) -> anyhow::Result<f64> {
    let bundle = reference_bundle(&jobs_dir.join(job_id), ref_dir, ref_id)?;
    let t = Instant::now();
    let status = runc(args, ref_root)
        .args(["run", "-d", "--bundle"])
        .arg(&bundle)
        .arg(ref_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let elapsed = t.elapsed();
    if !status.success() {
        bail!("runc run -d {ref_id} failed: {status}");
    }
    Ok(elapsed.as_secs_f64() * 1000.0)
}

async fn measure(
    args: &Args,
    client: &mut AgentClient<Channel>,
    config: &Config,
    ref_root: &Path,
    ref_dir: &Path,
) -> anyhow::Result<()> {
    let jobs_dir = config.jobs.dir_under(&config.state.dir);
    let spec = |id: &str, cpu_millicores: i64| pb::JobSpec {
        job_id: id.to_owned(),
        image: "busybox:latest".into(),
        command: vec!["/bin/sleep".into(), "3600".into()],
        resources: Some(pb::JobResources {
            cpu_millicores,
            memory_bytes: 16 << 20,
            pids: 16,
            ..pb::JobResources::default()
        }),
        ..pb::JobSpec::default()
    };

    // Latency: one job at a time, each stopped (and its reference deleted) before the next.
    let mut agent_ms = Vec::new();
    let mut runc_ms = Vec::new();
    // The first StartJob also waits for the inventory: a warm-up, not a start latency.
    start_job(client, spec("warm-up", args.start_millicores)).await?;
    stop_job(client, "warm-up").await;
    for i in 0..args.starts {
        let id = format!("start-{i}");
        let ref_id = format!("ref-{i}");
        // Alternate which of the pair goes first, so neither always runs on a machine the
        // other has just disturbed. The reference copies the bundle of the job before it when
        // it goes first (the same config apart from the ids; a stopped job's dir stays).
        let settle = Duration::from_millis(args.settle_millis);
        let (agent, reference) = if i % 2 == 0 {
            tokio::time::sleep(settle).await;
            let agent = start_job(client, spec(&id, args.start_millicores)).await?;
            tokio::time::sleep(settle).await;
            let reference = run_reference(args, ref_root, ref_dir, &jobs_dir, &id, &ref_id)?;
            (agent, reference)
        } else {
            let previous = format!("start-{}", i - 1);
            tokio::time::sleep(settle).await;
            let reference = run_reference(args, ref_root, ref_dir, &jobs_dir, &previous, &ref_id)?;
            tokio::time::sleep(settle).await;
            let agent = start_job(client, spec(&id, args.start_millicores)).await?;
            (agent, reference)
        };
        agent_ms.push(agent);
        runc_ms.push(reference);
        stop_job(client, &id).await;
        let _ = runc(args, ref_root)
            .args(["delete", "--force", &ref_id])
            .output();
    }
    let mut pair_ratio: Vec<f64> = agent_ms.iter().zip(&runc_ms).map(|(a, r)| a / r).collect();
    let mut pair_extra: Vec<f64> = agent_ms.iter().zip(&runc_ms).map(|(a, r)| a - r).collect();
    // By position in the pair (pair i has the agent first when i is even): the one that goes
    // first also meets what the previous pair's stop left running.
    let every_other_median = |xs: &[f64], odd: bool| {
        let mut picked: Vec<f64> = xs
            .iter()
            .copied()
            .skip(usize::from(odd))
            .step_by(2)
            .collect();
        picked.sort_by(f64::total_cmp);
        percentile(&picked, 50.0)
    };
    let by_order = |agent_first: bool| {
        (
            every_other_median(&agent_ms, !agent_first),
            every_other_median(&runc_ms, !agent_first),
        )
    };
    let ((first_a, first_r), (second_a, second_r)) = (by_order(true), by_order(false));
    pair_ratio.sort_by(f64::total_cmp);
    pair_extra.sort_by(f64::total_cmp);
    agent_ms.sort_by(f64::total_cmp);
    runc_ms.sort_by(f64::total_cmp);
    let (a50, a95) = (percentile(&agent_ms, 50.0), percentile(&agent_ms, 95.0));
    let (r50, r95) = (percentile(&runc_ms, 50.0), percentile(&runc_ms, 95.0));
    println!(
        "start latency over {} starts ({} millicores, {} ms settle): StartJob p50 {a50:.1} ms p95 {a95:.1} ms | runc run -d p50 {r50:.1} ms p95 {r95:.1} ms | ratio p50 {:.2}x p95 {:.2}x",
        agent_ms.len(),
        args.start_millicores,
        args.settle_millis,
        a50 / r50,
        a95 / r95
    );
    println!(
        "paired (each StartJob with the runc run next to it): median ratio {:.2}x, median extra {:+.1} ms (p25 {:+.1}, p75 {:+.1})",
        percentile(&pair_ratio, 50.0),
        percentile(&pair_extra, 50.0),
        percentile(&pair_extra, 25.0),
        percentile(&pair_extra, 75.0)
    );
    println!(
        "by order: StartJob first p50 {first_a:.1} ms, runc second {first_r:.1} ms | runc first {second_r:.1} ms, StartJob second {second_a:.1} ms"
    );

    // Telemetry: `--jobs` small jobs running at once (not timed).
    for i in 0..args.jobs {
        start_job(client, spec(&format!("bench-{i}"), 10)).await?;
    }
    let me = std::process::id();
    let shims: Vec<u32> = (0..args.jobs)
        .filter_map(|i| {
            std::fs::read_to_string(jobs_dir.join(format!("bench-{i}/shim.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hz = 100.0; // USER_HZ on Linux
    let shim_ticks = |pids: &[u32]| pids.iter().filter_map(|p| cpu_ticks(*p).ok()).sum::<u64>();
    let (c0, s0, t0) = (cpu_ticks(me)?, shim_ticks(&shims), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (c1, s1, t1) = (cpu_ticks(me)?, shim_ticks(&shims), Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    let active = client
        .list_jobs(pb::ListJobsRequest {
            active_only: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .jobs
        .len();
    let with_samples: HashMap<String, bool> = client
        .list_jobs(pb::ListJobsRequest {
            active_only: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| (j.spec.unwrap_or_default().job_id, j.last_sample.is_some()))
        .collect();
    println!(
        "telemetry cost: {active} running jobs ({} sampled) at {} ms for {secs:.0} s: agent CPU {:.2}% of one core; {} shims together {:.2}%",
        with_samples.values().filter(|s| **s).count(),
        args.interval_millis,
        (c1 - c0) as f64 / hz / secs * 100.0,
        shims.len(),
        (s1 - s0) as f64 / hz / secs * 100.0,
    );
    Ok(())
}
