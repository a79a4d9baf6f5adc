//! What jobs' networks cost (a benchmark, not a test). Run it inside a network namespace whose
//! only uplink leads to a test "internet" with a byte source (`benches/job-network.sh` builds
//! that lab and runs this in it):
//!
//! 1. Two daemons in this process, one with `[jobs] network = "none"`, one with the built-in
//!    CNI network; busybox imported into both.
//! 2. Start latency: `--starts` rounds, each of (a) StartJob to RUNNING without a network,
//!    (b) with one, and (c) the same work by hand: a namespace made and attached with the same
//!    CNI plugins (`net::netns`, `net::cni`) and `runc run -d` of a copy of a networked job's
//!    bundle joined to it. The order rotates per round; everything is torn down between
//!    starts (not timed). Reports p50/p95 of each, the added p50 of networking, and (b)/(c).
//! 3. Throughput: `--rounds` alternating downloads of `--bytes` from the source
//!    (`--source host:port`, which sends that many bytes per connection) by `busybox nc`, timed
//!    the same way (`/proc/uptime` around it): in a job, and in this namespace (the host).
//!
//! ```sh
//! benches/job-network.sh            # builds, makes the lab, runs this, removes the lab
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use fog_agent::config::{CniNetwork, Config, JobNetwork};
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_agent::net::{cni, conflist, netns};
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

/// Job start latency with and without a network, and throughput through it.
#[derive(Debug, Parser)]
struct Args {
    /// The fog-agent binary (the job shim).
    #[arg(long)]
    agent: PathBuf,
    /// The OCI runtime.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// Timed rounds of starts (each round: without, with, by hand).
    #[arg(long, default_value_t = 30)]
    starts: usize,
    /// Pause before each timed start (teardown work of the previous one settles).
    #[arg(long, default_value_t = 200)]
    settle_millis: u64,
    /// The byte source, `host:port`.
    #[arg(long, default_value = "198.51.100.10:9000")]
    source: String,
    /// Bytes the source sends per connection (must match the source).
    #[arg(long, default_value_t = 2 << 30)]
    bytes: u64,
    /// Throughput rounds (each: a job, then the host).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One daemon and its client.
struct Agent {
    config: Config,
    daemon: RunningDaemon,
    client: AgentClient<Channel>,
}

impl Agent {
    async fn start(args: &Args, dir: &Path, network: JobNetwork) -> anyhow::Result<Self> {
        let mut config = Config::default();
        config.api.listen = Vec::new();
        config.api.unix_socket = dir.join("agent.sock");
        config.state.dir = dir.join("state");
        config.bench.run_on_start = false;
        config.metrics.enabled = false;
        // The networked agent keeps one job running as the by-hand side's model, and the
        // throughput job has both CPUs.
        config.capacity.reserve_cpu_millicores = 0;
        config.jobs.runtime = args.runtime.clone();
        config.jobs.cgroup_parent = format!(
            "fog-agent-netbench-{}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        );
        config.jobs.network = network;
        let options = DaemonOptions::for_host(&config, args.agent.clone())?;
        let daemon = daemon::start(&config, options).await?;
        let mut client =
            AgentClient::new(fog_agent::cli::connect_unix(config.api.unix_socket.clone()).await?);
        let layout = dir.join("layout");
        fog_agent::image::testing::busybox_layout(&layout, "busybox:latest")?;
        client
            .import_image(pb::ImportImageRequest {
                layout_dir: layout.display().to_string(),
                reference: String::new(),
            })
            .await
            .context("ImportImage")?;
        Ok(Self {
            config,
            daemon,
            client,
        })
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.config.jobs.dir_under(&self.config.state.dir).join(id)
    }

    /// StartJob until RUNNING; its latency in ms. `millicores` 1000 or more: runc's own setup
    /// runs in the container's cgroup, and a smaller quota throttles the start itself.
    async fn start_job(&mut self, id: &str, script: &str, millicores: i64) -> anyhow::Result<f64> {
        let spec = pb::JobSpec {
            job_id: id.to_owned(),
            image: "busybox:latest".into(),
            command: vec!["/bin/sh".into(), "-c".into(), script.to_owned()],
            resources: Some(pb::JobResources {
                cpu_millicores: millicores,
                memory_bytes: 64 << 20,
                pids: 16,
                ..pb::JobResources::default()
            }),
            ..pb::JobSpec::default()
        };
        let t = Instant::now();
        let job = self
            .client
            .start_job(pb::StartJobRequest { spec: Some(spec) })
            .await
            .with_context(|| format!("StartJob {id}"))?
            .into_inner()
            .job;
        let elapsed = t.elapsed();
        let state = job.map(|j| j.state());
        if state != Some(pb::JobState::Running) && state != Some(pb::JobState::Succeeded) {
            bail!("{id} is {state:?}");
        }
        Ok(elapsed.as_secs_f64() * 1000.0)
    }

    async fn stop_job(&mut self, id: &str) {
        // Ignored: a job that is already gone is fine here.
        let _ = self
            .client
            .stop_job(pb::StopJobRequest {
                job_id: id.to_owned(),
                grace_millis: 100,
            })
            .await;
    }

    /// Waits for a job's end (at most `limit`); its stdout.
    async fn output(&mut self, id: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let job = self
                .client
                .get_job(pb::GetJobRequest {
                    job_id: id.to_owned(),
                })
                .await?
                .into_inner()
                .job
                .context("no job")?;
            if matches!(
                job.state(),
                pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Stopped
            ) {
                return Ok(std::fs::read_to_string(
                    self.job_dir(id).join("stdout.log"),
                )?);
            }
            if Instant::now() > deadline {
                bail!("{id} did not end within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The by-hand side: the same namespace, plugins and bundle as a networked job, without the
/// agent.
struct ByHand {
    network: CniNetwork,
    list: cni::ConfList,
    root: PathBuf,
    dir: PathBuf,
}

impl ByHand {
    /// A copy of `job_dir`'s bundle for container `id`: its own cgroup, its namespace, and its
    /// files in place of the job's.
    fn bundle(&self, job_dir: &Path, id: &str) -> anyhow::Result<PathBuf> {
        let config = std::fs::read_to_string(job_dir.join("bundle/config.json"))?;
        let mut spec: serde_json::Value = serde_json::from_str(&config)?;
        spec["linux"]["cgroupsPath"] = format!("/fog-agent-netbench-ref/{id}").into();
        let own = self.dir.join(id);
        std::fs::create_dir_all(&own)?;
        for namespace in spec["linux"]["namespaces"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if namespace["type"] == "network" {
                namespace["path"] = self.netns(id).display().to_string().into();
            }
        }
        for mount in spec["mounts"].as_array_mut().into_iter().flatten() {
            if mount["type"] == "bind" {
                let name = Path::new(mount["source"].as_str().unwrap_or_default())
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
                let source = own.join(name);
                if !source.exists() {
                    std::fs::copy(
                        job_dir.join(source.file_name().unwrap_or_default()),
                        &source,
                    )?;
                }
                mount["source"] = source.display().to_string().into();
            }
        }
        let bundle = own.join("bundle");
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
        Ok(bundle)
    }

    fn netns(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.netns"))
    }

    fn at<'a>(
        &'a self,
        id: &'a str,
        netns: &'a Path,
        ifname: &'a str,
        caps: &'a serde_json::Map<String, serde_json::Value>,
    ) -> cni::Attachment<'a> {
        cni::Attachment {
            plugin_dir: &self.network.plugin_dir,
            container_id: id,
            netns,
            ifname,
            runtime_config: caps,
        }
    }

    /// Namespace, loopback, the list's ADD, `runc run -d`; its latency in ms.
    fn start(&self, bundle: &Path, id: &str) -> anyhow::Result<f64> {
        let caps = serde_json::Map::new();
        let netns = self.netns(id);
        let t = Instant::now();
        netns::create(&netns)?;
        cni::add(&conflist::loopback(), &self.at(id, &netns, "lo", &caps))?;
        cni::add(&self.list, &self.at(id, &netns, "eth0", &caps))?;
        let status = Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let elapsed = t.elapsed();
        if !status.success() {
            bail!("runc run -d {id} failed: {status}");
        }
        Ok(elapsed.as_secs_f64() * 1000.0)
    }

    fn stop(&self, id: &str) {
        let caps = serde_json::Map::new();
        let netns = self.netns(id);
        // Ignored: teardown of a benchmark container; the next start shows a failure.
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", id])
            .output();
        let _ = cni::del(&self.list, &self.at(id, &netns, "eth0", &caps), None);
        let _ = netns::remove(&netns);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len().saturating_sub(1)) as f64).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}

fn summary(name: &str, ms: &mut [f64]) -> f64 {
    ms.sort_by(f64::total_cmp);
    let p50 = percentile(ms, 50.0);
    println!(
        "{name:<34} p50 {p50:7.1} ms  p95 {:7.1} ms  (n={})",
        percentile(ms, 95.0),
        ms.len()
    );
    p50
}

/// The shell lines that time a download of the source with busybox nc.
fn download_script(source: &str) -> String {
    let (host, port) = source.split_once(':').unwrap_or((source, "9000"));
    format!(
        "t0=$(cut -d' ' -f1 /proc/uptime); n=$(busybox nc {host} {port} | wc -c); \
         t1=$(cut -d' ' -f1 /proc/uptime); echo \"bytes=$n t0=$t0 t1=$t1\""
    )
}

/// Bytes per second from a download script's line.
fn rate(output: &str) -> anyhow::Result<(u64, f64)> {
    let line = output
        .lines()
        .find(|l| l.starts_with("bytes="))
        .with_context(|| format!("no result in {output:?}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .context(name.to_owned())?
            .parse()
            .context(name.to_owned())
    };
    let bytes = field("bytes")? as u64;
    Ok((bytes, bytes as f64 / (field("t1")? - field("t0")?)))
}

async fn latency(
    args: &Args,
    plain: &mut Agent,
    networked: &mut Agent,
    by_hand: &ByHand,
) -> anyhow::Result<()> {
    let settle = Duration::from_millis(args.settle_millis);
    // Warm-ups: the first start waits for the inventory; the first attach prepares the host.
    plain.start_job("warm", "sleep 3600", 1000).await?;
    plain.stop_job("warm").await;
    networked.start_job("warm", "sleep 3600", 1000).await?;
    let model = networked.job_dir("warm");
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..args.starts {
        for k in 0..3 {
            let side = (round + k) % 3;
            let id = format!("s{round}");
            tokio::time::sleep(settle).await;
            let ms = match side {
                0 => plain.start_job(&id, "sleep 3600", 1000).await?,
                1 => networked.start_job(&id, "sleep 3600", 1000).await?,
                _ => {
                    let bundle = by_hand.bundle(&model, &id)?;
                    by_hand.start(&bundle, &id)?
                }
            };
            times[side].push(ms);
            match side {
                0 => plain.stop_job(&id).await,
                1 => networked.stop_job(&id).await,
                _ => by_hand.stop(&id),
            }
        }
    }
    networked.stop_job("warm").await;
    let [none, cni, hand] = &mut times;
    println!("start latency ({} rounds, order rotating):", args.starts);
    let p_none = summary("StartJob, network = \"none\"", none);
    let p_cni = summary("StartJob, CNI network", cni);
    let p_hand = summary("by hand: netns + CNI ADD + runc -d", hand);
    println!(
        "networking adds {:.1} ms at p50; StartJob with a network / by hand = {:.2}x",
        p_cni - p_none,
        p_cni / p_hand
    );
    Ok(())
}

async fn throughput(args: &Args, networked: &mut Agent) -> anyhow::Result<()> {
    let script = download_script(&args.source);
    let mut job_rates = Vec::new();
    let mut host_rates = Vec::new();
    for round in 0..args.rounds {
        let id = format!("tp{round}");
        // Both CPUs, as the host side has: the client's CPU is not what is measured.
        networked.start_job(&id, &script, 2000).await?;
        let (bytes, job) = rate(&networked.output(&id, Duration::from_secs(300)).await?)?;
        if bytes != args.bytes {
            bail!("the job read {bytes} bytes, not {}", args.bytes);
        }
        let out = Command::new("sh").args(["-c", &script]).output()?;
        let (bytes, host) = rate(&String::from_utf8_lossy(&out.stdout))?;
        if bytes != args.bytes {
            bail!("the host read {bytes} bytes, not {}", args.bytes);
        }
        println!(
            "round {round}: job {:.0} MB/s, host {:.0} MB/s, ratio {:.2}",
            job / 1e6,
            host / 1e6,
            job / host
        );
        job_rates.push(job);
        host_rates.push(host);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(v, 50.0)
    };
    let (job, host) = (median(&mut job_rates), median(&mut host_rates));
    println!(
        "throughput ({} x {} MiB, busybox nc): job {:.0} MB/s, host {:.0} MB/s, job / host = {:.2}",
        args.rounds,
        args.bytes >> 20,
        job / 1e6,
        host / 1e6,
        job / host
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let network = CniNetwork {
        run_dir: dir.path().join("net"),
        dns: vec!["198.51.100.53".parse()?],
        ..CniNetwork::default()
    };
    let none_dir = dir.path().join("none");
    let cni_dir = dir.path().join("cni");
    let mut plain = Agent::start(&args, &none_dir, JobNetwork::None).await?;
    let mut networked =
        Agent::start(&args, &cni_dir, JobNetwork::Cni(Box::new(network.clone()))).await?;
    let by_hand = ByHand {
        list: conflist::load(&network)?,
        network,
        root: dir.path().join("ref-runc"),
        dir: dir.path().join("ref"),
    };
    std::fs::create_dir_all(&by_hand.dir)?;
    let measured = async {
        latency(&args, &mut plain, &mut networked, &by_hand).await?;
        throughput(&args, &mut networked).await
    }
    .await;
    for round in 0..args.starts {
        by_hand.stop(&format!("s{round}"));
    }
    for agent in [plain, networked] {
        agent.daemon.shutdown().await;
    }
    measured
}
